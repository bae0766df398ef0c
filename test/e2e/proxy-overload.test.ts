/**
 * The overload policy of `tide proxy` (proxy/overload.ts): over a heap or event-loop-delay
 * watermark, or past the process-wide connection limit, requests are answered 503
 * ERR_OVERLOADED with retry-after before routing, nothing reaches the upstream, and serving
 * resumes by itself once the reading is back under the watermark.
 */
import { connect as h2connect } from 'node:http2';
import { connect } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { type RunningProxy, rawRequest, simpleConfig, startProxy, startUpstream, type Upstream } from '../helpers/proxy.ts';
import { eventually } from '../helpers/tide.ts';

let p: RunningProxy | undefined;
let up: Upstream | undefined;

afterEach(async () => {
  await p?.close();
  await up?.close();
  p = undefined;
  up = undefined;
});

function withOverload(address: string, overload: string): string {
  return `${simpleConfig([address])}admin: { port: 0 }\noverload: ${overload}\n`;
}

async function get(port: number): Promise<{ status: number; body: string; retryAfter: string | null; error: string | null }> {
  const r = await fetch(`http://127.0.0.1:${port}/x`);
  return { status: r.status, body: await r.text(), retryAfter: r.headers.get('retry-after'), error: r.headers.get('tide-proxy-error') };
}

describe('overload policy', () => {
  it('sheds every request with 503 and retry-after while the heap is over its watermark, and serves again once it is raised', async () => {
    up = await startUpstream('u');
    p = await startProxy(withOverload(up.address, '{ maxHeapMb: 1, retryAfter: 3s }'));
    const shed = await eventually(async () => {
      const r = await get(p?.port as number);
      return r.status === 503 ? r : undefined;
    });
    expect(shed.error).toBe('ERR_OVERLOADED');
    expect(shed.retryAfter).toBe('3');
    expect(shed.body).toMatch(/the proxy is overloaded: its heap is \d+ MiB \(limit 1 MiB\)/);
    // A flood while overloaded: every request refused, none reaches the upstream, the process stays.
    const before = up.seen.length;
    const answers = await Promise.all(Array.from({ length: 500 }, () => get(p?.port as number)));
    expect(answers.every((a) => a.status === 503)).toBe(true);
    expect(up.seen.length).toBe(before);
    const metrics = await (await fetch(`http://127.0.0.1:${p.ports.admin}/metrics`)).text();
    expect(metrics).toMatch(/tide_proxy_overload_shed_total\{reason="memory"\} (\d+)/);
    expect(Number(/tide_proxy_overload_shed_total\{reason="memory"\} (\d+)/.exec(metrics)?.[1])).toBeGreaterThanOrEqual(501);
    expect(metrics).toContain('tide_proxy_overloaded 1');
    // A reload with the default watermark (90% of the heap limit) ends it.
    p.write(withOverload(up.address, '{}'));
    await p.server.reload();
    expect((await get(p.port)).status).toBe(200);
  });

  it('sheds while the event loop falls behind, and recovers by itself when it catches up', async () => {
    up = await startUpstream('u');
    p = await startProxy(withOverload(up.address, '{ maxEventLoopDelay: 100ms }'));
    expect((await get(p.port)).status).toBe(200);
    // The delay monitor measures from its second tick on: let it run a little first.
    await new Promise((r) => setTimeout(r, 300));
    // Block this process's event loop (the proxy runs in it) for 800 ms.
    const until = performance.now() + 800;
    while (performance.now() < until) {
      // busy on purpose
    }
    const shed = await eventually(async () => {
      const r = await get(p?.port as number);
      return r.status === 503 ? r : undefined;
    }, 2000);
    expect(shed.body).toMatch(/its event loop is \d+ ms behind \(limit 100 ms\)/);
    // Nothing blocks it any more: the next samples are quiet, and requests go through again.
    await eventually(async () => (await get(p?.port as number)).status === 200, 3000);
  });

  it('past the process-wide connection limit, a new connection gets 503 to its first request and is closed', async () => {
    up = await startUpstream('u');
    p = await startProxy(withOverload(up.address, '{ maxConnections: 2 }'));
    const port = p.port;
    // Two keep-alive connections held open.
    const held = await Promise.all(
      [0, 1].map(
        () =>
          new Promise<ReturnType<typeof connect>>((resolve) => {
            const s = connect({ host: '127.0.0.1', port }, () => {
              s.write('GET /a HTTP/1.1\r\nHost: a\r\n\r\n');
              s.once('data', () => resolve(s));
            });
            s.on('error', () => {});
          }),
      ),
    );
    const third = await rawRequest(port, 'GET /b HTTP/1.1\r\nHost: a\r\n\r\n', 3000);
    expect(third.status).toBe(503);
    expect(third.text).toContain('tide-proxy-error: ERR_OVERLOADED');
    expect(third.text).toContain('2 connections are open (maxConnections 2)');
    expect(third.closed).toBe(true);
    for (const s of held) s.destroy();
    await eventually(async () => (await rawRequest(port, 'GET /c HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n', 3000)).status === 200, 3000);
  });

  it('sheds Upgrade (WebSocket) requests too, and refuses new HTTP/2 connections past the connection limit (found in review)', async () => {
    up = await startUpstream('u');
    p = await startProxy(withOverload(up.address, '{ maxHeapMb: 1 }'));
    await eventually(async () => (await get(p?.port as number)).status === 503);
    const seenBefore = up.seen.length;
    const upgrade = await rawRequest(p.port, 'GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n', 3000);
    expect(upgrade.status).toBe(503);
    expect(upgrade.text).toContain('ERR_OVERLOADED');
    expect(up.seen).toHaveLength(seenBefore);
    await p.close();
    await up.close();

    up = await startUpstream('u');
    p = await startProxy(withOverload(up.address, '{ maxConnections: 1 }'));
    const port = p.port;
    const held = await new Promise<ReturnType<typeof connect>>((resolve) => {
      const s = connect({ host: '127.0.0.1', port }, () => {
        s.write('GET /a HTTP/1.1\r\nHost: a\r\n\r\n');
        s.once('data', () => resolve(s));
      });
      s.on('error', () => {});
    });
    // A second connection that speaks HTTP/2 (prior knowledge) is closed, not served.
    const outcome = await new Promise<string>((resolve) => {
      const session = h2connect(`http://127.0.0.1:${port}`);
      session.on('error', () => resolve('error'));
      session.on('close', () => resolve('closed'));
      const req = session.request({ ':path': '/h2', ':method': 'GET' });
      req.on('response', (h) => {
        resolve(`status ${h[':status']}`);
        session.destroy();
      });
      req.on('error', () => {});
      req.end();
    });
    expect(outcome).not.toBe('status 200');
    expect(up.seen.map((r) => r.url)).toEqual(['/a']);
    held.destroy();
  });

  it('refuses a bad overload section at its field', async () => {
    up = await startUpstream('u');
    await expect(startProxy(withOverload(up.address, '{ maxHeapMb: -1 }'))).rejects.toThrow(/proxy\.yaml:\d+:\d+: \/overload\/maxHeapMb/);
  });
});
