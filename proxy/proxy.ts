/**
 * The proxy data plane: runs on one immutable ProxySnapshot at a time and swaps in a new one
 * atomically (requests already routed finish on the stack they started with; clusters the new
 * snapshot no longer uses drain and close). Listeners hand it requests; it sets the headers
 * every request gets (x-request-id, x-forwarded-for/-proto/-host, forwarded, via), routes,
 * runs the route's layer stack, writes the answer to the client, and counts it.
 *
 * Observe (outermost): metrics and the access log are written when the response ends.
 */
import { randomBytes } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import type { Readable } from 'node:stream';
import { TideError } from '../lib/errors.ts';
import type { Logger } from '../lib/log.ts';
import { B3_HEADERS } from '../lib/trace/context.ts';
import type { Span, SpanKind, Tracer } from '../lib/trace/tracer.ts';
import type { CompiledRoute, ProxySnapshot } from './config/compile.ts';
import { ChunkedDecoder } from './http/chunked.ts';
import { TOKEN } from './http/grammar.ts';
import type { RequestHead } from './http/parse.ts';
import { abortRequest, type ConnectionInfo, type Downstream, type ProxyRequest, type ResponseControl, type ResponseHandler } from './http/types.ts';
import type { ProxyMetrics, RouteMetrics } from './metrics.ts';
import type { Overload } from './overload.ts';
import { errorResponse, errorResponseBytes } from './rescue.ts';
import type { Cluster } from './upstream/cluster.ts';
import { splitHostPort } from './upstream/endpoint.ts';

export interface ProxyOptions {
  metrics: ProxyMetrics;
  log: Logger;
  /** One line per request when set. */
  access?: Logger | undefined;
  /** Traces requests when set: each gets a local root span of `spanKind` (default server). */
  tracer?: Tracer | undefined;
  spanKind?: SpanKind;
}

const REQUEST_ID = /^[A-Za-z0-9._:@/+=-]{1,128}$/;

export class DataPlane {
  readonly #opts: ProxyOptions;
  #snapshot: ProxySnapshot | undefined;
  readonly #retired = new Set<ProxySnapshot>();
  readonly #idPrefix = randomBytes(4).toString('hex');
  #seq = 0;
  inflight = 0;
  /** The process's overload policy: while it sheds, requests get 503 before routing. */
  overload: Overload | undefined;

  readonly #unrouted: RouteMetrics;

  constructor(opts: ProxyOptions) {
    this.#opts = opts;
    this.#unrouted = opts.metrics.route('', '');
  }

  get snapshot(): ProxySnapshot | undefined {
    return this.#snapshot;
  }

  /**
   * Swaps in `next`. The previous snapshot retires: requests routed on it finish on its stacks
   * (a fault delay, a retry back-off or a buffered body may still dispatch later), and its
   * clusters that no live snapshot uses are closed once its last request is done.
   */
  apply(next: ProxySnapshot): void {
    const prev = this.#snapshot;
    this.#snapshot = next;
    this.#opts.metrics.configVersion = next.version;
    if (!prev) return;
    this.#retired.add(prev);
    this.#reap();
  }

  /** Closes the clusters of retired snapshots that have no request left and that no live snapshot uses. */
  #reap(): void {
    const done = [...this.#retired].filter((s) => s.inflight === 0);
    if (done.length === 0) return;
    for (const s of done) this.#retired.delete(s);
    const live = new Set<Cluster>(this.#snapshot?.clusters.values() ?? []);
    for (const s of this.#retired) for (const c of s.clusters.values()) live.add(c);
    for (const s of done) {
      for (const c of s.clusters.values()) {
        if (live.has(c)) continue;
        live.add(c); // close once
        c.close().catch((err: unknown) => this.#opts.log.warn({ err, cluster: c.name }, 'closing a replaced cluster failed'));
      }
    }
  }

  async close(): Promise<void> {
    const all = new Set<Cluster>();
    for (const s of [this.#snapshot, ...this.#retired]) for (const c of s?.clusters.values() ?? []) all.add(c);
    this.#snapshot = undefined;
    this.#retired.clear();
    await Promise.all([...all].map((c) => c.close()));
  }

  #requestId(given: string | undefined): string {
    if (given !== undefined && REQUEST_ID.test(given)) return given;
    return `${this.#idPrefix}-${(++this.#seq).toString(36)}`;
  }

  /**
   * Builds the ProxyRequest for a parsed head and adds the forwarding headers (and, while
   * tracing, its span and trace headers; `traced` false: none, for a request that is not
   * answered through `handle`).
   */
  request(head: RequestHead, body: Readable | null, conn: ConnectionInfo, httpVersion: string, traced = true): ProxyRequest {
    const h = head.headers;
    const id = this.#requestId(h['x-request-id']);
    h['x-request-id'] = id;
    // A function's call out to the mesh (a Unix socket) has no client address to forward.
    if (conn.remoteAddress !== '') {
      const xff = h['x-forwarded-for'];
      h['x-forwarded-for'] = xff === undefined ? conn.remoteAddress : `${xff}, ${conn.remoteAddress}`;
      h['x-forwarded-proto'] = conn.scheme;
      h['x-forwarded-host'] = head.host;
      const hostPart = head.host === '' ? '' : `;host=${quoteIfNeeded(head.host)}`;
      const fwd = `for=${conn.remoteAddress.includes(':') ? `"[${conn.remoteAddress}]"` : conn.remoteAddress}${hostPart};proto=${conn.scheme}`;
      h.forwarded = h.forwarded === undefined ? fwd : `${h.forwarded}, ${fwd}`;
    }
    h.via = h.via === undefined ? `${httpVersion} tide` : `${h.via}, ${httpVersion} tide`;
    let trace: Span | undefined;
    const tracer = this.#opts.tracer;
    if (tracer !== undefined && traced) {
      trace = tracer.startRequest(h, this.#opts.spanKind ?? 'server', head.method, 'tide');
      h.traceparent = trace.traceparent;
      // tracestate belongs to the W3C parent it came with; without one it is dropped.
      if (h.tracestate !== undefined && trace.segment.parent?.format !== 'w3c') delete h.tracestate;
      if (h.b3 !== undefined || h['x-b3-traceid'] !== undefined || h['x-b3-sampled'] !== undefined) {
        // A B3 caller's next hops get one current b3 header instead of its stale ones.
        for (const n of B3_HEADERS) delete h[n];
        h.b3 = `${trace.traceId}-${trace.spanId}-${trace.sampled ? '1' : '0'}`;
      }
    }
    return {
      id,
      method: head.method,
      path: head.path,
      host: head.host,
      headers: h,
      body,
      contentLength: head.contentLength,
      conn,
      httpVersion,
      startedAt: performance.now(),
      route: undefined,
      cluster: undefined,
      endpoint: undefined,
      tried: undefined,
      attempts: 0,
      aborted: undefined,
      cancel: undefined,
      trace,
    };
  }

  /** Routes and answers one request. */
  handle(req: ProxyRequest, res: Downstream): void {
    this.inflight++;
    const out = new Answer(this, req, res);
    res.onClose(() => {
      abortRequest(req, new TideError('ERR_PROXY_RESET', 'the client went away', { status: 499 }));
      out.finish(499);
    });
    const shed = this.overload?.refusal();
    if (shed !== undefined) {
      out.onError(shed);
      return;
    }
    const snapshot = this.#snapshot;
    if (snapshot) {
      snapshot.inflight++;
      out.snapshot = snapshot;
    }
    const matched = snapshot?.router.route({ host: req.host, method: req.method, url: req.path, headers: req.headers });
    if (!matched) {
      out.onError(new TideError('ERR_PROXY_NO_ROUTE', `no route for ${req.method} ${req.host}${req.path.split('?')[0]}`, { status: 404 }));
      return;
    }
    const route = matched.target;
    out.route = route;
    req.route = route.name;
    const body = req.body;
    if (body !== null && !Buffer.isBuffer(body) && route.bufferBodyUpTo > 0 && req.contentLength >= 0 && req.contentLength <= route.bufferBodyUpTo) {
      // Held whole so a retry can send it again.
      readWhole(body, req.contentLength)
        .then((buf) => {
          req.body = buf;
          if (!req.aborted) route.dispatch(req, out);
        })
        .catch((err: unknown) =>
          out.onError(err instanceof TideError ? err : new TideError('ERR_BAD_REQUEST', 'the request body could not be read', { status: 400 })),
        );
      return;
    }
    route.dispatch(req, out);
  }

  /** Counts and logs a finished request. */
  done(req: ProxyRequest, route: CompiledRoute | undefined, snapshot: ProxySnapshot | undefined, status: number, error: string | undefined): void {
    this.inflight--;
    if (snapshot && --snapshot.inflight === 0 && this.#retired.has(snapshot)) this.#reap();
    const seconds = (performance.now() - req.startedAt) / 1000;
    (route?.metrics ?? this.#unrouted).count(req.cluster ?? '', status, seconds);
    if (req.trace !== undefined) endSpan(req, req.trace, route, status, error);
    this.#opts.access?.info({
      id: req.id,
      method: req.method,
      host: req.host,
      path: req.path,
      status,
      ms: Math.round(seconds * 100_000) / 100,
      route: req.route,
      cluster: req.cluster,
      endpoint: req.endpoint,
      attempts: req.attempts,
      error,
      source: req.conn.peer,
      trace: req.trace?.traceId,
      span: req.trace?.spanId,
    });
  }

  /**
   * An Upgrade request (WebSocket…): routed like any other. The sockets are joined only when the
   * upstream answers 101; until then nothing the client sends goes upstream, so an upstream that
   * ignores Upgrade cannot become a tunnel past routing. Any other answer is relayed and both
   * connections close. Upgrade requests may not carry a body.
   */
  upgrade(head: RequestHead, socket: Socket, rest: Buffer, conn: ConnectionInfo): void {
    // Not traced: the answer does not come back through `handle`, so a span would never end.
    const req = this.request(head, null, conn, head.minor === 0 ? '1.0' : '1.1', false);
    let failed = false;
    const fail = (err: TideError) => {
      failed = true;
      socket.end(errorResponseBytes(err, req.id));
      socket.resume(); // read and drop what the client still sends while our answer goes out
      setTimeout(() => socket.destroy(), 2000).unref();
    };
    const shed = this.overload?.refusal();
    if (shed !== undefined) {
      fail(shed);
      return;
    }
    if (head.contentLength !== 0) {
      fail(new TideError('ERR_BAD_REQUEST', 'an Upgrade request cannot carry a body', { status: 400 }));
      return;
    }
    const matched = this.#snapshot?.router.route({ host: req.host, method: req.method, url: req.path, headers: req.headers });
    const cluster = matched ? this.#snapshot?.clusters.get(matched.target.upgradeCluster?.() ?? '') : undefined;
    if (!matched || !cluster) {
      fail(new TideError('ERR_PROXY_NO_ROUTE', `no upstream for the upgrade request to ${req.host}${req.path}`, { status: 404 }));
      return;
    }
    req.route = matched.target.name;
    matched.target.editRequest?.(req);
    const endpoint = cluster.pick();
    const [host, port] = splitHostPort(endpoint.address);
    const up = connect({ host, port, noDelay: true });
    let joined = false;
    // Connecting and the upstream's answer head must come within the route timeout.
    const timeoutMs = matched.target.timeoutMs;
    if (timeoutMs > 0) {
      up.setTimeout(timeoutMs, () => {
        if (joined || answer !== null) return;
        fail(new TideError('ERR_PROXY_TIMEOUT', `the upstream did not answer the upgrade request within ${timeoutMs} ms`, { status: 504 }));
        up.destroy();
      });
    }
    socket.on('error', () => up.destroy());
    up.on('error', () => {
      if (up.bytesRead === 0 && !socket.destroyed) fail(new TideError('ERR_PROXY_CONNECT', `could not connect to ${endpoint.address}`, { status: 503 }));
      else socket.destroy();
    });
    up.on('connect', () => {
      let text = `${req.method} ${req.path} HTTP/1.1\r\nhost: ${req.host}\r\nconnection: upgrade\r\nupgrade: ${head.upgrade}\r\n`;
      for (const name in req.headers) if (name !== 'upgrade') text += `${name}: ${req.headers[name]}\r\n`;
      up.write(`${text}\r\n`, 'latin1');
    });
    // Read the upstream's answer head before anything else moves.
    let answer: Buffer | null = null;
    const onHead = (d: Buffer) => {
      answer = answer === null ? d : Buffer.concat([answer, d]);
      const end = answer.indexOf('\r\n\r\n');
      if (end === -1) {
        if (answer.length > 64 * 1024) socket.destroy();
        return;
      }
      up.off('data', onHead);
      up.setTimeout(0);
      up.pause();
      const headText = answer.toString('latin1', 0, end);
      const switched = /^HTTP\/1\.1 101 /.test(headText);
      if (!switched) {
        // Not switching: relay this one answer, then close both sides.
        socket.resume();
        socket.on('data', () => {});
        relayOne(headText, answer.subarray(end + 4), up, socket);
        return;
      }
      socket.write(answer);
      joined = true;
      if (rest.length > 0) up.write(rest);
      up.pipe(socket);
      socket.pipe(up);
    };
    up.on('data', onHead);
    up.on('close', () => {
      if (failed) return; // our error answer is on its way; fail() closes the client
      if (joined || answer !== null) socket.end();
      else socket.destroy();
    });
    socket.on('close', () => up.destroy());
  }
}

/** Relays one HTTP/1.1 response (head already read) from `up` to `client`, framed by its headers, then closes both. */
function relayOne(head: string, first: Buffer, up: Socket, client: Socket): void {
  const lengthMatch = /\r\ncontent-length:[ \t]*(\d+)[ \t]*(\r\n|$)/i.exec(head);
  const chunked = /\r\ntransfer-encoding:[^\r]*chunked/i.test(head);
  client.write(`${head.replace(/\r\nconnection:[^\r]*/gi, '')}\r\nconnection: close\r\n\r\n`, 'latin1');
  const done = () => {
    client.end();
    up.destroy();
  };
  const status = Number(head.slice(9, 12));
  const bodyless = status === 204 || status === 304 || (status >= 100 && status < 200);
  let left = bodyless ? 0 : lengthMatch ? Number(lengthMatch[1]) : -1;
  const decoder = chunked && !bodyless ? new ChunkedDecoder() : undefined;
  const feed = (d: Buffer): boolean => {
    if (decoder) {
      let used = 0;
      try {
        used = decoder.feed(d, () => {});
      } catch {
        client.destroy();
        up.destroy();
        return true;
      }
      client.write(d.subarray(0, used));
      if (decoder.done) done();
      return decoder.done;
    }
    if (left >= 0) {
      const take = Math.min(left, d.length);
      client.write(d.subarray(0, take));
      left -= take;
      if (left === 0) done();
      return left === 0;
    }
    client.write(d);
    return false;
  };
  if (left === 0 || (first.length > 0 && feed(first))) {
    if (left === 0) done();
    return;
  }
  up.on('data', (d: Buffer) => feed(d));
  up.on('end', done);
  up.resume();
}

/**
 * Ends a request's root span with the stable HTTP semantic-convention attributes. A server
 * span fails on 5xx (the client's own 4xx is not the server's error); a client span on 4xx too.
 */
/** Longest attribute value taken from a request (paths, user agents), characters. */
const MAX_ATTRIBUTE = 1024;

function endSpan(req: ProxyRequest, span: Span, route: CompiledRoute | undefined, status: number, error: string | undefined): void {
  const failed = status >= 500 || (span.kind === 'client' && status >= 400);
  // Most requests at a low sampling ratio: nothing to fill in.
  if (span.segment.tracer.dropIfUnkept(span, failed)) return;
  const q = req.path.indexOf('?');
  const colon = req.host.lastIndexOf(':');
  const hasPort = colon > req.host.lastIndexOf(']') && colon !== -1;
  const a = span.attributes;
  a['http.request.method'] = req.method;
  a['http.response.status_code'] = status;
  a['server.address'] = hasPort ? req.host.slice(0, colon) : req.host;
  if (hasPort) a['server.port'] = Number(req.host.slice(colon + 1));
  a['network.protocol.version'] = req.httpVersion;
  a['tide.request_id'] = req.id;
  // Paths and user agents may be kilobytes: the store keeps at most MAX_ATTRIBUTE of each.
  const path = (q === -1 ? req.path : req.path.slice(0, q)).slice(0, MAX_ATTRIBUTE);
  if (span.kind === 'client') {
    a['url.full'] = `http://${req.host}${path}`;
    span.name = `${req.method} ${req.host}`;
  } else {
    a['url.path'] = path;
    a['url.scheme'] = req.conn.scheme;
    if (req.conn.remoteAddress !== '') a['client.address'] = req.conn.remoteAddress;
    const ua = req.headers['user-agent'];
    if (ua !== undefined) a['user_agent.original'] = ua.slice(0, MAX_ATTRIBUTE);
    if (route !== undefined) {
      a['tide.route'] = route.virtualHost;
      span.name = `${req.method} ${route.virtualHost}`;
    }
  }
  a['tide.listener'] = req.conn.listener;
  if (req.conn.peer !== undefined) a['tide.source'] = req.conn.peer;
  if (req.attempts > 1) a['tide.attempts'] = req.attempts;
  if (failed) {
    a['error.type'] = error ?? String(status);
    span.fail(error);
  } else if (error !== undefined) {
    a['error.type'] = error;
  }
  span.finish();
}

function quoteIfNeeded(v: string): string {
  return TOKEN.test(v) ? v : `"${v.replace(/["\\]/g, '\\$&')}"`;
}

function readWhole(body: Readable, length: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    body.on('data', (c: Buffer) => parts.push(c));
    body.once('end', () => resolve(Buffer.concat(parts, length)));
    body.once('error', reject);
  });
}

/** The innermost ResponseHandler: writes the upstream's answer (or the error) to the client. */
class Answer implements ResponseHandler {
  readonly #proxy: DataPlane;
  readonly #req: ProxyRequest;
  readonly #res: Downstream;
  route: CompiledRoute | undefined;
  snapshot: ProxySnapshot | undefined;
  #status = 0;
  #done = false;
  #error: string | undefined;

  constructor(proxy: DataPlane, req: ProxyRequest, res: Downstream) {
    this.#proxy = proxy;
    this.#req = req;
    this.#res = res;
  }

  onHeaders(status: number, headers: string[], contentLength: number, ctl: ResponseControl): void {
    if (this.#done) return;
    this.#status = status;
    headers.push('x-request-id', this.#req.id);
    this.#res.start(status, headers, contentLength);
    this.#ctl = ctl;
  }

  #ctl: ResponseControl | undefined;
  #drainWait = false;

  onData(chunk: Buffer): boolean {
    if (this.#done) return true;
    const ok = this.#res.write(chunk);
    if (!ok && !this.#drainWait) {
      this.#drainWait = true;
      this.#res.onDrain(() => {
        this.#drainWait = false;
        this.#ctl?.resume();
      });
    }
    return ok;
  }

  onEnd(): void {
    if (this.#done) return;
    this.#res.end();
    this.finish(this.#status);
  }

  onError(err: unknown): void {
    if (this.#done) return;
    const r = errorResponse(err, this.#req.id);
    this.#error = r.error.code;
    if (r.error.code === 'ERR_INTERNAL') this.#proxyLogError(err);
    if (this.#res.headersSent) {
      this.#res.destroy();
      this.finish(this.#status);
      return;
    }
    this.#res.start(r.status, r.headers, r.body.length);
    this.#res.write(r.body);
    this.#res.end();
    this.finish(r.status);
  }

  #proxyLogError(err: unknown): void {
    process.emitWarning(`tide proxy: unexpected error on request ${this.#req.id}: ${err instanceof Error ? err.stack : String(err)}`);
  }

  finish(status: number): void {
    if (this.#done) return;
    this.#done = true;
    this.#proxy.done(this.#req, this.route, this.snapshot, status, this.#error);
  }
}
