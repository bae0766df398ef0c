/**
 * The proxy's resilience features end to end, over real loopback sockets: retries (reset,
 * connect failure, status, non-idempotent replay, budget), passive outlier detection, circuit
 * breaking, route and per-try timeouts, fault injection, the three balancers, active health
 * checks, client disconnects and the upstream keep-alive race.
 *
 * Every test builds its own upstreams and proxy (the config is JSON, which is YAML) and the
 * afterEach hook closes them: upstreams first (so nothing the proxy still waits on hangs),
 * then the proxy. What depends on the upstream HTTP client (errors, aborts, body replay, the
 * keep-alive race) runs against both: `tide` (proxy/upstream/h1pool.ts, the default) and
 * `undici`.
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
const CLIENTS = ['tide', 'undici'] as const;

describe.each(CLIENTS)('proxy retries (client: %s)', (client) => {
  it('retries a GET that hit a resetting endpoint onto the good one', async () => {
    const bad = await upstream('bad', resetter);
    const good = await upstream('good');
    const p = await proxyFor([bad.address, good.address], { retries: { attempts: 2, on: ['reset', 'connect-failure'] } }, { client, ...noOutlier });
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
    const p = await proxyFor([dead, good.address], { retries: { attempts: 2, on: ['reset', 'connect-failure'] } }, { client, ...noOutlier });
    const answers = await sendMany(p, 10);
    expect(answers.map((a) => a.status)).toEqual(new Array(10).fill(200));
    expect(hits(good)).toBe(10);
    expect(await metric(p, 'tide_proxy_upstream_retries_total')).toBeGreaterThanOrEqual(5);
  });

  it('does not retry a POST unless nonIdempotent, and then replays its buffered body (≤ 64 KiB)', async () => {
    const bad = await upstream('bad', resetter);
    const good = await upstream('good');
    const p = await proxyFor([bad.address, good.address], { retries: { attempts: 2, on: ['reset', 'connect-failure'] } }, { client, ...noOutlier }, [
      {
        name: 'lenient',
        match: { path: { prefix: '/lenient' } },
        backends: [{ cluster: 'app' }],
        retries: { attempts: 2, on: ['reset'], nonIdempotent: true },
      },
    ]);
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

    // Over 64 KiB the body is streamed, so it cannot be replayed: even nonIdempotent does not
    // retry it. Round robin sends one of two to the bad endpoint (502), the other arrives whole.
    const big = Buffer.alloc(100 * 1024, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ').toString();
    const bigAnswers = [await send(p, '/lenient/big', { method: 'POST', body: big }), await send(p, '/lenient/big', { method: 'POST', body: big })];
    expect(bigAnswers.map((a) => a.status).sort()).toEqual([200, 502]);
    expect(bigAnswers.find((a) => a.status === 502)?.error).toBe('ERR_PROXY_RESET');
    expect(good.seen.filter((x) => x.url === '/lenient/big').map((x) => x.body === big)).toEqual([true]);
  });

  it('retries a listed status: the first try gets 503, the second 200', async () => {
    let n = 0;
    const up = await upstream('flaky', (_req, res) => {
      n++;
      res.writeHead(n % 2 === 1 ? 503 : 200, { 'content-type': 'text/plain' });
      res.end(n % 2 === 1 ? 'try again' : 'ok');
    });
    const p = await proxyFor([up.address], { retries: { attempts: 2, on: ['retriable-status'], statuses: [503] } }, { client });
    const answers = await sendMany(p, 10);
    expect(answers.map((a) => `${a.status} ${a.body}`)).toEqual(new Array(10).fill('200 ok'));
    expect(hits(up)).toBe(20);
    expect(await metric(p, 'tide_proxy_upstream_retries_total')).toBe(10);
  });
});

describe('proxy retries: budget and endpoint choice', () => {
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

  it('under concurrency, a retry goes to another endpoint than the one whose try just failed', async () => {
    const bad = await upstream('bad', resetter);
    const good = await upstream('good');
    const p = await proxyFor([bad.address, good.address], { retries: { attempts: 1, on: ['reset'] } }, { ...noOutlier, circuitBreaker: { maxRetries: 100 } });
    const answers = await Promise.all(Array.from({ length: 20 }, () => send(p)));
    // With one retry and two endpoints, the retry of a try that failed on the bad endpoint has
    // exactly one other endpoint to go to (maxRetries is raised so that cap plays no part).
    expect(answers.map((a) => `${a.status} ${a.error ?? ''}`)).toEqual(new Array(20).fill('200 '));
    expect(hits(good)).toBe(20);
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

  it('a request the client abandoned does not wipe out the failures counted against an endpoint', async () => {
    const up = await upstream('flaky', (req, res) => {
      if (req.url === '/hang') return; // never answers
      res.writeHead(500, { 'content-type': 'text/plain' });
      res.end('broken');
    });
    const p = await proxyFor([up.address], {}, { outlierDetection: { consecutiveFailures: 3, baseEjectionTime: '10s' } });
    expect((await send(p, '/fail')).status).toBe(500);
    expect((await send(p, '/fail')).status).toBe(500);
    const ac = new AbortController();
    const gone = fetch(`http://127.0.0.1:${p.port}/hang`, { signal: ac.signal }).catch(() => 'aborted');
    expect(await waitFor(() => up.seen.some((s) => s.url === '/hang'), 1000)).toBe(true);
    ac.abort();
    expect(await gone).toBe('aborted');
    await sleep(50);
    expect((await send(p, '/fail')).status).toBe(500);
    // Three 5xx answers and no success in between: the endpoint is ejected (a one-endpoint
    // cluster keeps serving from it, in panic mode, but the ejection is counted).
    expect(await metric(p, 'tide_proxy_outlier_ejections_total')).toBe(1);
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

describe('proxy circuit breaker: maxRetries', () => {
  it('caps the retries in flight, not only those waiting out their back-off', async () => {
    const bad = await upstream('bad', resetter);
    const good = await upstream('good', delayed(400)('good'));
    const p = await proxyFor([bad.address, good.address], { retries: { attempts: 1, on: ['reset'] } }, { ...noOutlier, circuitBreaker: { maxRetries: 1 } });
    // Five requests 50 ms apart, all sent while the first retry (400 ms on the good endpoint)
    // is still in flight: with maxRetries 1, no second retry may start before it ends.
    const pending: Promise<Answer>[] = [];
    for (let i = 0; i < 5; i++) {
      pending.push(send(p));
      await sleep(50);
    }
    const answers = await Promise.all(pending);
    expect(answers.every((a) => a.status === 200 || (a.status === 502 && a.error === 'ERR_PROXY_RESET'))).toBe(true);
    expect(await metric(p, 'tide_proxy_upstream_retries_total')).toBeLessThanOrEqual(1);
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

describe.each(CLIENTS)('proxy timeouts (client: %s)', (client) => {
  it('answers 504 ERR_PROXY_TIMEOUT after the route timeout and aborts the upstream request', async () => {
    const h = await hanging('hang');
    const p = await proxyFor([h.up.address], { timeout: '300ms' }, { client });
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
    const p = await proxyFor([h.up.address, good.address], { retries: { attempts: 1, perTryTimeout: '200ms' } }, { client, ...noOutlier });
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
    const sick = await upstream(
      'sick',
      check('sick', () => healthy),
    );
    const well = await upstream(
      'well',
      check('well', () => true),
    );
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

describe.each(CLIENTS)('proxy client disconnects (client: %s)', (client) => {
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
    const p = await proxyFor([up.address], {}, { client });
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
 * An upstream whose keep-alive connections die when idle for `idleMs`, unannounced (no
 * Keep-Alive: timeout=N), the way many load balancers' do. Loopback is too fast to lose that
 * race by chance, so the crossing is made deterministic: a request arriving on a connection
 * that has been idle that long finds it closing, and the connection is closed without an
 * answer, exactly what the proxy sees when its request crosses the upstream's FIN. `/slow`
 * is answered after 30 ms, the rest at once.
 */
async function idleClosing(idleMs: number): Promise<{ up: Upstream; crossed: () => number }> {
  const lastAnswer = new WeakMap<Socket, number>();
  let crossed = 0;
  const up = await upstream('idle-closing', (req, res, body) => {
    const socket = req.socket;
    const last = lastAnswer.get(socket);
    if (last !== undefined && performance.now() - last >= idleMs) {
      crossed++;
      socket.destroy();
      return;
    }
    res.on('finish', () => lastAnswer.set(socket, performance.now()));
    setTimeout(
      () => {
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.end(`ok ${req.method} ${body.length}`);
      },
      req.url === '/slow' ? 30 : 0,
    );
  });
  return { up, crossed: () => crossed };
}

/** `n` requests one after the other, `gap(i)` ms apart. */
async function spaced(p: RunningProxy, n: number, gap: (i: number) => number, init: (i: number) => RequestInit = () => ({})): Promise<Answer[]> {
  const out: Answer[] = [];
  for (let i = 0; i < n; i++) {
    out.push(await send(p, '/', init(i)));
    await sleep(gap(i));
  }
  return out;
}

describe.each(CLIENTS)('proxy upstream keep-alive race (client: %s)', (client) => {
  it('an upstream closing keep-alive connections after 50 ms, requests ~50 ms apart: with reset retries every request gets 200', async () => {
    const up = await upstream('short');
    up.server.keepAliveTimeout = 50;
    // Node 24 adds keepAliveTimeoutBuffer (1 s) to the socket's idle timer, which would keep the
    // connection open long after the 50 ms; without it the upstream really closes at 50 ms.
    Object.assign(up.server, { keepAliveTimeoutBuffer: 0 });
    let connections = 0;
    up.server.on('connection', () => connections++);
    const p = await proxyFor([up.address], { retries: { attempts: 1, on: ['reset'], nonIdempotent: true } }, { client });
    const gap = (i: number) => 44 + (i % 12); // 44…55 ms, straddling the upstream's 50
    const gets = await spaced(p, 24, gap);
    expect(gets.map((a) => a.status)).toEqual(new Array(24).fill(200));
    const posts = await spaced(p, 24, gap, (i) => ({ method: 'POST', body: `post ${i}` }));
    expect(posts.map((a) => a.status)).toEqual(new Array(24).fill(200));
    const bodies = up.seen.filter((x) => x.method === 'POST').map((x) => x.body);
    expect(new Set(bodies)).toEqual(new Set(Array.from({ length: 24 }, (_, i) => `post ${i}`)));
    expect(connections).toBeGreaterThanOrEqual(5); // the upstream did close connections under the proxy
    // Without retries (measured, not asserted; 40 requests at this spacing):
    // - client tide: GETs all 200, since h1pool.ts re-sends a replayable request whose reused
    //   connection closed before any response byte on a fresh connection. POSTs: about 1 in
    //   13 (3 of 40) gets 502 ERR_PROXY_RESET: a POST that crossed the upstream's close is not
    //   replayable, and h1pool.ts reuses the connection although the upstream announced
    //   "Keep-Alive: timeout=0".
    // - client undici: all 200, GETs and POSTs; undici honours "Keep-Alive: timeout=0" and
    //   opens a new connection per request, so no request ever crosses a close.
  });

  it('an upstream closing idle connections unannounced: GETs and (nonIdempotent) POSTs all get 200 with reset retries', async () => {
    const { up, crossed } = await idleClosing(40);
    const p = await proxyFor([up.address], { retries: { attempts: 1, on: ['reset'], nonIdempotent: true } }, { client });
    const gets = await spaced(p, 10, () => 50);
    expect(gets.map((a) => a.status)).toEqual(new Array(10).fill(200));
    expect(crossed()).toBeGreaterThanOrEqual(5); // the race was really run
    const before = crossed();
    const posts = await spaced(
      p,
      10,
      () => 50,
      (i) => ({ method: 'POST', body: 'x'.repeat(100 + i) }),
    );
    expect(posts.map((a) => a.status)).toEqual(new Array(10).fill(200));
    expect(posts.map((a) => a.body)).toEqual(Array.from({ length: 10 }, (_, i) => `ok POST ${100 + i}`));
    expect(crossed() - before).toBeGreaterThanOrEqual(5);
    expect(await metric(p, 'tide_proxy_upstream_retries_total')).toBeGreaterThanOrEqual(5);
    // Without retries (measured, not asserted): every POST that crosses the close gets 502
    // ERR_PROXY_RESET (one in two here), the expected price of not replaying a non-idempotent
    // request; GETs get 200 with client tide (h1pool.ts re-sends them on a fresh connection)
    // but 502 ERR_PROXY_RESET with client undici, which does not.
  });

  it('a request that lost the race while the pool is at its connection limit is still answered, and the pool keeps working', async () => {
    const { up, crossed } = await idleClosing(40);
    const p = await proxyFor([up.address], { timeout: '1s', retries: { attempts: 1, on: ['reset'] } }, { client, connectionsPerEndpoint: 1 });
    // Two at once on one connection: the second waits in the pool's queue for the first.
    const both = await Promise.all([send(p, '/slow'), send(p, '/b')]);
    expect(both.map((a) => a.status)).toEqual([200, 200]);
    await sleep(60);
    // The connection has been idle for 60 ms: the upstream closes it as this GET arrives.
    const raced = await send(p, '/c');
    expect(crossed()).toBe(1);
    expect(`${raced.status} ${raced.error ?? ''}`).toBe('200 ');
    const after = await send(p, '/d');
    expect(`${after.status} ${after.error ?? ''}`).toBe('200 ');
  });
});
