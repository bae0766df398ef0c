/**
 * OpenTelemetry inside a worker thread: a function adds its own spans with the standard API
 * (`trace.getTracer('shop').startActiveSpan('charge', …)` from @opentelemetry/api, bundled
 * into the function or not: the API finds this thread's provider through its global
 * registry). Each request runs in the context of the span Tide made for its execution (from
 * the `traceparent` the proxy sent), so the function's spans are its children and its mesh
 * calls continue the trace. Spans are recorded only when the trace is sampled; finished ones
 * go to the main thread on SPAN_CHANNEL, where the tracer stores and exports them.
 *
 * Loaded by the function host (host.ts) while the thread warms up.
 */
import { type Context, context, propagation, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { AlwaysOffSampler, ParentBasedSampler, type ReadableSpan, type SpanProcessor, TracerProvider } from '@opentelemetry/sdk-trace';
import { parseTraceparent } from '../../../lib/trace/context.ts';
import type { Attributes, SpanData, SpanKind as TideKind } from '../../../lib/trace/tracer.ts';
import { SPAN_CHANNEL } from './protocol.ts';

const KIND: Record<number, TideKind> = {
  [SpanKind.INTERNAL]: 'internal',
  [SpanKind.SERVER]: 'server',
  [SpanKind.CLIENT]: 'client',
  [SpanKind.PRODUCER]: 'client',
  [SpanKind.CONSUMER]: 'server',
};

function ms(t: [number, number]): number {
  return t[0] * 1000 + t[1] / 1e6;
}

function attributes(from: Record<string, unknown>): Attributes {
  const out: Attributes = {};
  for (const k in from) {
    const v = from[k];
    if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') out[k] = v;
    else if (Array.isArray(v)) out[k] = JSON.stringify(v);
  }
  return out;
}

export interface FunctionTracing {
  /** The context a request runs in: its execution span as the (remote) parent; ROOT_CONTEXT without one. */
  contextFor(traceparent: string | undefined): Context;
  /** Writes the active span's traceparent into `carrier` (for mesh calls); false when no recording span is active. */
  inject(carrier: Record<string, string>): boolean;
  run<T>(ctx: Context, fn: () => T): T;
}

/** Registers this thread's tracer provider, context manager and propagator; `service` names the function. */
export function installTracing(service: () => string): FunctionTracing {
  const channel = new BroadcastChannel(SPAN_CHANNEL);
  const processor: SpanProcessor = {
    onStart() {},
    onEnd(span: ReadableSpan) {
      const c = span.spanContext();
      const parent = span.parentSpanContext?.spanId;
      const data: SpanData = {
        traceId: c.traceId,
        spanId: c.spanId,
        ...(parent === undefined ? {} : { parentSpanId: parent }),
        name: span.name,
        kind: KIND[span.kind] ?? 'internal',
        startMs: ms(span.startTime),
        durationMs: ms(span.duration),
        attributes: attributes(span.attributes),
        status: span.status.code === SpanStatusCode.ERROR ? 'error' : span.status.code === SpanStatusCode.OK ? 'ok' : 'unset',
        ...(span.status.message ? { statusMessage: span.status.message } : {}),
        ...(span.events.length > 0
          ? { events: span.events.map((e) => ({ name: e.name, timeMs: ms(e.time), ...(e.attributes ? { attributes: attributes(e.attributes) } : {}) })) }
          : {}),
        service: service(),
        sampled: (c.traceFlags & 1) === 1,
      };
      channel.postMessage([data]);
    },
    forceFlush: async () => {},
    shutdown: async () => channel.close(),
  };
  // Only spans under a sampled request are recorded: a span started outside any request (at
  // module load, say) has no parent and is not.
  const provider = new TracerProvider({ sampler: new ParentBasedSampler({ root: new AlwaysOffSampler() }), spanProcessors: [processor] });
  trace.setGlobalTracerProvider(provider);
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  return {
    contextFor(traceparent) {
      const p = parseTraceparent(traceparent);
      if (!p) return ROOT_CONTEXT;
      return trace.setSpanContext(ROOT_CONTEXT, { traceId: p.traceId, spanId: p.spanId, traceFlags: p.sampled ? 1 : 0, isRemote: true });
    },
    inject(carrier) {
      // Only a recording span (a sampled request's) is one the trace will have; an unsampled
      // request's spans are not recorded, so its calls hang off the execution span instead.
      const active = context.active();
      if (!trace.getSpan(active)?.isRecording()) return false;
      propagation.inject(active, carrier);
      return true;
    },
    run(ctx, fn) {
      return context.with(ctx, fn);
    },
  };
}
