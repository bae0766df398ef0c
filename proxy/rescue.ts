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

export interface ErrorResponse {
  status: number;
  /** Flat `[name, value, …]`. */
  headers: string[];
  body: Buffer;
  error: TideError;
}

/** The response for `err` (status, headers, body), for any listener to send. */
export function errorResponse(err: unknown, requestId: string): ErrorResponse {
  const e = err instanceof TideError ? err : new TideError('ERR_INTERNAL', 'internal proxy error', { status: 502, cause: err });
  const status = e.status ?? 502;
  const body = Buffer.from(`${e.message}\nrequest id: ${requestId}\n`);
  const headers = ['content-type', 'text/plain; charset=utf-8', 'tide-proxy-error', e.code, 'x-request-id', requestId];
  if (status === 503 || status === 429) headers.push('retry-after', '1');
  return { status, headers, body, error: e };
}

/** The same, written on a node:http response (the function gateway's listener). */
export function rescue(err: unknown, req: IncomingMessage, res: ServerResponse, requestId: string): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const r = errorResponse(err, requestId);
  const headers: Record<string, string | number> = { 'content-length': r.body.length };
  for (let i = 0; i < r.headers.length; i += 2) headers[r.headers[i] as string] = r.headers[i + 1] as string;
  if (!req.complete) {
    if (Number(req.headers['content-length'] ?? 0) > DRAIN_LIMIT) headers.connection = 'close';
    else discardRequestBody(req, DRAIN_LIMIT);
  }
  res.writeHead(r.status, headers);
  res.end(r.body);
}
