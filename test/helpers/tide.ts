/**
 * Test helpers: start a real `tide up` process on free ports in a fresh data directory, run
 * the real CLI against it, send HTTP requests with any Host header, and stop processes by PID.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Agent, fetch as undiciFetch } from 'undici';

export const ROOT = resolve(import.meta.dirname, '../..');
export const TIDE_BIN = join(ROOT, 'bin/tide.js');
export const FIXTURES = join(ROOT, 'test/fixtures');

/** A TCP port on 127.0.0.1 that was free a moment ago (for processes that need a fixed port across restarts). */
export function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createNetServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

export function tempDir(prefix = 'tide-test-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export interface TideProcess {
  child: ChildProcess;
  pid: number;
  dataDir: string;
  gatewayPort: number;
  /** The mesh listener (mutual TLS). */
  meshPort: number;
  apiUrl: string;
  token: string;
  output(): string;
  /** Resolves with the exit code (or signal name). */
  exited: Promise<number | string>;
}

/** Runs `tide ARGS…` as a child process, collecting its stdout and stderr together. */
export function spawnTide(
  args: string[],
  env?: Record<string, string>,
): { child: ChildProcess; pid: number; output(): string; exited: Promise<number | string> } {
  const child = spawn(process.execPath, [TIDE_BIN, ...args], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    ...(env ? { env: { ...process.env, ...env } } : {}),
  });
  let out = '';
  child.stdout?.on('data', (d) => {
    out += d;
  });
  child.stderr?.on('data', (d) => {
    out += d;
  });
  const exited = new Promise<number | string>((r) => child.once('exit', (code, signal) => r(code ?? signal ?? -1)));
  return { child, pid: child.pid as number, output: () => out, exited };
}

export async function startTide(options: { dataDir?: string; args?: string[]; timeoutMs?: number; env?: Record<string, string> } = {}): Promise<TideProcess> {
  const dataDir = options.dataDir ?? tempDir();
  const spawned = spawnTide(
    ['up', '--data-dir', dataDir, '--port', '0', '--api-port', '0', '--mesh-port', '0', '--log-level', 'warn', ...(options.args ?? [])],
    options.env,
  );
  const { child, exited } = spawned;
  const deadline = Date.now() + (options.timeoutMs ?? 20_000);
  let exitedEarly: number | string | undefined;
  void exited.then((c) => {
    exitedEarly = c;
  });
  while (Date.now() < deadline) {
    if (exitedEarly !== undefined) throw new Error(`tide up exited (${exitedEarly}) before it was ready:\n${spawned.output()}`);
    if (spawned.output().includes('Press Ctrl+C to stop.')) {
      const ep = JSON.parse(readFileSync(join(dataDir, 'endpoint.json'), 'utf8')) as { api: string; gatewayPort: number; meshPort: number };
      const token = readFileSync(join(dataDir, 'token'), 'utf8').trim();
      return {
        child,
        pid: child.pid as number,
        dataDir,
        gatewayPort: ep.gatewayPort,
        meshPort: ep.meshPort,
        apiUrl: ep.api,
        token,
        output: spawned.output,
        exited,
      };
    }
    await sleep(50);
  }
  child.kill('SIGKILL');
  throw new Error(`tide up was not ready in time:\n${spawned.output()}`);
}

/** Stops a process by PID with `signal`, then SIGKILL after `graceMs`. */
export async function stopTide(t: TideProcess | undefined, signal: NodeJS.Signals = 'SIGTERM', graceMs = 10_000): Promise<number | string | undefined> {
  if (!t || t.child.exitCode !== null || t.child.signalCode !== null) return t?.child.exitCode ?? undefined;
  return stopProcess(t, signal, graceMs);
}

/** Sends `signal` to a child by its PID, SIGKILL after `graceMs`; resolves with its exit code or signal. */
export async function stopProcess(
  t: { child: ChildProcess; pid: number; exited: Promise<number | string> },
  signal: NodeJS.Signals = 'SIGTERM',
  graceMs = 10_000,
): Promise<number | string> {
  if (t.child.exitCode !== null || t.child.signalCode !== null) return t.exited;
  process.kill(t.pid, signal);
  const timer = setTimeout(() => {
    try {
      process.kill(t.pid, 'SIGKILL');
    } catch {}
  }, graceMs);
  const code = await t.exited;
  clearTimeout(timer);
  return code;
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function tide(args: string[], opts: { dataDir?: string; cwd?: string; env?: Record<string, string> } = {}): Promise<CliResult> {
  const full = opts.dataDir ? [...args, '--data-dir', opts.dataDir] : args;
  return new Promise((resolvePromise) => {
    const child = spawn(process.execPath, [TIDE_BIN, ...full], {
      cwd: opts.cwd ?? ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...opts.env },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => {
      stdout += d;
    });
    child.stderr.on('data', (d) => {
      stderr += d;
    });
    child.on('exit', (code) => resolvePromise({ code: code ?? -1, stdout, stderr }));
  });
}

export interface HttpResult {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
  text: string;
}

export function http(
  port: number,
  host: string,
  path = '/',
  init: { method?: string; headers?: Record<string, string>; body?: string | Buffer | AsyncIterable<Buffer>; timeoutMs?: number } = {},
): Promise<HttpResult> {
  return new Promise((resolvePromise, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, path, method: init.method ?? 'GET', headers: { host, ...init.headers }, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const body = Buffer.concat(chunks);
        resolvePromise({ status: res.statusCode ?? 0, headers: res.headers, body, text: body.toString('utf8') });
      });
      res.on('error', reject);
    });
    req.setTimeout(init.timeoutMs ?? 30_000, () => req.destroy(new Error('request timed out')));
    req.on('error', reject);
    const body = init.body;
    if (body === undefined) req.end();
    else if (typeof body === 'string' || Buffer.isBuffer(body)) req.end(body);
    else
      void (async () => {
        for await (const chunk of body) if (!req.write(chunk)) await new Promise((r) => req.once('drain', r));
        req.end();
      })().catch(reject);
  });
}

const agents = new Map<string, Agent>();

/** The API's TLS trust for a `tide up`: its data directory's CA bundle. */
export function apiAgent(t: { dataDir: string }): Agent {
  let a = agents.get(t.dataDir);
  if (!a) {
    a = new Agent({ connect: { ca: readFileSync(join(t.dataDir, 'ca', 'bundle.pem'), 'utf8') } });
    agents.set(t.dataDir, a);
  }
  return a;
}

/** fetch on the control API (HTTPS, verified against the CA bundle); `token` false sends none. */
export function apiFetch(t: TideProcess, path: string, init: { method?: string; token?: string | false; body?: string } = {}) {
  const token = init.token === undefined ? t.token : init.token;
  return undiciFetch(`${t.apiUrl}${path}`, {
    method: init.method ?? 'GET',
    headers: token === false ? {} : { authorization: `Bearer ${token}` },
    body: init.body,
    dispatcher: apiAgent(t),
  });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `fn` until it returns a truthy value or `timeoutMs` passes. */
/** Polls `fn` until it returns a truthy value (errors count as not yet); `what` names the condition in the timeout error. */
export async function eventually<T>(
  fn: () => Promise<T | undefined | false> | T | undefined | false,
  timeoutMs = 10_000,
  intervalMs = 50,
  what = 'condition',
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    await sleep(intervalMs);
  }
  throw new Error(`${what} not met within ${timeoutMs} ms${last ? `: ${String(last)}` : ''}`);
}

export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
