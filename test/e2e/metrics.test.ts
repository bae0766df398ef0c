/**
 * Prometheus metrics of a real `tide up`: the series a person looks for after real traffic,
 * checked by `promtool check metrics` (Debian's prometheus package), and scraped by a real
 * Prometheus server over the API's TLS with a bearer token.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startProxy, startUpstream, twoClusterConfig } from '../helpers/proxy.ts';
import { apiFetch, eventually, FIXTURES, freePort, http, startTide, stopProcess, stopTide, type TideProcess, tempDir, tide } from '../helpers/tide.ts';

let t: TideProcess;

async function metrics(): Promise<string> {
  const r = await apiFetch(t, '/metrics');
  expect(r.status).toBe(200);
  expect(r.headers.get('content-type')).toContain('text/plain; version=0.0.4');
  return r.text();
}

function value(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

beforeAll(async () => {
  t = await startTide();
  const r = await tide(['deploy', join(FIXTURES, 'functions', 'counter.ts'), '--name', 'm'], { dataDir: t.dataDir });
  expect(r.code, r.stderr).toBe(0);
  for (let i = 0; i < 3; i++) expect((await http(t.gatewayPort, 'm.localhost', '/')).status).toBe(200);
  expect((await http(t.gatewayPort, 'm.localhost', '/x', { method: 'POST', body: 'b' })).status).toBe(200);
  expect((await http(t.gatewayPort, 'nosuch.localhost', '/')).status).toBe(404);
}, 60_000);

afterAll(async () => {
  await stopTide(t);
});

describe('/metrics', () => {
  it('counts requests by function, revision, route, method and code, with durations, instances and cold starts', async () => {
    const m = await metrics();
    const fn = 'function="m",revision="m-00001"';
    expect(value(m, `tide_function_requests_total{${fn},route="default",method="GET",code="200"}`)).toBe(3);
    expect(value(m, `tide_function_requests_total{${fn},route="default",method="POST",code="200"}`)).toBe(1);
    expect(value(m, `tide_function_request_duration_seconds_count{${fn}}`)).toBe(4);
    expect(value(m, `tide_function_request_duration_seconds_bucket{${fn},le="+Inf"}`)).toBe(4);
    expect(value(m, `tide_revision_instances_ready{${fn}}`)).toBe(1);
    expect(value(m, `tide_revision_instances_desired{${fn}}`)).toBe(1);
    expect(value(m, `tide_activator_queue_depth{${fn}}`)).toBe(0);
    expect(value(m, `tide_sandbox_cold_starts_total{${fn},sandbox="worker"}`)).toBe(1);
    expect(value(m, `tide_sandbox_cold_start_duration_seconds_count{${fn},sandbox="worker"}`)).toBe(1);
    expect(value(m, 'tide_proxy_requests_total{virtual_host="*",route="unknown",cluster="",code="404"}')).toBe(1);
    // Without a token: refused like the rest of the API.
    expect((await apiFetch(t, '/metrics', { token: false })).status).toBe(401);
  });

  it('is served by `tide proxy` too (its admin listener), and passes promtool there', async () => {
    const a = await startUpstream('a');
    const b = await startUpstream('b');
    const p = await startProxy(twoClusterConfig(a, b, 'a'));
    try {
      for (let i = 0; i < 3; i++) expect((await http(p.port, 'anything.test', '/')).status).toBe(200);
      const text = await (await fetch(`http://127.0.0.1:${p.ports.admin}/metrics`)).text();
      expect(value(text, 'tide_proxy_requests_total{virtual_host="all",route="main",cluster="a",code="200"}')).toBe(3);
      const r = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8', timeout: 15_000 });
      expect(r.status, `${r.stdout}${r.stderr}`).toBe(0);
    } finally {
      await p.close();
      await a.close();
      await b.close();
    }
  });

  it('reports the memory and CPU of each instance: a worker thread, and a runc container', async () => {
    const r = await tide(['deploy', join(FIXTURES, 'functions', 'counter.ts'), '--name', 'boxed', '--sandbox', 'container', '--min-scale', '1'], {
      dataDir: t.dataDir,
    });
    expect(r.code, r.stderr).toBe(0);
    for (let i = 0; i < 20; i++) expect((await http(t.gatewayPort, 'boxed.localhost', '/')).status).toBe(200);
    const m = await metrics();
    const series = (name: string, fn: string, sandbox: string) =>
      m
        .split('\n')
        .filter((l) => l.startsWith(`${name}{function="${fn}",`) && l.includes(`sandbox="${sandbox}"`))
        .map((l) => Number(l.slice(l.lastIndexOf(' ') + 1)));
    const [wMem] = series('tide_sandbox_memory_bytes', 'm', 'worker');
    const [wCpu] = series('tide_sandbox_cpu_seconds_total', 'm', 'worker');
    // A worker thread's heap is megabytes; it has used some CPU.
    expect(wMem).toBeGreaterThan(1024 * 1024);
    expect(wMem).toBeLessThan(512 * 1024 * 1024);
    expect(wCpu).toBeGreaterThan(0);
    const [cMem] = series('tide_sandbox_memory_bytes', 'boxed', 'container');
    const [cCpu] = series('tide_sandbox_cpu_seconds_total', 'boxed', 'container');
    // A container's cgroup holds Node itself: tens of megabytes, under its 128 MiB limit.
    expect(cMem).toBeGreaterThan(4 * 1024 * 1024);
    expect(cMem).toBeLessThanOrEqual(128 * 1024 * 1024);
    expect(cCpu).toBeGreaterThan(0);
  });

  it('passes promtool check metrics', async () => {
    const r = spawnSync('promtool', ['check', 'metrics'], { input: await metrics(), encoding: 'utf8', timeout: 15_000 });
    expect(r.stdout + r.stderr).toBe('');
    expect(r.status).toBe(0);
    // And promtool does catch a broken exposition (the check is not a no-op).
    const bad = spawnSync('promtool', ['check', 'metrics'], { input: 'tide_x{a="1"} 1\n', encoding: 'utf8', timeout: 15_000 });
    expect(bad.status).not.toBe(0);
  });

  it('is scraped by a real Prometheus server (HTTPS with the CA bundle, bearer token)', async () => {
    const dir = tempDir('tide-prom-');
    const port = await freePort();
    const api = new URL(t.apiUrl);
    writeFileSync(
      join(dir, 'prometheus.yml'),
      `global: { scrape_interval: 1s, scrape_timeout: 1s }
scrape_configs:
  - job_name: tide
    scheme: https
    metrics_path: /metrics
    authorization: { credentials: ${t.token} }
    tls_config: { ca_file: ${join(t.dataDir, 'ca', 'bundle.pem')} }
    static_configs: [{ targets: ['${api.host}'] }]
`,
    );
    const child: ChildProcess = spawn(
      'prometheus',
      [`--config.file=${join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${port}`],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let log = '';
    child.stderr?.on('data', (d) => {
      log += d;
    });
    const exited = new Promise<number | string>((r) => child.once('exit', (code, sig) => r(code ?? sig ?? -1)));
    try {
      const q = encodeURIComponent('tide_function_requests_total{function="m",method="GET",code="200"}');
      const got = await eventually(
        async () => {
          const r = await fetch(`http://127.0.0.1:${port}/api/v1/query?query=${q}`);
          const body = (await r.json()) as { data?: { result?: { value: [number, string] }[] } };
          return body.data?.result?.[0]?.value[1];
        },
        30_000,
        250,
      ).catch((err) => {
        throw new Error(`${String(err)}\nprometheus log:\n${log.slice(-3000)}`);
      });
      expect(Number(got)).toBe(3);
      const up = (await (await fetch(`http://127.0.0.1:${port}/api/v1/query?query=up`)).json()) as { data: { result: { value: [number, string] }[] } };
      expect(up.data.result[0]?.value[1]).toBe('1');
    } finally {
      await stopProcess({ child, pid: child.pid as number, exited }, 'SIGTERM', 5000);
    }
  });
});
