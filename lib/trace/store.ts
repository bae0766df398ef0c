/**
 * The in-memory store of recent traces that the dashboard and `tide traces` read. Bounded: at
 * most `maxTraces` traces (the least recently updated go first) and `maxSpansPerTrace` spans
 * each. The spans of one trace arrive in pieces (each proxy hop's segment when it ends, a
 * function's own spans when they end), so a trace's summary is worked out when it is read.
 */
import { TideError } from '../errors.ts';
import type { KeptReason, SpanData, TraceSink } from './tracer.ts';

export interface TraceSummary {
  traceId: string;
  /** The root span's name (the earliest span whose parent is not in the trace). */
  name: string;
  service: string;
  /** ms since the epoch. */
  startMs: number;
  /** From the first span's start to the last span's end, ms. */
  durationMs: number;
  spans: number;
  /** Functions the trace went through. */
  functions: string[];
  /** The root span's HTTP status, when it has one. */
  status?: number;
  /** True when any span failed. */
  error: boolean;
  /** Why it was kept: sampled, or failed / slow while not sampled. */
  kept: KeptReason;
}

export interface TraceQuery {
  traceId?: string;
  /** Traces that went through this function. */
  function?: string;
  /** 'error', 'ok', or an HTTP status of the root span. */
  status?: 'error' | 'ok' | number;
  minMs?: number;
  maxMs?: number;
  /** Most summaries returned, newest first. Default 50, at most 1000. */
  limit?: number;
}

export interface TraceStoreOptions {
  /** Default 1000. */
  maxTraces?: number;
  /** Default 500. */
  maxSpansPerTrace?: number;
}

interface Entry {
  spans: SpanData[];
  kept: KeptReason;
  /** Some span failed: such traces are evicted after the fine ones. */
  failed: boolean;
  dropped: number;
  summary: TraceSummary | undefined;
}

const KEEP_RANK: Record<KeptReason, number> = { sampled: 2, error: 1, slow: 0 };

export class TraceStore implements TraceSink {
  readonly #traces = new Map<string, Entry>();
  readonly #maxTraces: number;
  readonly #maxSpans: number;

  constructor(opts: TraceStoreOptions = {}) {
    this.#maxTraces = opts.maxTraces ?? 1000;
    this.#maxSpans = opts.maxSpansPerTrace ?? 500;
    if (!Number.isInteger(this.#maxTraces) || this.#maxTraces < 1)
      throw new TideError('ERR_INVALID_ARGUMENT', `maxTraces must be an integer ≥ 1 (got ${this.#maxTraces})`);
    if (!Number.isInteger(this.#maxSpans) || this.#maxSpans < 1)
      throw new TideError('ERR_INVALID_ARGUMENT', `maxSpansPerTrace must be an integer ≥ 1 (got ${this.#maxSpans})`);
  }

  get size(): number {
    return this.#traces.size;
  }

  add(spans: SpanData[], kept: KeptReason): void {
    let e: Entry | undefined;
    let id = '';
    for (const span of spans) {
      // The spans of one segment share their trace: one lookup for all of them.
      if (e === undefined || span.traceId !== id) {
        id = span.traceId;
        e = this.#traces.get(id);
        if (e) {
          // Most recently updated last: Map order is the eviction order.
          this.#traces.delete(id);
        } else {
          e = { spans: [], kept, failed: false, dropped: 0, summary: undefined };
          if (this.#traces.size >= this.#maxTraces) this.#evict();
        }
        this.#traces.set(id, e);
        if (KEEP_RANK[kept] > KEEP_RANK[e.kept]) e.kept = kept;
        e.summary = undefined;
      }
      if (span.status === 'error') e.failed = true;
      if (e.spans.length >= this.#maxSpans) e.dropped++;
      else e.spans.push(span);
    }
  }

  /**
   * Makes room: the least recently updated trace that was kept only because it was sampled
   * and did not fail goes first (among the oldest 64), so failed and slow traces outlive a
   * stream of fine ones; failing that, the least recently updated.
   */
  #evict(): void {
    let n = 0;
    for (const [id, e] of this.#traces) {
      if (e.kept === 'sampled' && !e.failed) {
        this.#traces.delete(id);
        return;
      }
      if (++n >= 64) break;
    }
    this.#traces.delete(this.#traces.keys().next().value as string);
  }

  get(traceId: string): { traceId: string; summary: TraceSummary; spans: SpanData[]; droppedSpans: number } | undefined {
    const e = this.#traces.get(traceId.toLowerCase());
    if (!e) return undefined;
    const spans = [...e.spans].sort((a, b) => a.startMs - b.startMs);
    return { traceId: traceId.toLowerCase(), summary: this.#summary(traceId.toLowerCase(), e), spans, droppedSpans: e.dropped };
  }

  list(q: TraceQuery = {}): TraceSummary[] {
    const limit = Math.min(Math.max(1, q.limit ?? 50), 1000);
    const out: TraceSummary[] = [];
    const id = q.traceId?.toLowerCase();
    for (const [traceId, e] of this.#traces) {
      if (id !== undefined && !traceId.startsWith(id)) continue;
      const s = this.#summary(traceId, e);
      if (q.function !== undefined && !s.functions.includes(q.function)) continue;
      if (q.status === 'error' && !s.error) continue;
      if (q.status === 'ok' && s.error) continue;
      if (typeof q.status === 'number' && s.status !== q.status) continue;
      if (q.minMs !== undefined && s.durationMs < q.minMs) continue;
      if (q.maxMs !== undefined && s.durationMs > q.maxMs) continue;
      out.push(s);
    }
    out.sort((a, b) => b.startMs - a.startMs);
    return out.slice(0, limit);
  }

  #summary(traceId: string, e: Entry): TraceSummary {
    if (e.summary) return e.summary;
    const ids = new Set(e.spans.map((s) => s.spanId));
    let root: SpanData | undefined;
    let start = Number.POSITIVE_INFINITY;
    let end = 0;
    let error = false;
    const functions = new Set<string>();
    for (const s of e.spans) {
      if ((s.parentSpanId === undefined || !ids.has(s.parentSpanId)) && (root === undefined || s.startMs < root.startMs)) root = s;
      start = Math.min(start, s.startMs);
      end = Math.max(end, s.startMs + s.durationMs);
      if (s.status === 'error') error = true;
      const fn = s.attributes['faas.name'];
      if (typeof fn === 'string') functions.add(fn);
    }
    // Every span has a parent in the trace (a cycle): the earliest stands in as its root.
    const r = root ?? (e.spans.reduce((a, b) => (b.startMs < a.startMs ? b : a)) as SpanData);
    const status = r.attributes['http.response.status_code'];
    e.summary = {
      traceId,
      name: r.name,
      service: r.service,
      startMs: start,
      durationMs: Math.max(0, end - start),
      spans: e.spans.length,
      functions: [...functions].sort(),
      ...(typeof status === 'number' ? { status } : {}),
      error,
      kept: e.kept,
    };
    return e.summary;
  }
}
