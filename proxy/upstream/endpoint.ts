/**
 * One upstream endpoint (`host:port`): an undici Pool of keep-alive connections, plus the
 * numbers the balancer and outlier detection read (requests in flight, peak-EWMA latency,
 * consecutive failures, ejection). `dispatch` speaks undici's handler API on one side and the
 * proxy's ResponseHandler on the other, mapping undici's errors onto stable proxy codes:
 * connect failures (nothing was sent: always safe to retry) are ERR_PROXY_CONNECT 503, a
 * connection lost mid-exchange ERR_PROXY_RESET 502, a response head that never came
 * ERR_PROXY_TIMEOUT 504, an unparseable response ERR_PROXY_UPSTREAM_PROTOCOL 502.
 */
import { type Dispatcher, Pool } from 'undici';
import { TideError } from '../../lib/errors.ts';
import { HOP_BY_HOP } from '../http/grammar.ts';
import type { ProxyRequest, ResponseControl, ResponseHandler } from '../http/types.ts';
import { H1Pool, type H1PoolOptions } from './h1pool.ts';

export interface EndpointOptions {
  connections: number;
  connectTimeoutMs: number;
  /** `tide`: the proxy's own HTTP/1.1 pool (h1pool.ts); `undici`: an undici Pool. */
  client: 'tide' | 'undici';
  /** TLS options per new connection (the mesh's mutual TLS); `tide` client only. */
  tls?: H1PoolOptions['tls'];
}

/** What the endpoint needs of a connection pool; both H1Pool and undici's Pool fit. */
interface UpstreamPool {
  dispatch(opts: { method: string; path: string; headers: string[]; body: ProxyRequest['body']; contentLength?: number }, handler: object): boolean;
  close(): Promise<void>;
  destroy(): Promise<void>;
  readonly stats: { pending: number };
}

/** What a finished exchange tells the endpoint's statistics. */
export type Outcome = 'ok' | 'status-5xx' | 'connect' | 'reset' | 'timeout' | 'aborted';

type DispatchController = Dispatcher.DispatchController;

const EWMA_DECAY_MS = 10_000;
/** Response headers not passed on as they are: hop-by-hop ones, and content-length (carried as a number). */
const NOT_FORWARDED = new Set([...HOP_BY_HOP, 'content-length']);

export class UpstreamEndpoint {
  readonly address: string;
  readonly pool: UpstreamPool;
  /** Requests in flight. */
  active = 0;
  /** Peak-EWMA of response-head latency, ms (0 until measured). */
  ewmaMs = 0;
  #ewmaAt = 0;
  consecutiveFailures = 0;
  /** Ejected by outlier detection until this time (performance.now()); 0 when not. */
  ejectedUntil = 0;
  ejections = 0;
  /** Set by active health checks. */
  healthy = true;

  constructor(address: string, opts: EndpointOptions) {
    this.address = address;
    if (opts.client === 'undici') {
      const pool = new Pool(`http://${address}`, {
        connections: opts.connections,
        pipelining: 1,
        connectTimeout: opts.connectTimeoutMs,
        keepAliveTimeout: 4000,
        keepAliveMaxTimeout: 60_000,
        headersTimeout: 0,
        bodyTimeout: 0,
      });
      this.pool = {
        dispatch: (o, h) => pool.dispatch({ ...o, idempotent: false, blocking: true, reset: false }, h as Dispatcher.DispatchHandler),
        close: () => pool.close(),
        destroy: () => pool.destroy(),
        get stats() {
          return pool.stats;
        },
      };
    } else {
      const [host, port] = splitHostPort(address);
      this.pool = new H1Pool(host, port, { connections: opts.connections, connectTimeoutMs: opts.connectTimeoutMs, tls: opts.tls });
    }
  }

  /** Load for peak-EWMA: latency × (in flight + 1). Unmeasured endpoints look cheap, so they get tried. */
  cost(now: number): number {
    const age = now - this.#ewmaAt;
    const ewma = age > 0 ? this.ewmaMs * Math.exp(-age / EWMA_DECAY_MS) : this.ewmaMs;
    return (ewma + 0.001) * (this.active + 1);
  }

  #observe(ms: number, now: number): void {
    if (ms > this.ewmaMs) {
      this.ewmaMs = ms; // peak-sensitive: jump up at once, decay slowly
    } else {
      const w = Math.exp(-(now - this.#ewmaAt) / EWMA_DECAY_MS);
      this.ewmaMs = this.ewmaMs * w + ms * (1 - w);
    }
    this.#ewmaAt = now;
  }

  /**
   * Sends `req` here. `done(outcome)` is called once when the exchange ends, before the
   * handler's onEnd/onError, so balancers and outlier detection see it first.
   */
  dispatch(req: ProxyRequest, handler: ResponseHandler, done: (outcome: Outcome, status: number) => void): void {
    this.active++;
    const headers: string[] = ['host', req.host];
    for (const name in req.headers) {
      // The pool frames the body itself (content-length or chunked).
      if (name === 'content-length' || name === 'transfer-encoding') continue;
      headers.push(name, req.headers[name] as string);
    }
    this.pool.dispatch(
      { path: req.path, method: req.method, headers, body: req.body, contentLength: req.contentLength },
      new Exchange(this, req, handler, done),
    );
  }

  /** Called by an Exchange when it ends. */
  settle(): void {
    this.active--;
  }

  observe(ms: number, now: number): void {
    this.#observe(ms, now);
  }

  close(): Promise<void> {
    return this.pool.close();
  }

  destroy(): Promise<void> {
    return this.pool.destroy();
  }
}

/**
 * One exchange, as undici's handler. undici keeps a finished request (and so its handler) in
 * its queue until it compacts the queue, so everything this holds is dropped on completion:
 * a finished exchange pins no request, response or layer state.
 */
class Exchange {
  #endpoint: UpstreamEndpoint | null;
  #req: ProxyRequest | null;
  #handler: ResponseHandler | null;
  #done: ((outcome: Outcome, status: number) => void) | null;
  #ctl: ResponseControl | null = null;
  #started = performance.now();
  #status = 0;

  /** A cancel that came while the request still waited for a connection. */
  #early: TideError | undefined;

  constructor(endpoint: UpstreamEndpoint, req: ProxyRequest, handler: ResponseHandler, done: (outcome: Outcome, status: number) => void) {
    this.#endpoint = endpoint;
    this.#req = req;
    this.#handler = handler;
    this.#done = done;
    // Until the pool starts the request (it may queue it), a cancel is remembered here.
    req.cancel = (err: TideError) => {
      this.#early = err;
    };
  }

  onRequestStart(controller: DispatchController): void {
    const req = this.#req;
    if (!req) return;
    if (this.#early) {
      controller.abort(this.#early);
      return;
    }
    req.cancel = (err: TideError) => controller.abort(err);
    this.#ctl = {
      pause: () => controller.pause(),
      resume: () => controller.resume(),
      abort: (err) => controller.abort(err),
    };
  }

  onResponseStart(controller: DispatchController, statusCode: number, parsed: Record<string, string | string[] | undefined>): void {
    if (statusCode < 200 || !this.#handler) return;
    this.#status = statusCode;
    const now = performance.now();
    this.#endpoint?.observe(now - this.#started, now);
    const raw = controller.rawHeaders as (Buffer | string)[] | null;
    let out: string[] = [];
    let connectionListed: string | undefined;
    if (raw) {
      for (let i = 0; i < raw.length; i += 2) {
        const n = raw[i] as Buffer | string;
        const v = raw[i + 1] as Buffer | string;
        const name = typeof n === 'string' ? n : n.toString('latin1');
        const value = typeof v === 'string' ? v : v.toString('latin1');
        const lower = name.toLowerCase();
        if (NOT_FORWARDED.has(lower)) {
          if (lower === 'connection') connectionListed = value.toLowerCase();
          continue;
        }
        out.push(name, value);
      }
    }
    if (connectionListed) out = dropListed(out, connectionListed);
    const cl = parsed['content-length'];
    const contentLength = typeof cl === 'string' && cl !== '' ? Number(cl) : -1;
    this.#handler.onHeaders(statusCode, out, contentLength, this.#ctl as ResponseControl);
  }

  onResponseData(controller: DispatchController, chunk: Buffer): void {
    if (this.#handler && !this.#handler.onData(chunk)) controller.pause();
  }

  onResponseEnd(): void {
    const handler = this.#handler;
    this.#finish(this.#status >= 500 ? 'status-5xx' : 'ok');
    handler?.onEnd();
  }

  onResponseError(_controller: DispatchController, error: Error): void {
    const handler = this.#handler;
    const req = this.#req;
    const err = mapError(error, this.#status !== 0);
    this.#finish(err.code === 'ERR_PROXY_CONNECT' ? 'connect' : err.code === 'ERR_PROXY_TIMEOUT' ? 'timeout' : req?.aborted ? 'aborted' : 'reset');
    handler?.onError(err);
  }

  #finish(outcome: Outcome): void {
    const done = this.#done;
    if (this.#req) this.#req.cancel = undefined;
    this.#endpoint?.settle();
    this.#endpoint = null;
    this.#req = null;
    this.#handler = null;
    this.#done = null;
    this.#ctl = null;
    done?.(outcome, this.#status);
  }
}

export function splitHostPort(address: string): [string, number] {
  const i = address.lastIndexOf(':');
  const host = address.slice(0, i);
  return [host.startsWith('[') ? host.slice(1, -1) : host, Number(address.slice(i + 1))];
}

function dropListed(headers: string[], listed: string): string[] {
  const names = new Set(listed.split(',').map((s) => s.trim()));
  const out: string[] = [];
  for (let i = 0; i < headers.length; i += 2) if (!names.has((headers[i] as string).toLowerCase())) out.push(headers[i] as string, headers[i + 1] as string);
  return out;
}

const CONNECT_CODES = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'UND_ERR_CONNECT_TIMEOUT', 'EADDRNOTAVAIL']);

/** Maps an undici error to the proxy's codes; `responded` is true once a response head came. */
export function mapError(error: Error, responded: boolean): TideError {
  if (error instanceof TideError) return error;
  const code = (error as NodeJS.ErrnoException).code ?? '';
  const causeCode = ((error as { cause?: NodeJS.ErrnoException }).cause?.code as string | undefined) ?? '';
  if (CONNECT_CODES.has(code) || CONNECT_CODES.has(causeCode)) {
    return new TideError('ERR_PROXY_CONNECT', `could not connect to the upstream (${code || causeCode})`, { status: 503, cause: error });
  }
  if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') {
    return new TideError('ERR_PROXY_TIMEOUT', 'the upstream did not answer in time', { status: 504, cause: error });
  }
  if (code === 'HPE_INVALID_CONSTANT' || code.startsWith('HPE_') || code === 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH' || code === 'UND_ERR_INFO') {
    return new TideError('ERR_PROXY_UPSTREAM_PROTOCOL', `the upstream sent an invalid response (${code})`, { status: 502, cause: error });
  }
  return new TideError(
    'ERR_PROXY_RESET',
    responded ? 'the upstream connection closed in the middle of the response' : 'the upstream closed the connection before answering',
    { status: 502, cause: error, details: { responded } },
  );
}
