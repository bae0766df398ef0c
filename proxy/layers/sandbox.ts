/**
 * The endpoint layer for functions: hands a ProxyRequest to a sandbox instance (worker thread
 * or container) as the runtime's SandboxRequest, and turns what the sandbox writes into the
 * ResponseHandler calls every other layer speaks. What a function sends is checked here before
 * it reaches the listener's hand-written HTTP/1.1 writer: a header name that is not a token or
 * a value with a control character makes writeHead throw (the sandbox answers 502
 * ERR_FUNCTION_BAD_RESPONSE), so a function cannot split a response.
 */
import type { Readable } from 'node:stream';
import { TideError } from '../../lib/errors.ts';
import type { Span } from '../../lib/trace/tracer.ts';
import type { DispatchMeta, SandboxRequest, SandboxResponse } from '../../runtime/sandbox/driver.ts';
import { CONTENT_LENGTH, CTL, HOP_BY_HOP, TOKEN } from '../http/grammar.ts';
import type { ProxyRequest, ResponseControl, ResponseHandler } from '../http/types.ts';

/** What a function's endpoint offers (runtime's RevisionEndpoint fits). */
export interface SandboxEndpoint {
  readonly revision: string;
  /** The function the revision belongs to (for spans). */
  readonly function?: string;
  dispatch(req: SandboxRequest, res: SandboxResponse, meta: DispatchMeta): Promise<void>;
  /** Set when the revision runs on another machine: the request is forwarded there as it is (proxy/cluster.ts). */
  forward?(req: ProxyRequest, handler: ResponseHandler): void;
}

/**
 * Sends `req` to `endpoint`; every outcome reaches `handler` exactly once. A traced request
 * gets a span for the function's execution (the function's own service), and the function
 * sees that span as its parent in `traceparent`. `coldStart`: it waited for a new instance.
 */
export function dispatchToSandbox(endpoint: SandboxEndpoint, req: ProxyRequest, handler: ResponseHandler, coldStart = false): void {
  if (endpoint.forward) {
    // The node that runs it records the execution span.
    endpoint.forward(req, handler);
    return;
  }
  let h = handler;
  if (req.trace !== undefined) {
    const fn = endpoint.function ?? endpoint.revision;
    const span = req.trace.child(`invoke ${fn}`, 'internal', fn);
    span.attributes = {
      'faas.name': fn,
      'faas.version': endpoint.revision,
      'faas.trigger': 'http',
      'faas.invocation_id': req.id,
      'faas.coldstart': coldStart,
    };
    req.headers.traceparent = span.traceparent;
    if (req.headers.b3 !== undefined) req.headers.b3 = `${span.traceId}-${span.spanId}-${span.sampled ? '1' : '0'}`;
    h = new Invocation(handler, span);
  }
  const res = new SandboxAnswer(req, h);
  endpoint.dispatch(sandboxRequest(req), res, { requestId: req.id, scheme: req.conn.scheme }).then(
    () => res.settle(),
    (err: unknown) => res.fail(err),
  );
}

/** Ends the execution span with the function's answer. */
class Invocation implements ResponseHandler {
  readonly #inner: ResponseHandler;
  readonly #span: Span;

  constructor(inner: ResponseHandler, span: Span) {
    this.#inner = inner;
    this.#span = span;
  }

  onHeaders(status: number, headers: string[], contentLength: number, ctl: ResponseControl): void {
    if (!this.#span.segment.decided) {
      this.#span.attributes['http.response.status_code'] = status;
      // This attempt failed; whether the request did (a retry may still make it good) is the root's say.
      if (status >= 500) this.#span.markError();
    }
    this.#inner.onHeaders(status, headers, contentLength, ctl);
  }

  onData(chunk: Buffer): boolean {
    return this.#inner.onData(chunk);
  }

  onEnd(): void {
    this.#span.finish();
    this.#inner.onEnd();
  }

  onError(err: TideError): void {
    // A late error (the client left after the trace was decided) changes nothing stored.
    if (!this.#span.segment.decided) {
      this.#span.attributes['error.type'] = err.code;
      this.#span.markError(err.message);
      this.#span.finish();
    }
    this.#inner.onError(err);
  }
}

function sandboxRequest(req: ProxyRequest): SandboxRequest {
  const headers: string[] = ['host', req.host];
  for (const name in req.headers) headers.push(name, req.headers[name] as string);
  const body = req.body;
  let complete = body === null || Buffer.isBuffer(body);
  if (body !== null && !Buffer.isBuffer(body)) {
    if (body.readableEnded) complete = true;
    else body.once('end', () => (complete = true));
  }
  let iterator: AsyncIterator<Buffer> | null | undefined;
  return {
    method: req.method,
    url: `${req.conn.scheme}://${req.host || 'localhost'}${req.path}`,
    headers,
    get body() {
      if (iterator === undefined)
        iterator = body === null ? null : Buffer.isBuffer(body) ? once(body) : (body.iterator({ destroyOnReturn: false }) as AsyncIterator<Buffer>);
      return iterator;
    },
    get complete() {
      return complete;
    },
    discard() {
      if (body !== null && !Buffer.isBuffer(body)) drain(body);
    },
  };
}

function once(buf: Buffer): AsyncIterator<Buffer> {
  let done = false;
  return {
    next: async () => {
      if (done) return { done: true, value: undefined };
      done = true;
      return { done: false, value: buf };
    },
    return: async () => ({ done: true, value: undefined }),
  };
}

function drain(body: Readable): void {
  body.on('data', () => {});
  body.resume();
}

class SandboxAnswer implements SandboxResponse {
  readonly #req: ProxyRequest;
  #handler: ResponseHandler | null;
  headersSent = false;
  finished = false;
  /** Every write that returned false waits here (each is one credit of the sandbox's window). */
  #drain: (() => void)[] = [];
  readonly #ctl: ResponseControl;

  constructor(req: ProxyRequest, handler: ResponseHandler) {
    this.#req = req;
    this.#handler = handler;
    this.#ctl = {
      pause: () => {},
      resume: () => {
        const cbs = this.#drain;
        this.#drain = [];
        for (const cb of cbs) cb();
      },
      abort: () => {},
    };
  }

  writeHead(status: number, headers: string[]): void {
    const out: string[] = [];
    let contentLength = -1;
    for (let i = 0; i + 1 < headers.length; i += 2) {
      const name = String(headers[i]);
      const value = String(headers[i + 1]);
      if (!TOKEN.test(name)) throw new TypeError(`invalid header name "${name.slice(0, 40)}"`);
      if (CTL.test(value)) throw new TypeError(`header ${name} has a control character in its value`);
      const lower = name.toLowerCase();
      if (HOP_BY_HOP.has(lower)) continue;
      if (lower === 'content-length') {
        if (!CONTENT_LENGTH.test(value)) throw new TypeError(`content-length "${value.slice(0, 20)}" is not a number`);
        contentLength = Number(value);
      }
      out.push(name, value);
    }
    this.headersSent = true;
    this.#handler?.onHeaders(status, out, contentLength, this.#ctl);
  }

  write(chunk: Uint8Array): boolean {
    if (!this.#handler) return true;
    return this.#handler.onData(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
  }

  onDrain(cb: () => void): void {
    this.#drain.push(cb);
  }

  end(chunk?: Uint8Array): void {
    if (chunk !== undefined && chunk.byteLength > 0) this.write(chunk);
    const h = this.#handler;
    this.#handler = null;
    this.finished = true;
    h?.onEnd();
  }

  destroy(err?: Error): void {
    const h = this.#handler;
    this.#handler = null;
    this.finished = true;
    h?.onError(
      err instanceof TideError ? err : new TideError('ERR_FUNCTION_THREW', err?.message ?? 'the function ended its response abnormally', { status: 502 }),
    );
  }

  onClose(cb: () => void): void {
    // The data plane aborts the request when the client goes away; that reaches us as a cancel.
    this.#req.cancel = () => {
      if (!this.finished) cb();
    };
  }

  /** The sandbox says the exchange is over (it may have given up on a client that left). */
  settle(): void {
    if (this.#handler && this.#req.aborted) {
      const h = this.#handler;
      this.#handler = null;
      h.onError(this.#req.aborted);
    }
  }

  fail(err: unknown): void {
    const h = this.#handler;
    this.#handler = null;
    this.finished = true;
    h?.onError(err instanceof TideError ? err : new TideError('ERR_INTERNAL', 'the sandbox failed', { status: 502, cause: err }));
  }
}
