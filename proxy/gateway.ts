/**
 * The function gateway of `tide up`: the proxy data plane (the same listener, router, stacks,
 * metrics and error rescue as `tide proxy`) on a snapshot built from control's Snapshot.
 * `Host: NAME.<domain>` routes to the serving revision of function NAME, whose endpoint is a
 * set of sandbox instances on this node; unknown hosts get 404, revisions without a ready
 * instance 503, bodies over the function's limit 413. One access-log line per request.
 *
 * It reads only the snapshot and the endpoint resolver; it never writes state.
 */
import type { AddressInfo } from 'node:net';
import type { RouteTarget, Snapshot } from '../control/snapshot/build.ts';
import type { ProxyConfig } from '../lib/config/proxy.ts';
import { TideError } from '../lib/errors.ts';
import type { Logger } from '../lib/log.ts';
import type { CompiledListener, CompiledRoute, ProxySnapshot } from './config/compile.ts';
import type { Dispatch } from './http/types.ts';
import { dispatchToSandbox, type SandboxEndpoint } from './layers/sandbox.ts';
import { Listener } from './listener/listener.ts';
import { ProxyMetrics } from './metrics.ts';
import { DataPlane } from './proxy.ts';
import { normalizeHost, TableRouter } from './router/index.ts';

/** The part of a revision endpoint the gateway needs (runtime's RevisionEndpoint fits). */
export type Endpoint = SandboxEndpoint;

export interface GatewayOptions {
  /** Host suffix: NAME.<domain> routes to function NAME. Default "localhost". */
  domain?: string;
  /** The endpoint for a route: its revision, or while that starts, the function's previous ready one. */
  resolve: (target: RouteTarget) => Endpoint | undefined;
  /** Access log sink; one object per request. */
  access?: Logger;
  log: Logger;
  /** Largest request head, bytes (431 above). Default 16 KiB. */
  maxHeaderBytes?: number;
  /** Time allowed to receive a request's headers, ms (408 after). Default 10000. */
  headersTimeoutMs?: number;
  /** Idle keep-alive connection lifetime, ms. Default 5000. */
  keepAliveTimeoutMs?: number;
}

const EMPTY_CONFIG: ProxyConfig = { listeners: [], virtualHosts: [], clusters: [] };

export class Gateway {
  readonly #opts: GatewayOptions;
  readonly #suffix: string;
  readonly metrics = new ProxyMetrics();
  readonly #plane: DataPlane;
  #listener: Listener | undefined;
  #snapshotVersion = 0;

  constructor(opts: GatewayOptions) {
    this.#opts = opts;
    this.#suffix = `.${(opts.domain ?? 'localhost').toLowerCase()}`;
    this.#plane = new DataPlane({ metrics: this.metrics, log: opts.log, access: opts.access });
    this.#plane.apply(this.#compile([], 0));
  }

  /** Swaps in a new routing snapshot; requests already routed keep their target. */
  setSnapshot(snapshot: Snapshot): void {
    this.#plane.apply(this.#compile([...snapshot.routes], snapshot.version));
    this.#snapshotVersion = snapshot.version;
  }

  get snapshotVersion(): number {
    return this.#snapshotVersion;
  }

  #compile(routes: [string, RouteTarget][], version: number): ProxySnapshot {
    const hosts = routes.map(([name, target]) => ({
      name,
      domains: [`${name}${this.#suffix}`],
      routes: [{ name: 'default', match: {}, target: this.#route(name, this.#toFunction(target)) }],
    }));
    hosts.push({ name: '*', domains: ['*'], routes: [{ name: 'unknown', match: {}, target: this.#route('*', this.#unknown()) }] });
    return { version, router: new TableRouter(hosts), clusters: new Map(), listeners: [], config: EMPTY_CONFIG, inflight: 0 };
  }

  #route(virtualHost: string, dispatch: Dispatch): CompiledRoute {
    return {
      virtualHost,
      name: virtualHost === '*' ? 'unknown' : 'default',
      dispatch,
      bufferBodyUpTo: 0,
      upgradeCluster: undefined,
      metrics: this.metrics.route(virtualHost, virtualHost === '*' ? 'unknown' : 'default'),
      editRequest: undefined,
      timeoutMs: 0,
    };
  }

  /** The endpoint layer of one function: body limit, the serving revision's instances. */
  #toFunction(target: RouteTarget): Dispatch {
    return (req, handler) => {
      req.cluster = target.revision;
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
      const endpoint = this.#opts.resolve(target);
      if (!endpoint) {
        handler.onError(new TideError('ERR_PROXY_NOT_READY', `${target.function} (revision ${target.revision}) has no ready instance yet`, { status: 503 }));
        return;
      }
      req.endpoint = endpoint.revision;
      dispatchToSandbox(endpoint, req, handler);
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
    const compiled: CompiledListener = {
      config: {
        name: 'gateway',
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
    const listener = new Listener(compiled, this.#plane, this.metrics);
    const address = await listener.listen();
    this.#listener = listener;
    return address;
  }

  /**
   * Graceful stop: stop accepting, let in-flight requests finish (up to `drainMs`), close
   * keep-alive connections as they go idle, then close whatever is left.
   */
  async close(drainMs = 30_000): Promise<void> {
    const l = this.#listener;
    this.#listener = undefined;
    if (l) await l.close(drainMs);
    await this.#plane.close();
  }
}
