/**
 * The query of `GET /v1/traces`: `function`, `status` (error, ok or an HTTP status), `minMs`
 * and `maxMs` (a duration: 250, 250ms, 1.5s), `limit` (1..1000) and `traceId` (a hex prefix).
 * A bad value is a 400 that names the parameter.
 */
import { parseDuration } from '../../lib/duration.ts';
import { TideError } from '../../lib/errors.ts';
import type { TraceQuery } from '../../lib/trace/store.ts';

function bad(message: string): TideError {
  return new TideError('ERR_INVALID_ARGUMENT', message, { status: 400 });
}

function ms(name: string, v: string): number {
  if (/^\d+(\.\d+)?$/.test(v)) return Number(v);
  try {
    return parseDuration(v, name);
  } catch {
    throw bad(`${name} must be a duration such as 250, 250ms or 1.5s (got "${v}")`);
  }
}

export function traceQuery(p: URLSearchParams): TraceQuery {
  const q: TraceQuery = {};
  const fn = p.get('function');
  if (fn) q.function = fn;
  const status = p.get('status');
  if (status) {
    if (status === 'error' || status === 'ok') q.status = status;
    else if (/^[1-5]\d\d$/.test(status)) q.status = Number(status);
    else throw bad(`status must be error, ok or an HTTP status code (got "${status}")`);
  }
  const min = p.get('minMs');
  if (min) q.minMs = ms('minMs', min);
  const max = p.get('maxMs');
  if (max) q.maxMs = ms('maxMs', max);
  const limit = p.get('limit');
  if (limit) {
    if (!/^\d+$/.test(limit) || Number(limit) < 1 || Number(limit) > 1000) throw bad(`limit must be an integer from 1 to 1000 (got "${limit}")`);
    q.limit = Number(limit);
  }
  const id = p.get('traceId');
  if (id) {
    if (!/^[0-9a-fA-F]{1,32}$/.test(id)) throw bad(`traceId must be hex digits, the whole trace ID or its start (got "${id}")`);
    q.traceId = id.toLowerCase();
  }
  return q;
}
