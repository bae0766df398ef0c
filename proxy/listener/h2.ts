/**
 * HTTP/2 requests (node:http2's compatibility API) turned into the proxy's ProxyRequest and
 * Downstream, so HTTP/2 clients go through the same routing and layers as HTTP/1.1 ones;
 * upstreams are still spoken to over HTTP/1.1 pools.
 */
import type { Http2ServerRequest, Http2ServerResponse } from 'node:http2';
import { type Readable, Transform } from 'node:stream';
import { TideError } from '../../lib/errors.ts';
import { CONTENT_LENGTH, HOP_BY_HOP } from '../http/grammar.ts';
import { joinField, normalizePath, type RequestHead } from '../http/parse.ts';
import type { ConnectionInfo, Downstream } from '../http/types.ts';
import type { DataPlane } from '../proxy.ts';
import { errorResponse } from '../rescue.ts';

/** Headers HTTP/2 forbids (connection-specific) plus host, which travels as :authority. */
const CONNECTION_SPECIFIC = new Set([...HOP_BY_HOP, 'host']);

export function handleH2Request(
  req: Http2ServerRequest,
  res: Http2ServerResponse,
  conn: ConnectionInfo,
  proxy: DataPlane,
  maxBodyBytes: number,
  refused: (status: number, err: TideError) => void,
): void {
  let head: RequestHead;
  try {
    head = headOf(req, maxBodyBytes);
  } catch (err) {
    const e = err instanceof TideError ? err : new TideError('ERR_BAD_REQUEST', String(err), { status: 400 });
    refused(e.status ?? 400, e);
    const r = errorResponse(e, '-');
    res.writeHead(r.status, toObject(r.headers));
    res.end(r.body);
    return;
  }
  const hasBody = !req.stream.readableEnded && head.contentLength !== 0 && !(req.stream as unknown as { endAfterHeaders?: boolean }).endAfterHeaders;
  const preq = proxy.request(head, hasBody ? limitBody(req, maxBodyBytes, head.contentLength) : null, conn, '2');
  proxy.handle(preq, new H2Downstream(res));
}

/** The request body, cut off with 413 past `max` bytes (HTTP/2 bodies need not declare a length). */
function limitBody(body: Http2ServerRequest, max: number, declared: number): Readable {
  let seen = 0;
  const cut = () => new TideError('ERR_BAD_REQUEST', 'the client cancelled the request stream before its body ended', { status: 400 });
  const limited = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      seen += chunk.length;
      if (seen > max) cb(new TideError('ERR_PAYLOAD_TOO_LARGE', `the request body is over the limit of ${max} bytes`, { status: 413 }));
      else cb(null, chunk);
    },
    flush(cb) {
      if (declared >= 0 && seen !== declared) {
        cb(cut());
        return;
      }
      // A reset stream ends its request before it reports the reset: wait a turn before calling
      // the body complete, so a cancelled upload is never forwarded as a whole one.
      setTimeout(() => cb(body.aborted || body.stream.rstCode !== 0 ? cut() : null), 0);
    },
  });
  limited.on('error', () => {});
  body.on('error', (err) => limited.destroy(err));
  body.on('aborted', () => limited.destroy(cut()));
  return body.pipe(limited);
}

function headOf(req: Http2ServerRequest, maxBodyBytes: number): RequestHead {
  const url = req.url;
  if (!(url.startsWith('/') || (url === '*' && req.method === 'OPTIONS')))
    throw new TideError('ERR_BAD_REQUEST', `the :path "${url.slice(0, 60)}" is not a path`, { status: 400 });
  if (req.method === 'CONNECT') throw new TideError('ERR_METHOD_NOT_ALLOWED', 'CONNECT is not supported by this proxy', { status: 405 });
  const headers: Record<string, string> = Object.create(null);
  // From the raw fields, joined as HTTP/1.1's are (node's own join keeps empty ones).
  const raw = req.rawHeaders;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = (raw[i] as string).toLowerCase();
    // content-length travels as contentLength; the upstream pool frames the body itself.
    if (name.startsWith(':') || CONNECTION_SPECIFIC.has(name) || name === 'content-length') continue;
    joinField(headers, name, (raw[i + 1] as string).trim());
  }
  const declared = req.headers['content-length'] as string | undefined;
  let contentLength = -1;
  if (declared !== undefined) {
    if (!CONTENT_LENGTH.test(declared)) throw new TideError('ERR_BAD_REQUEST', 'content-length is not a number', { status: 400 });
    contentLength = Number(declared);
    if (contentLength > maxBodyBytes) {
      throw new TideError('ERR_PAYLOAD_TOO_LARGE', `the request body (${contentLength} bytes) is over the limit of ${maxBodyBytes} bytes`, { status: 413 });
    }
  }
  const host = req.authority || (req.headers.host as string | undefined) || '';
  return {
    method: req.method,
    path: url === '*' ? url : normalizePath(url),
    host,
    minor: 1,
    headers,
    contentLength,
    chunked: false,
    close: false,
    upgrade: undefined,
    expectContinue: false,
  };
}

function toObject(flat: string[]): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (let i = 0; i < flat.length; i += 2) {
    const name = (flat[i] as string).toLowerCase();
    if (CONNECTION_SPECIFIC.has(name)) continue;
    const v = flat[i + 1] as string;
    const prev = out[name];
    out[name] = prev === undefined ? v : Array.isArray(prev) ? [...prev, v] : [prev, v];
  }
  return out;
}

class H2Downstream implements Downstream {
  readonly #res: Http2ServerResponse;
  headersSent = false;
  finished = false;

  constructor(res: Http2ServerResponse) {
    this.#res = res;
  }

  start(status: number, headers: string[], contentLength: number): void {
    if (this.headersSent) return;
    this.headersSent = true;
    const h = toObject(headers);
    if (contentLength >= 0) h['content-length'] = String(contentLength);
    this.#res.writeHead(status, h);
  }

  write(chunk: Buffer): boolean {
    return this.#res.write(chunk);
  }

  end(): void {
    if (this.finished) return;
    this.finished = true;
    this.#res.end();
  }

  destroy(): void {
    if (this.finished) return;
    this.finished = true;
    this.#res.stream.close(2 /* INTERNAL_ERROR */);
  }

  onDrain(cb: () => void): void {
    this.#res.once('drain', cb);
  }

  onClose(cb: () => void): void {
    this.#res.once('close', () => {
      if (!this.finished) {
        this.finished = true;
        cb();
      }
    });
  }
}
