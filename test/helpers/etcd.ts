/**
 * Test helpers: real etcd processes (Debian's etcd-server, /usr/bin/etcd) on 127.0.0.1 and free
 * ports, one data directory each under a fresh temp directory. `startEtcd()` starts one member,
 * `startEtcdCluster(n)` n members forming one new cluster (unique token). Both wait until every
 * member answers GET /health with {"health":"true"} and fail with the tail of etcd's stderr when
 * it does not come up in time. Members are stopped by PID only, and a stopped member can be
 * started again on the same data directory and ports (a restart). Raft timings are shortened
 * (heartbeat 50 ms, election 500 ms) so a lost leader is replaced in well under a second.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { freePort, sleep, tempDir } from './tide.ts';

export const ETCD_BIN = process.env.ETCD_BIN ?? '/usr/bin/etcd';

export interface EtcdMember {
  name: string;
  clientUrl: string;
  peerUrl: string;
  dataDir: string;
  /** PID of the running process (of the last start). */
  pid: number;
  /** Whether the process (of the last start) is running. */
  running(): boolean;
  /** Sends `signal` (SIGTERM by default) by PID and waits for the exit (SIGKILL after 10 s). */
  stop(signal?: NodeJS.Signals): Promise<void>;
  /** Starts the member again on the same data directory and ports; resolves when it is healthy. */
  start(): Promise<void>;
  /** The last lines etcd wrote to stdout and stderr. */
  output(): string;
}

export interface EtcdCluster {
  members: EtcdMember[];
  /** http://127.0.0.1:port of every member's client listener. */
  endpoints: string[];
  /** etcd://host:port,host:port… naming every member. */
  url: string;
  /**
   * Stops every member by PID: SIGKILL by default, as test data is thrown away and SIGTERM
   * makes each member of a multi-member cluster try to hand over its leadership first (~6 s).
   */
  stop(signal?: NodeJS.Signals): Promise<void>;
}

interface MemberSpec {
  name: string;
  clientPort: number;
  peerPort: number;
  dataDir: string;
}

const HEALTH_TIMEOUT_MS = 20_000;

/** Members running now, killed by PID if the test process exits without stopping them. */
const livePids = new Set<number>();
process.once('exit', () => {
  for (const pid of livePids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {}
  }
});

/** Starts a one-member etcd. */
export async function startEtcd(options: { timeoutMs?: number } = {}): Promise<EtcdCluster> {
  return startEtcdCluster(1, options);
}

/** Starts `n` members forming one new cluster; resolves when all are healthy. */
export async function startEtcdCluster(n = 3, options: { timeoutMs?: number } = {}): Promise<EtcdCluster> {
  if (!existsSync(ETCD_BIN)) throw new Error(`etcd is not installed at ${ETCD_BIN} (apt-get install etcd-server, or run scripts/system-deps.sh as root)`);
  const root = tempDir('tide-etcd-');
  const specs: MemberSpec[] = [];
  for (let i = 0; i < n; i++) {
    specs.push({ name: `m${i}`, clientPort: await freePort(), peerPort: await freePort(), dataDir: join(root, `m${i}`) });
  }
  const initialCluster = specs.map((s) => `${s.name}=http://127.0.0.1:${s.peerPort}`).join(',');
  const token = `tide-test-${process.pid}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
  const members = specs.map((s) => member(s, initialCluster, token, options.timeoutMs ?? HEALTH_TIMEOUT_MS));
  const cluster: EtcdCluster = {
    members,
    endpoints: members.map((m) => m.clientUrl),
    url: `etcd://${specs.map((s) => `127.0.0.1:${s.clientPort}`).join(',')}`,
    stop: async (signal: NodeJS.Signals = 'SIGKILL') => {
      await Promise.all(members.map((m) => m.stop(signal)));
      rmSync(root, { recursive: true, force: true });
    },
  };
  try {
    // A member of a new multi-member cluster is healthy only once a leader is elected, which
    // needs a quorum: start them all, then wait for each.
    await Promise.all(members.map((m) => m.start()));
  } catch (err) {
    await cluster.stop();
    throw err;
  }
  return cluster;
}

function member(spec: MemberSpec, initialCluster: string, token: string, timeoutMs: number): EtcdMember {
  const clientUrl = `http://127.0.0.1:${spec.clientPort}`;
  const peerUrl = `http://127.0.0.1:${spec.peerPort}`;
  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  let out = '';
  const running = () => child !== undefined && child.exitCode === null && child.signalCode === null;
  const m: EtcdMember = {
    name: spec.name,
    clientUrl,
    peerUrl,
    dataDir: spec.dataDir,
    pid: 0,
    running,
    output: () => out,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (!child || !running()) return;
      const pid = child.pid as number;
      process.kill(pid, signal);
      const timer = setTimeout(() => {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {}
      }, 10_000);
      await exited;
      clearTimeout(timer);
    },
    async start() {
      if (running()) throw new Error(`etcd member ${spec.name} is already running (pid ${m.pid})`);
      // The --initial-* flags only matter on the first start; a restart reads the data dir.
      const args = [
        '--name',
        spec.name,
        '--data-dir',
        spec.dataDir,
        '--listen-client-urls',
        clientUrl,
        '--advertise-client-urls',
        clientUrl,
        '--listen-peer-urls',
        peerUrl,
        '--initial-advertise-peer-urls',
        peerUrl,
        '--initial-cluster',
        initialCluster,
        '--initial-cluster-token',
        token,
        '--initial-cluster-state',
        'new',
        '--heartbeat-interval',
        '50',
        '--election-timeout',
        '500',
        '--logger',
        'zap',
        '--log-level',
        'warn',
      ];
      const c = spawn(ETCD_BIN, args, { stdio: ['ignore', 'pipe', 'pipe'] });
      child = c;
      m.pid = c.pid as number;
      livePids.add(m.pid);
      out = '';
      const keep = (d: Buffer) => {
        out = (out + d.toString('utf8')).slice(-8000);
      };
      c.stdout?.on('data', keep);
      c.stderr?.on('data', keep);
      exited = new Promise((r) =>
        c.once('exit', () => {
          livePids.delete(c.pid as number);
          r();
        }),
      );
      const deadline = Date.now() + timeoutMs;
      while (Date.now() < deadline) {
        if (c.exitCode !== null || c.signalCode !== null) {
          throw new Error(`etcd member ${spec.name} exited (${c.exitCode ?? c.signalCode}) before it was healthy:\n${tail(out)}`);
        }
        if (await healthy(clientUrl)) return;
        await sleep(50);
      }
      throw new Error(`etcd member ${spec.name} (${clientUrl}) was not healthy within ${timeoutMs} ms:\n${tail(out)}`);
    },
  };
  return m;
}

/** Whether GET /health answers {"health":"true"} (a leader is known and the member serves). */
export async function healthy(clientUrl: string): Promise<boolean> {
  try {
    const res = await fetch(`${clientUrl}/health`, { signal: AbortSignal.timeout(1000) });
    const body = (await res.json()) as { health?: string };
    return body.health === 'true';
  } catch {
    return false;
  }
}

function tail(s: string, lines = 30): string {
  return s.trimEnd().split('\n').slice(-lines).join('\n');
}
