/**
 * The function gateway of `tide up`: the proxy data plane (the same listener, router, stacks,
 * metrics and error rescue as `tide proxy`) on a snapshot built from control's Snapshot.
 * `Host: NAME.<domain>` routes to the serving revision of function NAME, whose endpoint is a
 * set of sandbox instances on this node; unknown hosts get 404, bodies over the function's limit
 * 413. A revision with no free instance (scaled to zero, starting, at its concurrency limit)
 * gets its requests held by the activator until one is free. Every request is counted as
 * demand for its revision (the autoscaler's input). One access-log line per request.
 *
 * It reads only the snapshot and the endpoint resolver; it never writes state.
 */
import type { AddressInfo } from 'node:net';
import type { CustomRoute, RouteTarget, Snapshot } from '../control/snapshot/build.ts';
import { EMPTY_PROXY_CONFIG, type RetryConfig, type RouteConfig } from '../lib/config/proxy.ts';
import { parseDuration } from '../lib/duration.ts';
import { TideError } from '../lib/errors.ts';
import type { Logger } from '../lib/log.ts';
import { functionId, gatewayId, meshHost, parseId, parseMeshHost } from '../lib/spiffe.ts';
import type { Tracer } from '../lib/trace/tracer.ts';
import { FORWARDED_HOST_HEADER, REVISION_HEADER } from './cluster.ts';
import type { CompiledListener, CompiledRoute, ProxySnapshot } from './config/compile.ts';
import { FunctionMetrics, type TargetMetrics } from './function-metrics.ts';
import { compose, type Dispatch, type ProxyRequest, type ResponseControl, type ResponseHandler } from './http/types.ts';
import { type ActivatableEndpoint, Activator, type ActivatorHooks } from './layers/activator.ts';
import { Authorizer } from './layers/authz.ts';
import { type FaultConfig, faultLayer } from './layers/fault.ts';
import { headersLayer } from './layers/headers.ts';
import { RateLimiter, rateLimitLayer } from './layers/ratelimit.ts';
import { avoidTried, mirrorLayer, sandboxRetry } from './layers/sandbox-retry.ts';
import { splitDispatch } from './layers/split.ts';
import { timeoutLayer } from './layers/timeout.ts';
import { Listener } from './listener/listener.ts';
import { ProxyMetrics } from './metrics.ts';
import { Overload } from './overload.ts';
import { DataPlane } from './proxy.ts';
import { normalizeHost, TableRouter } from './router/index.ts';
import type { RouteMatch } from './router/router.ts';
import type { Identities } from './tls/identities.ts';

/** The part of a revision endpoint the gateway needs (runtime's RevisionEndpoint fits). */
export type Endpoint = ActivatableEndpoint;

/** Where the gateway reports demand per revision (the autoscaler, in `tide up`). */
export interface DemandSink extends ActivatorHooks {
  /** A request for `revision` arrived (before it waits or runs). */
  begin(revision: string): void;
  /** It ended, however it ended: with this status (an error's, or 499 when the client left) after `ms`. */
  end(revision: string, status?: number, ms?: number): void;
}

export interface GatewayOptions {
  /** Host suffix: NAME.<domain> routes to function NAME. Default "localhost". */
  domain?: string;
  /** The endpoint for a route: its revision, or while that starts, the function's previous ready one. */
  resolve: (target: RouteTarget) => Endpoint | undefined;
  /** Demand per revision, and requests for capacity. Default: counted nowhere. */
  demand?: DemandSink;
  /** Access log sink; one object per request. */
  access?: Logger;
  log: Logger;
  /** Largest request head, bytes (431 above). Default 16 KiB. */
  maxHeaderBytes?: number;
  /** Time allowed to receive a request's headers, ms (408 after). Default 10000. */
  headersTimeoutMs?: number;
  /** Idle keep-alive connection lifetime, ms. Default 5000. */
  keepAliveTimeoutMs?: number;
  /** SPIFFE trust domain: the gateway's identity and every function's. Default "tide.local". */
  trustDomain?: string;
  /** Workload certificates, for the mesh listener (`listenMesh`). */
  identities?: Identities;
  /** Traces requests (server spans here; execution, activator wait and cold-start spans inside) when set. */
  tracer?: Tracer;
}

export class Gateway {
  readonly #opts: GatewayOptions;
  readonly #suffix: string;
  readonly metrics = new ProxyMetrics();
  /** Function traffic by function, revision, route, method and code; activator waits. */
  readonly functionMetrics = new FunctionMetrics();
  /** Revision → its metrics, for the activator's waits. */
  readonly #byRevision = new Map<string, TargetMetrics>();
  readonly #plane: DataPlane;
  readonly #activator: Activator;
  readonly #demand: DemandSink;
  #listener: Listener | undefined;
  #mesh: Listener | undefined;
  #snapshotVersion = 0;
  readonly #trustDomain: string;
  /** The caller, as policies see it, of every request that comes in through the gateway's own listener. */
  readonly identity: string;
  readonly #limiter = new RateLimiter();
  readonly #overload = new Overload();
  #authz: Authorizer;
  /** Functions in the current snapshot: namespace/name. */
  #functions = new Set<string>();

  constructor(opts: GatewayOptions) {
    this.#opts = opts;
    this.#suffix = `.${(opts.domain ?? 'localhost').toLowerCase()}`;
    this.#plane = new DataPlane({ metrics: this.metrics, log: opts.log, access: opts.access, tracer: opts.tracer });
    // The overload policy with its defaults: shed with 503 while the heap is over 90% of its limit.
    this.#plane.overload = this.#overload;
    this.metrics.overload = this.#overload;
    this.#demand = opts.demand ?? { begin() {}, end() {}, activate() {} };
    this.#activator = new Activator({
      activate: (rev) => this.#demand.activate(rev),
      queued: (rev, depth) => this.#demand.queued?.(rev, depth),
      waited: (rev, seconds) => this.#byRevision.get(rev)?.wait.observe(seconds),
    });
    this.#trustDomain = opts.trustDomain ?? 'tide.local';
    this.identity = gatewayId(this.#trustDomain);
    this.#authz = new Authorizer([], this.#trustDomain, this.#limiter);
    this.#plane.apply(this.#compile([], 0));
  }

  /** Swaps in a new routing snapshot; requests already routed keep their target. */
  setSnapshot(snapshot: Snapshot): void {
    this.#authz = new Authorizer(snapshot.policies, this.#trustDomain, this.#limiter);
    this.#plane.apply(this.#compile([...snapshot.routes], snapshot.version, snapshot.custom));
    this.#snapshotVersion = snapshot.version;
    const fns = new Set([...snapshot.routes.values()].map((t) => `${t.namespace}/${t.function}`));
    const ids = this.#opts.identities;
    if (ids) {
      // The mesh listener answers for every function here, each under its own certificate.
      for (const key of fns) {
        const [ns, name] = key.split('/') as [string, string];
        if (!this.#functions.has(key)) void ids.ensure(functionId(this.#trustDomain, ns, name), [meshHost(ns, name)]).catch(() => {});
      }
      for (const key of this.#functions) {
        const [ns, name] = key.split('/') as [string, string];
        if (!fns.has(key)) ids.release(functionId(this.#trustDomain, ns, name));
      }
    }
    this.#functions = fns;
  }

  /** The mTLS mode of a function, by the current policies. */
  mtlsMode(namespace: string, name: string): 'STRICT' | 'PERMISSIVE' | 'DISABLE' {
    return this.#authz.mode(namespace, name);
  }

  /** The functions of the current snapshot, as "namespace/name". */
  get functions(): ReadonlySet<string> {
    return this.#functions;
  }

  /** True when a function of this name is in the current snapshot. */
  serves(namespace: string, name: string): boolean {
    return this.#functions.has(`${namespace}/${name}`);
  }

  get snapshotVersion(): number {
    return this.#snapshotVersion;
  }

  #compile(routes: [string, RouteTarget][], version: number, custom: readonly CustomRoute[] = []): ProxySnapshot {
    // Route resources first: their hosts (and TAG.<host>) win over a function's own host.
    const hosts: { name: string; domains: string[]; routes: { name: string; match: RouteMatch; target: CompiledRoute }[] }[] = [];
    const taken = new Set<string>();
    for (const r of custom) {
      const domains = (r.hosts ?? [`${r.name}${this.#suffix}`]).map((h) => h.toLowerCase()).filter((d) => !taken.has(d));
      if (domains.length === 0) continue;
      for (const d of domains) taken.add(d);
      hosts.push({
        name: `route:${r.name}`,
        domains,
        routes: r.rules
          .filter((rule) => rule.split.length > 0)
          .map((rule, i) => ({
            name: `rule-${i}`,
            match: (rule.match ?? {}) as RouteMatch,
            // The proxy's own layers, in its order: fault → headers → timeout → split.
            target: this.#route(
              `route:${r.name}`,
              compose(
                [
                  rule.rateLimit ? rateLimitLayer(this.#limiter, `route:${r.name}:${i}`, rule.rateLimit) : undefined,
                  rule.fault ? faultLayer(rule.fault as FaultConfig) : undefined,
                  headersLayer({ requestHeaders: rule.requestHeaders, responseHeaders: rule.responseHeaders } as RouteConfig, undefined),
                  rule.timeout ? timeoutLayer(parseDuration(rule.timeout, 'timeout')) : undefined,
                  rule.mirror ? mirrorLayer(rule.mirror.percent, this.#toFunction(rule.mirror.target)) : undefined,
                  rule.retries ? sandboxRetry(rule.retries as RetryConfig) : undefined,
                ],
                (() => {
                  const backends = rule.split.map((b) => ({ name: b.target.revision, weight: b.weight, dispatch: this.#toFunction(b.target) }));
                  const split = splitDispatch(backends, undefined);
                  return rule.retries ? avoidTried(backends, split) : split;
                })(),
              ),
              `rule-${i}`,
            ),
          })),
      });
      for (const { tag, target } of r.tags) {
        const tagged = domains.map((d) => `${tag}.${d}`).filter((d) => !taken.has(d));
        for (const d of tagged) taken.add(d);
        if (tagged.length > 0) {
          hosts.push({
            name: `route:${r.name}:${tag}`,
            domains: tagged,
            routes: [{ name: 'tag', match: {}, target: this.#route(`route:${r.name}:${tag}`, this.#toFunction(target), 'tag') }],
          });
        }
      }
    }
    for (const [name, target] of routes) {
      const domain = `${name}${this.#suffix}`;
      if (taken.has(domain)) continue;
      hosts.push({ name, domains: [domain], routes: [{ name: 'default', match: {}, target: this.#route(name, this.#toFunction(target)) }] });
    }
    // The mesh's names (NAME.NAMESPACE.svc.tide), one per function, reached through the mesh
    // listener only. A Route without hosts named after the function covers its mesh name too,
    // as it does NAME.<domain>; a Route with hosts of its own does not.
    const meshHosts: typeof hosts = [];
    for (const [name, target] of routes) {
      const route = custom.some((r) => r.name === name && r.hosts === undefined) ? hosts.find((h) => h.name === `route:${name}`) : undefined;
      const rules = route?.routes ?? [{ name: 'default', match: {}, target: this.#route(`mesh:${name}`, this.#toFunction(target)) }];
      meshHosts.push({
        name: `mesh:${name}`,
        domains: [meshHost(target.namespace, name)],
        routes: rules.map((r) => ({ ...r, target: { ...r.target, dispatch: meshOnly(r.target.dispatch) } })),
      });
    }
    hosts.push(...meshHosts);
    hosts.push({ name: '*', domains: ['*'], routes: [{ name: 'unknown', match: {}, target: this.#route('*', this.#unknown()) }] });
    return { version, router: new TableRouter(hosts), clusters: new Map(), listeners: [], config: EMPTY_PROXY_CONFIG, inflight: 0 };
  }

  #route(virtualHost: string, dispatch: Dispatch, routeName?: string): CompiledRoute {
    const name = routeName ?? (virtualHost === '*' ? 'unknown' : 'default');
    return {
      virtualHost,
      name,
      dispatch,
      bufferBodyUpTo: 0,
      upgradeCluster: undefined,
      metrics: this.metrics.route(virtualHost, name),
      editRequest: undefined,
      timeoutMs: 0,
    };
  }

  /** Requests the activator holds now. */
  get held(): number {
    return this.#activator.depth;
  }

  /** The endpoint layer of one function: policy, body limit, demand, the activator, the serving revision's instances. */
  #toFunction(target: RouteTarget): Dispatch {
    const authz = this.#authz;
    const active = authz.active(target.namespace, target.function);
    const metrics = this.functionMetrics.target(target.function, target.revision);
    this.#byRevision.set(target.revision, metrics);
    const send = (req: ProxyRequest, handler: ResponseHandler, pinned?: RouteTarget): void => {
      const endpoint = this.#opts.resolve(pinned ?? target);
      if (!endpoint) {
        handler.onError(new TideError('ERR_PROXY_NOT_READY', `${target.function} (revision ${target.revision}) has no ready instance yet`, { status: 503 }));
        return;
      }
      req.endpoint = endpoint.revision;
      this.#activator.send(endpoint, (pinned ?? target).revision, target, req, handler, () => send(req, handler, pinned));
    };
    return (req, handler) => {
      req.cluster = target.revision;
      const conn = req.conn;
      const mesh = conn.listener === 'mesh';
      if (mesh || active) {
        const denied = authz.check(target.namespace, target.function, {
          method: req.method,
          path: req.path,
          source: mesh ? conn.peer : this.identity,
          plaintext: mesh && conn.peer === undefined,
        });
        if (denied) {
          this.metrics.policyRefused(target.function, denied.code);
          handler.onError(denied);
          return;
        }
      }
      // A request an ingress gateway forwarded to this node (a cluster): the gateway chose the
      // revision; the client's Host comes back. Only Tide's own proxies may ask for that.
      let pinned: RouteTarget | undefined;
      const pin = req.headers[REVISION_HEADER];
      if (pin !== undefined) {
        delete req.headers[REVISION_HEADER];
        const host = req.headers[FORWARDED_HOST_HEADER];
        delete req.headers[FORWARDED_HOST_HEADER];
        if (mesh && conn.peer === this.identity) {
          if (pin !== target.revision) pinned = { ...target, revision: pin, fallback: false };
          if (host) req.host = host;
        }
      }
      const forwarded = pin !== undefined && mesh && conn.peer === this.identity;
      // The function learns who called it over the mesh, as Envoy's XFCC header says it; a
      // value the client sent itself is never passed on.
      if (mesh && conn.peer !== undefined && !forwarded) req.headers['x-forwarded-client-cert'] = `URI=${conn.peer}`;
      else if (req.headers['x-forwarded-client-cert'] !== undefined) delete req.headers['x-forwarded-client-cert'];
      if (req.contentLength > target.maxBodyBytes) {
        handler.onError(
          new TideError(
            'ERR_PAYLOAD_TOO_LARGE',
            `the request body (${req.contentLength} bytes) is over the limit of ${target.maxBodyBytes} bytes for ${target.function}`,
            { status: 413 },
          ),
        );
        return;
      }
      const revision = pinned?.revision ?? target.revision;
      // A forwarded request was counted as demand by the gateway that forwarded it.
      const demand = forwarded ? NO_DEMAND : this.#demand;
      demand.begin(revision);
      send(req, new Counted(handler, demand, revision, req, metrics), pinned);
    };
  }

  #unknown(): Dispatch {
    return (req, handler) => {
      const host = normalizeHost(req.host);
      const name = host.endsWith(this.#suffix) ? host.slice(0, -this.#suffix.length) : undefined;
      handler.onError(
        new TideError(
          'ERR_PROXY_NO_ROUTE',
          name && !name.includes('.')
            ? `no function named "${name}" is deployed here (host ${req.host})`
            : req.host === ''
              ? 'the request has no Host header'
              : `no function serves host ${req.host}; functions answer at NAME${this.#suffix}`,
          { status: req.host === '' ? 400 : 404 },
        ),
      );
    };
  }

  async listen(port: number, host: string): Promise<AddressInfo> {
    const listener = new Listener(this.#listenerConfig('gateway', port, host), this.#plane, this.metrics);
    const address = await listener.listen();
    this.#listener = listener;
    return address;
  }

  #listenerConfig(name: string, port: number, host: string): CompiledListener {
    return {
      config: {
        name,
        address: host,
        port,
        http2: true,
        limits: {
          maxHeaderBytes: this.#opts.maxHeaderBytes ?? 16 * 1024,
          maxHeaders: 100,
          // Each function's own limit is checked per route (413) and again by its sandbox.
          maxBodyBytes: 1024 * 1024 * 1024,
          headersTimeout: '10s',
          idleTimeout: '5s',
          bodyTimeout: '30s',
          maxConnections: 10_000,
        },
      },
      certificates: [],
      headersTimeoutMs: this.#opts.headersTimeoutMs ?? 10_000,
      idleTimeoutMs: this.#opts.keepAliveTimeoutMs ?? 5000,
      bodyTimeoutMs: 30_000,
    };
  }

  /**
   * The mesh listener (the node's sidecar, inbound): mutual TLS 1.3 where each function answers
   * under its own certificate (picked by SNI, its mesh host name) and callers prove theirs;
   * plaintext only while some Policy makes a function PERMISSIVE or DISABLE.
   */
  async listenMesh(port: number, host: string): Promise<AddressInfo> {
    const ids = this.#opts.identities;
    if (!ids) throw new TideError('ERR_INVALID_ARGUMENT', 'the mesh listener needs workload certificates (identities)');
    await ids.ensure(this.identity, ['localhost']);
    const td = this.#trustDomain;
    const self = this;
    const compiled: CompiledListener = {
      ...this.#listenerConfig('mesh', port, host),
      mesh: {
        contextFor: (servername) => {
          const fn = parseMeshHost(servername);
          return fn && this.serves(fn.namespace, fn.name) ? ids.get(functionId(td, fn.namespace, fn.name))?.context : undefined;
        },
        fallback: () => ids.get(this.identity),
        accept: (peer) => peer !== undefined && parseId(peer)?.trustDomain === td,
        get plaintext() {
          return self.#authz.plaintextAccepted;
        },
        onRefused: (reason) => this.metrics.handshakeRefused('mesh', reason),
      },
    };
    compiled.config.http2 = false;
    const listener = new Listener(compiled, this.#plane, this.metrics);
    const address = await listener.listen();
    this.#mesh = listener;
    return address;
  }

  /**
   * Graceful stop: stop accepting, let in-flight requests finish (up to `drainMs`), close
   * keep-alive connections as they go idle, then close whatever is left.
   */
  async close(drainMs = 30_000): Promise<void> {
    const l = this.#listener;
    this.#listener = undefined;
    const m = this.#mesh;
    this.#mesh = undefined;
    if (l || m) await Promise.all([l?.close(drainMs), m?.close(drainMs)]);
    this.#activator.close();
    await this.#plane.close();
    await this.#overload.close();
  }
}

const NO_DEMAND: DemandSink = { begin() {}, end() {}, activate() {} };

/** A mesh name reached through another listener is no route (the gateway does not expose the mesh). */
function meshOnly(dispatch: Dispatch): Dispatch {
  return (req, handler) => {
    if (req.conn.listener === 'mesh') dispatch(req, handler);
    else handler.onError(new TideError('ERR_PROXY_NO_ROUTE', `${req.host} is a mesh name; it is reached from functions only`, { status: 404 }));
  };
}

/** Reports the end of a request to the demand sink, once, however it ends. */
class Counted implements ResponseHandler {
  readonly #inner: ResponseHandler;
  readonly #demand: DemandSink;
  readonly #revision: string;
  readonly #req: ProxyRequest;
  readonly #metrics: TargetMetrics;
  readonly #started = performance.now();
  #status = 0;
  #open = true;

  constructor(inner: ResponseHandler, demand: DemandSink, revision: string, req: ProxyRequest, metrics: TargetMetrics) {
    this.#inner = inner;
    this.#demand = demand;
    this.#revision = revision;
    this.#req = req;
    this.#metrics = metrics;
  }

  onHeaders(status: number, headers: string[], contentLength: number, ctl: ResponseControl): void {
    this.#status = status;
    this.#inner.onHeaders(status, headers, contentLength, ctl);
  }

  onData(chunk: Buffer): boolean {
    return this.#inner.onData(chunk);
  }

  onEnd(): void {
    this.#done();
    this.#inner.onEnd();
  }

  onError(err: TideError): void {
    if (this.#status === 0) this.#status = err.status ?? 502;
    this.#done();
    this.#inner.onError(err);
  }

  #done(): void {
    if (!this.#open) return;
    this.#open = false;
    const now = performance.now();
    this.#demand.end(this.#revision, this.#status, now - this.#started);
    this.#metrics.count(this.#req.route ?? '', this.#req.method, this.#status, (now - this.#req.startedAt) / 1000);
  }
}
