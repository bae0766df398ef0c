/**
 * The lean request/response types of the proxy's hot path. A listener (HTTP/1.1 or HTTP/2)
 * turns each request into a ProxyRequest plus a Downstream to answer on; layers pass the
 * request inward as a `Dispatch` and get the upstream's answer back through a
 * ResponseHandler, the way undici's dispatcher and interceptors do. Web Request/Response stay
 * out of this path.
 */
import type { Readable } from 'node:stream';
import type { TideError } from '../../lib/errors.ts';
import type { Span } from '../../lib/trace/tracer.ts';

export interface ConnectionInfo {
  remoteAddress: string;
  remotePort: number;
  /** The scheme the client used to reach this listener. */
  scheme: 'http' | 'https';
  /** The listener's name, from the config. */
  listener: string;
  /** The client's SPIFFE ID, verified by mutual TLS on a mesh listener; undefined otherwise. */
  peer?: string | undefined;
}

export interface ProxyRequest {
  /** `x-request-id`: the client's when it sent a sane one, else generated. */
  id: string;
  method: string;
  /** Origin-form path and query (normalised), as forwarded upstream. */
  path: string;
  /** The authority the client asked for, as forwarded in Host. */
  host: string;
  /** Forwarded headers, lower-case names, hop-by-hop removed; layers edit this. */
  headers: Record<string, string>;
  /** The body: null when there is none, a Buffer when held whole (so it can be replayed), else a stream. */
  body: Readable | Buffer | null;
  /** Declared body length; -1 when unknown (chunked or HTTP/2 without content-length). */
  contentLength: number;
  conn: ConnectionInfo;
  /** '1.0', '1.1' or '2'. */
  httpVersion: string;
  /** performance.now() when the head was parsed. */
  startedAt: number;
  /** Filled in as the request goes inward, for logs and metrics. */
  route: string | undefined;
  cluster: string | undefined;
  endpoint: string | undefined;
  /** Endpoints earlier tries failed on; the balancer avoids them when it can. */
  tried?: string[] | undefined;
  attempts: number;
  /** Set once the request is abandoned (client gone, timeout); layers stop working on it. */
  aborted: TideError | undefined;
  /** The in-flight attempt's abort hook; `abortRequest` calls it. */
  cancel: ((err: TideError) => void) | undefined;
  /** This hop's span (the local root of the request's trace segment) while tracing is on. */
  trace: Span | undefined;
}

/** Aborts the request's in-flight work with `err`; later calls are no-ops. */
export function abortRequest(req: ProxyRequest, err: TideError): void {
  if (req.aborted) return;
  req.aborted = err;
  const cancel = req.cancel;
  req.cancel = undefined;
  cancel?.(err);
}

/** Where a response goes: a client connection (HTTP/1.1) or stream (HTTP/2). */
export interface Downstream {
  /**
   * Sends the status and headers (flat `[name, value, …]`, hop-by-hop already removed).
   * `contentLength` -1 means unknown: the listener frames the body (chunked, or close).
   */
  start(status: number, headers: string[], contentLength: number): void;
  /** false: buffer full, wait for `onDrain`. */
  write(chunk: Buffer): boolean;
  end(): void;
  /** Aborts the response (a reset or closed connection); used when it cannot be finished. */
  destroy(): void;
  onDrain(cb: () => void): void;
  /** Called once if the client goes away before the response ends. */
  onClose(cb: () => void): void;
  readonly headersSent: boolean;
  readonly finished: boolean;
}

export interface ResponseControl {
  pause(): void;
  resume(): void;
  /** Stops the upstream response (closing its connection if needed). */
  abort(err: TideError): void;
}

export interface ResponseHandler {
  /** The response head; `headers` is flat `[name, value, …]` with hop-by-hop headers removed. */
  onHeaders(status: number, headers: string[], contentLength: number, ctl: ResponseControl): void;
  /** false asks the producer to pause until resumed. */
  onData(chunk: Buffer): boolean;
  onEnd(): void;
  /** The request failed; called at most once and never after onEnd. */
  onError(err: TideError): void;
}

export type Dispatch = (req: ProxyRequest, handler: ResponseHandler) => void;

/** A layer wraps the next dispatch; built once per route when a snapshot is applied. */
export type Layer = (next: Dispatch) => Dispatch;

/** Calls `inner` through each layer, the first layer outermost. */
export function compose(layers: (Layer | undefined)[], inner: Dispatch): Dispatch {
  let d = inner;
  for (let i = layers.length - 1; i >= 0; i--) {
    const l = layers[i];
    if (l) d = l(d);
  }
  return d;
}
