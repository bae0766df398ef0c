/**
 * Where a revision runs in a cluster, for a gateway (or a node's egress) on another machine:
 * the nodes that registered (with their mesh listener's address) and how many ready instances
 * each reports per revision, both read from the store by watch. `endpoint(target)` gives the
 * gateway an endpoint that forwards over mutual TLS to the mesh listener of a node that runs the
 * revision; the node's sidecar dispatches it to a local instance of exactly that revision (the
 * split was decided here, once).
 *
 * A request that could not reach a node (connect refused, nothing sent) goes to the next node at
 * once; so does one the node answers with "no ready instance here" (it lost the instances a
 * moment ago), and a GET/HEAD/OPTIONS without a body whose connection broke mid-way. A node that
 * refused a connection is avoided for a few seconds, until its lease runs out and it leaves the
 * table. While no node has a ready instance the endpoint has no capacity, so the activator holds
 * requests until one has (a revision rescheduled after a node died, or woken from zero).
 */
import type { RouteTarget } from '../control/snapshot/build.ts';
import { TideError } from '../lib/errors.ts';
import { Informer } from '../lib/informer.ts';
import type { Logger } from '../lib/log.ts';
import { functionId, meshHost } from '../lib/spiffe.ts';
import type { ProxyRequest, ResponseControl, ResponseHandler } from './http/types.ts';
import type { ActivatableEndpoint } from './layers/activator.ts';
import { type Identities, meshClientTls } from './tls/identities.ts';
import { UpstreamEndpoint } from './upstream/endpoint.ts';

/** The header a gateway pins the revision with; a node's sidecar honours it from Tide's proxies only. */
export const REVISION_HEADER = 'x-tide-revision';
/** The Host the client used, carried across the mesh hop (the hop itself goes to the mesh name). */
export const FORWARDED_HOST_HEADER = 'x-tide-forwarded-host';

/** What the table reads: a Store's list and watch (any backend, or the cluster API's RemoteStore). */
interface StoreLike {
  list(prefix: string): Promise<{ items: { key: string; value: string }[]; revision: number }>;
  watch(prefix: string, afterRevision: number, listener: (events: unknown[]) => void, onError?: (err: Error) => void): { cancel(): void };
}

export interface ClusterRoutingOptions {
  store: StoreLike;
  /** Prefix of node records, and of revision statuses. */
  nodesPrefix: string;
  statusesPrefix: string;
  trustDomain: string;
  identities: Identities;
  /** The identity this proxy calls nodes with (Tide's proxies'). */
  identity: string;
  log: Logger;
  /** How long a node that refused a connection is avoided, ms. Default 3000. */
  avoidMs?: number;
}

interface NodeView {
  name: string;
  /** host:port of its mesh listener. */
  mesh: string;
}

interface Placement {
  node: NodeView;
  ready: number;
}

interface RevisionView {
  function: string;
  namespace: string;
  revision: string;
  placements: Placement[];
  updatedAt: string;
}

const RETRYABLE_ANSWERS = new Set(['ERR_PROXY_NOT_READY', 'ERR_PROXY_QUEUE_FULL', 'ERR_OVERLOADED', 'ERR_PROXY_OVERLOADED']);
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS']);

export class ClusterRouting {
  readonly #opts: ClusterRoutingOptions;
  readonly #informer: Informer;
  #revisions = new Map<string, RevisionView>();
  #nodes = new Map<string, NodeView>();
  readonly #upstreams = new Map<string, UpstreamEndpoint>();
  readonly #avoid = new Map<string, number>();
  readonly #listeners = new Set<() => void>();
  readonly #endpoints = new Map<string, RemoteEndpoint>();
  #version = 0;

  constructor(opts: ClusterRoutingOptions) {
    this.#opts = opts;
    this.#informer = new Informer(
      opts.store,
      [opts.nodesPrefix, opts.statusesPrefix],
      () => this.#refresh(),
      (err) => opts.log.warn({ err: String(err) }, 'cluster routing watch failed'),
    );
  }

  start(): Promise<void> {
    return this.#informer.start();
  }

  /** Bumped on every change of the table (for tests and waits). */
  get version(): number {
    return this.#version;
  }

  /** Nodes that registered, by name → mesh address. */
  get nodes(): ReadonlyMap<string, NodeView> {
    return this.#nodes;
  }

  /** Ready instances of `revision` per node. */
  ready(revision: string): Record<string, number> {
    const v = this.#revisions.get(revision);
    return Object.fromEntries((v?.placements ?? []).map((p) => [p.node.name, p.ready]));
  }

  async #refresh(): Promise<void> {
    const s = this.#opts.store;
    const [nodes, statuses] = await Promise.all([s.list(this.#opts.nodesPrefix), s.list(this.#opts.statusesPrefix)]);
    const byName = new Map<string, NodeView>();
    for (const kv of nodes.items) {
      try {
        const n = JSON.parse(kv.value) as { name: string; mesh?: string };
        if (n.mesh) byName.set(n.name, { name: n.name, mesh: n.mesh });
      } catch {}
    }
    const revisions = new Map<string, RevisionView>();
    for (const kv of statuses.items) {
      let st: { revision: string; node?: string; readyInstances: number; phase: string; updatedAt: string };
      try {
        st = JSON.parse(kv.value);
      } catch {
        continue;
      }
      // Only nodes that are registered now count: a dead node's reports do not.
      const node = st.node ? byName.get(st.node) : undefined;
      if (!node) continue;
      const fn = functionOf(st.revision);
      const ns = namespaceOf(kv.key, this.#opts.statusesPrefix);
      const view = revisions.get(st.revision) ?? { function: fn, namespace: ns, revision: st.revision, placements: [], updatedAt: st.updatedAt };
      if (st.phase === 'ready' && st.readyInstances > 0) view.placements.push({ node, ready: st.readyInstances });
      if (st.updatedAt > view.updatedAt) view.updatedAt = st.updatedAt;
      revisions.set(st.revision, view);
    }
    this.#nodes = byName;
    this.#revisions = revisions;
    this.#version++;
    // Pools to nodes that left are closed.
    const live = new Set([...byName.values()].map((n) => n.mesh));
    for (const [key, u] of this.#upstreams) {
      if (live.has(key.slice(0, key.indexOf('|')))) continue;
      this.#upstreams.delete(key);
      void u.close();
    }
    for (const cb of [...this.#listeners]) cb();
  }

  /**
   * The endpoint of a route's target: its revision wherever it runs; for a function's own host
   * while that revision has no ready instance anywhere, the function's newest revision that has.
   */
  endpoint(target: RouteTarget): ActivatableEndpoint {
    let revision = target.revision;
    if (target.fallback && !this.#hasReady(revision)) {
      let best: RevisionView | undefined;
      for (const v of this.#revisions.values()) {
        if (v.function !== target.function || v.namespace !== target.namespace || v.placements.length === 0) continue;
        if (!best || v.revision > best.revision) best = v;
      }
      if (best) revision = best.revision;
    }
    let e = this.#endpoints.get(revision);
    if (!e) {
      e = new RemoteEndpoint(this, revision, target.function, target.namespace);
      this.#endpoints.set(revision, e);
    }
    return e;
  }

  #hasReady(revision: string): boolean {
    return (this.#revisions.get(revision)?.placements.length ?? 0) > 0;
  }

  /** Nodes with ready instances of `revision`, best first (not avoided, then least busy). */
  candidates(revision: string, tried: ReadonlySet<string>): Placement[] {
    const now = Date.now();
    const list = (this.#revisions.get(revision)?.placements ?? []).filter((p) => !tried.has(p.node.mesh));
    const avoided = (p: Placement) => (this.#avoid.get(p.node.mesh) ?? 0) > now;
    return list.sort((a, b) => Number(avoided(a)) - Number(avoided(b)) || this.#load(a) - this.#load(b));
  }

  #load(p: Placement): number {
    let active = 0;
    for (const [key, u] of this.#upstreams) if (key.startsWith(`${p.node.mesh}|`)) active += u.active;
    return active / Math.max(1, p.ready);
  }

  avoid(mesh: string): void {
    this.#avoid.set(mesh, Date.now() + (this.#opts.avoidMs ?? 3000));
  }

  onChange(cb: () => void): () => void {
    this.#listeners.add(cb);
    return () => this.#listeners.delete(cb);
  }

  /** The pool to `mesh` for calls to function `fn` (its SNI name and identity). */
  upstream(mesh: string, namespace: string, fn: string): UpstreamEndpoint {
    const key = `${mesh}|${namespace}/${fn}`;
    let u = this.#upstreams.get(key);
    if (u) return u;
    const destId = functionId(this.#opts.trustDomain, namespace, fn);
    const servername = meshHost(namespace, fn);
    const ids = this.#opts.identities;
    const self = this.#opts.identity;
    u = new UpstreamEndpoint(mesh, {
      connections: 256,
      connectTimeoutMs: 2000,
      client: 'tide',
      tls: () => meshClientTls(ids, self, servername, destId),
    });
    this.#upstreams.set(key, u);
    return u;
  }

  async close(): Promise<void> {
    this.#informer.close();
    await Promise.all([...this.#upstreams.values()].map((u) => u.close()));
    this.#upstreams.clear();
  }
}

/** One revision, cluster-wide: forwards to a node that runs it. */
class RemoteEndpoint implements ActivatableEndpoint {
  readonly revision: string;
  readonly function: string;
  readonly namespace: string;
  readonly stopped = false;
  readonly lastStart = undefined;
  readonly #routing: ClusterRouting;

  constructor(routing: ClusterRouting, revision: string, fn: string, namespace: string) {
    this.#routing = routing;
    this.revision = revision;
    this.function = fn;
    this.namespace = namespace;
  }

  hasCapacity(): boolean {
    return this.#routing.candidates(this.revision, new Set()).length > 0;
  }

  onCapacity(cb: () => void): () => void {
    return this.#routing.onChange(() => {
      if (this.hasCapacity()) cb();
    });
  }

  dispatch(): Promise<void> {
    return Promise.reject(new TideError('ERR_PROXY_NOT_READY', `revision ${this.revision} runs on other nodes; it is reached by forwarding`, { status: 503 }));
  }

  /** Sends `req` to a node that runs the revision; tries the others when that one cannot take it. */
  forward(req: ProxyRequest, handler: ResponseHandler): void {
    const originalHost = req.host;
    req.headers[REVISION_HEADER] = this.revision;
    req.headers[FORWARDED_HOST_HEADER] = originalHost;
    req.host = meshHost(this.namespace, this.function);
    const tried = new Set<string>();
    const attempt = () => {
      const [first, ...rest] = this.#routing.candidates(this.revision, tried);
      if (!first) {
        handler.onError(new TideError('ERR_PROXY_NOT_READY', `revision ${this.revision} has no ready instance on any node`, { status: 503 }));
        return;
      }
      tried.add(first.node.mesh);
      const more = rest.length > 0 && req.aborted === undefined;
      const retryable = (why: 'connect' | 'reset' | 'answer') =>
        more && (why === 'connect' || (why === 'answer' ? bodiless(req) : bodiless(req) && IDEMPOTENT.has(req.method)));
      const upstream = this.#routing.upstream(first.node.mesh, this.namespace, this.function);
      req.endpoint = first.node.name;
      upstream.dispatch(
        req,
        new Attempt(handler, retryable, (why) => {
          if (why === 'connect') this.#routing.avoid(first.node.mesh);
          req.attempts++;
          attempt();
        }),
        () => {},
      );
    };
    attempt();
  }
}

/** A request with no body to send again (or one held whole in memory). */
function bodiless(req: ProxyRequest): boolean {
  return req.body === null || Buffer.isBuffer(req.body);
}

/** One try at one node: passes the answer on, or asks for the next node when this one could not take it. */
class Attempt implements ResponseHandler {
  readonly #inner: ResponseHandler;
  readonly #retryable: (why: 'connect' | 'reset' | 'answer') => boolean;
  readonly #again: (why: 'connect' | 'reset' | 'answer') => void;
  #swallow = false;
  #started = false;

  constructor(inner: ResponseHandler, retryable: (why: 'connect' | 'reset' | 'answer') => boolean, again: (why: 'connect' | 'reset' | 'answer') => void) {
    this.#inner = inner;
    this.#retryable = retryable;
    this.#again = again;
  }

  onHeaders(status: number, headers: string[], contentLength: number, ctl: ResponseControl): void {
    if (status === 503 && this.#retryable('answer')) {
      for (let i = 0; i + 1 < headers.length; i += 2) {
        if (headers[i]?.toLowerCase() === 'tide-proxy-error' && RETRYABLE_ANSWERS.has(headers[i + 1] ?? '')) {
          this.#swallow = true;
          return;
        }
      }
    }
    this.#started = true;
    this.#inner.onHeaders(status, headers, contentLength, ctl);
  }

  onData(chunk: Buffer): boolean {
    return this.#swallow ? true : this.#inner.onData(chunk);
  }

  onEnd(): void {
    if (this.#swallow) this.#again('answer');
    else this.#inner.onEnd();
  }

  onError(err: TideError): void {
    if (!this.#started && !this.#swallow) {
      const why = err.code === 'ERR_PROXY_CONNECT' ? 'connect' : err.code === 'ERR_PROXY_RESET' ? 'reset' : undefined;
      if (why && this.#retryable(why)) {
        this.#again(why);
        return;
      }
    }
    if (this.#swallow) {
      // The refused answer's body broke off: the next node is still the thing to try.
      this.#again('answer');
      return;
    }
    this.#inner.onError(err);
  }
}

function functionOf(revision: string): string {
  const dash = revision.lastIndexOf('-');
  return dash === -1 ? revision : revision.slice(0, dash);
}

function namespaceOf(key: string, prefix: string): string {
  // Statuses live at <prefix><namespace>/<revision>/<node> (prefix is /tide/status/revisions/ for all namespaces).
  const rest = key.slice(prefix.length);
  const slash = rest.indexOf('/');
  return slash === -1 ? 'default' : rest.slice(0, slash);
}
