/**
 * Progressive delivery. For a function with a Rollout, a new revision does not take over its
 * host at once: deploy (or apply) creates it, and this controller moves traffic to it step by
 * step through a Route on the function's own host (10 % → 50 % → …), judging it on what the
 * gateway saw of it (share of 5xx, p99; control/analysis/stats.ts). If it stays within the
 * thresholds through every step it is promoted (it becomes the function's serving revision);
 * the moment it goes over them with enough requests to judge, it is rolled back (all traffic to
 * the stable revision; the function never stopped serving it). Every outcome is kept in the
 * rollout's history.
 */

import { parseDuration } from '../../lib/duration.ts';
import { errorMessage, isTideError } from '../../lib/errors.ts';
import type { Logger } from '../../lib/log.ts';
import type { TrafficSummary } from '../analysis/stats.ts';
import { type FunctionRecord, keys } from '../api/schema/function.ts';
import { type RolloutRecord, type RolloutStatus, rolloutKeys } from '../api/schema/rollout.ts';
import { type RouteRecord, routeKeys } from '../api/schema/route.ts';
import type { Store } from '../store/index.ts';

export interface RolloutOptions {
  store: Store;
  traffic: { summary(revision: string, windowMs?: number): TrafficSummary };
  log: Logger;
  /** How often rollouts are looked at, ms. Default 250. */
  tickMs?: number;
}

/** Defaults of a Rollout's analysis. */
export const ANALYSIS_DEFAULTS = { maxErrorRate: 0.05, minRequests: 10 };

export class RolloutController {
  readonly #opts: RolloutOptions;
  readonly #log: Logger;
  #timer: NodeJS.Timeout | undefined;
  #running = false;
  readonly #requests = new Map<string, 'promote' | 'abort' | 'pause' | 'resume'>();

  constructor(opts: RolloutOptions) {
    this.#opts = opts;
    this.#log = opts.log.child({ component: 'control.rollout' });
  }

  start(): void {
    this.#timer = setInterval(() => void this.tick(), this.#opts.tickMs ?? 250);
    this.#timer.unref();
  }

  close(): void {
    clearInterval(this.#timer);
  }

  /** Asks the rollout of `name` to finish now (promote, abort back to stable), or to hold or go on with its steps. */
  request(name: string, what: 'promote' | 'abort' | 'pause' | 'resume'): void {
    this.#requests.set(name, what);
  }

  /** Every rollout with its state (a rollout not looked at yet reads as Stable). */
  async list(): Promise<(RolloutStatus & { steps: number })[]> {
    const [rollouts, statuses] = await Promise.all([this.#opts.store.list(rolloutKeys.rollouts()), this.#opts.store.list(rolloutKeys.statuses())]);
    const byName = new Map(statuses.items.map((kv) => [(JSON.parse(kv.value) as RolloutStatus).name, JSON.parse(kv.value) as RolloutStatus]));
    return rollouts.items.map((kv) => {
      const r = JSON.parse(kv.value) as RolloutRecord;
      const s = byName.get(r.name) ?? {
        name: r.name,
        function: r.spec.function ?? r.name,
        phase: 'Stable' as const,
        stable: '',
        message: 'not looked at yet',
        history: [],
        updatedAt: '',
      };
      return { ...s, steps: r.spec.steps.length };
    });
  }

  async status(name: string): Promise<RolloutStatus | undefined> {
    const kv = await this.#opts.store.get(rolloutKeys.status(name));
    return kv ? (JSON.parse(kv.value) as RolloutStatus) : undefined;
  }

  /** One look at every rollout; also run by the timer. */
  async tick(): Promise<void> {
    if (this.#running) return;
    this.#running = true;
    try {
      const { items } = await this.#opts.store.list(rolloutKeys.rollouts());
      for (const kv of items) {
        const r = JSON.parse(kv.value) as RolloutRecord;
        try {
          await this.#step(r);
        } catch (err) {
          if (!isTideError(err, 'ERR_STORE_CONFLICT')) this.#log.error({ err: errorMessage(err), rollout: r.name }, 'rollout step failed');
        }
      }
    } finally {
      this.#running = false;
    }
  }

  async #step(r: RolloutRecord): Promise<void> {
    const store = this.#opts.store;
    const fnName = r.spec.function ?? r.name;
    const fnKv = await store.get(keys.function(fnName));
    if (!fnKv) return;
    const fn = JSON.parse(fnKv.value) as FunctionRecord;
    const statusKv = await store.get(rolloutKeys.status(r.name));
    const now = Date.now();
    let s: RolloutStatus = statusKv
      ? (JSON.parse(statusKv.value) as RolloutStatus)
      : { name: r.name, function: fnName, phase: 'Stable', stable: fn.servingRevision, message: 'watching for a new revision', history: [], updatedAt: '' };
    const save = async (next: RolloutStatus, extra: { type: 'put' | 'delete'; key: string; value?: string; expectModRevision?: number }[] = []) => {
      next.updatedAt = new Date(now).toISOString();
      await store.txn([
        { type: 'put', key: rolloutKeys.status(r.name), value: JSON.stringify(next), expectModRevision: statusKv?.modRevision ?? 0 },
        ...extra.map((e) =>
          e.type === 'put'
            ? { type: 'put' as const, key: e.key, value: e.value as string, expectModRevision: e.expectModRevision }
            : { type: 'delete' as const, key: e.key },
        ),
      ]);
      s = next;
    };
    const route = (canary: string, weight: number): { type: 'put'; key: string; value: string } => ({
      type: 'put',
      key: routeKeys.route(fnName),
      value: JSON.stringify({
        name: fnName,
        namespace: fn.namespace,
        spec: {
          rules: [
            {
              split: [
                { revision: s.stable, weight: 100 - weight },
                { revision: canary, weight },
              ],
            },
          ],
          tags: { canary, stable: s.stable },
        },
        managedBy: 'rollout',
      } satisfies RouteRecord),
    });
    const finish = async (result: 'Promoted' | 'RolledBack' | 'Aborted', message: string) => {
      const canary = s.canary as string;
      const revKv = await store.get(keys.revision(canary));
      const changeCause = revKv ? (JSON.parse(revKv.value) as { changeCause?: string }).changeCause : undefined;
      const extra: { type: 'put' | 'delete'; key: string; value?: string; expectModRevision?: number }[] = [{ type: 'delete', key: routeKeys.route(fnName) }];
      if (result === 'Promoted')
        extra.push({ type: 'put', key: keys.function(fnName), value: JSON.stringify({ ...fn, servingRevision: canary }), expectModRevision: fnKv.modRevision });
      this.#log.info({ rollout: r.name, revision: canary, result, message }, 'rollout finished');
      await save(
        {
          ...s,
          phase: result,
          stable: result === 'Promoted' ? canary : s.stable,
          canary: undefined,
          step: undefined,
          stepStartedAt: undefined,
          message,
          history: [...s.history, { at: new Date(now).toISOString(), revision: canary, result, message, ...(changeCause ? { changeCause } : {}) }].slice(-50),
        },
        extra,
      );
    };

    if (s.phase !== 'Progressing') {
      // Moved by hand (`tide rollback`, `tide rollout undo`): what serves now is the stable one.
      if (statusKv && s.stable !== fn.servingRevision) {
        await save({ ...s, phase: 'Stable', stable: fn.servingRevision, message: `${fn.servingRevision} serves (moved by hand)` });
        return;
      }
      const latest = fn.latestRevision;
      const seen = latest === s.stable || s.history.some((h) => h.revision === latest);
      if (seen || revisionNumber(latest) < revisionNumber(s.stable)) {
        if (!statusKv) await save(s);
        return;
      }
      const first = r.spec.steps[0] as { weight: number };
      this.#log.info({ rollout: r.name, revision: latest, weight: first.weight }, 'rollout started');
      await save(
        { ...s, phase: 'Progressing', canary: latest, step: 0, stepStartedAt: now, message: `step 1 of ${r.spec.steps.length}: ${first.weight}% to ${latest}` },
        [route(latest, first.weight)],
      );
      return;
    }

    const canary = s.canary as string;
    const asked = this.#requests.get(r.name);
    if (asked === 'pause' || asked === 'resume') {
      this.#requests.delete(r.name);
      const paused = asked === 'pause';
      const at = s.step ?? 0;
      // Resuming starts the step's pause over, so it is judged on traffic after the hold.
      await save({
        ...s,
        paused,
        stepStartedAt: paused ? s.stepStartedAt : now,
        message: `${paused ? 'paused' : 'resumed'} at step ${at + 1} of ${r.spec.steps.length} (${(r.spec.steps[at] as { weight: number }).weight}% to ${s.canary})`,
      });
      return;
    }
    if (asked) {
      this.#requests.delete(r.name);
      await finish(
        asked === 'promote' ? 'Promoted' : 'Aborted',
        asked === 'promote' ? 'promoted by hand' : 'aborted by hand; all traffic back to the stable revision',
      );
      return;
    }
    const stepIndex = s.step ?? 0;
    const step = r.spec.steps[stepIndex] as { weight: number; pause: string };
    const elapsed = now - (s.stepStartedAt ?? now);
    const a = { ...ANALYSIS_DEFAULTS, ...(r.spec.analysis ?? {}) };
    const seen = this.#opts.traffic.summary(canary, Math.max(1000, elapsed));
    if (seen.requests >= a.minRequests) {
      const p99Limit = r.spec.analysis?.maxP99 ? parseDuration(r.spec.analysis.maxP99, 'maxP99') : undefined;
      const why =
        seen.errorRate > a.maxErrorRate
          ? `${(seen.errorRate * 100).toFixed(1)}% of ${seen.requests} requests failed (limit ${(a.maxErrorRate * 100).toFixed(1)}%)`
          : p99Limit !== undefined && seen.p99Ms !== null && seen.p99Ms > p99Limit
            ? `p99 ${seen.p99Ms} ms over ${seen.requests} requests (limit ${p99Limit} ms)`
            : undefined;
      if (why) {
        await finish('RolledBack', `rolled back at step ${stepIndex + 1}: ${why}`);
        return;
      }
    }
    if (s.paused || elapsed < parseDuration(step.pause, 'pause')) return;
    const next = stepIndex + 1;
    if (next >= r.spec.steps.length) {
      await finish(
        'Promoted',
        `promoted after ${r.spec.steps.length} steps (${seen.requests} requests in the last, ${(seen.errorRate * 100).toFixed(1)}% failed)`,
      );
      return;
    }
    const w = (r.spec.steps[next] as { weight: number }).weight;
    await save({ ...s, step: next, stepStartedAt: now, message: `step ${next + 1} of ${r.spec.steps.length}: ${w}% to ${canary}` }, [route(canary, w)]);
  }
}

function revisionNumber(name: string): number {
  return Number(/-(\d{5})$/.exec(name)?.[1] ?? 0);
}
