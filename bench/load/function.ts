/**
 * Benchmark `function`: the hello function served through `tide up` (gateway → worker-thread
 * sandbox) beside a plain node:http server running the same handler in-process, in one run,
 * rounds interleaved. Reports medians and ratios.tide_vs_node (requests/s). The same function in
 * the container sandbox (`tide-container`, one instance kept) is measured in the same run: the
 * per-request cost of a container against a worker thread.
 *
 * Placement when pinning (default on 2+ cores): both servers on cpu1, autocannon on cpu0, so
 * each server gets the same one core, whatever threads it uses on it.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { autocannon, freePort, getText, type Knobs, knobs, pinned, printTable, ROOT, type Series, summarize, versions, writeReport } from '../lib/harness.ts';
import { stop, waitForLine } from '../lib/tide.ts';

export async function run({ jsonFile }: { jsonFile?: string }): Promise<void> {
  const k: Knobs = knobs();
  const hello = join(ROOT, 'examples/hello.ts');
  const dataDir = mkdtempSync(join(tmpdir(), 'tide-bench-'));
  const tidePort = await freePort();
  const apiPort = await freePort();
  const nodePort = await freePort();
  let tide: ChildProcess | undefined;
  let node: ChildProcess | undefined;
  try {
    const [tc, ta] = pinned(k, 1, process.execPath, [
      join(ROOT, 'bin/tide.js'),
      'up',
      '--data-dir',
      dataDir,
      '--port',
      String(tidePort),
      '--api-port',
      String(apiPort),
      '--mesh-port',
      '0',
      '--deploy',
      hello,
      '--log-level',
      'warn',
    ]);
    tide = spawn(tc, ta, { stdio: ['ignore', 'pipe', 'pipe'], cwd: ROOT });
    await waitForLine(tide, 'Press Ctrl+C to stop.', 30_000);
    execFileSync(
      process.execPath,
      [join(ROOT, 'bin/tide.js'), 'deploy', hello, '--name', 'chello', '--sandbox', 'container', '--min-scale', '1', '--data-dir', dataDir],
      {
        cwd: ROOT,
        stdio: 'ignore',
      },
    );
    const [nc, na] = pinned(k, 1, process.execPath, [join(ROOT, 'bench/lib/node-server.ts'), hello, String(nodePort)]);
    node = spawn(nc, na, { stdio: ['ignore', 'pipe', 'pipe'] });
    await waitForLine(node, 'ready', 10_000);

    const targets = [
      { name: 'tide', url: `http://127.0.0.1:${tidePort}/`, headers: { host: 'hello.localhost' } },
      { name: 'node', url: `http://127.0.0.1:${nodePort}/`, headers: { host: 'hello.localhost' } },
      { name: 'tide-container', url: `http://127.0.0.1:${tidePort}/`, headers: { host: 'chello.localhost' } },
    ];
    for (const t of targets) {
      const body = await getText(t.url, t.headers.host);
      if (!body.startsWith('Hello from Tide')) throw new Error(`${t.name} did not serve hello (got ${JSON.stringify(body)})`);
    }
    process.stdout.write(
      `function: ${k.rounds} rounds × ${k.durationS}s, ${k.connections} connections, warm-up ${k.warmupS}s, pinning ${k.pin ? 'servers cpu1, load cpu0' : 'off'}\n`,
    );
    for (const t of targets) await autocannon(k, t.url, t.headers, k.warmupS);
    const series: Series[] = targets.map((t) => ({ name: t.name, rounds: [] }));
    for (let round = 0; round < k.rounds; round++) {
      for (const [i, t] of targets.entries()) {
        const r = await autocannon(k, t.url, t.headers, k.durationS);
        series[i]?.rounds.push(r);
        process.stdout.write(
          `  round ${round + 1} ${t.name}: ${Math.round(r.rps)} req/s, p50 ${r.p50_ms} ms, p99 ${r.p99_ms} ms, errors ${r.errors}, non-2xx ${r.non2xx}\n`,
        );
      }
    }
    const results = series.map(summarize);
    printTable('hello function: tide up (gateway + worker sandbox; + container sandbox) vs plain node:http, same handler', results);
    const [tideR, nodeR, containerR] = results;
    const ratios = {
      container_vs_worker: tideR && containerR ? Math.round((containerR.rps / tideR.rps) * 1000) / 1000 : null,
      container_overhead_mean_ms: tideR && containerR ? Math.round((containerR.mean_ms - tideR.mean_ms) * 100) / 100 : null,
      tide_vs_node: tideR && nodeR ? Math.round((tideR.rps / nodeR.rps) * 1000) / 1000 : null,
      p50_tide_vs_node: tideR && nodeR && nodeR.p50_ms > 0 ? Math.round((tideR.p50_ms / nodeR.p50_ms) * 100) / 100 : null,
    };
    process.stdout.write(
      `\nratios: tide_vs_node (req/s) = ${ratios.tide_vs_node}; container_vs_worker (req/s) = ${ratios.container_vs_worker}, container overhead (mean latency) ${ratios.container_overhead_mean_ms} ms\n`,
    );
    const pkg = (name: string) => (JSON.parse(readFileSync(join(ROOT, 'node_modules', name, 'package.json'), 'utf8')) as { version: string }).version;
    writeReport(jsonFile, {
      benchmark: 'function',
      results,
      ratios,
      versions: versions({
        piscina: pkg('piscina'),
        autocannon: JSON.parse(readFileSync(join(ROOT, 'bench/node_modules/autocannon/package.json'), 'utf8')).version,
      }),
      pinning: k.pin ? { servers: 'cpu1', load: 'cpu0' } : 'none',
      knobs: k,
      date: new Date().toISOString(),
    });
  } finally {
    await stop(tide);
    await stop(node);
  }
}
