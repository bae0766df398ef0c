/**
 * The ingress gateway: an HTTP/1.1 listener that routes `Host: NAME.<domain>` to the serving
 * revision of function NAME (from the current Snapshot) and dispatches to that revision's
 * endpoint on this node. Unknown hosts get 404, revisions without a ready instance 503, bodies
 * over the route's limit 413, all through rescue.ts. One access-log line per request.
 *
 * It reads only the snapshot and the endpoint resolver; it never writes state.
 */
import { randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { RouteTarget, Snapshot } from '../control/snapshot/build.ts';
import { TideError } from '../lib/errors.ts';
import type { Logger } from '../lib/log.ts';
import { listen } from '../lib/net.ts';
import { rescue } from './rescue.ts';
import { normalizeHost, type Router, TableRouter } from './router/index.ts';

/** The part of a revision endpoint the gateway needs (runtime's RevisionEndpoint fits). */
export interface Endpoint {
  dispatch(req: IncomingMessage, res: ServerResponse, meta: { requestId: string; scheme: 'http' | 'https' }): Promise<void>;
}

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

export class Gateway {
  readonly #opts: GatewayOptions;
  readonly #suffix: string;
  readonly #idPrefix = randomBytes(4).toString('hex');
  #seq = 0;
  #snapshotVersion = 0;
  #router: Router<RouteTarget> = new TableRouter([]);
  #server: Server | undefined;
  #inflight = 0;

  constructor(opts: GatewayOptions) {
    this.#opts = opts;
    this.#suffix = `.${(opts.domain ?? 'localhost').toLowerCase()}`;
  }

  /** Swaps in a new routing snapshot; requests already routed keep their target. */
  setSnapshot(snapshot: Snapshot): void {
    // Compiled once per snapshot; requests only read it.
    const hosts = [...snapshot.routes].map(([name, target]) => ({
      name,
      domains: [`${name}${this.#suffix}`],
      routes: [{ name: 'default', match: {}, target }],
    }));
    this.#router = new TableRouter(hosts);
    this.#snapshotVersion = snapshot.version;
  }

  get snapshotVersion(): number {
    return this.#snapshotVersion;
  }

  async listen(port: number, host: string): Promise<AddressInfo> {
    const server = createServer(
      {
        maxHeaderSize: this.#opts.maxHeaderBytes ?? 16 * 1024,
        headersTimeout: this.#opts.headersTimeoutMs ?? 10_000,
        keepAliveTimeout: this.#opts.keepAliveTimeoutMs ?? 5000,
        requestTimeout: 0,
      },
      (req, res) => this.#handle(req, res),
    );
    server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
      if (!socket.writable) return;
      const status =
        err.code === 'HPE_HEADER_OVERFLOW'
          ? '431 Request Header Fields Too Large'
          : err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
            ? '408 Request Timeout'
            : '400 Bad Request';
      socket.end(`HTTP/1.1 ${status}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n`);
    });
    this.#server = server;
    return listen(server, port, host);
  }

  #handle(req: IncomingMessage, res: ServerResponse): void {
    const requestId = `${this.#idPrefix}-${(++this.#seq).toString(36)}`;
    const started = performance.now();
    this.#inflight++;
    let target: RouteTarget | undefined;
    let code: string | undefined;
    res.on('close', () => {
      this.#inflight--;
      this.#opts.access?.info({
        id: requestId,
        method: req.method,
        host: req.headers.host,
        path: req.url,
        status: res.statusCode,
        ms: Math.round((performance.now() - started) * 100) / 100,
        revision: target?.revision,
        error: code ?? (res.writableFinished ? undefined : 'ERR_CLIENT_CLOSED'),
      });
    });
    try {
      target = this.#route(req);
      const declared = req.headers['content-length'];
      if (declared !== undefined && Number(declared) > target.maxBodyBytes) {
        throw new TideError(
          'ERR_PAYLOAD_TOO_LARGE',
          `the request body (${declared} bytes) is over the limit of ${target.maxBodyBytes} bytes for ${target.function}`,
          { status: 413 },
        );
      }
      const endpoint = this.#opts.resolve(target);
      if (!endpoint) {
        throw new TideError('ERR_PROXY_NOT_READY', `${target.function} (revision ${target.revision}) has no ready instance yet`, { status: 503 });
      }
      endpoint.dispatch(req, res, { requestId, scheme: 'http' }).catch((err: unknown) => {
        code = err instanceof TideError ? err.code : 'ERR_INTERNAL';
        if (!(err instanceof TideError)) this.#opts.log.error({ err, requestId }, 'dispatch failed');
        rescue(err, req, res, requestId);
      });
    } catch (err) {
      code = err instanceof TideError ? err.code : 'ERR_INTERNAL';
      rescue(err, req, res, requestId);
    }
  }

  #route(req: IncomingMessage): RouteTarget {
    const raw = req.headers.host;
    if (!raw) throw new TideError('ERR_BAD_REQUEST', 'the request has no Host header', { status: 400 });
    const matched = this.#router.route({ host: raw, method: req.method ?? 'GET', url: req.url ?? '/', headers: req.headers });
    if (matched) return matched.target;
    const host = normalizeHost(raw);
    const name = host.endsWith(this.#suffix) ? host.slice(0, -this.#suffix.length) : undefined;
    throw new TideError(
      'ERR_PROXY_NO_ROUTE',
      name && !name.includes('.')
        ? `no function named "${name}" is deployed here (host ${raw})`
        : `no function serves host ${raw}; functions answer at NAME${this.#suffix}`,
      { status: 404 },
    );
  }

  /**
   * Graceful stop: stop accepting, let in-flight requests finish (up to `drainMs`), close
   * keep-alive connections as they go idle, then close whatever is left.
   */
  async close(drainMs = 30_000): Promise<void> {
    const server = this.#server;
    if (!server) return;
    this.#server = undefined;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    const deadline = Date.now() + drainMs;
    while (this.#inflight > 0 && Date.now() < deadline) {
      server.closeIdleConnections();
      await new Promise((r) => setTimeout(r, 25));
    }
    server.closeAllConnections();
    await closed;
  }
}
