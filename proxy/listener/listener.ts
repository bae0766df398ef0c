/**
 * A proxy listener: the socket side of the data plane (not a layer). Plain TCP or TLS (SNI
 * picks among several certificates; ALPN offers h2 and http/1.1), HTTP/1.1 on the proxy's own
 * connection code (h1.ts) and HTTP/2 on node:http2 (h2c with prior knowledge on plain
 * listeners, h2 by ALPN on TLS ones). Holds the connection limit, the deadline sweeper and
 * graceful drain. Limits and certificates can be updated in place on a config reload.
 */
import { createServer as createH2Server, type Http2Server, type Http2ServerRequest, type Http2ServerResponse } from 'node:http2';
import { type AddressInfo, createServer, type Server, type Socket } from 'node:net';
import { createSecureContext, createServer as createTlsServer, type SecureContext, type TLSSocket, type Server as TlsServer } from 'node:tls';
import { TideError } from '../../lib/errors.ts';
import { idOfCertificate } from '../../lib/spiffe.ts';
import type { CompiledListener } from '../config/compile.ts';
import type { ConnectionInfo } from '../http/types.ts';
import type { ProxyMetrics } from '../metrics.ts';
import type { DataPlane } from '../proxy.ts';
import { errorResponse, errorResponseBytes } from '../rescue.ts';
import { H1Connection, type H1Hooks, type H1Limits } from './h1.ts';
import { handleH2Request } from './h2.ts';

const SWEEP_MS = 250;

export class Listener {
  readonly name: string;
  #compiled: CompiledListener;
  readonly #proxy: DataPlane;
  readonly #metrics: ProxyMetrics;
  readonly #server: Server;
  readonly #h2: Http2Server;
  readonly #conns = new Set<H1Connection>();
  readonly #raw = new Set<Socket>();
  /** Mesh connections whose first byte has not come yet (closed at once on shutdown). */
  readonly #unsniffed = new Set<Socket>();
  #limits: H1Limits;
  #contexts: { names: string[]; ctx: SecureContext }[] = [];
  readonly #sweeper: NodeJS.Timeout;
  #closing = false;

  constructor(compiled: CompiledListener, proxy: DataPlane, metrics: ProxyMetrics) {
    this.name = compiled.config.name;
    this.#compiled = compiled;
    this.#proxy = proxy;
    this.#metrics = metrics;
    this.#limits = limitsOf(compiled);
    const tls = compiled.certificates.length > 0;
    this.#h2 = createH2Server({ maxHeaderListPairs: compiled.config.limits.maxHeaders, maxSessionMemory: 10 });
    // An HTTP/2 connection idle (no frames) for the listener's idle timeout is closed.
    this.#h2.setTimeout(compiled.idleTimeoutMs);
    this.#h2.on('request', (req: Http2ServerRequest, res: Http2ServerResponse) => {
      const socket = req.socket as Socket;
      const info: ConnectionInfo = {
        remoteAddress: socket.remoteAddress ?? '',
        remotePort: socket.remotePort ?? 0,
        scheme: tls ? 'https' : 'http',
        listener: this.name,
      };
      handleH2Request(req, res, info, this.#proxy, this.#limits.maxBodyBytes, (_status, err) => this.#metrics.refused(this.name, err.code));
    });
    this.#h2.on('sessionError', () => {});
    if (compiled.mesh) {
      this.#server = this.#meshServer(compiled);
    } else if (tls) {
      this.#contexts = contextsOf(compiled);
      this.#server = createTlsServer(
        {
          ALPNProtocols: compiled.config.http2 ? ['h2', 'http/1.1'] : ['http/1.1'],
          SNICallback: (servername, cb) => cb(null, this.#contextFor(servername)),
          // The default certificate, for clients that send no SNI (or a name no certificate lists).
          cert: compiled.certificates[0]?.cert,
          key: compiled.certificates[0]?.key,
          minVersion: 'TLSv1.2',
        },
        (socket: TLSSocket) => {
          if (socket.alpnProtocol !== 'h2') this.#accept(socket, 'https');
          else if (this.#overloaded()) socket.destroy();
          else this.#toH2(socket, Buffer.alloc(0));
        },
      );
      this.#server.on('tlsClientError', () => {});
    } else {
      this.#server = createServer({ noDelay: true }, (socket) => this.#accept(socket, 'http'));
    }
    this.#server.maxConnections = compiled.config.limits.maxConnections;
    this.#sweeper = setInterval(() => {
      const now = performance.now();
      for (const c of this.#conns) c.expire(now);
    }, SWEEP_MS);
    this.#sweeper.unref();
  }

  /**
   * A mesh listener takes TLS and (when allowed) plaintext on one port: the first byte of a
   * connection tells them apart (0x16 starts a TLS handshake). TLS is 1.3 only, the client
   * must present a certificate that chains to the trusted roots, and its SPIFFE ID must be
   * accepted; the certificate the listener answers with is picked by SNI (the function's
   * mesh host name), so each function is served under its own identity.
   */
  #meshServer(compiled: CompiledListener): Server {
    const mesh = compiled.mesh as NonNullable<CompiledListener['mesh']>;
    const tlsServer: TlsServer = createTlsServer(
      {
        ALPNProtocols: ['http/1.1'],
        SNICallback: (servername, cb) => {
          const ctx = mesh.contextFor(servername);
          if (ctx) cb(null, ctx);
          else {
            mesh.onRefused?.('unknown-server-name');
            cb(new Error(`no workload certificate for ${servername}`), undefined);
          }
        },
        requestCert: true,
        rejectUnauthorized: true,
        minVersion: 'TLSv1.3',
        handshakeTimeout: compiled.headersTimeoutMs,
      },
      (socket: TLSSocket) => {
        const peer = idOfCertificate(socket.getPeerX509Certificate());
        if (!mesh.accept(peer)) {
          // The chain is good but the identity is not one of ours: every request on this
          // connection gets 403 saying so (a bare reset would tell the caller nothing).
          mesh.onRefused?.('peer-identity');
          this.#accept(
            socket,
            'https',
            undefined,
            new TideError(
              'ERR_MTLS_IDENTITY',
              peer === undefined
                ? 'the client certificate carries no SPIFFE ID (exactly one spiffe:// URI SAN is required)'
                : `the client identity ${peer} is not in this mesh's trust domain`,
              { status: 403 },
            ),
          );
          return;
        }
        this.#accept(socket, 'https', peer);
      },
    );
    tlsServer.on('tlsClientError', (err: Error & { code?: string }) => mesh.onRefused?.(err.code ?? 'handshake'));
    // A client that sends no SNI gets the default identity's certificate (the gateway's); the
    // server's own context is swapped when that certificate is rotated.
    let fallbackNow: object | undefined;
    const refreshFallback = () => {
      const d = mesh.fallback();
      if (!d || d === fallbackNow) return;
      fallbackNow = d;
      tlsServer.setSecureContext({ cert: d.cert, key: d.key, ca: d.ca, minVersion: 'TLSv1.3' });
    };
    const server = createServer({ noDelay: true, pauseOnConnect: false }, (socket) => {
      if (this.#closing) {
        socket.destroy();
        return;
      }
      // A connection that sends nothing is closed after headersTimeout, and at once on shutdown.
      this.#unsniffed.add(socket);
      const silent = setTimeout(() => socket.destroy(), compiled.headersTimeoutMs);
      socket.once('close', () => {
        clearTimeout(silent);
        this.#unsniffed.delete(socket);
      });
      socket.once('data', (first: Buffer) => {
        clearTimeout(silent);
        this.#unsniffed.delete(socket);
        socket.pause();
        socket.unshift(first);
        if (first[0] === 0x16) {
          refreshFallback();
          tlsServer.emit('connection', socket);
        } else if (mesh.plaintext) {
          socket.resume();
          this.#accept(socket, 'http');
        } else {
          mesh.onRefused?.('plaintext');
          socket.destroy();
        }
      });
      socket.on('error', () => {});
    });
    return server;
  }

  async listen(): Promise<AddressInfo> {
    const { address, port } = this.#compiled.config;
    const path = this.#compiled.socketPath;
    if (path) {
      return new Promise((resolve, reject) => {
        this.#server.once('error', (err) =>
          reject(new TideError('ERR_INVALID_ARGUMENT', `listener ${this.name}: cannot listen on ${path}: ${err.message}`, { cause: err })),
        );
        this.#server.listen(path, () => resolve({ address: path, family: 'unix', port: 0 }));
      });
    }
    return new Promise((resolve, reject) => {
      this.#server.once('error', (err: NodeJS.ErrnoException) =>
        reject(
          err.code === 'EADDRINUSE'
            ? new TideError('ERR_ADDRESS_IN_USE', `listener ${this.name}: ${address}:${port} is already in use`, { cause: err })
            : new TideError('ERR_INVALID_ARGUMENT', `listener ${this.name}: cannot listen on ${address}:${port}: ${err.message}`, { cause: err }),
        ),
      );
      this.#server.listen(port, address, () => resolve(this.#server.address() as AddressInfo));
    });
  }

  address(): AddressInfo {
    return this.#server.address() as AddressInfo;
  }

  get compiled(): CompiledListener {
    return this.#compiled;
  }

  /** True when `next` binds the same address and port (so this one must close before it can bind). */
  sameAddress(next: CompiledListener): boolean {
    const a = this.#compiled.config;
    const b = next.config;
    return a.address === b.address && b.port !== 0 && b.port === this.#port();
  }

  /** The port actually bound (the configured one, or the one the system picked for port 0). */
  #port(): number {
    return (this.#server.address() as AddressInfo | null)?.port ?? this.#compiled.config.port;
  }

  /** True when `next` can be applied to this listener without rebinding. */
  sameBinding(next: CompiledListener): boolean {
    const a = this.#compiled.config;
    const b = next.config;
    const samePort = a.port === b.port || (b.port !== 0 && b.port === this.#port());
    return a.address === b.address && samePort && this.#compiled.certificates.length > 0 === next.certificates.length > 0 && a.http2 === b.http2;
  }

  /** Takes new limits and certificates; open connections keep theirs. */
  update(next: CompiledListener): void {
    this.#compiled = next;
    this.#limits = limitsOf(next);
    this.#server.maxConnections = next.config.limits.maxConnections;
    const first = next.certificates[0];
    if (first) {
      this.#contexts = contextsOf(next);
      (this.#server as import('node:tls').Server).setSecureContext({ cert: first.cert, key: first.key, minVersion: 'TLSv1.2' });
    }
  }

  #contextFor(servername: string): SecureContext | undefined {
    const name = servername.toLowerCase();
    for (const c of this.#contexts) {
      for (const n of c.names) if (n === name || (n.startsWith('*.') && name.endsWith(n.slice(1)) && name.length > n.length - 1)) return c.ctx;
    }
    return this.#contexts[0]?.ctx;
  }

  #accept(socket: Socket, scheme: 'http' | 'https', peer?: string, refusedFirst?: TideError): void {
    if (this.#closing) {
      socket.destroy();
      return;
    }
    // Past the process-wide connection limit: the first request gets 503 and the connection closes.
    const refused = refusedFirst ?? this.#overloaded();
    socket.setNoDelay(true);
    const info: ConnectionInfo = { remoteAddress: socket.remoteAddress ?? '', remotePort: socket.remotePort ?? 0, scheme, listener: this.name, peer };
    const hooks: H1Hooks = {
      onRequest: refused
        ? (head, body, res) => {
            const e = errorResponse(refused, head.headers['x-request-id'] ?? 'none');
            conn1.closeAfterResponse = true;
            body?.resume();
            res.start(e.status, e.headers, e.body.length);
            res.write(e.body);
            res.end();
          }
        : (head, body, res, conn) => this.#proxy.handle(this.#proxy.request(head, body, conn, head.minor === 0 ? '1.0' : '1.1'), res),
      onUpgrade: (head, s, rest, conn) => {
        if (this.#conns.delete(conn1)) this.#metrics.connections--;
        if (refused) {
          // A connection refused for its first request is refused for an upgrade too.
          s.end(errorResponseBytes(refused, head.headers['x-request-id'] ?? 'none'));
          return;
        }
        this.#addRaw(s);
        this.#proxy.upgrade(head, s, rest, conn);
      },
      onH2Preface: (s, rest) => {
        if (this.#conns.delete(conn1)) this.#metrics.connections--;
        // HTTP/2 has no first request to answer: a refused connection is closed.
        if (this.#compiled.config.http2 && !refused) this.#toH2(s, rest);
        else s.destroy();
      },
      onRefused: (_status, err) => this.#metrics.refused(this.name, err.code),
    };
    const conn1 = new H1Connection(socket, info, this.#limits, hooks);
    this.#conns.add(conn1);
    this.#metrics.connections++;
    socket.once('close', () => {
      if (this.#conns.delete(conn1)) this.#metrics.connections--;
    });
    if (this.#closing) conn1.closeAfterResponse = true;
  }

  #toH2(socket: Socket, rest: Buffer): void {
    if (rest.length > 0) socket.unshift(rest);
    this.#addRaw(socket);
    this.#h2.emit('connection', socket);
  }

  /** A socket that left HTTP/1.1 (HTTP/2, an upgrade): still an open connection for the limits. */
  #addRaw(socket: Socket): void {
    this.#raw.add(socket);
    this.#metrics.rawConnections++;
    socket.once('close', () => {
      if (this.#raw.delete(socket)) this.#metrics.rawConnections--;
    });
  }

  /** The overload policy's answer for a new connection, counting every open one (HTTP/1.1, HTTP/2, upgraded). */
  #overloaded(): TideError | undefined {
    return this.#proxy.overload?.connectionRefusal(this.#metrics.connections + this.#metrics.rawConnections);
  }

  /**
   * Stops accepting, lets requests in flight finish (up to `drainMs`), closes idle keep-alive
   * connections as they become idle, then closes what is left.
   */
  async close(drainMs = 10_000): Promise<void> {
    if (this.#closing) return;
    this.#closing = true;
    for (const s of this.#unsniffed) s.destroy();
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    this.#h2.close();
    const deadline = performance.now() + drainMs;
    for (const c of this.#conns) c.closeAfterResponse = true;
    while (performance.now() < deadline) {
      for (const c of this.#conns) if (c.idle) c.socket.destroy();
      if (this.#conns.size === 0 && this.#raw.size === 0) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    for (const c of this.#conns) c.socket.destroy();
    for (const s of this.#raw) s.destroy();
    clearInterval(this.#sweeper);
    await closed;
  }
}

function limitsOf(c: CompiledListener): H1Limits {
  const l = c.config.limits;
  return {
    maxHeaderBytes: l.maxHeaderBytes,
    maxHeaders: l.maxHeaders,
    maxBodyBytes: l.maxBodyBytes,
    headersTimeoutMs: c.headersTimeoutMs,
    idleTimeoutMs: c.idleTimeoutMs,
    bodyTimeoutMs: c.bodyTimeoutMs,
  };
}

function contextsOf(c: CompiledListener): { names: string[]; ctx: SecureContext }[] {
  return c.certificates.map((cert) => ({
    names: cert.serverNames.map((n) => n.toLowerCase()),
    ctx: createSecureContext({ cert: cert.cert, key: cert.key, minVersion: 'TLSv1.2' }),
  }));
}
