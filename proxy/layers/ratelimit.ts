/**
 * Rate limits: token buckets (a bucket of `burst` tokens refilled at `rate` per second; a
 * request takes one or is refused with 429 ERR_RATE_LIMITED and `retry-after`). Policies use
 * them per function (and caller), Route rules per rule (and client address). Buckets live in
 * one RateLimiter that outlives snapshots, so a config change does not refill them.
 */
import { TideError } from '../../lib/errors.ts';
import type { Layer } from '../http/types.ts';

/** Token buckets that outlive a snapshot (a config change does not refill them). */
export class RateLimiter {
  readonly #buckets = new Map<string, { tokens: number; at: number; rate: number; burst: number }>();
  readonly #now: () => number;
  #sweepAt = 0;

  constructor(now: () => number = () => performance.now()) {
    this.#now = now;
  }

  /** Takes a token; returns 0 when there was one, else the seconds until there is. */
  take(key: string, rate: number, burst: number): number {
    const now = this.#now();
    if (now > this.#sweepAt) this.#sweep(now);
    let b = this.#buckets.get(key);
    if (!b) {
      b = { tokens: burst, at: now, rate, burst };
      this.#buckets.set(key, b);
    }
    b.rate = rate;
    b.burst = burst;
    b.tokens = Math.min(burst, b.tokens + ((now - b.at) / 1000) * rate);
    b.at = now;
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return 0;
    }
    return (1 - b.tokens) / rate;
  }

  /** Forgets buckets that have refilled: a new one would be the same. */
  #sweep(now: number): void {
    this.#sweepAt = now + 60_000;
    for (const [k, b] of this.#buckets) if (b.tokens + ((now - b.at) / 1000) * b.rate >= b.burst) this.#buckets.delete(k);
  }
}

export interface RouteRateLimit {
  requestsPerSecond: number;
  burst?: number | undefined;
  /** One bucket for the rule (default), or one per client address. */
  per?: 'route' | 'client' | undefined;
}

/** A Route rule's limit, as a layer (outside the split: a refused request reaches no revision). */
export function rateLimitLayer(limiter: RateLimiter, key: string, limit: RouteRateLimit): Layer {
  const rate = limit.requestsPerSecond;
  const burst = limit.burst ?? Math.ceil(rate);
  const perClient = limit.per === 'client';
  return (next) => (req, handler) => {
    const wait = limiter.take(perClient ? `${key}\u0000${req.conn.remoteAddress}` : key, rate, burst);
    if (wait === 0) {
      next(req, handler);
      return;
    }
    handler.onError(
      new TideError('ERR_RATE_LIMITED', `${req.route ?? key} takes at most ${rate} requests/s${perClient ? ' from each client' : ''}`, {
        status: 429,
        details: { retryAfterSeconds: Math.max(1, Math.ceil(wait)) },
      }),
    );
  };
}
