/**
 * A `tide up` child process for benchmarks: started (pinned when pinning is on), waited for,
 * talked to through its API, and stopped by PID.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, fetch as undiciFetch } from 'undici';
import { freePort, type Knobs, pinned, ROOT } from './harness.ts';

export async function waitForLine(child: ChildProcess, text: string, timeoutMs: number): Promise<void> {
  let out = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`not ready in ${timeoutMs} ms:\n${out}`)), timeoutMs);
    const onData = (d: Buffer) => {
      out += d;
      if (out.includes(text)) {
        clearTimeout(timer);
        resolve();
      }
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', (d: Buffer) => {
      out += d;
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`exited ${code} before ready:\n${out}`));
    });
  });
}

/** SIGTERM by PID, SIGKILL after 10 s. */
export async function stop(child: ChildProcess | undefined): Promise<void> {
  if (!child?.pid || child.exitCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  process.kill(child.pid, 'SIGTERM');
  const t = setTimeout(() => child.pid && process.kill(child.pid, 'SIGKILL'), 10_000);
  await exited;
  clearTimeout(t);
}

export interface TideUp {
  child: ChildProcess;
  port: number;
  dataDir: string;
  /** GET (or, with a body, POST) on the control API, JSON back. */
  api<T>(path: string, body?: unknown): Promise<T>;
  /** Runs the tide CLI against this instance; rejects with its stderr on failure. */
  cli(args: string[]): Promise<string>;
  stop(): Promise<void>;
}

/** Starts `tide up` on free ports, on cpu1 when pinning; `args` are extra flags. */
export async function startTideUp(k: Knobs, args: string[] = []): Promise<TideUp> {
  const dataDir = mkdtempSync(join(tmpdir(), 'tide-bench-'));
  const port = await freePort();
  const apiPort = await freePort();
  const [cmd, full] = pinned(k, 1, process.execPath, [
    join(ROOT, 'bin/tide.js'),
    'up',
    '--data-dir',
    dataDir,
    '--port',
    String(port),
    '--api-port',
    String(apiPort),
    '--mesh-port',
    '0',
    '--log-level',
    'warn',
    ...args,
  ]);
  const child = spawn(cmd, full, { stdio: ['ignore', 'pipe', 'pipe'], cwd: ROOT });
  try {
    await waitForLine(child, 'Press Ctrl+C to stop.', 30_000);
  } catch (err) {
    await stop(child);
    throw err;
  }
  const token = readFileSync(join(dataDir, 'token'), 'utf8').trim();
  // The API is HTTPS with a certificate from this Tide's own CA.
  const agent = new Agent({ connect: { ca: readFileSync(join(dataDir, 'ca', 'bundle.pem'), 'utf8') } });
  return {
    child,
    port,
    dataDir,
    async api<T>(path: string, body?: unknown): Promise<T> {
      const r = await undiciFetch(`https://127.0.0.1:${apiPort}${path}`, {
        dispatcher: agent,
        method: body === undefined ? 'GET' : 'POST',
        headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
      if (!r.ok) throw new Error(`${body === undefined ? 'GET' : 'POST'} ${path}: ${r.status} ${await r.text()}`);
      return (await r.json()) as T;
    },
    cli: (cliArgs) =>
      new Promise((resolve, reject) => {
        execFile(process.execPath, [join(ROOT, 'bin/tide.js'), ...cliArgs, '--data-dir', dataDir], { cwd: ROOT }, (err, stdout, stderr) =>
          err ? reject(new Error(`tide ${cliArgs.join(' ')}: ${stderr || err.message}`)) : resolve(stdout),
        );
      }),
    stop: () => stop(child),
  };
}
