/**
 * The `tide` command. Thin: parse, call the API (or start Tide for `up`), print. Errors are
 * printed as a message and a hint, never a stack trace (unless --debug). Exit codes: 0 ok,
 * 1 the operation failed, 2 the command line was wrong.
 */

import { resolve } from 'node:path';
import { Command, CommanderError, Option } from 'commander';
import type { ApplyProblem, ApplyResult } from '../control/api/resources.ts';
import type { DecisionRecord } from '../control/autoscaler/autoscaler.ts';
import type { RootInfo } from '../control/ca/ca.ts';
import type { PolicySpec } from '../lib/config/resources.ts';
import { formatAge, parseDuration } from '../lib/duration.ts';
import { errorMessage, TideError } from '../lib/errors.ts';
import { createLogger } from '../lib/log.ts';
import { registerBench } from './bench-command.ts';
import { ApiClient, type ConnectOptions, locate } from './client.ts';
import { integer, registerCluster } from './cluster-command.ts';
import { registerDashboard } from './dashboard.ts';
import { parseOutput, structured, table } from './print.ts';
import { registerTraces } from './traces.ts';
import { VERSION } from './version.ts';

interface FunctionView {
  name: string;
  servingRevision: string;
  latestRevision: string;
  url: string;
  ready: boolean;
  phase: string;
  readyInstances: number;
  desiredInstances: number;
  restarts: number;
  lastError: string | null;
  pending: string | null;
  ageMs: number;
  createdAt: string;
  env: string[];
  secrets: string[];
  config: (Record<string, unknown> & { scaling?: ScalingView; probes?: ProbesView; placement?: PlacementView }) | null;
}

interface ScalingView {
  minScale: number;
  maxScale: number;
  initialScale: number;
  metric: string;
  target: number;
  targetUtilization: number;
  containerConcurrency: number;
  scaleToZeroGracePeriodMs: number;
  scaleDownDelayMs: number;
  queueSize: number;
  queueTimeoutMs: number;
}

type ProbesView = Record<string, { path: string; periodSeconds: number; failureThreshold: number }>;
type PlacementView = { nodeSelector: Record<string, string>; tolerations: { key: string; value?: string }[]; affinity: string[]; antiAffinity: string[] };

function describeProbes(p: ProbesView | undefined): string {
  const list = Object.entries(p ?? {});
  if (list.length === 0) return '-';
  return list.map(([kind, v]) => `${kind} GET ${v.path} every ${v.periodSeconds}s, ${v.failureThreshold} failures`).join('; ');
}

function describePlacement(p: PlacementView | undefined): string {
  if (!p) return 'any node';
  const parts = [
    ...Object.entries(p.nodeSelector).map(([k, v]) => `node ${k}=${v}`),
    ...p.tolerations.map((t) => `tolerates ${t.key}${t.value === undefined ? '' : `=${t.value}`}`),
    ...p.affinity.map((f) => `near ${f}`),
    ...p.antiAffinity.map((f) => `away from ${f}`),
  ];
  return parts.length > 0 ? parts.join(', ') : 'any node';
}

interface TrafficView {
  requests: number;
  rps: number;
  errorRate: number;
  p99Ms: number | null;
}

interface RouteView {
  name: string;
  hosts: string[] | null;
  rules: { match: unknown; split: { revision?: string; function?: string; weight: number; resolved: string | null; traffic: TrafficView | null }[] }[];
  tags: { tag: string; revision: string; traffic: TrafficView | null }[];
}

function trafficLine(t: TrafficView | null): string {
  if (!t || t.requests === 0) return 'no requests in the last minute';
  return `${t.rps} req/s, ${(t.errorRate * 100).toFixed(1)}% errors, p99 ${t.p99Ms} ms (last minute)`;
}

async function describeRoute(api: ApiClient, name: string, format: string): Promise<void> {
  const { items } = await api.call<{ items: RouteView[] }>('GET', '/v1/routes');
  const r = items.find((x) => x.name === name);
  if (!r) throw new TideError('ERR_NOT_FOUND', `no route named "${name}"`, { hint: 'tide get routes lists them' });
  if (format === 'json' || format === 'yaml') return out(structured(r, format));
  const lines = [`Name:   ${r.name}`, `Hosts:  ${(r.hosts ?? [`${r.name}.<domain>`]).join(', ')}`, 'Rules:'];
  r.rules.forEach((rule, i) => {
    lines.push(`  ${i + 1}. ${rule.match ? `match ${JSON.stringify(rule.match)}` : 'every other request'}`);
    for (const b of rule.split) {
      const what = b.revision ?? `${b.function} → ${b.resolved ?? '(no serving revision)'}`;
      lines.push(`       ${String(b.weight).padStart(3)}%  ${what}: ${trafficLine(b.traffic)}`);
    }
  });
  if (r.tags.length > 0) {
    lines.push('Tags:');
    for (const t of r.tags) lines.push(`  ${t.tag}: ${t.revision}: ${trafficLine(t.traffic)}`);
  }
  out(lines.join('\n'));
}

function describeScaling(s: ScalingView): string {
  return [
    `${s.minScale}..${s.maxScale === 0 ? '∞' : s.maxScale} instances (initial ${s.initialScale})`,
    `target ${s.target} ${s.metric === 'rps' ? 'requests/s' : 'in flight'} per instance at ${Math.round(s.targetUtilization * 100)}%`,
    `containerConcurrency ${s.containerConcurrency === 0 ? 'unlimited' : s.containerConcurrency}`,
    `scale to zero after ${s.scaleToZeroGracePeriodMs / 1000}s idle`,
    ...(s.scaleDownDelayMs > 0 ? [`scale-down delay ${s.scaleDownDelayMs / 1000}s`] : []),
    `activator queue ${s.queueSize} for up to ${s.queueTimeoutMs / 1000}s`,
  ].join(', ');
}

interface InstancesView {
  function: string;
  revision: string;
  phase: string;
  desired: number | null;
  ready: number;
  queued: number;
  panic: boolean;
  instances: { id: string; phase: string; since: string }[];
  decisions: DecisionRecord[];
}

interface RevisionView {
  name: string;
  function: string;
  number: number;
  digest: string;
  source: string;
  createdAt: string;
  serving?: boolean;
  env: Record<string, string>;
  secrets: string[];
  config: Record<string, number>;
  status: { phase: string; readyInstances: number; desiredInstances: number; restarts: number; lastError?: string } | null;
}

const out = (s: string): void => {
  process.stdout.write(`${s}\n`);
};
let debug = false;

function connectionOptions(cmd: Command): Command {
  return cmd
    .option('--data-dir <dir>', 'data directory of the Tide to talk to (default ./.tide, or $TIDE_DATA_DIR)')
    .option('--api <url>', 'control API URL (default: read from the data directory, or $TIDE_API)')
    .option('--token <token>', 'API token (default: read from the data directory, or $TIDE_TOKEN)')
    .option('--cacert <file>', 'PEM CA bundle that verifies an https:// API (default $TIDE_CA_CERT, else <data-dir>/ca/bundle.pem, else the system roots)');
}

async function client(opts: ConnectOptions): Promise<ApiClient> {
  return new ApiClient(await locate(opts));
}

function keyValues(what: string) {
  return (value: string, previous: Record<string, string> = {}) => {
    const eq = value.indexOf('=');
    if (eq <= 0) throw new TideError('ERR_INVALID_ARGUMENT', `${what} must look like KEY=VALUE (got "${value}")`);
    return { ...previous, [value.slice(0, eq)]: value.slice(eq + 1) };
  };
}

/** A share from 0 to 1, or a percentage ("1%"). */
function ratio(what: string) {
  return (value: string) => {
    const pct = value.trim().endsWith('%');
    const n = Number(pct ? value.trim().slice(0, -1) : value);
    const r = pct ? n / 100 : n;
    if (value.trim() === '' || !Number.isFinite(r) || r < 0 || r > 1)
      throw new TideError('ERR_INVALID_ARGUMENT', `${what} must be a number from 0 to 1, or a percentage such as 1% (got "${value}")`);
    return r;
  };
}

function decimal(what: string) {
  return (value: string) => {
    const n = Number(value);
    if (value.trim() === '' || !Number.isFinite(n) || n <= 0) throw new TideError('ERR_INVALID_ARGUMENT', `${what} must be a number above 0 (got "${value}")`);
    return n;
  };
}

/** The deploy flags that set scaling; unset ones are left to the defaults. */
function scalingFlags(o: Record<string, string | number | undefined>): Record<string, unknown> {
  const fixed = o.instances as number | undefined;
  const given = (flag: string, name: string) => {
    if (fixed !== undefined && o[name] !== undefined) throw new TideError('ERR_INVALID_ARGUMENT', `--instances sets the count; leave out ${flag}`);
    return o[name] ?? fixed;
  };
  const duration = (flag: string, name: string, allowZero = false) => (o[name] === undefined ? undefined : parseDuration(String(o[name]), flag, { allowZero }));
  const extra: Record<string, unknown> = {};
  for (const [k, v] of Object.entries((o.scaling ?? {}) as unknown as Record<string, string>)) {
    const n = Number(v);
    extra[k] = v.trim() !== '' && Number.isFinite(n) ? n : v;
  }
  const named: Record<string, unknown> = {
    minScale: given('--min-scale', 'minScale'),
    maxScale: given('--max-scale', 'maxScale'),
    initialScale: given('--initial-scale', 'initialScale'),
    target: o.target,
    metric: o.metric,
    containerConcurrency: o.concurrency,
    scaleToZeroGracePeriodMs: duration('--scale-to-zero-grace', 'scaleToZeroGrace', true),
    scaleDownDelayMs: duration('--scale-down-delay', 'scaleDownDelay', true),
    queueSize: o.queueSize,
    queueTimeoutMs: duration('--queue-timeout', 'queueTimeout'),
  };
  for (const [k, v] of Object.entries(named)) if (v !== undefined) extra[k] = v;
  return extra;
}

/** The deploy flags that set probes: --startup/--readiness/--liveness PATH and --probe-option KIND.FIELD=N. */
function probeFlags(o: Record<string, unknown>): Record<string, Record<string, unknown>> | undefined {
  const probes: Record<string, Record<string, unknown>> = {};
  for (const kind of ['startup', 'readiness', 'liveness']) if (typeof o[kind] === 'string') probes[kind] = { path: o[kind] };
  for (const [key, value] of Object.entries((o.probeOption ?? {}) as Record<string, string>)) {
    const [kind, field, ...rest] = key.split('.');
    if (!kind || !field || rest.length > 0) {
      throw new TideError('ERR_INVALID_ARGUMENT', `--probe-option must look like KIND.FIELD=N, e.g. liveness.periodSeconds=5 (got "${key}")`);
    }
    const probe = probes[kind];
    if (!probe) throw new TideError('ERR_INVALID_ARGUMENT', `--probe-option ${key}: give --${kind} PATH too`);
    const n = Number(value);
    probe[field] = value.trim() !== '' && Number.isFinite(n) ? n : value;
  }
  return Object.keys(probes).length > 0 ? probes : undefined;
}

/** --command as a JSON list, or words split on spaces. */
function commandFlag(value: string | undefined): string[] | undefined {
  if (value === undefined) return undefined;
  if (value.trim().startsWith('[')) {
    try {
      const list = JSON.parse(value) as unknown;
      if (Array.isArray(list) && list.length > 0 && list.every((x) => typeof x === 'string')) return list;
    } catch {
      // fall through to the error below
    }
    throw new TideError('ERR_INVALID_ARGUMENT', `--command must be a JSON list of strings or plain words (got ${value})`);
  }
  const words = value.trim().split(/\s+/).filter(Boolean);
  if (words.length === 0) throw new TideError('ERR_INVALID_ARGUMENT', '--command is empty');
  return words;
}

function millicores(value: string): number {
  const m = /^(\d+)m?$/.exec(value.trim());
  const n = m ? Number(m[1]) : Number.NaN;
  if (!Number.isInteger(n) || n < 1 || n > 64000)
    throw new TideError('ERR_INVALID_ARGUMENT', `--cpu must be millicores from 1 to 64000, like 250 or 250m (got "${value}")`);
  return n;
}

/** --node-selector, --toleration, --affinity, --anti-affinity; undefined when none is given. */
function placementFlags(o: Record<string, unknown>): Record<string, unknown> | undefined {
  const tolerations = ((o.toleration ?? []) as string[]).map((t) => {
    const eq = t.indexOf('=');
    return eq === -1 ? { key: t, operator: 'Exists' } : { key: t.slice(0, eq), operator: 'Equal', value: t.slice(eq + 1) };
  });
  const out = {
    ...(o.nodeSelector ? { nodeSelector: o.nodeSelector } : {}),
    ...(tolerations.length > 0 ? { tolerations } : {}),
    ...(o.affinity ? { affinity: o.affinity } : {}),
    ...(o.antiAffinity ? { antiAffinity: o.antiAffinity } : {}),
  };
  return Object.keys(out).length > 0 ? out : undefined;
}

function bytes(value: string): number {
  const m = /^(\d+)(b|kb|kib|mb|mib|gb|gib)?$/i.exec(value.trim());
  if (!m) throw new TideError('ERR_INVALID_ARGUMENT', `--max-body must be a size like 512kb or 10mb (got "${value}")`);
  const unit = (m[2] ?? 'b').toLowerCase();
  const mult = unit.startsWith('k') ? 1024 : unit.startsWith('m') ? 1024 ** 2 : unit.startsWith('g') ? 1024 ** 3 : 1;
  return Number(m[1]) * mult;
}

export function program(): Command {
  const prog = new Command('tide')
    .description(
      'Tide: serverless functions on your machine, with a built-in service mesh.\n\nQuick start:\n  tide up --deploy examples        # start Tide and deploy the examples\n  curl http://hello.localhost:8080/\n  tide deploy examples/echo.ts     # deploy a function\n  tide get functions',
    )
    .version(VERSION)
    .option('--debug', 'print stack traces on errors')
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) })
    .hook('preAction', (cmd) => {
      debug = Boolean(cmd.opts().debug);
    });

  prog
    .command('up')
    .description('run Tide on this machine: control API, node agent and gateway in one process, state in SQLite')
    .option('--data-dir <dir>', 'where state, bundles, logs and the API token live', './.tide')
    .option('--host <addr>', 'address to listen on', '127.0.0.1')
    .option('-p, --port <port>', 'gateway port (0 = any free port)', integer('--port', 0, 65535), 8080)
    .option('--api-port <port>', 'control API port (0 = any free port)', integer('--api-port', 0, 65535), 8081)
    .option('--domain <domain>', 'functions answer at NAME.<domain>', 'localhost')
    .option('--deploy <path...>', 'function files or folders to deploy once up (named after the file)')
    .option('--access-log <where>', 'access log: a file, "-" for stdout, or "off" (default <data-dir>/access.log)')
    .option('--drain <duration>', 'how long shutdown waits for in-flight requests', '30s')
    .option('--warm-threads <n>', 'worker threads kept started so a cold start only loads the function (0 = none)', integer('--warm-threads', 0, 64), 2)
    .option(
      '--warm-containers <n>',
      'containers kept started for cold starts once the container sandbox is used (0 = none)',
      integer('--warm-containers', 0, 16),
      1,
    )
    .option('--node-name <name>', "this node's name for the scheduler (default: the host name)")
    .option('--node-memory <MiB>', 'memory the scheduler may place here (default: all of the machine)', integer('--node-memory', 1, 16_777_216))
    .option('--node-cpu <millicores>', 'CPU the scheduler may place here (default: 1000 per core)', integer('--node-cpu', 1, 16_000_000))
    .option('--node-label <KEY=VALUE>', 'a label functions can select with --node-selector (repeatable)', keyValues('--node-label'))
    .option('--node-taint <KEY[=VALUE]>', 'only functions that tolerate it (--toleration) run here (repeatable)', (v: string, prev: string[] = []) => [
      ...prev,
      v,
    ])
    .option(
      '--mesh-port <port>',
      'mesh listener port: mutual TLS between proxies, function-to-function calls (0 = any free port)',
      integer('--mesh-port', 0, 65535),
      8082,
    )
    .option('--trust-domain <name>', 'SPIFFE trust domain of workload identities (spiffe://<name>/ns/NS/fn/NAME)', 'tide.local')
    .option('--cert-ttl <duration>', 'lifetime of workload certificates; each is renewed at half life', '24h')
    .option('--ca-cert <file>', "your own CA's certificate (PEM, then its chain up to the root) instead of the one Tide makes")
    .option('--ca-key <file>', 'the ECDSA P-256 key of --ca-cert')
    .option('--no-api-tls', 'serve the control API over plain HTTP (default: HTTPS with a certificate from the CA)')
    .option(
      '--trace-sample <ratio>',
      "share of new traces sampled: recorded, kept for `tide traces` and exported over OTLP (0..1; callers' sampled flags are followed; default $OTEL_TRACES_SAMPLER/_ARG, else 1)",
      ratio('--trace-sample'),
    )
    .option('--trace-slow <duration>', 'also keep traces of requests at least this slow when not sampled (0 = no)', '1s')
    .option('--no-trace-errors', 'do not keep traces of failed (5xx) requests that were not sampled')
    .option('--no-tracing', 'trace nothing (no spans, no trace store, no OTLP export)')
    .addOption(new Option('--log-level <level>', 'log level of Tide itself (stderr)').choices(['debug', 'info', 'warn', 'error', 'silent']).default('info'))
    .action(async (o) => {
      // Loaded on use: `tide proxy` and the client commands do not need the whole control plane.
      const { up } = await import('./up.ts');
      const running = await up({
        dataDir: o.dataDir,
        host: o.host,
        port: o.port,
        apiPort: o.apiPort,
        domain: o.domain,
        deploy: o.deploy ?? [],
        accessLog: o.accessLog,
        drainMs: parseDuration(o.drain, '--drain'),
        logLevel: o.logLevel,
        warmThreads: o.warmThreads,
        warmContainers: o.warmContainers,
        nodeName: o.nodeName,
        nodeMemoryMb: o.nodeMemory,
        nodeCpuMillis: o.nodeCpu,
        nodeLabels: o.nodeLabel,
        nodeTaints: o.nodeTaint,
        meshPort: o.meshPort,
        trustDomain: o.trustDomain,
        certTtlMs: parseDuration(o.certTtl, '--cert-ttl'),
        caCert: o.caCert,
        caKey: o.caKey,
        apiTls: o.apiTls,
        tracing: o.tracing,
        traceSample: o.traceSample,
        traceErrors: o.traceErrors,
        traceSlowMs: parseDuration(o.traceSlow, '--trace-slow', { allowZero: true }),
      });
      const names = (await running.functions.list()).map((f) => f.name);
      out(`Tide is up. Gateway ${running.gatewayUrl}, API ${running.apiUrl}, mesh ${running.meshUrl}, data in ${resolve(running.config.dataDir)}`);
      for (const n of names) out(`  ${n}: http://${n}.${running.config.domain}:${new URL(running.gatewayUrl).port}/`);
      out('Press Ctrl+C to stop.');
      await waitForSignal(running.close);
    });

  registerCluster(prog, waitForSignal);

  prog
    .command('proxy')
    .description(
      'run the mesh proxy on its own from a config file (listeners, virtual hosts, routes, clusters). ' +
        'The file is watched and re-read on SIGHUP: a valid change is applied atomically; a bad one is reported with line and column and the running config stays.',
    )
    .requiredOption('-c, --config <file>', 'the proxy config file (YAML); see examples/proxy.yaml')
    .option('--check', 'validate the file (schema, references, certificates) and exit')
    .option('--no-watch', 'do not reload when the file changes (SIGHUP still reloads)')
    .option('--access-log <where>', 'access log: a file or "-" for stdout (default off)')
    .option('--drain <duration>', 'how long shutdown waits for in-flight requests', '10s')
    .option(
      '--trace-sample <ratio>',
      "share of new traces sampled when OTEL_EXPORTER_OTLP_ENDPOINT turns tracing on (0..1 or a percentage; callers' sampled flags are followed; default $OTEL_TRACES_SAMPLER/_ARG, else 1)",
      ratio('--trace-sample'),
    )
    .addOption(
      new Option('--log-level <level>', 'log level of the proxy itself (stderr)').choices(['debug', 'info', 'warn', 'error', 'silent']).default('info'),
    )
    .action(async (o) => {
      const { ProxyServer, loadConfig, ProxyMetrics } = await import('../proxy/standalone.ts');
      if (o.check) {
        const snapshot = loadConfig(resolve(o.config), 1, new ProxyMetrics());
        await Promise.all([...snapshot.clusters.values()].map((c) => c.destroy()));
        out(
          `${o.config}: ok (${snapshot.listeners.length} listeners, ${snapshot.config.virtualHosts.length} virtual hosts, ${snapshot.clusters.size} clusters)`,
        );
        return;
      }
      const log = createLogger({ level: o.logLevel });
      const access = o.accessLog ? createLogger({ level: 'info', destination: o.accessLog === '-' ? 1 : o.accessLog }) : undefined;
      // Traced only when spans have somewhere to go: an OTLP endpoint in the OTEL_* environment.
      const { otlpExporter, samplingFromEnv, Tracer } = await import('../lib/trace/index.ts');
      const exporter = await otlpExporter(process.env, VERSION, (err, failures) =>
        log.warn({ err: errorMessage(err), failures }, 'exporting spans failed; they were dropped'),
      );
      if (!exporter && o.traceSample !== undefined)
        process.stderr.write('tide proxy: --trace-sample has no effect: tracing is on only when OTEL_EXPORTER_OTLP_ENDPOINT (or _TRACES_ENDPOINT) is set\n');
      const tracer = exporter
        ? new Tracer({
            sampling: { ...samplingFromEnv(), ...(o.traceSample === undefined ? {} : { ratio: o.traceSample }), keepErrors: false, slowMs: 0 },
            exporter,
          })
        : undefined;
      const server = new ProxyServer({
        file: o.config,
        log,
        access,
        watch: o.watch,
        tracer,
        report: (line) => process.stderr.write(`tide proxy: ${line}\n`),
      });
      try {
        await server.start();
      } catch (err) {
        await tracer?.close();
        throw err;
      }
      for (const [name, a] of Object.entries(server.addresses())) {
        const host = a.family === 'IPv6' ? `[${a.address}]` : a.address;
        out(`tide proxy: ${name} listening on ${host}:${a.port}`);
      }
      if (tracer) out(`tide proxy: tracing ${Math.round(tracer.sampling.ratio * 10_000) / 100}% of new traces to ${exporter?.settings.endpoint}`);
      process.on('SIGHUP', () => server.scheduleReload(true));
      await waitForSignal(async () => {
        await server.close(parseDuration(o.drain, '--drain'));
        await tracer?.close();
      });
    });

  connectionOptions(
    prog
      .command('deploy')
      .description('bundle a function file and deploy it as a new revision (no new revision if nothing changed)')
      .argument('[file]', 'a module whose default export has fetch(request, env, ctx) (or --image)')
      .option('--image <path>', 'run a container image instead: an OCI layout folder or tar, a docker-save tar, or a root filesystem folder on this machine')
      .option('--command <json|words>', 'with --image: what to run instead of its entrypoint and cmd, e.g. \'["/bin/server","-v"]\' or "/bin/server -v"')
      .option('--port <port>', "with --image: the port its process listens on ($PORT; default the image's, else 8080)", integer('--port', 1, 65535))
      .option('-n, --name <name>', 'function name, a DNS label (default: the file name)')
      .option('-e, --env <KEY=VALUE>', 'environment variable for env (repeatable)', keyValues('--env'))
      .option('-s, --secret <KEY=VALUE>', 'secret for env, never printed back (repeatable)', keyValues('--secret'))
      .option('--change-cause <text>', 'why this deploy, kept on the revision (shown by tide rollout history)')
      .addOption(new Option('--sandbox <kind>', 'worker (a thread in Tide) or container (a runc container: strong isolation)').choices(['worker', 'container']))
      .option('--timeout <duration>', 'longest a request may run (default 30s)')
      .option('--memory <MiB>', 'heap limit per instance in MiB, also reserved on its node (default 128)', integer('--memory', 16, 16384))
      .option('--cpu <millicores>', 'CPU reserved per instance on its node, e.g. 250 or 250m (default 25)', millicores)
      .option('--cpu-limit <millicores>', 'most CPU a container instance may use, 0 = no limit (default 1000)', (v: string) =>
        v.trim() === '0' ? 0 : millicores(v),
      )
      .option('--node-selector <KEY=VALUE>', 'run only on nodes with this label (repeatable)', keyValues('--node-selector'))
      .option('--toleration <KEY[=VALUE]>', 'may run on nodes with this taint (repeatable)', (v: string, prev: string[] = []) => [...prev, v])
      .option('--affinity <function>', 'prefer nodes running this function (repeatable)', (v: string, prev: string[] = []) => [...prev, v])
      .option('--anti-affinity <function>', 'avoid nodes running this function (repeatable)', (v: string, prev: string[] = []) => [...prev, v])
      .option('--min-scale <n>', 'fewest instances, even when idle; 0 lets it scale to zero (default 0)', integer('--min-scale', 0, 1000))
      .option('--max-scale <n>', 'most instances; 0 = no limit (default 0)', integer('--max-scale', 0, 1000))
      .option('--initial-scale <n>', 'instances started for a new revision before any traffic (default 1)', integer('--initial-scale', 0, 1000))
      .option('--instances <n>', 'a fixed count: the same as --min-scale N --max-scale N --initial-scale N', integer('--instances', 1, 1000))
      .option('--target <n>', 'requests in flight (or per second, with --metric rps) one instance should carry (default 100)', decimal('--target'))
      .option('--metric <metric>', 'what --target counts: concurrency or rps (default concurrency)')
      .option(
        '--concurrency <n>',
        'hard limit of requests in flight per instance; more wait in the activator; 0 = none (default 0)',
        integer('--concurrency', 0, 1000),
      )
      .option('--scale-to-zero-grace <duration>', 'how long an idle revision keeps its last instance (default 30s)')
      .option('--scale-down-delay <duration>', 'how long a lower count must stay wanted before instances go (default 0s)')
      .option('--queue-size <n>', 'requests held while no instance is free; beyond: 503 (default 1000)', integer('--queue-size', 0, 100000))
      .option('--queue-timeout <duration>', 'longest a request is held for a free instance (default 10s)')
      .option('--startup <path>', 'startup probe: GET this path until it answers 2xx/3xx before any other probe or request')
      .option('--readiness <path>', 'readiness probe: the instance gets requests only while GET this path answers 2xx/3xx')
      .option('--liveness <path>', 'liveness probe: the instance is restarted when GET this path keeps failing')
      .option('--probe-option <KIND.FIELD=N>', 'probe setting, e.g. liveness.periodSeconds=5 (Kubernetes fields; repeatable)', keyValues('--probe-option'))
      .option(
        '--scaling <KNOB=NUMBER>',
        'any other scaling knob, e.g. stableWindowMs=6000 or tickMs=500 (repeatable; see docs/autoscaling.md)',
        keyValues('--scaling'),
      )
      .option('--max-body <size>', 'largest request body, e.g. 10mb (default 10mb)', bytes)
      .option('-o, --output <format>', 'json or yaml instead of text'),
  ).action(async (file: string | undefined, o) => {
    const format = parseOutput(o.output);
    if ((file === undefined) === (o.image === undefined)) {
      throw new TideError('ERR_INVALID_ARGUMENT', 'give a function file or --image PATH (one of them)', { hint: 'see tide deploy --help' });
    }
    const from = (file ?? o.image) as string;
    const name =
      o.name ??
      from
        .replace(/[\\/]+$/, '')
        .replace(/^.*[\\/]/, '')
        .replace(/\.[^.]*$/, '')
        .toLowerCase();
    const started = performance.now();
    let code: Uint8Array | undefined;
    if (file !== undefined) {
      const { bundleFunction } = await import('./bundle.ts');
      const bundle = await bundleFunction(file);
      for (const w of bundle.warnings) process.stderr.write(`${w}\n`);
      code = bundle.code;
    }
    const image = o.image === undefined ? undefined : { path: resolve(o.image), command: commandFlag(o.command), port: o.port };
    const api = await client(o);
    const result = await api.call<{ created: boolean; revision: RevisionView; url: string; durationMs: number; function: FunctionView }>(
      'POST',
      `/v1/functions/${encodeURIComponent(name)}/deploy`,
      {
        ...(code ? { bundle: Buffer.from(code).toString('base64'), source: file } : { image }),
        env: o.env,
        secrets: o.secret,
        sandbox: o.sandbox,
        changeCause: o.changeCause,
        config: {
          timeoutMs: o.timeout ? parseDuration(o.timeout, '--timeout') : undefined,
          memoryMb: o.memory,
          cpuMillis: o.cpu,
          cpuLimitMillis: o.cpuLimit,
          placement: placementFlags(o),
          maxBodyBytes: o.maxBody,
          scaling: scalingFlags(o),
          probes: probeFlags(o),
        },
      },
    );
    const ms = Math.round(performance.now() - started);
    if (format === 'json' || format === 'yaml') {
      out(structured({ ...result, totalMs: ms }, format));
      return;
    }
    out(
      `${result.created ? 'Deployed' : 'Unchanged:'} ${name} revision ${result.revision.name}${result.created ? '' : ' (identical to the latest; no new revision)'} in ${ms} ms`,
    );
    out(`URL: ${result.url}/`);
  });

  /** Sends the files' resources to the API; problems come back placed in the files. */
  const applyFiles = async (o: Record<string, unknown>, flags: { dryRun?: boolean; prune?: boolean; diff?: boolean }) => {
    const { loadResources, toItems, placeProblems } = await import('./apply.ts');
    const { bundleFunction } = await import('./bundle.ts');
    const loaded = await loadResources(o.filename as string[]);
    const items = await toItems(loaded, async (file) => (await bundleFunction(file)).code);
    const body = {
      ...flags,
      items: items.map((it) =>
        it.kind === 'Function' && it.deploy.bundle ? { ...it, deploy: { ...it.deploy, bundle: Buffer.from(it.deploy.bundle).toString('base64') } } : it,
      ),
    };
    const api = await client(o as ConnectOptions);
    try {
      return await api.call<{ dryRun: boolean; results: ApplyResult[] }>('POST', '/v1/apply', body);
    } catch (err) {
      const problems = err instanceof TideError ? (err.details?.problems as ApplyProblem[] | undefined) : undefined;
      if (problems) throw placeProblems(loaded, problems);
      throw err;
    }
  };
  const files = (v: string, prev: string[] = []) => [...prev, v];

  connectionOptions(
    prog
      .command('apply')
      .description('create or update the resources in YAML files (Function, Secret, Config): all of them, or none when any is wrong')
      .requiredOption('-f, --filename <path>', 'a YAML file, or a folder of them (repeatable)', files)
      .option('--dry-run', 'check everything and say what would change, changing nothing')
      .option(
        '--prune',
        'also delete every Function, Secret, Config, Route, Rollout and Policy that an earlier apply created and these files do not have (functions made by `tide deploy` are never pruned)',
      )
      .option('-o, --output <format>', 'json or yaml'),
  ).action(async (o) => {
    const format = parseOutput(o.output);
    const answer = await applyFiles(o, { dryRun: o.dryRun === true, prune: o.prune === true });
    if (format === 'json' || format === 'yaml') return out(structured(answer, format));
    for (const r of answer.results) {
      out(`${r.kind.toLowerCase()}/${r.name} ${r.action}${r.revision && r.action !== 'pruned' ? ` (${r.revision})` : ''}${answer.dryRun ? ' (dry run)' : ''}`);
    }
  });

  connectionOptions(
    prog
      .command('diff')
      .description('show what `tide apply` would change, field by field; exits 1 when something would change')
      .requiredOption('-f, --filename <path>', 'a YAML file, or a folder of them (repeatable)', files)
      .option('--prune', 'also show what --prune would delete'),
  ).action(async (o) => {
    const answer = await applyFiles(o, { diff: true, prune: o.prune === true });
    let changed = false;
    for (const r of answer.results) {
      if (r.action === 'unchanged') continue;
      changed = true;
      out(`${r.kind.toLowerCase()}/${r.name}: ${r.action === 'configured' ? 'changes' : r.action === 'created' ? 'would be created' : 'would be deleted'}`);
      for (const c of r.changes ?? []) out(`  ${c}`);
    }
    if (!changed) out('no changes');
    if (changed) process.exitCode = 1;
  });

  prog
    .command('schema')
    .description('print the JSON Schema of a resource kind (editors validate YAML with it; also in schemas/v1/)')
    .argument('[kind]', 'function, secret or config (default: the list of kinds)')
    .action(async (kind: string | undefined) => {
      const { KIND_SCHEMAS } = await import('../lib/config/resources.ts');
      const kinds = Object.keys(KIND_SCHEMAS);
      if (!kind) {
        out(kinds.map((k) => k.toLowerCase()).join('\n'));
        return;
      }
      const name = kinds.find((k) => k.toLowerCase() === kind.toLowerCase()) as keyof typeof KIND_SCHEMAS | undefined;
      if (!name) throw new TideError('ERR_INVALID_ARGUMENT', `no kind "${kind}": use one of ${kinds.map((k) => k.toLowerCase()).join(', ')}`);
      out(JSON.stringify({ $schema: 'http://json-schema.org/draft-07/schema#', ...KIND_SCHEMAS[name] }, null, 2));
    });

  connectionOptions(
    prog
      .command('split')
      .description(
        "split a function's traffic between revisions, e.g. `tide split hello hello-00003=90 hello-00004=10` (a Route named after the function, on its own host)",
      )
      .argument('<function>', 'function name; its host NAME.<domain> gets the split')
      .argument('<weights...>', 'REVISION=PERCENT (or @latest=PERCENT for the serving revision), adding up to 100')
      .option('--tag <TAG=REVISION>', 'also give a revision its own host TAG.NAME.<domain> (repeatable)', keyValues('--tag')),
  ).action(async (fn: string, weights: string[], o) => {
    const split = weights.map((w) => {
      const m = /^(@latest|[a-z][-a-z0-9]*-\d{5})=(\d{1,3})$/.exec(w);
      if (!m) throw new TideError('ERR_INVALID_ARGUMENT', `each weight must look like ${fn}-00003=90 or @latest=10 (got "${w}")`);
      const weight = Number(m[2]);
      return m[1] === '@latest' ? { function: fn, weight } : { revision: m[1] as string, weight };
    });
    const sum = split.reduce((n, b) => n + b.weight, 0);
    if (sum !== 100) throw new TideError('ERR_INVALID_ARGUMENT', `the weights add up to ${sum}, not 100`);
    const api = await client(o);
    const info = await api.call<{ domain?: string }>('GET', '/v1/info');
    const host = `${fn}.${info.domain ?? 'localhost'}`;
    const spec = { hosts: [host], rules: [{ split }], ...(o.tag ? { tags: o.tag } : {}) };
    let answer: { results: ApplyResult[] };
    try {
      answer = await api.call('POST', '/v1/apply', { items: [{ kind: 'Route', name: fn, spec }] });
    } catch (err) {
      const problems = err instanceof TideError ? (err.details?.problems as ApplyProblem[] | undefined) : undefined;
      if (problems) throw new TideError('ERR_INVALID_ARGUMENT', problems.map((p) => `${p.path}: ${p.message}`).join('\n'));
      throw err;
    }
    out(`route/${fn} ${answer.results[0]?.action ?? 'applied'}: ${split.map((b) => `${b.revision ?? `${fn} (serving)`} ${b.weight}%`).join(', ')} on ${host}`);
  });

  const rollout = prog.command('rollout').description("follow and steer a function's progressive rollout (a Rollout resource)");
  interface RolloutView {
    phase: string;
    stable: string;
    canary?: string;
    step?: number;
    message: string;
    history: { at: string; revision: string; result: string; message: string; changeCause?: string }[];
  }
  connectionOptions(
    rollout
      .command('status')
      .description(
        "print the rollout's progress until it ends; exits 0 when the new revision is promoted (or nothing is in progress), 1 when it was rolled back or aborted",
      )
      .argument('<name>', 'rollout name')
      .option('--timeout <duration>', 'give up waiting after this long (exit 1)', '10m')
      .option('--no-watch', 'print once and exit'),
  ).action(async (name: string, o) => {
    const api = await client(o);
    const deadline = Date.now() + parseDuration(o.timeout, '--timeout');
    let last = '';
    for (;;) {
      const v = await api.call<RolloutView>('GET', `/v1/rollouts/${encodeURIComponent(name)}`);
      const line = `${v.phase}: ${v.message}`;
      if (line !== last) out(line);
      last = line;
      if (v.phase !== 'Progressing') {
        if (v.phase === 'RolledBack' || v.phase === 'Aborted') process.exitCode = 1;
        return;
      }
      if (!o.watch) return;
      if (Date.now() > deadline) {
        process.exitCode = 1;
        out(`still progressing after ${o.timeout}`);
        return;
      }
      await new Promise((r) => setTimeout(r, 500));
    }
  });
  connectionOptions(
    rollout.command('history').description('every revision the rollout brought in, and how it ended').argument('<name>', 'rollout name'),
  ).action(async (name: string, o) => {
    const v = await (await client(o)).call<RolloutView>('GET', `/v1/rollouts/${encodeURIComponent(name)}`);
    out(
      table(
        ['WHEN', 'REVISION', 'CHANGE-CAUSE', 'RESULT', 'WHY'],
        v.history.map((h) => [h.at, h.revision, h.changeCause ?? '-', h.result, h.message]),
      ),
    );
    out(`now: ${v.phase}, stable ${v.stable}${v.canary ? `, rolling out ${v.canary}` : ''}`);
  });
  const actions = {
    promote: 'give the new revision all traffic now',
    abort: 'stop the rollout: all traffic back to the stable revision',
    pause: 'hold the rollout at its step (a failing revision is still rolled back)',
    resume: 'go on with the steps (the current step starts its pause over)',
  } as const;
  for (const action of Object.keys(actions) as (keyof typeof actions)[]) {
    connectionOptions(rollout.command(action).description(actions[action]).argument('<name>', 'rollout name')).action(async (name: string, o) => {
      await (await client(o)).call('POST', `/v1/rollouts/${encodeURIComponent(name)}/${action}`, {});
      out(`${action} requested for ${name}`);
    });
  }
  connectionOptions(
    rollout
      .command('undo')
      .description("serve the function's previous revision again (or --to-revision N); the rollout takes it as stable")
      .argument('<name>', 'rollout name')
      .option('--to-revision <revision>', 'revision name or number'),
  ).action(async (name: string, o) => {
    const api = await client(o);
    const v = await api.call<RolloutView & { function: string }>('GET', `/v1/rollouts/${encodeURIComponent(name)}`);
    if (v.phase === 'Progressing')
      throw new TideError('ERR_INVALID_ARGUMENT', `${name} is rolling out ${v.canary}: abort it first (tide rollout abort ${name})`);
    const r = await api.call<{ from: string; to: string }>('POST', `/v1/functions/${encodeURIComponent(v.function)}/rollback`, { to: o.toRevision });
    out(`${v.function}: ${r.from} → ${r.to}`);
  });

  const get = prog.command('get').description('list functions, revisions, instances, routes, rollouts or policies');
  connectionOptions(
    get
      .command('rollouts')
      .alias('rollout')
      .description('list Rollouts: NAME FUNCTION PHASE STABLE ROLLING-OUT STEP')
      .option('-o, --output <format>', 'json or yaml'),
  ).action(async (o) => {
    const format = parseOutput(o.output);
    const { items } = await (await client(o)).call<{ items: (RolloutView & { name: string; function: string; steps: number })[] }>('GET', '/v1/rollouts');
    if (format === 'json' || format === 'yaml') return out(structured({ items }, format));
    out(
      table(
        ['NAME', 'FUNCTION', 'PHASE', 'STABLE', 'ROLLING-OUT', 'STEP'],
        items.map((r) => [r.name, r.function, r.phase, r.stable || '-', r.canary ?? '-', r.step === undefined ? '-' : `${r.step + 1}/${r.steps}`]),
      ),
    );
  });
  connectionOptions(
    get
      .command('policies')
      .alias('policy')
      .description('list Policies: NAME SELECTOR MTLS RULES RATE-LIMIT (see docs/mesh.md)')
      .option('-o, --output <format>', 'json or yaml'),
  ).action(async (o) => {
    const format = parseOutput(o.output);
    const { items } = await (await client(o)).call<{ items: { name: string; spec: PolicySpec }[] }>('GET', '/v1/policies');
    if (format === 'json' || format === 'yaml') return out(structured({ items }, format));
    out(
      table(
        ['NAME', 'SELECTOR', 'MTLS', 'RULES', 'RATE-LIMIT'],
        items.map(({ name, spec }) => {
          const rules = spec.rules;
          const allow = rules?.filter((r) => (r.action ?? 'ALLOW') === 'ALLOW').length ?? 0;
          const rl = spec.rateLimit;
          return [
            name,
            spec.selector ? spec.selector.functions.join(',') : '(all)',
            spec.mtls?.mode ?? '-',
            rules === undefined ? '-' : `${allow} allow, ${rules.length - allow} deny`,
            rl ? `${rl.requestsPerSecond}/s burst ${rl.burst ?? Math.ceil(rl.requestsPerSecond)}${rl.per === 'source' ? ' per source' : ''}` : '-',
          ];
        }),
      ),
    );
  });
  connectionOptions(
    get
      .command('routes')
      .alias('route')
      .description('list Routes: NAME HOSTS SPLIT (the first rule without a match, else the first rule)')
      .option('-o, --output <format>', 'json or yaml'),
  ).action(async (o) => {
    const format = parseOutput(o.output);
    const { items } = await (await client(o)).call<{ items: RouteView[] }>('GET', '/v1/routes');
    if (format === 'json' || format === 'yaml') return out(structured({ items }, format));
    out(
      table(
        ['NAME', 'HOSTS', 'RULES', 'SPLIT', 'TAGS'],
        items.map((r) => {
          const main = r.rules.find((x) => x.match === null) ?? r.rules[0];
          return [
            r.name,
            (r.hosts ?? [`${r.name}.<domain>`]).join(','),
            String(r.rules.length),
            (main?.split ?? []).map((b) => `${b.resolved ?? b.function ?? '?'}=${b.weight}`).join(' '),
            r.tags.map((t) => `${t.tag}=${t.revision}`).join(' '),
          ];
        }),
      ),
    );
  });
  connectionOptions(
    get
      .command('functions')
      .alias('function')
      .alias('fn')
      .description('list functions: NAME REVISION URL READY INSTANCES AGE')
      .option('-o, --output <format>', 'json, yaml or wide'),
  ).action(async (o) => {
    const format = parseOutput(o.output);
    const { items } = await (await client(o)).call<{ items: FunctionView[] }>('GET', '/v1/functions');
    if (format === 'json' || format === 'yaml') return out(structured({ items }, format));
    const headers = ['NAME', 'REVISION', 'URL', 'READY', 'INSTANCES', 'AGE', ...(format === 'wide' ? ['RESTARTS', 'LAST ERROR'] : [])];
    out(
      table(
        headers,
        items.map((f) => [
          f.name,
          f.servingRevision,
          f.url,
          f.ready ? 'True' : f.phase === 'failed' || f.phase === 'pending' ? 'False' : 'Unknown',
          `${f.readyInstances}/${f.desiredInstances}`,
          formatAge(f.ageMs),
          ...(format === 'wide' ? [String(f.restarts), f.lastError ?? ''] : []),
        ]),
      ),
    );
  });
  connectionOptions(
    get
      .command('revisions')
      .alias('revision')
      .alias('rev')
      .description('list revisions: NAME FUNCTION SERVING READY DIGEST AGE')
      .argument('[function]', 'only this function')
      .option('-o, --output <format>', 'json, yaml or wide'),
  ).action(async (fn: string | undefined, o) => {
    const format = parseOutput(o.output);
    const { items } = await (await client(o)).call<{ items: RevisionView[] }>('GET', `/v1/revisions${fn ? `?function=${encodeURIComponent(fn)}` : ''}`);
    if (format === 'json' || format === 'yaml') return out(structured({ items }, format));
    out(
      table(
        ['NAME', 'FUNCTION', 'SERVING', 'READY', 'DIGEST', 'AGE', ...(format === 'wide' ? ['SOURCE'] : [])],
        items.map((r) => [
          r.name,
          r.function,
          r.serving ? 'yes' : '',
          r.status ? (r.status.phase === 'ready' ? 'True' : r.status.phase) : '-',
          r.digest.slice(0, 12),
          formatAge(Date.now() - Date.parse(r.createdAt)),
          ...(format === 'wide' ? [r.source] : []),
        ]),
      ),
    );
  });

  connectionOptions(
    get
      .command('instances')
      .alias('instance')
      .alias('inst')
      .description("show a function's instances and the autoscaler's decisions: why the count is what it is")
      .argument('<function>', 'function name')
      .option('-w, --watch', 'keep printing each new decision and every change of instances')
      .option('--interval <duration>', 'with -w: how often to ask', '1s')
      .option('-o, --output <format>', 'json or yaml'),
  ).action(async (fn: string, o) => {
    const format = parseOutput(o.output);
    const api = await client(o);
    const path = (since: number) => `/v1/functions/${encodeURIComponent(fn)}/instances?since=${since}`;
    const first = await api.call<InstancesView>('GET', path(0));
    if (format === 'json' || format === 'yaml') return out(structured(first, format));
    const decisionRow = (d: InstancesView['decisions'][number]) => [
      new Date(d.at).toISOString().slice(11, 19),
      String(d.ready),
      String(d.desired),
      String(d.observedStable),
      String(d.observedPanic),
      String(d.queued),
      d.panic ? 'yes' : '',
      d.reason,
    ];
    const decisionHeaders = ['TIME', 'READY', 'DESIRED', 'STABLE', 'PANIC-WINDOW', 'QUEUED', 'PANIC', 'REASON'];
    const summary = (v: InstancesView) =>
      `${v.function} ${v.revision}: ${v.ready} ready, ${v.desired ?? '?'} desired${v.queued ? `, ${v.queued} requests waiting` : ''}${v.panic ? ', panic mode' : ''}`;
    const instanceLine = (v: InstancesView) => v.instances.map((i) => `${i.id} ${i.phase}`).join(', ') || 'no instances';
    out(summary(first));
    out(
      table(
        ['INSTANCE', 'PHASE', 'SINCE'],
        first.instances.map((i) => [i.id, i.phase, formatAge(Date.now() - Date.parse(i.since))]),
      ),
    );
    if (!o.watch) {
      if (first.decisions.length > 0) {
        out('');
        out(table(decisionHeaders, first.decisions.slice(-10).map(decisionRow)));
      }
      return;
    }
    const every = parseDuration(o.interval, '--interval');
    let seq = first.decisions.at(-1)?.seq ?? 0;
    let lastInstances = instanceLine(first);
    // Rows come one at a time: fixed column widths keep them under the header.
    const widths = decisionHeaders.map((h) => Math.max(h.length, 8));
    const row = (cells: string[]) =>
      cells
        .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0)))
        .join('  ')
        .trimEnd();
    out('');
    out(row(decisionHeaders));
    for (const d of first.decisions.slice(-10)) out(row(decisionRow(d)));
    let stop = false;
    process.once('SIGINT', () => {
      stop = true;
    });
    while (!stop) {
      await new Promise((r) => setTimeout(r, every));
      const v = await api.call<InstancesView>('GET', path(seq));
      for (const d of v.decisions) {
        out(row(decisionRow(d)));
        seq = d.seq;
      }
      const now = instanceLine(v);
      if (now !== lastInstances) {
        out(`  instances: ${now}`);
        lastInstances = now;
      }
    }
  });

  connectionOptions(
    prog
      .command('describe')
      .description("show a function (its revisions, settings, env names, status), or `describe route NAME` (its split and each backend's traffic)")
      .argument('<name>', 'function name, or the kind: function | route')
      .argument('[kindName]', 'with a kind: the name')
      .option('-o, --output <format>', 'json or yaml'),
  ).action(async (first: string, second: string | undefined, o) => {
    const format = parseOutput(o.output);
    const kind = second === undefined ? 'function' : first.toLowerCase().replace(/s$/, '');
    const name = second ?? first;
    if (kind === 'route') return describeRoute(await client(o), name, format);
    if (kind !== 'function') throw new TideError('ERR_INVALID_ARGUMENT', `describe takes function or route (got "${first}")`);
    const fn = await (await client(o)).call<FunctionView & { revisions: RevisionView[] }>('GET', `/v1/functions/${encodeURIComponent(name)}`);
    if (format === 'json' || format === 'yaml') return out(structured(fn, format));
    const lines = [
      `Name:        ${fn.name}`,
      `URL:         ${fn.url}/`,
      `Serving:     ${fn.servingRevision}${fn.servingRevision !== fn.latestRevision ? ` (latest is ${fn.latestRevision})` : ''}`,
      `Ready:       ${fn.ready ? 'True' : 'False'} (${fn.readyInstances}/${fn.desiredInstances} instances, ${fn.restarts} restarts)`,
      ...(fn.pending ? [`Scheduling:  ${fn.pending}`] : []),
      ...(fn.lastError ? [`Last error:  ${fn.lastError}`] : []),
      `Created:     ${fn.createdAt} (${formatAge(fn.ageMs)} ago)`,
      `Settings:    ${
        fn.config
          ? Object.entries(fn.config)
              .filter(([, v]) => typeof v !== 'object')
              .map(([k, v]) => `${k}=${v}`)
              .join(' ')
          : '-'
      }`,
      `Scaling:     ${fn.config?.scaling ? describeScaling(fn.config.scaling) : '-'}`,
      `Probes:      ${describeProbes(fn.config?.probes)}`,
      `Placement:   ${describePlacement(fn.config?.placement)}`,
      `Env:         ${fn.env.length ? fn.env.join(', ') : '-'}`,
      `Secrets:     ${fn.secrets.length ? fn.secrets.map((s) => `${s} (hidden)`).join(', ') : '-'}`,
      '',
      'Revisions:',
      table(
        ['  NAME', 'SERVING', 'READY', 'DIGEST', 'SOURCE', 'AGE'],
        fn.revisions.map((r) => [
          `  ${r.name}`,
          r.name === fn.servingRevision ? 'yes' : '',
          r.status?.phase ?? '-',
          r.digest.slice(0, 12),
          r.source,
          formatAge(Date.now() - Date.parse(r.createdAt)),
        ]),
      ),
    ];
    out(lines.join('\n'));
  });

  connectionOptions(prog.command('delete').description('delete a function and all its revisions').argument('<name>', 'function name')).action(
    async (name: string, o) => {
      const result = await (await client(o)).call<{ revisions: string[] }>('DELETE', `/v1/functions/${encodeURIComponent(name)}`);
      out(`Deleted ${name} (${result.revisions.length} revision${result.revisions.length === 1 ? '' : 's'}: ${result.revisions.join(', ')})`);
    },
  );

  connectionOptions(
    prog
      .command('rollback')
      .description('serve an older revision: the one before the serving one, or --to REVISION')
      .argument('<name>', 'function name')
      .option('--to <revision>', 'revision name or number to serve'),
  ).action(async (name: string, o) => {
    const r = await (await client(o)).call<{ from: string; to: string; url: string }>('POST', `/v1/functions/${encodeURIComponent(name)}/rollback`, {
      to: o.to,
    });
    out(`Rolled back ${name}: ${r.from} → ${r.to}`);
    out(`URL: ${r.url}/`);
  });

  connectionOptions(
    prog
      .command('logs')
      .description("print a function's console output (and instance events)")
      .argument('<name>', 'function name')
      .option('-f, --follow', 'keep printing new lines')
      .option('--tail <n>', 'lines of history to print first', integer('--tail', 0, 10000), 100)
      .option('--since <when>', 'only lines since then: a duration back from now (10m, 2h) or a time (2026-01-02T15:04:05Z)')
      .option('--revision <name>', 'only lines of this revision (NAME-0000N)')
      .option('-o, --output <format>', 'json prints the raw lines'),
  ).action(async (name: string, o) => {
    const raw = o.output === 'json';
    const api = await client(o);
    const ac = new AbortController();
    process.once('SIGINT', () => ac.abort());
    if (o.since !== undefined && !/^\d{4}-\d{2}-\d{2}T/.test(o.since)) parseDuration(o.since, '--since');
    const query = new URLSearchParams({ tail: String(o.tail) });
    if (o.follow) query.set('follow', '1');
    if (o.since) query.set('since', o.since);
    if (o.revision) query.set('revision', o.revision);
    const res = await api.raw('GET', `/v1/functions/${encodeURIComponent(name)}/logs?${query}`, undefined, ac.signal);
    if (!res.ok) {
      const e = ((await res.json()) as { error?: { code?: string; message?: string; hint?: string } }).error;
      throw new TideError('ERR_NOT_FOUND', e?.message ?? `the API answered ${res.status}`, { hint: e?.hint });
    }
    let buffered = '';
    const decoder = new TextDecoder();
    try {
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        buffered += decoder.decode(chunk, { stream: true });
        let nl = buffered.indexOf('\n');
        while (nl !== -1) {
          const line = buffered.slice(0, nl);
          buffered = buffered.slice(nl + 1);
          if (line) {
            if (raw) out(line);
            else {
              const l = JSON.parse(line) as { time: string; revision: string; level: string; message: string; requestId?: string };
              out(`${l.time} ${l.revision} ${l.level.toUpperCase().padEnd(6)} ${l.requestId ? `[${l.requestId}] ` : ''}${l.message}`);
            }
          }
          nl = buffered.indexOf('\n');
        }
      }
    } catch (err) {
      if (!ac.signal.aborted) throw err;
    }
  });

  accessCommands(prog);
  registerBench(prog, connectionOptions, out);
  registerDashboard(prog, connectionOptions, out);
  registerTraces(prog, connectionOptions, out);
  return prog;
}

interface TokenView {
  name: string;
  scope: string;
  createdAt: string;
  expiresAt: string | null;
  revokedAt: string | null;
}

type RootView = RootInfo;

/** "2025-03-01T12:00:00.000Z" → "2025-03-01 12:00Z"; null → "-". */
function when(iso: string | null | undefined): string {
  if (!iso) return '-';
  return `${iso.slice(0, 10)} ${iso.slice(11, 16)}Z`;
}

function rootsTable(roots: RootView[]): string {
  return table(
    ['FINGERPRINT (SHA-256)', 'SUBJECT', 'EXPIRES', 'STATUS'],
    roots.map((r) => [r.fingerprint256, r.subject, when(r.notAfter), r.current ? 'signing' : `trusted until ${when(r.trustedUntil)}`]),
  );
}

/** `tide token …` (API tokens with scopes) and `tide ca …` (the CA's trusted roots). */
function accessCommands(prog: Command): void {
  const token = prog
    .command('token')
    .description(
      'issue, list and revoke API tokens (needs an admin token, such as <data-dir>/token)\n\nScopes:\n  read     GET anything but tokens\n  deploy   read + deploy, apply, split, rollback, delete, rollouts\n  admin    everything, also tokens and CA rotation',
    );
  connectionOptions(
    token
      .command('create')
      .description('issue a token: prints it once (it is never stored or shown again); use it with --token or $TIDE_TOKEN')
      .argument('<name>', 'token name, a DNS label (lowercase letters, digits and -)')
      .addOption(new Option('--scope <scope>', 'what the token may do').choices(['read', 'deploy', 'admin']).makeOptionMandatory())
      .option('--ttl <duration>', 'lifetime, e.g. 30d, 12h, 90m or a number of seconds (default: no expiry)')
      .option('-o, --output <format>', 'json or yaml: {name, scope, token, expiresAt}'),
  ).action(async (name: string, o) => {
    const format = parseOutput(o.output);
    const created = await (await client(o)).call<{ name: string; scope: string; token: string; expiresAt: string | null }>('POST', '/v1/tokens', {
      name,
      scope: o.scope,
      ...(o.ttl === undefined ? {} : { ttl: o.ttl }),
    });
    if (format === 'json' || format === 'yaml') out(structured(created, format));
    // The token alone on stdout (TOKEN=$(tide token create …) works); the note on stderr.
    else out(created.token);
    process.stderr.write(
      `token ${created.name} (scope ${created.scope}, ${created.expiresAt ? `expires ${when(created.expiresAt)}` : 'no expiry'}) created.\n` +
        'Store it now: it is not shown again. Use it with --token or TIDE_TOKEN.\n',
    );
  });
  connectionOptions(
    token
      .command('list')
      .alias('ls')
      .description('list issued tokens: NAME SCOPE CREATED EXPIRES REVOKED (never the tokens themselves)')
      .option('-o, --output <format>', 'json or yaml'),
  ).action(async (o) => {
    const format = parseOutput(o.output);
    const { items } = await (await client(o)).call<{ items: TokenView[] }>('GET', '/v1/tokens');
    if (format === 'json' || format === 'yaml') return out(structured({ items }, format));
    const now = Date.now();
    out(
      table(
        ['NAME', 'SCOPE', 'CREATED', 'EXPIRES', 'REVOKED'],
        items.map((t) => [
          t.name,
          t.scope,
          when(t.createdAt),
          t.expiresAt ? `${when(t.expiresAt)}${Date.parse(t.expiresAt) <= now ? ' (expired)' : ''}` : 'never',
          when(t.revokedAt),
        ]),
      ),
    );
  });
  connectionOptions(
    token
      .command('revoke')
      .description('revoke a token: refused from the next request on. The record stays (listed, its name taken) unless --purge')
      .argument('<name>', 'token name')
      .option('--purge', 'also delete the record, so the name can be used again'),
  ).action(async (name: string, o) => {
    const r = await (await client(o)).call<TokenView & { purged: boolean }>('DELETE', `/v1/tokens/${encodeURIComponent(name)}${o.purge ? '?purge=true' : ''}`);
    out(r.purged ? `token ${r.name} revoked and its record deleted` : `token ${r.name} revoked at ${when(r.revokedAt)}`);
  });

  const ca = prog.command('ca').description("show or roll over the roots of Tide's certificate authority (the API's and the mesh's certificates come from it)");
  connectionOptions(
    ca
      .command('show')
      .description('list the trusted roots: the one that signs, and earlier ones still trusted during a roll-over')
      .option('-o, --output <format>', 'json or yaml'),
  ).action(async (o) => {
    const format = parseOutput(o.output);
    const { roots } = await (await client(o)).call<{ roots: RootView[] }>('GET', '/v1/ca');
    if (format === 'json' || format === 'yaml') return out(structured({ roots }, format));
    out(rootsTable(roots));
  });
  connectionOptions(
    ca
      .command('rotate')
      .description('make a new root that signs from now on; the old root stays trusted until the certificates it signed expire (needs an admin token)')
      .option('-o, --output <format>', 'json or yaml'),
  ).action(async (o) => {
    const format = parseOutput(o.output);
    const { roots } = await (await client(o)).call<{ roots: RootView[] }>('POST', '/v1/ca/rotate', {});
    if (format === 'json' || format === 'yaml') return out(structured({ roots }, format));
    out(rootsTable(roots));
    out('\nRotated. Copy <data-dir>/ca/bundle.pem again to machines that pass it with --cacert or TIDE_CA_CERT.');
  });
}

async function waitForSignal(close: () => Promise<void>): Promise<void> {
  await new Promise<void>((resolveSignal) => {
    let count = 0;
    const onSignal = (sig: NodeJS.Signals) => {
      count++;
      if (count > 1) {
        process.stderr.write(`tide: ${sig} again, exiting now\n`);
        process.exit(1);
      }
      process.stderr.write(`tide: ${sig}: draining in-flight requests (send again to exit now)\n`);
      close().then(resolveSignal, (err) => {
        process.stderr.write(`tide: shutdown failed: ${errorMessage(err)}\n`);
        process.exit(1);
      });
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  });
}

export async function main(argv: string[]): Promise<number> {
  const prog = program();
  try {
    await prog.parseAsync(argv);
    // A command may say "done, but not all is well" (`tide diff` with changes) through exitCode.
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help') return 0;
      return 2;
    }
    printError(err);
    return err instanceof TideError && err.code === 'ERR_INVALID_ARGUMENT' ? 2 : 1;
  }
}

function printError(err: unknown): void {
  if (err instanceof TideError) {
    process.stderr.write(`error: ${err.message}\n`);
    if (err.hint) process.stderr.write(`hint: ${err.hint}\n`);
  } else {
    process.stderr.write(`error: ${errorMessage(err)}\n`);
  }
  if (debug && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
}
