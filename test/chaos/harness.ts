/**
 * Chaos under load: a steady probe load on several functions, through a `tide proxy` edge in
 * front of a `tide up`, while one thing at a time goes wrong:
 *
 *   worker-crash    a worker thread dies (its function calls process.exit) → SIGKILL-like
 *   container-kill  a function's runc container is killed (runc kill KILL)  → SIGKILL
 *   control-kill    `tide up` (control, agent and gateway) gets kill -9, and is started again
 *                   on the same data directory and ports → SIGKILL; nothing stored may be lost
 *   proxy-kill      the edge `tide proxy` gets kill -9 and is started again → SIGKILL
 *   rollout         a new revision of a function is deployed                  → graceful
 *   scale-0-N-0     a function at zero instances takes load (0 → N), is scaled to zero, and
 *                   takes load again                                          → graceful
 *
 * For each step it counts probes: graceful steps count a probe good only if its first try
 * answered 2xx (they must be 100%); SIGKILL steps let a probe retry (every 100 ms, for up to
 * `retryForMs`) and must reach 99%. Everything runs on loopback, every loop is bounded, and
 * every process started is stopped by its PID.
 */
import { type ChildProcess, execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { Agent, request } from 'node:http';
import { join, resolve } from 'node:path';
import { apiFetch, FIXTURES, freePort, sleep, spawnTide, startTide, stopProcess, type TideProcess, tempDir, tide } from '../helpers/tide.ts';

export interface ChaosOptions {
  /** Probes (logical requests) each step sends at least. Default 400. */
  perStep?: number;
  /** Concurrent probers. Default 8. */
  concurrency?: number;
  /** How long a SIGKILL step's probe keeps retrying, ms. Default 15000. */
  retryForMs?: number;
  /** Steps to run (default: all). */
  steps?: StepName[];
  log?: (line: string) => void;
}

export type StepName = 'worker-crash' | 'container-kill' | 'control-kill' | 'proxy-kill' | 'rollout' | 'scale-0-N-0';
export const STEPS: StepName[] = ['worker-crash', 'container-kill', 'control-kill', 'proxy-kill', 'rollout', 'scale-0-N-0'];

export interface StepResult {
  step: StepName;
  kind: 'graceful' | 'sigkill';
  probes: number;
  good: number;
  /** Probes that needed more than one try (SIGKILL steps). */
  retried: number;
  successRate: number;
  required: number;
  passed: boolean;
  note: string;
}

const FUNCTIONS = ['w1', 'w2', 'c1', 's1'];

interface Proxy {
  child: ChildProcess;
  pid: number;
  exited: Promise<number | string>;
}

async function startEdge(file: string, port: number): Promise<Proxy> {
  const p = spawnTide(['proxy', '-c', file, '--log-level', 'warn', '--no-watch']);
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    if (p.output().includes(`listening on 127.0.0.1:${port}`)) return p;
    if (p.child.exitCode !== null) throw new Error(`tide proxy exited: ${p.output()}`);
    await sleep(25);
  }
  p.child.kill('SIGKILL');
  throw new Error(`tide proxy did not start: ${p.output()}`);
}

const agent = new Agent({ keepAlive: true, maxSockets: 64 });

/** One GET through the edge; resolves with the status (0 on a connection error). */
function probe(port: number, fn: string, path = '/'): Promise<number> {
  return new Promise((res) => {
    const req = request({ host: '127.0.0.1', port, path, headers: { host: `${fn}.localhost` }, agent, timeout: 10_000 }, (r) => {
      r.resume();
      r.on('end', () => res(r.statusCode ?? 0));
      r.on('error', () => res(0));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => res(0));
    req.end();
  });
}

/**
 * Probes `fns` round robin with `concurrency` loops until at least `count` probes are done and
 * `until` has resolved. Graceful: a probe is good if its one try is 2xx. Otherwise it retries
 * every 100 ms for up to `retryForMs`.
 */
async function probeLoad(
  port: () => number,
  fns: string[],
  count: number,
  concurrency: number,
  retry: number,
  until: Promise<unknown>,
): Promise<{ probes: number; good: number; retried: number }> {
  let done = false;
  void until.finally(() => {
    done = true;
  });
  let probes = 0;
  let good = 0;
  let retried = 0;
  let next = 0;
  // Bounded: at most 50× the count, and the action must end within the harness's limits.
  const cap = count * 50;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while ((probes < count || !done) && probes < cap) {
        const fn = fns[next++ % fns.length] as string;
        probes++;
        const started = Date.now();
        let status = await probe(port(), fn);
        let tries = 1;
        while ((status < 200 || status >= 300) && retry > 0 && Date.now() - started < retry) {
          await sleep(100);
          status = await probe(port(), fn);
          tries++;
        }
        if (status >= 200 && status < 300) good++;
        if (tries > 1) retried++;
        // A steady load, not a flood: a few hundred probes a second.
        await sleep(5);
      }
    }),
  );
  return { probes, good, retried };
}

function containersOf(dataDir: string): string[] {
  const root = join('/run/tide', createHash('sha256').update(resolve(dataDir)).digest('hex').slice(0, 10), 'runc');
  const out = execFileSync('runc', ['--root', root, 'list', '--format', 'json'], { encoding: 'utf8' });
  const list = (JSON.parse(out || '[]') as { id: string; status: string }[] | null) ?? [];
  return list.filter((c) => c.status === 'running').map((c) => `${root}\n${c.id}`);
}

/** How many times the agent replaced an instance of `fn` (its "instance replaced" log lines). */
function replacements(dataDir: string, fn: string): number {
  let text = '';
  try {
    text = readFileSync(join(dataDir, 'logs', `${fn}.log`), 'utf8');
  } catch {
    return 0;
  }
  return text.split('\n').filter((l) => l.includes('instance replaced')).length;
}

/** Cold starts of `fn` so far, from /metrics. */
async function coldStarts(t: TideProcess, fn: string): Promise<number> {
  const text = await (await apiFetch(t, '/metrics')).text();
  let n = 0;
  for (const line of text.split('\n'))
    if (line.startsWith(`tide_sandbox_cold_starts_total{function="${fn}",`)) n += Number(line.slice(line.lastIndexOf(' ') + 1));
  return n;
}

async function readyInstances(t: TideProcess, fn: string): Promise<number> {
  return ((await (await apiFetch(t, `/v1/functions/${fn}/instances`)).json()) as { ready: number }).ready;
}

async function functionsState(t: TideProcess): Promise<string> {
  const r = await apiFetch(t, '/v1/functions');
  const items = ((await r.json()) as { items: { name: string; revision?: string; servingRevision?: string }[] }).items;
  return JSON.stringify(items.map((f) => [f.name, f.servingRevision ?? f.revision]).sort());
}

export async function runChaos(opts: ChaosOptions = {}): Promise<StepResult[]> {
  const perStep = opts.perStep ?? 400;
  const concurrency = opts.concurrency ?? 8;
  const retryForMs = opts.retryForMs ?? 15_000;
  const steps = opts.steps ?? STEPS;
  const log = opts.log ?? (() => {});
  const dataDir = tempDir('tide-chaos-');
  const [gatewayPort, apiPort, meshPort, edgePort] = await Promise.all([freePort(), freePort(), freePort(), freePort()]);
  const upArgs = [
    '--port',
    String(gatewayPort),
    '--api-port',
    String(apiPort),
    '--mesh-port',
    String(meshPort),
    '--warm-containers',
    '0',
    '--access-log',
    'off',
  ];
  const start = () => startTide({ dataDir, args: upArgs, timeoutMs: 30_000 });
  let t = await start();
  const edgeFile = join(dataDir, 'edge.yaml');
  writeFileSync(
    edgeFile,
    `listeners:\n  - { name: edge, address: 127.0.0.1, port: ${edgePort} }\nvirtualHosts:\n  - name: all\n    domains: ['*']\n    routes:\n      - name: all\n        backends: [{ cluster: gateway }]\nclusters:\n  - name: gateway\n    endpoints: ['127.0.0.1:${gatewayPort}']\n`,
  );
  let edge = await startEdge(edgeFile, edgePort);
  const results: StepResult[] = [];
  const deploy = async (name: string, ...args: string[]) => {
    const r = await tide(['deploy', join(FIXTURES, 'functions', 'chaos.ts'), '--name', name, ...args], { dataDir });
    if (r.code !== 0) throw new Error(`deploy ${name}: ${r.stderr}`);
  };
  try {
    await deploy('w1', '--min-scale', '2');
    await deploy('w2', '--min-scale', '1');
    await deploy('c1', '--sandbox', 'container', '--min-scale', '1');
    await deploy('s1', '--initial-scale', '0', '--scaling', 'tickMs=500', '--scaling', 'stableWindowMs=6000', '--scale-to-zero-grace', '1s');
    for (const fn of FUNCTIONS) {
      const s = await probe(edgePort, fn);
      if (s !== 200) throw new Error(`${fn} answered ${s} before any chaos`);
    }
    const port = () => edgePort;
    for (const step of steps) {
      const kind: StepResult['kind'] = step === 'rollout' || step === 'scale-0-N-0' ? 'graceful' : 'sigkill';
      const retry = kind === 'sigkill' ? retryForMs : 0;
      let note = '';
      /** What shows the chaos really happened; a step whose chaos cannot be seen fails. */
      let happened = true;
      // The functions probed now (the scale step takes s1 out of the load and puts it back).
      const fns = step === 'scale-0-N-0' ? ['s1', 'w1', 'w2'] : ['w1', 'w2', 'c1'];
      let coldBefore = 0;
      if (step === 'scale-0-N-0') {
        // To zero first, and wait until it is there.
        await apiFetch(t, '/v1/functions/s1/zero', { method: 'POST' });
        const deadline = Date.now() + 15_000;
        while ((await readyInstances(t, 's1')) > 0 && Date.now() < deadline) await sleep(100);
        if ((await readyInstances(t, 's1')) > 0) throw new Error('s1 did not reach zero instances');
        coldBefore = await coldStarts(t, 's1');
      }
      const action = (async () => {
        await sleep(300);
        switch (step) {
          case 'worker-crash': {
            // Outside the probe count: this request itself dies with its thread.
            const before = replacements(dataDir, 'w1');
            const s = await probe(edgePort, 'w1', '/crash');
            await sleep(1500);
            happened = replacements(dataDir, 'w1') > before;
            note = `the crashing request got ${s}; the thread was ${happened ? '' : 'NOT '}replaced`;
            break;
          }
          case 'container-kill': {
            const ids = containersOf(dataDir);
            const c1 = ids.find((x) => x.split('\n')[1]?.startsWith('c1-'));
            if (!c1) throw new Error(`no c1 container among ${ids.join(', ')}`);
            const [root, id] = c1.split('\n') as [string, string];
            const before = replacements(dataDir, 'c1');
            execFileSync('runc', ['--root', root, 'kill', id, 'KILL']);
            await sleep(2000);
            happened = replacements(dataDir, 'c1') > before;
            note = `killed container ${id}; it was ${happened ? '' : 'NOT '}replaced`;
            break;
          }
          case 'control-kill': {
            const before = await functionsState(t);
            process.kill(t.pid, 'SIGKILL');
            await t.exited;
            t = await start();
            const after = await functionsState(t);
            if (after !== before) throw new Error(`state changed across kill -9: ${before} → ${after}`);
            note = `restarted; functions and serving revisions unchanged: ${after}`;
            await sleep(1000);
            break;
          }
          case 'proxy-kill': {
            process.kill(edge.pid, 'SIGKILL');
            await edge.exited;
            edge = await startEdge(edgeFile, edgePort);
            note = 'edge proxy restarted';
            await sleep(1000);
            break;
          }
          case 'rollout': {
            await deploy('w1', '--min-scale', '2', '--env', `ROLL=${Date.now()}`);
            note = 'w1 rolled out to a new revision';
            await sleep(1000);
            break;
          }
          case 'scale-0-N-0': {
            // s1 was at zero when the probes began: their load took it 0 → N. Now its load
            // stops (the other functions keep theirs) and it goes to zero (a function goes to
            // zero only when idle: the API answers 409 while requests are in flight), then its
            // load comes back: held by the activator, served by a new cold start.
            await sleep(700);
            fns.splice(fns.indexOf('s1'), 1);
            let zeroed = 0;
            for (let until = Date.now() + 5000; Date.now() < until; await sleep(100)) {
              zeroed = (await apiFetch(t, '/v1/functions/s1/zero', { method: 'POST' })).status;
              if (zeroed === 202) break;
            }
            for (let until = Date.now() + 10_000; (await readyInstances(t, 's1')) > 0 && Date.now() < until; ) await sleep(100);
            const atZero = (await readyInstances(t, 's1')) === 0;
            fns.push('s1');
            for (let until = Date.now() + 8000; (await coldStarts(t, 's1')) - coldBefore < 2 && Date.now() < until; ) await sleep(100);
            await sleep(500);
            const cold = (await coldStarts(t, 's1')) - coldBefore;
            happened = atZero && cold >= 2;
            note = `0 → N under load; its load stopped, scaled to zero (${zeroed}), ${atZero ? 'reached' : 'did NOT reach'} 0; load back: ${cold} cold starts in the step`;
            break;
          }
        }
      })();
      const r = await probeLoad(port, fns, perStep, concurrency, retry, action);
      await action;
      const required = kind === 'graceful' ? 1 : 0.99;
      const successRate = r.probes === 0 ? 0 : r.good / r.probes;
      const res: StepResult = { step, kind, ...r, successRate, required, passed: successRate >= required && happened, note };
      results.push(res);
      log(`${step} (${kind}): ${r.good}/${r.probes} good (${(successRate * 100).toFixed(2)}%, need ${required * 100}%), ${r.retried} retried; ${note}`);
    }
    return results;
  } finally {
    await stopProcess(edge).catch(() => {});
    await stopProcess(t).catch(() => {});
    agent.destroy();
  }
}
