/**
 * `tide traces`: the recent traces Tide kept (GET /v1/traces), filtered by function, status
 * and duration; `tide traces ID` prints one as a waterfall, each span under its parent with
 * its offset, duration and the attributes that say what it was.
 */
import { type Command, Option } from 'commander';
import { parseDuration } from '../lib/duration.ts';
import { TideError } from '../lib/errors.ts';
import type { TraceSummary } from '../lib/trace/store.ts';
import type { SpanData } from '../lib/trace/tracer.ts';
import { ApiClient, type ConnectOptions, locate } from './client.ts';
import { table } from './print.ts';

interface TraceView {
  traceId: string;
  summary: TraceSummary;
  spans: SpanData[];
  droppedSpans?: number;
}

/** Attributes worth a place on a span's line; the rest shows with --attributes. */
const SHOWN = [
  'http.response.status_code',
  'faas.coldstart',
  'tide.source',
  'tide.instance',
  'error.type',
  'tide.attempts',
  'http.request.method',
  'url.path',
  'server.address',
];

export function registerTraces(prog: Command, connectionOptions: (c: Command) => Command, out: (s: string) => void): void {
  connectionOptions(
    prog
      .command('traces')
      .description(
        'list the recent traces Tide kept (sampled ones, and failed or slow ones it did not sample), or show one as a waterfall. ' +
          'Sampled traces also go to an OTLP collector when OTEL_EXPORTER_OTLP_ENDPOINT is set on `tide up`.',
      )
      .argument('[trace-id]', 'show this trace (the whole ID, or enough of its start to be unique)')
      .option('--function <name>', 'only traces that went through this function')
      .option('--status <status>', 'error, ok, or an HTTP status of the first request, e.g. 503')
      .option('--min-duration <duration>', 'only traces at least this long, e.g. 200ms')
      .option('--max-duration <duration>', 'only traces at most this long')
      .option('--limit <n>', 'most traces listed, newest first (1..1000)', '20')
      .option('--attributes', 'with a trace ID: print every attribute of every span')
      .addOption(new Option('-o, --output <format>', 'json prints what the API returned').choices(['text', 'json'])),
  ).action(async (id: string | undefined, o: Record<string, unknown> & ConnectOptions) => {
    const q = new URLSearchParams();
    if (o.function) q.set('function', o.function as string);
    if (o.status) {
      if (!/^(error|ok|[1-5]\d\d)$/.test(o.status as string))
        throw new TideError('ERR_INVALID_ARGUMENT', `--status must be error, ok or an HTTP status such as 503 (got "${o.status as string}")`);
      q.set('status', o.status as string);
    }
    const limit = Number(o.limit);
    if (!Number.isInteger(limit) || limit < 1 || limit > 1000)
      throw new TideError('ERR_INVALID_ARGUMENT', `--limit must be an integer from 1 to 1000 (got "${o.limit as string}")`);
    if (o.minDuration) q.set('minMs', String(parseDuration(o.minDuration as string, '--min-duration', { allowZero: true })));
    if (o.maxDuration) q.set('maxMs', String(parseDuration(o.maxDuration as string, '--max-duration', { allowZero: true })));
    if (id !== undefined) {
      if (!/^[0-9a-fA-F]{1,32}$/.test(id)) throw new TideError('ERR_INVALID_ARGUMENT', `a trace ID is up to 32 hex digits (got "${id}")`);
      q.set('traceId', id.toLowerCase());
    }
    q.set('limit', id !== undefined ? '2' : (o.limit as string));
    const api = new ApiClient(await locate(o));
    const { items } = await api.call<{ items: TraceSummary[] }>('GET', `/v1/traces?${q}`);
    if (id === undefined) {
      if (o.output === 'json') out(JSON.stringify(items, null, 2));
      else if (items.length === 0) out('No traces kept yet (or none match). Send requests through the gateway, then try again.');
      else out(listing(items));
      return;
    }
    if (items.length === 0) throw new TideError('ERR_NOT_FOUND', `no kept trace starts with ${id}`, { hint: 'list them with `tide traces`' });
    if (items.length > 1 && (items[0] as TraceSummary).traceId !== id.toLowerCase())
      throw new TideError('ERR_INVALID_ARGUMENT', `${id} is the start of more than one trace; give more of it`);
    const trace = await api.call<TraceView>('GET', `/v1/traces/${(items[0] as TraceSummary).traceId}`);
    out(o.output === 'json' ? JSON.stringify(trace, null, 2) : waterfall(trace, o.attributes === true));
  });
}

/** Span names and attributes come from functions: no control characters reach the terminal. */
function clean(v: unknown): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: removing them is the point
  return String(v).replace(/[\u0000-\u001f\u007f-\u009f]/g, '?');
}

function ms(n: number): string {
  return n >= 1000 ? `${(n / 1000).toFixed(2)}s` : n >= 10 ? `${n.toFixed(0)}ms` : `${n.toFixed(2)}ms`;
}

function listing(items: TraceSummary[]): string {
  return table(
    ['TRACE ID', 'STARTED', 'DURATION', 'SPANS', 'STATUS', 'KEPT', 'FUNCTIONS', 'ROOT'],
    items.map((t) => [
      t.traceId,
      new Date(t.startMs).toISOString().slice(11, 23),
      ms(t.durationMs),
      String(t.spans),
      `${t.status ?? '-'}${t.error ? ' error' : ''}`,
      t.kept,
      clean(t.functions.join(',') || '-'),
      clean(t.name),
    ]),
  );
}

/** Spans in tree order (a parent before its children, siblings by start), with their depth. */
export function treeOrder(spans: SpanData[]): { span: SpanData; depth: number }[] {
  const ids = new Set(spans.map((s) => s.spanId));
  const children = new Map<string, SpanData[]>();
  const roots: SpanData[] = [];
  for (const s of [...spans].sort((a, b) => a.startMs - b.startMs)) {
    if (s.parentSpanId !== undefined && ids.has(s.parentSpanId)) {
      const list = children.get(s.parentSpanId) ?? [];
      list.push(s);
      children.set(s.parentSpanId, list);
    } else roots.push(s);
  }
  const out: { span: SpanData; depth: number }[] = [];
  const walk = (s: SpanData, depth: number) => {
    out.push({ span: s, depth });
    for (const c of children.get(s.spanId) ?? []) walk(c, depth + 1);
  };
  for (const r of roots) walk(r, 0);
  return out;
}

function waterfall(t: TraceView, all: boolean): string {
  const s = t.summary;
  const lines = [
    `Trace ${t.traceId}: ${clean(s.name)}, ${ms(s.durationMs)}, ${s.spans} spans, ${s.status ?? '-'}${s.error ? ' (error)' : ''}, kept: ${s.kept}`,
    `Started ${new Date(s.startMs).toISOString()}; functions: ${clean(s.functions.join(', ') || '-')}`,
    '',
  ];
  const width = 30;
  const total = Math.max(s.durationMs, 0.001);
  for (const { span, depth } of treeOrder(t.spans)) {
    const offset = span.startMs - s.startMs;
    const from = Math.min(width - 1, Math.floor((offset / total) * width));
    const len = Math.max(1, Math.min(width - from, Math.round((span.durationMs / total) * width)));
    const bar = `${' '.repeat(from)}${(span.status === 'error' ? 'x' : '█').repeat(len)}`.padEnd(width);
    const attrs = Object.entries(span.attributes).filter(([k]) => all || SHOWN.includes(k));
    const detail = attrs.map(([k, v]) => `${clean(k)}=${clean(v)}`).join(' ');
    lines.push(
      `|${bar}| ${'  '.repeat(depth)}${clean(span.name)} [${clean(span.service)}, ${span.kind}] +${ms(offset)} ${ms(span.durationMs)}${span.status === 'error' ? ` ERROR${span.statusMessage ? `: ${clean(span.statusMessage)}` : ''}` : ''}${detail ? `  ${detail}` : ''}`,
    );
    if (all)
      for (const e of span.events ?? []) lines.push(`${' '.repeat(width + 3)}${'  '.repeat(depth + 1)}event ${clean(e.name)} +${ms(e.timeMs - s.startMs)}`);
  }
  if (t.droppedSpans) lines.push(`(${t.droppedSpans} more spans were dropped: the store keeps 500 per trace)`);
  return lines.join('\n');
}
