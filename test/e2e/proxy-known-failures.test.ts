/**
 * Known failures of Node proxies and HTTP clients, each reproduced against `tide proxy`:
 *  - undici: a response read from a reused keep-alive connection handed to the wrong request
 *    (an upstream that sends more than it was asked for);
 *  - undici: CR/LF in a header value becoming an extra request (config and function paths);
 *  - undici: a retried request whose body no longer matches its length (a streamed body);
 *  - node-http-proxy: one reset socket (client or upstream) crashing the process;
 *  - HTTP/2 rapid reset (CVE-2023-44487): streams opened and reset in a flood.
 * (Request smuggling, slow headers and bodies, header counts and the keep-alive race are in
 * proxy-safety.test.ts and proxy-resilience.test.ts; `npm run test:regressions` runs them all.)
 */

import { writeFileSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { connect as h2connect } from 'node:http2';
import { type AddressInfo, connect, createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { rawRequest, scope, simpleConfig } from '../helpers/proxy.ts';
import { eventually, tempDir, tide } from '../helpers/tide.ts';

const files = scope();
afterAll(() => files.closeAll());
const proxyWith = (yaml: string) => files.proxyWith(yaml);

/** A raw TCP upstream: `onRequest` gets each request head and the socket to answer on. */
async function rawUpstream(onRequest: (head: string, socket: Socket, n: number) => void): Promise<{ address: string; heads: string[] }> {
  const heads: string[] = [];
  const server = createServer((socket) => {
    let buf = '';
    socket.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      for (let end = buf.indexOf('\r\n\r\n'); end !== -1; end = buf.indexOf('\r\n\r\n')) {
        const head = buf.slice(0, end);
        buf = buf.slice(end + 4);
        heads.push(head);
        onRequest(head, socket, heads.length);
      }
    });
    socket.on('error', () => {});
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  files.defer(() => new Promise<void>((r) => server.close(() => r())));
  return { address: `127.0.0.1:${(server.address() as AddressInfo).port}`, heads };
}

async function get(port: number, path: string): Promise<{ status: number; body: string }> {
  const r = await fetch(`http://127.0.0.1:${port}${path}`);
  return { status: r.status, body: await r.text() };
}

describe('known failures: keep-alive response attribution (undici)', () => {
  it('bytes an upstream sends beyond its answer never become the answer to the next request on that connection', async () => {
    // Each answer is followed by a second, unsolicited one ("STALE"): a client that keeps the
    // connection would hand "STALE" to whichever request goes out on it next.
    const up = await rawUpstream((head, socket, n) => {
      const path = head.split(' ')[1];
      const body = `answer ${n} for ${path}`;
      socket.write(`HTTP/1.1 200 OK\r\ncontent-length: ${body.length}\r\n\r\n${body}HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nSTALE`);
    });
    const p = await proxyWith(simpleConfig([up.address]));
    for (let i = 0; i < 20; i++) {
      const r = await get(p.port, `/r${i}`);
      expect(r.status).toBe(200);
      expect(r.body).toMatch(new RegExp(`^answer \\d+ for /r${i}$`));
    }
  });

  it('an upstream that answers before it is asked (a stray response on an idle connection) does not answer the next request', async () => {
    const sockets: Socket[] = [];
    const up = await rawUpstream((head, socket, n) => {
      sockets.push(socket);
      const body = `answer ${n} for ${head.split(' ')[1]}`;
      socket.write(`HTTP/1.1 200 OK\r\ncontent-length: ${body.length}\r\n\r\n${body}`);
    });
    const p = await proxyWith(simpleConfig([up.address]));
    expect((await get(p.port, '/first')).body).toBe('answer 1 for /first');
    // The idle keep-alive connection now receives a response nobody asked for.
    for (const s of sockets) s.write('HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nSTALE');
    await new Promise((r) => setTimeout(r, 50));
    const second = await get(p.port, '/second');
    expect(second.body).toBe('answer 2 for /second');
  });
});

describe('known failures: CR/LF in header values (undici)', () => {
  it('a config that would put CR/LF in a forwarded header is refused at its field, and nothing is applied', async () => {
    const dir = tempDir('tide-crlf-');
    const file = join(dir, 'proxy.yaml');
    writeFileSync(file, `${simpleConfig(['127.0.0.1:9'], '        requestHeaders: { set: { x-injected: "a\\r\\nGET /smuggled HTTP/1.1\\r\\nHost: b" } }\n')}`);
    const r = await tide(['proxy', '-c', file, '--check']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/proxy\.yaml:\d+:\d+: .*x-injected/);
  });

  it('a client header value with CR/LF inside it is refused (400) and nothing reaches the upstream', async () => {
    const up = await rawUpstream((_h, socket) => socket.write('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok'));
    const p = await proxyWith(simpleConfig([up.address]));
    const r = await rawRequest(p.port, 'GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rGET /smuggled HTTP/1.1\r\n\r\n', 2000);
    expect(r.status).toBe(400);
    expect(up.heads).toHaveLength(0);
  });
});

describe('known failures: a retried body must match its length (undici)', () => {
  it('a streamed body (over the replay buffer) is never retried, so no retry sends a body that does not match its content-length', async () => {
    let reset = true;
    const got: { head: string; bytes: number }[] = [];
    const server = createServer((socket) => {
      let head: string | undefined;
      let bytes = 0;
      socket.on('data', (d: Buffer) => {
        if (head === undefined) {
          const s = d.toString('latin1');
          const end = s.indexOf('\r\n\r\n');
          head = s.slice(0, end);
          bytes = d.length - end - 4;
          got.push({ head, bytes });
        } else {
          bytes += d.length;
          (got[got.length - 1] as { bytes: number }).bytes = bytes;
        }
        // The first try is cut off after part of its body.
        if (reset && bytes > 1000) {
          reset = false;
          socket.resetAndDestroy();
        }
      });
      socket.on('error', () => {});
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    files.defer(() => new Promise<void>((r) => server.close(() => r())));
    const address = `127.0.0.1:${(server.address() as AddressInfo).port}`;
    const p = await proxyWith(simpleConfig([address], '        retries: { attempts: 3, nonIdempotent: true, on: [reset, connect-failure] }\n'));
    const body = Buffer.alloc(200 * 1024, 'x');
    const r = await fetch(`http://127.0.0.1:${p.port}/upload`, { method: 'POST', body, headers: { 'content-length': String(body.length) } });
    expect([502, 503]).toContain(r.status);
    // One try only: no second request whose body would have to be sent again from the start.
    expect(got).toHaveLength(1);
  });
});

describe('known failures: one reset socket does not take the process down (node-http-proxy)', () => {
  it('a client that resets mid-request, and an upstream that resets mid-response, leave the proxy serving', async () => {
    const server = createHttpServer((req, res) => {
      if (req.url === '/reset-midway') {
        res.writeHead(200, { 'content-length': '100000' });
        res.write('partial');
        setTimeout(() => req.socket.resetAndDestroy(), 20);
        return;
      }
      if (req.url === '/slow') {
        setTimeout(() => res.end('late'), 300);
        return;
      }
      res.end('fine');
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    files.defer(() => new Promise<void>((r) => server.close(() => r())));
    const p = await proxyWith(simpleConfig([`127.0.0.1:${(server.address() as AddressInfo).port}`]));
    for (let i = 0; i < 20; i++) {
      // The client resets while the upstream is still working on its request.
      const s = connect({ host: '127.0.0.1', port: p.port });
      await new Promise<void>((r) => s.once('connect', () => r()));
      s.write('GET /slow HTTP/1.1\r\nHost: a\r\n\r\n');
      await new Promise((r) => setTimeout(r, 10));
      s.resetAndDestroy();
      // The upstream resets halfway through its response.
      const cut = await rawRequest(p.port, 'GET /reset-midway HTTP/1.1\r\nHost: a\r\n\r\n', 2000);
      expect(cut.text.startsWith('HTTP/1.1 200')).toBe(true);
      expect(cut.closed).toBe(true);
    }
    const ok = await rawRequest(p.port, 'GET /ok HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n', 3000);
    expect(ok.status).toBe(200);
    expect(ok.text.endsWith('fine')).toBe(true);
    // Nothing leaked: the reset connections and their requests are all gone.
    await eventually(() => p.server.metrics.connections === 0 && p.server.proxy.inflight === 0, 10_000);
  });
});

describe('known failures: HTTP/2 rapid reset (CVE-2023-44487)', () => {
  it('a flood of streams opened and reset at once is cut off; the upstream sees a bounded number, and the proxy keeps serving', async () => {
    let seen = 0;
    const server = createHttpServer((_req, res) => {
      seen++;
      setTimeout(() => res.end('ok'), 50);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    files.defer(() => new Promise<void>((r) => server.close(() => r())));
    const p = await proxyWith(simpleConfig([`127.0.0.1:${(server.address() as AddressInfo).port}`]));
    const session = h2connect(`http://127.0.0.1:${p.port}`);
    session.on('error', () => {});
    let goaway = false;
    session.on('goaway', () => {
      goaway = true;
    });
    await new Promise<void>((r) => session.once('connect', () => r()));
    const flood = 10_000;
    let opened = 0;
    for (let i = 0; i < flood && !session.closed && !session.destroyed; i++) {
      try {
        const s = session.request({ ':path': `/r${i}`, ':method': 'GET' });
        s.on('error', () => {});
        s.close(8); // RST_STREAM CANCEL right away
        opened++;
      } catch {
        break;
      }
      if (i % 200 === 0) await new Promise((r) => setImmediate(r));
    }
    await new Promise((r) => setTimeout(r, 500));
    const cutOff = goaway || session.closed || session.destroyed;
    session.destroy();
    expect(opened).toBeGreaterThan(0);
    // The flood was stopped by the server (GOAWAY / closed session) before the client stopped.
    expect(cutOff || opened < flood).toBe(true);
    console.info(`rapid reset: ${opened} streams opened and reset, ${seen} reached the upstream`);
    // (Almost) none of the flood became upstream requests.
    expect(seen).toBeLessThan(50);
    const after = h2connect(`http://127.0.0.1:${p.port}`);
    after.on('error', () => {});
    const body = await new Promise<string>((resolve, reject) => {
      const s = after.request({ ':path': '/after', ':method': 'GET' });
      let b = '';
      s.setEncoding('utf8');
      s.on('data', (d: string) => {
        b += d;
      });
      s.on('end', () => resolve(b));
      s.on('error', reject);
    });
    after.close();
    expect(body).toBe('ok');
  });
});
