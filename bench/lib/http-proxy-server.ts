/**
 * The Node peer of the `proxy` benchmark: http-proxy (node-http-proxy) on a node:http server,
 * forwarding everything to one upstream through a keep-alive agent.
 * Usage: node bench/lib/http-proxy-server.ts PORT UPSTREAM_PORT
 */
import { Agent, createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createRequire } from 'node:module';

interface ProxyServer {
  web(req: IncomingMessage, res: ServerResponse): void;
  on(event: 'error', fn: (err: Error, req: IncomingMessage, res: ServerResponse) => void): void;
}

// http-proxy ships no types and is CommonJS; this is the little of its API used here.
const httpProxy = createRequire(import.meta.url)('http-proxy') as { createProxyServer(opts: { target: string; agent: Agent }): ProxyServer };

const [portArg, upstreamArg] = process.argv.slice(2);
if (!portArg || !upstreamArg) throw new Error('usage: http-proxy-server.ts PORT UPSTREAM_PORT');

const proxy = httpProxy.createProxyServer({
  target: `http://127.0.0.1:${upstreamArg}`,
  agent: new Agent({ keepAlive: true, maxSockets: 256 }),
});
proxy.on('error', (_err, _req, res) => {
  if (!res.headersSent) res.writeHead(502, { 'content-length': 0 });
  res.end();
});
const server = createServer((req, res) => proxy.web(req, res));
server.keepAliveTimeout = 65_000;
server.listen(Number(portArg), '127.0.0.1', () => process.stdout.write('ready\n'));
