import type { Socket } from 'node:net';
import { expect, it } from 'vitest';
import { startProxy, startUpstream } from '../helpers/proxy.ts';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
async function metrics(port: number): Promise<string> {
  return (await (await fetch(`http://127.0.0.1:${port}/metrics`)).text()).split('\n').filter((l) => l.startsWith('tide_proxy_upstream') || l.startsWith('tide_proxy_requests')).join(' | ');
}
function cfg(endpoints: string[], route: object = {}, cluster: object = {}) {
  return JSON.stringify({ listeners: [{ name: 'main', port: 0 }], admin: { port: 0 }, virtualHosts: [{ name: 'all', domains: ['*'], routes: [{ name: 'all', match: { path: { prefix: '/' } }, backends: [{ cluster: 'app' }], ...route }] }], clusters: [{ name: 'app', endpoints, ...cluster }] });
}
async function get(port: number, path: string, signal?: AbortSignal) {
  const t0 = performance.now();
  try {
    const r = await fetch(`http://127.0.0.1:${port}${path}`, { signal });
    const b = await r.text();
    return `${r.status} ${r.headers.get('tide-proxy-error') ?? ''} ${b.slice(0, 20)} ${Math.round(performance.now() - t0)}ms`;
  } catch (e) { return `err ${(e as Error).name} ${Math.round(performance.now() - t0)}ms`; }
}

for (const retries of [false, true]) it(`race simulated retries=${retries}`, async () => {
  const last = new WeakMap<Socket, number>();
  const up = await startUpstream('idle', (req, res) => {
    const s = req.socket;
    const l = last.get(s);
    if (l !== undefined && performance.now() - l >= 40) { s.destroy(); return; }
    res.on('finish', () => last.set(s, performance.now()));
    res.end('ok');
  });
  const p = await startProxy(cfg([up.address], retries ? { retries: { attempts: 1, on: ['reset'] } } : {}));
  const out: string[] = [];
  for (let i = 0; i < 10; i++) { out.push(await get(p.port, '/')); await sleep(50); }
  console.log(retries, out.join(' ; '), await metrics(p.ports.admin as number));
  await up.close(); await p.close();
});

it('route timeout while queued', async () => {
  const seenAt: string[] = [];
  const up = await startUpstream('q', (req, res) => {
    seenAt.push(`${req.url}@${Math.round(performance.now())}`);
    if (req.url?.startsWith('/hang')) return;
    res.end('ok');
  });
  const p = await startProxy(cfg([up.address], { timeout: '300ms' }, { connectionsPerEndpoint: 1, circuitBreaker: { maxRequests: 3 } }));
  const t0 = Math.round(performance.now());
  const rs = await Promise.all([get(p.port, '/hang1'), get(p.port, '/hang2'), get(p.port, '/hang3')]);
  console.log('t0', t0, rs);
  await sleep(100);
  console.log('ok1', await get(p.port, '/ok'));
  console.log('ok2', await get(p.port, '/ok'));
  console.log('seen', seenAt);
  console.log(await metrics(p.ports.admin as number));
  await up.close(); await p.close();
});

it('per-try timeout while queued', async () => {
  const hang = await startUpstream('hang', () => {});
  const good = await startUpstream('good');
  const p = await startProxy(cfg([hang.address, good.address], { retries: { attempts: 1, perTryTimeout: '200ms' } }, { connectionsPerEndpoint: 1, outlierDetection: { consecutiveFailures: 0 } }));
  const rs = await Promise.all([get(p.port, '/a'), get(p.port, '/b'), get(p.port, '/c'), get(p.port, '/d')]);
  console.log('pertry', rs, 'hang', hang.seen.length, 'good', good.seen.length);
  await hang.close(); await good.close(); await p.close();
});

it('client disconnect while queued', async () => {
  const seen: string[] = [];
  const up = await startUpstream('q', (req, res) => {
    seen.push(req.url ?? '');
    setTimeout(() => res.end('late'), 500);
  });
  const p = await startProxy(cfg([up.address], {}, { connectionsPerEndpoint: 1 }));
  const acs = [new AbortController(), new AbortController(), new AbortController()];
  const ps = acs.map((ac, i) => get(p.port, `/c${i}`, ac.signal));
  await sleep(100);
  acs.forEach((a) => a.abort());
  console.log('disc', await Promise.all(ps));
  await sleep(1500);
  console.log('disc seen', seen);
  await up.close(); await p.close();
});
