import { describe, expect, it } from 'vitest';
import {
  extract,
  formatTraceparent,
  newSpanId,
  newTraceId,
  otlpSettings,
  parseTraceparent,
  type SpanData,
  samplingFromEnv,
  Tracer,
  TraceStore,
  underRatio,
} from '../../lib/trace/index.ts';
import { checkSpan } from '../../runtime/sandbox/worker/spans.ts';

const TID = '4bf92f3577b34da6a3ce929d0e0e4736';
const SID = '00f067aa0ba902b7';

describe('traceparent', () => {
  it('parses the W3C example and formats it back', () => {
    const p = parseTraceparent(`00-${TID}-${SID}-01`);
    expect(p).toEqual({ traceId: TID, spanId: SID, sampled: true, format: 'w3c' });
    expect(formatTraceparent(TID, SID, true)).toBe(`00-${TID}-${SID}-01`);
    expect(parseTraceparent(`00-${TID}-${SID}-00`)?.sampled).toBe(false);
    // A later version may carry more fields.
    expect(parseTraceparent(`01-${TID}-${SID}-01-extra`)?.spanId).toBe(SID);
  });

  it.each([
    ['all-zero trace id', `00-${'0'.repeat(32)}-${SID}-01`],
    ['all-zero span id', `00-${TID}-${'0'.repeat(16)}-01`],
    ['version ff', `ff-${TID}-${SID}-01`],
    ['version 00 with extra', `00-${TID}-${SID}-01-x`],
    ['short trace id', `00-${TID.slice(1)}-${SID}-01`],
    ['not hex', `00-${TID.slice(0, 31)}g-${SID}-01`],
    ['bad flags', `00-${TID}-${SID}-0x`],
    ['wrong separators', `00_${TID}_${SID}_01`],
    ['empty', ''],
    ['upper-case hex (the grammar is lower case)', `00-${TID.toUpperCase()}-${SID}-01`],
  ])('ignores a malformed header: %s', (_name, value) => {
    expect(parseTraceparent(value)).toBeUndefined();
  });

  it('accepts B3 single and multi headers, 64-bit ids padded', () => {
    expect(extract({ b3: `${TID}-${SID}-1` })).toEqual({ traceId: TID, spanId: SID, sampled: true, format: 'b3' });
    expect(extract({ b3: `a3ce929d0e0e4736-${SID}-0-05e3ac9a4f6e3b90` })).toEqual({
      traceId: `0000000000000000a3ce929d0e0e4736`,
      spanId: SID,
      sampled: false,
      format: 'b3',
    });
    expect(extract({ b3: '0' })).toBeUndefined();
    // No sampling flag: the caller defers the decision.
    expect(extract({ b3: `${TID}-${SID}` })?.sampled).toBeUndefined();
    expect(extract({ 'x-b3-traceid': TID, 'x-b3-spanid': SID })?.sampled).toBeUndefined();
    expect(extract({ 'x-b3-traceid': TID, 'x-b3-spanid': SID, 'x-b3-sampled': '0' })?.sampled).toBe(false);
    expect(extract({ 'x-b3-traceid': TID, 'x-b3-spanid': SID, 'x-b3-sampled': '1' })?.sampled).toBe(true);
    expect(extract({ 'x-b3-traceid': TID, 'x-b3-spanid': SID, 'x-b3-flags': '1' })?.sampled).toBe(true);
    expect(extract({ 'x-b3-traceid': TID })).toBeUndefined();
    // traceparent wins over B3.
    expect(extract({ traceparent: `00-${TID}-${SID}-00`, b3: `${'1'.repeat(32)}-${SID}-1` })?.traceId).toBe(TID);
  });

  it('makes ids that are hex, the right length and different', () => {
    const ids = new Set<string>();
    for (let i = 0; i < 2000; i++) {
      const t = newTraceId();
      expect(t).toMatch(/^[0-9a-f]{32}$/);
      ids.add(t);
      expect(newSpanId()).toMatch(/^[0-9a-f]{16}$/);
    }
    expect(ids.size).toBe(2000);
  });

  it('decides the ratio from the trace id, the same way each time', () => {
    let n = 0;
    for (let i = 0; i < 20_000; i++) if (underRatio(newTraceId(), 0.1)) n++;
    expect(n).toBeGreaterThan(1600);
    expect(n).toBeLessThan(2400);
    const id = newTraceId();
    expect(underRatio(id, 0.5)).toBe(underRatio(id, 0.5));
    expect(underRatio(id, 0)).toBe(false);
    expect(underRatio(id, 1)).toBe(true);
  });
});

function collect() {
  const stored: { spans: SpanData[]; kept: string }[] = [];
  const exported: SpanData[][] = [];
  return {
    stored,
    exported,
    sink: { add: (spans: SpanData[], kept: 'sampled' | 'error' | 'slow') => stored.push({ spans, kept }) },
    exporter: { export: (s: SpanData[]) => exported.push(s), close: async () => {} },
  };
}

describe('Tracer', () => {
  it('continues the caller trace and follows its sampled flag', () => {
    const c = collect();
    const tracer = new Tracer({ sampling: { ratio: 0 }, store: c.sink, exporter: c.exporter });
    const root = tracer.startRequest({ traceparent: `00-${TID}-${SID}-01` }, 'server', 'GET', 'tide');
    expect(root.traceId).toBe(TID);
    expect(root.parentSpanId).toBe(SID);
    expect(root.sampled).toBe(true);
    const child = root.child('invoke f', 'internal', 'f');
    expect(child.traceparent).toBe(`00-${TID}-${child.spanId}-01`);
    child.finish();
    root.finish();
    expect(c.stored).toHaveLength(1);
    expect(c.stored[0]?.kept).toBe('sampled');
    expect(c.exported[0]?.map((s) => s.name)).toEqual(['GET', 'invoke f']);
    expect(c.exported[0]?.[1]?.parentSpanId).toBe(root.spanId);
  });

  it('keeps failed and slow traces it did not sample in the store only (tail decision)', () => {
    const c = collect();
    const tracer = new Tracer({ sampling: { ratio: 0, slowMs: 50 }, store: c.sink, exporter: c.exporter });
    const ok = tracer.startRequest({}, 'server', 'GET', 'tide');
    ok.finish();
    const failed = tracer.startRequest({}, 'server', 'GET', 'tide');
    failed.child('invoke f').fail('threw');
    failed.finish();
    const slow = tracer.startRequest({}, 'server', 'GET', 'tide');
    slow.finish(slow.start + 60);
    expect(c.stored.map((s) => s.kept)).toEqual(['error', 'slow']);
    expect(c.exported).toHaveLength(0);
    expect(tracer.counts).toMatchObject({ segments: 3, dropped: 1, error: 1, slow: 1 });
    // The open child of a root that ended is closed with it.
    expect(c.stored[0]?.spans[1]?.attributes['tide.unfinished']).toBe(true);
  });

  it('ignores the caller flag when not parent-based, and keeps nothing without keepErrors', () => {
    const c = collect();
    const tracer = new Tracer({ sampling: { ratio: 0, parentBased: false, keepErrors: false, slowMs: 0 }, store: c.sink });
    const r = tracer.startRequest({ traceparent: `00-${TID}-${SID}-01` }, 'server', 'GET', 'tide');
    expect(r.sampled).toBe(false);
    r.fail();
    r.finish();
    expect(c.stored).toHaveLength(0);
  });

  it('drops an unsampled, fine, fast root without filling it in, and keeps the others', () => {
    const c = collect();
    const tracer = new Tracer({ sampling: { ratio: 0, slowMs: 50 }, store: c.sink });
    const fine = tracer.startRequest({}, 'server', 'GET', 'tide');
    expect(tracer.dropIfUnkept(fine, false)).toBe(true);
    const failed = tracer.startRequest({}, 'server', 'GET', 'tide');
    expect(tracer.dropIfUnkept(failed, true)).toBe(false);
    const childFailed = tracer.startRequest({}, 'server', 'GET', 'tide');
    childFailed.child('invoke f').fail();
    expect(tracer.dropIfUnkept(childFailed, false)).toBe(false);
    const slow = tracer.startRequest({}, 'server', 'GET', 'tide');
    expect(tracer.dropIfUnkept(slow, false, slow.start + 60)).toBe(false);
    const sampled = tracer.startRequest({ traceparent: `00-${TID}-${SID}-01` }, 'server', 'GET', 'tide');
    expect(tracer.dropIfUnkept(sampled, false)).toBe(false);
    expect(tracer.counts.dropped).toBe(1);
    expect(c.stored).toHaveLength(0);
  });

  it('decides by the ratio when a B3 caller defers, and samples nothing a B3 caller denies', () => {
    const all = new Tracer({ sampling: { ratio: 1 } });
    expect(all.startRequest({ b3: `${TID}-${SID}` }, 'server', 'GET', 'tide').sampled).toBe(true);
    expect(all.startRequest({ b3: '0' }, 'server', 'GET', 'tide').sampled).toBe(false);
    expect(all.startRequest({ 'x-b3-sampled': '0' }, 'server', 'GET', 'tide').sampled).toBe(false);
    const none = new Tracer({ sampling: { ratio: 0 } });
    expect(none.startRequest({ b3: `${TID}-${SID}` }, 'server', 'GET', 'tide').sampled).toBe(false);
    expect(none.startRequest({ b3: `${TID}-${SID}-1` }, 'server', 'GET', 'tide').sampled).toBe(true);
  });

  it('keeps a trace whose attempt failed but whose request succeeded out of the error tail', () => {
    const c = collect();
    const tracer = new Tracer({ sampling: { ratio: 0, slowMs: 0 }, store: c.sink });
    const root = tracer.startRequest({}, 'server', 'GET', 'tide');
    const attempt = root.child('invoke f');
    attempt.markError('503');
    attempt.finish();
    root.child('invoke f').finish();
    expect(tracer.dropIfUnkept(root, false)).toBe(true);
    expect(c.stored).toHaveLength(0);
  });

  it('refuses a ratio outside 0..1', () => {
    expect(() => new Tracer({ sampling: { ratio: 2 } })).toThrow(/from 0 to 1/);
  });
});

function span(traceId: string, spanId: string, parent: string | undefined, startMs: number, durationMs: number, extra: Partial<SpanData> = {}): SpanData {
  return {
    traceId,
    spanId,
    ...(parent ? { parentSpanId: parent } : {}),
    name: spanId,
    kind: 'internal',
    startMs,
    durationMs,
    attributes: {},
    status: 'unset',
    service: 'tide',
    sampled: true,
    ...extra,
  };
}

describe('TraceStore', () => {
  it('joins a trace that arrives in pieces and summarises it from its root', () => {
    const store = new TraceStore();
    const t = '1'.repeat(32);
    // The downstream hop's segment ends first.
    store.add([span(t, 'b', 'a', 1005, 5, { attributes: { 'faas.name': 'back' }, status: 'error' })], 'sampled');
    store.add([span(t, 'a', undefined, 1000, 20, { name: 'GET front', attributes: { 'http.response.status_code': 502, 'faas.name': 'front' } })], 'sampled');
    const got = store.get(t);
    expect(got?.spans.map((s) => s.spanId)).toEqual(['a', 'b']);
    expect(got?.summary).toMatchObject({ name: 'GET front', durationMs: 20, spans: 2, functions: ['back', 'front'], status: 502, error: true });
  });

  it('filters by function, status and duration, newest first', () => {
    const store = new TraceStore();
    for (let i = 0; i < 10; i++) {
      const id = i.toString(16).padStart(32, 'a');
      store.add(
        [
          span(id, 'r', undefined, 1000 + i, i * 10, {
            attributes: { 'faas.name': i % 2 ? 'odd' : 'even', 'http.response.status_code': i === 3 ? 500 : 200 },
            status: i === 3 ? 'error' : 'unset',
          }),
        ],
        'sampled',
      );
    }
    expect(store.list({ function: 'odd' }).map((s) => s.durationMs)).toEqual([90, 70, 50, 30, 10]);
    expect(store.list({ status: 'error' })).toHaveLength(1);
    expect(store.list({ status: 500 })[0]?.durationMs).toBe(30);
    expect(store.list({ status: 'ok' })).toHaveLength(9);
    expect(store.list({ minMs: 50, maxMs: 70 }).map((s) => s.durationMs)).toEqual([70, 60, 50]);
    expect(store.list({ limit: 2 })).toHaveLength(2);
    expect(store.list({ traceId: 'aaaaa' }).length).toBe(10);
  });

  it('evicts fine sampled traces before failed or tail-kept ones', () => {
    const store = new TraceStore({ maxTraces: 3 });
    store.add([span('1'.repeat(32), 'r', undefined, 1, 1, { status: 'error' })], 'sampled');
    store.add([span('2'.repeat(32), 'r', undefined, 1, 1)], 'slow');
    store.add([span('3'.repeat(32), 'r', undefined, 1, 1)], 'sampled');
    store.add([span('4'.repeat(32), 'r', undefined, 1, 1)], 'sampled');
    store.add([span('5'.repeat(32), 'r', undefined, 1, 1)], 'sampled');
    expect(store.get('1'.repeat(32))).toBeDefined();
    expect(store.get('2'.repeat(32))).toBeDefined();
    expect(store.get('3'.repeat(32))).toBeUndefined();
    expect(store.get('4'.repeat(32))).toBeUndefined();
    expect(store.get('5'.repeat(32))).toBeDefined();
  });

  it('summarises a trace whose spans all name a parent in it (no root) from its earliest span', () => {
    const store = new TraceStore();
    const t = '6'.repeat(32);
    store.add([span(t, 'a', 'b', 10, 5, { name: 'A' }), span(t, 'b', 'a', 12, 5, { name: 'B' })], 'sampled');
    expect(store.list()[0]?.name).toBe('A');
  });

  it('is bounded in traces (least recently updated go) and spans per trace', () => {
    const store = new TraceStore({ maxTraces: 3, maxSpansPerTrace: 2 });
    for (const id of ['1', '2', '3']) store.add([span(id.repeat(32), 'r', undefined, 1, 1)], 'sampled');
    store.add([span('1'.repeat(32), 's', 'r', 1, 1)], 'sampled');
    store.add([span('4'.repeat(32), 'r', undefined, 1, 1)], 'sampled');
    expect(store.size).toBe(3);
    expect(store.get('2'.repeat(32))).toBeUndefined();
    expect(store.get('1'.repeat(32))).toBeDefined();
    store.add([span('1'.repeat(32), 't', 'r', 1, 1)], 'sampled');
    expect(store.get('1'.repeat(32))?.spans).toHaveLength(2);
    expect(store.get('1'.repeat(32))?.droppedSpans).toBe(1);
  });
});

describe('OTEL_* environment', () => {
  it('exports only when an endpoint (or the exporter) is named', () => {
    expect(otlpSettings({})).toBeUndefined();
    expect(otlpSettings({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318/' })).toEqual({ endpoint: 'http://c:4318/v1/traces', protocol: 'http/protobuf' });
    expect(otlpSettings({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://c:9/t', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://x' })?.endpoint).toBe('http://c:9/t');
    expect(otlpSettings({ OTEL_TRACES_EXPORTER: 'otlp' })?.endpoint).toBe('http://localhost:4318/v1/traces');
    expect(otlpSettings({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c', OTEL_TRACES_EXPORTER: 'none' })).toBeUndefined();
    expect(otlpSettings({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c', OTEL_SDK_DISABLED: 'true' })).toBeUndefined();
    expect(otlpSettings({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c', OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json' })?.protocol).toBe('http/json');
  });

  it('says which variable is wrong', () => {
    expect(() => otlpSettings({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c', OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'grpc' })).toThrow(
      /OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=grpc is not supported/,
    );
    expect(() => otlpSettings({ OTEL_TRACES_EXPORTER: 'zipkin' })).toThrow(/OTEL_TRACES_EXPORTER=zipkin/);
    expect(() => otlpSettings({ OTEL_EXPORTER_OTLP_ENDPOINT: 'c:4318' })).toThrow(/OTEL_EXPORTER_OTLP_ENDPOINT must be an http/);
  });

  it('reads the standard samplers', () => {
    expect(samplingFromEnv({})).toEqual({});
    expect(samplingFromEnv({ OTEL_TRACES_SAMPLER: 'parentbased_traceidratio', OTEL_TRACES_SAMPLER_ARG: '0.25' })).toEqual({ ratio: 0.25, parentBased: true });
    expect(samplingFromEnv({ OTEL_TRACES_SAMPLER: 'always_off' })).toEqual({ ratio: 0, parentBased: false });
    expect(samplingFromEnv({ OTEL_TRACES_SAMPLER: 'traceidratio' })).toEqual({ ratio: 1, parentBased: false });
    expect(() => samplingFromEnv({ OTEL_TRACES_SAMPLER: 'traceidratio', OTEL_TRACES_SAMPLER_ARG: '2' })).toThrow(/OTEL_TRACES_SAMPLER_ARG/);
    expect(() => samplingFromEnv({ OTEL_TRACES_SAMPLER: 'jaeger_remote' })).toThrow(/not supported/);
  });
});

describe('spans a function posts (checkSpan)', () => {
  const good = { ...span(TID, SID, undefined, Date.now(), 3), service: 'f', attributes: { a: 1 } };

  it('takes a well-formed sampled span', () => {
    expect(checkSpan(good)).toEqual(good);
  });

  it.each([
    ['null', null],
    ['a string', 'x'],
    ['a bad trace id', { ...good, traceId: 'zz' }],
    ['an all-zero span id', { ...good, spanId: '0'.repeat(16) }],
    ['its own parent', { ...good, parentSpanId: SID }],
    ['no name', { ...good, name: '' }],
    ['a negative duration', { ...good, durationMs: -1 }],
    ['a start that is not a number', { ...good, startMs: 'soon' }],
    ['not sampled', { ...good, sampled: false }],
  ])('drops %s', (_n, v) => {
    expect(checkSpan(v)).toBeUndefined();
  });

  it('caps sizes and drops attribute values that are not scalars', () => {
    const attrs: Record<string, unknown> = { nested: { a: 1 }, nan: Number.NaN, long: 'x'.repeat(5000) };
    for (let i = 0; i < 100; i++) attrs[`k${i}`] = i;
    const s = checkSpan({ ...good, name: 'n'.repeat(1000), attributes: attrs, events: Array.from({ length: 50 }, () => ({ name: 'e', timeMs: 1 })) });
    expect(s?.name.length).toBe(256);
    expect(Object.keys(s?.attributes ?? {}).length).toBe(64);
    expect(s?.attributes.nested).toBeUndefined();
    expect(s?.attributes.nan).toBeUndefined();
    expect(String(s?.attributes.long).length).toBe(1024);
    expect(s?.events).toHaveLength(32);
  });
});
