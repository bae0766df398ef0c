/**
 * Benchmark `proxy`: one small node:http upstream (`hello, world\n`) reached directly and through
 * four proxies, `tide proxy`, nginx, haproxy and http-proxy, measured with wrk in one run: a
 * warm-up per target, then rounds interleaved (every target once per round). Reports medians of
 * req/s, p50/p90/p99 and the proxy's CPU µs per request (utime + stime from /proc/PID/stat around
 * each wrk run ÷ requests), and ratios of Tide to each peer.
 *
 * Placement when pinning (default on 2+ cores), as in peer-measurements section B: the proxy
 * alone on cpu1, wrk and the upstream together on cpu0. A target that fails to start, to serve
 * hello or to stay up is reported as failed with its error; the other targets are still measured.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { get } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  BENCH_DIR,
  freePort,
  type Knobs,
  knobs,
  type LoadResult,
  median,
  pinned,
  printRows,
  ROOT,
  type Summary,
  summarize,
  versions,
  writeReport,
} from '../lib/harness.ts';
import { ensureTools, type ProxyPorts, type Tool, toolVersions, writeHaproxyCfg, writeNginxConf, writeTideProxyYaml } from '../lib/peers.ts';
import { cpuSeconds, exited, isInterrupted, type Server, startServer, stop, stopAll, stopOnSignals, waitForPort } from '../lib/procs.ts';
import { wrk } from '../lib/wrk.ts';

const HELLO = 'hello, world\n';
const READY_MS = 15_000;

interface Measured extends LoadResult {
  cpu_us_per_req: number | null;
}

interface Target {
  name: string;
  url: string;
  /** The proxy process whose CPU is measured; none for `direct`. */
  server?: Server;
  error?: string;
  rounds: Measured[];
}

type Row = (Summary & { cpu_us_per_req: number | null }) | { name: string; failed: true; error: string };

interface Spec {
  name: string;
  start(ports: ProxyPorts): Promise<Server>;
}

const round = (x: number, digits: number) => Math.round(x * 10 ** digits) / 10 ** digits;

function subdir(dir: string, name: string): string {
  const d = join(dir, name);
  mkdirSync(d, { recursive: true });
  return d;
}

/** How each proxy starts, on cpu1 when pinning. */
function specs(k: Knobs, tools: Record<Tool, string>, dir: string): Spec[] {
  return [
    {
      name: 'tide',
      async start(ports) {
        const d = subdir(dir, 'tide');
        const file = writeTideProxyYaml(d, ports, await freePort());
        return startServer('tide proxy', pinned(k, 1, process.execPath, [join(ROOT, 'bin/tide.js'), 'proxy', '-c', file]), join(d, 'out.log'), ROOT);
      },
    },
    {
      name: 'nginx',
      async start(ports) {
        const d = subdir(dir, 'nginx');
        const conf = writeNginxConf(d, ports, k.connections);
        return startServer('nginx', pinned(k, 1, tools.nginx, ['-p', `${d}/`, '-c', conf, '-e', join(d, 'error.log')]), join(d, 'out.log'));
      },
    },
    {
      name: 'haproxy',
      async start(ports) {
        const d = subdir(dir, 'haproxy');
        const cfg = writeHaproxyCfg(d, ports, k.connections);
        return startServer('haproxy', pinned(k, 1, tools.haproxy, ['-f', cfg, '-db']), join(d, 'out.log'));
      },
    },
    {
      name: 'http-proxy',
      async start({ port, upstreamPort }) {
        const script = join(BENCH_DIR, 'lib/http-proxy-server.ts');
        return startServer('http-proxy', pinned(k, 1, process.execPath, [script, String(port), String(upstreamPort)]), join(dir, 'http-proxy.log'));
      },
    },
  ];
}

/** One GET through the target: it must answer 200 with the upstream's body. */
function checkHello(url: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = get(url, { agent: false, timeout: 5000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => {
        body += d;
      });
      res.on('end', () =>
        res.statusCode === 200 && body === HELLO
          ? resolve()
          : reject(new Error(`GET ${url} answered ${res.statusCode} ${JSON.stringify(body.slice(0, 200))}, expected 200 ${JSON.stringify(HELLO)}`)),
      );
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${url}: no answer in 5 s`)));
    req.on('error', reject);
  });
}

async function fail(t: Target, err: unknown): Promise<void> {
  t.error = err instanceof Error ? err.message : String(err);
  if (!isInterrupted()) process.stderr.write(`  ${t.name}: FAILED: ${t.error}\n`);
  if (t.server) await stop(t.server.child);
}

async function startTarget(spec: Spec, upstreamPort: number): Promise<Target> {
  const port = await freePort();
  const t: Target = { name: spec.name, url: `http://127.0.0.1:${port}/`, rounds: [] };
  try {
    t.server = await spec.start({ port, upstreamPort });
    await waitForPort(t.server, port, READY_MS);
    await checkHello(t.url);
  } catch (err) {
    await fail(t, err);
  }
  return t;
}

/** One wrk run, with the proxy's CPU time read just before and after. Throws if the proxy died. */
async function measure(k: Knobs, wrkBin: string, t: Target, durationS: number): Promise<Measured> {
  const pid = t.server?.child.pid;
  const before = pid ? cpuSeconds(pid) : undefined;
  const r = await wrk(k, wrkBin, t.url, durationS).catch((err: unknown) => err as Error);
  const after = pid ? cpuSeconds(pid) : undefined;
  const gone = t.server && exited(t.server);
  if (gone) throw new Error(gone);
  if (r instanceof Error) throw r;
  const cpu = before !== undefined && after !== undefined && r.requests > 0 ? round(((after - before) * 1e6) / r.requests, 1) : null;
  return { ...r, cpu_us_per_req: cpu };
}

async function measureAll(k: Knobs, wrkBin: string, targets: Target[]): Promise<void> {
  const active = () => targets.filter((t) => !t.error);
  for (const t of active()) await measure(k, wrkBin, t, k.warmupS).catch((err) => fail(t, err));
  for (let i = 1; i <= k.rounds; i++) {
    for (const t of active()) {
      try {
        const r = await measure(k, wrkBin, t, k.durationS);
        t.rounds.push(r);
        process.stdout.write(
          `  round ${i} ${t.name}: ${Math.round(r.rps)} req/s, p50 ${r.p50_ms} ms, p99 ${r.p99_ms} ms, cpu ${r.cpu_us_per_req ?? '–'} µs/req, errors ${r.errors}\n`,
        );
      } catch (err) {
        await fail(t, err);
      }
    }
  }
}

function summarizeTarget(t: Target): Row {
  if (t.error || t.rounds.length === 0) return { name: t.name, failed: true, error: t.error ?? 'no rounds measured' };
  const cpus = t.rounds.flatMap((r) => (r.cpu_us_per_req === null ? [] : [r.cpu_us_per_req]));
  const s = summarize({ name: t.name, rounds: t.rounds });
  const ms = { p50_ms: round(s.p50_ms, 3), p90_ms: round(s.p90_ms, 3), p99_ms: round(s.p99_ms, 3) };
  return { ...s, ...ms, cpu_us_per_req: cpus.length > 0 ? round(median(cpus), 1) : null };
}

function oneLine(text: string, max: number): string {
  const line = text.replace(/\s*\n\s*/g, ' ').trim();
  return line.length > max ? `${line.slice(0, max - 1)}…` : line;
}

function printResults(rows: Row[]): void {
  const headers = ['name', 'req/s', 'p50 ms', 'p90 ms', 'p99 ms', 'CPU µs/req', 'errors', 'runs (req/s)'];
  const cells = rows.map((r) =>
    'failed' in r
      ? [r.name, 'FAILED', '–', '–', '–', '–', '–', oneLine(r.error, 120)]
      : [r.name, String(r.rps), String(r.p50_ms), String(r.p90_ms), String(r.p99_ms), String(r.cpu_us_per_req ?? '–'), String(r.errors), r.runs_rps.join(', ')],
  );
  printRows('hello upstream: direct and through tide proxy, nginx, haproxy, http-proxy (wrk)', headers, cells);
}

const GOALS: Record<string, [string, (x: number) => boolean]> = {
  tide_vs_nginx: ['≥ 0.8', (x) => x >= 0.8],
  tide_vs_http_proxy: ['≥ 2.5', (x) => x >= 2.5],
  p99_tide_vs_nginx: ['≤ 1.5', (x) => x <= 1.5],
};

function ratiosOf(rows: Row[]): Record<string, number | null> {
  const ok = (name: string) => {
    const r = rows.find((x) => x.name === name);
    return r && !('failed' in r) ? r : undefined;
  };
  const ratio = (a: number | undefined, b: number | undefined, digits: number) => (a !== undefined && b ? round(a / b, digits) : null);
  const tide = ok('tide');
  return {
    tide_vs_nginx: ratio(tide?.rps, ok('nginx')?.rps, 3),
    tide_vs_haproxy: ratio(tide?.rps, ok('haproxy')?.rps, 3),
    tide_vs_http_proxy: ratio(tide?.rps, ok('http-proxy')?.rps, 3),
    p99_tide_vs_nginx: ratio(tide?.p99_ms, ok('nginx')?.p99_ms, 2),
    tide_vs_direct: ratio(tide?.rps, ok('direct')?.rps, 3),
  };
}

function printRatios(ratios: Record<string, number | null>): void {
  const lines = Object.entries(ratios).map(([name, x]) => {
    const goal = GOALS[name];
    const verdict = goal && x !== null ? ` (target ${goal[0]}: ${goal[1](x) ? 'met' : 'missed'})` : goal ? ` (target ${goal[0]})` : '';
    return `  ${name} = ${x ?? 'n/a'}${verdict}`;
  });
  process.stdout.write(`\nratios (Tide ÷ peer: req/s; p99_*: p99 latency):\n${lines.join('\n')}\n`);
}

export async function run({ jsonFile }: { jsonFile?: string }): Promise<void> {
  const k: Knobs = knobs();
  const tools = ensureTools();
  const dir = mkdtempSync(join(tmpdir(), 'tide-bench-proxy-'));
  const removeDir = () => rmSync(dir, { recursive: true, force: true });
  const undoSignals = stopOnSignals(removeDir);
  try {
    const upstreamPort = await freePort();
    const upstream = startServer(
      'upstream',
      pinned(k, 0, process.execPath, [join(BENCH_DIR, 'lib/hello-upstream.ts'), String(upstreamPort)]),
      join(dir, 'upstream.log'),
    );
    await waitForPort(upstream, upstreamPort, READY_MS);
    await checkHello(`http://127.0.0.1:${upstreamPort}/`);
    process.stdout.write(
      `proxy: ${k.rounds} rounds × ${k.durationS}s, ${k.connections} connections, warm-up ${k.warmupS}s, pinning ${k.pin ? 'proxy cpu1, wrk + upstream cpu0' : 'off'}\n`,
    );
    const targets: Target[] = [{ name: 'direct', url: `http://127.0.0.1:${upstreamPort}/`, rounds: [] }];
    for (const spec of specs(k, tools, dir)) targets.push(await startTarget(spec, upstreamPort));
    await measureAll(k, tools.wrk, targets);
    const upstreamGone = exited(upstream);
    if (upstreamGone) throw new Error(`the upstream died during the run: ${upstreamGone}`);

    const results = targets.map(summarizeTarget);
    printResults(results);
    const ratios = ratiosOf(results);
    printRatios(ratios);
    const httpProxy = (JSON.parse(readFileSync(join(BENCH_DIR, 'node_modules/http-proxy/package.json'), 'utf8')) as { version: string }).version;
    writeReport(jsonFile, {
      benchmark: 'proxy',
      results,
      ratios,
      versions: versions({ ...toolVersions(tools), 'http-proxy': httpProxy }),
      pinning: k.pin ? { proxy: 'cpu1', load: 'cpu0', upstream: 'cpu0' } : 'none',
      knobs: k,
      date: new Date().toISOString(),
    });
  } finally {
    await stopAll();
    undoSignals();
    removeDir();
  }
}
