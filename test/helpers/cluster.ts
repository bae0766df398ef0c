/**
 * A whole Tide cluster on loopback, as separate processes: a real etcd cluster, control
 * replicas, nodes (each on its own 127.0.0.x address) and a gateway. Used by the cluster e2e
 * test and the failover benchmark. Every process is stopped by its PID.
 */
import { readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { join } from 'node:path';
import { Agent, fetch } from 'undici';
import { type EtcdCluster, startEtcdCluster } from './etcd.ts';
import { eventually, freePort, sleep, spawnTide, stopProcess, tempDir, tide } from './tide.ts';

export interface ClusterProcess {
  role: 'control' | 'node' | 'gateway';
  name: string;
  pid: number;
  host: string;
  port: number;
  dataDir: string;
  output(): string;
  alive(): boolean;
  stop(signal?: NodeJS.Signals): Promise<number | string>;
  exited: Promise<number | string>;
  child: import('node:child_process').ChildProcess;
}

/** An API answer's JSON: the fields the cluster helpers read, and whatever else it has. */
export type ApiBody = Record<string, unknown> & { items?: unknown[]; leader?: { id: string; api: string } | null };

export interface Cluster {
  etcd: EtcdCluster;
  controls: ClusterProcess[];
  nodes: ClusterProcess[];
  gateway: ClusterProcess;
  token: string;
  joinToken: string;
  /** The CA bundle file that verifies the control API. */
  caFile: string;
  /** Every control API URL. */
  apiUrls: string[];
  /** A JSON call to the first control replica that answers. */
  api(path: string, init?: { method?: string; body?: unknown; join?: boolean; leader?: boolean }): Promise<{ status: number; body: ApiBody }>;
  /** The leader as a live replica reports it. */
  leader(): Promise<string | undefined>;
  /** `tide ARGS` against the cluster (the first live replica). */
  cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }>;
  stop(): Promise<void>;
}

async function waitFor(p: { output(): string; exited: Promise<number | string> }, text: string, what: string, timeoutMs = 30_000): Promise<void> {
  let exited: number | string | undefined;
  void p.exited.then((c) => {
    exited = c;
  });
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (p.output().includes(text)) return;
    if (exited !== undefined) throw new Error(`${what} exited (${exited}) before it was up:\n${p.output()}`);
    await sleep(50);
  }
  throw new Error(`${what} was not up within ${timeoutMs} ms:\n${p.output()}`);
}

function proc(
  role: ClusterProcess['role'],
  name: string,
  host: string,
  port: number,
  dataDir: string,
  args: string[],
  env?: Record<string, string>,
): ClusterProcess {
  const s = spawnTide(args, env);
  let done = false;
  void s.exited.then(() => {
    done = true;
  });
  return {
    role,
    name,
    pid: s.pid,
    host,
    port,
    dataDir,
    output: s.output,
    alive: () => !done,
    stop: (signal: NodeJS.Signals = 'SIGTERM') => stopProcess({ child: s.child, pid: s.pid, exited: s.exited }, signal, 15_000),
    exited: s.exited,
    child: s.child,
  };
}

export interface ClusterOptions {
  controls?: number;
  nodes?: number;
  /** Node lease TTL, s. */
  nodeLease?: number;
  /** Leader lease TTL, s. */
  leaderLease?: number;
  logLevel?: string;
}

export async function startCluster(o: ClusterOptions = {}): Promise<Cluster> {
  const started: ClusterProcess[] = [];
  let etcd: EtcdCluster | undefined;
  const logLevel = o.logLevel ?? 'warn';
  try {
    etcd = await startEtcdCluster(3);
    const controls: ClusterProcess[] = [];
    for (let i = 1; i <= (o.controls ?? 2); i++) {
      const port = await freePort();
      const dir = tempDir(`tide-control${i}-`);
      const c = proc('control', `control-${i}`, '127.0.0.1', port, dir, [
        'control',
        '--store',
        etcd.url,
        '--data-dir',
        dir,
        '--api-port',
        String(port),
        '--id',
        `control-${i}`,
        '--leader-lease',
        String(o.leaderLease ?? 2),
        '--log-level',
        logLevel,
      ]);
      started.push(c);
      controls.push(c);
      await waitFor(c, 'is up. API', `control-${i}`);
    }
    const first = controls[0] as ClusterProcess;
    const token = readFileSync(join(first.dataDir, 'token'), 'utf8').trim();
    const joinToken = readFileSync(join(first.dataDir, 'join-token'), 'utf8').trim();
    const caFile = join(first.dataDir, 'ca', 'bundle.pem');
    const joinFile = join(tempDir('tide-join-'), 'join-token');
    await writeFile(joinFile, `${joinToken}\n`, { mode: 0o600 });
    const apiUrls = controls.map((c) => `https://127.0.0.1:${c.port}`);
    const member = ['--control', apiUrls.join(','), '--join-token-file', joinFile, '--cacert', caFile, '--log-level', logLevel, '--drain', '2s'];
    const nodes: ClusterProcess[] = [];
    for (let i = 1; i <= (o.nodes ?? 3); i++) {
      const host = `127.0.0.${10 + i}`;
      const port = await freePort();
      const dir = tempDir(`tide-node${i}-`);
      const n = proc('node', `node-${i}`, host, port, dir, [
        'node',
        ...member,
        '--name',
        `node-${i}`,
        '--host',
        host,
        '--mesh-port',
        String(port),
        '--data-dir',
        dir,
        '--lease',
        String(o.nodeLease ?? 2),
        '--warm-threads',
        '1',
      ]);
      started.push(n);
      nodes.push(n);
    }
    for (const n of nodes) await waitFor(n, 'Tide node is up', n.name);
    const gwPort = await freePort();
    const gateway = proc('gateway', 'gateway', '127.0.0.20', gwPort, '', ['gateway', ...member, '--host', '127.0.0.20', '--port', String(gwPort)]);
    started.push(gateway);
    await waitFor(gateway, 'Tide gateway is up', 'gateway');

    const agent = new Agent({ connect: { ca: readFileSync(caFile, 'utf8'), timeout: 2000 } });
    const api: Cluster['api'] = async (path, init = {}) => {
      let last: unknown;
      // `leader`: the replica that leads (some calls are the leader's to answer).
      const urls = init.leader ? [((await api('/v1/cluster/info', { join: true })).body?.leader?.api as string) ?? apiUrls[0]] : apiUrls;
      for (const url of urls) {
        try {
          const res = await fetch(`${url}${path}`, {
            method: init.method ?? 'GET',
            headers: { authorization: `Bearer ${init.join ? joinToken : token}`, ...(init.body === undefined ? {} : { 'content-type': 'application/json' }) },
            ...(init.body === undefined ? {} : { body: JSON.stringify(init.body) }),
            dispatcher: agent,
            signal: AbortSignal.timeout(5000),
          });
          const text = await res.text();
          if (res.status >= 500) {
            last = new Error(`${url}${path}: ${res.status} ${text}`);
            continue;
          }
          return { status: res.status, body: (text ? JSON.parse(text) : {}) as ApiBody };
        } catch (err) {
          last = err;
        }
      }
      throw last;
    };
    const cluster: Cluster = {
      etcd,
      controls,
      nodes,
      gateway,
      token,
      joinToken,
      caFile,
      apiUrls,
      api,
      leader: async () => {
        const r = await api('/v1/cluster/info', { join: true }).catch(() => undefined);
        return r?.body?.leader?.id as string | undefined;
      },
      cli: async (args) => {
        const live = controls.findIndex((c) => c.alive());
        return tide([...args, '--api', apiUrls[Math.max(0, live)] as string, '--token', token, '--cacert', caFile]);
      },
      stop: async () => {
        await Promise.all(started.filter((p) => p.alive()).map((p) => p.stop('SIGTERM')));
        await etcd?.stop();
        await agent.close();
      },
    };
    return cluster;
  } catch (err) {
    await Promise.all(started.filter((p) => p.alive()).map((p) => p.stop('SIGKILL')));
    await etcd?.stop();
    throw err;
  }
}

/** One GET to the gateway at `target` with Host `hostHeader`: its status and body (status 0: no answer). */
export function get(target: { host: string; port: number }, hostHeader: string, timeoutMs = 5000): Promise<{ status: number; text: string; error?: string }> {
  return new Promise((resolve) => {
    const req = httpRequest({ host: target.host, port: target.port, path: '/', headers: { host: hostHeader }, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', (e) => resolve({ status: 0, text: '', error: e.message }));
    });
    req.setTimeout(timeoutMs, () => req.destroy(new Error('timed out')));
    req.on('error', (e) => resolve({ status: 0, text: '', error: e.message }));
    req.end();
  });
}

/** One request's fate under load: its final status (0: no answer at all), how many tries, when. */
export interface Outcome {
  at: number;
  status: number;
  attempts: number;
  ms: number;
  error?: string;
}

/**
 * Steady load on the gateway: `concurrency` loops of GETs with Host `host`, each retried (up to
 * `retries` more times, 100 ms apart) on a connection error or a 5xx, as a client with a retry
 * policy does. Bounded: stops at `stop()` or after `maxMs`.
 */
export function load(target: { host: string; port: number }, hostHeader: string, opts: { concurrency?: number; retries?: number; maxMs?: number } = {}) {
  const outcomes: Outcome[] = [];
  let stopped = false;
  const deadline = Date.now() + (opts.maxMs ?? 120_000);
  const once = () => get(target, hostHeader, 10_000);
  const loop = async () => {
    while (!stopped && Date.now() < deadline) {
      const at = Date.now();
      let r = await once();
      let attempts = 1;
      while ((r.status === 0 || r.status >= 500) && attempts <= (opts.retries ?? 5)) {
        await sleep(100);
        r = await once();
        attempts++;
      }
      outcomes.push({ at, status: r.status, attempts, ms: Date.now() - at, ...(r.error ? { error: r.error } : {}) });
    }
  };
  const loops = Array.from({ length: opts.concurrency ?? 8 }, loop);
  return {
    outcomes,
    async stop(): Promise<Outcome[]> {
      stopped = true;
      await Promise.all(loops);
      return outcomes;
    },
  };
}

interface Described {
  name: string;
  servingRevision: string;
  revisions: { name: string; status: { readyInstances: number; nodes?: Record<string, number> } | null }[];
}

export interface FailoverResult {
  /** Node killed → its instances ready on other nodes, ms. */
  nodeRescheduleMs: number;
  /** Node killed → the last request whose first try failed or took over 1 s (traffic had moved), ms; 0 when none did. */
  nodeTrafficMs: number;
  /** Leader replica killed → another replica leads, ms. */
  leaderMs: number;
  /** Leader killed → the new leader placed a new revision and it answered through the gateway, ms. */
  leaderScheduleMs: number;
  /** etcd member killed → the next write through the API succeeded, ms. */
  etcdMs: number;
  victimNode: string;
  oldLeader: string;
  newLeader: string;
  outcomes: Outcome[];
  before: Described;
  after: Described;
  functions: string[];
}

/**
 * The failure drill, under load through the gateway: deploys `hello` (2 instances)
 * and `second` (1), then kills (SIGKILL) a node that runs hello, the leader control replica,
 * and one etcd member, each after the previous failure has been handled, timing each
 * recovery. The cluster must have 2 control replicas, 3 nodes, 3 etcd members.
 */
export async function failoverDrill(cluster: Cluster, fixture: string): Promise<FailoverResult> {
  const describe = async (name: string) => (await cluster.api(`/v1/functions/${name}`)).body as unknown as Described;
  const readyNodes = async (name: string) => {
    const d = await describe(name);
    const rev = d.revisions.find((r) => r.name === d.servingRevision);
    return Object.fromEntries(Object.entries(rev?.status?.nodes ?? {}).filter(([, n]) => n > 0));
  };
  for (const [name, n] of [
    ['hello', 2],
    ['second', 1],
  ] as const) {
    const d = await cluster.cli(['deploy', fixture, '--name', name, '--instances', String(n)]);
    if (d.code !== 0) throw new Error(`deploy ${name}: ${d.stderr}`);
  }
  const gw = cluster.gateway;
  for (const host of ['hello.localhost', 'second.localhost'])
    await eventually(async () => (await get(gw, host)).status === 200, 15_000, 100, `${host} answers through the gateway`);
  const before = await describe('hello');

  const traffic = load(gw, 'hello.localhost', { concurrency: 8, retries: 10, maxMs: 150_000 });
  const traffic2 = load(gw, 'second.localhost', { concurrency: 2, retries: 10, maxMs: 150_000 });
  await sleep(1000);

  // 1. A node that runs hello.
  const placed = await readyNodes('hello');
  const victim = cluster.nodes.find((n) => placed[n.name] && n.alive());
  if (!victim) throw new Error(`no live node runs hello (${JSON.stringify(placed)})`);
  const t1 = Date.now();
  await victim.stop('SIGKILL');
  await eventually(
    async () => {
      const r = await readyNodes('hello');
      const total = Object.values(r).reduce((a, b) => a + b, 0);
      return r[victim.name] === undefined && total >= 2 ? r : undefined;
    },
    30_000,
    100,
    'hello rescheduled off the dead node',
  );
  const nodeRescheduleMs = Date.now() - t1;
  await sleep(1000);
  const slow = traffic.outcomes.filter((o) => o.at >= t1 - 10_000 && (o.attempts > 1 || o.ms > 1000));
  const nodeTrafficMs = slow.length === 0 ? 0 : Math.max(0, Math.max(...slow.map((o) => o.at + o.ms)) - t1);

  // 2. The leader control replica.
  const oldLeader = await eventually(() => cluster.leader(), 10_000, 100, 'a leader');
  const leader = cluster.controls.find((c) => c.name === oldLeader);
  if (!leader) throw new Error(`leader ${oldLeader} is not a replica of this cluster`);
  const t2 = Date.now();
  await leader.stop('SIGKILL');
  const newLeader = await eventually(
    async () => {
      const l = await cluster.leader();
      return l && l !== oldLeader ? l : undefined;
    },
    30_000,
    100,
    'a new leader',
  );
  const leaderMs = Date.now() - t2;
  // Only a leader schedules: a new revision that answers shows the new one does.
  const redeploy = await cluster.cli(['deploy', fixture, '--name', 'second', '--instances', '1', '--env', 'ROUND=2']);
  if (redeploy.code !== 0) throw new Error(`deploy after the leader died: ${redeploy.stderr}`);
  const leaderScheduleMs = Date.now() - t2;

  // 3. An etcd member.
  const member = cluster.etcd.members.find((m) => m.running());
  if (!member) throw new Error('no running etcd member');
  const t3 = Date.now();
  await member.stop('SIGKILL');
  await eventually(
    async () => ((await cluster.api('/v1/tokens', { method: 'POST', body: { name: `drill-${Date.now()}`, scope: 'read' } })).status === 201 ? true : undefined),
    30_000,
    100,
    'a write after the etcd member died',
  );
  const etcdMs = Date.now() - t3;

  await sleep(1000);
  const outcomes = [...(await traffic.stop()), ...(await traffic2.stop())];
  const after = await describe('hello');
  const functions = ((await cluster.api('/v1/functions')).body.items as { name: string }[]).map((f) => f.name).sort();
  return {
    nodeRescheduleMs,
    nodeTrafficMs,
    leaderMs,
    leaderScheduleMs,
    etcdMs,
    victimNode: victim.name,
    oldLeader,
    newLeader,
    outcomes,
    before,
    after,
    functions,
  };
}
