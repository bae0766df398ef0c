/**
 * Benchmark `tracing`: what tracing costs on the hot path, in one run with rounds interleaved.
 * Two groups of three, each with tracing off, sampled at 1% and sampled at 100%:
 *
 *   proxy    `tide proxy` in front of a hello upstream (one server span per request), spans
 *            exported over OTLP/HTTP (protobuf) to a local receiver;
 *   gateway  `tide up` serving examples/hello.ts (server span + the function's execution span,
 *            the store of recent traces, and the same OTLP export); and a fourth, `tide up`'s
 *            default: every trace sampled into the store, no OTLP endpoint set.
 *
 * Load is wrk. Reports medians of req/s, p50/p99 and the server's CPU µs per request, and
 * each traced variant's req/s as a ratio of the untraced one. How many spans batches reached
 * the receiver is reported too (proof that the 100% runs really exported).
 *
 * Placement when pinning (default on 2+ cores): the server under test and the upstream on
 * cpu1, wrk and the OTLP receiver on cpu0. (With the upstream beside wrk, as in the `proxy`
 * benchmark, cpu0 is the bottleneck at these rates and the proxy idles; the upstream parsing
 * one more header (`traceparent`) then shows as a proxy cost. On cpu1 that share of the
 * tracing cost is counted where it is paid: on the serving side.)
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { get } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BENCH_DIR, freePort, type Knobs, knobs, type LoadResult, median, pinned, printRows, ROOT, summarize, versions, writeReport } from '../lib/harness.ts';
import { ensureTools, writeTideProxyYaml } from '../lib/peers.ts';
import { cpuSeconds, exited, type Server, startServer, stopAll, stopOnSignals, waitForPort } from '../lib/procs.ts';
import { wrk } from '../lib/wrk.ts';

const READY_MS = 30_000;
const round = (x: number, digits: number) => Math.round(x * 10 ** digits) / 10 ** digits;

interface Target {
  name: string;
  group: 'proxy' | 'gateway';
  tracing: 'off' | '1%' | '100%' | '100%, store only';
  url: string;
  headers: Record<string, string>;
  server: Server;
  rounds: (LoadResult & { cpu_us_per_req: number | null })[];
}

function getBody(url: string, host?: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = get(url, { agent: false, timeout: 5000, headers: host ? { host } : {} }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => {
        body += d;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${url}: no answer in 5 s`)));
    req.on('error', reject);
  });
}

async function waitForLog(s: Server, text: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const gone = exited(s);
    if (gone) throw new Error(`${s.name} exited: ${gone}`);
    if (readFileSync(s.log, 'utf8').includes(text)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${s.name} did not print "${text}" in ${timeoutMs} ms`);
}

export async function run({ jsonFile }: { jsonFile?: string }): Promise<void> {
  const k: Knobs = knobs();
  const tools = ensureTools();
  const dir = mkdtempSync(join(tmpdir(), 'tide-bench-tracing-'));
  const undoSignals = stopOnSignals(() => rmSync(dir, { recursive: true, force: true }));
  try {
    const upstreamPort = await freePort();
    const upstream = startServer(
      'upstream',
      pinned(k, 1, process.execPath, [join(BENCH_DIR, 'lib/hello-upstream.ts'), String(upstreamPort)]),
      join(dir, 'upstream.log'),
    );
    const sinkPort = await freePort();
    const sink = startServer('otlp receiver', pinned(k, 0, process.execPath, [join(BENCH_DIR, 'lib/otlp-sink.ts'), String(sinkPort)]), join(dir, 'sink.log'));
    await waitForPort(upstream, upstreamPort, READY_MS);
    await waitForPort(sink, sinkPort, READY_MS);
    const otel = { OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${sinkPort}`, OTEL_BSP_SCHEDULE_DELAY: '1000' };
    const modes = [
      { tracing: 'off' as const, proxyArgs: [], upArgs: ['--no-tracing'], env: {} },
      { tracing: '1%' as const, proxyArgs: ['--trace-sample', '0.01'], upArgs: ['--trace-sample', '0.01'], env: otel },
      { tracing: '100%' as const, proxyArgs: ['--trace-sample', '1'], upArgs: ['--trace-sample', '1'], env: otel },
    ];
    const targets: Target[] = [];
    for (const m of modes) {
      const d = join(dir, `proxy-${m.tracing.replace('%', 'pct')}`);
      mkdirSync(d, { recursive: true });
      const port = await freePort();
      const file = writeTideProxyYaml(d, { port, upstreamPort }, await freePort());
      const server = startServer(
        `tide proxy, tracing ${m.tracing}`,
        pinned(k, 1, process.execPath, [join(ROOT, 'bin/tide.js'), 'proxy', '-c', file, '--log-level', 'warn', ...m.proxyArgs]),
        join(d, 'out.log'),
        ROOT,
        m.env,
      );
      await waitForPort(server, port, READY_MS);
      targets.push({
        name: `proxy, tracing ${m.tracing}`,
        group: 'proxy',
        tracing: m.tracing,
        url: `http://127.0.0.1:${port}/`,
        headers: {},
        server,
        rounds: [],
      });
    }
    // tide up's default: every trace into its store, nothing exported (no OTEL_* set).
    const upModes = [...modes, { tracing: '100%, store only' as const, proxyArgs: [], upArgs: ['--trace-sample', '1'], env: {} }];
    for (const m of upModes) {
      const d = join(dir, `up-${m.tracing.replace('%', 'pct').replace(/[ ,]+/g, '-')}`);
      mkdirSync(d, { recursive: true });
      const port = await freePort();
      const args = ['up', '--data-dir', d, '--port', String(port), '--api-port', '0', '--mesh-port', '0', '--access-log', 'off'];
      const server = startServer(
        `tide up, tracing ${m.tracing}`,
        pinned(k, 1, process.execPath, [join(ROOT, 'bin/tide.js'), ...args, '--deploy', join(ROOT, 'examples/hello.ts'), '--log-level', 'warn', ...m.upArgs]),
        join(d, 'out.log'),
        ROOT,
        m.env,
      );
      await waitForLog(server, 'Press Ctrl+C to stop.', READY_MS);
      targets.push({
        name: `gateway, tracing ${m.tracing}`,
        group: 'gateway',
        tracing: m.tracing,
        url: `http://127.0.0.1:${port}/`,
        // wrk sends its own Host unless given one spelled exactly "Host" (two would be refused: 400).
        headers: { Host: 'hello.localhost' },
        server,
        rounds: [],
      });
    }
    for (const t of targets) {
      const r = await getBody(t.url, t.headers.Host);
      if (r.status !== 200) throw new Error(`${t.name} answered ${r.status}: ${r.body.slice(0, 200)}`);
    }
    process.stdout.write(
      `tracing: ${k.rounds} rounds × ${k.durationS}s, ${k.connections} connections, warm-up ${k.warmupS}s, pinning ${k.pin ? 'server + upstream cpu1, wrk + OTLP receiver cpu0' : 'off'}\n`,
    );
    const measure = async (t: Target, seconds: number) => {
      const pid = t.server.child.pid as number;
      const before = cpuSeconds(pid);
      const r = await wrk(k, tools.wrk, t.url, seconds, t.headers);
      const after = cpuSeconds(pid);
      const gone = exited(t.server);
      if (gone) throw new Error(`${t.name}: ${gone}`);
      return { ...r, cpu_us_per_req: before !== undefined && after !== undefined && r.requests > 0 ? round(((after - before) * 1e6) / r.requests, 1) : null };
    };
    for (const t of targets) await measure(t, k.warmupS);
    for (let i = 1; i <= k.rounds; i++) {
      for (const t of targets) {
        const r = await measure(t, k.durationS);
        t.rounds.push(r);
        process.stdout.write(
          `  round ${i} ${t.name}: ${Math.round(r.rps)} req/s, p50 ${r.p50_ms} ms, p99 ${r.p99_ms} ms, cpu ${r.cpu_us_per_req ?? '–'} µs/req, non-2xx ${r.non2xx}\n`,
        );
      }
    }
    await new Promise((r) => setTimeout(r, 1500)); // the last batches
    const exported = JSON.parse((await getBody(`http://127.0.0.1:${sinkPort}/count`)).body) as { requests: number; bytes: number };

    const results = targets.map((t) => {
      const s = summarize({ name: t.name, rounds: t.rounds });
      const cpus = t.rounds.flatMap((r) => (r.cpu_us_per_req === null ? [] : [r.cpu_us_per_req]));
      return { ...s, group: t.group, tracing: t.tracing, cpu_us_per_req: cpus.length > 0 ? round(median(cpus), 1) : null };
    });
    printRows(
      'tracing cost: tide proxy (hello upstream) and tide up (hello function), tracing off / 1% / 100% (wrk)',
      ['name', 'req/s', 'p50 ms', 'p99 ms', 'CPU µs/req', 'non-2xx', 'runs (req/s)'],
      results.map((r) => [r.name, String(r.rps), String(r.p50_ms), String(r.p99_ms), String(r.cpu_us_per_req ?? '–'), String(r.non2xx), r.runs_rps.join(', ')]),
    );
    const ratios: Record<string, number | null> = {};
    for (const group of ['proxy', 'gateway'] as const) {
      const off = results.find((r) => r.group === group && r.tracing === 'off');
      for (const tr of ['1%', '100%', '100%, store only'] as const) {
        const on = results.find((r) => r.group === group && r.tracing === tr);
        if (!on) continue;
        const key = tr === '1%' ? '1pct' : tr === '100%' ? '100pct' : '100pct_store_only';
        ratios[`${group}_${key}_vs_off`] = off && off.rps > 0 ? round(on.rps / off.rps, 3) : null;
      }
    }
    process.stdout.write(
      `\nratios (req/s traced ÷ req/s untraced):\n${Object.entries(ratios)
        .map(([n, x]) => `  ${n} = ${x ?? 'n/a'}`)
        .join('\n')}\nOTLP receiver: ${exported.requests} export requests, ${exported.bytes} bytes\n`,
    );
    const pkg = (name: string) => (JSON.parse(readFileSync(join(ROOT, 'node_modules', name, 'package.json'), 'utf8')) as { version: string }).version;
    writeReport(jsonFile, {
      benchmark: 'tracing',
      results,
      ratios,
      exported,
      versions: versions({
        '@opentelemetry/sdk-trace': pkg('@opentelemetry/sdk-trace'),
        '@opentelemetry/exporter-trace-otlp-proto': pkg('@opentelemetry/exporter-trace-otlp-proto'),
      }),
      pinning: k.pin ? { server: 'cpu1', load: 'cpu0' } : 'none',
      knobs: k,
      date: new Date().toISOString(),
    });
  } finally {
    await stopAll();
    undoSignals();
    rmSync(dir, { recursive: true, force: true });
  }
}
