/**
 * The proxy's resilience features end to end, over real loopback sockets: retries (reset,
 * connect failure, status, non-idempotent replay, budget), passive outlier detection, circuit
 * breaking, route and per-try timeouts, fault injection, the three balancers, active health
 * checks, client disconnects and the upstream keep-alive race.
 *
 * Every test builds its own upstreams and proxy (the config is JSON, which is YAML) and the
 * afterEach hook closes them: upstreams first (so nothing the proxy still waits on hangs),
 * then the proxy.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createServer as createNetServer, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { type RunningProxy, startProxy, startUpstream, type Upstream } from '../helpers/proxy.ts';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

const upstreams: Upstream[] = [];
const proxies: RunningProxy[] = [];

afterEach(async () => {
  await Promise.all(upstreams.splice(0).map((u) => u.close()));
  await Promise.all(proxies.splice(0).map((p) => p.close()));
});

type Handler = (req: IncomingMessage, res: ServerResponse, body: string) => void;

async function upstream(name: string, handler?: Handler): Promise<Upstream> {
  const u = await startUpstream(name, handler);
  upstreams.push(u);
  return u;
}

/** Requests that reached `u`, health checks left out. */
const hits = (u: Upstream) => u.seen.filter((s) => s.url !== '/healthz').length;

/** An address with nothing listening: a port bound, then released. */
async function deadAddress(): Promise<string> {
  const s = createNetServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address() as { port: number };
  await new Promise<void>((r) => s.close(() => r()));
  return `127.0.0.1:${port}`;
}

type Obj = Record<string, unknown>;

/** One listener, an admin listener, a catch-all route `all` (plus `extraRoutes` before it) to cluster `app`. */
async function proxyFor(endpoints: string[], route: Obj = {}, cluster: Obj = {}, extraRoutes: Obj[] = []): Promise<RunningProxy> {
  const config = {
    listeners: [{ name: 'main', port: 0 }],
    admin: { port: 0 },
    virtualHosts: [
      {
        name: 'all',
        domains: ['*'],
        routes: [...extraRoutes, { name: 'all', match: { path: { prefix: '/' } }, backends: [{ cluster: 'app' }], ...route }],
      },
    ],
    clusters: [{ name: 'app', endpoints, ...cluster }],
  };
  const p = await startProxy(JSON.stringify(config, null, 2));
  proxies.push(p);
  return p;
}

interface Answer {
  status: number;
  body: string;
  error: string | null;
  ms: number;
}

async function send(p: RunningProxy, path = '/', init: RequestInit = {}): Promise<Answer> {
  const t0 = performance.now();
  const r = await fetch(`http://127.0.0.1:${p.port}${path}`, init);
  const body = await r.text();
  return { status: r.status, body, error: r.headers.get('tide-proxy-error'), ms: performance.now() - t0 };
}

/** `n` requests, at most `concurrency` at a time. */
async function sendMany(p: RunningProxy, n: number, concurrency = 1, path = '/'): Promise<Answer[]> {
  const out: Answer[] = new Array(n);
  let next = 0;
  const worker = async () => {
    while (next < n) {
      const i = next++;
      out[i] = await send(p, path);
    }
  };
  await Promise.all(Array.from({ length: Math.min(n, concurrency) }, worker));
  return out;
}

async function metric(p: RunningProxy, name: string, labels = 'cluster="app"'): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${p.ports.admin}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}{${labels}} `));
  return line ? Number(line.slice(line.lastIndexOf(' ') + 1)) : 0;
}

const count = (answers: Answer[], pred: (a: Answer) => boolean) => answers.filter(pred).length;

/** Polls `cond` every 10 ms for at most `ms`. */
async function waitFor(cond: () => boolean, ms: number): Promise<boolean> {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    if (cond()) return true;
    await sleep(10);
  }
  return cond();
}

const resetter: Handler = (req) => req.socket.destroy();
const noOutlier = { outlierDetection: { consecutiveFailures: 0 } };

describe('proxy retries', () => {
  it('retries a GET that hit a resetting endpoint onto the good one', async () => {
    const bad = await upstream('bad', resetter);
    const good = await upstream('good');
    const p = await proxyFor([bad.address, good.address], { retries: { attempts: 2, on: ['reset', 'connect-failure'] } }, noOutlier);
    const answers = await sendMany(p, 10);
    expect(answers.map((a) => a.status)).toEqual(new Array(10).fill(200));
    expect(answers.every((a) => a.body === 'hello from good')).toBe(true);
    expect(hits(good)).toBe(10);
    // Round robin: a try on the bad endpoint is followed by a retry on the good one.
    expect(hits(bad)).toBeGreaterThanOrEqual(5);
    expect(await metric(p, 'tide_proxy_upstream_retries_total')).toBe(hits(bad));
  });

  it('retries a connect failure onto the live endpoint', async () => {
    const dead = await deadAddress();
    const good = await upstream('good');
    const p = await proxyFor([dead, good.address], { retries: { attempts: 2, on: ['reset', 'connect-failure'] } }, noOutlier);
    const answers = await sendMany(p, 10);
    expect(answers.map((a) => a.status)).toEqual(new Array(10).fill(200));
    expect(hits(good)).toBe(10);
    expect(await metric(p, 'tide_proxy_upstream_retries_total')).toBeGreaterThanOrEqual(5);
  });

  it('does not retry a POST unless nonIdempotent, and then replays its buffered body', async () => {
    const bad = await upstream('bad', resetter);
    const good = await upstream('good');
    const p = await proxyFor(
      [bad.address, good.address],
      { retries: { attempts: 2, on: ['reset', 'connect-failure'] } },
      noOutlier,
      [{ name: 'lenient', match: { path: { prefix: '/lenient' } }, backends: [{ cluster: 'app' }], retries: { attempts: 2, on: ['reset'], nonIdempotent: true } }],
    );
    const strict: Answer[] = [];
    for (let i = 0; i < 4; i++) strict.push(await send(p, '/strict', { method: 'POST', body: `small ${i}` }));
    // Round robin alternates, no retries: the two that went to the bad endpoint fail.
    expect(hits(bad)).toBe(2);
    expect(count(strict, (a) => a.status === 502 && a.error === 'ERR_PROXY_RESET')).toBe(2);
    expect(count(strict, (a) => a.status === 200)).toBe(2);

    const body = Buffer.alloc(60 * 1024, 'abcdefghijklmnopqrstuvwxyz0123456789').toString();
    const before = hits(good);
    const lenient: Answer[] = [];
    for (let i = 0; i < 4; i++) lenient.push(await send(p, '/lenient/x', { method: 'POST', body: `${i}${body}` }));
    expect(lenient.map((a) => a.status)).toEqual([200, 200, 200, 200]);
    const got = good.seen.slice(before);
    expect(got).toHaveLength(4);
    got.forEach((s, i) => {
      expect(s.method).toBe('POST');
      expect(s.body.length).toBe(body.length + 1);
      expect(s.body === `${i}${body}`).toBe(true);
    });
    expect(await metric(p, 'tide_proxy_upstream_retries_total')).toBeGreaterThanOrEqual(1);
  });

  it('retries a listed status: the first try gets 503, the second 200', async () => {
    let n = 0;
    const up = await upstream('flaky', (_req, res) => {
      n++;
      res.writeHead(n % 2 === 1 ? 503 : 200, { 'content-type': 'text/plain' });
      res.end(n % 2 === 1 ? 'try again' : 'ok');
    });
    const p = await proxyFor([up.address], { retries: { attempts: 2, on: ['retriable-status'], statuses: [503] } });
    const answers = await sendMany(p, 10);
    expect(answers.map((a) => `${a.status} ${a.body}`)).toEqual(new Array(10).fill('200 ok'));
    expect(hits(up)).toBe(20);
    expect(await metric(p, 'tide_proxy_upstream_retries_total')).toBe(10);
  });

  it('the retry budget keeps an upstream that fails everything from getting each request 4 times', async () => {
    const up = await upstream('down', (_req, res) => {
      res.writeHead(503, { 'content-type': 'text/plain' });
      res.end('down');
    });
    const p = await proxyFor([up.address], { retries: { attempts: 3, on: ['gateway-error'], budget: { ratio: 0.2, minPerSecond: 1 } } });
    const answers = await sendMany(p, 200);
    expect(count(answers, (a) => a.status === 503)).toBe(200);
    // ratio × requests + minPerSecond × 10 s of retries at most, plus a little slack; 800 without a budget.
    expect(hits(up)).toBeLessThanOrEqual(200 * 1.2 + 10 + 5);
    expect(hits(up)).toBeGreaterThan(200); // retries did happen
  });
});

describe('proxy outlier detection', () => {
  it('ejects an endpoint after consecutive failures and takes it back after the ejection time', async () => {
    let failing = true;
    const bad = await upstream('bad', (_req, res) => {
      res.writeHead(failing ? 500 : 200, { 'content-type': 'text/plain' });
      res.end(failing ? 'broken' : 'hello from bad');
    });
    const good = await upstream('good');
    const p = await proxyFor([bad.address, good.address], {}, { outlierDetection: { consecutiveFailures: 3, baseEjectionTime: '1s' } });
    for (let i = 0; i < 20 && hits(bad) < 3; i++) await send(p);
    expect(hits(bad)).toBe(3);
    const ejectedAt = performance.now();
    expect(await metric(p, 'tide_proxy_outlier_ejections_total')).toBe(1);

    const during = await sendMany(p, 50);
    expect(hits(bad)).toBe(3);
    expect(during.every((a) => a.status === 200 && a.body === 'hello from good')).toBe(true);

    failing = false;
    await sleep(Math.max(0, 1100 - (performance.now() - ejectedAt)));
    const after = await sendMany(p, 20);
    expect(after.every((a) => a.status === 200)).toBe(true);
    expect(hits(bad)).toBeGreaterThanOrEqual(3 + 5);
    expect(count(after, (a) => a.body === 'hello from bad')).toBeGreaterThanOrEqual(5);
  });

  it('never ejects more than maxEjectionPercent of the cluster: one of two failing endpoints keeps serving', async () => {
    const failing: Handler = (_req, res) => {
      res.writeHead(500, { 'content-type': 'text/plain' });
      res.end('broken');
    };
    const a = await upstream('a', failing);
    const b = await upstream('b', failing);
    const p = await proxyFor([a.address, b.address], {}, { outlierDetection: { consecutiveFailures: 3, baseEjectionTime: '10s', maxEjectionPercent: 50 } });
    await sendMany(p, 12);
    expect(hits(a)).toBeGreaterThanOrEqual(3);
    expect(hits(b)).toBeGreaterThanOrEqual(3);
    expect(await metric(p, 'tide_proxy_outlier_ejections_total')).toBe(1);
    const [ha, hb] = [hits(a), hits(b)];
    const next = await sendMany(p, 20);
    // Answered by an upstream (its own 500), not refused by the proxy; all by the one not ejected.
    expect(next.every((x) => x.status === 500 && x.error === null && x.body === 'broken')).toBe(true);
    expect([hits(a) - ha, hits(b) - hb].sort((x, y) => x - y)).toEqual([0, 20]);
  });
});

describe('proxy circuit breaker', () => {
  it('fails the requests over maxRequests fast with 503 ERR_PROXY_CIRCUIT_OPEN', async () => {
    const slow = await upstream('slow', (_req, res) => {
      setTimeout(() => {
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.end('slow ok');
      }, 500);
    });
    const p = await proxyFor([slow.address], {}, { circuitBreaker: { maxRequests: 2 } });
    const answers = await Promise.all(Array.from({ length: 6 }, () => send(p)));
    const open = answers.filter((a) => a.status === 503);
    expect(open).toHaveLength(4);
    for (const a of open) {
      expect(a.error).toBe('ERR_PROXY_CIRCUIT_OPEN');
      expect(a.ms).toBeLessThan(250);
    }
    expect(answers.filter((a) => a.status === 200 && a.body === 'slow ok')).toHaveLength(2);
    expect(hits(slow)).toBe(2);
    expect(await metric(p, 'tide_proxy_circuit_open_total')).toBe(4);
  });
});

/** An upstream that takes requests and never answers; `closed` counts requests whose connection went away. */
async function hanging(name: string): Promise<{ up: Upstream; closed: () => number }> {
  let closed = 0;
  const up = await upstream(name, (_req, res) => {
    res.on('close', () => {
      if (!res.writableFinished) closed++;
    });
  });
  return { up, closed: () => closed };
}

describe('proxy timeouts', () => {
  it('answers 504 ERR_PROXY_TIMEOUT after the route timeout and aborts the upstream request', async () => {
    const h = await hanging('hang');
    const p = await proxyFor([h.up.address], { timeout: '300ms' });
    const a = await send(p);
    expect(a.status).toBe(504);
    expect(a.error).toBe('ERR_PROXY_TIMEOUT');
    expect(a.ms).toBeGreaterThanOrEqual(250);
    expect(a.ms).toBeLessThan(2000);
    expect(await waitFor(() => h.closed() === 1, 1000)).toBe(true);
  });

  it('a per-try timeout moves a hanging try onto another endpoint', async () => {
    const h = await hanging('hang');
    const good = await upstream('good');
    const p = await proxyFor([h.up.address, good.address], { retries: { attempts: 1, perTryTimeout: '200ms' } }, noOutlier);
    const answers = await sendMany(p, 4);
    expect(answers.map((a) => `${a.status} ${a.body}`)).toEqual(new Array(4).fill('200 hello from good'));
    expect(hits(h.up)).toBeGreaterThanOrEqual(2);
    for (const a of answers) expect(a.ms).toBeLessThan(2000);
    expect(await waitFor(() => h.closed() === hits(h.up), 1000)).toBe(true);
  });
});

describe('proxy fault injection', () => {
  it('aborts every request with the configured status without reaching the upstream', async () => {
    const up = await upstream('up');
    const p = await proxyFor([up.address], { fault: { abort: { status: 418, percent: 100 } } });
    const answers = await sendMany(p, 5);
    expect(answers.every((a) => a.status === 418 && a.error === 'ERR_PROXY_FAULT')).toBe(true);
    expect(hits(up)).toBe(0);
  });

  it('aborts about half of the requests at 50%', async () => {
    const up = await upstream('up');
    const p = await proxyFor([up.address], { fault: { abort: { status: 503, percent: 50 } } });
    const answers = await sendMany(p, 400, 16);
    const aborted = count(answers, (a) => a.status === 503 && a.error === 'ERR_PROXY_FAULT');
    expect(aborted).toBeGreaterThanOrEqual(140);
    expect(aborted).toBeLessThanOrEqual(260);
    expect(count(answers, (a) => a.status === 200)).toBe(400 - aborted);
    expect(hits(up)).toBe(400 - aborted);
  });

  it('delays every request at 100%', async () => {
    const up = await upstream('up');
    const p = await proxyFor([up.address], { fault: { delay: { duration: '200ms', percent: 100 } } });
    const answers = await Promise.all([send(p), send(p), send(p)]);
    for (const a of answers) {
      expect(a.status).toBe(200);
      expect(a.ms).toBeGreaterThanOrEqual(200);
      expect(a.ms).toBeLessThan(2000);
    }
    expect(hits(up)).toBe(3);
  });
});

/** An upstream answering "hello from NAME" after `ms`. */
function delayed(ms: number): (name: string) => Handler {
  return (name) => (_req, res) => {
    setTimeout(() => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(`hello from ${name}`);
    }, ms);
  };
}

describe('proxy balancers', () => {
  it('least-request steers new requests away from an endpoint with many in flight', async () => {
    const slow = await upstream('slow', delayed(300)('slow'));
    const fast = await upstream('fast');
    const p = await proxyFor([slow.address, fast.address], {}, { balancer: 'least-request' });
    const pending: Promise<Answer>[] = [];
    for (let i = 0; i < 40; i++) {
      pending.push(send(p));
      await sleep(3); // all 40 in flight while the slow one holds its first answers
    }
    const answers = await Promise.all(pending);
    expect(answers.every((a) => a.status === 200)).toBe(true);
    expect(hits(slow) + hits(fast)).toBe(40);
    expect(hits(fast)).toBeGreaterThanOrEqual(30);
  });

  it('peak-EWMA prefers the low-latency endpoint', async () => {
    const slow = await upstream('slow', delayed(50)('slow'));
    const fast = await upstream('fast', delayed(1)('fast'));
    const p = await proxyFor([slow.address, fast.address], {}, { balancer: 'peak-ewma' });
    const answers = await sendMany(p, 200);
    expect(answers.every((a) => a.status === 200)).toBe(true);
    expect(hits(fast)).toBeGreaterThan(140);
  });

  it('round robin alternates evenly', async () => {
    const a = await upstream('a');
    const b = await upstream('b');
    const c = await upstream('c');
    const p = await proxyFor([a.address, b.address, c.address]);
    const answers = await sendMany(p, 90);
    expect(answers.every((x) => x.status === 200)).toBe(true);
    for (const u of [a, b, c]) {
      expect(hits(u)).toBeGreaterThanOrEqual(29);
      expect(hits(u)).toBeLessThanOrEqual(31);
    }
    // Strictly in turn.
    expect(answers.slice(0, 6).map((x) => x.body.slice(-1))).toEqual(answers.slice(6, 12).map((x) => x.body.slice(-1)));
  });
});

describe('proxy active health checks', () => {
  it('takes an endpoint failing /healthz out of rotation and puts it back when it passes', async () => {
    let healthy = false;
    const check =
      (name: string, isHealthy: () => boolean): Handler =>
      (req, res) => {
        if (req.url === '/healthz') {
          res.writeHead(isHealthy() ? 200 : 503, { 'content-type': 'text/plain' });
          res.end(isHealthy() ? 'ok' : 'not ok');
          return;
        }
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.end(`hello from ${name}`);
      };
    const sick = await upstream('sick', check('sick', () => healthy));
    const well = await upstream('well', check('well', () => true));
    const p = await proxyFor(
      [sick.address, well.address],
      {},
      { healthCheck: { path: '/healthz', interval: '200ms', unhealthyThreshold: 1, healthyThreshold: 1 } },
    );
    expect(await waitFor(() => sick.seen.some((s) => s.url === '/healthz'), 1000)).toBe(true);
    await sleep(50);
    const out = await sendMany(p, 20);
    expect(out.every((a) => a.body === 'hello from well')).toBe(true);
    expect(hits(sick)).toBe(0);

    healthy = true;
    const checks = sick.seen.filter((s) => s.url === '/healthz').length;
    expect(await waitFor(() => sick.seen.filter((s) => s.url === '/healthz').length >= checks + 2, 1500)).toBe(true);
    const back = await sendMany(p, 20);
    expect(back.every((a) => a.status === 200)).toBe(true);
    expect(hits(sick)).toBeGreaterThanOrEqual(5);
  });
});

describe('proxy client disconnects', () => {
  it('aborts the upstream request when the client goes away, and keeps serving', async () => {
    let closedEarly = 0;
    const up = await upstream('slow', (req, res) => {
      if (req.url === '/slow') {
        res.on('close', () => {
          if (!res.writableFinished) closedEarly++;
        });
        const t = setTimeout(() => res.end('late'), 1500);
        res.on('close', () => clearTimeout(t));
        return;
      }
      res.end('quick');
    });
    const p = await proxyFor([up.address]);
    const ac = new AbortController();
    const gone = fetch(`http://127.0.0.1:${p.port}/slow`, { signal: ac.signal }).then(
      () => 'answered',
      () => 'aborted',
    );
    expect(await waitFor(() => up.seen.length === 1, 1000)).toBe(true);
    ac.abort();
    expect(await gone).toBe('aborted');
    expect(await waitFor(() => closedEarly === 1, 1000)).toBe(true);
    const after = await send(p, '/quick');
    expect(after.status).toBe(200);
    expect(after.body).toBe('quick');
  });
});

/**
 * An HTTP/1.1 upstream that keeps connections alive but closes any that stays idle for
 * `idleMs`, without advertising it (no Keep-Alive: timeout=N), like many load balancers do.
 */
async function idleClosing(idleMs: number): Promise<Upstream> {
  const up = await upstream('idle-closing');
  up.server.keepAliveTimeout = 0; // no Keep-Alive header and no server-side timer of Node's own
  const timers = new WeakMap<Socket, NodeJS.Timeout>();
  up.server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    const socket = req.socket;
    clearTimeout(timers.get(socket));
    res.on('finish', () => timers.set(socket, setTimeout(() => socket.destroy(), idleMs)));
  });
  return up;
}

async function spaced(p: RunningProxy, n: number, gapMs: number): Promise<Answer[]> {
  const out: Answer[] = [];
  for (let i = 0; i < n; i++) {
    out.push(await send(p));
    await sleep(gapMs);
  }
  return out;
}

describe('proxy upstream keep-alive race', () => {
  it('an upstream with a 50 ms keepAliveTimeout: every request spaced ~50 ms apart gets 200 (with and without retries)', async () => {
    const up = await upstream('short');
    up.server.keepAliveTimeout = 50;
    const retrying = await proxyFor([up.address], { retries: { attempts: 1, on: ['reset'] } });
    const withRetries = await spaced(retrying, 20, 50);
    expect(withRetries.map((a) => a.status)).toEqual(new Array(20).fill(200));
    // Without retries too: Node advertises "Keep-Alive: timeout=0" for a 50 ms timeout, and the
    // proxy's undici pool then does not reuse the connection, so there is no race to lose.
    const plain = await proxyFor([up.address]);
    const without = await spaced(plain, 20, 50);
    expect(without.map((a) => a.status)).toEqual(new Array(20).fill(200));
  });

  it('an upstream that closes idle connections after 50 ms unannounced: reset retries hide the race', async () => {
    const up = await idleClosing(50);
    const retrying = await proxyFor([up.address], { retries: { attempts: 1, on: ['reset'] } });
    const gaps = [40, 45, 48, 50, 52, 55];
    const answers: Answer[] = [];
    for (let i = 0; i < 30; i++) {
      answers.push(await send(retrying));
      await sleep(gaps[i % gaps.length] as number);
    }
    expect(answers.map((a) => a.status)).toEqual(new Array(30).fill(200));
  });
});
