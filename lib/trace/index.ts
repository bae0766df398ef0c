/** Tracing: W3C/B3 context, the tracer with its head and tail decisions, the store of recent traces, OTLP export. */
export {
  B3_HEADERS,
  extract,
  formatTraceparent,
  isSpanId,
  isTraceId,
  newSpanId,
  newTraceId,
  parseTraceparent,
  type RemoteParent,
  underRatio,
} from './context.ts';
export { type OtlpSettings, otlpExporter, otlpSettings } from './otlp.ts';
export { type TraceQuery, TraceStore, type TraceStoreOptions, type TraceSummary } from './store.ts';
export {
  type Attributes,
  type AttributeValue,
  type KeptReason,
  SAMPLING_DEFAULTS,
  type SamplingOptions,
  Segment,
  Span,
  type SpanData,
  type SpanEvent,
  type SpanExporter,
  type SpanKind,
  samplingFromEnv,
  Tracer,
  type TracerOptions,
  type TraceSink,
} from './tracer.ts';
