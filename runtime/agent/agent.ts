/**
 * The node agent: makes the instances running on this node match what the Store says should
 * serve. Desired: for every function, its serving revision with `instances` instances. It
 * starts what is missing, drains and stops what is no longer wanted, and reports each
 * revision's status (starting, ready, failed, restarts) back to the Store. The gateway asks it
 * for a revision's endpoint; it never decides routing.
 */
import { randomBytes } from 'node:crypto';
import type { FunctionRecord, RevisionRecord, RevisionStatus } from '../../control/api/schema/function.ts';
import type { Store } from '../../control/store/index.ts';
import { errorMessage, TideError } from '../../lib/errors.ts';
import { Informer } from '../../lib/informer.ts';
import type { Logger } from '../../lib/log.ts';
import type { DispatchMeta, Instance, InstanceEvent, SandboxDriver, SandboxRequest, SandboxResponse } from '../sandbox/driver.ts';

/** The store layout the agent reads; passed in so runtime/ imports only types from control/. */
export interface AgentKeys {
  functions: string;
  revisions: string;
  statuses: string;
  status: (rev: string) => string;
}

export interface AgentOptions {
  store: Store;
  driver: SandboxDriver;
  keys: AgentKeys;
  bundlePath: (digest: string) => string;
  log: Logger;
  /** Where instance events are written for `tide logs`. */
  onEvent?: (event: InstanceEvent) => void;
  /** How long a stopping revision may drain, ms. */
  drainMs?: number;
}

/** What the gateway dispatches to: all ready instances of one revision. */
export interface RevisionEndpoint {
  readonly revision: string;
  dispatch(req: SandboxRequest, res: SandboxResponse, meta: DispatchMeta): Promise<void>;
}

class RevisionSet implements RevisionEndpoint {
  readonly revision: string;
  readonly record: RevisionRecord;
  instances: Instance[] = [];
  status: RevisionStatus;
  /** When it became ready (ms since epoch), 0 before. */
  readySince = 0;
  /** Failed start attempts, and when the last one failed. */
  attempts = 0;
  failedAt = 0;
  #next = 0;

  constructor(record: RevisionRecord) {
    this.revision = record.name;
    this.record = record;
    this.status = {
      revision: record.name,
      phase: 'starting',
      readyInstances: 0,
      desiredInstances: record.config.instances,
      restarts: 0,
      updatedAt: new Date().toISOString(),
    };
  }

  dispatch(req: SandboxRequest, res: SandboxResponse, meta: DispatchMeta): Promise<void> {
    const list = this.instances;
    if (list.length === 0) return Promise.reject(new TideError('ERR_PROXY_NOT_READY', `revision ${this.revision} has no ready instance`, { status: 503 }));
    // Least in-flight, ties broken round robin.
    let best = list[this.#next++ % list.length] as Instance;
    for (const inst of list) if (inst.inflight < best.inflight) best = inst;
    return best.dispatch(req, res, meta);
  }
}

export class NodeAgent {
  readonly #opts: AgentOptions;
  readonly #sets = new Map<string, RevisionSet>();
  readonly #starting = new Map<string, Promise<void>>();
  /** Failed start attempts so far, for revisions being retried. */
  readonly #retries = new Map<string, number>();
  readonly #log: Logger;
  #informer: Informer | undefined;
  #closed = false;

  constructor(opts: AgentOptions) {
    this.#opts = opts;
    this.#log = opts.log.child({ component: 'runtime.agent' });
  }

  async start(): Promise<void> {
    this.#informer = new Informer(
      this.#opts.store,
      [this.#opts.keys.functions, this.#opts.keys.revisions],
      () => this.reconcile(),
      (err) => this.#log.error({ err }, 'agent watch failed'),
    );
    await this.#informer.start();
  }

  /**
   * Where a request for `revision` of `fn` goes: that revision when it is ready here, or else,
   * while it starts, the function's previous revision that is still ready (so a deploy or a
   * rollback never opens a window of 503s).
   */
  endpoint(revision: string, fn?: string): RevisionEndpoint | undefined {
    const set = this.#sets.get(revision);
    if (set && set.status.phase === 'ready') return set;
    if (fn === undefined) return undefined;
    let fallback: RevisionSet | undefined;
    for (const s of this.#sets.values()) {
      if (s.record.function === fn && s.status.phase === 'ready' && (!fallback || s.readySince > fallback.readySince)) fallback = s;
    }
    return fallback;
  }

  /** One pass: start missing revisions, stop unwanted ones. Idempotent. */
  async reconcile(): Promise<void> {
    if (this.#closed) return;
    const { store, keys } = this.#opts;
    const [fns, revs, statuses] = await Promise.all([store.list(keys.functions), store.list(keys.revisions), store.list(keys.statuses)]);
    const revisions = new Map(
      revs.items.map((kv) => {
        const r = JSON.parse(kv.value) as RevisionRecord;
        return [r.name, r];
      }),
    );
    const desired = new Map<string, RevisionRecord>();
    for (const kv of fns.items) {
      const fn = JSON.parse(kv.value) as FunctionRecord;
      const rev = revisions.get(fn.servingRevision);
      if (rev) desired.set(rev.name, rev);
    }
    for (const [name, set] of this.#sets) {
      const want = desired.get(name);
      if (!want) continue;
      // A name reused for different content (a function deleted and deployed again) is a new revision.
      if (want.templateHash !== set.record.templateHash) await this.#stopRevision(set);
      // A revision that failed to start is tried again, backing off 2 s, 4 s, … up to 60 s.
      else if (set.status.phase === 'failed' && Date.now() - set.failedAt >= Math.min(60_000, 1000 * 2 ** set.attempts)) {
        this.#sets.delete(name);
        this.#retries.set(name, set.attempts);
      }
    }
    for (const [name, rev] of desired) {
      if (!this.#sets.has(name) && !this.#starting.has(name)) {
        const p = this.#startRevision(rev).finally(() => this.#starting.delete(name));
        this.#starting.set(name, p);
      }
    }
    const wantedFunctions = new Map([...desired.values()].map((r) => [r.function, r.name]));
    for (const [name, set] of this.#sets) {
      if (desired.has(name)) continue;
      // Keep serving the old revision until the function's new one is ready here (or while the
      // new one has failed to start: the last ready revision keeps serving, as in Knative).
      const next = wantedFunctions.get(set.record.function);
      const nextSet = next === undefined ? undefined : this.#sets.get(next);
      const nextNotReady = next !== undefined && (this.#starting.has(next) || (nextSet !== undefined && nextSet.status.phase !== 'ready'));
      if (set.status.phase === 'ready' && nextNotReady) continue;
      void this.#stopRevision(set);
    }
    // Status left by an earlier run of this node for revisions it no longer runs.
    for (const kv of statuses.items) {
      const rev = kv.key.slice(keys.statuses.length);
      if (!this.#sets.has(rev) && !desired.has(rev)) await store.delete(kv.key, { expectModRevision: kv.modRevision }).catch(() => {});
    }
  }

  /** Waits for revisions being started right now. */
  async settled(): Promise<void> {
    await this.#informer?.idle();
    await Promise.allSettled([...this.#starting.values()]);
  }

  /** Called by the driver's onEvent: an instance's thread was replaced. */
  recordEvent(event: InstanceEvent): void {
    const set = this.#sets.get(event.revision);
    this.#log.warn({ instance: event.instance, reason: event.reason }, 'instance replaced');
    this.#opts.onEvent?.(event);
    if (!set) return;
    set.status = {
      ...set.status,
      restarts: set.status.restarts + 1,
      lastError: `${event.instance}: ${event.message}`,
      lastErrorAt: new Date().toISOString(),
      updatedAt: new Date().toISOString(),
    };
    void this.#writeStatus(set);
  }

  async #startRevision(rev: RevisionRecord): Promise<void> {
    const set = new RevisionSet(rev);
    set.attempts = this.#retries.get(rev.name) ?? 0;
    this.#retries.delete(rev.name);
    this.#sets.set(rev.name, set);
    await this.#writeStatus(set);
    const log = this.#log.child({ revision: rev.name });
    const results = await Promise.allSettled(
      Array.from({ length: rev.config.instances }, () =>
        this.#opts.driver.start({
          id: `${rev.name}-${randomBytes(3).toString('hex')}`,
          function: rev.function,
          revision: rev.name,
          namespace: rev.namespace,
          bundlePath: this.#opts.bundlePath(rev.digest),
          env: { ...rev.env, ...rev.secrets },
          config: rev.config,
        }),
      ),
    );
    const started = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    const failure = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    const superseded = this.#closed || this.#sets.get(rev.name) !== set;
    if (superseded || failure) {
      // All or nothing: a revision never serves with some of its instances failed.
      await Promise.all(started.map((i) => this.#opts.driver.stop(i, { drain: false })));
    }
    if (superseded) {
      this.#informer?.trigger(); // it may be wanted again by now
      return;
    }
    if (failure) {
      set.attempts++;
      set.failedAt = Date.now();
      set.status = {
        ...set.status,
        phase: 'failed',
        lastError: errorMessage(failure.reason),
        lastErrorAt: new Date().toISOString(),
        updatedAt: new Date().toISOString(),
      };
      log.error({ err: errorMessage(failure.reason) }, 'revision failed to start');
    } else {
      set.instances = started;
      set.readySince = Date.now();
      set.status = { ...set.status, phase: 'ready', readyInstances: started.length, updatedAt: new Date().toISOString() };
      log.info({ instances: started.length }, 'revision ready');
    }
    await this.#writeStatus(set);
    // Revisions kept serving while this one started can go now.
    this.#informer?.trigger();
  }

  async #stopRevision(set: RevisionSet): Promise<void> {
    if (this.#sets.get(set.revision) !== set) return;
    this.#sets.delete(set.revision);
    this.#log.info({ revision: set.revision }, 'revision stopping');
    await this.#opts.store.delete(this.#opts.keys.status(set.revision)).catch(() => {});
    await Promise.all(set.instances.map((i) => this.#opts.driver.stop(i, { drain: true, drainMs: this.#opts.drainMs ?? 30_000 })));
  }

  async #writeStatus(set: RevisionSet): Promise<void> {
    if (this.#sets.get(set.revision) !== set) return;
    try {
      await this.#opts.store.put(this.#opts.keys.status(set.revision), JSON.stringify(set.status));
    } catch (err) {
      if (!this.#closed) this.#log.error({ err: errorMessage(err) }, 'writing revision status failed');
    }
  }

  /** Stops watching and drains every instance (in-flight requests finish, bounded by drainMs). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#informer?.close();
    await Promise.allSettled([...this.#starting.values()]);
    const sets = [...this.#sets.values()];
    this.#sets.clear();
    await Promise.all(sets.flatMap((s) => s.instances.map((i) => this.#opts.driver.stop(i, { drain: true, drainMs: this.#opts.drainMs ?? 30_000 }))));
  }
}
