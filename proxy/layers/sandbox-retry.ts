/**
 * Retries for function routes (the gateway's own backends are sandboxes, not clusters): a
 * request whose answer failed before anything reached the client (the instance was replaced,
 * no instance could take it, a 502/503/504 or, per `on`, any 5xx the function answered) goes
 * again, after an exponential back-off with full jitter. Only requests that can be replayed:
 * without a body or with one held whole, and idempotent methods unless `nonIdempotent`.
 */
import type { RetryConfig } from '../../lib/config/proxy.ts';
import { parseDuration } from '../../lib/duration.ts';
import type { TideError } from '../../lib/errors.ts';
import { IDEMPOTENT } from '../http/grammar.ts';
import type { Dispatch, ProxyRequest, ResponseControl, ResponseHandler } from '../http/types.ts';

function retriable(status: number, r: RetryConfig): boolean {
  if (r.on.includes('5xx') && status >= 500) return true;
  if ((r.on.includes('gateway-error') || r.on.includes('connect-failure') || r.on.includes('reset')) && (status === 502 || status === 503 || status === 504)) {
    return true;
  }
  return r.on.includes('retriable-status') && r.statuses.includes(status);
}

export function sandboxRetry(r: RetryConfig): (next: Dispatch) => Dispatch {
  const base = parseDuration(r.backoff.base, 'backoff.base');
  const max = parseDuration(r.backoff.max, 'backoff.max');
  return (next) => (req, handler) => {
    const replayable = (req.body === null || Buffer.isBuffer(req.body)) && (r.nonIdempotent || IDEMPOTENT.has(req.method));
    if (!replayable || r.attempts === 0) {
      next(req, handler);
      return;
    }
    const attempt = (n: number) => {
      // Attempts made so far, this one included (as the cluster retry layer counts).
      req.attempts = n + 1;
      next(
        req,
        new Try(handler, n < r.attempts ? (status) => retriable(status, r) : () => false, () => {
          const wait = Math.random() * Math.min(max, base * 2 ** n);
          setTimeout(() => {
            if (req.aborted) handler.onError(req.aborted);
            else attempt(n + 1);
          }, wait).unref();
        }),
      );
    };
    attempt(0);
  };
}

/** One try: passes everything through unless it fails in a way worth another try. */
class Try implements ResponseHandler {
  readonly #inner: ResponseHandler;
  readonly #worthRetry: (status: number) => boolean;
  readonly #again: () => void;
  #dropped = false;

  constructor(inner: ResponseHandler, worthRetry: (status: number) => boolean, again: () => void) {
    this.#inner = inner;
    this.#worthRetry = worthRetry;
    this.#again = again;
  }

  onHeaders(status: number, headers: string[], contentLength: number, ctl: ResponseControl): void {
    if (this.#worthRetry(status)) {
      // Nothing has gone to the client: this answer is dropped and the request goes again.
      this.#dropped = true;
      return;
    }
    this.#inner.onHeaders(status, headers, contentLength, ctl);
  }

  onData(chunk: Buffer): boolean {
    return this.#dropped ? true : this.#inner.onData(chunk);
  }

  onEnd(): void {
    if (this.#dropped) this.#again();
    else this.#inner.onEnd();
  }

  onError(err: TideError): void {
    if (this.#dropped || this.#worthRetry(err.status ?? 502)) this.#again();
    else this.#inner.onError(err);
  }
}

/**
 * A retry's backend: the split's own pick on the first try; on a retry, the backend with the
 * most weight that this request has not tried yet (if every one was tried, the split's pick).
 */
export function avoidTried(backends: { name: string; weight: number; dispatch: Dispatch }[], split: Dispatch): Dispatch {
  const byWeight = [...backends].filter((b) => b.weight > 0).sort((a, b) => b.weight - a.weight);
  return (req, handler) => {
    req.tried ??= [];
    const tried = req.tried;
    const fresh = req.attempts > 1 ? byWeight.find((b) => !tried.includes(b.name)) : undefined;
    if (fresh) {
      req.cluster = fresh.name;
      tried.push(fresh.name);
      fresh.dispatch(req, handler);
      return;
    }
    split(req, handler);
    if (req.cluster && !tried.includes(req.cluster)) tried.push(req.cluster);
  };
}

/** Sends a copy of `percent` % of replayable requests to `shadow` too; its answers go nowhere. */
export function mirrorLayer(percent: number, shadow: Dispatch): (next: Dispatch) => Dispatch {
  return (next) => (req, handler) => {
    if ((req.body === null || Buffer.isBuffer(req.body)) && Math.random() * 100 < percent) {
      const copy: ProxyRequest = {
        ...req,
        id: `${req.id}-mirror`,
        headers: { ...req.headers },
        cancel: undefined,
        aborted: undefined,
        attempts: 0,
        trace: undefined,
      };
      // The shadow is not part of the client's trace: it gets none to continue.
      for (const h of ['traceparent', 'tracestate', 'b3']) delete copy.headers[h];
      shadow(copy, DISCARD);
    }
    next(req, handler);
  };
}

const DISCARD: ResponseHandler = { onHeaders() {}, onData: () => true, onEnd() {}, onError() {} };
