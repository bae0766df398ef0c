/**
 * `tide up`, the embedded default: control API, node agent (worker sandboxes) and gateway in
 * one process, state in SQLite under the data directory. This file only wires the planes
 * together; each plane's logic lives in its own folder.
 */
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { availableParallelism, hostname, totalmem } from 'node:os';
import { basename, extname, join, resolve } from 'node:path';
import { pino } from 'pino';
import { TokenStore } from '../control/api/tokens.ts';
import { CertificateAuthority } from '../control/ca/ca.ts';
import { DashboardSeries } from '../control/dashboard/series.ts';
import {
  Autoscaler,
  agentKeys,
  BlobStore,
  ControlApi,
  createSqliteStore,
  Functions,
  Resources,
  RevisionStats,
  RolloutController,
  Scheduler,
  type Snapshot,
  SnapshotPublisher,
  type Store,
} from '../control/index.ts';
import { ControlMetrics } from '../control/metrics.ts';
import type { NodeInfo } from '../control/scheduler/placement.ts';
import { resolveUpConfig, UP_DEFAULTS, type UpConfig, type UpOptions } from '../lib/config/up.ts';
import { errorMessage, TideError } from '../lib/errors.ts';
import { createLogger, type Logger } from '../lib/log.ts';
import { hostPort } from '../lib/net.ts';
import { SYSTEM_NAMESPACE } from '../lib/spiffe.ts';
import { otlpExporter, samplingFromEnv, Tracer, TraceStore } from '../lib/trace/index.ts';
import { Gateway } from '../proxy/index.ts';
import { Egress } from '../proxy/mesh/egress.ts';
import { Identities } from '../proxy/tls/identities.ts';
import { ContainerDriver, FunctionLogs, NodeAgent, receiveFunctionSpans, validateWorkerBundle, WorkerDriver } from '../runtime/index.ts';
import { bundleFunction } from './bundle.ts';

export { VERSION } from './version.ts';

import { VERSION } from './version.ts';

export interface Running {
  config: UpConfig;
  gatewayUrl: string;
  apiUrl: string;
  /** The mesh listener (mutual TLS), host:port. */
  meshUrl: string;
  functions: Functions;
  /** Graceful stop: stop accepting, drain, stop sandboxes, close the store. */
  close(): Promise<void>;
}

export async function up(options: UpOptions = {}, log: Logger = createLogger({ level: options.logLevel })): Promise<Running> {
  const config = resolveUpConfig(options);
  const dataDir = resolve(config.dataDir);
  await prepareDataDir(dataDir);
  await takeLock(dataDir);
  const token = await loadToken(dataDir);
  let store: Store;
  try {
    store = createSqliteStore(join(dataDir, 'state.db'));
  } catch (err) {
    await rm(join(dataDir, 'tide.pid'), { force: true });
    throw err;
  }

  let ca: CertificateAuthority;
  try {
    ca = await CertificateAuthority.open({
      dir: join(dataDir, 'ca'),
      trustDomain: config.trustDomain,
      certTtlMs: config.certTtlMs,
      ...(config.caCert ? { certFile: config.caCert, keyFile: config.caKey } : {}),
    });
  } catch (err) {
    await store.close();
    await rm(join(dataDir, 'tide.pid'), { force: true });
    throw err;
  }
  // Workload certificates for the gateway and every function, renewed at half life and again
  // at once after a CA roll-over.
  const identities = new Identities({
    issue: async (id, names) => ({ ...(await ca.issue({ id, names })), id }),
    log: log.child({ component: 'proxy.identities' }),
  });
  ca.onChange(() => void identities.renewAll(ca.bundle()));

  // Tracing: spans of every request into the store of recent traces; sampled ones exported
  // over OTLP when the OTEL_* environment asks for it.
  let tracer: Tracer | undefined;
  let traces: TraceStore | undefined;
  let stopSpans = () => {};
  if (config.tracing) {
    try {
      const fromEnv = samplingFromEnv();
      const otlpLog = log.child({ component: 'trace.otlp' });
      const exporter = await otlpExporter(process.env, VERSION, (err, failures) =>
        otlpLog.warn({ err: errorMessage(err), failures }, 'exporting spans failed; they were dropped'),
      );
      traces = new TraceStore();
      tracer = new Tracer({
        sampling: {
          ...fromEnv,
          ...(config.traceSample === -1 ? {} : { ratio: config.traceSample }),
          keepErrors: config.traceErrors,
          slowMs: config.traceSlowMs,
        },
        store: traces,
        ...(exporter ? { exporter } : {}),
      });
      stopSpans = receiveFunctionSpans((spans) => tracer?.record(spans));
      log.info({ ratio: tracer.sampling.ratio, otlp: exporter?.settings.endpoint ?? 'off' }, 'tracing');
    } catch (err) {
      await store.close();
      await rm(join(dataDir, 'tide.pid'), { force: true });
      throw err;
    }
  }

  const blobs = new BlobStore(dataDir);
  const logs = new FunctionLogs(join(dataDir, 'logs'));
  const driver = new WorkerDriver({ onEvent: (e) => agent.recordEvent(e), warmThreads: config.warmThreads, tracing: config.tracing });
  const containers = new ContainerDriver({
    dataDir,
    warmContainers: config.warmContainers,
    mesh: (ns, fn, path) => egress.attach(ns, fn, path),
    onEvent: (e) => agent.recordEvent(e),
    onLog: (l) => logs.append({ time: new Date().toISOString(), ...l }),
  });
  const agent: NodeAgent = new NodeAgent({
    store,
    onStarted: (info) => controlMetrics.coldStart(info),
    meshSocket: (ns, fn) => egress.open(ns, fn),
    driver,
    container: containers,
    log,
    keys: agentKeys(),
    node: nodeInfo(config),
    bundlePath: (digest) => blobs.path(digest),
    drainMs: config.drainMs,
    onEvent: (e) =>
      logs.append({
        time: new Date().toISOString(),
        function: e.function,
        revision: e.revision,
        instance: e.instance,
        level: 'system',
        message: `instance replaced (${e.reason}): ${e.message}`,
      }),
  });
  const functions = new Functions(store, blobs, { validate: (path) => validateWorkerBundle(path) });

  const autoscaler = new Autoscaler({ store, log });
  const controlMetrics = new ControlMetrics(
    () => autoscaler.gauges(),
    () => agent.usage(),
  );
  const traffic = new RevisionStats();
  // Every function request counts twice: as demand for the autoscaler, as traffic for the stats.
  const demand = {
    begin: (rev: string) => autoscaler.begin(rev),
    end: (rev: string, status?: number, ms?: number) => {
      autoscaler.end(rev);
      if (status !== undefined && ms !== undefined) traffic.record(rev, status, ms);
    },
    activate: (rev: string) => autoscaler.activate(rev),
    queued: (rev: string, depth: number) => autoscaler.queued(rev, depth),
  };
  const scheduler = new Scheduler({ store, log });
  const rollouts = new RolloutController({ store, traffic, log });
  const access = accessLogger(config, dataDir);
  const gateway = new Gateway({
    domain: config.domain,
    trustDomain: config.trustDomain,
    identities,
    log: log.child({ component: 'proxy.gateway' }),
    access,
    demand,
    ...(tracer ? { tracer } : {}),
    resolve: (t) => agent.endpoint(t.revision, t.fallback ? t.function : undefined),
  });
  // The dashboard's series: the gateway's function counts and the autoscaler's gauges, every 2 s.
  const series = new DashboardSeries({ counts: () => gateway.functionMetrics.counts(), gauges: () => autoscaler.gauges() });
  let meshAddress = { host: config.host, port: config.meshPort };
  // A function's calls to the mesh leave through its own socket, over mutual TLS, to the mesh
  // listener of the node that runs the destination (this one: one node).
  const egress = new Egress({
    trustDomain: config.trustDomain,
    identities,
    dir: join(dataDir, 'mesh'),
    locate: (ns, name) => (gateway.serves(ns, name) ? meshAddress : undefined),
    mode: (ns, name) => gateway.mtlsMode(ns, name),
    log: log.child({ component: 'proxy.egress' }),
    ...(tracer ? { tracer } : {}),
  });
  let gatewayPort = config.port;
  const functionUrl = (name: string) => `http://${name}.${config.domain}${gatewayPort === 80 ? '' : `:${gatewayPort}`}`;
  // The API's own certificate, from the same CA: names it is reached by, renewed at half life.
  // The API's own certificate, from the same CA, for the names it is reached by; renewed (and
  // re-issued after a root roll-over) with the workload certificates.
  const controlId = `spiffe://${config.trustDomain}/ns/${SYSTEM_NAMESPACE}/control`;
  const apiNames = [...new Set(['localhost', '127.0.0.1', '::1', config.host, hostname()].filter((n) => n && n !== '0.0.0.0' && n !== '::'))];
  const firstApiCert = config.apiTls ? await identities.ensure(controlId, apiNames) : undefined;
  const api = new ControlApi({
    functions,
    logs,
    tokens: new TokenStore(store, token),
    // One /metrics for the process: the gateway (proxy and function traffic) and the control plane.
    metrics: async () => gateway.metrics.render() + gateway.functionMetrics.render() + (await controlMetrics.render()),
    ...(firstApiCert ? { tls: { cert: firstApiCert.cert, key: firstApiCert.key } } : {}),
    ca,
    log: log.child({ component: 'control.api' }),
    functionUrl,
    info: { version: VERSION, domain: config.domain, dataDir },
    scaling: autoscaler,
    traffic,
    rollouts,
    dashboard: series,
    ...(traces ? { traces } : {}),
    resources: new Resources(store, functions),
    routed: async (storeRevision) => {
      const deadline = Date.now() + 5000;
      while (gateway.snapshotVersion < storeRevision && Date.now() < deadline) await new Promise((r) => setTimeout(r, 2));
    },
  });
  const snapshots = new SnapshotPublisher(
    store,
    (s: Snapshot) => {
      gateway.setSnapshot(s);
      egress.retain(gateway.functions);
    },
    (err) => log.error({ err: errorMessage(err) }, 'snapshot build failed'),
  );

  if (firstApiCert) identities.onRenew(controlId, (c) => api.setCertificate(c));

  let closing: Promise<void> | undefined;
  const close = () => {
    closing ??= (async () => {
      log.info({ drainMs: config.drainMs }, 'shutting down');
      snapshots.close();
      autoscaler.close();
      await series.close();
      scheduler.close();
      rollouts.close();
      await Promise.all([gateway.close(config.drainMs), api.close()]);
      await agent.close();
      await egress.close();
      identities.close();
      stopSpans();
      await tracer?.close().catch((err: unknown) => log.warn({ err: errorMessage(err) }, 'sending the last spans failed'));
      await logs.close();
      access?.flush();
      await store.close();
      await rm(join(dataDir, 'endpoint.json'), { force: true });
      await rm(join(dataDir, 'tide.pid'), { force: true });
      log.info('stopped');
    })();
    return closing;
  };

  try {
    // Containers left by an earlier run that was killed are found and removed now.
    await containers.cleanupIfUsed();
    await autoscaler.start();
    await scheduler.start();
    rollouts.start();
    await agent.start();
    await snapshots.start();
    const g = await gateway.listen(config.port, config.host);
    gatewayPort = g.port;
    const m = await gateway.listenMesh(config.meshPort, config.host);
    meshAddress = { host: config.host, port: m.port };
    const a = await api.listen(config.apiPort, config.host);
    const apiUrl = `${config.apiTls ? 'https' : 'http'}://${hostPort(config.host, a.port)}`;
    const gatewayUrl = `http://${hostPort(config.host, g.port)}`;
    await writeFile(
      join(dataDir, 'endpoint.json'),
      `${JSON.stringify({ api: apiUrl, gateway: gatewayUrl, domain: config.domain, gatewayPort: g.port, meshPort: m.port, trustDomain: config.trustDomain, pid: process.pid }, null, 2)}\n`,
      { mode: 0o600 },
    );
    log.info({ gateway: gatewayUrl, api: apiUrl, dataDir }, 'tide is up');
    for (const target of config.deploy) await deployPath(functions, target, log);
    await agent.settled();
    return { config, gatewayUrl, apiUrl, meshUrl: hostPort(config.host, m.port), functions, close };
  } catch (err) {
    await close().catch(() => {});
    if (err instanceof TideError && err.code === 'ERR_ADDRESS_IN_USE') {
      throw new TideError('ERR_ADDRESS_IN_USE', `${err.message.replace(/^listener gateway: /, '').replace(/ is already in use$/, '')}: the port is taken`, {
        hint: 'pick others with --port, --api-port and --mesh-port (0 picks a free one)',
        cause: err,
      });
    }
    if ((err as NodeJS.ErrnoException).code === 'EADDRINUSE') {
      throw new TideError('ERR_ADDRESS_IN_USE', `${(err as Error).message.replace(/^listen /, '')}: the port is taken`, {
        hint: 'pick others with --port and --api-port (0 picks a free one)',
        cause: err,
      });
    }
    throw err;
  }
}

/** Deploys a file, or every .ts/.js/.mjs file of a folder, naming each function after its file. */
async function deployPath(functions: Functions, target: string, log: Logger): Promise<void> {
  const st = await stat(target).catch(() => undefined);
  if (!st) throw new TideError('ERR_INVALID_ARGUMENT', `--deploy ${target}: no such file or folder`);
  const files = st.isDirectory()
    ? (await readdir(target))
        .filter((f) => /\.(ts|js|mjs)$/.test(f) && !f.endsWith('.d.ts'))
        .sort()
        .map((f) => join(target, f))
    : [target];
  for (const file of files) {
    const name = basename(file, extname(file)).toLowerCase();
    const bundle = await bundleFunction(file);
    const started = performance.now();
    const result = await functions.deploy({ name, bundle: bundle.code, source: file });
    await functions.waitReady(result.revision.name, 30_000);
    log.info({ function: name, revision: result.revision.name, created: result.created, ms: Math.round(performance.now() - started) }, 'deployed');
  }
}

/** What this node offers the scheduler: the machine's memory and cores unless told otherwise. */
function nodeInfo(config: UpConfig): NodeInfo {
  const name =
    config.nodeName ||
    hostname()
      .toLowerCase()
      .replace(/[^a-z0-9.-]+/g, '-')
      .replace(/^[-.]+|[-.]+$/g, '') ||
    'local';
  return {
    name,
    capacity: {
      memoryMb: config.nodeMemoryMb || Math.floor(totalmem() / 1024 / 1024),
      cpuMillis: config.nodeCpuMillis || availableParallelism() * 1000,
    },
    labels: { 'tide.dev/hostname': name, ...config.nodeLabels },
    taints: config.nodeTaints.map((t) => {
      const eq = t.indexOf('=');
      return eq === -1 ? { key: t, effect: 'NoSchedule' as const } : { key: t.slice(0, eq), value: t.slice(eq + 1), effect: 'NoSchedule' as const };
    }),
  };
}

async function prepareDataDir(dir: string): Promise<void> {
  const st = await stat(dir).catch((err: NodeJS.ErrnoException) => (err.code === 'ENOENT' ? undefined : Promise.reject(err)));
  if (st && !st.isDirectory()) {
    throw new TideError('ERR_DATA_DIR', `the data directory ${dir} is not a directory`, { hint: 'pass another with --data-dir' });
  }
  try {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    await mkdir(join(dir, 'logs'), { recursive: true, mode: 0o700 });
  } catch (err) {
    throw new TideError('ERR_DATA_DIR', `cannot create the data directory ${dir}: ${errorMessage(err)}`, { hint: 'pass another with --data-dir' });
  }
}

/** One `tide up` per data directory: a pid file, taken over when its process is gone. */
async function takeLock(dir: string): Promise<void> {
  const file = join(dir, 'tide.pid');
  const existing = Number((await readFile(file, 'utf8').catch(() => '')).trim());
  if (Number.isInteger(existing) && existing > 0 && existing !== process.pid && alive(existing)) {
    throw new TideError('ERR_DATA_DIR', `another Tide (pid ${existing}) is running on ${dir}`, { hint: 'stop it first, or use another --data-dir' });
  }
  await writeFile(file, `${process.pid}\n`, { mode: 0o600 });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function loadToken(dir: string): Promise<string> {
  const file = join(dir, 'token');
  const existing = (await readFile(file, 'utf8').catch(() => '')).trim();
  if (existing.length >= 32) {
    await chmod(file, 0o600);
    return existing;
  }
  const token = randomBytes(32).toString('base64url');
  await writeFile(file, `${token}\n`, { mode: 0o600 });
  await chmod(file, 0o600);
  return token;
}

function accessLogger(config: UpConfig, dataDir: string): pino.Logger | undefined {
  const where = config.accessLog || UP_DEFAULTS.accessLog || join(dataDir, 'access.log');
  if (where === 'off') return undefined;
  const dest = pino.destination({ dest: where === '-' ? 1 : where, sync: false, mkdir: true });
  return pino({ base: undefined, timestamp: pino.stdTimeFunctions.isoTime, messageKey: 'msg' }, dest);
}
