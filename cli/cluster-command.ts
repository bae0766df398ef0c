/**
 * The cluster commands' flags: `tide control`, `tide node`, `tide gateway` (cluster.ts runs them).
 * Secrets come from files or the environment, never from flags a `ps` could show.
 */
import { readFile } from 'node:fs/promises';
import { type Command, Option } from 'commander';
import { parseDuration } from '../lib/duration.ts';
import { errorMessage, TideError } from '../lib/errors.ts';
import { createLogger } from '../lib/log.ts';

const out = (s: string): void => {
  process.stdout.write(`${s}\n`);
};

/** A commander parser for an integer flag from `min` to `max`. */
export function integer(what: string, min: number, max: number) {
  return (value: string) => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < min || n > max)
      throw new TideError('ERR_INVALID_ARGUMENT', `${what} must be an integer from ${min} to ${max} (got "${value}")`);
    return n;
  };
}

function list(value: string, previous: string[] = []): string[] {
  return [
    ...previous,
    ...value
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean),
  ];
}

function labels(value: string, previous: Record<string, string> = {}): Record<string, string> {
  const eq = value.indexOf('=');
  if (eq <= 0) throw new TideError('ERR_INVALID_ARGUMENT', `--label must look like KEY=VALUE (got "${value}")`);
  return { ...previous, [value.slice(0, eq)]: value.slice(eq + 1) };
}

/** A secret from a file (--x-file) or an environment variable; undefined when neither is set. */
async function secret(file: string | undefined, env: string, what: string): Promise<string | undefined> {
  if (file) {
    const text = (
      await readFile(file, 'utf8').catch((err: unknown) => Promise.reject(new TideError('ERR_INVALID_ARGUMENT', `${what} ${file}: ${errorMessage(err)}`)))
    ).trim();
    if (text.length < 16) throw new TideError('ERR_INVALID_ARGUMENT', `${what} ${file} must hold a token of at least 16 characters`);
    return text;
  }
  const v = process.env[env]?.trim();
  return v ? v : undefined;
}

function logLevel(): Option {
  return new Option('--log-level <level>', 'log level of Tide itself (stderr)').choices(['debug', 'info', 'warn', 'error', 'silent']).default('info');
}

function memberOptions(cmd: Command): Command {
  return cmd
    .requiredOption('--control <urls>', 'control API URLs, comma-separated or repeated (every replica, for fail-over)', list)
    .option('--join-token-file <file>', "file with the cluster's join token (default $TIDE_JOIN_TOKEN); `tide control` writes it to <data-dir>/join-token")
    .option('--cacert <file>', "PEM bundle of the cluster's CA, which signs the control API's certificate (<control-data-dir>/ca/bundle.pem)")
    .option('--host <addr>', 'address to listen on', '127.0.0.1')
    .option('--drain <duration>', 'how long shutdown waits for in-flight requests', '30s')
    .addOption(logLevel());
}

async function joinToken(o: { joinTokenFile?: string }): Promise<string> {
  const t = await secret(o.joinTokenFile, 'TIDE_JOIN_TOKEN', '--join-token-file');
  if (!t) throw new TideError('ERR_INVALID_ARGUMENT', 'a cluster member needs the join token', { hint: 'pass --join-token-file FILE or set TIDE_JOIN_TOKEN' });
  return t;
}

async function run(start: () => Promise<{ close(): Promise<void> }>, waitForSignal: (close: () => Promise<void>) => Promise<void>): Promise<void> {
  const running = await start();
  await waitForSignal(() => running.close());
}

export function registerCluster(prog: Command, waitForSignal: (close: () => Promise<void>) => Promise<void>): void {
  prog
    .command('control')
    .description('run a control-plane replica of a cluster on etcd: the API everywhere; scheduler, autoscaler and rollouts on the elected leader')
    .requiredOption('--store <url>', 'the cluster store: etcd://HOST:PORT[,HOST:PORT…] (every etcd member)')
    .option('--data-dir <dir>', "this replica's own files: the CA's copy, bundles, tokens it writes for you", './.tide-control')
    .option('--host <addr>', 'address to listen on', '127.0.0.1')
    .option('--api-port <port>', 'control API port (HTTPS; 0 = any free port)', integer('--api-port', 0, 65535), 8081)
    .option('--advertise <url>', "URL nodes and other replicas reach this replica's API at (default https://<host>:<api-port>)")
    .option('--domain <domain>', 'functions answer at NAME.<domain> on the gateways', 'localhost')
    .option('--trust-domain <name>', 'SPIFFE trust domain of workload identities', 'tide.local')
    .option('--cert-ttl <duration>', 'lifetime of workload certificates; each is renewed at half life', '24h')
    .option('--leader-lease <seconds>', 'leader lease TTL: how long a dead leader keeps the role', integer('--leader-lease', 1, 60), 5)
    .option('--id <name>', 'replica name in the election (default host name and pid)')
    .option('--token-file <file>', 'file with the root API token (default $TIDE_TOKEN, else the cluster keeps one: <data-dir>/token)')
    .option('--join-token-file <file>', "file with the nodes' join token (default $TIDE_JOIN_TOKEN, else the cluster keeps one: <data-dir>/join-token)")
    .addOption(logLevel())
    .action(async (o) => {
      const { control } = await import('./cluster.ts');
      const log = createLogger({ level: o.logLevel });
      await run(async () => {
        const token = await secret(o.tokenFile, 'TIDE_TOKEN', '--token-file');
        const join = await secret(o.joinTokenFile, 'TIDE_JOIN_TOKEN', '--join-token-file');
        const r = await control(
          {
            store: o.store,
            dataDir: o.dataDir,
            host: o.host,
            apiPort: o.apiPort,
            advertise: o.advertise,
            domain: o.domain,
            trustDomain: o.trustDomain,
            certTtlMs: parseDuration(o.certTtl, '--cert-ttl'),
            leaseTtlSeconds: o.leaderLease,
            ...(o.id ? { id: o.id } : {}),
            ...(token ? { token } : {}),
            ...(join ? { joinToken: join } : {}),
          },
          log,
        );
        out(`Tide control replica ${r.id} is up. API ${r.apiUrl}; leader: ${r.election.leader?.id ?? 'none yet'}.`);
        return r;
      }, waitForSignal);
    });

  memberOptions(
    prog
      .command('node')
      .description('run a cluster node: the node agent (worker and container sandboxes) and its sidecar (the mesh listener, mutual TLS)')
      .option('--name <name>', "this node's name (default: the host name)")
      .option('--data-dir <dir>', 'bundles, logs and sockets of this node', './.tide-node')
      .option('--mesh-port <port>', 'mesh listener port (0 = any free port)', integer('--mesh-port', 0, 65535), 8082)
      .option('--advertise-mesh <host:port>', 'where gateways and other nodes reach the mesh listener (default <host>:<mesh-port>)')
      .option('--lease <seconds>', 'node lease TTL: how long after the node stops answering its instances move', integer('--lease', 1, 300), 10)
      .option('--memory <MiB>', 'memory the scheduler may place here (default: all of the machine)', integer('--memory', 1, 16_777_216))
      .option('--cpu <millicores>', 'CPU the scheduler may place here (default: 1000 per core)', integer('--cpu', 1, 16_000_000))
      .option('--label <KEY=VALUE>', 'a label functions can select (repeatable)', labels)
      .option('--warm-threads <n>', 'worker threads kept started for cold starts', integer('--warm-threads', 0, 64), 2),
  ).action(async (o) => {
    const { node } = await import('./cluster.ts');
    const log = createLogger({ level: o.logLevel });
    await run(async () => {
      const r = await node(
        {
          control: o.control,
          joinToken: await joinToken(o),
          ...(o.cacert ? { caFile: o.cacert } : {}),
          dataDir: o.dataDir,
          host: o.host,
          meshPort: o.meshPort,
          ...(o.advertiseMesh ? { advertiseMesh: o.advertiseMesh } : {}),
          ...(o.name ? { name: o.name } : {}),
          leaseTtlSeconds: o.lease,
          ...(o.memory ? { memoryMb: o.memory } : {}),
          ...(o.cpu ? { cpuMillis: o.cpu } : {}),
          labels: o.label ?? {},
          warmThreads: o.warmThreads,
          drainMs: parseDuration(o.drain, '--drain'),
        },
        log,
      );
      out(`Tide node is up. Mesh listener ${r.address}.`);
      return r;
    }, waitForSignal);
  });

  memberOptions(
    prog
      .command('gateway')
      .description("run a cluster's ingress gateway: routes NAME.<domain> to nodes that run the function, over mutual TLS")
      .option('-p, --port <port>', 'gateway port (0 = any free port)', integer('--port', 0, 65535), 8080),
  ).action(async (o) => {
    const { gateway } = await import('./cluster.ts');
    const log = createLogger({ level: o.logLevel });
    await run(async () => {
      const r = await gateway(
        {
          control: o.control,
          joinToken: await joinToken(o),
          ...(o.cacert ? { caFile: o.cacert } : {}),
          dataDir: '.',
          host: o.host,
          port: o.port,
          drainMs: parseDuration(o.drain, '--drain'),
        },
        log,
      );
      out(`Tide gateway is up at http://${r.address}.`);
      return r;
    }, waitForSignal);
  });
}
