/**
 * Tide's own HTTP/1.1 upstream connection pool: the hot path's client side. It speaks
 * undici's dispatcher handler API (onRequestStart(controller), onResponseStart(controller,
 * status, headers), onResponseData, onResponseEnd, onResponseError), so the endpoint layer can
 * run on it or on an undici Pool (cluster `client: undici`) unchanged. Measured in bench/
 * (see bench/results/proxy.md): undici's general-purpose client cost more CPU per request than
 * the whole rest of the proxy, so the proxy carries this narrow one.
 *
 * - Keep-alive connections, most recently used first; idle ones close after `idleMs`.
 * - One request per connection at a time (no pipelining); requests wait in a FIFO when all
 *   `connections` are busy.
 * - The request head and a small body leave in one write.
 * - Responses are parsed strictly: status line, header names as tokens, no control
 *   characters, no obs-fold, Content-Length digits only and never with Transfer-Encoding,
 *   chunked bodies through the same strict decoder as requests. Anything else is
 *   ERR_PROXY_UPSTREAM_PROTOCOL 502 and the connection is dropped.
 * - The keep-alive race: a reused connection that the upstream closed just as the request
 *   went out (closed or reset with no response byte) is retried once on a fresh connection
 *   for replayable requests (idempotent method, empty or buffered body); it never surfaces as
 *   a 502.
 */
import { connect, type Socket } from 'node:net';
import type { Readable } from 'node:stream';
import { type ConnectionOptions, connect as tlsConnect } from 'node:tls';
import { TideError } from '../../lib/errors.ts';
import { ChunkedDecoder } from '../http/chunked.ts';
import { CONTENT_LENGTH, CTL, IDEMPOTENT, TOKEN } from '../http/grammar.ts';

export interface PoolController {
  rawHeaders: string[] | null;
  pause(): void;
  resume(): void;
  abort(reason: Error): void;
}

export interface PoolHandler {
  onRequestStart(controller: PoolController): void;
  onResponseStart(controller: PoolController, statusCode: number, headers: Record<string, string>): void;
  onResponseData(controller: PoolController, chunk: Buffer): void;
  onResponseEnd(controller: PoolController, trailers: Record<string, string>): void;
  onResponseError(controller: PoolController, error: Error): void;
}

export interface PoolRequest {
  method: string;
  path: string;
  /** Flat [name, value, …]; must include host. */
  headers: string[];
  body: Buffer | Readable | null;
  /** Declared length of a streamed body; -1 when unknown (sent chunked). */
  contentLength?: number;
}

export interface H1PoolOptions {
  connections: number;
  connectTimeoutMs: number;
  idleMs?: number;
  maxResponseHeadBytes?: number;
  /** Connect to this Unix socket instead of host:port (a container's socket). */
  socketPath?: string;
  /**
   * Speak TLS: called for each new connection, so a rotated client certificate is used from
   * the next connection on (open ones keep theirs). `checkServerIdentity` is where the mesh
   * verifies the server's SPIFFE ID.
   */
  tls?: (() => ConnectionOptions) | undefined;
}

type PoolOpts = Required<Omit<H1PoolOptions, 'tls'>> & Pick<H1PoolOptions, 'tls'>;

const CRLF2 = Buffer.from('\r\n\r\n');
const STATUS_LINE = /^HTTP\/1\.([01]) (\d{3})(?: [^\r\n]*)?$/;
const COALESCE_MAX = 16 * 1024;

function protocolError(message: string): TideError {
  return new TideError('ERR_PROXY_UPSTREAM_PROTOCOL', `the upstream sent an invalid response: ${message}`, { status: 502 });
}

export class H1Pool {
  readonly #host: string;
  readonly #port: number;
  readonly #opts: PoolOpts;
  readonly #idle: Conn[] = [];
  readonly #all = new Set<Conn>();
  readonly #queue: Exchange[] = [];
  #queueHead = 0;
  #closing: (() => void) | undefined;
  #closed = false;
  readonly #sweeper: NodeJS.Timeout;

  constructor(host: string, port: number, opts: H1PoolOptions) {
    this.#host = host;
    this.#port = port;
    this.#opts = { idleMs: 4000, maxResponseHeadBytes: 64 * 1024, socketPath: '', tls: undefined, ...opts };
    this.#sweeper = setInterval(() => this.#sweep(), 1000);
    this.#sweeper.unref();
  }

  /** Requests waiting for a connection. */
  get stats(): { pending: number; connected: number } {
    return { pending: this.#queue.length - this.#queueHead, connected: this.#all.size };
  }

  dispatch(req: PoolRequest, handler: PoolHandler): boolean {
    const ex = new Exchange(req, handler);
    if (this.#closed) {
      handler.onResponseError(ex, new TideError('ERR_PROXY_CONNECT', 'the upstream pool is closed', { status: 503 }));
      return false;
    }
    this.#send(ex);
    return true;
  }

  #send(ex: Exchange): void {
    const now = performance.now();
    let conn = this.#idle.pop();
    while (conn && (conn.socket.destroyed || conn.expired(now))) {
      conn.socket.destroy();
      conn = this.#idle.pop();
    }
    if (conn) {
      conn.run(ex, true);
      return;
    }
    if (this.#all.size < this.#opts.connections) {
      this.#open().run(ex, false);
      return;
    }
    this.#queue.push(ex);
  }

  #open(): Conn {
    const tls = this.#opts.tls;
    const socket = this.#opts.socketPath
      ? connect({ path: this.#opts.socketPath })
      : tls
        ? tlsConnect({ host: this.#host, port: this.#port, ALPNProtocols: ['http/1.1'], ...tls() }).setNoDelay(true)
        : connect({ host: this.#host, port: this.#port, noDelay: true });
    const conn = new Conn(socket, this, this.#opts);
    this.#all.add(conn);
    return conn;
  }

  /** A connection finished its exchange and can be reused. */
  release(conn: Conn): void {
    if (conn.expired(performance.now())) {
      conn.socket.destroy();
      return;
    }
    const next = this.#takeQueued();
    if (next) {
      conn.run(next, true);
      return;
    }
    conn.idleSince = performance.now();
    this.#idle.push(conn);
    if (this.#closing && this.#idle.length === this.#all.size) this.#finishClose();
  }

  /** The oldest waiting exchange that is still wanted. */
  #takeQueued(): Exchange | undefined {
    while (this.#queueHead < this.#queue.length) {
      const next = this.#queue[this.#queueHead];
      this.#queue[this.#queueHead++] = undefined as unknown as Exchange;
      if (this.#queueHead > 1024 && this.#queueHead * 2 > this.#queue.length) {
        this.#queue.splice(0, this.#queueHead);
        this.#queueHead = 0;
      }
      if (next && !next.aborted) return next;
    }
    return undefined;
  }

  /** A connection is gone (closed by either side). */
  forget(conn: Conn): void {
    if (!this.#all.delete(conn)) return;
    const i = this.#idle.indexOf(conn);
    if (i !== -1) this.#idle.splice(i, 1);
    // Someone waiting can have the freed slot.
    if (this.#all.size < this.#opts.connections && !this.#closed) {
      const next = this.#takeQueued();
      if (next) this.#open().run(next, false);
    }
    if (this.#closing && this.#idle.length === this.#all.size) this.#finishClose();
  }

  /** Retries an exchange that met the keep-alive race on a fresh connection. */
  retryFresh(ex: Exchange): void {
    if (this.#closed) {
      ex.fail(new TideError('ERR_PROXY_CONNECT', 'the upstream pool is closed', { status: 503 }));
      return;
    }
    if (this.#all.size < this.#opts.connections) this.#open().run(ex, false);
    else if (this.#queueHead > 0) this.#queue[--this.#queueHead] = ex;
    else this.#queue.unshift(ex);
  }

  #sweep(): void {
    const cutoff = performance.now() - this.#opts.idleMs;
    for (let i = this.#idle.length - 1; i >= 0; i--) {
      const c = this.#idle[i] as Conn;
      if (c.idleSince < cutoff) {
        // Out of the idle list now: a request sent before 'close' would meet a dead socket.
        this.#idle.splice(i, 1);
        c.socket.destroy();
      }
    }
  }

  #finishClose(): void {
    for (const c of this.#idle) c.socket.destroy();
    const done = this.#closing;
    this.#closing = undefined;
    clearInterval(this.#sweeper);
    done?.();
  }

  /** Lets requests in flight finish, then closes every connection. */
  close(): Promise<void> {
    this.#closed = true;
    if (this.#idle.length === this.#all.size) {
      this.#finishClose();
      clearInterval(this.#sweeper);
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      this.#closing = resolve;
    });
  }

  destroy(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#sweeper);
    for (const c of this.#all) c.socket.destroy();
    for (let i = this.#queueHead; i < this.#queue.length; i++)
      this.#queue[i]?.fail(new TideError('ERR_PROXY_CONNECT', 'the upstream pool was destroyed', { status: 503 }));
    this.#queue.length = 0;
    this.#queueHead = 0;
    const done = this.#closing;
    this.#closing = undefined;
    done?.();
    return Promise.resolve();
  }
}

/** One request and its response, and the controller handed to the handler. */
class Exchange implements PoolController {
  readonly req: PoolRequest;
  handler: PoolHandler | null;
  rawHeaders: string[] | null = null;
  conn: Conn | null = null;
  aborted = false;
  paused = false;
  retried = false;

  constructor(req: PoolRequest, handler: PoolHandler) {
    this.req = req;
    this.handler = handler;
    handler.onRequestStart(this);
  }

  pause(): void {
    this.paused = true;
    this.conn?.socket.pause();
  }

  resume(): void {
    this.paused = false;
    this.conn?.socket.resume();
  }

  abort(reason: Error): void {
    if (this.aborted || !this.handler) return;
    this.aborted = true;
    const conn = this.conn;
    this.conn = null;
    conn?.abandon();
    this.fail(reason);
  }

  fail(err: Error): void {
    const h = this.handler;
    this.handler = null;
    h?.onResponseError(this, err);
  }

  get replayable(): boolean {
    return !this.retried && IDEMPOTENT.has(this.req.method) && (this.req.body === null || Buffer.isBuffer(this.req.body));
  }
}

const S_HEAD = 0;
const S_FIXED = 1;
const S_CHUNKED = 2;
const S_UNTIL_CLOSE = 3;

/** One keep-alive connection. */
class Conn {
  readonly socket: Socket;
  readonly #pool: H1Pool;
  readonly #opts: PoolOpts;
  #ex: Exchange | null = null;
  #reused = false;
  #connected = false;
  /** False on a TLS connection until the server has accepted the handshake (see the constructor). */
  #tlsAccepted = true;
  #buf: Buffer | null = null;
  #state = S_HEAD;
  #left = 0;
  #chunked: ChunkedDecoder | null = null;
  #keepAlive = true;
  #gotBytes = false;
  #connectTimer: NodeJS.Timeout | undefined;
  /** The request body has been sent whole (a response may come before it is). */
  #bodySent = true;
  /** When the upstream said it would close an idle connection (`Keep-Alive: timeout=N`); 0 if it did not. */
  #expiresAt = 0;
  idleSince = 0;

  /** True when the upstream's announced keep-alive timeout has (nearly) passed. */
  expired(now: number): boolean {
    return this.#expiresAt !== 0 && now >= this.#expiresAt;
  }

  constructor(socket: Socket, pool: H1Pool, opts: PoolOpts) {
    this.socket = socket;
    this.#pool = pool;
    this.#opts = opts;
    this.#connectTimer = setTimeout(() => {
      if (!this.#connected) socket.destroy(Object.assign(new Error('connect timeout'), { code: 'UND_ERR_CONNECT_TIMEOUT' }));
    }, opts.connectTimeoutMs);
    socket.once(opts.tls ? 'secureConnect' : 'connect', () => {
      this.#connected = true;
      clearTimeout(this.#connectTimer);
    });
    // TLS 1.3: the server checks the client's certificate after the client's handshake is
    // done, and says yes by sending session tickets (no for a refusal is a bare close). Until
    // then, a close means the request was never taken: a connect failure, safe to retry. (A TLS
    // server that sends no tickets is taken as accepted by its first response byte.)
    if (opts.tls) {
      this.#tlsAccepted = false;
      socket.once('session', () => {
        this.#tlsAccepted = true;
      });
    }
    socket.on('data', (d: Buffer) => this.#onData(d));
    socket.on('error', (err) => this.#onGone(err));
    socket.on('close', () => this.#onGone(undefined));
  }

  run(ex: Exchange, reused: boolean): void {
    if (ex.aborted) {
      this.#pool.release(this);
      return;
    }
    this.#ex = ex;
    ex.conn = this;
    this.#reused = reused;
    this.#state = S_HEAD;
    this.#gotBytes = false;
    this.#keepAlive = true;
    this.#bodySent = true;
    const r = ex.req;
    let head = `${r.method} ${r.path} HTTP/1.1\r\n`;
    const h = r.headers;
    for (let i = 0; i < h.length; i += 2) head += `${h[i]}: ${h[i + 1]}\r\n`;
    const body = r.body;
    if (body === null) {
      if (r.method === 'POST' || r.method === 'PUT' || r.method === 'PATCH') head += 'content-length: 0\r\n';
      this.socket.write(`${head}\r\n`, 'latin1');
    } else if (Buffer.isBuffer(body)) {
      head += `content-length: ${body.length}\r\n\r\n`;
      if (body.length <= COALESCE_MAX) {
        const out = Buffer.allocUnsafe(head.length + body.length);
        const at = out.write(head, 0, 'latin1');
        body.copy(out, at);
        this.socket.write(out);
      } else {
        this.socket.cork();
        this.socket.write(head, 'latin1');
        this.socket.write(body);
        this.socket.uncork();
      }
    } else {
      this.#streamBody(head, body, r.contentLength ?? -1);
    }
    if (ex.paused) this.socket.pause();
  }

  #streamBody(head: string, body: Readable, length: number): void {
    const chunked = length < 0;
    this.#bodySent = false;
    this.socket.write(`${head}${chunked ? 'transfer-encoding: chunked\r\n' : `content-length: ${length}\r\n`}\r\n`, 'latin1');
    const ex = this.#ex;
    const onData = (c: Buffer) => {
      if (this.#ex !== ex) return;
      let ok: boolean;
      if (chunked) {
        this.socket.cork();
        this.socket.write(`${c.length.toString(16)}\r\n`, 'latin1');
        this.socket.write(c);
        ok = this.socket.write('\r\n', 'latin1');
        this.socket.uncork();
      } else {
        ok = this.socket.write(c);
      }
      if (!ok) {
        body.pause();
        this.socket.once('drain', () => body.resume());
      }
    };
    body.on('data', onData);
    body.once('end', () => {
      if (this.#ex !== ex) return;
      this.#bodySent = true;
      if (chunked) this.socket.write('0\r\n\r\n', 'latin1');
    });
    body.once('error', (err) => {
      if (this.#ex !== ex) return;
      this.socket.destroy();
      ex?.fail(err instanceof TideError ? err : new TideError('ERR_BAD_REQUEST', 'the request body failed', { status: 400, cause: err }));
    });
  }

  /** The exchange was aborted: this connection cannot be reused. */
  abandon(): void {
    this.#ex = null;
    this.socket.destroy();
  }

  #onData(d: Buffer): void {
    this.#tlsAccepted = true;
    const ex = this.#ex;
    if (!ex) {
      // Bytes with no request outstanding: the upstream is out of step. Drop the connection.
      this.socket.destroy();
      return;
    }
    this.#gotBytes = true;
    try {
      this.#consume(ex, d);
    } catch (err) {
      this.#ex = null;
      this.socket.destroy();
      ex.fail(err instanceof TideError && err.code === 'ERR_PROXY_UPSTREAM_PROTOCOL' ? err : protocolError(err instanceof Error ? err.message : String(err)));
    }
  }

  #consume(ex: Exchange, d: Buffer): void {
    let chunk: Buffer | null = d;
    while (chunk !== null && chunk.length > 0 && this.#ex === ex) {
      if (this.#state === S_HEAD) {
        const buf: Buffer = this.#buf === null ? chunk : Buffer.concat([this.#buf, chunk]);
        const end = buf.indexOf(CRLF2);
        if (end === -1) {
          if (buf.length > this.#opts.maxResponseHeadBytes) throw protocolError('the response head is too large');
          this.#buf = buf;
          return;
        }
        this.#buf = null;
        const rest = buf.subarray(end + 4);
        const informational = this.#head(ex, buf.toString('latin1', 0, end));
        chunk = rest;
        if (informational) continue;
        if (this.#state === S_HEAD) {
          this.#complete(ex, rest);
          return;
        }
        continue;
      }
      if (this.#state === S_FIXED) {
        const take = Math.min(this.#left, chunk.length);
        this.#left -= take;
        const part = take === chunk.length ? chunk : chunk.subarray(0, take);
        if (take > 0) ex.handler?.onResponseData(ex, part);
        if (this.#left === 0) {
          this.#complete(ex, chunk.subarray(take));
          return;
        }
        return;
      }
      if (this.#state === S_CHUNKED) {
        const decoder = this.#chunked as ChunkedDecoder;
        const used = decoder.feed(chunk, (data) => ex.handler?.onResponseData(ex, data));
        if (decoder.done) {
          this.#complete(ex, chunk.subarray(used));
          return;
        }
        return;
      }
      // S_UNTIL_CLOSE
      ex.handler?.onResponseData(ex, chunk);
      return;
    }
  }

  /** Parses a response head; returns true for a 1xx to skip. */
  #head(ex: Exchange, text: string): boolean {
    const lines = text.split('\r\n');
    this.#expiresAt = 0;
    const m = STATUS_LINE.exec(lines[0] as string);
    if (!m) throw protocolError('bad status line');
    const status = Number(m[2]);
    const raw: string[] = [];
    let cl = -1;
    let te: string | undefined;
    let connection = '';
    for (let i = 1; i < lines.length; i++) {
      const line = lines[i] as string;
      const colon = line.indexOf(':');
      if (colon <= 0) throw protocolError(line.length && (line[0] === ' ' || line[0] === '\t') ? 'obsolete line folding' : 'a header line without a name');
      const name = line.slice(0, colon);
      if (!TOKEN.test(name)) throw protocolError(`bad header name`);
      if (CTL.test(line)) throw protocolError(`a control character in header ${name}`);
      const value = line.slice(colon + 1).trim();
      const lower = name.length === 14 || name.length === 17 || name.length === 10 ? name.toLowerCase() : '';
      if (lower === 'content-length') {
        if (!CONTENT_LENGTH.test(value) || (cl !== -1 && cl !== Number(value))) throw protocolError('bad Content-Length');
        cl = Number(value);
      } else if (lower === 'transfer-encoding') {
        te = te === undefined ? value : `${te}, ${value}`;
      } else if (lower === 'connection') {
        connection += `${value.toLowerCase()},`;
      } else if (name.length === 10 && name.toLowerCase() === 'keep-alive') {
        const t = /(?:^|,)\s*timeout\s*=\s*(\d+)/i.exec(value);
        // Stop reusing the connection a little before the upstream closes it.
        if (t) this.#expiresAt = performance.now() + Math.max(0, Number(t[1]) * 1000 - 500);
      }
      raw.push(name, value);
    }
    if (status < 200 && status !== 101) return true;
    if (status === 101) throw protocolError('an unexpected 101 Switching Protocols');
    if (te !== undefined && cl !== -1) throw protocolError('both Content-Length and Transfer-Encoding');
    this.#keepAlive = m[1] === '1' ? !connection.includes('close') : connection.includes('keep-alive');
    const noBody = ex.req.method === 'HEAD' || status === 204 || status === 304;
    if (noBody) this.#state = S_HEAD;
    else if (te !== undefined) {
      if (!/(^|,)\s*chunked\s*$/i.test(te)) {
        this.#state = S_UNTIL_CLOSE;
        this.#keepAlive = false;
      } else {
        this.#state = S_CHUNKED;
        this.#chunked = new ChunkedDecoder();
      }
    } else if (cl >= 0) {
      this.#state = cl === 0 ? S_HEAD : S_FIXED;
      this.#left = cl;
    } else {
      this.#state = S_UNTIL_CLOSE;
      this.#keepAlive = false;
    }
    ex.rawHeaders = raw;
    ex.handler?.onResponseStart(ex, status, cl >= 0 ? { 'content-length': String(cl) } : {});
    return false;
  }

  #complete(ex: Exchange, rest: Buffer): void {
    this.#ex = null;
    ex.conn = null;
    this.#chunked = null;
    this.#state = S_HEAD;
    const h = ex.handler;
    ex.handler = null;
    // Bytes after the response, a close asked for, or a request body still going out: not reusable.
    if (rest.length > 0 || !this.#keepAlive || !this.#bodySent) this.socket.destroy();
    else {
      if (this.socket.isPaused()) this.socket.resume();
      this.#pool.release(this);
    }
    h?.onResponseEnd(ex, {});
  }

  #onGone(err: Error | undefined): void {
    clearTimeout(this.#connectTimer);
    const ex = this.#ex;
    this.#ex = null;
    if (ex && !ex.aborted) {
      ex.conn = null;
      if (this.#state === S_UNTIL_CLOSE && !err) {
        const h = ex.handler;
        ex.handler = null;
        h?.onResponseEnd(ex, {});
      } else if (!this.#connected || !this.#tlsAccepted) {
        const code = (err as NodeJS.ErrnoException | undefined)?.code ?? (this.#connected ? 'TLS_REFUSED' : 'ECONNREFUSED');
        // A TLS failure says why (an unknown root, an expired certificate, the wrong identity).
        const why =
          this.#opts.tls && err && !code.startsWith('ECONN')
            ? `: ${err.message}`
            : this.#connected
              ? ': the server closed the TLS connection without accepting it (it refused this client certificate: an unknown root, an expired certificate, or an identity it does not take)'
              : '';
        ex.fail(new TideError('ERR_PROXY_CONNECT', `could not connect to the upstream (${code}${why})`, { status: 503, cause: err }));
      } else if (this.#reused && !this.#gotBytes && ex.replayable) {
        ex.retried = true;
        this.#pool.retryFresh(ex);
      } else {
        const responded = ex.rawHeaders !== null;
        ex.fail(
          new TideError(
            'ERR_PROXY_RESET',
            responded ? 'the upstream connection closed in the middle of the response' : 'the upstream closed the connection before answering',
            { status: 502, cause: err, details: { responded } },
          ),
        );
      }
    }
    this.#pool.forget(this);
  }
}
