/**
 * The node agent: makes the instances running on this node match what the Store says. It
 * registers its node (capacity, labels, taints) at /tide/nodes/<name>; for every function it
 * runs the serving revision with the count the scheduler placed on this node at
 * /tide/placements/… (the autoscaler decides the total, the scheduler where each one goes).
 * It starts instances that are missing one by one, takes surplus ones out of the endpoint and
 * drains them before they stop (graceful scale-down), and reports each revision's status
 * (phase, ready and desired counts, every instance, restarts) back to the Store. The gateway
 * asks it for a revision's endpoint; it never decides routing or counts.
 */
import { randomBytes } from 'node:crypto';
import type { InstanceStatus, NodeRecord, PlacementRecord, RevisionRecord, RevisionStatus } from '../../control/api/schema/function.ts';
import { parseRevision } from '../../control/api/schema/function.ts';
import { activeRevisions } from '../../control/api/schema/route.ts';
import type { NodeInfo } from '../../control/scheduler/placement.ts';
import type { Store } from '../../control/store/index.ts';
import { errorMessage, TideError } from '../../lib/errors.ts';
import { Informer } from '../../lib/informer.ts';
import type { Logger } from '../../lib/log.ts';
import type { DispatchMeta, Instance, InstanceEvent, SandboxDriver, SandboxRequest, SandboxResponse, SandboxUsage } from '../sandbox/driver.ts';
import { Prober } from './probes.ts';

/** The store layout the agent reads; passed in so runtime/ imports only types from control/. */
export interface AgentKeys {
  functions: string;
  revisions: string;
  statuses: string;
  /** Where this node reports a revision's status. */
  status: (rev: string, node: string) => string;
  /** Prefix of the scheduler's placement records. */
  placements: string;
  /** Where this node registers. */
  node: (name: string) => string;
  /** Prefix of Routes (revisions they name run too). */
  routes: string;
}

export interface AgentOptions {
  store: Store;
  /** Runs revisions with sandbox `worker`. */
  driver: SandboxDriver;
  /** Runs revisions with sandbox `container`; without it they fail to start, saying so. */
  container?: SandboxDriver;
  keys: AgentKeys;
  /** This node: its name, what it offers, labels and taints. */
  node: NodeInfo;
  /** The bundle file of a digest (fetched first, on a node that does not have it yet). */
  bundlePath: (digest: string) => string | Promise<string>;
  log: Logger;
  /** Where instance events are written for `tide logs`. */
  onEvent?: (event: InstanceEvent) => void;
  /** How long a stopping instance may drain, ms. */
  drainMs?: number;
  /** First wait before an instance killed by its probes is replaced, doubling up to 5 min, ms. Default 10000 (the kubelet's). */
  restartBackoffMs?: number;
  /** An instance started (a cold start): how long from the decision to start it until it could serve. */
  onStarted?: (info: { function: string; revision: string; sandbox: string; seconds: number }) => void;
  /**
   * Register with a lease of this many seconds, renewed every third of it (a cluster node): when
   * the node dies, its record goes and the scheduler moves its instances. Default: no lease.
   */
  leaseTtlSeconds?: number;
  /** Extra fields of the node record: where other machines reach this node's mesh listener. */
  advertise?: { mesh?: string };
  /** The Unix socket a function's instances reach the mesh through (the node's egress proxy). Default: no mesh. */
  meshSocket?: (namespace: string, fn: string) => Promise<string>;
}

/** An instance's memory and CPU, with who it is. */
export interface InstanceUsage extends SandboxUsage {
  function: string;
  revision: string;
  instance: string;
  sandbox: string;
}

/** What the gateway dispatches to: all ready instances of one revision. */
export interface RevisionEndpoint {
  readonly revision: string;
  readonly function: string;
  /** The latest instance start (performance.now() times), for cold-start spans. */
  readonly lastStart: { instance: string; sandbox: string; startedAt: number; readyAt: number } | undefined;
  /** True when a request sent now starts at once (a ready instance under its concurrency limit). */
  hasCapacity(): boolean;
  /** Calls `cb` whenever capacity may have appeared (an instance became ready, a request ended); returns the unsubscribe. */
  onCapacity(cb: () => void): () => void;
  /** True once the revision stopped on this node; ask `endpoint()` again. */
  readonly stopped: boolean;
  dispatch(req: SandboxRequest, res: SandboxResponse, meta: DispatchMeta): Promise<void>;
}

interface Slot {
  instance: Instance;
  status: InstanceStatus;
  prober?: Prober;
  /** performance.now() when its start began (0 once it has served: only the first readiness is a cold start). */
  startedAt?: number;
}

/** Restart back-off resets after this long without a restart (the kubelet's 10 min). */
const RESTART_RESET_MS = 10 * 60_000;
const RESTART_MAX_MS = 5 * 60_000;

/** How long status changes are gathered before one store write, ms. */
const STATUS_DELAY_MS = 20;

/** Back-off after failed starts: 1 s, 2 s, 4 s, … up to 60 s. */
function backoffMs(attempts: number): number {
  return Math.min(60_000, 1000 * 2 ** Math.max(0, attempts - 1));
}

class RevisionSet implements RevisionEndpoint {
  readonly revision: string;
  readonly record: RevisionRecord;
  /** Instances receiving requests. */
  ready: Slot[] = [];
  /** Instances loading the function. */
  starting = new Map<string, InstanceStatus>();
  /** Instances up but not receiving requests: their startup or readiness probe has not passed. */
  unready = new Map<string, Slot>();
  /** Instances finishing their requests before they stop. */
  draining = new Map<string, Slot>();
  /** Instances placed on this node. */
  desired: number;
  /** Instances the revision wants on all nodes, placed or pending (for its status). */
  total = 0;
  phase: RevisionStatus['phase'] = 'starting';
  /** When it first became ready (ms since epoch), 0 before. */
  readySince = 0;
  /** Failed starts in a row, and when the last one failed. */
  attempts = 0;
  failedAt = 0;
  restarts = 0;
  /** Instances killed by their probes, for the restart back-off, and when the last one was. */
  crashes = 0;
  lastCrashAt = 0;
  /** No replacement for a killed instance starts before this (ms since epoch). */
  restartHoldUntil = 0;
  lastError: string | undefined;
  lastErrorAt: string | undefined;
  /** Set while the scheduler cannot place some of its instances. */
  pendingReason: string | undefined;
  stopped = false;
  /** The latest instance start (performance.now() times), for cold-start spans. */
  lastStart: { instance: string; sandbox: string; startedAt: number; readyAt: number } | undefined;
  readonly #limit: number;
  readonly #listeners = new Set<() => void>();
  #next = 0;

  constructor(record: RevisionRecord, desired: number) {
    this.revision = record.name;
    this.record = record;
    this.desired = desired;
    this.#limit = record.config.scaling.containerConcurrency;
  }

  get function(): string {
    return this.record.function;
  }

  hasCapacity(): boolean {
    const list = this.ready;
    if (list.length === 0) return false;
    if (this.#limit === 0) return true;
    for (const s of list) if (s.instance.inflight < this.#limit) return true;
    return false;
  }

  onCapacity(cb: () => void): () => void {
    this.#listeners.add(cb);
    return () => this.#listeners.delete(cb);
  }

  notify(): void {
    for (const cb of this.#listeners) cb();
  }

  dispatch(req: SandboxRequest, res: SandboxResponse, meta: DispatchMeta): Promise<void> {
    const list = this.ready;
    if (list.length === 0) return Promise.reject(new TideError('ERR_PROXY_NOT_READY', `revision ${this.revision} has no ready instance`, { status: 503 }));
    // Least in flight, ties broken round robin.
    let best = (list[this.#next++ % list.length] as Slot).instance;
    for (const s of list) if (s.instance.inflight < best.inflight) best = s.instance;
    if (this.#limit > 0 && best.inflight >= this.#limit) {
      return Promise.reject(
        new TideError('ERR_PROXY_QUEUE_FULL', `every instance of ${this.revision} has ${this.#limit} requests in flight (containerConcurrency)`, {
          status: 503,
        }),
      );
    }
    const p = best.dispatch(req, res, meta);
    // Without a limit, capacity only appears with instances; with one, every finished request frees a slot.
    if (this.#limit === 0) return p;
    return p.finally(() => this.notify());
  }

  status(): RevisionStatus {
    const instances = [
      ...this.ready.map((s) => s.status),
      ...this.starting.values(),
      ...[...this.unready.values()].map((s) => s.status),
      ...[...this.draining.values()].map((s) => s.status),
    ];
    return {
      revision: this.revision,
      phase: this.phase,
      readyInstances: this.ready.length,
      desiredInstances: Math.max(this.total, this.desired),
      instances,
      restarts: this.restarts,
      ...(this.lastError === undefined ? {} : { lastError: this.lastError, lastErrorAt: this.lastErrorAt }),
      ...(this.pendingReason === undefined ? {} : { pending: this.pendingReason }),
      updatedAt: new Date().toISOString(),
    };
  }
}

export class NodeAgent {
  readonly #opts: AgentOptions;
  readonly #sets = new Map<string, RevisionSet>();
  readonly #log: Logger;
  readonly #pending = new Set<Promise<unknown>>();
  readonly #statusDue = new Set<RevisionSet>();
  /** Instances started by the container driver (the others are the worker driver's). */
  readonly #containers = new WeakSet<Instance>();
  #containersPrepared = false;
  #informer: Informer | undefined;
  #retryTimer: NodeJS.Timeout | undefined;
  #heartbeat: NodeJS.Timeout | undefined;
  #lease: string | undefined;
  #renewing = false;
  #closed = false;

  constructor(opts: AgentOptions) {
    this.#opts = opts;
    this.#log = opts.log.child({ component: 'runtime.agent' });
  }

  async start(): Promise<void> {
    await this.#register();
    const ttl = this.#opts.leaseTtlSeconds;
    if (ttl !== undefined) {
      this.#heartbeat = setInterval(() => void this.#renew(), Math.max(200, (ttl * 1000) / 3));
      this.#heartbeat.unref();
    }
    this.#informer = new Informer(
      this.#opts.store,
      [this.#opts.keys.functions, this.#opts.keys.revisions, this.#opts.keys.placements, this.#opts.keys.routes],
      () => this.reconcile(),
      (err) => this.#log.error({ err }, 'agent watch failed'),
    );
    await this.#informer.start();
  }

  /**
   * Where a request for `revision` of `fn` goes: that revision once it is ready here (with or
   * without instances: one scaled to zero is woken by the activator), or else, while it starts,
   * the function's previous revision that is still ready (so a deploy or a rollback never opens
   * a window of 503s).
   */
  /** Writes this node's record: with a lease (a cluster node), so it goes when the node stops renewing it. */
  async #register(): Promise<void> {
    const { store, keys, node, leaseTtlSeconds, advertise } = this.#opts;
    const record: NodeRecord = { ...node, ...advertise, registeredAt: new Date().toISOString() };
    if (leaseTtlSeconds === undefined) {
      await store.put(keys.node(node.name), JSON.stringify(record));
      return;
    }
    const lease = await store.grantLease(leaseTtlSeconds);
    await store.put(keys.node(node.name), JSON.stringify(record), { lease });
    this.#lease = lease;
    this.#log.info({ node: node.name, ttl: leaseTtlSeconds }, 'node registered');
  }

  /** The heartbeat: renews the lease; registers again when it was lost (after an outage of control or a partition). */
  async #renew(): Promise<void> {
    if (this.#closed || this.#renewing) return;
    this.#renewing = true;
    try {
      const alive = this.#lease !== undefined && (await this.#opts.store.keepAlive(this.#lease));
      if (!alive && !this.#closed) {
        this.#log.warn({ node: this.#opts.node.name }, 'node lease lost; registering again');
        await this.#register();
        for (const set of this.#sets.values()) this.#reportStatus(set);
        this.#informer?.trigger();
      }
    } catch (err) {
      // Control is away: keep serving what runs here (static stability) and try again next beat.
      if (!this.#closed) this.#log.debug({ err: errorMessage(err) }, 'node heartbeat failed');
    } finally {
      this.#renewing = false;
    }
  }

  /** Memory and CPU of every instance running here (for metrics). */
  async usage(): Promise<InstanceUsage[]> {
    const out: InstanceUsage[] = [];
    const slots: [RevisionSet, Slot][] = [];
    for (const set of this.#sets.values()) for (const slot of [...set.ready, ...set.unready.values(), ...set.draining.values()]) slots.push([set, slot]);
    await Promise.all(
      slots.map(async ([set, slot]) => {
        const u = await slot.instance.usage?.().catch(() => undefined);
        if (!u) return;
        out.push({ function: set.record.function, revision: set.revision, instance: slot.instance.spec.id, sandbox: set.record.sandbox, ...u });
      }),
    );
    return out;
  }

  endpoint(revision: string, fn?: string): RevisionEndpoint | undefined {
    const set = this.#sets.get(revision);
    if (set && set.phase === 'ready') return set;
    if (fn === undefined) return undefined;
    let fallback: RevisionSet | undefined;
    for (const s of this.#sets.values()) {
      if (s.record.function === fn && s.phase === 'ready' && (!fallback || s.readySince > fallback.readySince)) fallback = s;
    }
    return fallback;
  }

  /** One pass: start missing instances, drain surplus ones, stop unwanted revisions. Idempotent. */
  async reconcile(): Promise<void> {
    if (this.#closed) return;
    const { store, keys } = this.#opts;
    const [fns, revs, statuses, placed, routes] = await Promise.all([
      store.list(keys.functions),
      store.list(keys.revisions),
      store.list(keys.statuses),
      store.list(keys.placements),
      store.list(keys.routes),
    ]);
    if (this.#closed) return;
    const revisions = new Map(
      revs.items.map((kv) => {
        const r = parseRevision(kv.value);
        return [r.name, r];
      }),
    );
    const placements = new Map(
      placed.items.map((kv) => {
        const p = JSON.parse(kv.value) as PlacementRecord;
        return [p.revision, p];
      }),
    );
    const self = this.#opts.node.name;
    const desired = activeRevisions(fns.items, routes.items, revisions);
    if (!this.#containersPrepared && [...desired.values()].some((r) => r.sandbox === 'container')) {
      this.#containersPrepared = true;
      this.#opts.container?.prepare?.().catch((err: unknown) => this.#log.error({ err: errorMessage(err) }, 'the container sandbox is not available'));
    }
    for (const [name, rev] of desired) {
      const placement = placements.get(name);
      // Not placed yet: nothing to run here until the scheduler says.
      if (!placement) continue;
      const count = placement.nodes[self] ?? 0;
      let set = this.#sets.get(name);
      // A name reused for different content (a function deleted and deployed again) is a new revision.
      if (set && set.record.templateHash !== rev.templateHash) {
        this.#stopRevision(set);
        set = undefined;
      }
      let changed = false;
      if (!set) {
        set = new RevisionSet(rev, count);
        this.#sets.set(name, set);
        // A revision placed at zero was loaded once already by the deploy's check: it is ready to be woken.
        if (count === 0 && placement.pending === 0) this.#becomeReady(set);
        changed = true;
      }
      // Instances no node can take: a revision with none running here says why.
      const pendingReason =
        placement.pending > 0 ? `Pending: ${placement.pending} instance${placement.pending === 1 ? '' : 's'}: ${placement.reason ?? ''}` : undefined;
      if (pendingReason !== set.pendingReason) {
        set.pendingReason = pendingReason;
        if (pendingReason && set.phase !== 'ready') set.phase = 'pending';
        else if (!pendingReason && set.phase === 'pending') {
          set.phase = 'starting';
          if (count === 0) this.#becomeReady(set);
        }
        changed = true;
      }
      const total = Object.values(placement.nodes).reduce((a, b) => a + b, 0) + placement.pending;
      if (set.desired !== count || set.total !== total) {
        set.desired = count;
        set.total = total;
        changed = true;
      }
      // Start first, report after: a cold start waits for nothing but its instance.
      this.#converge(set);
      if (changed) this.#reportStatus(set);
    }
    const wantedFunctions = new Map([...desired.values()].map((r) => [r.function, r.name]));
    for (const [name, set] of this.#sets) {
      if (desired.has(name)) continue;
      // Keep serving the old revision until the function's new one is ready here (or while the
      // new one has failed to start: the last ready revision keeps serving, as in Knative).
      const next = wantedFunctions.get(set.record.function);
      const nextSet = next === undefined ? undefined : this.#sets.get(next);
      if (set.phase === 'ready' && next !== undefined && nextSet?.phase !== 'ready') continue;
      this.#stopRevision(set);
    }
    // Status left by an earlier run of this node for revisions it no longer runs (and records
    // from before statuses were per node).
    for (const kv of statuses.items) {
      const rest = kv.key.slice(keys.statuses.length);
      const slash = rest.indexOf('/');
      const mine = slash === -1 || rest.slice(slash + 1) === self;
      const rev = slash === -1 ? rest : rest.slice(0, slash);
      if (mine && (slash === -1 || !this.#sets.has(rev))) await store.delete(kv.key, { expectModRevision: kv.modRevision }).catch(() => {});
    }
  }

  /** Waits until no reconcile pass runs and no instance is starting or draining. */
  async settled(): Promise<void> {
    for (;;) {
      await this.#informer?.idle();
      if (this.#pending.size === 0) return;
      await Promise.allSettled([...this.#pending]);
    }
  }

  /** Called by the driver's onEvent: an instance's thread was replaced. */
  recordEvent(event: InstanceEvent): void {
    const set = this.#sets.get(event.revision);
    this.#log.warn({ instance: event.instance, reason: event.reason }, 'instance replaced');
    this.#opts.onEvent?.(event);
    if (!set) return;
    set.restarts++;
    set.lastError = `${event.instance}: ${event.message}`;
    set.lastErrorAt = new Date().toISOString();
    this.#reportStatus(set);
  }

  /** Starts what is missing and drains what is surplus; never waits for either. */
  #converge(set: RevisionSet): void {
    if (set.stopped || this.#closed) return;
    const up = set.ready.length + set.unready.size;
    const have = up + set.starting.size;
    if (have < set.desired) {
      const now = Date.now();
      const wait = Math.max(set.attempts > 0 ? set.failedAt + backoffMs(set.attempts) - now : 0, set.restartHoldUntil - now);
      if (wait > 0) {
        this.#retryLater(wait);
        return;
      }
      for (let i = have; i < set.desired; i++) this.#track(this.#startInstance(set));
    } else if (up > set.desired) {
      // Surplus: instances not serving go first, then the least busy; each stops receiving at once and drains.
      const byLoad = [...set.ready].sort((a, b) => a.instance.inflight - b.instance.inflight);
      const surplus = [...set.unready.values(), ...byLoad].slice(0, up - set.desired);
      for (const slot of surplus) this.#track(this.#drainInstance(set, slot));
    }
  }

  #track(p: Promise<unknown>): void {
    this.#pending.add(p);
    void p.finally(() => this.#pending.delete(p));
  }

  #retryLater(ms: number): void {
    if (this.#retryTimer) return;
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = undefined;
      this.#informer?.trigger();
    }, ms);
    this.#retryTimer.unref();
  }

  async #startInstance(set: RevisionSet): Promise<void> {
    const rev = set.record;
    const id = `${rev.name}-${randomBytes(3).toString('hex')}`;
    set.starting.set(id, { id, phase: 'starting', since: new Date().toISOString() });
    const log = this.#log.child({ revision: rev.name, instance: id });
    let instance: Instance;
    const startedAt = performance.now();
    try {
      const meshSocket = this.#opts.meshSocket ? await this.#opts.meshSocket(rev.namespace, rev.function) : undefined;
      instance = await this.#driverOf(rev).start({
        meshSocket,
        id,
        function: rev.function,
        revision: rev.name,
        namespace: rev.namespace,
        bundlePath: rev.image ? '' : await this.#opts.bundlePath(rev.digest),
        env: { ...rev.env, ...rev.secrets },
        config: rev.config,
        ...(rev.image ? { image: rev.image } : {}),
      });
      if (rev.sandbox === 'container') this.#containers.add(instance);
      this.#opts.onStarted?.({ function: rev.function, revision: rev.name, sandbox: rev.sandbox, seconds: (performance.now() - startedAt) / 1000 });
    } catch (err) {
      set.starting.delete(id);
      if (set.stopped || this.#closed) return;
      set.attempts++;
      set.failedAt = Date.now();
      set.lastError = errorMessage(err);
      set.lastErrorAt = new Date().toISOString();
      if (set.readySince === 0) set.phase = 'failed';
      log.error({ err: set.lastError, attempts: set.attempts }, 'instance failed to start');
      this.#reportStatus(set);
      this.#retryLater(backoffMs(set.attempts));
      return;
    }
    set.starting.delete(id);
    if (set.stopped || this.#closed || set.ready.length + set.unready.size >= set.desired) {
      // Not wanted any more (stopped, or scaled down while it started).
      await this.#stopInstance(instance, { drain: false });
      if (!set.stopped) this.#reportStatus(set);
      return;
    }
    set.attempts = 0;
    const slot: Slot = { instance, status: { id, phase: 'starting', since: new Date().toISOString() }, startedAt };
    const probes = rev.config.probes;
    if (!probes.startup && !probes.readiness && !probes.liveness) {
      this.#serve(set, slot);
      return;
    }
    set.unready.set(id, slot);
    this.#reportStatus(set);
    slot.prober = new Prober(instance, probes, {
      started: () => {},
      readiness: (ok, detail) => {
        if (ok) this.#serve(set, slot);
        else this.#unserve(set, slot, detail);
      },
      dead: (reason) => this.#restart(set, slot, reason),
    });
    slot.prober.start();
  }

  /** The instance receives requests from now on. */
  #serve(set: RevisionSet, slot: Slot): void {
    if (set.stopped || this.#closed || set.ready.includes(slot)) return;
    if (!set.unready.delete(slot.status.id) && slot.status.phase !== 'starting') return;
    slot.status = { ...slot.status, phase: 'ready', since: new Date().toISOString() };
    set.ready.push(slot);
    if (slot.startedAt !== undefined) {
      set.lastStart = { instance: slot.status.id, sandbox: set.record.sandbox, startedAt: slot.startedAt, readyAt: performance.now() };
      slot.startedAt = undefined;
    }
    const first = set.phase !== 'ready';
    this.#becomeReady(set);
    set.notify();
    if (first) this.#log.info({ revision: set.revision }, 'revision ready');
    this.#reportStatus(set);
    // Revisions kept serving while this one started can go now.
    if (first) this.#informer?.trigger();
  }

  /** Its readiness probe failed: no new requests until it passes again (it keeps running). */
  #unserve(set: RevisionSet, slot: Slot, detail: string): void {
    const i = set.ready.indexOf(slot);
    if (set.stopped || i === -1) return;
    set.ready.splice(i, 1);
    slot.status = { ...slot.status, phase: 'unready', since: new Date().toISOString() };
    set.unready.set(slot.status.id, slot);
    set.lastError = `${slot.status.id}: ${detail}`;
    set.lastErrorAt = new Date().toISOString();
    this.#log.warn({ instance: slot.status.id, detail }, 'instance not ready');
    this.#reportStatus(set);
  }

  /**
   * Its startup or liveness probe gave up on it: it is stopped and replaced, after a back-off of
   * 10 s doubling to 5 min (reset after 10 min without a restart), as the kubelet does.
   */
  #restart(set: RevisionSet, slot: Slot, reason: string): void {
    if (set.stopped) return;
    const i = set.ready.indexOf(slot);
    if (i !== -1) set.ready.splice(i, 1);
    else if (!set.unready.delete(slot.status.id)) return;
    slot.prober?.stop();
    const now = Date.now();
    if (now - set.lastCrashAt > RESTART_RESET_MS) set.crashes = 0;
    set.crashes++;
    set.lastCrashAt = now;
    const wait = Math.min(RESTART_MAX_MS, (this.#opts.restartBackoffMs ?? 10_000) * 2 ** (set.crashes - 1));
    set.restartHoldUntil = now + wait;
    set.restarts++;
    set.lastError = `${slot.status.id}: ${reason}; replaced in ${Math.round(wait / 100) / 10} s`;
    set.lastErrorAt = new Date().toISOString();
    this.#log.warn({ instance: slot.status.id, reason, backoffMs: wait }, 'instance restarted by its probe');
    this.#opts.onEvent?.({
      instance: slot.status.id,
      revision: set.revision,
      function: set.record.function,
      type: 'replaced',
      reason: 'probe',
      message: set.lastError,
    });
    this.#track(this.#stopInstance(slot.instance, { drain: true, drainMs: Math.min(2000, this.#opts.drainMs ?? 30_000) }));
    this.#reportStatus(set);
    this.#converge(set);
  }

  #driverOf(rev: RevisionRecord): SandboxDriver {
    if (rev.sandbox !== 'container') return this.#opts.driver;
    if (this.#opts.container) return this.#opts.container;
    throw new TideError('ERR_SANDBOX_UNAVAILABLE', `${rev.name} needs the container sandbox, which this node does not offer`, { status: 503 });
  }

  #stopInstance(instance: Instance, options: { drain: boolean; drainMs?: number }): Promise<void> {
    const driver = this.#containers.has(instance) ? this.#opts.container : this.#opts.driver;
    return (driver ?? this.#opts.driver).stop(instance, options);
  }

  #becomeReady(set: RevisionSet): void {
    set.phase = 'ready';
    if (set.readySince === 0) set.readySince = Date.now();
  }

  async #drainInstance(set: RevisionSet, slot: Slot): Promise<void> {
    const i = set.ready.indexOf(slot);
    if (i !== -1) set.ready.splice(i, 1);
    else if (!set.unready.delete(slot.status.id)) return;
    slot.prober?.stop();
    slot.status = { ...slot.status, phase: 'draining', since: new Date().toISOString() };
    set.draining.set(slot.status.id, slot);
    this.#reportStatus(set);
    await this.#stopInstance(slot.instance, { drain: true, drainMs: this.#opts.drainMs ?? 30_000 });
    set.draining.delete(slot.status.id);
    this.#reportStatus(set);
  }

  #stopRevision(set: RevisionSet): void {
    if (this.#sets.get(set.revision) !== set) return;
    this.#sets.delete(set.revision);
    set.stopped = true;
    set.phase = 'stopping';
    this.#log.info({ revision: set.revision }, 'revision stopping');
    const slots = [...set.ready.splice(0), ...set.unready.values()];
    set.unready.clear();
    for (const slot of slots) slot.prober?.stop();
    set.notify();
    this.#track(
      (async () => {
        await this.#opts.store.delete(this.#opts.keys.status(set.revision, this.#opts.node.name)).catch(() => {});
        await Promise.all(slots.map((s) => this.#stopInstance(s.instance, { drain: true, drainMs: this.#opts.drainMs ?? 30_000 })));
      })(),
    );
  }

  /**
   * Writes the revision's status soon, once for a burst of changes: the data path reads the
   * in-memory sets, so a cold start never waits for (or shares its core with) a store write.
   */
  #reportStatus(set: RevisionSet): void {
    if (this.#statusDue.has(set)) return;
    this.#statusDue.add(set);
    this.#track(
      new Promise<void>((resolve) => setTimeout(resolve, STATUS_DELAY_MS)).then(() => {
        this.#statusDue.delete(set);
        return this.#writeStatus(set);
      }),
    );
  }

  async #writeStatus(set: RevisionSet): Promise<void> {
    if (set.stopped || this.#sets.get(set.revision) !== set) return;
    try {
      // A cluster node's reports go with its lease: a dead node's instances are not counted for long.
      const lease = this.#lease;
      await this.#opts.store.put(
        this.#opts.keys.status(set.revision, this.#opts.node.name),
        JSON.stringify({ ...set.status(), node: this.#opts.node.name }),
        lease ? { lease } : {},
      );
    } catch (err) {
      if (this.#closed) return;
      // The data path learns of ready instances only from this record: try again until it is written.
      this.#log.warn({ err: errorMessage(err), revision: set.revision }, 'writing revision status failed; trying again in 1 s');
      setTimeout(() => {
        if (!this.#closed) this.#reportStatus(set);
      }, 1000).unref();
    }
  }

  /** Stops watching and drains every instance (in-flight requests finish, bounded by drainMs). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#informer?.close();
    clearTimeout(this.#retryTimer);
    clearInterval(this.#heartbeat);
    // A cluster node leaves at once: its record goes, so its instances are placed elsewhere while these drain.
    if (this.#lease) await this.#opts.store.revokeLease(this.#lease).catch(() => {});
    await this.#informer?.idle();
    await Promise.allSettled([...this.#pending]);
    const sets = [...this.#sets.values()];
    this.#sets.clear();
    for (const s of sets) s.stopped = true;
    for (const s of sets) for (const slot of [...s.ready, ...s.unready.values()]) slot.prober?.stop();
    await Promise.all(
      sets.flatMap((s) =>
        [...s.ready, ...s.unready.values(), ...s.draining.values()].map((slot) =>
          this.#stopInstance(slot.instance, { drain: true, drainMs: this.#opts.drainMs ?? 30_000 }),
        ),
      ),
    );
    await this.#opts.driver.close?.();
    await this.#opts.container?.close?.();
  }
}
