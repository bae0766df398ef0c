/**
 * The dashboard's time series. Every `intervalMs` (2 s) it takes the gateway's cumulative
 * per-revision counts (requests, 5xx answers, the latency histogram) and the autoscaler's
 * gauges, and keeps one sample: per function, requests/s, error rate (5xx share), p50 and p99
 * latency over that interval; per revision, instances desired and ready. Samples go into a
 * ring buffer that holds `keepMs` (15 min) of them, which `GET /v1/dashboard` reads.
 *
 * It sits beside the request path, never on it: reading the counts copies a few arrays per
 * revision every 2 s. Control does not import the proxy: the counts and gauges come in as
 * functions (`tide up` passes `() => gateway.functionMetrics.counts()` and
 * `() => autoscaler.gauges()`).
 *
 * Percentiles come from the difference of two cumulative histograms, interpolated linearly
 * inside the bucket the rank falls in (as Prometheus' histogram_quantile does). Worked example
 * with the 5–10 ms bucket: 100 requests in the interval, 60 below 5 ms and 40 in 5–10 ms; p50
 * is rank 50, in the first buckets; p99 is rank 99, the 39th of 40 in 5–10 ms, so
 * 5 + 5 × 39/40 = 9.875 ms. Past the last bucket (10 s) the answer is 10 s: "at least".
 */
import { TideError } from '../../lib/errors.ts';
import type { Closable } from '../../lib/lifecycle.ts';
import { BUCKETS_S } from '../../lib/prom.ts';
import type { RevisionGauges } from '../metrics.ts';

/** Cumulative counts of one function revision since the process started (the gateway's FunctionMetrics.counts()). */
export interface RevisionCounts {
  function: string;
  revision: string;
  /** Requests answered. */
  requests: number;
  /** Of those, answered with a 5xx status. */
  errors: number;
  /** Latency histogram bucket counts (not cumulative across buckets): lib/prom.ts BUCKETS_S, then the overflow. */
  buckets: readonly number[];
}

export interface SeriesOptions {
  counts: () => RevisionCounts[];
  gauges: () => RevisionGauges[];
  /** Time between samples, ms. Default 2000; 100 to 60000. */
  intervalMs?: number;
  /** How much history is kept, ms. Default 900000 (15 min); at least one interval, at most 24 h. */
  keepMs?: number;
  /** ms since the epoch; tests drive it. Default Date.now. */
  now?: () => number;
  /** Start the timer at construction. Default true; tests call `sample()` themselves. */
  start?: boolean;
}

/** One function over one interval. */
export interface FunctionSample {
  /** Requests answered in the interval. */
  requests: number;
  /** Of those, 5xx. */
  errors: number;
  /** requests ÷ interval, per second, 2 decimals. */
  rps: number;
  /** errors ÷ requests, 0..1; null without requests. */
  errorRate: number | null;
  /** Latency percentiles over the interval, ms; null without requests. */
  p50Ms: number | null;
  p99Ms: number | null;
}

/** One revision's instances at the sample's time. */
export interface RevisionSample {
  function: string;
  desired: number;
  ready: number;
  /** Requests the activator held. */
  queued: number;
  panic: boolean;
}

export interface Sample {
  /** When the interval ended, ms since the epoch. */
  at: number;
  /** How long the interval was, ms. */
  intervalMs: number;
  functions: Record<string, FunctionSample>;
  revisions: Record<string, RevisionSample>;
}

export const SERIES_DEFAULTS = { intervalMs: 2000, keepMs: 15 * 60_000 } as const;

/** The q-quantile (0..1) of a histogram's bucket counts, in ms; null when it is empty. */
export function quantileMs(buckets: readonly number[], q: number): number | null {
  const total = buckets.reduce((a, b) => a + b, 0);
  if (total <= 0) return null;
  const rank = q * total;
  let below = 0;
  for (let i = 0; i < buckets.length; i++) {
    const n = buckets[i] as number;
    if (n > 0 && below + n >= rank) {
      const lower = i === 0 ? 0 : (BUCKETS_S[i - 1] as number);
      const upper = BUCKETS_S[i];
      if (upper === undefined) return lower * 1000;
      return round((lower + (upper - lower) * ((rank - below) / n)) * 1000);
    }
    below += n;
  }
  return (BUCKETS_S[BUCKETS_S.length - 1] as number) * 1000;
}

function round(n: number): number {
  return Math.round(n * 100) / 100;
}

export class DashboardSeries implements Closable {
  readonly intervalMs: number;
  readonly keepMs: number;
  readonly #counts: () => RevisionCounts[];
  readonly #gauges: () => RevisionGauges[];
  readonly #now: () => number;
  /** The ring: `#size` samples, the oldest at `#head`. */
  readonly #ring: (Sample | undefined)[];
  #head = 0;
  #size = 0;
  /** The counts at the previous sample, by revision. */
  #last = new Map<string, RevisionCounts>();
  #lastAt: number;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(opts: SeriesOptions) {
    const intervalMs = opts.intervalMs ?? SERIES_DEFAULTS.intervalMs;
    const keepMs = opts.keepMs ?? SERIES_DEFAULTS.keepMs;
    if (typeof opts.counts !== 'function' || typeof opts.gauges !== 'function')
      throw new TideError('ERR_INVALID_ARGUMENT', 'DashboardSeries needs counts and gauges, both functions');
    if (!Number.isInteger(intervalMs) || intervalMs < 100 || intervalMs > 60_000)
      throw new TideError('ERR_INVALID_ARGUMENT', `intervalMs must be an integer from 100 to 60000 (got ${intervalMs})`);
    if (!Number.isInteger(keepMs) || keepMs < intervalMs || keepMs > 86_400_000)
      throw new TideError('ERR_INVALID_ARGUMENT', `keepMs must be an integer from intervalMs (${intervalMs}) to 86400000 (got ${keepMs})`);
    this.intervalMs = intervalMs;
    this.keepMs = keepMs;
    this.#counts = opts.counts;
    this.#gauges = opts.gauges;
    this.#now = opts.now ?? Date.now;
    this.#ring = new Array<Sample | undefined>(Math.ceil(keepMs / intervalMs)).fill(undefined);
    this.#lastAt = this.#now();
    if (opts.start !== false) {
      this.#timer = setInterval(() => this.sample(), intervalMs);
      this.#timer.unref();
    }
  }

  /** Takes one sample now (the timer calls this) and returns it. */
  sample(): Sample {
    const at = this.#now();
    const intervalMs = Math.max(1, at - this.#lastAt);
    const counts = this.#counts();
    const perFunction = new Map<string, { requests: number; errors: number; buckets: number[] }>();
    const next = new Map<string, RevisionCounts>();
    for (const c of counts) {
      next.set(c.revision, c);
      const last = this.#last.get(c.revision);
      // A counter that went down was reset: everything it counts now is new.
      const prev = last && c.requests >= last.requests && c.errors >= last.errors ? last : undefined;
      let f = perFunction.get(c.function);
      if (!f) {
        f = { requests: 0, errors: 0, buckets: new Array<number>(c.buckets.length).fill(0) };
        perFunction.set(c.function, f);
      }
      f.requests += c.requests - (prev?.requests ?? 0);
      f.errors += c.errors - (prev?.errors ?? 0);
      for (let i = 0; i < c.buckets.length; i++) f.buckets[i] = (f.buckets[i] ?? 0) + Math.max(0, (c.buckets[i] ?? 0) - (prev?.buckets[i] ?? 0));
    }
    const revisions: Record<string, RevisionSample> = {};
    for (const g of this.#gauges()) {
      revisions[g.revision] = { function: g.function, desired: g.desired, ready: g.ready, queued: g.queued, panic: g.panic };
      if (!perFunction.has(g.function)) perFunction.set(g.function, { requests: 0, errors: 0, buckets: [] });
    }
    const functions: Record<string, FunctionSample> = {};
    for (const [name, f] of perFunction) {
      functions[name] = {
        requests: f.requests,
        errors: f.errors,
        rps: round((f.requests * 1000) / intervalMs),
        errorRate: f.requests > 0 ? Math.round((f.errors / f.requests) * 10_000) / 10_000 : null,
        p50Ms: quantileMs(f.buckets, 0.5),
        p99Ms: quantileMs(f.buckets, 0.99),
      };
    }
    this.#last = next;
    this.#lastAt = at;
    const sample: Sample = { at, intervalMs, functions, revisions };
    this.#push(sample);
    return sample;
  }

  /** Samples taken after `since` (ms since the epoch; 0 = all kept), oldest first. */
  samples(since = 0): Sample[] {
    const out: Sample[] = [];
    for (let i = 0; i < this.#size; i++) {
      const s = this.#ring[(this.#head + i) % this.#ring.length] as Sample;
      if (s.at > since) out.push(s);
    }
    return out;
  }

  #push(s: Sample): void {
    const cap = this.#ring.length;
    if (this.#size < cap) {
      this.#ring[(this.#head + this.#size) % cap] = s;
      this.#size++;
    } else {
      this.#ring[this.#head] = s;
      this.#head = (this.#head + 1) % cap;
    }
  }

  /** Stops sampling; what was kept stays readable. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  async destroy(): Promise<void> {
    await this.close();
  }
}
