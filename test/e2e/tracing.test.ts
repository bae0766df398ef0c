/**
 * Tracing through a real `tide up`: one request through gateway → function A → (mesh, mutual
 * TLS) → function B makes one trace whose spans are in the right parent/child order, in the
 * store (`/v1/traces`, `tide traces`) and exported over OTLP/HTTP to a receiver here (JSON in
 * one Tide, protobuf in another). Also: B3 callers, the caller's sampled flag, failed traces
 * kept without being sampled, cold-start spans, trace ids in logs, and tracing turned off.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { otlpSpans, receiver } from '../helpers/otlp.ts';
import { apiFetch, eventually, FIXTURES, http, startTide, stopTide, type TideProcess, tide } from '../helpers/tide.ts';

interface Span {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  kind: string;
  service: string;
  status: string;
  attributes: Record<string, string | number | boolean>;
  events?: { name: string }[];
  durationMs: number;
}

async function trace(t: TideProcess, id: string): Promise<Span[] | undefined> {
  const r = await apiFetch(t, `/v1/traces/${id}`);
  if (r.status !== 200) return undefined;
  return ((await r.json()) as { spans: Span[] }).spans;
}

function one(spans: Span[], name: string): Span {
  const found = spans.filter((s) => s.name === name);
  expect(
    found.map((s) => s.name),
    `spans named ${name} among ${spans.map((s) => s.name).join(', ')}`,
  ).toEqual([name]);
  return found[0] as Span;
}

const TID = '0af7651916cd43dd8448eb211c80319c';
const CLIENT_SPAN = 'b7ad6b7169203331';

let t: TideProcess;
let otlp: Awaited<ReturnType<typeof receiver>>;

beforeAll(async () => {
  otlp = await receiver();
  t = await startTide({
    args: ['--trace-sample', '0'],
    env: { OTEL_EXPORTER_OTLP_ENDPOINT: otlp.url, OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json', OTEL_BSP_SCHEDULE_DELAY: '100', OTEL_SERVICE_NAME: 'edge' },
  });
  for (const f of ['traced-back', 'traced-front']) {
    const r = await tide(['deploy', join(FIXTURES, 'functions', `${f}.ts`)], { dataDir: t.dataDir });
    expect(r.code, r.stderr).toBe(0);
  }
}, 60_000);

afterAll(async () => {
  await stopTide(t);
  await new Promise((r) => otlp.server.close(r));
});

describe('one trace from the gateway through the mesh', () => {
  let spans: Span[];

  beforeAll(async () => {
    const r = await http(t.gatewayPort, 'traced-front.localhost', '/', { headers: { traceparent: `00-${TID}-${CLIENT_SPAN}-01` } });
    expect(r.status, r.text).toBe(200);
    // The backend was handed the trace too.
    expect(r.text).toMatch(new RegExp(`^front saw 200: back 00-${TID}-[0-9a-f]{16}-01`));
    spans = await eventually(async () => {
      const s = await trace(t, TID);
      return s && s.length >= 6 ? s : undefined;
    });
  }, 30_000);

  it('has every hop as a span, each under the right parent', () => {
    expect(spans).toHaveLength(6);
    const gateway = one(spans, 'GET traced-front');
    const invokeA = one(spans, 'invoke traced-front');
    const own = one(spans, 'prepare order');
    const egress = one(spans, 'GET traced-back.default.svc.tide');
    const mesh = one(spans, 'GET mesh:traced-back');
    const invokeB = one(spans, 'invoke traced-back');
    // The caller's span is the root's parent: the trace continues the client's.
    expect(gateway.parentSpanId).toBe(CLIENT_SPAN);
    expect(invokeA.parentSpanId).toBe(gateway.spanId);
    expect(own.parentSpanId).toBe(invokeA.spanId);
    expect(egress.parentSpanId).toBe(own.spanId);
    expect(mesh.parentSpanId).toBe(egress.spanId);
    expect(invokeB.parentSpanId).toBe(mesh.spanId);
    expect(spans.every((s) => s.traceId === TID)).toBe(true);
    expect([gateway.kind, invokeA.kind, own.kind, egress.kind, mesh.kind, invokeB.kind]).toEqual([
      'server',
      'internal',
      'internal',
      'client',
      'server',
      'internal',
    ]);
    // A child lies within its parent.
    expect(invokeB.durationMs).toBeLessThanOrEqual(mesh.durationMs + 0.01);
    expect(egress.durationMs).toBeLessThanOrEqual(own.durationMs + 0.01);
  });

  it('carries the HTTP semantic-convention attributes and the function’s own', () => {
    const gateway = one(spans, 'GET traced-front');
    expect(gateway.attributes).toMatchObject({
      'http.request.method': 'GET',
      'http.response.status_code': 200,
      'url.path': '/',
      'url.scheme': 'http',
      'server.address': 'traced-front.localhost',
      'network.protocol.version': '1.1',
      'client.address': '127.0.0.1',
    });
    expect(gateway.service).toBe('tide');
    const invokeA = one(spans, 'invoke traced-front');
    expect(invokeA.service).toBe('traced-front');
    expect(invokeA.attributes).toMatchObject({ 'faas.name': 'traced-front', 'faas.version': 'traced-front-00001', 'faas.trigger': 'http' });
    const own = one(spans, 'prepare order');
    expect(own.service).toBe('traced-front');
    expect(own.attributes['order.items']).toBe(3);
    expect(own.events?.map((e) => e.name)).toEqual(['backend answered']);
    const mesh = one(spans, 'GET mesh:traced-back');
    expect(mesh.attributes['tide.source']).toBe('spiffe://tide.local/ns/default/fn/traced-front');
    expect(mesh.attributes['tide.listener']).toBe('mesh');
    expect(one(spans, 'GET traced-back.default.svc.tide').attributes['http.response.status_code']).toBe(200);
  });

  it('is exported over OTLP/HTTP with the same ids and parents, one service per function', async () => {
    const exported = await eventually(() => {
      const s = otlpSpans(otlp.got).filter((x) => x.traceId === TID);
      return s.length >= 6 ? s : undefined;
    });
    expect(exported).toHaveLength(6);
    for (const s of spans) {
      const e = exported.find((x) => x.spanId === s.spanId);
      expect(e, s.name).toBeDefined();
      expect(e?.name).toBe(s.name);
      expect(e?.parentSpanId || undefined).toBe(s.parentSpanId);
    }
    const services = new Set(exported.map((s) => s.service));
    // OTEL_SERVICE_NAME names the proxies; each function is a service of its own.
    expect([...services].sort()).toEqual(['edge', 'traced-back', 'traced-front']);
    // SERVER = 2, CLIENT = 3, INTERNAL = 1 in OTLP.
    expect(exported.find((s) => s.name === 'GET traced-front')?.kind).toBe(2);
    expect(exported.find((s) => s.name === 'GET traced-back.default.svc.tide')?.kind).toBe(3);
  });

  it('is listed and drawn by `tide traces`, and its ids are in the logs', async () => {
    const list = await tide(['traces', '--function', 'traced-back'], { dataDir: t.dataDir });
    expect(list.code, list.stderr).toBe(0);
    expect(list.stdout).toContain(TID);
    expect(list.stdout).toMatch(/traced-back,traced-front/);
    const shown = await tide(['traces', TID.slice(0, 12)], { dataDir: t.dataDir });
    expect(shown.code, shown.stderr).toBe(0);
    const lines = shown.stdout.split('\n');
    const at = (name: string) => lines.findIndex((l) => l.includes(` ${name} [`));
    expect(at('GET traced-front')).toBeLessThan(at('invoke traced-front'));
    expect(at('prepare order')).toBeLessThan(at('invoke traced-back'));
    // Indented one step per level.
    expect(lines[at('invoke traced-back')]).toMatch(/\| {11}invoke traced-back/);
    // The access log and the function's console output carry the trace.
    const access = readFileSync(join(t.dataDir, 'access.log'), 'utf8');
    expect(access.split('\n').some((l) => l.includes(`"trace":"${TID}"`) && l.includes('traced-front.localhost'))).toBe(true);
    const logs = readFileSync(join(t.dataDir, 'logs', 'traced-front.log'), 'utf8');
    expect(logs.split('\n').some((l) => l.includes('front called') && l.includes(`"traceId":"${TID}"`))).toBe(true);
  });
});

describe('sampling', () => {
  it('accepts a B3 caller and answers the next hop in B3 too', async () => {
    const b3Trace = 'a1b2c3d4e5f60718293a4b5c6d7e8f90';
    const r = await http(t.gatewayPort, 'traced-back.localhost', '/', { headers: { b3: `${b3Trace}-${CLIENT_SPAN}-1` } });
    expect(r.status).toBe(200);
    expect(r.text).toMatch(new RegExp(`^back 00-${b3Trace}-[0-9a-f]{16}-01`));
    const spans = await eventually(() => trace(t, b3Trace));
    expect(one(spans, 'GET traced-back').parentSpanId).toBe(CLIENT_SPAN);
  });

  it('follows an unsampled caller: nothing kept or exported unless it fails, then kept in the store only', async () => {
    const okTrace = '11111111111111111111111111111111';
    const failTrace = '22222222222222222222222222222222';
    const ok = await http(t.gatewayPort, 'traced-back.localhost', '/', { headers: { traceparent: `00-${okTrace}-${CLIENT_SPAN}-00` } });
    expect(ok.status).toBe(200);
    expect(ok.text).toMatch(new RegExp(`^back 00-${okTrace}-[0-9a-f]{16}-00`));
    // Through the mesh too: the unsampled trace goes on (with no function span to parent it).
    const hop = await http(t.gatewayPort, 'traced-front.localhost', '/', { headers: { traceparent: `00-${okTrace}-${CLIENT_SPAN}-00` } });
    expect(hop.text).toMatch(new RegExp(`^front saw 200: back 00-${okTrace}-[0-9a-f]{16}-00`));
    const failed = await http(t.gatewayPort, 'traced-back.localhost', '/?fail=1', { headers: { traceparent: `00-${failTrace}-${CLIENT_SPAN}-00` } });
    expect(failed.status).toBe(500);
    const spans = await eventually(() => trace(t, failTrace));
    const invoke = one(spans, 'invoke traced-back');
    expect(invoke.status).toBe('error');
    const summary = (await (await apiFetch(t, `/v1/traces?traceId=${failTrace}`)).json()) as { items: { kept: string; error: boolean; status: number }[] };
    expect(summary.items[0]).toMatchObject({ kept: 'error', error: true, status: 500 });
    expect((await apiFetch(t, `/v1/traces/${okTrace}`)).status).toBe(404);
    // The store answers searches by status.
    const errors = (await (await apiFetch(t, '/v1/traces?status=error')).json()) as { items: { traceId: string }[] };
    expect(errors.items.map((i) => i.traceId)).toContain(failTrace);
    // Exported: only sampled traces. Wait for the next batch to be sure nothing else comes.
    await new Promise((r) => setTimeout(r, 500));
    expect(otlpSpans(otlp.got).some((s) => s.traceId === failTrace || s.traceId === okTrace)).toBe(false);
    // --trace-sample 0: a request with no caller trace is not sampled (and this one is fast and fine).
    const before = otlp.got.length;
    expect((await http(t.gatewayPort, 'traced-back.localhost', '/')).text).toMatch(/^back 00-[0-9a-f]{32}-[0-9a-f]{16}-00/);
    await new Promise((r) => setTimeout(r, 400));
    expect(otlp.got.length).toBe(before);
  });

  it('refuses bad queries with a 400 that names the parameter', async () => {
    const r = await apiFetch(t, '/v1/traces?status=teapot');
    expect(r.status).toBe(400);
    expect(await r.text()).toContain('status must be error, ok or an HTTP status code');
    expect((await apiFetch(t, '/v1/traces?minMs=soon')).status).toBe(400);
    expect((await apiFetch(t, '/v1/traces?limit=0')).status).toBe(400);
  });
});

describe('spans from functions', () => {
  it('drops malformed spans a function posts, and keeps running', async () => {
    const d = await tide(['deploy', join(FIXTURES, 'functions', 'span-spammer.ts')], { dataDir: t.dataDir });
    expect(d.code, d.stderr).toBe(0);
    expect((await http(t.gatewayPort, 'span-spammer.localhost', '/')).text).toBe('posted\n');
    await new Promise((r) => setTimeout(r, 200));
    // Still up, and the store still answers; the well-formed one (no attributes) was taken with none.
    expect((await http(t.gatewayPort, 'traced-back.localhost', '/')).status).toBe(200);
    expect((await apiFetch(t, '/v1/traces')).status).toBe(200);
    expect((await apiFetch(t, `/v1/traces/${'f'.repeat(32)}`)).status).toBe(404);
    const taken = (await (await apiFetch(t, `/v1/traces/${'e'.repeat(32)}`)).json()) as { spans: Span[] };
    expect(taken.spans[0]?.attributes).toEqual({});
  });
});

describe('cold start', () => {
  it("shows the activator's wait and the instance start it waited for", async () => {
    const d = await tide(['deploy', join(FIXTURES, 'functions', 'traced-back.ts'), '--name', 'coldone', '--initial-scale', '0'], { dataDir: t.dataDir });
    expect(d.code, d.stderr).toBe(0);
    const id = '33333333333333333333333333333333';
    const r = await http(t.gatewayPort, 'coldone.localhost', '/', { headers: { traceparent: `00-${id}-${CLIENT_SPAN}-01` } });
    expect(r.status).toBe(200);
    const spans = await eventually(() => trace(t, id));
    const root = one(spans, 'GET coldone');
    const wait = one(spans, 'activator wait');
    const cold = one(spans, 'cold start worker');
    const invoke = one(spans, 'invoke coldone');
    expect(wait.parentSpanId).toBe(root.spanId);
    expect(cold.parentSpanId).toBe(wait.spanId);
    expect(invoke.parentSpanId).toBe(root.spanId);
    expect(wait.attributes['faas.coldstart']).toBe(true);
    expect(invoke.attributes['faas.coldstart']).toBe(true);
    expect(String(cold.attributes['tide.instance'])).toMatch(/^coldone-00001-[0-9a-f]{6}$/);
    expect(cold.durationMs).toBeGreaterThan(0);
  });
});

describe('other settings', () => {
  it('exports OTLP/protobuf by default', async () => {
    const rx = await receiver();
    const p = await startTide({ env: { OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `${rx.url}/v1/traces`, OTEL_BSP_SCHEDULE_DELAY: '100' } });
    try {
      const d = await tide(['deploy', join(FIXTURES, 'functions', 'traced-back.ts')], { dataDir: p.dataDir });
      expect(d.code, d.stderr).toBe(0);
      const r = await http(p.gatewayPort, 'traced-back.localhost', '/', { headers: { traceparent: `00-${TID}-${CLIENT_SPAN}-01` } });
      expect(r.status).toBe(200);
      // The trace id is in the protobuf body as its 16 raw bytes.
      const got = await eventually(() => rx.got.find((g) => g.body.includes(Buffer.from(TID, 'hex'))));
      expect(got.contentType).toBe('application/x-protobuf');
      expect(got.body.includes(Buffer.from('traced-back'))).toBe(true);
    } finally {
      await stopTide(p);
      await new Promise((r) => rx.server.close(r));
    }
  }, 60_000);

  it('with --no-tracing adds no trace headers and keeps no traces', async () => {
    const p = await startTide({ args: ['--no-tracing'] });
    try {
      const d = await tide(['deploy', join(FIXTURES, 'functions', 'traced-back.ts')], { dataDir: p.dataDir });
      expect(d.code, d.stderr).toBe(0);
      expect((await http(p.gatewayPort, 'traced-back.localhost', '/')).text).toBe('back untraced\n');
      // A caller's traceparent is passed on untouched.
      expect((await http(p.gatewayPort, 'traced-back.localhost', '/', { headers: { traceparent: `00-${TID}-${CLIENT_SPAN}-01` } })).text).toBe(
        `back 00-${TID}-${CLIENT_SPAN}-01\n`,
      );
      const r = await apiFetch(p, '/v1/traces');
      expect(r.status).toBe(404);
      expect(await r.text()).toContain('tracing is off');
    } finally {
      await stopTide(p);
    }
  }, 60_000);

  it('refuses an OTEL setting it cannot honour, naming it', async () => {
    await expect(startTide({ env: { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:1', OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' } })).rejects.toThrow(
      /OTEL_EXPORTER_OTLP_PROTOCOL=grpc is not supported/,
    );
  }, 30_000);
});
