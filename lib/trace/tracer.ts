/**
 * Tide's tracer: the spans a request makes inside one Tide process. The proxies start a local
 * root span per request (a server span at the gateway and the mesh listener, a client span at
 * a function's egress), layers add children (the activator's wait, a cold start, the
 * function's execution), and when the root ends the whole segment is decided at once:
 *
 *   sampled (head decision: the caller's flag, else the trace-ID ratio)  → exported (OTLP) and stored
 *   not sampled, but failed (5xx, a thrown function) or slower than slowMs → stored only (tail decision)
 *   otherwise                                                             → dropped
 *
 * Spans are plain records until then: attributes are set as fields, times are
 * performance.now() readings, and nothing is converted or copied unless the segment is kept.
 * With tracing off, the proxies hold no Tracer and do none of this. Spans made by a function's
 * own code (OpenTelemetry API inside the sandbox) arrive finished through `record()`.
 */
import { TideError } from '../errors.ts';
import { b3Denies, extract, formatTraceparent, newSpanId, newTraceId, type RemoteParent, underRatio } from './context.ts';

export type SpanKind = 'server' | 'client' | 'internal';
export type AttributeValue = string | number | boolean;
export type Attributes = Record<string, AttributeValue>;

export interface SpanEvent {
  name: string;
  /** ms since the epoch. */
  timeMs: number;
  attributes?: Attributes;
}

/** A finished span, as stored, shown and exported. */
export interface SpanData {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  kind: SpanKind;
  /** ms since the epoch (fractional). */
  startMs: number;
  durationMs: number;
  attributes: Attributes;
  status: 'unset' | 'ok' | 'error';
  statusMessage?: string;
  events?: SpanEvent[];
  /** The service it belongs to: Tide's proxies ("tide"), or the function whose work it is. */
  service: string;
  sampled: boolean;
}

/** Why a trace is in the store. */
export type KeptReason = 'sampled' | 'error' | 'slow';

export interface TraceSink {
  add(spans: SpanData[], kept: KeptReason): void;
}

export interface SpanExporter {
  /** Takes sampled spans; sends them in the background. */
  export(spans: SpanData[]): void;
  /** Sends what is buffered, then stops. */
  close(): Promise<void>;
}

export interface SamplingOptions {
  /** Share of new traces (no sampled caller) that are recorded and exported, 0..1. */
  ratio: number;
  /** Follow the caller's sampled flag when its headers carry one (parent-based sampling). */
  parentBased: boolean;
  /** Store traces that failed (5xx, a function that threw) even when not sampled. */
  keepErrors: boolean;
  /** Store traces whose request took at least this long even when not sampled, ms; 0 = never. */
  slowMs: number;
}

export const SAMPLING_DEFAULTS: Readonly<SamplingOptions> = Object.freeze({ ratio: 1, parentBased: true, keepErrors: true, slowMs: 1000 });

const ORIGIN = performance.timeOrigin;

/**
 * Sampling as OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG say (empty when unset):
 * always_on, always_off, traceidratio, and their parentbased_ forms.
 */
export function samplingFromEnv(env: Record<string, string | undefined> = process.env): Partial<SamplingOptions> {
  const name = env.OTEL_TRACES_SAMPLER?.trim().toLowerCase();
  if (!name) return {};
  const parentBased = name.startsWith('parentbased_');
  const kind = parentBased ? name.slice('parentbased_'.length) : name;
  if (kind === 'always_on') return { ratio: 1, parentBased };
  if (kind === 'always_off') return { ratio: 0, parentBased };
  if (kind === 'traceidratio') {
    const raw = env.OTEL_TRACES_SAMPLER_ARG?.trim();
    const ratio = raw ? Number(raw) : 1;
    if (!(ratio >= 0 && ratio <= 1)) throw new TideError('ERR_INVALID_ARGUMENT', `OTEL_TRACES_SAMPLER_ARG must be a number from 0 to 1 (got "${raw}")`);
    return { ratio, parentBased };
  }
  throw new TideError(
    'ERR_INVALID_ARGUMENT',
    `OTEL_TRACES_SAMPLER=${name} is not supported: use always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio`,
  );
}

/** A span being recorded. Fields are public so the hot path sets them without calls. */
export class Span {
  readonly traceId: string;
  readonly spanId: string;
  readonly parentSpanId: string | undefined;
  readonly sampled: boolean;
  readonly kind: SpanKind;
  name: string;
  service: string;
  /** performance.now() at start and end (-1 until ended). */
  readonly start: number;
  end = -1;
  attributes: Attributes = {};
  status: 'unset' | 'ok' | 'error' = 'unset';
  statusMessage: string | undefined;
  events: SpanEvent[] | undefined;
  readonly segment: Segment;
  #traceparent: string | undefined;

  constructor(segment: Segment, traceId: string, parentSpanId: string | undefined, kind: SpanKind, name: string, service: string, start: number) {
    this.segment = segment;
    this.traceId = traceId;
    this.spanId = newSpanId();
    this.parentSpanId = parentSpanId;
    this.sampled = segment.sampled;
    this.kind = kind;
    this.name = name;
    this.service = service;
    this.start = start;
  }

  /** The traceparent that makes the next hop a child of this span. */
  get traceparent(): string {
    this.#traceparent ??= formatTraceparent(this.traceId, this.spanId, this.sampled);
    return this.#traceparent;
  }

  /** A child span in the same segment; `start` defaults to now. */
  child(name: string, kind: SpanKind = 'internal', service: string = this.service, start = performance.now()): Span {
    const s = new Span(this.segment, this.traceId, this.spanId, kind, name, service, start);
    this.segment.spans.push(s);
    return s;
  }

  /**
   * Marks this span failed without deciding the trace failed: an attempt that a retry made
   * good, a call whose failure the caller handled. Whether the trace failed is its root's say.
   */
  markError(message?: string): void {
    this.status = 'error';
    if (message !== undefined) this.statusMessage = message;
  }

  /** Marks it failed; the segment then counts as an error for the tail decision. */
  fail(message?: string): void {
    this.status = 'error';
    if (message !== undefined) this.statusMessage = message;
    this.segment.error = true;
  }

  event(name: string, attributes?: Attributes): void {
    this.events ??= [];
    this.events.push({ name, timeMs: ORIGIN + performance.now(), ...(attributes ? { attributes } : {}) });
  }

  /** Ends it (once); ending the segment's root decides the segment. */
  finish(at = performance.now()): void {
    if (this.end >= 0) return;
    this.end = at;
    if (this === this.segment.root) this.segment.complete();
  }

  data(): SpanData {
    const d: SpanData = {
      traceId: this.traceId,
      spanId: this.spanId,
      name: this.name,
      kind: this.kind,
      startMs: ORIGIN + this.start,
      durationMs: Math.max(0, this.end - this.start),
      attributes: this.attributes,
      status: this.status,
      service: this.service,
      sampled: this.sampled,
    };
    if (this.parentSpanId !== undefined) d.parentSpanId = this.parentSpanId;
    if (this.statusMessage !== undefined) d.statusMessage = this.statusMessage;
    if (this.events !== undefined) d.events = this.events;
    return d;
  }
}

/** The spans one request made in this process, decided together when the root ends. */
export class Segment {
  readonly tracer: Tracer;
  readonly sampled: boolean;
  readonly spans: Span[] = [];
  root!: Span;
  error = false;
  /** Set once kept or dropped: later writes to its spans change nothing stored. */
  decided = false;
  /** The caller's span, when the request came with one. */
  readonly parent: RemoteParent | undefined;

  constructor(tracer: Tracer, sampled: boolean, parent: RemoteParent | undefined) {
    this.tracer = tracer;
    this.sampled = sampled;
    this.parent = parent;
  }

  complete(): void {
    this.decided = true;
    const end = this.root.end;
    // A child still open when its root ends (a response cut short) ends with it.
    for (const s of this.spans) {
      if (s.end >= 0) continue;
      s.end = Math.max(s.start, end);
      s.attributes['tide.unfinished'] = true;
    }
    this.tracer.decide(this);
  }
}

export interface TracerOptions {
  sampling?: Partial<SamplingOptions>;
  /** The in-memory store of recent traces (dashboard, `tide traces`). */
  store?: TraceSink;
  /** OTLP export of sampled spans. */
  exporter?: SpanExporter;
}

export class Tracer {
  readonly sampling: Readonly<SamplingOptions>;
  readonly #store: TraceSink | undefined;
  readonly #exporter: SpanExporter | undefined;
  /** Segments seen, kept by reason (for tests and the dashboard). */
  readonly counts = { segments: 0, sampled: 0, error: 0, slow: 0, dropped: 0 };

  constructor(opts: TracerOptions = {}) {
    const s = { ...SAMPLING_DEFAULTS, ...opts.sampling };
    if (!(s.ratio >= 0 && s.ratio <= 1)) throw new TideError('ERR_INVALID_ARGUMENT', `the trace sampling ratio must be from 0 to 1 (got ${s.ratio})`);
    if (!(s.slowMs >= 0)) throw new TideError('ERR_INVALID_ARGUMENT', `slowMs must be ≥ 0 (got ${s.slowMs})`);
    this.sampling = Object.freeze(s);
    this.#store = opts.store;
    this.#exporter = opts.exporter;
  }

  /**
   * Starts the local root span of a request: a child of the caller's span when the headers
   * (lower-case names) carry one, else the first span of a new trace.
   */
  startRequest(headers: Record<string, string | undefined>, kind: SpanKind, name: string, service: string): Span {
    const parent = extract(headers);
    const traceId = parent?.traceId ?? newTraceId();
    const sampled =
      parent !== undefined && this.sampling.parentBased && parent.sampled !== undefined
        ? parent.sampled
        : parent === undefined && this.sampling.parentBased && b3Denies(headers)
          ? false
          : underRatio(traceId, this.sampling.ratio);
    const segment = new Segment(this, sampled, parent);
    const root = new Span(segment, traceId, parent?.spanId, kind, name, service, performance.now());
    segment.root = root;
    segment.spans.push(root);
    return root;
  }

  /** Finished spans recorded elsewhere (a function's own): sampled ones are stored and exported. */
  record(spans: SpanData[]): void {
    const kept = spans.filter((s) => s.sampled);
    if (kept.length === 0) return;
    this.#store?.add(kept, 'sampled');
    this.#exporter?.export(kept);
  }

  /** Why a segment would be kept: sampled, or (not sampled) failed or slow; undefined: dropped. */
  keeps(sampled: boolean, failed: boolean, durationMs: number): KeptReason | undefined {
    if (sampled) return 'sampled';
    if (failed && this.sampling.keepErrors) return 'error';
    if (this.sampling.slowMs > 0 && durationMs >= this.sampling.slowMs) return 'slow';
    return undefined;
  }

  /**
   * Ends a root span that will not be kept (not sampled, fine and fast) without filling it in:
   * the common case at low sampling ratios, so it costs a check. Returns false (and does
   * nothing) when the segment is to be kept; then fill in the attributes and `finish()` it.
   */
  dropIfUnkept(root: Span, failed: boolean, at = performance.now()): boolean {
    const segment = root.segment;
    if (root !== segment.root || this.keeps(segment.sampled, failed || segment.error, at - root.start) !== undefined) return false;
    root.end = at;
    segment.decided = true;
    this.counts.segments++;
    this.counts.dropped++;
    return true;
  }

  /** @internal The segment's root ended: keep it (and why) or drop it. */
  decide(segment: Segment): void {
    this.counts.segments++;
    const kept = this.keeps(segment.sampled, segment.error, segment.root.end - segment.root.start);
    if (kept === undefined) {
      this.counts.dropped++;
      return;
    }
    this.counts[kept]++;
    const data = segment.spans.map((s) => s.data());
    this.#store?.add(data, kept);
    if (kept === 'sampled') this.#exporter?.export(data);
  }

  /** Sends what the exporter still holds. */
  async close(): Promise<void> {
    await this.#exporter?.close();
  }
}
