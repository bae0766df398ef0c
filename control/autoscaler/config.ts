/**
 * The autoscaler's knobs: one place for every default (Knative KPA's, where Tide has the same
 * knob), and the check that resolves a function's partial settings into a full ScalingSpec.
 * Messages name the knob and the rule, e.g. `maxScale must be an integer ≥ minScale (got 0)`.
 */
import { TideError } from '../../lib/errors.ts';

export interface ScalingSpec {
  /** Fewest instances, even when idle. 0 allows scale to zero. */
  minScale: number;
  /** Most instances; 0 means no limit. */
  maxScale: number;
  /** Instances started for a new revision before any traffic. */
  initialScale: number;
  /** What `target` counts: requests in flight per instance, or requests per second per instance. */
  metric: 'concurrency' | 'rps';
  /** The per-instance level the autoscaler aims for (before `targetUtilization`). */
  target: number;
  /** Share of `target` to aim at (0.7 keeps 30 % headroom for bursts). */
  targetUtilization: number;
  /** Hard limit of requests in flight per instance (0 = none); the activator holds the rest. */
  containerConcurrency: number;
  /** Averaging window of stable mode, ms. */
  stableWindowMs: number;
  /** Averaging window of panic mode, as a percentage of the stable window. */
  panicWindowPercentage: number;
  /** Panic when the panic window's demand reaches this multiple of current capacity. */
  panicThreshold: number;
  /** Most the count may grow per decision, as a multiple of the ready count. */
  maxScaleUpRate: number;
  /** Most the count may shrink per decision, as a divisor of the ready count. */
  maxScaleDownRate: number;
  /** How long the last instance is kept after traffic stops before going to zero, ms. */
  scaleToZeroGracePeriodMs: number;
  /** A scale-down takes effect only if still wanted this long after it was first decided, ms. */
  scaleDownDelayMs: number;
  /** Time between decisions, ms. */
  tickMs: number;
  /** Requests the activator holds for this revision while it has no capacity; beyond: 503. */
  queueSize: number;
  /** Longest a request waits in the activator for capacity, ms; then 503 with retry-after. */
  queueTimeoutMs: number;
}

export const SCALING_DEFAULTS: Readonly<ScalingSpec> = Object.freeze({
  minScale: 0,
  maxScale: 0,
  initialScale: 1,
  metric: 'concurrency',
  target: 100,
  targetUtilization: 0.7,
  containerConcurrency: 0,
  stableWindowMs: 60_000,
  panicWindowPercentage: 10,
  panicThreshold: 2,
  maxScaleUpRate: 1000,
  maxScaleDownRate: 2,
  scaleToZeroGracePeriodMs: 30_000,
  scaleDownDelayMs: 0,
  tickMs: 2000,
  queueSize: 1000,
  queueTimeoutMs: 10_000,
});

type Rule = { min: number; max: number; integer: boolean };
const RULES: Record<Exclude<keyof ScalingSpec, 'metric'>, Rule> = {
  minScale: { min: 0, max: 1000, integer: true },
  maxScale: { min: 0, max: 1000, integer: true },
  initialScale: { min: 0, max: 1000, integer: true },
  target: { min: 0.01, max: 100_000, integer: false },
  targetUtilization: { min: 0.01, max: 1, integer: false },
  containerConcurrency: { min: 0, max: 1000, integer: true },
  stableWindowMs: { min: 6000, max: 3_600_000, integer: true },
  panicWindowPercentage: { min: 1, max: 100, integer: false },
  panicThreshold: { min: 1.1, max: 10, integer: false },
  maxScaleUpRate: { min: 1.01, max: 10_000, integer: false },
  maxScaleDownRate: { min: 1.01, max: 10_000, integer: false },
  scaleToZeroGracePeriodMs: { min: 0, max: 3_600_000, integer: true },
  scaleDownDelayMs: { min: 0, max: 3_600_000, integer: true },
  tickMs: { min: 100, max: 60_000, integer: true },
  queueSize: { min: 0, max: 100_000, integer: true },
  queueTimeoutMs: { min: 1, max: 3_600_000, integer: true },
};

/** Fills defaults and checks every knob and the rules between them; `at` prefixes knob names in messages. */
export function resolveScalingSpec(input: Partial<Record<keyof ScalingSpec, unknown>> = {}, at = ''): ScalingSpec {
  const invalid = (message: string) => new TideError('ERR_INVALID_ARGUMENT', `${at}${message}`, { status: 400 });
  const out: ScalingSpec = { ...SCALING_DEFAULTS };
  for (const [key, value] of Object.entries(input)) {
    if (value === undefined) continue;
    if (key === 'metric') {
      if (value !== 'concurrency' && value !== 'rps') throw invalid(`metric must be "concurrency" or "rps" (got ${JSON.stringify(value)})`);
      out.metric = value;
      continue;
    }
    const rule = RULES[key as keyof typeof RULES];
    if (!rule) throw new TideError('ERR_INVALID_ARGUMENT', `unknown scaling setting "${at}${key}"`, { status: 400 });
    if (typeof value !== 'number' || !Number.isFinite(value) || (rule.integer && !Number.isInteger(value)) || value < rule.min || value > rule.max) {
      throw invalid(`${key} must be ${rule.integer ? 'an integer' : 'a number'} from ${rule.min} to ${rule.max} (got ${JSON.stringify(value)})`);
    }
    (out as unknown as Record<string, number>)[key] = value;
  }
  if (out.maxScale !== 0 && out.maxScale < out.minScale)
    throw invalid(`maxScale must be 0 (no limit) or an integer ≥ minScale ${out.minScale} (got ${out.maxScale})`);
  if (out.maxScale !== 0 && out.initialScale > out.maxScale) throw invalid(`initialScale must be ≤ maxScale ${out.maxScale} (got ${out.initialScale})`);
  if (out.containerConcurrency > 0 && out.metric === 'concurrency' && out.target > out.containerConcurrency) {
    throw invalid(`target must be ≤ containerConcurrency ${out.containerConcurrency} when the metric is concurrency (got ${out.target})`);
  }
  return out;
}

/** The panic window, ms. */
export function panicWindowMs(spec: ScalingSpec): number {
  return Math.max(1000, Math.round((spec.stableWindowMs * spec.panicWindowPercentage) / 100));
}
