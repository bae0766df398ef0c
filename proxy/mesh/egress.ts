/**
 * The mesh's way out of a function: each function on this node gets its own Unix socket, and
 * a request a function sends there (`fetch("http://orders.default.svc.tide/…")` inside the
 * sandbox goes there) leaves over mutual TLS under that function's identity, to the mesh
 * listener of the node that runs the destination. Which socket a request came in on is what
 * says who sent it. A container reaches only its own function's socket (mounted into it); a
 * worker thread runs in Tide's process and could open any socket on the node, so for worker
 * functions the identity is only as strong as the worker sandbox (docs/worker-sandbox.md).
 *
 * The client side checks the server's SPIFFE ID (it must be the destination function's), not
 * just the chain; the server side checks the caller's and applies the destination's policies.
 * A destination whose mTLS mode is DISABLE is called in plaintext. Connections are kept alive
 * per (caller, destination node, destination) pair, so the handshake cost is paid once.
 */
import { chmod, mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { EMPTY_PROXY_CONFIG } from '../../lib/config/proxy.ts';
import { TideError } from '../../lib/errors.ts';
import type { Logger } from '../../lib/log.ts';
import { hostPort } from '../../lib/net.ts';
import { functionId, meshHost, parseId, parseMeshHost } from '../../lib/spiffe.ts';
import type { Tracer } from '../../lib/trace/tracer.ts';
import type { CompiledRoute, ProxySnapshot } from '../config/compile.ts';
import type { Dispatch, ProxyRequest, ResponseHandler } from '../http/types.ts';
import type { MtlsMode } from '../layers/authz.ts';
import { Listener } from '../listener/listener.ts';
import { ProxyMetrics } from '../metrics.ts';
import { DataPlane } from '../proxy.ts';
import { TableRouter } from '../router/index.ts';
import { type Identities, meshClientTls } from '../tls/identities.ts';
import { UpstreamEndpoint } from '../upstream/endpoint.ts';

export interface EgressOptions {
  trustDomain: string;
  identities: Identities;
  /** Folder for the sockets (one per function). */
  dir: string;
  /** The mesh listener serving a function: for now, this node's. */
  locate(namespace: string, name: string): { host: string; port: number } | undefined;
  /** The destination's mTLS mode (DISABLE: plaintext). */
  mode(namespace: string, name: string): MtlsMode;
  log: Logger;
  /** Traces calls (a client span per call, child of the function's span) when set. */
  tracer?: Tracer;
}

export class Egress {
  readonly #opts: EgressOptions;
  readonly metrics = new ProxyMetrics();
  readonly #plane: DataPlane;
  readonly #listeners = new Map<string, { listener: Listener; path: string; ready: Promise<string> }>();
  readonly #endpoints = new Map<string, UpstreamEndpoint>();

  constructor(opts: EgressOptions) {
    this.#opts = opts;
    this.#plane = new DataPlane({ metrics: this.metrics, log: opts.log, tracer: opts.tracer, spanKind: 'client' });
    const route: CompiledRoute = {
      virtualHost: 'mesh',
      name: 'egress',
      dispatch: this.#dispatch(),
      bufferBodyUpTo: 0,
      upgradeCluster: undefined,
      metrics: this.metrics.route('mesh', 'egress'),
      editRequest: undefined,
      timeoutMs: 0,
    };
    const snapshot: ProxySnapshot = {
      version: 1,
      router: new TableRouter([{ name: 'mesh', domains: ['*'], routes: [{ name: 'egress', match: {}, target: route }] }]),
      clusters: new Map(),
      listeners: [],
      config: EMPTY_PROXY_CONFIG,
      inflight: 0,
    };
    this.#plane.apply(snapshot);
  }

  /** The socket of `name`'s way out, made on first use; its identity's certificate is issued then too. */
  open(namespace: string, name: string): Promise<string> {
    const key = `${namespace}/${name}`;
    const have = this.#listeners.get(key);
    if (have) return have.ready;
    const path = join(this.#opts.dir, `${namespace}.${name}.sock`);
    const l = this.#listen(namespace, name, path, async () => {
      await mkdir(this.#opts.dir, { recursive: true, mode: 0o755 });
    });
    this.#listeners.set(key, l);
    l.ready.catch(() => this.#listeners.delete(key));
    return l.ready;
  }

  /**
   * Another socket for `name`'s way out, at `path` (inside a container's own folder, which is
   * all a container can reach); the returned function closes it.
   */
  async attach(namespace: string, name: string, path: string): Promise<() => Promise<void>> {
    const l = this.#listen(namespace, name, path, async () => {});
    await l.ready;
    // The container's root is an unprivileged user on the host: it must be able to connect.
    await chmod(path, 0o666);
    return async () => {
      await l.listener.close(1000);
      await rm(path, { force: true });
    };
  }

  #listen(namespace: string, name: string, path: string, before: () => Promise<void>): { listener: Listener; path: string; ready: Promise<string> } {
    const listener = new Listener(
      {
        config: {
          name: `egress:${namespace}/${name}`,
          address: '',
          port: 0,
          http2: false,
          limits: {
            maxHeaderBytes: 16 * 1024,
            maxHeaders: 100,
            maxBodyBytes: 1024 * 1024 * 1024,
            headersTimeout: '10s',
            idleTimeout: '60s',
            bodyTimeout: '30s',
            maxConnections: 10_000,
          },
        },
        certificates: [],
        headersTimeoutMs: 10_000,
        idleTimeoutMs: 60_000,
        bodyTimeoutMs: 30_000,
        socketPath: path,
      },
      this.#plane,
      this.metrics,
    );
    const ready = (async () => {
      await before();
      await rm(path, { force: true });
      try {
        await Promise.all([listener.listen(), this.#opts.identities.ensure(functionId(this.#opts.trustDomain, namespace, name))]);
      } catch (err) {
        await listener.close(0).catch(() => {});
        await rm(path, { force: true });
        throw err;
      }
      return path;
    })();
    return { listener, path, ready };
  }

  /** Closes `name`'s socket (its last instance left this node). */
  async release(namespace: string, name: string): Promise<void> {
    const key = `${namespace}/${name}`;
    const l = this.#listeners.get(key);
    if (!l) return;
    this.#listeners.delete(key);
    await l.listener.close(1000);
    await rm(l.path, { force: true });
    const id = functionId(this.#opts.trustDomain, namespace, name);
    for (const [k, e] of this.#endpoints) {
      if (!k.startsWith(`${id}|`)) continue;
      this.#endpoints.delete(k);
      void e.close();
    }
  }

  #dispatch(): Dispatch {
    return (req: ProxyRequest, handler: ResponseHandler) => {
      const source = req.conn.listener.slice('egress:'.length);
      const slash = source.indexOf('/');
      const sourceId = functionId(this.#opts.trustDomain, source.slice(0, slash), source.slice(slash + 1));
      const dest = parseMeshHost(req.host);
      if (!dest) {
        handler.onError(new TideError('ERR_PROXY_NO_ROUTE', `the mesh serves hosts NAME.NAMESPACE.svc.tide only (got "${req.host}")`, { status: 404 }));
        return;
      }
      const at = this.#opts.locate(dest.namespace, dest.name);
      if (!at) {
        handler.onError(new TideError('ERR_PROXY_NO_ROUTE', `no function ${dest.name} in namespace ${dest.namespace}`, { status: 404 }));
        return;
      }
      const plaintext = this.#opts.mode(dest.namespace, dest.name) === 'DISABLE';
      const destId = functionId(this.#opts.trustDomain, dest.namespace, dest.name);
      const key = `${sourceId}|${at.host}:${at.port}|${destId}|${plaintext ? 'plain' : 'mtls'}`;
      let endpoint = this.#endpoints.get(key);
      if (!endpoint) {
        const servername = meshHost(dest.namespace, dest.name);
        const identities = this.#opts.identities;
        endpoint = new UpstreamEndpoint(hostPort(at.host, at.port), {
          connections: 256,
          connectTimeoutMs: 5000,
          client: 'tide',
          // The server must be the destination itself, by its SPIFFE ID.
          tls: plaintext ? undefined : () => meshClientTls(identities, sourceId, servername, destId),
        });
        this.#endpoints.set(key, endpoint);
      }
      req.cluster = dest.name;
      endpoint.dispatch(req, handler, () => {});
    };
  }

  /**
   * After a config change: closes the ways out of functions that are gone (`keep` holds
   * "namespace/name" of those that remain), and drops connection pools to destinations that
   * are gone or whose mTLS mode changed.
   */
  retain(keep: ReadonlySet<string>): void {
    for (const key of this.#listeners.keys()) {
      if (keep.has(key)) continue;
      const slash = key.indexOf('/');
      void this.release(key.slice(0, slash), key.slice(slash + 1));
    }
    for (const [key, e] of this.#endpoints) {
      const [, , destId, how] = key.split('|');
      const dest = parseId(destId ?? '');
      const gone = !dest || !keep.has(`${dest.namespace}/${dest.name}`);
      if (!gone && (this.#opts.mode(dest.namespace, dest.name) === 'DISABLE') === (how === 'plain')) continue;
      this.#endpoints.delete(key);
      void e.close();
    }
  }

  /** Sockets open now: function → path. */
  sockets(): Map<string, string> {
    return new Map([...this.#listeners].map(([k, v]) => [k, v.path]));
  }

  async close(): Promise<void> {
    const ls = [...this.#listeners.values()];
    this.#listeners.clear();
    await Promise.all(
      ls.map(async (l) => {
        await l.listener.close(1000);
        await rm(l.path, { force: true });
      }),
    );
    await Promise.all([...this.#endpoints.values()].map((e) => e.close()));
    this.#endpoints.clear();
    await this.#plane.close();
  }
}
