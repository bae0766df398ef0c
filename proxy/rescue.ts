/**
 * The one place a proxy error becomes a response: status from the error, a
 * `tide-proxy-error: <code>` header, the request id, and a short plain-text body saying what
 * happened. Errors that are not TideErrors are 502 ERR_INTERNAL and never show a stack.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { TideError } from '../lib/errors.ts';

/** A refused body is read and dropped up to this many bytes so the client sees the answer, not a reset. */
const DISCARD_BYTES = 4 * 1024 * 1024;
const DISCARD_MS = 5000;

export function rescue(err: unknown, req: IncomingMessage, res: ServerResponse, requestId: string): void {
  const e = err instanceof TideError ? err : new TideError('ERR_INTERNAL', 'internal proxy error', { status: 502, cause: err });
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const status = e.status ?? 502;
  const body = `${e.message}\nrequest id: ${requestId}\n`;
  const headers: Record<string, string | number> = {
    'content-type': 'text/plain; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    'tide-proxy-error': e.code,
    'x-request-id': requestId,
  };
  if (status === 503) headers['retry-after'] = '1';
  if (!req.complete) discard(req);
  res.writeHead(status, headers);
  res.end(body);
}

/**
 * Reads and drops the rest of a request body we refused. Closing a socket with unread input
 * makes the kernel send a reset, which can destroy our response before the client reads it;
 * a body larger than DISCARD_BYTES, or slower than DISCARD_MS, does get the connection closed.
 */
function discard(req: IncomingMessage): void {
  let seen = 0;
  const timer = setTimeout(() => req.socket.destroy(), DISCARD_MS);
  timer.unref();
  req.on('data', (chunk: Buffer) => {
    seen += chunk.length;
    if (seen > DISCARD_BYTES) req.socket.destroy();
  });
  req.once('end', () => clearTimeout(timer));
  req.once('close', () => clearTimeout(timer));
  req.resume();
}
