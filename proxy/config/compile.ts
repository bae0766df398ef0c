/**
 * Compiles a validated ProxyConfig into an immutable ProxySnapshot: the router, one layer
 * stack per route (fault → headers → timeout → split → retry → circuit/balance/endpoint,
 * built here once, never per request), the clusters and the listener settings. Everything
 * that can be wrong with a config that passed the schema (a backend naming no cluster, a bad
 * regular expression, a certificate that does not load) is found here, with the field's path,
 * before anything is swapped in.
 *
 * Clusters whose config did not change are taken over from the previous snapshot, so their
 * keep-alive pools survive a reload; the caller closes the ones left behind.
 */
import { readFileSync } from 'node:fs';
import { createSecureContext } from 'node:tls';
import type { ClusterConfig, ListenerConfig, ProxyConfig, RouteConfig } from '../../lib/config/proxy.ts';
import { parseDuration } from '../../lib/duration.ts';
import { TideError } from '../../lib/errors.ts';
import { compose, type Dispatch, type ProxyRequest } from '../http/types.ts';
import { faultLayer } from '../layers/fault.ts';
import { headersLayer, requestEditor } from '../layers/headers.ts';
import { directResponse, redirect } from '../layers/respond.ts';
import { RetryBudget, retryLayer } from '../layers/retry.ts';
import { splitDispatch } from '../layers/split.ts';
import { timeoutLayer } from '../layers/timeout.ts';
import type { ProxyMetrics, RouteMetrics } from '../metrics.ts';
import { type Router, TableRouter } from '../router/index.ts';
import { Cluster } from '../upstream/cluster.ts';

export interface CompiledRoute {
  virtualHost: string;
  name: string;
  dispatch: Dispatch;
  /** Bodies up to this size are read whole before dispatch so a retry can replay them (0: stream). */
  bufferBodyUpTo: number;
  /** For Upgrade requests (WebSocket): picks the cluster by weight; undefined for routes without backends. */
  upgradeCluster: (() => string) | undefined;
  metrics: RouteMetrics;
  /** The route timeout, ms; for upgrade requests it bounds the wait for the upstream's answer. */
  timeoutMs: number;
  /** The route's request rewrites and header edits, for upgrade requests (which skip the layers). */
  editRequest: ((req: ProxyRequest) => void) | undefined;
}

export interface TlsCertificate {
  cert: Buffer;
  key: Buffer;
  serverNames: string[];
}

export interface CompiledListener {
  config: ListenerConfig;
  certificates: TlsCertificate[];
  headersTimeoutMs: number;
  idleTimeoutMs: number;
  bodyTimeoutMs: number;
  /** A mesh (sidecar) listener: mutual TLS with workload certificates, and plaintext when allowed. */
  mesh?: MeshTls;
  /** Listen on this Unix socket instead of address:port (a function's way out to the mesh). */
  socketPath?: string;
}

/** How a mesh listener authenticates: see proxy/listener/listener.ts. */
export interface MeshTls {
  /** The context (certificate, key, trusted roots) to answer a handshake for this SNI name with; undefined refuses it. */
  contextFor(servername: string): import('node:tls').SecureContext | undefined;
  /** The key pair for clients that send no SNI (the gateway's); a new object after each renewal. */
  fallback(): { cert: string; key: string; ca: string } | undefined;
  /** Whether to accept a client whose verified certificate carries this SPIFFE ID (undefined: none, or more than one). */
  accept(peerId: string | undefined): boolean;
  /** Accept plaintext connections too; each request is then checked against its workload's mTLS mode. */
  plaintext: boolean;
  /** A refused handshake or peer, for metrics and logs. */
  onRefused?(reason: string): void;
}

export interface ProxySnapshot {
  version: number;
  router: Router<CompiledRoute>;
  clusters: Map<string, Cluster>;
  listeners: CompiledListener[];
  config: ProxyConfig;
  /** Requests routed on this snapshot and not finished (kept by the data plane). */
  inflight: number;
}

export interface Problem {
  path: string;
  message: string;
}

/** The most a retried request's body may be to be held in memory for replay. */
export const REPLAY_BODY_LIMIT = 64 * 1024;

/**
 * What is wrong with an endpoint address the schema's pattern let through: a port out of
 * range, a host the URL parser refuses (`ffff127.0.0.1`), or a name with an empty label or a
 * label over 63 characters. Caught here, it is a config error at its field instead of a
 * failure when the cluster starts. (Numeric shorthands such as `1.2.3` are taken as the
 * addresses they stand for, as every resolver does.)
 */
function addressProblem(address: string): string | undefined {
  const colon = address.lastIndexOf(':');
  const port = Number(address.slice(colon + 1));
  if (!Number.isInteger(port) || port < 1 || port > 65535) return `the port of "${address}" must be from 1 to 65535`;
  const host = address.slice(0, colon);
  if (!host.startsWith('[')) {
    const labels = (host.endsWith('.') ? host.slice(0, -1) : host).split('.');
    if (labels.some((l) => l === '' || l.length > 63 || l.startsWith('-') || l.endsWith('-')))
      return `"${address}" is not a valid host:port (a DNS label is 1 to 63 letters, digits and inner dashes)`;
  }
  try {
    const u = new URL(`http://${address}/`);
    if (u.port !== '' && Number(u.port) !== port) return `"${address}" is not a valid host:port`;
  } catch {
    return `"${address}" is not a valid host:port (a DNS name, an IPv4 address or [an IPv6 address], then :port)`;
  }
  return undefined;
}

/**
 * Throws ERR_CONFIG_INVALID with `details.problems` ({path, message}) when the config cannot
 * run. `previous` lends its unchanged clusters.
 */
export function compileSnapshot(config: ProxyConfig, version: number, metrics: ProxyMetrics, previous?: ProxySnapshot): ProxySnapshot {
  const problems: Problem[] = [];
  const listeners = compileListeners(config, problems);
  const clusterConfigs = new Map<string, ClusterConfig>();
  config.clusters.forEach((c, i) => {
    if (clusterConfigs.has(c.name)) problems.push({ path: `clusters[${i}].name`, message: `cluster "${c.name}" is defined twice` });
    clusterConfigs.set(c.name, c);
    c.endpoints.forEach((address, j) => {
      const problem = addressProblem(address);
      if (problem) problems.push({ path: `clusters[${i}].endpoints[${j}]`, message: problem });
    });
  });

  const vhNames = new Set<string>();
  config.virtualHosts.forEach((vh, i) => {
    if (vhNames.has(vh.name)) problems.push({ path: `virtualHosts[${i}].name`, message: `virtual host "${vh.name}" is defined twice` });
    vhNames.add(vh.name);
    const routeNames = new Set<string>();
    vh.routes.forEach((r, j) => {
      const at = `virtualHosts[${i}].routes[${j}]`;
      if (routeNames.has(r.name)) problems.push({ path: `${at}.name`, message: `route "${r.name}" is defined twice in virtual host "${vh.name}"` });
      routeNames.add(r.name);
      checkRoute(r, at, clusterConfigs, problems);
    });
  });
  // Validate the matches (regexes, domains) before building anything that holds sockets.
  tryRouter(config, () => ({}) as CompiledRoute, problems);
  if (problems.length > 0) throw invalid(problems);

  const clusters = new Map<string, Cluster>();
  for (const [name, c] of clusterConfigs) {
    const old = previous?.clusters.get(name);
    clusters.set(name, old && old.fingerprint === JSON.stringify(c) ? old : new Cluster(c, metrics));
  }
  const router = tryRouter(config, (vhName, r) => compileRoute(vhName, r, clusters, metrics), problems) as Router<CompiledRoute>;
  return { version, router, clusters, listeners, config, inflight: 0 };
}

function invalid(problems: Problem[]): TideError {
  return new TideError('ERR_CONFIG_INVALID', problems.map((p) => `${p.path}: ${p.message}`).join('\n'), { details: { problems } });
}

function tryRouter(config: ProxyConfig, build: (vh: string, r: RouteConfig) => CompiledRoute, problems: Problem[]): Router<CompiledRoute> | undefined {
  try {
    return new TableRouter(
      config.virtualHosts.map((vh) => ({
        name: vh.name,
        domains: vh.domains,
        routes: vh.routes.map((r) => ({ name: r.name, match: r.match, target: build(vh.name, r) })),
      })),
    );
  } catch (err) {
    if (err instanceof TideError && err.code === 'ERR_CONFIG_INVALID') {
      const field = String(err.details?.field ?? '');
      problems.push({ path: field, message: err.message.slice(field.length + 2) });
      return undefined;
    }
    throw err;
  }
}

function checkRoute(r: RouteConfig, at: string, clusters: Map<string, ClusterConfig>, problems: Problem[]): void {
  const actions = (['backends', 'redirect', 'directResponse'] as const).filter((k) => r[k] !== undefined);
  if (actions.length !== 1) {
    problems.push({
      path: at,
      message: `a route needs exactly one of backends, redirect, directResponse (has ${actions.length ? actions.join(', ') : 'none'})`,
    });
  }
  r.backends?.forEach((b, k) => {
    if (!clusters.has(b.cluster)) problems.push({ path: `${at}.backends[${k}].cluster`, message: `no cluster named "${b.cluster}"` });
  });
  if (r.backends?.every((b) => b.weight === 0)) problems.push({ path: `${at}.backends`, message: 'at least one backend needs a weight above 0' });
  if ((r.rewrite?.prefix !== undefined || r.redirect?.prefixRewrite !== undefined) && r.match.path?.prefix === undefined) {
    problems.push({ path: `${at}.match.path`, message: 'a prefix rewrite needs a path prefix match' });
  }
  if (r.sticky && !r.backends) problems.push({ path: `${at}.sticky`, message: 'sticky needs backends' });
  if (r.sticky && !r.sticky.header && !r.sticky.cookie) problems.push({ path: `${at}.sticky`, message: 'sticky needs a header or a cookie' });
  if (r.fault?.abort && r.fault.abort.status < 400)
    problems.push({ path: `${at}.fault.abort.status`, message: 'an injected abort must be a 4xx or 5xx status' });
}

function compileRoute(vh: string, r: RouteConfig, clusters: Map<string, Cluster>, metrics: ProxyMetrics): CompiledRoute {
  const prefix = r.match.path?.prefix;
  let inner: Dispatch;
  let bufferBodyUpTo = 0;
  if (r.directResponse) inner = directResponse(r.directResponse);
  else if (r.redirect) inner = redirect(r.redirect, prefix);
  else {
    const budget = r.retries ? new RetryBudget(r.retries.budget.ratio, r.retries.budget.minPerSecond) : undefined;
    if (r.retries && r.retries.attempts > 0) bufferBodyUpTo = REPLAY_BODY_LIMIT;
    const backends = (r.backends ?? []).map((b) => {
      const cluster = clusters.get(b.cluster) as Cluster;
      const clusterDispatch: Dispatch = (req, h) => cluster.dispatch(req, h);
      const retry = r.retries && budget ? retryLayer({ config: r.retries, cluster, budget, metrics }) : undefined;
      return { name: b.cluster, weight: b.weight, dispatch: retry ? retry(clusterDispatch) : clusterDispatch };
    });
    inner = compose([timeoutLayer(parseDuration(r.timeout, 'timeout'))], splitDispatch(backends, r.sticky));
  }
  const dispatch = compose([r.fault ? faultLayer(r.fault) : undefined, headersLayer(r, prefix)], inner);
  const live = (r.backends ?? []).filter((b) => b.weight > 0);
  const total = live.reduce((n, b) => n + b.weight, 0);
  const upgradeCluster =
    live.length === 0
      ? undefined
      : () => {
          let point = Math.random() * total;
          for (const b of live) {
            if (point < b.weight) return b.cluster;
            point -= b.weight;
          }
          return (live[live.length - 1] as { cluster: string }).cluster;
        };
  return {
    virtualHost: vh,
    name: r.name,
    dispatch,
    bufferBodyUpTo,
    upgradeCluster,
    metrics: metrics.route(vh, r.name),
    editRequest: requestEditor(r, prefix),
    timeoutMs: parseDuration(r.timeout, 'timeout'),
  };
}

function compileListeners(config: ProxyConfig, problems: Problem[]): CompiledListener[] {
  const names = new Set<string>();
  const binds = new Set<string>();
  return config.listeners.map((l, i) => {
    const at = `listeners[${i}]`;
    if (names.has(l.name)) problems.push({ path: `${at}.name`, message: `listener "${l.name}" is defined twice` });
    names.add(l.name);
    const bind = `${l.address}:${l.port}`;
    if (l.port !== 0 && binds.has(bind)) problems.push({ path: `${at}.port`, message: `another listener already binds ${bind}` });
    binds.add(bind);
    const certificates: TlsCertificate[] = [];
    const checkPair = (c: TlsCertificate, k: number) => {
      if (c.cert.length === 0 || c.key.length === 0) return;
      try {
        createSecureContext({ cert: c.cert, key: c.key });
      } catch (err) {
        problems.push({ path: `${at}.tls.certificates[${k}]`, message: `the certificate and key do not load: ${(err as Error).message}` });
      }
    };
    l.tls?.certificates.forEach((c, k) => {
      const read = (file: string, what: 'cert' | 'key') => {
        try {
          return readFileSync(file);
        } catch (err) {
          problems.push({ path: `${at}.tls.certificates[${k}].${what}`, message: `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? err}` });
          return Buffer.alloc(0);
        }
      };
      const pair = { cert: read(c.cert, 'cert'), key: read(c.key, 'key'), serverNames: c.serverNames ?? [] };
      checkPair(pair, k);
      certificates.push(pair);
    });
    return {
      config: l,
      certificates,
      headersTimeoutMs: parseDuration(l.limits.headersTimeout, 'headersTimeout'),
      idleTimeoutMs: parseDuration(l.limits.idleTimeout, 'idleTimeout'),
      bodyTimeoutMs: parseDuration(l.limits.bodyTimeout, 'bodyTimeout'),
    };
  });
}
