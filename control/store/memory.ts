/** An in-memory Store for tests and throwaway runs. Same contract as SQLite and etcd. */

import { type LocalBackend, LocalStore, type LocalStoreOptions } from './local.ts';
import type { KeyValue, WatchEvent } from './store.ts';

class MemoryBackend implements LocalBackend {
  readonly #kv = new Map<string, KeyValue>();
  readonly #events: WatchEvent[] = [];
  readonly #historyLimit: number;
  #rev = 0;
  #compacted = 0;

  constructor(historyLimit: number) {
    this.#historyLimit = historyLimit;
  }
  revision(): number {
    return this.#rev;
  }
  compactedRevision(): number {
    return this.#compacted;
  }
  get(key: string): KeyValue | undefined {
    return this.#kv.get(key);
  }
  range(prefix: string): KeyValue[] {
    return [...this.#kv.values()].filter((kv) => kv.key.startsWith(prefix)).sort((a, b) => (a.key < b.key ? -1 : 1));
  }
  leasedKeys(lease: string): string[] {
    return [...this.#kv.values()].filter((kv) => kv.lease === lease).map((kv) => kv.key);
  }
  events(after: number, prefix: string): WatchEvent[] {
    return this.#events.filter((e) => e.revision > after && e.key.startsWith(prefix));
  }
  apply(rev: number, puts: KeyValue[], deletes: string[], events: WatchEvent[]): void {
    for (const kv of puts) this.#kv.set(kv.key, kv);
    for (const key of deletes) this.#kv.delete(key);
    this.#events.push(...events);
    this.#rev = rev;
    while (this.#events.length > 0 && this.#rev - (this.#events[0]?.revision ?? rev) >= this.#historyLimit) {
      this.#compacted = this.#events.shift()?.revision ?? this.#compacted;
    }
  }
  close(): void {}
}

/** `historyLimit`: how many revisions of events are kept for watches that resume. */
export function createMemoryStore(options: { historyLimit?: number } & LocalStoreOptions = {}): LocalStore {
  return new LocalStore(new MemoryBackend(options.historyLimit ?? 10_000), options);
}
