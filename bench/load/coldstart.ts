/**
 * Benchmark `coldstart`: time from zero instances to the first response, through `tide up`
 * (gateway → activator → autoscaler → node agent → worker sandbox), measured by a client on
 * an open keep-alive connection, so the number is Tide's and not TCP's.
 *
 * Side by side in one run, cycles interleaved:
 *  - worker: Tide as shipped (warm generic threads: a cold start loads the function into one);
 *  - worker_no_warm_pool: the same Tide with `--warm-threads 0` (a cold start starts a thread);
 *  - fresh_thread: the floor of the second one, measured here: `new Worker` to its first reply;
 *  - warm_request: the same request once the instance is up (the path without the cold start);
 *  - container: the same function with `--sandbox container` in the first Tide (a pre-started
 *    container is given the function), container_no_warm_pool in the second (`--warm-containers
 *    0`: runc create, runc start, Node's start, then the function).
 * Between cycles each function scales back to zero by itself (6 s stable window, no grace).
 *
 * JSON: worker.p50_ms, worker.p99_ms, container.p50_ms, container.p99_ms (null until the
 * container sandbox exists), the other series, and ratios.
 */
import { Agent, request } from 'node:http';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { knobs, printRows, ROOT, versions, writeReport } from '../lib/harness.ts';
import { startTideUp, type TideUp } from '../lib/tide.ts';

const N = Number(process.env.COLD_N ?? 25);

interface Stats {
  n: number;
  p50_ms: number;
  p90_ms: number;
  p99_ms: number;
  min_ms: number;
  max_ms: number;
  samples_ms: number[];
}

function stats(xs: number[]): Stats {
  const s = [...xs].sort((a, b) => a - b);
  const at = (q: number) => s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))] ?? Number.NaN;
  const r = (x: number) => Math.round(x * 100) / 100;
  return {
    n: s.length,
    p50_ms: r(at(0.5)),
    p90_ms: r(at(0.9)),
    p99_ms: r(at(0.99)),
    min_ms: r(s[0] ?? Number.NaN),
    max_ms: r(s.at(-1) ?? Number.NaN),
    samples_ms: xs.map(r),
  };
}

/** One GET on `agent`'s connection; resolves with the status and the ms to the last body byte. */
function timedGet(agent: Agent, port: number, host: string): Promise<{ status: number; ms: number; body: string }> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const req = request({ host: '127.0.0.1', port, path: '/', headers: { host }, agent }, (res) => {
      let body = '';
      res.on('data', (d) => {
        body += d;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, ms: performance.now() - t0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

async function untilZero(t: TideUp, fn: string): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    const v = await t.api<{ instances: unknown[] }>(`/v1/functions/${fn}/instances`);
    if (v.instances.length === 0) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${fn} did not scale to zero within 60 s`);
}

/** A cold request: opens the connection first (a 404 for an unknown host), then asks the function. */
async function cold(t: TideUp, agent: Agent, fn = 'hello'): Promise<{ cold: number; warm: number }> {
  await timedGet(agent, t.port, 'nobody.localhost');
  const c = await timedGet(agent, t.port, `${fn}.localhost`);
  if (c.status !== 200 || !c.body.startsWith('Hello from Tide')) throw new Error(`cold request to ${fn} answered ${c.status}: ${c.body}`);
  const w = await timedGet(agent, t.port, `${fn}.localhost`);
  return { cold: c.ms, warm: w.ms };
}

function freshThread(): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const w = new Worker("require('node:worker_threads').parentPort.postMessage(1)", { eval: true });
    w.once('message', () => {
      resolve(performance.now() - t0);
      void w.terminate();
    });
    w.once('error', reject);
  });
}

export async function run({ jsonFile }: { jsonFile?: string }): Promise<void> {
  const k = knobs();
  const hello = join(ROOT, 'examples/hello.ts');
  const deployFlags = [
    'deploy',
    hello,
    '--name',
    'hello',
    '--initial-scale',
    '0',
    '--scale-to-zero-grace',
    '0s',
    '--scaling',
    'stableWindowMs=6000',
    '--scaling',
    'tickMs=250',
  ];
  const containerFlags = deployFlags.map((f) => (f === 'hello' ? 'chello' : f)).concat(['--sandbox', 'container']);
  let warm: TideUp | undefined;
  let bare: TideUp | undefined;
  try {
    warm = await startTideUp(k);
    bare = await startTideUp(k, ['--warm-threads', '0', '--warm-containers', '0']);
    await warm.cli(deployFlags);
    await bare.cli(deployFlags);
    await warm.cli(containerFlags);
    await bare.cli(containerFlags);
    process.stdout.write(`coldstart: ${N} cycles per series, pinning ${k.pin ? 'tide on cpu1, client on cpu0' : 'off'}\n`);
    const series = {
      worker: [] as number[],
      worker_no_warm_pool: [] as number[],
      fresh_thread: [] as number[],
      warm_request: [] as number[],
      container: [] as number[],
      container_no_warm_pool: [] as number[],
      container_warm_request: [] as number[],
    };
    const agents = [new Agent({ keepAlive: true, maxSockets: 1 }), new Agent({ keepAlive: true, maxSockets: 1 })];
    for (let i = 0; i < N; i++) {
      await Promise.all([untilZero(warm, 'hello'), untilZero(bare, 'hello'), untilZero(warm, 'chello'), untilZero(bare, 'chello')]);
      await new Promise((r) => setTimeout(r, 300)); // the warm pools refill after each start
      const a = await cold(warm, agents[0] as Agent);
      const b = await cold(bare, agents[1] as Agent);
      await new Promise((r) => setTimeout(r, 300));
      const c = await cold(warm, agents[0] as Agent, 'chello');
      const d = await cold(bare, agents[1] as Agent, 'chello');
      series.worker.push(a.cold);
      series.warm_request.push(a.warm);
      series.worker_no_warm_pool.push(b.cold);
      series.container.push(c.cold);
      series.container_warm_request.push(c.warm);
      series.container_no_warm_pool.push(d.cold);
      series.fresh_thread.push(await freshThread());
      process.stdout.write(
        `  cycle ${i + 1}: worker ${a.cold.toFixed(2)} ms (no warm pool ${b.cold.toFixed(2)}), container ${c.cold.toFixed(2)} ms (no warm pool ${d.cold.toFixed(2)}), fresh thread ${series.fresh_thread.at(-1)?.toFixed(2)} ms, warm request ${a.warm.toFixed(2)} / ${c.warm.toFixed(2)} ms\n`,
      );
    }
    for (const a of agents) a.destroy();
    const results = Object.fromEntries(Object.entries(series).map(([name, xs]) => [name, stats(xs)])) as Record<keyof typeof series, Stats>;
    printRows(
      'first response after idle (zero instances), ms',
      ['series', 'p50', 'p90', 'p99', 'min', 'max', 'n'],
      Object.entries(results).map(([name, s]) => [name, ...[s.p50_ms, s.p90_ms, s.p99_ms, s.min_ms, s.max_ms, s.n].map(String)]),
    );
    const ratios = {
      worker_vs_no_warm_pool_p50: Math.round((results.worker.p50_ms / results.worker_no_warm_pool.p50_ms) * 1000) / 1000,
      worker_vs_fresh_thread_p50: Math.round((results.worker.p50_ms / results.fresh_thread.p50_ms) * 1000) / 1000,
      container_vs_no_warm_pool_p50: Math.round((results.container.p50_ms / results.container_no_warm_pool.p50_ms) * 1000) / 1000,
    };
    process.stdout.write(
      `\nratios: ${JSON.stringify(ratios)}\ntargets: worker p50 ≤ 5 ms → ${results.worker.p50_ms <= 5 ? 'met' : 'missed'}; container p50 ≤ 60 ms → ${results.container.p50_ms <= 60 ? 'met' : 'missed'}\n`,
    );
    writeReport(jsonFile, {
      benchmark: 'coldstart',
      worker: results.worker,
      worker_no_warm_pool: results.worker_no_warm_pool,
      fresh_thread: results.fresh_thread,
      warm_request: results.warm_request,
      container: results.container,
      container_no_warm_pool: results.container_no_warm_pool,
      container_warm_request: results.container_warm_request,
      ratios,
      targets: { worker_p50_ms: 5, container_p50_ms: 60 },
      versions: versions(),
      pinning: k.pin ? { tide: 'cpu1', client: 'cpu0' } : 'none',
      date: new Date().toISOString(),
    });
  } finally {
    await warm?.stop();
    await bare?.stop();
  }
}
