/**
 * The autoscaler: for every serving revision, every `tickMs` it reads the load the proxies
 * measured (LoadWindow), the ready count the node agents reported, and the requests waiting in
 * the activator; asks the decider for a count; and writes that count to /tide/scale/… when it
 * changes, where the node agents pick it up. When the activator holds requests for a revision
 * that is at zero, it decides at once instead of waiting for the tick.
 *
 * Every decision is kept (a bounded log per revision) with what was observed and why, for
 * `tide get instances -w` and the API.
 */
import { errorMessage, TideError } from '../../lib/errors.ts';
import { Informer } from '../../lib/informer.ts';
import type { Logger } from '../../lib/log.ts';
import { keys, parseRevision, type RevisionStatus, type ScaleRecord } from '../api/schema/function.ts';
import { activeRevisions, routeKeys } from '../api/schema/route.ts';
import type { Store } from '../store/index.ts';
import { panicWindowMs, type ScalingSpec } from './config.ts';
import { LoadWindow } from './metrics/window.ts';
import { type DeciderState, type Decision, decide, initialState } from './scaling/decider.ts';

export interface DecisionRecord extends Decision {
  /** Increases by one with every decision of this autoscaler (for `since`). */
  seq: number;
  revision: string;
  /** Requests held by the activator when it was made. */
  queued: number;
  /** The count written for the node agents (equal to `desired` unless the write failed). */
  written: boolean;
}

export interface AutoscalerOptions {
  store: Store;
  log: Logger;
  /** ms since epoch; tests drive it. */
  now?: () => number;
  /** Decisions kept per revision. Default 300 (10 minutes at the default tick). */
  keep?: number;
}

class RevisionScaler {
  readonly revision: string;
  readonly function: string;
  readonly spec: ScalingSpec;
  readonly templateHash: string;
  window: LoadWindow;
  state: DeciderState;
  /** When this autoscaler first saw the revision: idle time is counted from here at the earliest (0 after `zero`). */
  since: number;
  ready = 0;
  queued = 0;
  /** The count last written to the store (undefined before anything was read or written). */
  written: number | undefined;
  decisions: DecisionRecord[] = [];
  timer: NodeJS.Timeout | undefined;
  deciding = false;
  /** The activator asked while a decision was being made: make another right after. */
  again = false;

  constructor(revision: string, fn: string, spec: ScalingSpec, templateHash: string, now: number) {
    this.revision = revision;
    this.function = fn;
    this.spec = spec;
    this.templateHash = templateHash;
    this.window = new LoadWindow(spec.stableWindowMs);
    this.state = initialState(spec);
    this.since = now;
  }
}

export class Autoscaler {
  readonly #store: Store;
  readonly #log: Logger;
  readonly #now: () => number;
  readonly #keep: number;
  readonly #scalers = new Map<string, RevisionScaler>();
  #informer: Informer | undefined;
  #statuses: Informer | undefined;
  #seq = 0;
  #closed = false;

  constructor(opts: AutoscalerOptions) {
    this.#store = opts.store;
    this.#log = opts.log.child({ component: 'control.autoscaler' });
    this.#now = opts.now ?? Date.now;
    this.#keep = opts.keep ?? 300;
  }

  async start(): Promise<void> {
    const onError = (err: unknown) => this.#log.error({ err: errorMessage(err) }, 'autoscaler watch failed');
    this.#informer = new Informer(this.#store, [keys.functions(), keys.revisions(), keys.scales(), routeKeys.routes()], () => this.#refresh(), onError);
    // Ready counts change with every instance; reading them alone keeps that cheap.
    this.#statuses = new Informer(this.#store, [keys.statuses()], () => this.#refreshReady(), onError);
    await this.#informer.start();
    await this.#statuses.start();
  }

  /** A request for `revision` started (measured by a proxy or the activator). Cheap: on every request. */
  begin(revision: string): void {
    this.#scalers.get(revision)?.window.start(this.#now());
  }

  /** A request for `revision` ended. */
  end(revision: string): void {
    this.#scalers.get(revision)?.window.finish(this.#now());
  }

  /** The activator holds `depth` requests for `revision`. */
  queued(revision: string, depth: number): void {
    const s = this.#scalers.get(revision);
    if (s) s.queued = depth;
  }

  /** The activator holds requests for `revision`: from zero, decide now rather than at the next tick. */
  activate(revision: string): void {
    const s = this.#scalers.get(revision);
    if (!s || (s.written ?? 0) > 0) return;
    if (s.deciding) s.again = true;
    else void this.#decide(s);
  }

  /**
   * Scales every revision of function `fn` that serves (its own, and any a Route sends
   * traffic to) to zero now, without waiting for the stable window and grace period: `tide
   * bench --cold` measures cold starts this way. Refused while one has requests in flight or
   * waiting, or when minScale keeps instances. Resolves with the revisions it zeroed.
   */
  async zero(fn: string): Promise<string[]> {
    const mine = [...this.#scalers.values()].filter((s) => s.function === fn);
    if (mine.length === 0) throw new TideError('ERR_NOT_FOUND', `function ${fn} has no revision being scaled`, { status: 404 });
    for (const s of mine) {
      if (s.spec.minScale > 0)
        throw new TideError('ERR_BAD_REQUEST', `${s.revision} keeps minScale ${s.spec.minScale} instance(s); it never goes to zero`, { status: 409 });
      if (s.window.inflight > 0 || s.queued > 0)
        throw new TideError('ERR_BAD_REQUEST', `${s.revision} has requests in flight; it goes to zero only when idle`, { status: 409 });
    }
    const reason = 'scaled to zero on request';
    for (const s of mine) {
      const now = this.#now();
      s.window = new LoadWindow(s.spec.stableWindowMs);
      s.state = { ...initialState(s.spec), desired: 0 };
      s.since = 0;
      await this.#write(s, 0, reason, now);
      this.#remember(s, { at: now, desired: 0, wanted: 0, ready: s.ready, observedStable: 0, observedPanic: 0, panic: false, reason }, true);
      this.#log.info({ revision: s.revision, desired: 0, reason }, 'scale');
    }
    return mine.map((s) => s.revision);
  }

  /** Decisions for `revision` newer than `since` (a seq), oldest first. */
  decisions(revision: string, since = 0): DecisionRecord[] {
    const s = this.#scalers.get(revision);
    return s ? s.decisions.filter((d) => d.seq > since) : [];
  }

  /** What the autoscaler knows of a revision now, or undefined when it does not scale it. */
  describe(revision: string): { spec: ScalingSpec; desired: number | undefined; ready: number; queued: number; panic: boolean } | undefined {
    const s = this.#scalers.get(revision);
    return s && { spec: s.spec, desired: s.written, ready: s.ready, queued: s.queued, panic: s.state.panicSince !== 0 };
  }

  /** Every revision it scales, with its counts now (for metrics). */
  gauges(): { function: string; revision: string; desired: number; ready: number; queued: number; panic: boolean }[] {
    return [...this.#scalers.values()].map((s) => ({
      function: s.function,
      revision: s.revision,
      desired: s.written ?? s.state.desired,
      ready: s.ready,
      queued: s.queued,
      panic: s.state.panicSince !== 0,
    }));
  }

  /** Runs one decision for every revision now (tests; the timers do it otherwise). */
  async tick(): Promise<void> {
    await Promise.all([...this.#scalers.values()].map((s) => this.#decide(s)));
  }

  /** Re-reads which revisions serve, their ready counts and the written counts. */
  async #refresh(): Promise<void> {
    if (this.#closed) return;
    const [fns, revs, scales, routes] = await Promise.all([
      this.#store.list(keys.functions()),
      this.#store.list(keys.revisions()),
      this.#store.list(keys.scales()),
      this.#store.list(routeKeys.routes()),
    ]);
    const revisions = new Map(
      revs.items.map((kv) => {
        const r = parseRevision(kv.value);
        return [r.name, r];
      }),
    );
    const written = new Map(
      scales.items.map((kv) => {
        const sc = JSON.parse(kv.value) as ScaleRecord;
        return [sc.revision, { desired: sc.desired, kv }];
      }),
    );
    const serving = new Set<string>();
    const now = this.#now();
    const active = activeRevisions(fns.items, routes.items, revisions);
    for (const rev of active.values()) {
      serving.add(rev.name);
      let s = this.#scalers.get(rev.name);
      if (s && s.templateHash !== rev.templateHash) {
        this.#drop(s);
        s = undefined;
      }
      if (!s) {
        s = new RevisionScaler(rev.name, rev.function, rev.config.scaling, rev.templateHash, now);
        const existing = written.get(rev.name)?.desired;
        if (existing !== undefined) s.state = { ...s.state, desired: existing };
        this.#scalers.set(rev.name, s);
        const scaler = s;
        scaler.timer = setInterval(() => void this.#decide(scaler), scaler.spec.tickMs);
        scaler.timer.unref();
      }
      if (!s.deciding) s.written = written.get(rev.name)?.desired;
    }
    for (const s of [...this.#scalers.values()]) if (!serving.has(s.revision)) this.#drop(s);
    await this.#refreshReady();
    // Counts of revisions that no longer serve are of no use to anyone.
    for (const [rev, { kv }] of written) {
      if (!serving.has(rev)) await this.#store.delete(kv.key, { expectModRevision: kv.modRevision }).catch(() => {});
    }
  }

  /** Re-reads the ready count of every revision from the agents' status reports. */
  async #refreshReady(): Promise<void> {
    if (this.#closed) return;
    const { items } = await this.#store.list(keys.statuses());
    const ready = new Map<string, number>();
    for (const kv of items) {
      const st = JSON.parse(kv.value) as RevisionStatus;
      ready.set(st.revision, (ready.get(st.revision) ?? 0) + st.readyInstances);
    }
    for (const s of this.#scalers.values()) s.ready = ready.get(s.revision) ?? 0;
  }

  #drop(s: RevisionScaler): void {
    clearInterval(s.timer);
    if (this.#scalers.get(s.revision) === s) this.#scalers.delete(s.revision);
  }

  async #decide(s: RevisionScaler): Promise<void> {
    if (this.#closed || s.deciding) return;
    s.deciding = true;
    try {
      const now = this.#now();
      const stable = s.window.average(now, s.spec.stableWindowMs);
      const panic = s.window.average(now, panicWindowMs(s.spec));
      const metric = s.spec.metric === 'rps' ? 'rps' : 'concurrency';
      const { decision, state } = decide(
        s.spec,
        { stable: stable[metric], panic: panic[metric], ready: s.ready, lastActivityAt: Math.max(s.window.lastActivityAt, s.since), queued: s.queued },
        s.state,
        now,
      );
      s.state = state;
      let written = true;
      if (decision.desired !== s.written) {
        try {
          await this.#write(s, decision.desired, decision.reason, now);
          this.#log.info(
            {
              revision: s.revision,
              desired: decision.desired,
              ready: s.ready,
              stable: decision.observedStable,
              panic: decision.panic,
              reason: decision.reason,
            },
            'scale',
          );
        } catch (err) {
          written = false;
          if (!this.#closed) this.#log.error({ err: errorMessage(err), revision: s.revision }, 'writing the scale failed');
        }
      }
      this.#remember(s, decision, written);
    } finally {
      s.deciding = false;
    }
    if (s.again) {
      s.again = false;
      if ((s.written ?? 0) === 0 && s.queued > 0) await this.#decide(s);
    }
  }

  /** Writes the count for `s` to the store (what the scheduler and agents follow). */
  async #write(s: RevisionScaler, desired: number, reason: string, now: number): Promise<void> {
    const record: ScaleRecord = { revision: s.revision, desired, reason, updatedAt: new Date(now).toISOString() };
    await this.#store.put(keys.scale(s.revision), JSON.stringify(record));
    if (this.#scalers.get(s.revision) === s) s.written = desired;
  }

  /** Keeps a decision in the revision's bounded log. */
  #remember(s: RevisionScaler, decision: Decision, written: boolean): void {
    s.decisions.push({ ...decision, seq: ++this.#seq, revision: s.revision, queued: s.queued, written });
    if (s.decisions.length > this.#keep) s.decisions.splice(0, s.decisions.length - this.#keep);
  }

  close(): void {
    this.#closed = true;
    this.#informer?.close();
    this.#statuses?.close();
    for (const s of this.#scalers.values()) clearInterval(s.timer);
    this.#scalers.clear();
  }
}
