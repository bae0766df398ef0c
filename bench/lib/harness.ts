/**
 * Shared benchmark machinery: knobs from env, CPU pinning, autocannon runs in a child process,
 * medians, the printed tables and the JSON report `{results, ratios, versions, pinning, …}`.
 */
import { execFileSync, spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { createServer } from 'node:net';
import { cpus } from 'node:os';
import { join } from 'node:path';

export const BENCH_DIR = join(import.meta.dirname, '..');
export const ROOT = join(BENCH_DIR, '..');

export interface Knobs {
  durationS: number;
  connections: number;
  rounds: number;
  warmupS: number;
  pin: boolean;
}

function num(name: string, fallback: number): number {
  const v = process.env[name];
  if (v === undefined || v === '') return fallback;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`${name} must be a positive number (got "${v}")`);
  return n;
}

export function hasTaskset(): boolean {
  try {
    execFileSync('taskset', ['-V'], { stdio: 'ignore' });
    return cpus().length >= 2;
  } catch {
    return false;
  }
}

export function knobs(): Knobs {
  const pinEnv = process.env.PIN;
  return {
    durationS: num('DUR', 10),
    connections: num('CONNS', 50),
    rounds: num('ROUNDS', 3),
    warmupS: num('WARMUP', 2),
    pin: pinEnv === undefined ? hasTaskset() : pinEnv === '1',
  };
}

/** Prefix for a command so it runs on `cpu` when pinning is on. */
export function pinned(k: Knobs, cpu: number, cmd: string, args: string[]): [string, string[]] {
  return k.pin ? ['taskset', ['-c', String(cpu), cmd, ...args]] : [cmd, args];
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

export interface LoadResult {
  rps: number;
  p50_ms: number;
  p90_ms: number;
  p99_ms: number;
  mean_ms: number;
  max_ms: number;
  errors: number;
  non2xx: number;
  requests: number;
  throughput_bytes_s: number;
}

/** Runs autocannon as a child process (pinned to cpu0 when pinning) and returns its summary. */
export async function autocannon(k: Knobs, url: string, headers: Record<string, string>, durationS: number): Promise<LoadResult> {
  const bin = join(BENCH_DIR, 'node_modules', 'autocannon', 'autocannon.js');
  const args = [
    bin,
    '-c',
    String(k.connections),
    '-d',
    String(durationS),
    '-j',
    '--renderStatusCodes',
    ...Object.entries(headers).flatMap(([h, v]) => ['-H', `${h}=${v}`]),
    url,
  ];
  const [cmd, full] = pinned(k, 0, process.execPath, args);
  const out = await new Promise<string>((resolve, reject) => {
    const child = spawn(cmd, full, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => {
      stdout += d;
    });
    child.stderr.on('data', (d) => {
      stderr += d;
    });
    child.on('exit', (code) => (code === 0 ? resolve(stdout) : reject(new Error(`autocannon exited ${code}: ${stderr}`))));
  });
  const r = JSON.parse(out) as {
    requests: { average: number; total: number };
    latency: { p50: number; p90: number; p99: number; average: number; max: number };
    throughput: { average: number };
    errors: number;
    timeouts: number;
    non2xx: number;
  };
  return {
    rps: r.requests.average,
    p50_ms: r.latency.p50,
    p90_ms: r.latency.p90,
    p99_ms: r.latency.p99,
    mean_ms: r.latency.average,
    max_ms: r.latency.max,
    errors: r.errors + r.timeouts,
    non2xx: r.non2xx,
    requests: r.requests.total,
    throughput_bytes_s: r.throughput.average,
  };
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

export interface Series {
  name: string;
  rounds: LoadResult[];
}

export interface Summary extends LoadResult {
  name: string;
  runs_rps: number[];
}

export function summarize(s: Series): Summary {
  const pick = (f: (r: LoadResult) => number) => median(s.rounds.map(f));
  return {
    name: s.name,
    rps: Math.round(pick((r) => r.rps)),
    p50_ms: pick((r) => r.p50_ms),
    p90_ms: pick((r) => r.p90_ms),
    p99_ms: pick((r) => r.p99_ms),
    mean_ms: Math.round(pick((r) => r.mean_ms) * 100) / 100,
    max_ms: pick((r) => r.max_ms),
    errors: s.rounds.reduce((a, r) => a + r.errors, 0),
    non2xx: s.rounds.reduce((a, r) => a + r.non2xx, 0),
    requests: s.rounds.reduce((a, r) => a + r.requests, 0),
    throughput_bytes_s: Math.round(pick((r) => r.throughput_bytes_s)),
    runs_rps: s.rounds.map((r) => Math.round(r.rps)),
  };
}

export function printTable(title: string, rows: Summary[]): void {
  const headers = ['name', 'req/s', 'p50 ms', 'p90 ms', 'p99 ms', 'mean ms', 'errors', 'non-2xx', 'runs (req/s)'];
  const cells = rows.map((r) => [
    r.name,
    String(r.rps),
    String(r.p50_ms),
    String(r.p90_ms),
    String(r.p99_ms),
    String(r.mean_ms),
    String(r.errors),
    String(r.non2xx),
    r.runs_rps.join(', '),
  ]);
  printRows(title, headers, cells);
}

/** Prints a markdown table, columns padded to their widest cell. */
export function printRows(title: string, headers: string[], cells: string[][]): void {
  const widths = headers.map((h, i) => Math.max(h.length, ...cells.map((c) => (c[i] ?? '').length)));
  const line = (c: string[]) => `| ${headers.map((_, i) => (c[i] ?? '').padEnd(widths[i] ?? 0)).join(' | ')} |`;
  process.stdout.write(`\n${title}\n${line(headers)}\n|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|\n${cells.map(line).join('\n')}\n`);
}

export function versions(extra: Record<string, string> = {}): Record<string, string> {
  return { node: process.version, ...extra };
}

export function writeReport(file: string | undefined, report: Record<string, unknown>): void {
  if (!file) return;
  writeFileSync(file, `${JSON.stringify(report, null, 2)}\n`);
  process.stdout.write(`wrote ${file}\n`);
}

/** GET `url` with a Host header; resolves with the body (benchmarks check a target answers before loading it). */
export function getText(url: string, host: string): Promise<string> {
  return new Promise((resolve, reject) => {
    request(url, { headers: { host } }, (res) => {
      let body = '';
      res.on('data', (d) => {
        body += d;
      });
      res.on('end', () => resolve(body));
    })
      .on('error', reject)
      .end();
  });
}
