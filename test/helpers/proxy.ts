/**
 * Test helpers for the proxy: real upstream servers on loopback that count what reaches them,
 * a ProxyServer started in-process from a YAML config written to a temp file (real sockets
 * throughout), and a raw TCP client for requests no HTTP client would send.
 */
import { writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { type AddressInfo, connect } from 'node:net';
import { join } from 'node:path';
import { silentLogger } from '../../lib/log.ts';
import { ProxyServer } from '../../proxy/server.ts';
import { tempDir } from './tide.ts';

export interface Upstream {
  server: Server;
  port: number;
  /** `127.0.0.1:PORT`, for cluster endpoints. */
  address: string;
  /** Requests that reached this upstream (head received), in order. */
  seen: { method: string; url: string; headers: IncomingMessage['headers']; body: string }[];
  close(): Promise<void>;
}

/** An upstream answering with `handler` (default: 200 "hello from NAME"). Bodies are read whole first. */
export async function startUpstream(name = 'up', handler?: (req: IncomingMessage, res: ServerResponse, body: string) => void): Promise<Upstream> {
  const seen: Upstream['seen'] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString();
      seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body });
      if (handler) handler(req, res, body);
      else {
        res.writeHead(200, { 'content-type': 'text/plain', 'x-upstream': name });
        res.end(`hello from ${name}`);
      }
    });
  });
  server.keepAliveTimeout = 10_000;
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    server,
    port,
    address: `127.0.0.1:${port}`,
    seen,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

export interface RunningProxy {
  server: ProxyServer;
  /** Port of the first listener. */
  port: number;
  ports: Record<string, number>;
  file: string;
  /** Rewrites the config file (the server reloads it when watching; call `server.reload()` to apply now). */
  write(yaml: string): void;
  close(): Promise<void>;
}

/**
 * Starts a proxy from `yaml`. Listener ports may be 0 (any free port). `watch` defaults to
 * false so tests apply reloads explicitly with `server.reload()`.
 */
export async function startProxy(yaml: string, options: { watch?: boolean } = {}): Promise<RunningProxy> {
  const dir = tempDir('tide-proxy-');
  const file = join(dir, 'proxy.yaml');
  writeFileSync(file, yaml);
  const server = new ProxyServer({ file, log: silentLogger, watch: options.watch ?? false, report: () => {} });
  await server.start();
  const ports: Record<string, number> = {};
  for (const [name, a] of Object.entries(server.addresses())) ports[name] = a.port;
  const first = Object.keys(ports).find((n) => n !== 'admin') as string;
  return {
    server,
    port: ports[first] as number,
    ports,
    file,
    write: (text) => writeFileSync(file, text),
    close: () => server.close(500),
  };
}

export interface RawResult {
  /** Everything the proxy sent back, latin1. */
  text: string;
  /** The status of the first response, or 0 if none came. */
  status: number;
  /** True when the proxy closed the connection (FIN or reset) before `timeoutMs`. */
  closed: boolean;
}

/** Writes `bytes` on a fresh TCP connection and collects the answer until close or timeout. */
export function rawRequest(port: number, bytes: string | Buffer | (string | Buffer)[], timeoutMs = 2000, gapMs = 0): Promise<RawResult> {
  return new Promise((resolve) => {
    const socket = connect({ port, host: '127.0.0.1' });
    let text = '';
    let closed = false;
    const parts = Array.isArray(bytes) ? bytes : [bytes];
    socket.on('connect', async () => {
      for (const p of parts) {
        if (socket.destroyed) break;
        socket.write(p);
        if (gapMs > 0) await new Promise((r) => setTimeout(r, gapMs));
      }
    });
    socket.on('data', (d: Buffer) => {
      text += d.toString('latin1');
    });
    socket.on('error', () => {});
    const finish = () => {
      clearTimeout(timer);
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(text);
      resolve({ text, status: m ? Number(m[1]) : 0, closed });
      socket.destroy();
    };
    socket.on('close', () => {
      closed = true;
      finish();
    });
    const timer = setTimeout(finish, timeoutMs);
  });
}

/** A minimal config: one listener on a free port, one catch-all route to `endpoints`. */
export function simpleConfig(endpoints: string[], route = ''): string {
  return `
listeners:
  - name: main
    port: 0
virtualHosts:
  - name: all
    domains: ['*']
    routes:
      - name: all
        match: { path: { prefix: / } }
        backends: [{ cluster: app }]
${route}
clusters:
  - name: app
    endpoints: [${endpoints.map((e) => `'${e}'`).join(', ')}]
`;
}

/**
 * A config with an admin listener and two clusters, `a` and `b`: its catch-all route goes to
 * `cluster`, after the optional `routesBefore` (YAML list items indented for `routes:`).
 */
export function twoClusterConfig(a: Upstream, b: Upstream, cluster: string, routesBefore = ''): string {
  return `
listeners:
  - name: main
    port: 0
admin: { port: 0 }
virtualHosts:
  - name: all
    domains: ['*']
    routes:${routesBefore}
      - name: main
        backends: [{ cluster: ${cluster} }]
clusters:
  - name: a
    endpoints: ['${a.address}']
  - name: b
    endpoints: ['${b.address}']
`;
}

/**
 * What a test file starts and must stop: proxies (`proxyWith`) and anything else (`defer`),
 * closed in reverse order by `closeAll` (call it from afterAll).
 */
export function scope(): { proxyWith(yaml: string): Promise<RunningProxy>; defer(fn: () => Promise<void> | void): void; closeAll(): Promise<void> } {
  const cleanups: (() => Promise<void> | void)[] = [];
  return {
    async proxyWith(yaml) {
      const p = await startProxy(yaml);
      cleanups.push(() => p.close());
      return p;
    },
    defer(fn) {
      cleanups.push(fn);
    },
    async closeAll() {
      for (const c of cleanups.reverse()) await c();
      cleanups.length = 0;
    },
  };
}
