import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { expect, it } from 'vitest';
import { rawRequest, startProxy, startUpstream } from '../helpers/proxy.ts';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
async function metric(port: number, name: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}{cluster="app"} `));
  return line ? Number(line.slice(line.lastIndexOf(' ') + 1)) : 0;
}
function cfg(endpoints: string[], route: object = {}, cluster: object = {}) {
  return JSON.stringify({ listeners: [{ name: 'main', port: 0 }], admin: { port: 0 }, virtualHosts: [{ name: 'all', domains: ['*'], routes: [{ name: 'all', match: { path: { prefix: '/' } }, backends: [{ cluster: 'app' }], ...route }] }], clusters: [{ name: 'app', endpoints, ...cluster }] });
}

it('node keepalive header', async () => {
  const up = await startUpstream('x');
  up.server.keepAliveTimeout = 50;
  const r = await rawRequest(up.port, 'GET / HTTP/1.1\r\nHost: a\r\n\r\n', 300);
  console.log(JSON.stringify(r.text));
  await up.close();
});

for (const retries of [false, true]) {
  it(`idle closing race retries=${retries}`, async () => {
    const up = await startUpstream('idle');
    up.server.keepAliveTimeout = 0;
    const timers = new WeakMap<Socket, NodeJS.Timeout>();
    let conns = 0;
    up.server.on('connection', () => conns++);
    up.server.on('request', (req: IncomingMessage, res: ServerResponse) => {
      const socket = req.socket;
      clearTimeout(timers.get(socket));
      res.on('finish', () => timers.set(socket, setTimeout(() => socket.destroy(), 50)));
    });
    const p = await startProxy(cfg([up.address], retries ? { retries: { attempts: 1, on: ['reset'] } } : {}));
    const gaps = [40, 45, 48, 50, 52, 55];
    const statuses: string[] = [];
    for (let i = 0; i < 60; i++) {
      const r = await fetch(`http://127.0.0.1:${p.port}/`);
      await r.text();
      statuses.push(`${r.status}${r.headers.get('tide-proxy-error') ?? ''}`);
      await sleep(gaps[i % gaps.length] as number);
    }
    const bad = statuses.filter((s) => !s.startsWith('200'));
    console.log(`retries=${retries} failures=${bad.length} ${bad.join(',')} upstreamConns=${conns} hits=${up.seen.length} retriesMetric=${await metric(p.ports.admin as number, 'tide_proxy_upstream_retries_total')}`);
    await up.close();
    await p.close();
  });
}
