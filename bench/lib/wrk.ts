/**
 * wrk as the load generator: `wrk -t1 -cCONNS -dDURs --latency URL` in a child process (on cpu0
 * when pinning), its text summary parsed into the harness's LoadResult. wrk prints times with
 * their own units (us, ms, s, m, h) and sizes with binary ones (B, KB, MB, GB).
 */
import { spawn } from 'node:child_process';
import type { Knobs, LoadResult } from './harness.ts';
import { pinned } from './harness.ts';
import { track } from './procs.ts';

const TIME_MS: Record<string, number> = { us: 0.001, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
const SIZE_B: Record<string, number> = { B: 1, KB: 1024, MB: 1024 ** 2, GB: 1024 ** 3, TB: 1024 ** 4 };

/** `1.05ms` → 1.05, `850.00us` → 0.85, `1.20s` → 1200. */
export function parseTimeMs(text: string): number {
  const m = /^([\d.]+)(us|ms|s|m|h)$/.exec(text.trim());
  if (!m) throw new Error(`wrk: cannot read time "${text}"`);
  return Number(m[1]) * (TIME_MS[m[2] as string] ?? Number.NaN);
}

function parseSizeB(text: string): number {
  const m = /^([\d.]+)(B|KB|MB|GB|TB)$/.exec(text.trim());
  if (!m) throw new Error(`wrk: cannot read size "${text}"`);
  return Number(m[1]) * (SIZE_B[m[2] as string] ?? Number.NaN);
}

function match(out: string, re: RegExp, what: string): RegExpExecArray {
  const m = re.exec(out);
  if (!m) throw new Error(`wrk: no ${what} in its output:\n${out}`);
  return m;
}

const round3 = (x: number) => Math.round(x * 1000) / 1000;

/**
 * Reads wrk's summary. `errors` counts socket errors (connect, read, write, timeout) plus
 * non-2xx/3xx responses; `non2xx` is the latter alone.
 */
export function parseWrk(out: string): LoadResult {
  const lat = match(out, /^[ \t]*Latency[ \t]+([\d.]+\w+)[ \t]+[\d.]+\w+[ \t]+([\d.]+\w+)/m, 'latency line');
  const pct = (p: number) => round3(parseTimeMs(match(out, new RegExp(`^[ \\t]*${p}%[ \\t]+(\\S+)`, 'm'), `${p}% latency`)[1] ?? ''));
  const total = match(out, /^\s*(\d+) requests in ([\d.]+\w+), (\S+) read/m, 'request count');
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  const socketErrors = sock ? sock.slice(1, 5).reduce((a, n) => a + Number(n), 0) : 0;
  const non2xx = Number(/Non-2xx or 3xx responses: (\d+)/.exec(out)?.[1] ?? 0);
  return {
    rps: Number(match(out, /^Requests\/sec:\s+([\d.]+)/m, 'Requests/sec')[1]),
    p50_ms: pct(50),
    p90_ms: pct(90),
    p99_ms: pct(99),
    mean_ms: round3(parseTimeMs(lat[1] as string)),
    max_ms: round3(parseTimeMs(lat[2] as string)),
    errors: socketErrors + non2xx,
    non2xx,
    requests: Number(total[1]),
    throughput_bytes_s: Math.round(parseSizeB(match(out, /^Transfer\/sec:\s+(\S+)/m, 'Transfer/sec')[1] as string)),
  };
}

/** Runs wrk (`bin`) against `url` for `durationS` seconds, with extra request `headers`; killed if it overruns by 30 s. */
export async function wrk(k: Knobs, bin: string, url: string, durationS: number, headers: Record<string, string> = {}): Promise<LoadResult> {
  const h = Object.entries(headers).flatMap(([name, value]) => ['-H', `${name}: ${value}`]);
  const [cmd, args] = pinned(k, 0, bin, ['-t1', `-c${k.connections}`, `-d${durationS}s`, '--latency', ...h, url]);
  const out = await new Promise<string>((resolve, reject) => {
    const child = track(spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] }));
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (d) => {
      stdout += d;
    });
    child.stderr?.on('data', (d) => {
      stderr += d;
    });
    const timer = setTimeout(() => child.pid && process.kill(child.pid, 'SIGKILL'), (durationS + 30) * 1000);
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve(stdout);
      else reject(new Error(`wrk exited ${code ?? signal}: ${stderr || stdout}`));
    });
  });
  return parseWrk(out);
}
