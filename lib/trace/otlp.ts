/**
 * OTLP/HTTP export of sampled spans, configured by the standard OpenTelemetry environment
 * variables, so Jaeger, Tempo, Honeycomb or a Collector plug in without Tide-specific setup:
 *
 *   OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT  where to send (export is on when one is set)
 *   OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL   http/protobuf (default) | http/json
 *   OTEL_EXPORTER_OTLP_(TRACES_)HEADERS, _TIMEOUT, _COMPRESSION, _CERTIFICATE…  read by the exporter itself
 *   OTEL_TRACES_EXPORTER       otlp | none (none turns export off)
 *   OTEL_SERVICE_NAME          the proxies' service name (default "tide"); functions are services of their own names
 *   OTEL_RESOURCE_ATTRIBUTES   added to every service's resource
 *   OTEL_BSP_SCHEDULE_DELAY, OTEL_BSP_MAX_QUEUE_SIZE, OTEL_BSP_MAX_EXPORT_BATCH_SIZE, OTEL_BSP_EXPORT_TIMEOUT
 *
 * Spans are Tide's SpanData records; they are handed to the SDK's BatchSpanProcessor and OTLP
 * exporter as ReadableSpans. The exporter packages are loaded only when export is on.
 */
import { type HrTime, type SpanContext, SpanKind, SpanStatusCode } from '@opentelemetry/api';
import type { Resource } from '@opentelemetry/resources';
import type { ReadableSpan, SpanProcessor } from '@opentelemetry/sdk-trace';
import { TideError } from '../errors.ts';
import type { SpanData, SpanExporter } from './tracer.ts';

const KIND = { server: SpanKind.SERVER, client: SpanKind.CLIENT, internal: SpanKind.INTERNAL } as const;
const STATUS = { unset: SpanStatusCode.UNSET, ok: SpanStatusCode.OK, error: SpanStatusCode.ERROR } as const;

export interface OtlpSettings {
  endpoint: string;
  protocol: 'http/protobuf' | 'http/json';
}

type Env = Record<string, string | undefined>;

/**
 * What the environment asks for: undefined when export is off. Throws a TideError naming the
 * variable for a value Tide cannot honour (gRPC, an unknown exporter).
 */
export function otlpSettings(env: Env = process.env): OtlpSettings | undefined {
  if ((env.OTEL_SDK_DISABLED ?? '').trim().toLowerCase() === 'true') return undefined;
  const exporters = (env.OTEL_TRACES_EXPORTER ?? '')
    .split(',')
    .map((s) => s.trim().toLowerCase())
    .filter(Boolean);
  if (exporters.includes('none')) return undefined;
  for (const e of exporters) {
    if (e !== 'otlp') throw new TideError('ERR_INVALID_ARGUMENT', `OTEL_TRACES_EXPORTER=${e} is not supported: Tide exports traces with otlp (or none)`);
  }
  const specific = env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT?.trim();
  const general = env.OTEL_EXPORTER_OTLP_ENDPOINT?.trim();
  if (!specific && !general && exporters.length === 0) return undefined;
  const endpoint = specific || (general ? `${general.replace(/\/+$/, '')}/v1/traces` : 'http://localhost:4318/v1/traces');
  try {
    const u = new URL(endpoint);
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error('not http');
  } catch {
    throw new TideError(
      'ERR_INVALID_ARGUMENT',
      `${specific ? 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT' : 'OTEL_EXPORTER_OTLP_ENDPOINT'} must be an http:// or https:// URL (got "${endpoint}")`,
    );
  }
  const protocolVar = env.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL?.trim() ? 'OTEL_EXPORTER_OTLP_TRACES_PROTOCOL' : 'OTEL_EXPORTER_OTLP_PROTOCOL';
  const protocol = (env[protocolVar]?.trim() || 'http/protobuf').toLowerCase();
  if (protocol !== 'http/protobuf' && protocol !== 'http/json') {
    throw new TideError('ERR_INVALID_ARGUMENT', `${protocolVar}=${protocol} is not supported: Tide exports over OTLP/HTTP (http/protobuf or http/json)`, {
      hint: protocol === 'grpc' ? 'point it at the OTLP/HTTP port of your collector (usually 4318) and set http/protobuf' : undefined,
    });
  }
  return { endpoint, protocol };
}

function hr(ms: number): HrTime {
  const s = Math.floor(ms / 1000);
  return [s, Math.round((ms - s * 1000) * 1e6)];
}

function envNumber(env: Env, name: string): number | undefined {
  const v = env[name]?.trim();
  if (!v) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new TideError('ERR_INVALID_ARGUMENT', `${name} must be a positive integer (got "${v}")`);
  return n;
}

/** How long closing waits for the last spans to be sent, ms. */
const CLOSE_MS = 2000;
/** At most one export failure is reported per this many ms. */
const REPORT_EVERY_MS = 30_000;

/**
 * Starts OTLP export as the environment says; undefined when it says nothing. `onError` hears
 * about failed exports (a collector that is down), at most once per 30 s, with how many
 * failed since the last report; spans that could not be sent are dropped, never retried
 * forever or queued without bound.
 */
export async function otlpExporter(
  env: Env = process.env,
  version = '0.0.0',
  onError: (err: unknown, failures: number) => void = () => {},
): Promise<(SpanExporter & { settings: OtlpSettings }) | undefined> {
  const settings = otlpSettings(env);
  if (!settings) return undefined;
  const [{ BatchSpanProcessor }, resources, exporterModule, core] = await Promise.all([
    import('@opentelemetry/sdk-trace'),
    import('@opentelemetry/resources'),
    settings.protocol === 'http/json' ? import('@opentelemetry/exporter-trace-otlp-http') : import('@opentelemetry/exporter-trace-otlp-proto'),
    import('@opentelemetry/core'),
  ]);
  let failures = 0;
  let reportedAt = 0;
  core.setGlobalErrorHandler((err) => {
    failures++;
    const now = Date.now();
    if (now - reportedAt < REPORT_EVERY_MS) return;
    reportedAt = now;
    onError(err, failures);
    failures = 0;
  });
  // The exporter reads the endpoint itself too; it is passed so both agree on it.
  const exporter = new exporterModule.OTLPTraceExporter({ url: settings.endpoint });
  const processor: SpanProcessor = new BatchSpanProcessor({
    exporter,
    scheduledDelayMillis: envNumber(env, 'OTEL_BSP_SCHEDULE_DELAY') ?? 1000,
    maxQueueSize: envNumber(env, 'OTEL_BSP_MAX_QUEUE_SIZE') ?? 4096,
    maxExportBatchSize: envNumber(env, 'OTEL_BSP_MAX_EXPORT_BATCH_SIZE') ?? 512,
    exportTimeoutMillis: envNumber(env, 'OTEL_BSP_EXPORT_TIMEOUT') ?? 30_000,
  });
  const fromEnv = resources.resourceAttributesEnvDetector.detect().attributes ?? {};
  const base = {
    'telemetry.sdk.name': 'tide',
    'telemetry.sdk.language': 'nodejs',
    'telemetry.sdk.version': version,
    ...fromEnv,
  };
  const proxyName = env.OTEL_SERVICE_NAME?.trim() || (typeof fromEnv['service.name'] === 'string' ? fromEnv['service.name'] : 'tide');
  const byService = new Map<string, Resource>();
  const resourceOf = (service: string): Resource => {
    let r = byService.get(service);
    if (!r) {
      r =
        service === 'tide'
          ? resources.resourceFromAttributes({ ...base, 'service.name': proxyName })
          : resources.resourceFromAttributes({ ...base, 'service.name': service, 'faas.name': service });
      byService.set(service, r);
    }
    return r;
  };
  const scope = { name: 'tide', version };
  return {
    settings,
    export(spans: SpanData[]): void {
      for (const s of spans) processor.onEnd(readable(s, resourceOf(s.service), scope));
    },
    async close(): Promise<void> {
      // The last batch gets CLOSE_MS to go; a collector that is down does not hold up shutdown.
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        processor.shutdown().catch((err: unknown) => onError(err, failures + 1)),
        new Promise<void>((r) => {
          timer = setTimeout(r, CLOSE_MS);
        }),
      ]);
      clearTimeout(timer);
    },
  };
}

function readable(s: SpanData, resource: Resource, scope: { name: string; version: string }): ReadableSpan {
  const traceFlags = s.sampled ? 1 : 0;
  const context: SpanContext = { traceId: s.traceId, spanId: s.spanId, traceFlags };
  return {
    name: s.name,
    kind: KIND[s.kind],
    spanContext: () => context,
    ...(s.parentSpanId === undefined ? {} : { parentSpanContext: { traceId: s.traceId, spanId: s.parentSpanId, traceFlags } }),
    startTime: hr(s.startMs),
    endTime: hr(s.startMs + s.durationMs),
    duration: hr(s.durationMs),
    status: { code: STATUS[s.status], ...(s.statusMessage === undefined ? {} : { message: s.statusMessage }) },
    attributes: s.attributes,
    links: [],
    events: (s.events ?? []).map((e) => ({ name: e.name, time: hr(e.timeMs), ...(e.attributes ? { attributes: e.attributes } : {}) })),
    ended: true,
    resource,
    instrumentationScope: scope,
    droppedAttributesCount: 0,
    droppedEventsCount: 0,
    droppedLinksCount: 0,
  };
}
