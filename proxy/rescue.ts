/**
 * The one place a proxy error becomes a response: status from the error, a
 * `tide-proxy-error: <code>` header, the request id, and a short plain-text body saying what
 * happened. Errors that are not TideErrors are 502 ERR_INTERNAL and never show a stack.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { TideError } from '../lib/errors.ts';
import { discardRequestBody } from '../lib/net.ts';

/** A declared body larger than this is not drained after a refusal: the connection closes. */
const DRAIN_LIMIT = 64 * 1024 * 1024;

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
  if (!req.complete) {
    if (Number(req.headers['content-length'] ?? 0) > DRAIN_LIMIT) headers.connection = 'close';
    else discardRequestBody(req, DRAIN_LIMIT);
  }
  res.writeHead(status, headers);
  res.end(body);
}
