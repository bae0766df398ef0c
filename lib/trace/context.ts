/**
 * Trace context on the wire: W3C `traceparent` (and `tracestate`, passed on untouched) is what
 * Tide reads and writes; B3 (`b3` single header, or `x-b3-traceid`/`x-b3-spanid`/
 * `x-b3-sampled`/`x-b3-flags`) is accepted from callers that speak Zipkin's format. IDs are
 * lower-case hex: 32 digits for a trace, 16 for a span, never all zeros.
 *
 * Hot path: `extract` looks at one or two headers and allocates nothing when there are none;
 * new IDs come from a pool of random bytes refilled 4 KiB at a time.
 */
import { randomFillSync } from 'node:crypto';

/** The caller's span, as its headers say. */
export interface RemoteParent {
  traceId: string;
  spanId: string;
  /** The caller's decision; undefined when it left it to us (a B3 header without one). */
  sampled: boolean | undefined;
  /** Which header it came from: B3 callers get a `b3` header back. */
  format: 'w3c' | 'b3';
}

const HEX32 = /^[0-9a-f]{32}$/;
const HEX16 = /^[0-9a-f]{16}$/;
const ZERO32 = '0'.repeat(32);
const ZERO16 = '0'.repeat(16);

/** A trace ID: 32 lower-case hex digits, not all zeros. */
export function isTraceId(v: unknown): v is string {
  return typeof v === 'string' && HEX32.test(v) && v !== ZERO32;
}

/** A span ID: 16 lower-case hex digits, not all zeros. */
export function isSpanId(v: unknown): v is string {
  return typeof v === 'string' && HEX16.test(v) && v !== ZERO16;
}

/**
 * Parses a traceparent header: `VERSION-TRACEID-SPANID-FLAGS`, lower-case hex as the W3C
 * grammar has it. Version 00 must be exactly that long; a later version may carry more after
 * another dash. Anything malformed is ignored (the request starts a new trace), as the W3C
 * recommendation says.
 */
export function parseTraceparent(value: string | undefined): RemoteParent | undefined {
  if (value === undefined || value.length < 55) return undefined;
  const v = value.trim();
  if (v.charCodeAt(2) !== 45 || v.charCodeAt(35) !== 45 || v.charCodeAt(52) !== 45) return undefined;
  const version = v.slice(0, 2);
  if (!/^[0-9a-f]{2}$/.test(version) || version === 'ff') return undefined;
  if (version === '00' ? v.length !== 55 : v.length > 55 && v.charCodeAt(55) !== 45) return undefined;
  const traceId = v.slice(3, 35);
  const spanId = v.slice(36, 52);
  const flags = v.slice(53, 55);
  if (!isTraceId(traceId) || !isSpanId(spanId) || !/^[0-9a-f]{2}$/.test(flags)) return undefined;
  return { traceId, spanId, sampled: (Number.parseInt(flags, 16) & 1) === 1, format: 'w3c' };
}

export function formatTraceparent(traceId: string, spanId: string, sampled: boolean): string {
  return `00-${traceId}-${spanId}-${sampled ? '01' : '00'}`;
}

/** A 16-digit (64-bit) B3 trace ID is the low half of a 32-digit one. */
function b3TraceId(v: string): string | undefined {
  const id = v.toLowerCase();
  if (HEX16.test(id)) return id === ZERO16 ? undefined : `${ZERO16}${id}`;
  return HEX32.test(id) && id !== ZERO32 ? id : undefined;
}

/** B3's sampling state: 1 or d (debug) accept, 0 denies, absent defers to us. */
function b3Sampled(flag: string | undefined, debug?: string): boolean | undefined {
  if (flag === '1' || flag === 'd' || flag === 'true' || debug === '1') return true;
  if (flag === '0' || flag === 'false') return false;
  return undefined;
}

/** True when the caller's B3 headers only say "do not sample" (`b3: 0`, or `x-b3-sampled: 0` alone). */
export function b3Denies(headers: Record<string, string | undefined>): boolean {
  const single = headers.b3?.trim();
  if (single !== undefined) return single === '0';
  const flag = headers['x-b3-sampled']?.trim();
  return headers['x-b3-traceid'] === undefined && (flag === '0' || flag === 'false');
}

/**
 * The caller's span from request headers (lower-case names): traceparent first, then B3. A B3
 * header that only carries a sampling decision (`b3: 0`) gives no parent.
 */
export function extract(headers: Record<string, string | undefined>): RemoteParent | undefined {
  const tp = headers.traceparent;
  if (tp !== undefined) return parseTraceparent(tp);
  const single = headers.b3;
  if (single !== undefined) {
    const parts = single.trim().split('-');
    if (parts.length < 2) return undefined;
    const traceId = b3TraceId(parts[0] as string);
    const spanId = (parts[1] as string).toLowerCase();
    if (!traceId || !isSpanId(spanId)) return undefined;
    return { traceId, spanId, sampled: b3Sampled(parts[2]?.toLowerCase()), format: 'b3' };
  }
  const multi = headers['x-b3-traceid'];
  if (multi !== undefined) {
    const traceId = b3TraceId(multi.trim());
    const spanId = headers['x-b3-spanid']?.trim().toLowerCase();
    if (!traceId || !isSpanId(spanId)) return undefined;
    return { traceId, spanId, sampled: b3Sampled(headers['x-b3-sampled']?.trim().toLowerCase(), headers['x-b3-flags']?.trim()), format: 'b3' };
  }
  return undefined;
}

/** B3 headers a request may carry; replaced by one `b3` header when Tide forwards it. */
export const B3_HEADERS = ['x-b3-traceid', 'x-b3-spanid', 'x-b3-parentspanid', 'x-b3-sampled', 'x-b3-flags'] as const;

const pool = Buffer.allocUnsafe(4096);
let at = pool.length;

function randomHex(bytes: number): string {
  if (at + bytes > pool.length) {
    randomFillSync(pool);
    at = 0;
  }
  const s = pool.toString('hex', at, at + bytes);
  at += bytes;
  return s;
}

export function newTraceId(): string {
  for (;;) {
    const id = randomHex(16);
    if (id !== ZERO32) return id;
  }
}

export function newSpanId(): string {
  for (;;) {
    const id = randomHex(8);
    if (id !== ZERO16) return id;
  }
}

/**
 * The trace-ID-ratio decision: the low 56 bits of the trace ID (random in W3C level 2 IDs)
 * below `ratio` × 2^56. Every process that sees the trace decides the same way.
 */
export function underRatio(traceId: string, ratio: number): boolean {
  if (ratio >= 1) return true;
  if (ratio <= 0) return false;
  return Number.parseInt(traceId.slice(18), 16) < ratio * 2 ** 56;
}
