/**
 * The main thread's end of SPAN_CHANNEL: spans that functions made with the OpenTelemetry API
 * in their worker threads (see tracing.ts) are handed to `record` (the tracer's).
 *
 * The channel is a trust boundary: any function can post anything on it. Each message is
 * checked span by span (ids, types, sizes) and what does not fit is dropped; nothing a
 * function posts can throw here. What it cannot check is who sent a span: a worker function
 * could post spans that claim another function's name, as it could open another function's
 * mesh socket (docs/worker-sandbox.md).
 */
import { isSpanId, isTraceId } from '../../../lib/trace/context.ts';
import type { Attributes, SpanData, SpanEvent } from '../../../lib/trace/tracer.ts';
import { SPAN_CHANNEL } from './protocol.ts';

const MAX_ATTRIBUTES = 64;
const MAX_EVENTS = 32;
const MAX_TEXT = 1024;
const MAX_NAME = 256;
const DAY_MS = 86_400_000;
const KINDS = new Set(['server', 'client', 'internal']);
const STATUSES = new Set(['unset', 'ok', 'error']);

function text(v: unknown, max: number): string | undefined {
  return typeof v === 'string' ? v.slice(0, max) : undefined;
}

function attributes(v: unknown): Attributes {
  const out: Attributes = {};
  if (typeof v !== 'object' || v === null) return out;
  let n = 0;
  for (const [k, x] of Object.entries(v)) {
    if (n >= MAX_ATTRIBUTES || k.length > MAX_NAME) continue;
    if (typeof x === 'string') out[k] = x.slice(0, MAX_TEXT);
    else if ((typeof x === 'number' && Number.isFinite(x)) || typeof x === 'boolean') out[k] = x;
    else continue;
    n++;
  }
  return out;
}

/** The span if it is well formed (sizes capped), else undefined. Only sampled spans are taken. */
export function checkSpan(v: unknown): SpanData | undefined {
  if (typeof v !== 'object' || v === null) return undefined;
  const s = v as Record<string, unknown>;
  const { traceId, spanId, parentSpanId, startMs, durationMs } = s;
  if (!isTraceId(traceId) || !isSpanId(spanId)) return undefined;
  if (parentSpanId !== undefined && (!isSpanId(parentSpanId) || parentSpanId === spanId)) return undefined;
  if (typeof startMs !== 'number' || !Number.isFinite(startMs) || startMs <= 0) return undefined;
  if (typeof durationMs !== 'number' || !Number.isFinite(durationMs) || durationMs < 0 || durationMs > DAY_MS) return undefined;
  if (s.sampled !== true) return undefined;
  const name = text(s.name, MAX_NAME);
  const service = text(s.service, MAX_NAME);
  if (!name || !service) return undefined;
  const out: SpanData = {
    traceId,
    spanId,
    name,
    kind: KINDS.has(s.kind as string) ? (s.kind as SpanData['kind']) : 'internal',
    startMs,
    durationMs,
    attributes: attributes(s.attributes),
    status: STATUSES.has(s.status as string) ? (s.status as SpanData['status']) : 'unset',
    service,
    sampled: true,
  };
  if (parentSpanId !== undefined) out.parentSpanId = parentSpanId;
  const message = text(s.statusMessage, MAX_TEXT);
  if (message !== undefined) out.statusMessage = message;
  if (Array.isArray(s.events)) {
    const events: SpanEvent[] = [];
    for (const e of s.events.slice(0, MAX_EVENTS)) {
      if (typeof e !== 'object' || e === null) continue;
      const ev = e as Record<string, unknown>;
      const en = text(ev.name, MAX_NAME);
      if (!en || typeof ev.timeMs !== 'number' || !Number.isFinite(ev.timeMs)) continue;
      events.push({ name: en, timeMs: ev.timeMs, ...(ev.attributes === undefined ? {} : { attributes: attributes(ev.attributes) }) });
    }
    if (events.length > 0) out.events = events;
  }
  return out;
}

/** Listens until the returned function is called. */
export function receiveFunctionSpans(record: (spans: SpanData[]) => void): () => void {
  const channel = new BroadcastChannel(SPAN_CHANNEL);
  channel.onmessage = (e: MessageEvent) => {
    if (!Array.isArray(e.data)) return;
    const spans: SpanData[] = [];
    for (const v of (e.data as unknown[]).slice(0, 256)) {
      const s = checkSpan(v);
      if (s) spans.push(s);
    }
    try {
      if (spans.length > 0) record(spans);
    } catch {
      // A span the tracer could not take is dropped; the process goes on.
    }
  };
  (channel as unknown as { unref?: () => void }).unref?.();
  return () => channel.close();
}
