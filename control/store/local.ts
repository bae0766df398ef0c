/**
 * LocalStore: the Store contract for backends that live in this process (memory, SQLite).
 * The backend does synchronous reads and one synchronous atomic apply per transaction; this
 * class does revision numbering, CAS checks, the event history window, watch fan-out and leases.
 * Watchers are notified asynchronously (never inside the writer's call) and in revision order.
 *
 * Leases are held in this process's memory only: they do not outlive it. The backend keeps the
 * lease id on each attached key, so a persistent backend (SQLite) can delete, when it opens, the
 * keys whose lease was lost with a previous process. A sweep (an unref'd timer, every 250 ms,
 * running only while leases exist) ends expired leases: each one's keys are deleted in one
 * transaction, which watchers see as delete events at a new revision. A lease that is past its
 * TTL but not yet swept is already gone for keepAlive and for new writes.
 */
import { randomInt } from 'node:crypto';
import type { Clock } from '../../lib/clock.ts';
import { systemClock } from '../../lib/clock.ts';
import { TideError } from '../../lib/errors.ts';
import { checkKey, checkLeaseId, checkTtl, compacted, conflict, leaseNotFound } from './errors.ts';
import type { KeyValue, PutOptions, Store, TxnOp, Watch, WatchEvent, WatchListener } from './store.ts';

export interface LocalBackend {
  /** Highest committed revision (0 for an empty store). */
  revision(): number;
  /** Lowest revision whose events are still kept; events at or below it are gone. */
  compactedRevision(): number;
  get(key: string): KeyValue | undefined;
  range(prefix: string): KeyValue[];
  /** Keys attached to `lease`. */
  leasedKeys(lease: string): string[];
  /** Events with revision > after, in order. */
  events(after: number, prefix: string): WatchEvent[];
  /** Atomically writes the new key states and the events of revision `rev`. */
  apply(rev: number, puts: KeyValue[], deletes: string[], events: WatchEvent[]): void;
  close(): void;
}

export interface LocalStoreOptions {
  /** Where lease expiry reads the time. Default: the system clock. */
  clock?: Clock;
  /** How often expired leases are swept, ms. Default 250. */
  leaseSweepMs?: number;
}

interface Watcher {
  prefix: string;
  listener: WatchListener;
  onError: ((err: Error) => void) | undefined;
  cancelled: boolean;
}

interface Lease {
  ttlMs: number;
  expiresAt: number;
}

export class LocalStore implements Store {
  readonly #backend: LocalBackend;
  readonly #watchers = new Set<Watcher>();
  readonly #leases = new Map<string, Lease>();
  readonly #clock: Clock;
  readonly #sweepMs: number;
  #sweeper: NodeJS.Timeout | undefined;
  /** Lease ids count up from a random start, so ids of a previous process are not reused. */
  #nextLease = randomInt(1, 2 ** 47);
  #closed = false;

  constructor(backend: LocalBackend, options: LocalStoreOptions = {}) {
    this.#backend = backend;
    this.#clock = options.clock ?? systemClock;
    this.#sweepMs = options.leaseSweepMs ?? 250;
  }

  async get(key: string): Promise<KeyValue | undefined> {
    this.#assertOpen();
    return this.#backend.get(key);
  }

  async list(prefix: string): Promise<{ items: KeyValue[]; revision: number }> {
    this.#assertOpen();
    return { items: this.#backend.range(prefix), revision: this.#backend.revision() };
  }

  async put(key: string, value: string, options: PutOptions = {}): Promise<number> {
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
    for (const op of ops) {
      checkKey(op.key);
      if (op.expectModRevision !== undefined) {
        // Conditions compare against the state before the transaction, as etcd's do.
        const before = this.#backend.get(op.key)?.modRevision ?? 0;
        if (before !== op.expectModRevision) throw conflict(op.key, op.expectModRevision, before);
      }
    }
    // Leases are checked after the conditions, as etcd does (a failed compare wins).
    for (const op of ops) {
      if (op.type === 'put' && op.lease !== undefined) {
        checkLeaseId(op.lease);
        if (!this.#leaseAlive(op.lease)) throw leaseNotFound(op.lease);
      }
    }
    return this.#commit(ops);
  }

  watch(prefix: string, afterRevision: number, listener: WatchListener, onError?: (err: Error) => void): Watch {
    this.#assertOpen();
    const watcher: Watcher = { prefix, listener, onError, cancelled: false };
    const compactedRev = this.#backend.compactedRevision();
    if (afterRevision < compactedRev) {
      queueMicrotask(() => {
        if (watcher.cancelled) return;
        if (onError) onError(compacted(afterRevision, compactedRev + 1));
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

  async grantLease(ttlSeconds: number): Promise<string> {
    this.#assertOpen();
    checkTtl(ttlSeconds);
    const id = String(this.#nextLease++);
    this.#leases.set(id, { ttlMs: ttlSeconds * 1000, expiresAt: this.#clock.now() + ttlSeconds * 1000 });
    if (!this.#sweeper) {
      this.#sweeper = setInterval(() => this.#sweep(), this.#sweepMs);
      this.#sweeper.unref();
    }
    return id;
  }

  async keepAlive(lease: string): Promise<boolean> {
    this.#assertOpen();
    checkLeaseId(lease);
    const l = this.#leases.get(lease);
    if (!l) return false;
    if (!this.#leaseAlive(lease)) {
      this.#endLease(lease);
      return false;
    }
    l.expiresAt = this.#clock.now() + l.ttlMs;
    return true;
  }

  async revokeLease(lease: string): Promise<void> {
    this.#assertOpen();
    checkLeaseId(lease);
    if (this.#leases.has(lease)) this.#endLease(lease);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#sweeper);
    this.#sweeper = undefined;
    this.#leases.clear();
    for (const w of this.#watchers) w.cancelled = true;
    this.#watchers.clear();
    this.#backend.close();
  }

  async destroy(): Promise<void> {
    await this.close();
  }

  /** Applies already-checked ops as one revision and notifies watchers; returns the store revision. */
  #commit(ops: TxnOp[]): number {
    if (ops.length === 0) return this.#backend.revision();
    const rev = this.#backend.revision() + 1;
    const state = new Map<string, KeyValue | undefined>();
    const current = (key: string) => (state.has(key) ? state.get(key) : this.#backend.get(key));
    const events: WatchEvent[] = [];
    for (const op of ops) {
      const existing = current(op.key);
      if (op.type === 'put') {
        state.set(op.key, {
          key: op.key,
          value: op.value,
          createRevision: existing ? existing.createRevision : rev,
          modRevision: rev,
          version: existing ? existing.version + 1 : 1,
          ...(op.lease === undefined ? {} : { lease: op.lease }),
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

  #leaseAlive(lease: string): boolean {
    const l = this.#leases.get(lease);
    return l !== undefined && l.expiresAt > this.#clock.now();
  }

  /** Deletes the lease's keys in one transaction, then forgets the lease. */
  #endLease(lease: string): void {
    const keys = this.#backend.leasedKeys(lease);
    if (keys.length > 0) this.#commit(keys.map((key) => ({ type: 'delete', key })));
    this.#leases.delete(lease);
    if (this.#leases.size === 0) {
      clearInterval(this.#sweeper);
      this.#sweeper = undefined;
    }
  }

  #sweep(): void {
    if (this.#closed) return;
    for (const lease of [...this.#leases.keys()]) {
      if (this.#leaseAlive(lease)) continue;
      try {
        this.#endLease(lease);
      } catch {
        // The backend refused the write (disk full, I/O error): the lease stays, expired, and the
        // next sweep tries again; writers meanwhile see it as gone.
      }
    }
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
