/**
 * LocalStore: the Store contract for backends that live in this process (memory, SQLite).
 * The backend does synchronous reads and one synchronous atomic apply per transaction; this
 * class does revision numbering, CAS checks, the event history window and watch fan-out.
 * Watchers are notified asynchronously (never inside the writer's call) and in revision order.
 */
import { TideError } from '../../lib/errors.ts';
import type { KeyValue, Store, TxnOp, Watch, WatchEvent, WatchListener } from './store.ts';

export interface LocalBackend {
  /** Highest committed revision (0 for an empty store). */
  revision(): number;
  /** Lowest revision whose events are still kept; events at or below it are gone. */
  compactedRevision(): number;
  get(key: string): KeyValue | undefined;
  range(prefix: string): KeyValue[];
  /** Events with revision > after, in order. */
  events(after: number, prefix: string): WatchEvent[];
  /** Atomically writes the new key states and the events of revision `rev`. */
  apply(rev: number, puts: KeyValue[], deletes: string[], events: WatchEvent[]): void;
  close(): void;
}

interface Watcher {
  prefix: string;
  listener: WatchListener;
  onError: ((err: Error) => void) | undefined;
  cancelled: boolean;
}

export class LocalStore implements Store {
  readonly #backend: LocalBackend;
  readonly #watchers = new Set<Watcher>();
  #closed = false;

  constructor(backend: LocalBackend) {
    this.#backend = backend;
  }

  async get(key: string): Promise<KeyValue | undefined> {
    this.#assertOpen();
    return this.#backend.get(key);
  }

  async list(prefix: string): Promise<{ items: KeyValue[]; revision: number }> {
    this.#assertOpen();
    return { items: this.#backend.range(prefix), revision: this.#backend.revision() };
  }

  async put(key: string, value: string, options: { expectModRevision?: number } = {}): Promise<number> {
    return this.txn([{ type: 'put', key, value, ...options }]);
  }

  async delete(key: string, options: { expectModRevision?: number } = {}): Promise<boolean> {
    this.#assertOpen();
    if (!this.#backend.get(key)) {
      if (options.expectModRevision !== undefined && options.expectModRevision !== 0) {
        throw conflict(key, options.expectModRevision, 0);
      }
      return false;
    }
    await this.txn([{ type: 'delete', key, ...options }]);
    return true;
  }

  async txn(ops: TxnOp[]): Promise<number> {
    this.#assertOpen();
    if (ops.length === 0) return this.#backend.revision();
    const rev = this.#backend.revision() + 1;
    const state = new Map<string, KeyValue | undefined>();
    const current = (key: string) => (state.has(key) ? state.get(key) : this.#backend.get(key));
    const events: WatchEvent[] = [];
    for (const op of ops) {
      if (typeof op.key !== 'string' || op.key.length === 0) {
        throw new TideError('ERR_INVALID_ARGUMENT', 'store keys must be non-empty strings');
      }
      const existing = current(op.key);
      if (op.expectModRevision !== undefined) {
        // Conditions compare against the state before the transaction, as etcd's do.
        const before = this.#backend.get(op.key)?.modRevision ?? 0;
        if (before !== op.expectModRevision) throw conflict(op.key, op.expectModRevision, before);
      }
      if (op.type === 'put') {
        state.set(op.key, {
          key: op.key,
          value: op.value,
          createRevision: existing ? existing.createRevision : rev,
          modRevision: rev,
          version: existing ? existing.version + 1 : 1,
        });
        events.push({ type: 'put', key: op.key, value: op.value, revision: rev });
      } else if (existing) {
        state.set(op.key, undefined);
        events.push({ type: 'delete', key: op.key, value: undefined, revision: rev });
      }
    }
    const puts: KeyValue[] = [];
    const deletes: string[] = [];
    for (const [key, kv] of state) {
      if (kv) puts.push(kv);
      else deletes.push(key);
    }
    this.#backend.apply(rev, puts, deletes, events);
    if (this.#watchers.size > 0) this.#notify(events);
    return rev;
  }

  watch(prefix: string, afterRevision: number, listener: WatchListener, onError?: (err: Error) => void): Watch {
    this.#assertOpen();
    const watcher: Watcher = { prefix, listener, onError, cancelled: false };
    const compacted = this.#backend.compactedRevision();
    if (afterRevision < compacted) {
      queueMicrotask(() => {
        if (watcher.cancelled) return;
        const err = new TideError(
          'ERR_STORE_COMPACTED',
          `watch from revision ${afterRevision} is no longer possible: history before ${compacted + 1} was compacted`,
        );
        if (onError) onError(err);
      });
      return {
        cancel: () => {
          watcher.cancelled = true;
        },
      };
    }
    // History is read now, synchronously, so no write can slip between it and the live stream.
    const history = this.#backend.events(afterRevision, prefix);
    this.#watchers.add(watcher);
    if (history.length > 0) queueMicrotask(() => this.#deliver(watcher, history));
    return {
      cancel: () => {
        watcher.cancelled = true;
        this.#watchers.delete(watcher);
      },
    };
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const w of this.#watchers) w.cancelled = true;
    this.#watchers.clear();
    this.#backend.close();
  }

  async destroy(): Promise<void> {
    await this.close();
  }

  #notify(events: WatchEvent[]): void {
    for (const watcher of this.#watchers) {
      const mine = events.filter((e) => e.key.startsWith(watcher.prefix));
      if (mine.length === 0) continue;
      queueMicrotask(() => this.#deliver(watcher, mine));
    }
  }

  #deliver(watcher: Watcher, events: WatchEvent[]): void {
    if (watcher.cancelled) return;
    try {
      watcher.listener(events);
    } catch (err) {
      watcher.onError?.(err instanceof Error ? err : new Error(String(err)));
    }
  }

  #assertOpen(): void {
    if (this.#closed) throw new TideError('ERR_STORE_CLOSED', 'the store is closed');
  }
}

function conflict(key: string, expected: number, actual: number): TideError {
  return new TideError(
    'ERR_STORE_CONFLICT',
    `conflict on ${key}: expected it at revision ${expected}, found ${actual === 0 ? 'no key' : `revision ${actual}`}`,
    { status: 409, details: { key, expected, actual } },
  );
}
