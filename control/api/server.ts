/**
 * The control API: HTTP + JSON on Web Request/Response, over HTTPS when given a certificate,
 * behind bearer tokens. The CLI and the dashboard talk to it; it reads and writes the Store
 * through Functions and never touches the request path. Errors become JSON
 * `{error: {code, message, hint}}` here and only here.
 *
 * Every request is authenticated first (TokenStore, or the one root token), then matched to a
 * route, then checked against the scope that route declares: `#route()` takes the scope as a
 * required argument, so no endpoint exists without one. read = GET; deploy = changes to
 * functions, routes and rollouts; admin = tokens and the CA.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { createSecureContext } from 'node:tls';
import { type Clock, systemClock } from '../../lib/clock.ts';
import { parseDuration } from '../../lib/duration.ts';
import { errorMessage, isTideError, TideError } from '../../lib/errors.ts';
import type { Logger } from '../../lib/log.ts';
import { listen } from '../../lib/net.ts';
import type { TraceQuery } from '../../lib/trace/store.ts';
import type { TrafficSummary } from '../analysis/stats.ts';
import { dashboardAsset, isDashboardAsset } from '../dashboard/assets.ts';
import { dashboardView, type FunctionViewLike, type RouteViewLike, type SeriesSource } from '../dashboard/view.ts';
import type { DeployInput, Functions } from './functions.ts';
import type { ApplyItem, Resources } from './resources.ts';
import type { FunctionRecord, RevisionRecord, RevisionStatus } from './schema/function.ts';
import { routedRevisions } from './schema/route.ts';
import { isScope, type Principal, ROOT_TOKEN_NAME, type Scope, scopeAllows, type TokenStore } from './tokens.ts';
import { traceQuery } from './traces.ts';

/** What the autoscaler tells about a revision (control/autoscaler's Autoscaler fits). */
export interface ScalingSource {
  decisions(revision: string, since?: number): unknown[];
  /** Scales every serving revision of a function to zero now (for cold-start measurements). */
  zero?(fn: string): Promise<string[]>;
  describe(revision: string): { desired: number | undefined; ready: number; queued: number; panic: boolean } | undefined;
}

/** Where function logs come from (the node agent's log sink). */
export interface LogSource {
  tail(fn: string, lines: number): Promise<LogLine[]>;
  /** Calls `listener` for every new line of `fn` until the returned function is called. */
  follow(fn: string, listener: (line: LogLine) => void): () => void;
}

export interface LogLine {
  time: string;
  function: string;
  revision: string;
  instance: string;
  level: string;
  message: string;
  /** The request the line was printed for (x-request-id), when the sandbox knows it. */
  requestId?: string;
  /** The trace the request belongs to, when it was traced. */
  traceId?: string;
}

/** A server certificate for the API: PEM; `cert` may hold the chain after the leaf. */
export interface ApiCertificate {
  cert: string;
  key: string;
}

/** The certificate authority, for `GET /v1/ca` and `POST /v1/ca/rotate` (control/ca's CertificateAuthority fits). */
export interface CaSource {
  roots(): unknown[];
  rotate(): Promise<unknown[]>;
}

export interface ApiOptions {
  functions: Functions;
  logs: LogSource;
  /**
   * The one bearer token (admin), used when `tokens` is not given. With `tokens`, ignored:
   * the TokenStore holds the root token.
   */
  token?: string;
  /** Issued tokens with scopes, revocation and the root token. Default: only `token`, as admin. */
  tokens?: TokenStore;
  /** Serve HTTPS (TLS 1.2 or newer) with this certificate instead of HTTP. See `setCertificate()`. */
  tls?: ApiCertificate;
  /** The CA, for `/v1/ca`. Default: none (those endpoints answer 404). */
  ca?: CaSource;
  log: Logger;
  /** Public base URL of a function, e.g. name => http://name.localhost:8080 */
  functionUrl: (name: string) => string;
  /** How long a deploy waits for its revision to be ready, ms. */
  deployWaitMs?: number;
  /** Largest API request body (a deploy carries the bundle), bytes. */
  maxBodyBytes?: number;
  clock?: Clock;
  info?: Record<string, unknown>;
  /**
   * Resolves once the data plane routes by a snapshot at least as new as `storeRevision`, so
   * that a deploy or rollback that returned is already what clients get. Default: no wait.
   */
  routed?: (storeRevision: number) => Promise<void>;
  /** The autoscaler, for `GET /v1/functions/NAME/instances`. */
  scaling?: ScalingSource;
  /** `POST /v1/apply`. */
  resources?: Resources;
  /** `GET /metrics`: Prometheus text of the whole process. */
  metrics?: () => string | Promise<string>;
  /** Progressive rollouts, for `/v1/rollouts/NAME`. */
  rollouts?: {
    status(name: string): Promise<unknown>;
    list(): Promise<unknown[]>;
    request(name: string, what: 'promote' | 'abort' | 'pause' | 'resume'): void;
  };
  /** Recent traces (lib/trace's TraceStore fits), for `GET /v1/traces` and `GET /v1/traces/ID`. */
  traces?: TraceSource;
  /** Per-revision traffic, for `GET /v1/routes`. */
  traffic?: { summary(revision: string, windowMs?: number): TrafficSummary };
  /** The dashboard's sampled series (control/dashboard/series.ts), for `GET /v1/dashboard`. Default: no series. */
  dashboard?: SeriesSource;
  /** `/v1/cluster/*` for nodes and gateways (control/cluster/api.ts); answers undefined for other paths. */
  cluster?: { handle(req: Request, url: URL): Promise<Response | undefined> };
}

/** The store of recent traces, as the API reads it. */
export interface TraceSource {
  list(q: TraceQuery): unknown[];
  get(traceId: string): unknown;
}

type Handler = (req: Request, params: Record<string, string>, url: URL, who: Principal) => Promise<Response>;

const MAX_API_BODY = 64 * 1024 * 1024;

export class ControlApi {
  readonly #opts: ApiOptions;
  readonly #routes: { method: string; pattern: RegExp; names: string[]; scope: Scope; handler: Handler }[] = [];
  readonly #clock: Clock;
  /** SHA-256 of `token`, for the single-token mode (no TokenStore). */
  readonly #rootHash: Buffer | undefined;
  #tls: ApiCertificate | undefined;
  #server: Server | HttpsServer | undefined;

  constructor(opts: ApiOptions) {
    if (!opts.tokens && !opts.token) throw new TideError('ERR_INVALID_ARGUMENT', 'the control API needs `token` (one admin token) or `tokens` (a TokenStore)');
    if (opts.tls) checkCertificate(opts.tls, 'tls');
    this.#opts = opts;
    this.#clock = opts.clock ?? systemClock;
    this.#rootHash = opts.token ? sha256(opts.token) : undefined;
    this.#tls = opts.tls;
    this.#route('GET', '/metrics', 'read', async () => {
      if (!opts.metrics) throw new TideError('ERR_NOT_FOUND', 'this API serves no metrics', { status: 404 });
      return new Response(await opts.metrics(), { status: 200, headers: { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' } });
    });
    this.#route('GET', '/v1/info', 'read', async () => json(200, { ...(opts.info ?? {}) }));
    this.#route('GET', '/v1/functions', 'read', async () => json(200, { items: await this.#views() }));
    this.#route('GET', '/v1/functions/:name', 'read', async (_r, p) => this.#describe(p.name ?? ''));
    this.#route('POST', '/v1/functions/:name/deploy', 'deploy', (r, p) => this.#deploy(r, p.name ?? ''));
    this.#route('POST', '/v1/functions/:name/rollback', 'deploy', (r, p) => this.#rollback(r, p.name ?? ''));
    this.#route('DELETE', '/v1/functions/:name', 'deploy', async (_r, p) => json(200, await opts.functions.delete(p.name ?? '')));
    this.#route('GET', '/v1/revisions', 'read', async (_r, _p, url) => this.#revisions(url.searchParams.get('function') ?? undefined));
    this.#route('GET', '/v1/functions/:name/logs', 'read', (r, p, url) => this.#logs(r, p.name ?? '', url));
    this.#route('GET', '/v1/functions/:name/instances', 'read', (_r, p, url) => this.#instances(p.name ?? '', url));
    this.#route('POST', '/v1/functions/:name/zero', 'deploy', async (_r, p) => {
      const fn = await this.#opts.functions.get(p.name ?? '');
      if (!this.#opts.scaling?.zero) throw new TideError('ERR_NOT_FOUND', 'this Tide cannot scale functions to zero on request', { status: 404 });
      return json(202, { revisions: await this.#opts.scaling.zero(fn.name), desired: 0 });
    });
    this.#route('POST', '/v1/apply', 'deploy', (r, _p, _u, who) => this.#apply(r, who));
    this.#route('GET', '/v1/routes', 'read', async () => json(200, { items: await this.#routeViews() }));
    this.#route('GET', '/v1/dashboard', 'read', async (_r, _p, url) =>
      json(
        200,
        dashboardView({
          functions: (await this.#views()) as FunctionViewLike[],
          routes: (await this.#routeViews()) as RouteViewLike[],
          revisions: await opts.functions.revisions(),
          statuses: await opts.functions.statuses(),
          ...(opts.dashboard ? { series: opts.dashboard } : {}),
          decisions: (rev) => opts.scaling?.decisions(rev) ?? [],
          since: Math.max(0, Number(url.searchParams.get('since')) || 0),
          now: this.#clock.now(),
        }),
      ),
    );
    this.#route('GET', '/v1/traces', 'read', async (_r, _p, url) => json(200, { items: this.#traceStore().list(traceQuery(url.searchParams)) }));
    this.#route('GET', '/v1/traces/:id', 'read', async (_r, p) => {
      const t = this.#traceStore().get(p.id ?? '');
      if (!t)
        throw new TideError('ERR_NOT_FOUND', `no trace ${p.id} is in the store (it keeps the most recent ones; it may have been sampled out or evicted)`, {
          status: 404,
        });
      return json(200, t);
    });
    this.#route('GET', '/v1/policies', 'read', async () => json(200, { items: (await this.#opts.resources?.policies()) ?? [] }));
    this.#route('GET', '/v1/rollouts', 'read', async () => json(200, { items: (await this.#opts.rollouts?.list()) ?? [] }));
    this.#route('GET', '/v1/rollouts/:name', 'read', async (_r, p) => json(200, await this.#rollout(p.name ?? '')));
    this.#route('POST', '/v1/rollouts/:name/:action', 'deploy', async (_r, p) => {
      const action = p.action;
      if (action !== 'promote' && action !== 'abort' && action !== 'pause' && action !== 'resume') {
        throw new TideError('ERR_NOT_FOUND', `no rollout action "${action}": use promote, abort, pause or resume`, { status: 404 });
      }
      const status = (await this.#rollout(p.name ?? '')) as { phase: string };
      if (status.phase !== 'Progressing')
        throw new TideError('ERR_BAD_REQUEST', `rollout ${p.name} has nothing in progress (it is ${status.phase})`, { status: 409 });
      this.#opts.rollouts?.request(p.name ?? '', action);
      return json(202, { requested: action });
    });
    this.#route('POST', '/v1/tokens', 'admin', (r, _p, _u, who) => this.#createToken(r, who));
    this.#route('GET', '/v1/tokens', 'admin', async () => json(200, { items: await this.#tokenStore().list() }));
    this.#route('DELETE', '/v1/tokens/:name', 'admin', async (_r, p, url, who) => {
      const purge = url.searchParams.get('purge') === 'true' || url.searchParams.get('purge') === '1';
      const name = p.name ?? '';
      const token = purge ? await this.#tokenStore().purge(name) : await this.#tokenStore().revoke(name);
      this.#opts.log.info({ token: name, by: who.name, purge }, purge ? 'api token purged' : 'api token revoked');
      return json(200, { ...token, purged: purge });
    });
    this.#route('GET', '/v1/ca', 'read', async () => json(200, { roots: this.#authority().roots() }));
    this.#route('POST', '/v1/ca/rotate', 'admin', async (_r, _p, _u, who) => {
      try {
        const roots = await this.#authority().rotate();
        this.#opts.log.info({ by: who.name }, 'ca rotated');
        return json(200, { roots });
      } catch (err) {
        // The CA refuses a roll-over it cannot do (a CA brought by the user): that is the caller's conflict, not a 500.
        if (isTideError(err, 'ERR_INVALID_ARGUMENT') && err.status === undefined)
          throw new TideError(err.code, err.message, { status: 409, hint: err.hint, cause: err });
        throw err;
      }
    });
  }

  /** The Web-standard entry point (also used directly by tests). */
  async handle(req: Request): Promise<Response> {
    const url = new URL(req.url);
    try {
      if (url.pathname === '/healthz') return json(200, { ok: true });
      // The dashboard's page and scripts hold no data: served without a token (its data comes from /v1/dashboard).
      if (isDashboardAsset(req.method, url.pathname)) return await dashboardAsset(url.pathname, req.method);
      // Cluster members (nodes, gateways) authenticate with the join token there.
      const member = this.#opts.cluster ? await this.#opts.cluster.handle(req, url) : undefined;
      if (member) return member;
      const who = await this.#authenticate(req);
      for (const r of this.#routes) {
        const m = r.pattern.exec(url.pathname);
        if (!m) continue;
        if (r.method !== req.method) continue;
        if (!scopeAllows(who.scope, r.scope)) {
          throw new TideError('ERR_FORBIDDEN', `token ${who.name} (scope ${who.scope}) may not ${req.method} ${url.pathname}: it needs scope ${r.scope}`, {
            status: 403,
            hint: `an admin can issue a token with that scope: tide token create NAME --scope ${r.scope}`,
          });
        }
        const params: Record<string, string> = {};
        r.names.forEach((n, i) => {
          params[n] = decodeURIComponent(m[i + 1] ?? '');
        });
        return await r.handler(req, params, url, who);
      }
      const known = this.#routes.some((r) => r.pattern.test(url.pathname));
      throw new TideError(
        known ? 'ERR_BAD_REQUEST' : 'ERR_NOT_FOUND',
        known ? `method ${req.method} not allowed on ${url.pathname}` : `no API endpoint ${url.pathname}`,
        {
          status: known ? 405 : 404,
        },
      );
    } catch (err) {
      return this.#error(err, req);
    }
  }

  /** Listens on HTTPS when the `tls` option was given, else on HTTP. */
  async listen(port: number, host: string): Promise<AddressInfo> {
    const onRequest = (req: IncomingMessage, res: ServerResponse) => void this.#serveNode(req, res);
    const server = this.#tls ? createHttpsServer({ cert: this.#tls.cert, key: this.#tls.key, minVersion: 'TLSv1.2' }, onRequest) : createServer(onRequest);
    this.#server = server;
    return listen(server, port, host);
  }

  /**
   * Swaps the server certificate (a renewal, or a new CA root): handshakes from now on get the
   * new one; open connections keep theirs. Only for an API started with the `tls` option.
   */
  setCertificate(c: ApiCertificate): void {
    if (!this.#tls) throw new TideError('ERR_INVALID_ARGUMENT', 'setCertificate: this control API serves plain HTTP (it was made without the tls option)');
    checkCertificate(c, 'setCertificate');
    this.#tls = { cert: c.cert, key: c.key };
    const server = this.#server;
    if (server && 'setSecureContext' in server) server.setSecureContext({ cert: c.cert, key: c.key, minVersion: 'TLSv1.2' });
  }

  async close(): Promise<void> {
    const server = this.#server;
    if (!server) return;
    this.#server = undefined;
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeIdleConnections();
      // Log streams (-f) stay open forever; end them.
      setTimeout(() => server.closeAllConnections(), 1000).unref();
    });
  }

  async #serveNode(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      const limit = this.#opts.maxBodyBytes ?? MAX_API_BODY;
      const declared = Number(req.headers['content-length'] ?? 0);
      if (declared > limit) {
        res.shouldKeepAlive = false;
        throw new TideError('ERR_PAYLOAD_TOO_LARGE', `request body of ${declared} bytes is over the API limit of ${limit}`, { status: 413 });
      }
      // API bodies are small JSON documents: read them whole (bounded) before handling, so an
      // early answer (401, 404) never leaves a half-read body on a keep-alive connection.
      const hasBody = req.method !== 'GET' && req.method !== 'HEAD';
      const body = hasBody ? await readBody(req, limit, res) : null;
      const ac = new AbortController();
      res.on('close', () => ac.abort());
      const request = new Request(`${this.#tls ? 'https' : 'http'}://${req.headers.host ?? 'localhost'}${req.url ?? '/'}`, {
        method: req.method ?? 'GET',
        headers: req.headers as Record<string, string>,
        body: body ? body.toString('utf8') : null,
        signal: ac.signal,
      });
      const response = await this.handle(request);
      res.writeHead(response.status, Object.fromEntries(response.headers));
      if (!response.body) {
        res.end();
        return;
      }
      const out = Readable.fromWeb(response.body as import('node:stream/web').ReadableStream);
      out.on('error', () => res.destroy());
      res.on('close', () => out.destroy());
      out.pipe(res);
    } catch (err) {
      const response = this.#error(err);
      if (res.headersSent) {
        res.destroy();
        return;
      }
      res.writeHead(response.status, Object.fromEntries(response.headers));
      res.end(await response.text());
    }
  }

  /** The trace store; 404 when this Tide traces nothing. */
  #traceStore(): TraceSource {
    if (!this.#opts.traces) throw new TideError('ERR_NOT_FOUND', 'tracing is off here (tide up --no-tracing)', { status: 404 });
    return this.#opts.traces;
  }

  /** Registers an endpoint and the scope a token needs to call it. */
  #route(method: string, path: string, scope: Scope, handler: Handler): void {
    if (!isScope(scope)) throw new TideError('ERR_INVALID_ARGUMENT', `route ${method} ${path} needs a scope: read, deploy or admin (got ${String(scope)})`);
    const names: string[] = [];
    const source = path.replace(/:([a-z]+)/g, (_m, n: string) => {
      names.push(n);
      return '([^/]+)';
    });
    this.#routes.push({ method, pattern: new RegExp(`^${source}$`), names, scope, handler });
  }

  async #authenticate(req: Request): Promise<Principal> {
    const header = req.headers.get('authorization') ?? '';
    const bearer = header.startsWith('Bearer ') ? header.slice(7).trim() : '';
    if (this.#opts.tokens) return this.#opts.tokens.authenticate(bearer);
    // Single-token mode: the one token is admin.
    if (this.#rootHash && bearer && timingSafeEqual(sha256(bearer), this.#rootHash)) return { name: ROOT_TOKEN_NAME, scope: 'admin' };
    throw new TideError('ERR_UNAUTHORIZED', header ? 'the API token is not valid' : 'the API needs a bearer token', {
      status: 401,
      hint: 'the CLI reads it from <data-dir>/token, written by `tide up`',
    });
  }

  #tokenStore(): TokenStore {
    if (!this.#opts.tokens)
      throw new TideError('ERR_NOT_FOUND', 'this Tide does not issue API tokens: it takes only the one token in <data-dir>/token', { status: 404 });
    return this.#opts.tokens;
  }

  #authority(): CaSource {
    if (!this.#opts.ca)
      throw new TideError('ERR_NOT_FOUND', 'this Tide runs no certificate authority, so there are no CA roots to show or rotate', { status: 404 });
    return this.#opts.ca;
  }

  async #createToken(req: Request, who: Principal): Promise<Response> {
    const body = await readJson(req);
    if (typeof body.name !== 'string') throw new TideError('ERR_BAD_REQUEST', 'a token needs "name", a DNS label', { status: 400 });
    if (!isScope(body.scope))
      throw new TideError('ERR_BAD_REQUEST', `a token needs "scope": read, deploy or admin (got ${JSON.stringify(body.scope ?? null)})`, { status: 400 });
    const ttl = body.ttl;
    if (ttl !== undefined && ttl !== null && typeof ttl !== 'string' && typeof ttl !== 'number')
      throw new TideError('ERR_BAD_REQUEST', '"ttl" must be a duration like "30d" or "12h", or a number of seconds', { status: 400 });
    const created = await this.#tokenStore().create({ name: body.name, scope: body.scope, ...(ttl == null ? {} : { ttl }), createdBy: who.name });
    this.#opts.log.info({ token: created.name, scope: created.scope, expiresAt: created.expiresAt, by: who.name }, 'api token created');
    return json(201, created);
  }

  async #deploy(req: Request, name: string): Promise<Response> {
    const started = performance.now();
    const body = await readJson(req);
    const bundle = typeof body.bundle === 'string' ? Buffer.from(body.bundle, 'base64') : undefined;
    const image = body.image as DeployInput['image'];
    if (!bundle && !image) throw new TideError('ERR_BAD_REQUEST', 'deploy needs "bundle" (base64 of the bundled module) or "image" ({path})', { status: 400 });
    const input: DeployInput = {
      name,
      ...(bundle ? { bundle } : {}),
      source: typeof body.source === 'string' ? body.source : image ? image.path : 'bundle.mjs',
      ...(image ? { image } : {}),
      env: body.env as Record<string, string> | undefined,
      secrets: body.secrets as Record<string, string> | undefined,
      config: body.config as DeployInput['config'],
      sandbox: body.sandbox as DeployInput['sandbox'],
      ...(typeof body.changeCause === 'string' ? { changeCause: body.changeCause } : {}),
    };
    const result = await this.#opts.functions.deploy(input);
    const status = await this.#opts.functions.waitReady(result.revision.name, this.#opts.deployWaitMs ?? 30_000);
    await this.#opts.routed?.(result.storeRevision);
    return json(result.created ? 201 : 200, {
      created: result.created,
      function: this.#view(result.function, [result.revision], new Map([[status.revision, status]])),
      revision: redact(result.revision),
      url: this.#opts.functionUrl(name),
      durationMs: Math.round(performance.now() - started),
    });
  }

  async #rollback(req: Request, name: string): Promise<Response> {
    const body = await readJson(req);
    const to = typeof body.to === 'string' ? body.to : undefined;
    const result = await this.#opts.functions.rollback(name, to);
    await this.#opts.functions.waitReady(result.to, this.#opts.deployWaitMs ?? 30_000);
    await this.#opts.routed?.(result.storeRevision);
    return json(200, { from: result.from, to: result.to, url: this.#opts.functionUrl(name) });
  }

  async #describe(name: string): Promise<Response> {
    const fn = await this.#opts.functions.get(name);
    const revisions = await this.#opts.functions.revisions(name);
    const statuses = await this.#opts.functions.statuses();
    return json(200, { ...this.#view(fn, revisions, statuses), revisions: revisions.map((r) => ({ ...redact(r), status: statuses.get(r.name) ?? null })) });
  }

  async #revisions(fn: string | undefined): Promise<Response> {
    const revisions = await this.#opts.functions.revisions(fn);
    const statuses = await this.#opts.functions.statuses();
    const functions = new Map((await this.#opts.functions.list()).map((f) => [f.name, f]));
    return json(200, {
      items: revisions.map((r) => ({
        ...redact(r),
        serving: functions.get(r.function)?.servingRevision === r.name,
        status: statuses.get(r.name) ?? null,
      })),
    });
  }

  async #rollout(name: string): Promise<unknown> {
    const status = await this.#opts.rollouts?.status(name);
    if (!status) throw new TideError('ERR_NOT_FOUND', `no rollout named "${name}" (or it has not started watching yet)`, { status: 404 });
    return status;
  }

  /** Routes with, per backend, the revision it means now and its traffic over the last minute. */
  async #routeViews(): Promise<unknown[]> {
    const routes = await this.#opts.functions.routes();
    const fns = new Map((await this.#opts.functions.list()).map((f) => [f.name, f]));
    const stats = (rev: string | undefined) => (rev && this.#opts.traffic ? this.#opts.traffic.summary(rev) : null);
    return routes.map((r) => ({
      name: r.name,
      hosts: r.spec.hosts ?? null,
      rules: r.spec.rules.map((rule) => ({
        match: rule.match ?? null,
        split: rule.split.map((b) => {
          const revision = b.revision ?? (b.function ? fns.get(b.function)?.servingRevision : undefined);
          return { ...b, resolved: revision ?? null, traffic: stats(revision) };
        }),
      })),
      tags: Object.entries(r.spec.tags ?? {}).map(([tag, revision]) => ({ tag, revision, traffic: stats(revision) })),
    }));
  }

  /** Applies a set of resources at once (see resources.ts); waits until new revisions serve. */
  async #apply(req: Request, who: Principal): Promise<Response> {
    const resources = this.#opts.resources;
    if (!resources) throw new TideError('ERR_NOT_FOUND', 'this Tide does not take apply', { status: 404 });
    const body = await readJson(req);
    if (!Array.isArray(body.items)) throw new TideError('ERR_BAD_REQUEST', 'apply needs "items", a list', { status: 400 });
    const items = (body.items as ApplyItem[]).map((it) =>
      it.kind === 'Function' && typeof (it.deploy as { bundle?: unknown }).bundle === 'string'
        ? { ...it, deploy: { ...it.deploy, bundle: Buffer.from((it.deploy as unknown as { bundle: string }).bundle, 'base64') } }
        : it,
    );
    const dryRun = body.dryRun === true || body.diff === true;
    // Policies decide who may call whom: writing one (or pruning one) takes scope admin.
    const admin = scopeAllows(who.scope, 'admin');
    if (!admin && !dryRun && items.some((it) => it.kind === 'Policy'))
      throw new TideError('ERR_FORBIDDEN', `token ${who.name} (scope ${who.scope}) may not apply a Policy: it needs scope admin`, { status: 403 });
    const out = await resources.apply(items, { dryRun, prune: body.prune === true, diff: body.diff === true, keepPolicies: !admin });
    // New revisions, and every revision a Route in this apply names, serve before this answers.
    const routed = dryRun ? [] : [...routedRevisions(items.flatMap((it) => (it.kind === 'Route' ? [it.spec] : [])))];
    for (const rev of new Set([...out.newRevisions, ...routed])) await this.#opts.functions.waitReady(rev, this.#opts.deployWaitMs ?? 30_000);
    // Whatever was written is what clients get once this answers.
    if (out.written) await this.#opts.routed?.(out.storeRevision);
    return json(200, { dryRun, results: out.results });
  }

  /** The serving revision's instances and the autoscaler's decisions after `?since=SEQ`. */
  async #instances(name: string, url: URL): Promise<Response> {
    const fn = await this.#opts.functions.get(name);
    const since = Number(url.searchParams.get('since') ?? 0);
    if (!Number.isInteger(since) || since < 0)
      throw new TideError('ERR_BAD_REQUEST', `since must be a decision number ≥ 0 (got ${url.searchParams.get('since')})`, { status: 400 });
    const revision = fn.servingRevision;
    const status = (await this.#opts.functions.statuses()).get(revision);
    const scaler = this.#opts.scaling?.describe(revision);
    const rev = await this.#opts.functions.getRevision(revision);
    return json(200, {
      function: name,
      revision,
      phase: status?.phase ?? 'pending',
      desired: scaler?.desired ?? status?.desiredInstances ?? null,
      ready: status?.readyInstances ?? 0,
      queued: scaler?.queued ?? 0,
      panic: scaler?.panic ?? false,
      scaling: rev?.config.scaling ?? null,
      instances: status?.instances ?? [],
      decisions: this.#opts.scaling?.decisions(revision, since) ?? [],
    });
  }

  async #logs(req: Request, name: string, url: URL): Promise<Response> {
    await this.#opts.functions.get(name);
    const tail = Math.min(Math.max(Number(url.searchParams.get('tail') ?? 100) || 0, 0), 10_000);
    const follow = url.searchParams.get('follow') === '1' || url.searchParams.get('follow') === 'true';
    // Filters: a revision, and lines since a time (RFC 3339, or a duration back from now: 10m).
    const revision = url.searchParams.get('revision') ?? undefined;
    const sinceParam = url.searchParams.get('since');
    let since = 0;
    if (sinceParam) {
      since = /^\d{4}-\d{2}-\d{2}T/.test(sinceParam) ? Date.parse(sinceParam) : this.#clock.now() - parseDuration(sinceParam, 'since');
      if (!Number.isFinite(since))
        throw new TideError('ERR_BAD_REQUEST', `since must be a time like 2026-01-02T15:04:05Z or a duration like 10m (got ${sinceParam})`, { status: 400 });
    }
    const keep = (l: LogLine) => (!revision || l.revision === revision) && (since === 0 || Date.parse(l.time) >= since);
    const filtered = revision !== undefined || since !== 0;
    const lines = (await this.#opts.logs.tail(name, filtered ? 10_000 : tail)).filter(keep).slice(-tail || undefined);
    const encoder = new TextEncoder();
    let stop: (() => void) | undefined;
    const stream = new ReadableStream<Uint8Array>({
      start: (controller) => {
        for (const line of lines) controller.enqueue(encoder.encode(`${JSON.stringify(line)}\n`));
        if (!follow) {
          controller.close();
          return;
        }
        stop = this.#opts.logs.follow(name, (line) => {
          if (!keep(line)) return;
          try {
            controller.enqueue(encoder.encode(`${JSON.stringify(line)}\n`));
          } catch {
            stop?.();
          }
        });
        req.signal.addEventListener('abort', () => stop?.(), { once: true });
      },
      cancel: () => stop?.(),
    });
    return new Response(stream, { status: 200, headers: { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' } });
  }

  async #views(): Promise<unknown[]> {
    const fns = await this.#opts.functions.list();
    const revisions = await this.#opts.functions.revisions();
    const statuses = await this.#opts.functions.statuses();
    return fns.map((fn) =>
      this.#view(
        fn,
        revisions.filter((r) => r.function === fn.name),
        statuses,
      ),
    );
  }

  #view(fn: FunctionRecord, revisions: RevisionRecord[], statuses: Map<string, RevisionStatus>) {
    const status = statuses.get(fn.servingRevision);
    const serving = revisions.find((r) => r.name === fn.servingRevision);
    return {
      name: fn.name,
      namespace: fn.namespace,
      servingRevision: fn.servingRevision,
      latestRevision: fn.latestRevision,
      url: this.#opts.functionUrl(fn.name),
      ready: status?.phase === 'ready',
      phase: status?.phase ?? 'pending',
      readyInstances: status?.readyInstances ?? 0,
      desiredInstances: status?.desiredInstances ?? serving?.config.scaling.initialScale ?? 0,
      restarts: status?.restarts ?? 0,
      lastError: status?.lastError ?? null,
      pending: status?.pending ?? null,
      createdAt: fn.createdAt,
      ageMs: this.#clock.now() - Date.parse(fn.createdAt),
      env: serving ? Object.keys(serving.env) : [],
      secrets: serving ? Object.keys(serving.secrets) : [],
      config: serving?.config ?? null,
    };
  }

  #error(err: unknown, req?: Request): Response {
    if (err instanceof TideError) {
      const status = err.status ?? 500;
      if (status >= 500) this.#opts.log.error({ err, url: req?.url }, 'api request failed');
      return json(status, { error: { code: err.code, message: err.message, hint: err.hint ?? null, ...(err.details ?? {}) } });
    }
    this.#opts.log.error({ err, url: req?.url }, 'api request failed');
    return json(500, { error: { code: 'ERR_INTERNAL', message: errorMessage(err), hint: null } });
  }
}

function sha256(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}

/** Fails early, naming `what`, when a certificate or key is not usable PEM (or they do not match). */
function checkCertificate(c: ApiCertificate, what: string): void {
  if (typeof c?.cert !== 'string' || typeof c.key !== 'string') throw new TideError('ERR_INVALID_ARGUMENT', `${what} needs cert and key, both PEM strings`);
  try {
    createSecureContext({ cert: c.cert, key: c.key });
  } catch (err) {
    throw new TideError('ERR_INVALID_ARGUMENT', `${what}: the API certificate and key cannot be used: ${errorMessage(err)}`, { cause: err });
  }
}

/** Secrets never leave the API: only their names do. */
function redact(r: RevisionRecord) {
  const { secrets, ...rest } = r;
  return { ...rest, secrets: Object.keys(secrets) };
}

/** Reads a request body up to `limit` bytes; past it, 413 and the connection is closed after the answer. */
async function readBody(req: IncomingMessage, limit: number, res: ServerResponse): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit) {
      res.shouldKeepAlive = false;
      throw new TideError('ERR_PAYLOAD_TOO_LARGE', `request body is over the API limit of ${limit} bytes`, { status: 413 });
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

async function readJson(req: Request): Promise<Record<string, unknown>> {
  const text = await req.text();
  if (!text) return {};
  try {
    const v = JSON.parse(text) as unknown;
    if (v && typeof v === 'object' && !Array.isArray(v)) return v as Record<string, unknown>;
  } catch {
    // fall through
  }
  throw new TideError('ERR_BAD_REQUEST', 'the request body must be a JSON object', { status: 400 });
}

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json' } });
}
