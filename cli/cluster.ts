/**
 * Cluster mode: the planes of `tide up` as separate processes on many machines.
 *
 * - `tide control` — the control API on a shared etcd store. Every replica serves the API (and
 *   the cluster API nodes and gateways use); one, elected through an etcd lease, runs the
 *   scheduler, the autoscaler and the rollout controller. The CA and the tokens are in the
 *   store, made by the first replica that starts.
 * - `tide node` — a node agent (worker and container sandboxes) and its sidecar (the mesh
 *   listener, mutual TLS): registers with a lease, runs what the scheduler placed on it, and
 *   reports status; everything through the cluster API of any control replica.
 * - `tide gateway` — the ingress gateway: routes by the snapshot it builds from the store by
 *   watch, and forwards each request over mutual TLS to a node that runs the revision.
 *
 * Nodes and gateways keep serving with what they last saw when no control replica answers
 * (static stability) and catch up by watch when one does.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { availableParallelism, hostname, totalmem } from 'node:os';
import { join, resolve } from 'node:path';
import { Agent, fetch } from 'undici';
import { TokenStore } from '../control/api/tokens.ts';
import { CertificateAuthority } from '../control/ca/ca.ts';
import { ClusterApi } from '../control/cluster/api.ts';
import { DemandCollector, type DemandReport, DemandReporter } from '../control/cluster/demand.ts';
import { LeaderElection } from '../control/cluster/leader.ts';
import { RemoteStore } from '../control/cluster/remote-store.ts';
import {
  Autoscaler,
  agentKeys,
  ClusterBlobs,
  ControlApi,
  createEtcdStore,
  Functions,
  keys,
  parseEtcdUrl,
  Resources,
  RevisionStats,
  RolloutController,
  Scheduler,
  type Snapshot,
  SnapshotPublisher,
  type Store,
} from '../control/index.ts';
import { errorMessage, isTideError, TideError } from '../lib/errors.ts';
import type { Logger } from '../lib/log.ts';
import { hostPort } from '../lib/net.ts';
import { gatewayId, SYSTEM_NAMESPACE } from '../lib/spiffe.ts';
import { ClusterRouting } from '../proxy/cluster.ts';
import { Gateway } from '../proxy/index.ts';
import { Egress } from '../proxy/mesh/egress.ts';
import { Identities, type Issuer } from '../proxy/tls/identities.ts';
import { splitHostPort } from '../proxy/upstream/endpoint.ts';
import { ContainerDriver, FunctionLogs, NodeAgent, validateWorkerBundle, WorkerDriver } from '../runtime/index.ts';
import { VERSION } from './version.ts';

const CA_KEY = '/tide/ca/state';
const TOKEN_KEY = '/tide/cluster/secret/token';
const JOIN_TOKEN_KEY = '/tide/cluster/secret/join-token';

export interface ControlOptions {
  store: string;
  dataDir: string;
  host: string;
  apiPort: number;
  /** The URL others reach this replica's API at. Default https://<host>:<port>. */
  advertise?: string;
  domain: string;
  trustDomain: string;
  certTtlMs: number;
  /** Replica id for the election. Default host name + pid. */
  id?: string;
  leaseTtlSeconds: number;
  /** Root API token and join token: given, else the cluster's (made by the first replica). */
  token?: string;
  joinToken?: string;
}

export interface RunningControl {
  apiUrl: string;
  id: string;
  election: LeaderElection;
  close(): Promise<void>;
}

/** `tide control`: one control replica. */
export async function control(o: ControlOptions, log: Logger): Promise<RunningControl> {
  const dataDir = resolve(o.dataDir);
  await mkdir(join(dataDir, 'logs'), { recursive: true, mode: 0o700 });
  const store = createEtcdStore(parseEtcdUrl(o.store));
  try {
    // The store answers before anything else starts: a clear error for a wrong --store.
    await store.list('/tide/cluster/leader');
  } catch (err) {
    await store.close();
    throw err;
  }
  const token = o.token ?? (await shared(store, TOKEN_KEY));
  const joinToken = o.joinToken ?? (await shared(store, JOIN_TOKEN_KEY));
  await writeFile(join(dataDir, 'token'), `${token}\n`, { mode: 0o600 });
  await writeFile(join(dataDir, 'join-token'), `${joinToken}\n`, { mode: 0o600 });
  const ca = await sharedCa(store, join(dataDir, 'ca'), o.trustDomain, o.certTtlMs);
  const identities = new Identities({
    issue: async (id, names) => ({ ...(await ca.issue({ id, names })), id }),
    log: log.child({ component: 'proxy.identities' }),
  });
  const id = o.id ?? `${hostname()}-${process.pid}`;
  const apiNames = [...new Set(['localhost', '127.0.0.1', '::1', o.host, hostname(), ...(o.advertise ? [new URL(o.advertise).hostname] : [])])].filter(
    (n) => n && n !== '0.0.0.0' && n !== '::',
  );
  const controlId = `spiffe://${o.trustDomain}/ns/${SYSTEM_NAMESPACE}/control`;
  const apiCert = await identities.ensure(controlId, apiNames);

  const blobs = new ClusterBlobs(dataDir, store);
  const functions = new Functions(store, blobs, { validate: (path) => validateWorkerBundle(path) });
  const logs = new FunctionLogs(join(dataDir, 'logs'));
  const traffic = new RevisionStats();

  // The leader's work, made anew at each election and stopped when the role is lost.
  let leaderWork: { autoscaler: Autoscaler; scheduler: Scheduler; rollouts: RolloutController; demand: DemandCollector } | undefined;
  let election: LeaderElection;
  const onElected = async () => {
    const autoscaler = new Autoscaler({ store, log });
    const scheduler = new Scheduler({ store, log });
    const rollouts = new RolloutController({ store, traffic, log });
    leaderWork = { autoscaler, scheduler, rollouts, demand: new DemandCollector(autoscaler) };
    await autoscaler.start();
    await scheduler.start();
    rollouts.start();
  };
  const onDeposed = async () => {
    const w = leaderWork;
    leaderWork = undefined;
    w?.autoscaler.close();
    w?.scheduler.close();
    w?.rollouts.close();
    w?.demand.close();
  };
  // Demand reports reach the leader's autoscaler: here when this replica leads, else passed on once.
  const caBundle = ca.bundle();
  const toLeader = new Agent({ connect: { ca: caBundle, timeout: 2000 } });
  const demand = async (report: DemandReport) => {
    if (leaderWork) {
      leaderWork.demand.apply(report);
      return;
    }
    const l = election?.leader;
    if (!l || l.id === id) throw new TideError('ERR_STORE_UNAVAILABLE', 'no leader to take the demand report yet', { status: 503 });
    const res = await fetch(`${l.api}/v1/cluster/demand`, {
      method: 'POST',
      headers: { authorization: `Bearer ${joinToken}`, 'content-type': 'application/json' },
      body: JSON.stringify(report),
      dispatcher: toLeader,
      signal: AbortSignal.timeout(2000),
    });
    await res.text();
    if (!res.ok) throw new TideError('ERR_STORE_UNAVAILABLE', `the leader (${l.id}) did not take the demand report: HTTP ${res.status}`, { status: 503 });
  };

  const cluster = new ClusterApi({
    store,
    joinToken,
    trustDomain: o.trustDomain,
    domain: o.domain,
    issue: (opts) => ca.issue(opts),
    leader: () => {
      const l = election?.leader;
      return l ? { id: l.id, api: l.api } : undefined;
    },
    log,
    demand,
  });
  const api = new ControlApi({
    functions,
    logs,
    tokens: new TokenStore(store, token),
    tls: { cert: apiCert.cert, key: apiCert.key },
    ca,
    log: log.child({ component: 'control.api' }),
    functionUrl: (name) => `http://${name}.${o.domain}`,
    info: { version: VERSION, domain: o.domain, mode: 'cluster', replica: id },
    scaling: {
      decisions: (rev, since) => leaderWork?.autoscaler.decisions(rev, since) ?? [],
      describe: (rev) => leaderWork?.autoscaler.describe(rev),
      zero: async (fn) => {
        if (!leaderWork)
          throw new TideError('ERR_NOT_FOUND', `this replica (${id}) does not lead; ask the leader (${election?.leader?.api ?? 'none yet'})`, { status: 421 });
        return leaderWork.autoscaler.zero(fn);
      },
    },
    traffic,
    resources: new Resources(store, functions),
    cluster,
  });
  identities.onRenew(controlId, (c) => api.setCertificate(c));
  ca.onChange(() => void identities.renewAll(ca.bundle()));

  const a = await api.listen(o.apiPort, o.host);
  const apiUrl = o.advertise ?? `https://${hostPort(o.host, a.port)}`;
  election = new LeaderElection({
    store,
    id,
    api: apiUrl,
    ttlSeconds: o.leaseTtlSeconds,
    log: log.child({ component: 'control.leader' }),
    onElected,
    onDeposed,
  });
  await election.start();
  await writeFile(join(dataDir, 'endpoint.json'), `${JSON.stringify({ api: apiUrl, mode: 'cluster', id, pid: process.pid }, null, 2)}\n`, { mode: 0o600 });
  log.info({ api: apiUrl, id, leader: election.leader?.id }, 'control replica up');

  let closing: Promise<void> | undefined;
  return {
    apiUrl,
    id,
    election,
    close: () => {
      closing ??= (async () => {
        await election.close();
        await api.close();
        identities.close();
        await logs.close();
        await store.close();
        await toLeader.close();
        await rm(join(dataDir, 'endpoint.json'), { force: true });
      })();
      return closing;
    },
  };
}

/** A secret the replicas share: read from the store, or made by the first replica (compare-and-swap). */
async function shared(store: Store, key: string): Promise<string> {
  const have = await store.get(key);
  if (have) return have.value;
  const made = randomBytes(32).toString('base64url');
  try {
    await store.put(key, made, { expectModRevision: 0 });
    return made;
  } catch (err) {
    if (!isTideError(err, 'ERR_STORE_CONFLICT')) throw err;
    return ((await store.get(key)) as { value: string }).value;
  }
}

/** The cluster's one CA: its state (with the signing key) is in the store; each replica keeps a copy in its data directory. */
async function sharedCa(store: Store, dir: string, trustDomain: string, certTtlMs: number): Promise<CertificateAuthority> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const file = join(dir, 'state.json');
  const have = await store.get(CA_KEY);
  if (have) {
    await writeFile(file, have.value, { mode: 0o600 });
    return CertificateAuthority.open({ dir, trustDomain, certTtlMs });
  }
  await rm(file, { force: true });
  const made = await CertificateAuthority.open({ dir, trustDomain, certTtlMs });
  try {
    await store.put(CA_KEY, await readFile(file, 'utf8'), { expectModRevision: 0 });
    return made;
  } catch (err) {
    if (!isTideError(err, 'ERR_STORE_CONFLICT')) throw err;
    // Another replica made it first: take that one.
    await writeFile(file, ((await store.get(CA_KEY)) as { value: string }).value, { mode: 0o600 });
    return CertificateAuthority.open({ dir, trustDomain, certTtlMs });
  }
}

export interface MemberOptions {
  /** Control API URLs (any replica; all of them for fail-over). */
  control: string[];
  joinToken: string;
  /** PEM file of the CA that signs the control API's certificate. */
  caFile?: string;
  dataDir: string;
  host: string;
}

/** A member's connection to control: the store over the cluster API, the cluster's settings, certificates from its CA. */
async function join_(o: MemberOptions, log: Logger): Promise<{ store: RemoteStore; trustDomain: string; domain: string; issue: Issuer }> {
  const ca = o.caFile
    ? await readFile(o.caFile, 'utf8').catch((err: unknown) =>
        Promise.reject(new TideError('ERR_INVALID_ARGUMENT', `--cacert ${o.caFile}: ${errorMessage(err)}`)),
      )
    : undefined;
  const store = new RemoteStore({
    urls: o.control,
    joinToken: o.joinToken,
    ...(ca ? { ca } : {}),
    onConnectivity: (up, detail) =>
      up ? log.info({ control: detail }, 'control reachable again') : log.warn({ detail }, 'no control replica answers; serving with what is known'),
  });
  let info: { trustDomain: string; domain: string };
  try {
    info = (await store.call('info', undefined, 30_000)) as { trustDomain: string; domain: string };
  } catch (err) {
    await store.close();
    throw err;
  }
  const issue: Issuer = async (id, names) => {
    const c = (await store.call('certificate', { id, names })) as {
      cert: string;
      key: string;
      ca: string;
      serial: string;
      notBefore: string;
      notAfter: string;
    };
    return { id, cert: c.cert, key: c.key, ca: c.ca, serial: c.serial, notBefore: new Date(c.notBefore), notAfter: new Date(c.notAfter) };
  };
  return { store, trustDomain: info.trustDomain, domain: info.domain, issue };
}

export interface NodeOptions extends MemberOptions {
  name?: string;
  meshPort: number;
  /** host:port other machines reach the mesh listener at. Default <host>:<port>. */
  advertiseMesh?: string;
  leaseTtlSeconds: number;
  memoryMb?: number;
  cpuMillis?: number;
  labels: Record<string, string>;
  warmThreads: number;
  drainMs: number;
}

export interface RunningMember {
  /** The listener's address: the gateway's, or the node's mesh listener. */
  address: string;
  close(): Promise<void>;
}

/** `tide node`: a node agent with its sidecar. */
export async function node(o: NodeOptions, log: Logger): Promise<RunningMember> {
  const dataDir = resolve(o.dataDir);
  await mkdir(join(dataDir, 'logs'), { recursive: true, mode: 0o700 });
  const { store, trustDomain, domain, issue } = await join_(o, log);
  const name = o.name || hostname().toLowerCase();
  const identities = new Identities({ issue, log: log.child({ component: 'proxy.identities' }) });
  const blobs = new ClusterBlobs(dataDir, store);
  const logs = new FunctionLogs(join(dataDir, 'logs'));
  const routing = new ClusterRouting({
    store,
    nodesPrefix: keys.nodes(),
    statusesPrefix: '/tide/status/revisions/',
    trustDomain,
    identities,
    identity: gatewayId(trustDomain),
    log,
  });
  const driver = new WorkerDriver({ onEvent: (e) => agent.recordEvent(e), warmThreads: o.warmThreads, tracing: false });
  const containers = new ContainerDriver({
    dataDir,
    warmContainers: 0,
    mesh: (ns, fn, path) => egress.attach(ns, fn, path),
    onEvent: (e) => agent.recordEvent(e),
    onLog: (l) => logs.append({ time: new Date().toISOString(), ...l }),
  });
  let meshAddress = o.advertiseMesh ?? '';
  const agent: NodeAgent = new NodeAgent({
    store,
    driver,
    container: containers,
    log,
    keys: agentKeys(),
    node: {
      name,
      capacity: { memoryMb: o.memoryMb ?? Math.floor(totalmem() / 1024 / 1024), cpuMillis: o.cpuMillis ?? availableParallelism() * 1000 },
      labels: { 'tide.dev/hostname': name, ...o.labels },
      taints: [],
    },
    leaseTtlSeconds: o.leaseTtlSeconds,
    get advertise() {
      return { mesh: meshAddress };
    },
    bundlePath: (digest) => blobs.fetch(digest),
    drainMs: o.drainMs,
    meshSocket: (ns, fn) => egress.open(ns, fn),
  });
  const reporter = new DemandReporter({ source: `node/${name}/${process.pid}`, send: (r) => store.call('demand', r, 2000) });
  const sidecar = new Gateway({
    domain,
    trustDomain,
    identities,
    demand: reporter,
    log: log.child({ component: 'proxy.sidecar' }),
    resolve: (t) => agent.endpoint(t.revision, t.fallback ? t.function : undefined),
  });
  // A function's calls leave for a node that runs the destination: this one when it does.
  const egress = new Egress({
    trustDomain,
    identities,
    dir: join(dataDir, 'mesh'),
    locate: (ns, fn) => {
      if (!sidecar.serves(ns, fn)) return undefined;
      const serving = current.routes.get(fn);
      const here = serving && agent.endpoint(serving.revision, fn);
      const at = here ? meshAddress : serving ? routing.candidates(serving.revision, new Set())[0]?.node.mesh : undefined;
      const [host, port] = splitHostPort(at ?? meshAddress);
      return { host, port };
    },
    mode: (ns, fn) => sidecar.mtlsMode(ns, fn),
    log: log.child({ component: 'proxy.egress' }),
  });
  let current: Snapshot = { version: 0, routes: new Map(), custom: [], policies: [] };
  const snapshots = new SnapshotPublisher(
    store,
    (s) => {
      current = s;
      sidecar.setSnapshot(s);
      egress.retain(sidecar.functions);
    },
    (err) => log.error({ err: errorMessage(err) }, 'snapshot build failed'),
  );
  const close = async () => {
    snapshots.close();
    await sidecar.close(o.drainMs);
    await reporter.close();
    await agent.close();
    await egress.close();
    await routing.close();
    identities.close();
    await logs.close();
    await store.close();
  };
  try {
    await snapshots.start();
    await routing.start();
    const m = await sidecar.listenMesh(o.meshPort, o.host);
    meshAddress ||= hostPort(o.host, m.port);
    await agent.start();
    log.info({ node: name, mesh: meshAddress }, 'node up');
    return { address: meshAddress, close };
  } catch (err) {
    await close().catch(() => {});
    throw err;
  }
}

export interface GatewayOptions extends MemberOptions {
  port: number;
  drainMs: number;
}

/** `tide gateway`: the ingress gateway of a cluster. */
export async function gateway(o: GatewayOptions, log: Logger): Promise<RunningMember> {
  const { store, trustDomain, domain, issue } = await join_(o, log);
  const identities = new Identities({ issue, log: log.child({ component: 'proxy.identities' }) });
  const self = gatewayId(trustDomain);
  const routing = new ClusterRouting({
    store,
    nodesPrefix: keys.nodes(),
    statusesPrefix: '/tide/status/revisions/',
    trustDomain,
    identities,
    identity: self,
    log,
  });
  const reporter = new DemandReporter({ source: `gateway/${hostname()}/${process.pid}`, send: (r) => store.call('demand', r, 2000) });
  const gw = new Gateway({
    domain,
    trustDomain,
    identities,
    demand: reporter,
    log: log.child({ component: 'proxy.gateway' }),
    resolve: (t) => routing.endpoint(t),
  });
  const snapshots = new SnapshotPublisher(
    store,
    (s) => gw.setSnapshot(s),
    (err) => log.error({ err: errorMessage(err) }, 'snapshot build failed'),
  );
  const close = async () => {
    snapshots.close();
    await gw.close(o.drainMs);
    await reporter.close();
    await routing.close();
    identities.close();
    await store.close();
  };
  try {
    // Its own certificate first: it is what it calls the nodes with.
    await identities.ensure(self, ['localhost']);
    await snapshots.start();
    await routing.start();
    const g = await gw.listen(o.port, o.host);
    const address = hostPort(o.host, g.port);
    log.info({ gateway: `http://${address}`, domain }, 'gateway up');
    return { address, close };
  } catch (err) {
    await close().catch(() => {});
    throw err;
  }
}
