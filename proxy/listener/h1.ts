/**
 * One client HTTP/1.1 connection: the purpose-built hot path of the proxy. It reads request
 * heads with the strict parser (http/parse.ts), frames bodies itself (Content-Length or the
 * strict chunked decoder), answers one request at a time in order (pipelined requests wait in
 * the buffer), and writes responses with the head and the first body bytes in one syscall.
 *
 * Refusals happen here, before anything reaches an upstream: a malformed head is 400, too
 * large 431, a body over the listener's limit 413, a head that takes too long 408; each answer
 * closes the connection (after reading what the client is still sending, so it sees the
 * answer and not a reset). Deadlines are checked by the listener's sweeper, not per-request
 * timers.
 */

import { STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import { Readable } from 'node:stream';
import { TideError } from '../../lib/errors.ts';
import { ChunkedDecoder } from '../http/chunked.ts';
import { parseRequestHead, type RequestHead } from '../http/parse.ts';
import type { ConnectionInfo, Downstream } from '../http/types.ts';

export interface H1Limits {
  maxHeaderBytes: number;
  maxHeaders: number;
  maxBodyBytes: number;
  headersTimeoutMs: number;
  idleTimeoutMs: number;
  bodyTimeoutMs: number;
}

export interface H1Hooks {
  onRequest(head: RequestHead, body: Readable | null, res: Downstream, conn: ConnectionInfo): void;
  /** An Upgrade request; the connection is handed over with the bytes read after the head. */
  onUpgrade(head: RequestHead, socket: Socket, rest: Buffer, conn: ConnectionInfo): void;
  /** The client spoke the HTTP/2 preface: hand the socket (with `rest` unshifted) to HTTP/2. */
  onH2Preface(socket: Socket, rest: Buffer): void;
  /** A request refused by the listener (status, code), for logs and metrics. */
  onRefused(status: number, err: TideError, conn: ConnectionInfo): void;
}

const CRLF2 = Buffer.from('\r\n\r\n');
const H2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n');
const CONTINUE = Buffer.from('HTTP/1.1 100 Continue\r\n\r\n');
const LINGER_MS = 2000;
/** Response bodies up to this size go out in the same write as the head. */
const COALESCE_MAX = 16 * 1024;

const S_IDLE = 0; // waiting for (or reading) a request head
const S_BUSY = 1; // a request is being answered
const S_DONE = 2; // closed, closing, or handed over

export class H1Connection {
  readonly socket: Socket;
  readonly info: ConnectionInfo;
  readonly #limits: H1Limits;
  readonly #hooks: H1Hooks;
  #buf: Buffer | null = null;
  #state = S_IDLE;
  #first = true;
  /** When the current deadline passes; 0 for none. What it means depends on the state. */
  deadline = 0;
  #deadlineKind: 'idle' | 'head' | 'body' | 'linger' | 'none' = 'idle';
  #res: H1Response | null = null;
  #body: BodyStream | null = null;
  #bodyLeft = 0;
  #chunked: ChunkedDecoder | null = null;
  #bodyBytes = 0;
  #parsing = false;
  /** Draining: finish the current response, then close. */
  closeAfterResponse = false;

  constructor(socket: Socket, info: ConnectionInfo, limits: H1Limits, hooks: H1Hooks) {
    this.socket = socket;
    this.info = info;
    this.#limits = limits;
    this.#hooks = hooks;
    this.#setDeadline('idle', limits.idleTimeoutMs);
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('error', () => {});
    socket.on('close', () => this.#onClose());
  }

  get idle(): boolean {
    return this.#state === S_IDLE && this.#buf === null;
  }

  /** Called by the listener's sweeper. */
  expire(now: number): void {
    if (this.deadline === 0 || now < this.deadline) return;
    const kind = this.#deadlineKind;
    if (this.#state === S_DONE) {
      // Lingering after a close: the client had its time to read our answer.
      if (kind === 'linger') {
        this.deadline = 0;
        this.socket.destroy();
      }
      return;
    }
    this.deadline = 0;
    if (kind === 'idle') this.socket.destroy();
    else if (kind === 'head') this.#refuse(new TideError('ERR_REQUEST_TIMEOUT', 'the request head took too long to arrive', { status: 408 }));
    else if (kind === 'body') {
      const err = new TideError('ERR_REQUEST_TIMEOUT', 'the request body stalled', { status: 408 });
      this.#body?.destroy(err);
      this.#body = null;
      if (this.#res && !this.#res.headersSent) this.#refuse(err);
      else this.socket.destroy();
    }
  }

  #setDeadline(kind: 'idle' | 'head' | 'body' | 'none', ms: number): void {
    this.#deadlineKind = kind;
    this.deadline = kind === 'none' || ms <= 0 ? 0 : performance.now() + ms;
  }

  #onData(chunk: Buffer): void {
    if (this.#state === S_DONE) return;
    if (this.#body !== null || this.#chunked !== null || this.#bodyLeft > 0) {
      this.#feedBody(chunk);
      return;
    }
    this.#buf = this.#buf === null ? chunk : Buffer.concat([this.#buf, chunk]);
    if (this.#state === S_IDLE) this.#parse();
    else if (this.#buf.length > this.#limits.maxHeaderBytes * 2) this.socket.pause(); // pipelined requests waiting
  }

  #parse(): void {
    // Responses made synchronously (a 404, a direct response) finish inside this loop; their
    // responseDone must not start another parse, or a pipelined burst recurses per request.
    if (this.#parsing) return;
    this.#parsing = true;
    try {
      this.#parseLoop();
    } finally {
      this.#parsing = false;
    }
  }

  #parseLoop(): void {
    while (this.#state === S_IDLE && this.#buf !== null) {
      const buf: Buffer = this.#buf;
      if (this.#first && buf.length >= 3 && buf[0] === 0x50 && buf[1] === 0x52 && buf[2] === 0x49) {
        if (buf.length < H2_PREFACE.length) return;
        if (buf.subarray(0, H2_PREFACE.length).equals(H2_PREFACE)) {
          this.#handOver();
          this.#hooks.onH2Preface(this.socket, buf);
          return;
        }
      }
      const end = buf.indexOf(CRLF2);
      if (end === -1) {
        if (buf.length > this.#limits.maxHeaderBytes) {
          this.#refuse(new TideError('ERR_HEADERS_TOO_LARGE', `the request head is over ${this.#limits.maxHeaderBytes} bytes`, { status: 431 }));
        } else if (buf.indexOf(10) !== -1 && hasBareLf(buf)) {
          this.#refuse(new TideError('ERR_BAD_REQUEST', 'the request head has a line ending in a bare LF', { status: 400 }));
        } else if (this.#deadlineKind !== 'head') {
          this.#setDeadline('head', this.#limits.headersTimeoutMs);
        }
        return;
      }
      if (end > this.#limits.maxHeaderBytes) {
        this.#refuse(new TideError('ERR_HEADERS_TOO_LARGE', `the request head is over ${this.#limits.maxHeaderBytes} bytes`, { status: 431 }));
        return;
      }
      this.#first = false;
      let head: RequestHead;
      try {
        head = parseRequestHead(buf.toString('latin1', 0, end), this.#limits);
        if (head.contentLength > this.#limits.maxBodyBytes) {
          throw new TideError(
            'ERR_PAYLOAD_TOO_LARGE',
            `the request body (${head.contentLength} bytes) is over the limit of ${this.#limits.maxBodyBytes} bytes`,
            {
              status: 413,
            },
          );
        }
      } catch (err) {
        this.#refuse(err instanceof TideError ? err : new TideError('ERR_BAD_REQUEST', String(err), { status: 400 }));
        return;
      }
      const restStart = end + 4;
      this.#buf = restStart === buf.length ? null : buf.subarray(restStart);
      if (head.upgrade !== undefined) {
        const rest = this.#buf ?? Buffer.alloc(0);
        this.#handOver();
        this.#hooks.onUpgrade(head, this.socket, rest, this.info);
        return;
      }
      this.#start(head);
    }
  }

  #start(head: RequestHead): void {
    this.#state = S_BUSY;
    const res = new H1Response(this, head);
    this.#res = res;
    let body: BodyStream | null = null;
    if (head.contentLength !== 0) {
      body = new BodyStream(
        this.socket,
        head.expectContinue && head.minor === 1
          ? () => {
              if (!res.headersSent && this.#res === res) this.socket.write(CONTINUE);
            }
          : undefined,
      );
      this.#body = body;
      this.#bodyBytes = 0;
      if (head.chunked) this.#chunked = new ChunkedDecoder();
      else this.#bodyLeft = head.contentLength;
      this.#setDeadline('body', this.#limits.bodyTimeoutMs);
      const pending = this.#buf;
      this.#buf = null;
      if (pending !== null) this.#feedBody(pending);
      // Refused while reading the body bytes that came with the head: never dispatch it.
      if (this.#state === S_DONE) return;
    } else {
      this.#setDeadline('none', 0);
    }
    this.#hooks.onRequest(head, body, res, this.info);
  }

  #feedBody(chunk: Buffer): void {
    let rest: Buffer | null = null;
    const body = this.#body;
    try {
      if (this.#chunked !== null) {
        const used = this.#chunked.feed(chunk, (data) => {
          this.#bodyBytes += data.length;
          if (this.#bodyBytes > this.#limits.maxBodyBytes) {
            throw new TideError('ERR_PAYLOAD_TOO_LARGE', `the request body is over the limit of ${this.#limits.maxBodyBytes} bytes`, { status: 413 });
          }
          body?.push(data);
        });
        if (this.#chunked.done) {
          this.#chunked = null;
          if (used < chunk.length) rest = chunk.subarray(used);
        }
      } else {
        const take = Math.min(this.#bodyLeft, chunk.length);
        body?.push(take === chunk.length ? chunk : chunk.subarray(0, take));
        this.#bodyLeft -= take;
        if (take < chunk.length) rest = chunk.subarray(take);
      }
    } catch (err) {
      const e = err instanceof TideError ? err : new TideError('ERR_BAD_REQUEST', String(err), { status: 400 });
      this.#chunked = null;
      this.#bodyLeft = 0;
      this.#body = null;
      body?.destroy(e);
      if (this.#res && !this.#res.headersSent) this.#refuse(e);
      else this.socket.destroy();
      return;
    }
    if (this.#chunked === null && this.#bodyLeft === 0) {
      // Body complete.
      this.#body = null;
      body?.push(null);
      if (this.#state === S_BUSY) this.#setDeadline('none', 0);
      if (rest !== null) this.#buf = this.#buf === null ? rest : Buffer.concat([this.#buf, rest]);
      if (this.#state === S_IDLE) this.#parse();
    } else {
      this.#setDeadline('body', this.#limits.bodyTimeoutMs);
    }
  }

  /** Called by H1Response when its response is complete. */
  responseDone(res: H1Response, keepAlive: boolean): void {
    if (res !== this.#res) return;
    this.#res = null;
    const bodyPending = this.#chunked !== null || this.#bodyLeft > 0;
    if (!keepAlive || bodyPending || this.closeAfterResponse) {
      this.#linger();
      return;
    }
    this.#state = S_IDLE;
    this.#setDeadline(this.#buf === null ? 'idle' : 'head', this.#buf === null ? this.#limits.idleTimeoutMs : this.#limits.headersTimeoutMs);
    if (this.socket.isPaused()) this.socket.resume();
    if (this.#buf !== null) this.#parse();
  }

  /** True when the body still being read means the connection cannot be reused. */
  get bodyPending(): boolean {
    return this.#chunked !== null || this.#bodyLeft > 0;
  }

  #refuse(err: TideError): void {
    if (this.#state === S_DONE) return;
    const status = err.status ?? 400;
    this.#hooks.onRefused(status, err, this.info);
    const body = `${err.message}\n`;
    const head =
      `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Error'}\r\ncontent-type: text/plain; charset=utf-8\r\n` +
      `content-length: ${Buffer.byteLength(body)}\r\ntide-proxy-error: ${err.code}\r\nconnection: close\r\n\r\n`;
    this.#res = null;
    this.socket.write(head + body);
    this.#linger();
  }

  /** Half-closes and reads (and drops) what the client still sends, so it sees our answer, not a reset. */
  #linger(): void {
    this.#state = S_DONE;
    this.#buf = null;
    this.#body?.destroy(new TideError('ERR_BAD_REQUEST', 'the connection closed', { status: 400 }));
    this.#body = null;
    this.socket.end();
    this.socket.resume();
    this.#deadlineKind = 'linger';
    this.deadline = performance.now() + LINGER_MS;
  }

  #handOver(): void {
    this.#state = S_DONE;
    this.deadline = 0;
    this.socket.removeAllListeners('data');
    this.socket.removeAllListeners('close');
    this.socket.removeAllListeners('error');
    this.socket.pause();
    this.#buf = null;
  }

  #onClose(): void {
    this.#state = S_DONE;
    this.deadline = 0;
    this.#body?.destroy(new TideError('ERR_BAD_REQUEST', 'the client closed the connection', { status: 400 }));
    this.#body = null;
    this.#res?.clientGone();
  }
}

function hasBareLf(buf: Buffer): boolean {
  for (let i = buf.indexOf(10); i !== -1; i = buf.indexOf(10, i + 1)) if (i === 0 || buf[i - 1] !== 13) return true;
  return false;
}

/** A request body as a stream: pushes from the socket, pauses the socket on backpressure. */
class BodyStream extends Readable {
  readonly #socket: Socket;
  #onFirstRead: (() => void) | undefined;

  constructor(socket: Socket, onFirstRead: (() => void) | undefined) {
    super({ highWaterMark: 64 * 1024 });
    this.#socket = socket;
    // A body refused or cut off before anyone reads it must not become an uncaught 'error';
    // readers attach their own listeners.
    this.on('error', () => {});
    this.#onFirstRead = onFirstRead;
  }

  override push(chunk: Buffer | null): boolean {
    const more = super.push(chunk);
    if (!more && chunk !== null) this.#socket.pause();
    return more;
  }

  override _read(): void {
    if (this.#onFirstRead) {
      this.#onFirstRead();
      this.#onFirstRead = undefined;
    }
    if (this.#socket.isPaused()) this.#socket.resume();
  }
}

/** The Downstream for one request on an H1Connection. */
export class H1Response implements Downstream {
  readonly #conn: H1Connection;
  readonly #head: RequestHead;
  headersSent = false;
  finished = false;
  #pendingHead: string | null = null;
  #chunked = false;
  #keepAlive: boolean;
  #noBody = false;
  /** Body bytes still owed when a length was declared; -1 when the body is framed otherwise. */
  #left = -1;
  #closeCbs: (() => void) | undefined;

  constructor(conn: H1Connection, head: RequestHead) {
    this.#conn = conn;
    this.#head = head;
    this.#keepAlive = !head.close;
  }

  start(status: number, headers: string[], contentLength: number): void {
    if (this.headersSent) return;
    this.headersSent = true;
    const head = this.#head;
    let out = `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Unknown'}\r\n`;
    for (let i = 0; i < headers.length; i += 2) {
      const name = headers[i] as string;
      if (name.length === 14 && name.toLowerCase() === 'content-length') continue;
      out += `${name}: ${headers[i + 1]}\r\n`;
    }
    this.#noBody = head.method === 'HEAD' || status === 204 || status === 304 || (status >= 100 && status < 200);
    if (contentLength >= 0) {
      if (status !== 204 && status !== 304) out += `content-length: ${contentLength}\r\n`;
      if (!this.#noBody) this.#left = contentLength;
    } else if (!this.#noBody) {
      if (head.minor === 1) {
        this.#chunked = true;
        out += 'transfer-encoding: chunked\r\n';
      } else {
        this.#keepAlive = false;
      }
    }
    if (this.#conn.closeAfterResponse || this.#conn.bodyPending) this.#keepAlive = false;
    if (!this.#keepAlive) out += 'connection: close\r\n';
    else if (head.minor === 0) out += 'connection: keep-alive\r\n';
    this.#pendingHead = `${out}\r\n`;
  }

  write(chunk: Buffer): boolean {
    if (this.finished || chunk.length === 0 || this.#noBody) return true;
    if (this.#left >= 0) {
      // More bytes than the declared length would be read as the next response: cut it off.
      if (chunk.length > this.#left) {
        this.destroy();
        return true;
      }
      this.#left -= chunk.length;
    }
    const socket = this.#conn.socket;
    const pending = this.#pendingHead;
    if (pending !== null) {
      this.#pendingHead = null;
      if (chunk.length <= COALESCE_MAX) {
        // Head and first chunk in one buffer, one write (and one syscall).
        const frame = this.#chunked ? `${chunk.length.toString(16)}\r\n` : '';
        const size = pending.length + frame.length + chunk.length + (this.#chunked ? 2 : 0);
        const out = Buffer.allocUnsafe(size);
        let at = out.write(pending, 0, 'latin1');
        if (frame) at += out.write(frame, at, 'latin1');
        at += chunk.copy(out, at);
        if (this.#chunked) out.write('\r\n', at, 'latin1');
        return socket.write(out);
      }
      socket.write(pending, 'latin1');
    }
    if (!this.#chunked) return socket.write(chunk);
    socket.cork();
    socket.write(`${chunk.length.toString(16)}\r\n`, 'latin1');
    socket.write(chunk);
    const ok = socket.write('\r\n', 'latin1');
    socket.uncork();
    return ok;
  }

  end(): void {
    if (this.finished) return;
    if (this.#left > 0) {
      // Fewer bytes than declared: the client must see a broken response, not wait or misframe.
      this.destroy();
      return;
    }
    this.finished = true;
    const socket = this.#conn.socket;
    let tail = this.#pendingHead ?? '';
    this.#pendingHead = null;
    if (this.#chunked) tail += '0\r\n\r\n';
    if (tail) socket.write(tail, 'latin1');
    this.#conn.responseDone(this, this.#keepAlive);
  }

  destroy(): void {
    if (this.finished) return;
    this.finished = true;
    this.#conn.socket.destroy();
  }

  onDrain(cb: () => void): void {
    this.#conn.socket.once('drain', cb);
  }

  onClose(cb: () => void): void {
    this.#closeCbs = cb;
  }

  /** The client went away before the response finished. */
  clientGone(): void {
    if (this.finished) return;
    this.finished = true;
    const cb = this.#closeCbs;
    this.#closeCbs = undefined;
    cb?.();
  }
}
