/**
 * The retry layer: sits between the split (which fixed the cluster) and the cluster's circuit
 * → balance → endpoint, and re-dispatches a failed try, so each try can land on another
 * endpoint.
 *
 * - What is retried: `connect-failure` (nothing was sent), `reset` (connection lost before a
 *   response head), `gateway-error` (502/503/504 and per-try timeouts), `5xx` (any 5xx,
 *   resets, connect failures, timeouts), `retriable-status` (the listed codes).
 * - Only idempotent methods, unless `nonIdempotent`; never a streamed body (only an empty or
 *   a buffered one can be replayed).
 * - A retried response is read to its end and dropped (its connection stays in the pool).
 * - Back-off: exponential with full jitter, between `base` and `max`.
 * - The budget (per route, Linkerd's idea): retries stay below `ratio` of the requests of the
 *   last 10 s plus `minPerSecond` × 10, so an upstream that fails everything gets each request
 *   once, not (attempts + 1) times. The cluster's `maxRetries` caps retries in flight.
 */
import type { RetryConfig } from '../../lib/config/proxy.ts';
import { parseDuration } from '../../lib/duration.ts';
import { TideError } from '../../lib/errors.ts';
import { IDEMPOTENT } from '../http/grammar.ts';
import type { Dispatch, ProxyRequest, ResponseControl, ResponseHandler } from '../http/types.ts';
import type { ProxyMetrics } from '../metrics.ts';
import type { Cluster } from '../upstream/cluster.ts';

const WINDOW_S = 10;

/** Requests and retries over a sliding window of one-second buckets. */
export class RetryBudget {
  readonly #ratio: number;
  readonly #floor: number;
  readonly #requests = new Array<number>(WINDOW_S).fill(0);
  readonly #retries = new Array<number>(WINDOW_S).fill(0);
  #second = 0;
  #sumRequests = 0;
  #sumRetries = 0;

  constructor(ratio: number, minPerSecond: number) {
    this.#ratio = ratio;
    this.#floor = minPerSecond * WINDOW_S;
  }

  #advance(): number {
    const now = Math.floor(performance.now() / 1000);
    if (now !== this.#second) {
      const steps = Math.min(WINDOW_S, now - this.#second);
      for (let s = 1; s <= steps; s++) {
        const i = (this.#second + s) % WINDOW_S;
        this.#sumRequests -= this.#requests[i] as number;
        this.#sumRetries -= this.#retries[i] as number;
        this.#requests[i] = 0;
        this.#retries[i] = 0;
      }
      this.#second = now;
    }
    return now % WINDOW_S;
  }

  deposit(): void {
    const i = this.#advance();
    this.#requests[i] = (this.#requests[i] as number) + 1;
    this.#sumRequests++;
  }

  /** Takes one retry from the budget if there is one. */
  withdraw(): boolean {
    const i = this.#advance();
    if (this.#sumRetries + 1 > this.#ratio * this.#sumRequests + this.#floor) return false;
    this.#retries[i] = (this.#retries[i] as number) + 1;
    this.#sumRetries++;
    return true;
  }
}

export interface RetryParams {
  config: RetryConfig;
  cluster: Cluster;
  budget: RetryBudget;
  metrics: ProxyMetrics;
}

export function retryLayer(p: RetryParams): (next: Dispatch) => Dispatch {
  const c = p.config;
  const on = new Set(c.on);
  const statuses = new Set(c.statuses);
  const perTryMs = c.perTryTimeout ? parseDuration(c.perTryTimeout, 'retries.perTryTimeout') : 0;
  const baseMs = parseDuration(c.backoff.base, 'retries.backoff.base');
  const maxMs = Math.max(baseMs, parseDuration(c.backoff.max, 'retries.backoff.max'));
  const retriableStatus = (s: number) =>
    (on.has('5xx') && s >= 500) || (on.has('gateway-error') && (s === 502 || s === 503 || s === 504)) || (on.has('retriable-status') && statuses.has(s));
  const retriableError = (e: TideError) => {
    if (e.code === 'ERR_PROXY_CONNECT') return on.has('connect-failure') || on.has('5xx');
    if (e.code === 'ERR_PROXY_RESET') return (on.has('reset') || on.has('5xx')) && e.details?.responded !== true;
    if (e.code === 'ERR_PROXY_TIMEOUT') return on.has('gateway-error') || on.has('5xx');
    return false;
  };

  return (next) => (req, handler) => {
    p.budget.deposit();
    if (c.attempts === 0 || (!c.nonIdempotent && !IDEMPOTENT.has(req.method)) || (req.body !== null && !Buffer.isBuffer(req.body))) {
      next(req, handler);
      return;
    }
    attempt(next, req, handler, 0);
  };

  function mayRetry(req: ProxyRequest, n: number): boolean {
    return n < c.attempts && !req.aborted && p.cluster.retriesActive < p.cluster.config.circuitBreaker.maxRetries && p.budget.withdraw();
  }

  function attempt(next: Dispatch, req: ProxyRequest, handler: ResponseHandler, n: number): void {
    req.attempts = n + 1;
    let committed = false;
    let discarding = false;
    let settled = false;
    let timer: NodeJS.Timeout | undefined;
    // A retry counts against the cluster's maxRetries until it settles.
    let holdsRetrySlot = n > 0;
    const releaseSlot = () => {
      if (!holdsRetrySlot) return;
      holdsRetrySlot = false;
      p.cluster.retriesActive--;
    };
    if (perTryMs > 0) {
      timer = setTimeout(() => {
        if (committed || settled) return;
        const cancel = req.cancel;
        req.cancel = undefined;
        cancel?.(new TideError('ERR_PROXY_TIMEOUT', `no response head within the per-try timeout of ${perTryMs} ms`, { status: 504 }));
      }, perTryMs);
    }
    const again = () => {
      settled = true;
      releaseSlot();
      if (req.endpoint) {
        if (req.tried) req.tried.push(req.endpoint);
        else req.tried = [req.endpoint];
      }
      p.metrics.retry(p.cluster.name);
      p.cluster.retriesActive++;
      const wait = baseMs * 2 ** n;
      const delay = Math.random() * Math.min(maxMs, wait);
      const t = setTimeout(() => {
        req.cancel = undefined;
        if (req.aborted) {
          p.cluster.retriesActive--;
          return;
        }
        attempt(next, req, handler, n + 1);
      }, delay);
      req.cancel = (err) => {
        clearTimeout(t);
        p.cluster.retriesActive--;
        handler.onError(err);
      };
    };
    next(req, {
      onHeaders(status: number, headers: string[], contentLength: number, ctl: ResponseControl) {
        if (timer) clearTimeout(timer);
        if (retriableStatus(status) && mayRetry(req, n)) {
          discarding = true;
          return;
        }
        committed = true;
        handler.onHeaders(status, headers, contentLength, ctl);
      },
      onData(chunk: Buffer) {
        return discarding ? true : handler.onData(chunk);
      },
      onEnd() {
        if (discarding) again();
        else {
          releaseSlot();
          handler.onEnd();
        }
      },
      onError(err: TideError) {
        if (timer) clearTimeout(timer);
        if (!committed && !discarding && retriableError(err) && mayRetry(req, n)) again();
        else if (discarding && !req.aborted && n < c.attempts) again();
        else {
          releaseSlot();
          handler.onError(req.aborted ?? err);
        }
      },
    });
  }
}
