import { type AddressInfo, createServer as createNetServer } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type RunningProxy, rawRequest, simpleConfig, startProxy, startUpstream, type Upstream } from '../helpers/proxy.ts';

describe('tide proxy basics', () => {
  let up: Upstream;
  let proxy: RunningProxy;
  beforeAll(async () => {
    up = await startUpstream('a');
    proxy = await startProxy(simpleConfig([up.address]));
  });
  afterAll(async () => {
    await proxy.close();
    await up.close();
  });

  it('forwards a GET over keep-alive and answers pipelined requests in order', async () => {
    const r = await fetch(`http://127.0.0.1:${proxy.port}/x?y=1`);
    expect(r.status).toBe(200);
    expect(await r.text()).toBe('hello from a');
    expect(r.headers.get('x-request-id')).toBeTruthy();
    const two = await rawRequest(proxy.port, 'GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n');
    expect(two.text.match(/HTTP\/1\.1 200/g)).toHaveLength(2);
    expect(up.seen.slice(-2).map((s) => s.url)).toEqual(['/1', '/2']);
  });
});

describe('an upstream that answers before the request body is sent', () => {
  it('does not reuse that connection: later requests never follow a half-sent body', async () => {
    // A naive keep-alive upstream: answers each request head as soon as it sees it.
    const conns: string[] = [];
    const server = createNetServer((socket) => {
      const i = conns.push('') - 1;
      let answered = 0;
      socket.on('data', (d: Buffer) => {
        conns[i] += d.toString('latin1');
        const heads = (conns[i] as string).match(/(POST|GET) \/[^ ]* HTTP\/1\.1\r\n/g) ?? [];
        for (; answered < heads.length; answered++) {
          const early = (heads[answered] as string).startsWith('POST');
          socket.write(early ? 'HTTP/1.1 413 Too Large\r\ncontent-length: 7\r\n\r\ntoo big' : 'HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nfine');
        }
      });
      socket.on('error', () => {});
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const proxy = await startProxy(simpleConfig([`127.0.0.1:${(server.address() as AddressInfo).port}`]));
    try {
      const body = Buffer.alloc(256 * 1024, 'x');
      const head = `POST /early HTTP/1.1\r\nHost: a\r\nContent-Length: ${body.length}\r\n\r\n`;
      const first = await rawRequest(proxy.port, [head, body.subarray(0, 1000)], 1000, 200);
      expect(first.status).toBe(413);
      for (let i = 0; i < 5; i++) {
        const r = await fetch(`http://127.0.0.1:${proxy.port}/after-${i}`);
        expect(r.status).toBe(200);
        expect(await r.text()).toBe('fine');
      }
      const early = conns.filter((c) => c.includes('POST /early'));
      expect(early).toHaveLength(1);
      expect(early[0]).not.toContain('GET /after');
    } finally {
      await proxy.close();
      await new Promise<void>((r) => server.close(() => r()));
    }
  });
});
