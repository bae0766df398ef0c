/**
 * The scaling decider: a pure function from (spec, what was observed, its own state, now) to
 * the desired instance count and the next state — no timers, no I/O, so tests drive time.
 * It follows Knative's KPA:
 *
 * - desired = ceil(observed / (target × targetUtilization)), with `observed` averaged over the
 *   stable window (60 s) and over the panic window (10 % of it);
 * - panic mode starts when the panic window's demand is ≥ panicThreshold (2×) the ready count,
 *   and ends once the stable window has passed with no such burst; in panic the count never
 *   goes down;
 * - one decision moves the count up at most maxScaleUpRate× (1000) and down at most
 *   ÷maxScaleDownRate (2) from the ready count;
 * - a scale-down waits until it has been wanted for scaleDownDelay; the last instance goes only
 *   after scaleToZeroGracePeriod without traffic; minScale/maxScale bound everything.
 */
import type { ScalingSpec } from '../config.ts';

export interface Observed {
  /** Average concurrency (or rps, per spec.metric) over the stable window, whole revision. */
  stable: number;
  /** The same over the panic window. */
  panic: number;
  /** Instances ready to serve now. */
  ready: number;
  /** When the revision last saw a request start or end (ms); 0 if never. */
  lastActivityAt: number;
  /** Requests waiting in the activator for capacity (they count as demand). */
  queued: number;
}

export interface DeciderState {
  /** When panic mode began (ms), or 0 when not panicking. */
  panicSince: number;
  /** The last decision whose panic window showed a burst (ms). */
  lastBurstAt: number;
  /** The highest count decided during this panic. */
  panicDesired: number;
  /** Recent decisions (for scaleDownDelay), newest last. */
  recent: { at: number; desired: number }[];
  /** The last decision. */
  desired: number;
}

export interface Decision {
  at: number;
  desired: number;
  /** The count before bounds and delays: what the load alone asks for. */
  wanted: number;
  ready: number;
  observedStable: number;
  observedPanic: number;
  panic: boolean;
  /** Why the count is what it is, in a few words (shown by `tide get instances`). */
  reason: string;
}

export function initialState(spec: ScalingSpec): DeciderState {
  return { panicSince: 0, lastBurstAt: 0, panicDesired: 0, recent: [], desired: Math.max(spec.minScale, spec.initialScale) };
}

export function decide(spec: ScalingSpec, o: Observed, state: DeciderState, now: number): { decision: Decision; state: DeciderState } {
  const perInstance = spec.target * spec.targetUtilization;
  const stableDemand = o.stable + o.queued;
  const panicDemand = o.panic + o.queued;
  const stableWanted = Math.max(0, Math.ceil(stableDemand / perInstance - 1e-9));
  const panicWanted = Math.max(0, Math.ceil(panicDemand / perInstance - 1e-9));
  const ready = o.ready;
  const capacity = Math.max(1, ready);

  // Panic: enter on a burst, leave after a full stable window without one.
  let panicSince = state.panicSince;
  let panicDesired = state.panicDesired;
  let lastBurstAt = state.lastBurstAt;
  const burst = panicWanted / capacity >= spec.panicThreshold;
  if (burst) {
    lastBurstAt = now;
    if (panicSince === 0) {
      panicSince = now;
      panicDesired = 0;
    }
  } else if (panicSince !== 0 && now - lastBurstAt >= spec.stableWindowMs) {
    panicSince = 0;
    panicDesired = 0;
  }
  const panic = panicSince !== 0;

  let wanted = panic ? panicWanted : stableWanted;
  let reason = panic ? 'panic window' : 'stable window';
  if (panic) {
    // Never scale down while panicking.
    wanted = Math.max(wanted, panicDesired, ready);
    panicDesired = wanted;
  }

  let desired = wanted;
  if (ready > 0) {
    const up = Math.ceil(spec.maxScaleUpRate * ready);
    const down = Math.floor(ready / spec.maxScaleDownRate);
    if (desired > up) {
      desired = up;
      reason += `, limited by maxScaleUpRate ${spec.maxScaleUpRate}`;
    } else if (desired < down) {
      desired = down;
      reason += `, limited by maxScaleDownRate ${spec.maxScaleDownRate}`;
    }
  }

  // Scale to zero only after the grace period without any traffic.
  // (It keeps an instance that exists; it never starts one for a revision that has none and no traffic.)
  if (desired === 0 && (ready > 0 || state.desired > 0) && o.lastActivityAt !== 0 && now - o.lastActivityAt < spec.scaleToZeroGracePeriodMs) {
    desired = 1;
    reason = `idle for ${Math.round((now - o.lastActivityAt) / 1000)} s of the ${Math.round(spec.scaleToZeroGracePeriodMs / 1000)} s grace period`;
  }
  if (o.queued > 0 && desired === 0) desired = 1;
  if (o.queued > 0 && ready === 0) reason = `${o.queued} request${o.queued === 1 ? '' : 's'} waiting in the activator, no instance ready`;

  // scaleDownDelay: take the highest count decided within the delay.
  const recent = state.recent.filter((r) => now - r.at < spec.scaleDownDelayMs);
  if (spec.scaleDownDelayMs > 0) {
    const unheld = desired;
    const held = recent.reduce((m, r) => Math.max(m, r.desired), 0);
    if (held > desired) {
      desired = held;
      reason += `, scale-down delayed (${Math.round(spec.scaleDownDelayMs / 1000)} s)`;
    }
    recent.push({ at: now, desired: unheld });
  }

  if (desired < spec.minScale) {
    desired = spec.minScale;
    reason = `minScale ${spec.minScale}`;
  }
  if (spec.maxScale > 0 && desired > spec.maxScale) {
    desired = spec.maxScale;
    reason = `maxScale ${spec.maxScale}`;
  }

  const decision: Decision = {
    at: now,
    desired,
    wanted,
    ready,
    observedStable: round(stableDemand),
    observedPanic: round(panicDemand),
    panic,
    reason,
  };
  return { decision, state: { panicSince, lastBurstAt, panicDesired, recent, desired } };
}

function round(n: number): number {
  return Math.round(n * 100) / 100;
}
