/**
 * The Store: a versioned key-value store with compare-and-swap and watches. It is the only thing
 * reconcilers and the API depend on for state. The embedded default is SQLite; etcd follows the
 * same contract (the shared contract test suite in test/contract runs against every backend).
 *
 * Revisions are global and increase by one per committed transaction, as in etcd. Every key
 * carries the revision that created it, the revision that last modified it, and a version.
 *
 * Leases, as in etcd: a lease lives its TTL unless kept alive; a key written with a lease is
 * deleted (a delete event at a new revision) when the lease expires or is revoked. Leader
 * election and liveness records use them, so a dead holder's keys go away on their own.
 */
import type { Closable } from '../../lib/lifecycle.ts';

export interface KeyValue {
  key: string;
  value: string;
  /** Revision of the transaction that created this key (since its last delete). */
  createRevision: number;
  /** Revision of the transaction that last wrote this key. */
  modRevision: number;
  /** Number of writes since creation, starting at 1. */
  version: number;
  /** The lease the key is attached to (set only when it is). */
  lease?: string;
}

export interface WatchEvent {
  type: 'put' | 'delete';
  key: string;
  /** The new value (put) or undefined (delete). */
  value: string | undefined;
  revision: number;
}

/**
 * One write inside a transaction. `expectModRevision` makes it conditional: 0 means "the key
 * must not exist", n means "the key must have been last written at revision n". When any
 * condition fails the whole transaction is refused with ERR_STORE_CONFLICT and nothing changes.
 */
export type TxnOp =
  | {
      type: 'put';
      key: string;
      value: string;
      expectModRevision?: number;
      /** The key is deleted (a delete event at a new revision) when this lease expires or is revoked. */
      lease?: string;
    }
  | { type: 'delete'; key: string; expectModRevision?: number };

/** Options of Store.put. */
export interface PutOptions {
  /** Conditional write, as TxnOp's: 0 = the key must not exist, n = last written at revision n. */
  expectModRevision?: number;
  /**
   * The key is deleted (a delete event at a new revision) when this lease expires or is
   * revoked. Writing the key again without a lease detaches it. An unknown or expired lease
   * fails the write with ERR_STORE_LEASE_NOT_FOUND.
   */
  lease?: string;
}

export interface Watch {
  /** Stops delivering events. Idempotent. */
  cancel(): void;
}

export type WatchListener = (events: WatchEvent[]) => void;

export interface Store extends Closable {
  get(key: string): Promise<KeyValue | undefined>;
  /** All keys starting with `prefix`, in key order, and the store revision they were read at. */
  list(prefix: string): Promise<{ items: KeyValue[]; revision: number }>;
  /** Writes one key; returns the new store revision. */
  put(key: string, value: string, options?: PutOptions): Promise<number>;
  /** Deletes one key; returns whether it existed. */
  delete(key: string, options?: { expectModRevision?: number }): Promise<boolean>;
  /** Applies all ops atomically or none; returns the new store revision. */
  txn(ops: TxnOp[]): Promise<number>;
  /**
   * Delivers, in order, every change to keys under `prefix` with revision > `afterRevision`
   * (history first, then live changes). Fails with ERR_STORE_COMPACTED through `onError` when
   * that history is no longer kept.
   */
  watch(prefix: string, afterRevision: number, listener: WatchListener, onError?: (err: Error) => void): Watch;
  /** Grants a lease that lives `ttlSeconds` (integer ≥ 1) unless kept alive; returns its id (a decimal string). */
  grantLease(ttlSeconds: number): Promise<string>;
  /**
   * Renews the lease for its full TTL. Returns false when it has expired or was revoked (its
   * keys are then gone). Works for a lease granted by another client or process.
   */
  keepAlive(lease: string): Promise<boolean>;
  /** Ends the lease now and deletes its keys. No error when it is already gone. */
  revokeLease(lease: string): Promise<void>;
}
