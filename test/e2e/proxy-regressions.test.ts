/**
 * Regressions: each test is a failure found in the proxy once (a crash, a bypass, a leak), kept
 * so it cannot come back.
 */

import { createServer as createHttpServer } from 'node:http';
import { connect as h2connect } from 'node:http2';
import { type AddressInfo, connect, createServer } from 'node:net';
import { afterAll, describe, expect, it } from 'vitest';
import { rawRequest, scope, simpleConfig, startUpstream } from '../helpers/proxy.ts';
import { eventually } from '../helpers/tide.ts';

const files = scope();
afterAll(() => files.closeAll());
const proxyWith = (yaml: string) => files.proxyWith(yaml);

describe('proxy regressions', () => {
  it('answers thousands of pipelined requests that are answered synchronously, without growing the stack', async () => {
    const p = await proxyWith(`
listeners: [{ name: main, port: 0 }]
virtualHosts:
  - name: all
    domains: ['*']
    routes: [{ name: d, match: { path: { exact: /d } }, directResponse: { status: 200, body: "ok" } }]
`);
    const n = 5000;
    const r = await rawRequest(p.port, Buffer.from('GET /d HTTP/1.1\r\nHost: x\r\n\r\nGET /nomatch HTTP/1.1\r\nHost: x\r\n\r\n'.repeat(n / 2)), 5000);
    expect(r.text.match(/HTTP\/1\.1 200/g)).toHaveLength(n / 2);
    expect(r.text.match(/HTTP\/1\.1 404/g)).toHaveLength(n / 2);
    expect((await fetch(`http://127.0.0.1:${p.port}/d`)).status).toBe(200);
  });

  it('joins an Upgrade only on 101: an upstream that ignores Upgrade does not become a tunnel past routing', async () => {
    const up = await startUpstream('app');
    files.defer(() => up.close());
    const p = await proxyWith(`
listeners: [{ name: main, port: 0 }]
virtualHosts:
  - name: all
    domains: ['*']
    routes:
      - { name: admin, match: { path: { prefix: /admin } }, directResponse: { status: 403, body: "forbidden" } }
      - { name: app, match: { path: { prefix: / } }, backends: [{ cluster: app }] }
clusters: [{ name: app, endpoints: ['${up.address}'] }]
`);
    const r = await rawRequest(
      p.port,
      ['GET /public HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n', 'GET /admin/secret HTTP/1.1\r\nHost: x\r\n\r\n'],
      2000,
      200,
    );
    expect(r.status).toBe(200);
    expect(up.seen.map((s) => s.url)).toEqual(['/public']);
    expect(r.closed).toBe(true);
    const withBody = await rawRequest(
      p.port,
      'POST /public HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\nContent-Length: 5\r\n\r\nhello',
    );
    expect(withBody.status).toBe(400);
    expect(up.seen).toHaveLength(1);
  });

  it('closes a refused connection after the linger time even if the client never closes its side', async () => {
    const p = await proxyWith(simpleConfig(['127.0.0.1:9'])); // no upstream needed: the request is refused
    const s = connect({ port: p.port, host: '127.0.0.1', allowHalfOpen: true });
    s.on('error', () => {});
    files.defer(() => void s.destroy());
    s.write('GET / HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n');
    await eventually(() => p.server.metrics.connections === 1, 2000);
    // LINGER_MS is 2 s; the listener's sweeper runs every 250 ms.
    await eventually(() => p.server.metrics.connections === 0, 4000);
  });

  it('HTTP/2: a body without content-length is cut off at maxBodyBytes (413); a body with one reaches a node upstream once framed', async () => {
    const server = createHttpServer((req, res) => {
      let n = 0;
      req.on('data', (c: Buffer) => {
        n += c.length;
      });
      req.on('end', () => res.end(`got ${n}`));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    files.defer(() => new Promise<void>((r) => server.close(() => r())));
    const p = await proxyWith(
      simpleConfig([`127.0.0.1:${(server.address() as AddressInfo).port}`]).replace('    port: 0', '    port: 0\n    limits: { maxBodyBytes: 1024 }'),
    );
    const session = h2connect(`http://127.0.0.1:${p.port}`);
    files.defer(() => void session.close());
    const post = (body: Buffer, headers: Record<string, string>) =>
      new Promise<{ status: number; text: string }>((resolve, reject) => {
        const stream = session.request({ ':method': 'POST', ':path': '/', ...headers });
        let status = 0;
        let text = '';
        stream.on('response', (h) => {
          status = Number(h[':status']);
        });
        stream.on('data', (d: Buffer) => {
          text += d;
        });
        stream.on('end', () => resolve({ status, text }));
        stream.on('error', reject);
        stream.end(body);
      });
    const big = await post(Buffer.alloc(200_000, 1), {});
    expect(big.status).toBe(413);
    const small = await post(Buffer.from('hello'), { 'content-length': '5' });
    expect(small).toEqual({ status: 200, text: 'got 5' });
  });

  it("a reload that cannot bind a listener's new port keeps the old port serving", async () => {
    const up = await startUpstream('app');
    files.defer(() => up.close());
    const blocker = createServer();
    await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r));
    files.defer(() => new Promise<void>((r) => blocker.close(() => r())));
    const taken = (blocker.address() as AddressInfo).port;
    const cfg = (port: number) => simpleConfig([up.address]).replace('    port: 0', `    address: 127.0.0.1\n    port: ${port}`);
    const p = await proxyWith(cfg(0));
    const port = p.port;
    const bound = cfg(port);
    p.write(bound);
    expect((await p.server.reload()).applied).toBe(true);
    p.write(cfg(taken));
    const r = await p.server.reload();
    expect(r.applied).toBe(false);
    expect(r.error).toMatch(/already in use/);
    expect((await fetch(`http://127.0.0.1:${port}/`)).status).toBe(200);
    p.write(bound);
    await p.server.reload();
    expect((await fetch(`http://127.0.0.1:${port}/`)).status).toBe(200);
  });

  it.each(['tide', 'undici'])('client %s: a request still waiting for a connection when its route times out never reaches the upstream', async (client) => {
    const seen: string[] = [];
    const up = await startUpstream('app', (req, res) => {
      seen.push(req.url ?? '');
      setTimeout(() => res.end('late'), req.url === '/a' ? 1200 : 10);
    });
    files.defer(() => up.close());
    const p = await proxyWith(`
listeners: [{ name: main, port: 0 }]
virtualHosts:
  - name: all
    domains: ['*']
    routes:
      - { name: slow, match: { path: { prefix: /a } }, timeout: 5s, backends: [{ cluster: app }] }
      - { name: all, match: { path: { prefix: / } }, timeout: 300ms, backends: [{ cluster: app }] }
clusters: [{ name: app, client: ${client}, connectionsPerEndpoint: 1, endpoints: ['${up.address}'] }]
`);
    const a = fetch(`http://127.0.0.1:${p.port}/a`);
    await new Promise((r) => setTimeout(r, 50));
    const b = await fetch(`http://127.0.0.1:${p.port}/b`);
    expect(b.status).toBe(504);
    expect((await a).status).toBe(200);
    await new Promise((r) => setTimeout(r, 300));
    expect(seen).toEqual(['/a']);
  });

  it('an Upgrade request to an upstream that never answers gets 504 within the route timeout', async () => {
    const silent = createServer((s) => s.on('error', () => {}));
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    files.defer(() => {
      silent.close();
    });
    const p = await proxyWith(
      simpleConfig([`127.0.0.1:${(silent.address() as AddressInfo).port}`]).replace(
        'backends: [{ cluster: app }]',
        'backends: [{ cluster: app }]\n        timeout: 400ms',
      ),
    );
    const started = Date.now();
    const r = await rawRequest(p.port, 'GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n', 4000);
    expect(r.status).toBe(504);
    expect(r.text).toContain('ERR_PROXY_TIMEOUT');
    expect(Date.now() - started).toBeLessThan(3000);
  });
});
