/**
 * The one place a proxy error becomes a response: status from the error, a
 * `tide-proxy-error: <code>` header, the request id, and a short plain-text body saying what
 * happened. Errors that are not TideErrors are 502 ERR_INTERNAL and never show a stack.
 */
import { TideError } from '../lib/errors.ts';

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
  if (status === 503 || status === 429) {
    const after = e.details?.retryAfterSeconds;
    headers.push('retry-after', typeof after === 'number' && after >= 1 ? String(Math.ceil(after)) : '1');
  }
  return { status, headers, body, error: e };
}

/** The same answer as raw HTTP/1.1 bytes that close the connection (for sockets outside a Downstream: upgrades). */
export function errorResponseBytes(err: unknown, requestId: string): Buffer {
  const r = errorResponse(err, requestId);
  let text = `HTTP/1.1 ${r.status} ${r.error.code}\r\ncontent-length: ${r.body.length}\r\nconnection: close\r\n`;
  for (let i = 0; i < r.headers.length; i += 2) text += `${r.headers[i]}: ${r.headers[i + 1]}\r\n`;
  return Buffer.concat([Buffer.from(`${text}\r\n`, 'latin1'), r.body]);
}
