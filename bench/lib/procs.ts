/**
 * The processes a benchmark starts. Every child is tracked by its PID and stopped by that PID at
 * the end, on error and on SIGINT/SIGTERM, never by name. Servers write their output to a log
 * file, whose tail goes into the error when one fails to start or dies. Also: waiting for a TCP
 * port (bounded), and a process's CPU time from /proc/PID/stat.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

const live = new Set<ChildProcess>();

/** Adds a child to the set stopped by stopAll(); it leaves the set when it exits. */
export function track(child: ChildProcess): ChildProcess {
  live.add(child);
  child.once('exit', () => live.delete(child));
  child.once('error', () => {
    if (!child.pid) live.delete(child);
  });
  return child;
}

export interface Server {
  name: string;
  child: ChildProcess;
  log: string;
  spawnError?: Error;
}

/** Starts a long-running server process with stdout and stderr going to `log`. */
export function startServer(name: string, [cmd, args]: [string, string[]], log: string, cwd?: string, env?: Record<string, string>): Server {
  const fd = openSync(log, 'a');
  try {
    const server: Server = {
      name,
      child: track(spawn(cmd, args, { stdio: ['ignore', fd, fd], cwd, ...(env ? { env: { ...process.env, ...env } } : {}) })),
      log,
    };
    server.child.once('error', (err) => {
      server.spawnError = err;
    });
    return server;
  } finally {
    closeSync(fd);
  }
}

export function logTail(file: string, chars = 1500): string {
  try {
    const text = readFileSync(file, 'utf8').trimEnd();
    return text.length > chars ? `…${text.slice(-chars)}` : text;
  } catch {
    return '';
  }
}

/** Why the server is no longer running, or undefined while it runs. */
export function exited(s: Server): string | undefined {
  if (s.spawnError) return `${s.name} could not start: ${s.spawnError.message}`;
  const { exitCode, signalCode } = s.child;
  if (exitCode === null && signalCode === null) return undefined;
  const tail = logTail(s.log);
  return `${s.name} exited (${exitCode ?? signalCode})${tail ? `:\n${tail}` : ''}`;
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(1000, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

/** Polls a TCP connect to 127.0.0.1:port every 100 ms until it succeeds, the server exits, or `timeoutMs` passes. */
export async function waitForPort(s: Server, port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const gone = exited(s);
    if (gone) throw new Error(gone);
    if (await canConnect(port)) return;
    await sleep(100);
  }
  const tail = logTail(s.log);
  throw new Error(`${s.name} not listening on 127.0.0.1:${port} after ${timeoutMs} ms${tail ? `:\n${tail}` : ''}`);
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}

/** SIGTERM by PID, SIGKILL after 5 s; waits at most 10 s in all. */
export async function stop(child: ChildProcess): Promise<void> {
  const { pid } = child;
  if (!pid || child.exitCode !== null || child.signalCode !== null) return;
  const exitedP = new Promise((r) => child.once('exit', r));
  signal(pid, 'SIGTERM');
  const kill = setTimeout(() => signal(pid, 'SIGKILL'), 5000);
  await Promise.race([exitedP, sleep(10_000)]);
  clearTimeout(kill);
}

export async function stopAll(): Promise<void> {
  await Promise.all([...live].map(stop));
}

let interrupted = false;

/** True once SIGINT/SIGTERM arrived: failures after that are the stop, not the target. */
export function isInterrupted(): boolean {
  return interrupted;
}

/** On SIGINT/SIGTERM, stops every tracked child, runs `cleanup` and exits (130/143). Returns the undo. */
export function stopOnSignals(cleanup: () => void = () => {}): () => void {
  const onSignal = (sig: NodeJS.Signals) => {
    interrupted = true;
    process.stderr.write(`\n${sig}: stopping ${live.size} benchmark process(es)…\n`);
    stopAll()
      .then(cleanup)
      .finally(() => process.exit(sig === 'SIGINT' ? 130 : 143));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  return () => {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  };
}

let ticksPerSecond: number | undefined;

function clockTicks(): number {
  if (ticksPerSecond === undefined) {
    try {
      ticksPerSecond = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      ticksPerSecond = 100;
    }
  }
  return ticksPerSecond;
}

/** User + system CPU seconds of a process, all its threads included (/proc/PID/stat fields 14 and 15). */
export function cpuSeconds(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / clockTicks();
  } catch {
    return undefined;
  }
}
