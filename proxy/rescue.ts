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
