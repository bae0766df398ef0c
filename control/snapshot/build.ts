/**
 * Builds the proxy Snapshot from the Store: which revision each function's host routes to,
 * with the per-route limits the gateway enforces before dispatch. A snapshot is immutable and
 * versioned by the store revision it was read at; the gateway swaps it atomically.
 */
import { Informer } from '../../lib/informer.ts';
import type { FunctionRecord } from '../api/schema/function.ts';
import { keys, parseRevision } from '../api/schema/function.ts';
import type { Store } from '../store/index.ts';

export interface RouteTarget {
  function: string;
  namespace: string;
  revision: string;
  maxBodyBytes: number;
  /** Requests the activator may hold for this revision while it has no capacity. */
  queueSize: number;
  /** Longest a request waits there, ms. */
  queueTimeoutMs: number;
}

export interface Snapshot {
  /** Store revision this snapshot was built from. */
  readonly version: number;
  /** Function name → target. */
  readonly routes: ReadonlyMap<string, RouteTarget>;
}

export const EMPTY_SNAPSHOT: Snapshot = Object.freeze({ version: 0, routes: new Map() });

export async function buildSnapshot(store: Store): Promise<Snapshot> {
  const [fns, revs] = await Promise.all([store.list(keys.functions()), store.list(keys.revisions())]);
  const revisions = new Map(
    revs.items.map((kv) => {
      const r = parseRevision(kv.value);
      return [r.name, r];
    }),
  );
  const routes = new Map<string, RouteTarget>();
  for (const kv of fns.items) {
    const fn = JSON.parse(kv.value) as FunctionRecord;
    const rev = revisions.get(fn.servingRevision);
    if (!rev) continue;
    routes.set(fn.name, {
      function: fn.name,
      namespace: fn.namespace,
      revision: rev.name,
      maxBodyBytes: rev.config.maxBodyBytes,
      queueSize: rev.config.scaling.queueSize,
      queueTimeoutMs: rev.config.scaling.queueTimeoutMs,
    });
  }
  return Object.freeze({ version: Math.max(fns.revision, revs.revision), routes });
}

/** Rebuilds and publishes a snapshot after every change to functions or revisions. */
export class SnapshotPublisher {
  readonly #informer: Informer;

  constructor(store: Store, publish: (snapshot: Snapshot) => void, onError: (err: unknown) => void) {
    this.#informer = new Informer(store, [keys.functions(), keys.revisions()], async () => publish(await buildSnapshot(store)), onError);
  }

  start(): Promise<void> {
    return this.#informer.start();
  }

  close(): void {
    this.#informer.close();
  }
}
