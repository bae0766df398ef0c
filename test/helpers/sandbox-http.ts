/**
 * node:http's request and response as a SandboxRequest and SandboxResponse, for listeners
 * built on node:http (and tests that serve an instance directly).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { SandboxRequest, SandboxResponse } from '../../runtime/sandbox/driver.ts';

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'proxy-connection', 'te', 'trailer']);

export function fromNodeRequest(req: IncomingMessage, scheme: 'http' | 'https', extra: string[] = []): SandboxRequest {
  const raw = req.rawHeaders;
  const headers: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    if (!HOP_BY_HOP.has(name.toLowerCase())) headers.push(name, raw[i + 1] as string);
  }
  headers.push(...extra);
  const method = req.method ?? 'GET';
  const hasBody = method !== 'GET' && method !== 'HEAD' && (req.headers['transfer-encoding'] !== undefined || Number(req.headers['content-length'] ?? 0) > 0);
  let body: AsyncIterator<Buffer> | null = null;
  return {
    method,
    url: `${scheme}://${req.headers.host ?? 'localhost'}${req.url ?? '/'}`,
    headers,
    get body() {
      if (!hasBody) return null;
      body ??= req.iterator({ destroyOnReturn: false }) as AsyncIterator<Buffer>;
      return body;
    },
    get complete() {
      return req.complete;
    },
    discard: () => discardRequestBody(req),
  };
}

export function fromNodeResponse(res: ServerResponse): SandboxResponse {
  return {
    get headersSent() {
      return res.headersSent;
    },
    get finished() {
      return res.writableFinished || res.destroyed;
    },
    writeHead(status, headers) {
      try {
        res.writeHead(status, headers);
      } catch (err) {
        for (const name of res.getHeaderNames()) res.removeHeader(name);
        throw err;
      }
    },
    write: (chunk) => res.write(chunk),
    onDrain: (cb) => res.once('drain', cb),
    end: (chunk) => (chunk === undefined ? res.end() : res.end(chunk)),
    destroy: (err) => res.destroy(err),
    onClose: (cb) =>
      res.on('close', () => {
        if (!res.writableFinished) cb();
      }),
  };
}

/**
 * Reads and drops the rest of a request body nobody will read (refused, or only partly read by
 * a function), so the connection stays usable and the client reads its response instead of a
 * reset (closing a socket with unread input makes the kernel send RST). Past `maxBytes` or
 * `maxMs` the connection is closed instead.
 */
function discardRequestBody(req: IncomingMessage, maxBytes = 64 * 1024 * 1024, maxMs = 10_000): void {
  if (req.complete || req.destroyed) return;
  let seen = 0;
  const timer = setTimeout(() => req.socket.destroy(), maxMs);
  timer.unref();
  const done = () => clearTimeout(timer);
  req.on('data', (chunk: Buffer) => {
    seen += chunk.length;
    if (seen > maxBytes) req.socket.destroy();
  });
  req.once('end', done);
  req.once('close', done);
  req.resume();
}
