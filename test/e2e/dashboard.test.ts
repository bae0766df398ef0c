/**
 * The dashboard end to end: a real `tide up`, a real `tide dashboard` relay, headless Chromium
 * (playwright-core). The page loads through the relay without a token, a function deployed
 * with the CLI while it is open appears, traffic sent through the gateway shows as requests/s
 * and on the charts, a trace opens as a waterfall with span attributes, and a screenshot is
 * kept in test/artifacts/dashboard.png. The relay refuses writes and foreign Host headers; the
 * API serves the page itself without a token (its data with one, asked for by a prompt).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { launchChromium } from '../helpers/browser.ts';
import { otlpSpans, receiver } from '../helpers/otlp.ts';
import { apiFetch, FIXTURES, http, ROOT, sleep, startTide, stopProcess, stopTide, TIDE_BIN, type TideProcess, tide } from '../helpers/tide.ts';

let t: TideProcess;
let relay: { child: ChildProcess; pid: number; exited: Promise<number | string>; output: () => string };
let relayUrl: string;
let relayPort: number;
let browser: Browser;
/** The OTLP receiver the Tide under test exports its spans to. */
let otlp: Awaited<ReturnType<typeof receiver>>;
let page: Page;
/** Errors the page reported: console errors (a CSP violation is one), uncaught exceptions. */
const pageErrors: string[] = [];
/** Every URL the page loaded. */
const loaded: string[] = [];
const ARTIFACTS = join(ROOT, 'test', 'artifacts');

async function startRelay(dataDir: string): Promise<void> {
  const child = spawn(process.execPath, [TIDE_BIN, 'dashboard', '--no-open', '--port', '0', '--data-dir', dataDir], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d) => {
    out += d;
  });
  child.stderr.on('data', (d) => {
    out += d;
  });
  const exited = new Promise<number | string>((r) => child.once('exit', (code, signal) => r(code ?? signal ?? -1)));
  relay = { child, pid: child.pid as number, exited, output: () => out };
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    const m = /Dashboard: (http:\/\/127\.0\.0\.1:(\d+)\/dashboard)\n/.exec(out);
    if (m) {
      relayUrl = m[1] as string;
      relayPort = Number(m[2]);
      return;
    }
    if (child.exitCode !== null) throw new Error(`tide dashboard exited (${child.exitCode}):\n${out}`);
    await sleep(50);
  }
  throw new Error(`tide dashboard printed no URL in time:\n${out}`);
}

/** Sends requests to `fn` through the gateway, `conns` at a time, until `stop()`. */
function traffic(fn: string, conns = 4): { stop(): Promise<number> } {
  let running = true;
  let sent = 0;
  const loops = Array.from({ length: conns }, async () => {
    while (running) {
      await http(t.gatewayPort, `${fn}.localhost`, '/').catch(() => undefined);
      sent++;
    }
  });
  return {
    stop: async () => {
      running = false;
      await Promise.all(loops);
      return sent;
    },
  };
}

beforeAll(async () => {
  // Every trace kept, whatever OTEL_TRACES_SAMPLER says here.
  otlp = await receiver();
  t = await startTide({
    args: ['--trace-sample', '1'],
    env: { OTEL_EXPORTER_OTLP_ENDPOINT: otlp.url, OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json', OTEL_BSP_SCHEDULE_DELAY: '100' },
  });
  await startRelay(t.dataDir);
  browser = await launchChromium();
  page = await browser.newPage({ viewport: { width: 1280, height: 1400 } });
  page.on('console', (m) => {
    // Chromium logs every 4xx answer to fetch; the unknown trace's 404 is expected (and shown).
    if (m.type() === 'error' && !/status of 404/.test(m.text())) pageErrors.push(m.text());
  });
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.on('request', (r) => loaded.push(r.url()));
}, 60_000);

afterAll(async () => {
  await browser?.close();
  if (relay) await stopProcess(relay);
  await stopTide(t);
  if (otlp) await new Promise((r) => otlp.server.close(r));
});

describe('tide dashboard', () => {
  it('loads through the relay without a token and shows a function deployed while it is open', async () => {
    await page.goto(relayUrl);
    expect(await page.title()).toBe('Tide dashboard');
    await page.locator('#live[data-state="live"]').waitFor({ timeout: 10_000 });
    expect(await page.locator('#functions-empty').isVisible()).toBe(true);
    const d = await tide(['deploy', join(FIXTURES, 'functions', 'counter.ts'), '--name', 'hello', '--min-scale', '1'], { dataDir: t.dataDir });
    expect(d.code, d.stderr).toBe(0);
    const row = page.locator('#functions tbody tr[data-function="hello"]');
    await row.waitFor({ timeout: 10_000 });
    await expect.poll(() => row.locator('td').nth(1).textContent(), { timeout: 10_000 }).toBe('ready');
    expect(await row.locator('.split-text').textContent()).toBe('hello-00001 100 %');
    expect(await page.locator('#detail-title').textContent()).toBe('Function hello');
    expect(await page.locator('#revisions tbody tr[data-revision="hello-00001"]').count()).toBe(1);
  });

  it('shows traffic sent through the gateway: requests/s, latency, charts and instances', async () => {
    const load = traffic('hello');
    try {
      const rps = page.locator('#functions tr[data-function="hello"] td[data-col="rps"]');
      await expect.poll(async () => Number.parseFloat((await rps.textContent()) ?? '0'), { timeout: 15_000, interval: 250 }).toBeGreaterThan(0);
      expect(await rps.textContent()).toMatch(/^[\d,.]+ req\/s$/);
      expect(await page.locator('#functions tr[data-function="hello"] td[data-col="p99"]').textContent()).toMatch(/^[\d,.]+ (ms|s)$/);
      expect(await page.locator('#functions tr[data-function="hello"] td[data-col="errors"]').textContent()).toBe('0 %');
      // The charts draw a line through the samples; over the last minute it grows a few % per sample.
      await page.locator('#range').selectOption('60000');
      const line = page.locator('#chart-rps path.series');
      await expect.poll(async () => (await line.boundingBox())?.width ?? 0, { timeout: 15_000, interval: 500 }).toBeGreaterThan(20);
      // (A flat line has no height: Playwright calls it hidden, so wait for it to be there.)
      await page.locator('#chart-latency path.series').first().waitFor({ state: 'attached' });
      await page.locator('#chart-instances path.series[data-series="desired"]').waitFor({ state: 'attached' });
      expect(await page.locator('#functions tr[data-function="hello"] td[data-col="instances"]').textContent()).toMatch(/^[1-9]\d* \/ [1-9]\d*$/);
    } finally {
      expect(await load.stop()).toBeGreaterThan(0);
    }
    // The same numbers are in the API's JSON.
    const res = await apiFetch(t, '/v1/dashboard');
    expect(res.status).toBe(200);
    const body = (await res.json()) as { series: { functions: Record<string, { requests: number }> }[]; intervalMs: number; functions: { name: string }[] };
    expect(body.intervalMs).toBe(2000);
    expect(body.functions.map((f) => f.name)).toEqual(['hello']);
    expect(body.series.reduce((a, s) => a + (s.functions.hello?.requests ?? 0), 0)).toBeGreaterThan(0);
  });

  it('lists recent traces, searches them, and opens one as a waterfall with span attributes', async () => {
    // Depends on GET /v1/traces and /v1/traces/:id (tracing is on by default in tide up).
    await http(t.gatewayPort, 'hello.localhost', '/traced');
    const rows = page.locator('#traces tbody tr[data-trace]');
    await rows.first().waitFor({ timeout: 10_000 });
    expect(await page.locator('#traces-note').isVisible()).toBe(false);
    // Search: by function and status; a status nothing had shows no rows and says so.
    await page.locator('#trace-search select[name="function"]').selectOption('hello');
    await page.locator('#trace-search input[name="status"]').fill('503');
    await page.locator('#trace-search button[type="submit"]').click();
    await expect.poll(() => page.locator('#traces-note').textContent(), { timeout: 5000 }).toBe('No trace matches this search.');
    expect(await rows.count()).toBe(0);
    await page.locator('#trace-search input[name="status"]').fill('ok');
    await page.locator('#trace-search input[name="minMs"]').fill('0');
    await page.locator('#trace-search button[type="submit"]').click();
    await rows.first().waitFor({ timeout: 5000 });
    for (const text of await rows.locator('td:nth-child(4)').allTextContents()) expect(text).toContain('hello');
    // Open the newest trace: the waterfall has a row per span, indented under its parent.
    const id = await rows.first().getAttribute('data-trace');
    expect(id).toMatch(/^[0-9a-f]{32}$/);
    await rows.first().click();
    await page.locator('#trace-view').waitFor({ state: 'visible' });
    expect(page.url()).toContain(`#trace=${id}`);
    expect(await page.locator('#trace-id').textContent()).toBe(id);
    const spans = page.locator('#waterfall .span-row');
    await spans.first().waitFor();
    expect(await spans.count()).toBeGreaterThanOrEqual(2);
    expect(await page.locator('#waterfall .span-row[aria-level="2"]').count()).toBeGreaterThan(0);
    const bar = await page.locator('#waterfall .span-row .wf-bar').first().boundingBox();
    expect(bar?.width ?? 0).toBeGreaterThan(1);
    // The API's own view of the trace agrees on the number of spans.
    const trace = (await (await apiFetch(t, `/v1/traces/${id}`)).json()) as { spans: unknown[] };
    expect(await spans.count()).toBe(trace.spans.length);
    // Clicking a span shows its attributes.
    await spans.first().click();
    await page.locator('#span-detail').waitFor({ state: 'visible' });
    expect(await page.locator('#span-fields').textContent()).toContain('span id');
    expect(await page.locator('#span-attributes tr').count()).toBeGreaterThan(0);
    mkdirSync(ARTIFACTS, { recursive: true });
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: join(ARTIFACTS, 'dashboard.png'), fullPage: true });
    // An unknown trace says so instead of failing.
    await page.goto(`${relayUrl}#trace=${'0'.repeat(31)}1`);
    await expect.poll(() => page.locator('#waterfall').textContent(), { timeout: 5000 }).toContain('not found');
  });

  it('shows one request through gateway → A → (mesh) → B as one trace, every span under its parent', async () => {
    for (const f of ['traced-back', 'traced-front']) {
      const d = await tide(['deploy', join(FIXTURES, 'functions', `${f}.ts`)], { dataDir: t.dataDir });
      expect(d.code, d.stderr).toBe(0);
    }
    const id = 'd1a5b0a4d6c94e0fb1e2a3c4d5e6f708';
    const r = await http(t.gatewayPort, 'traced-front.localhost', '/', { headers: { traceparent: `00-${id}-b7ad6b7169203331-01` } });
    expect(r.status, r.text).toBe(200);
    await page.goto(`${relayUrl}#trace=${id}`);
    const rows = page.locator('#waterfall .span-row');
    await expect.poll(() => rows.count(), { timeout: 10_000 }).toBe(6);
    const names = await rows.locator('.wf-label').allTextContents();
    const levels = await rows.evaluateAll((els) => els.map((e) => Number(e.getAttribute('aria-level'))));
    expect(names.map((n) => n.replace(/!$/, ''))).toEqual([
      'GET traced-front',
      'invoke traced-front',
      'prepare order',
      'GET traced-back.default.svc.tide',
      'GET mesh:traced-back',
      'invoke traced-back',
    ]);
    // A chain: each span one level under the one before.
    expect(levels).toEqual([1, 2, 3, 4, 5, 6]);
    expect(await rows.evaluateAll((els) => els.map((e) => e.getAttribute('data-service')))).toEqual([
      'tide',
      'traced-front',
      'traced-front',
      'tide',
      'tide',
      'traced-back',
    ]);
    await page.screenshot({ path: join(ARTIFACTS, 'dashboard-mesh-trace.png'), fullPage: true });
    // The same trace, the same six spans, went out over OTLP/HTTP.
    const shown = await rows.evaluateAll((els) => els.map((e) => e.getAttribute('data-span-id')));
    await expect.poll(() => otlpSpans(otlp.got).filter((x) => x.traceId === id).length, { timeout: 10_000 }).toBe(6);
    expect(
      otlpSpans(otlp.got)
        .filter((x) => x.traceId === id)
        .map((x) => x.spanId)
        .sort(),
    ).toEqual([...shown].sort());
  });

  it('loaded only its own files, under a strict content security policy, without errors', async () => {
    const origin = new URL(relayUrl).origin;
    expect(loaded.length).toBeGreaterThan(3);
    for (const u of loaded) expect(u.startsWith(`${origin}/`), u).toBe(true);
    expect(pageErrors).toEqual([]);
    const res = await http(relayPort, `127.0.0.1:${relayPort}`, '/dashboard');
    expect(res.status).toBe(200);
    expect(res.headers['content-security-policy']).toContain("script-src 'self'");
    expect(res.headers['content-security-policy']).not.toContain('unsafe-inline');
    expect(res.headers['x-content-type-options']).toBe('nosniff');
    expect(res.text).not.toMatch(/<script>|<script(?![^>]*\bsrc=)|\son[a-z]+=|style="/);
  });

  it('the relay only reads, only for its own Host, and never for other sites', async () => {
    const host = `127.0.0.1:${relayPort}`;
    const post = await http(relayPort, host, '/v1/functions/hello/rollback', { method: 'POST', body: '{}', headers: { 'content-type': 'application/json' } });
    expect(post.status).toBe(405);
    expect(post.headers.allow).toBe('GET, HEAD');
    const del = await http(relayPort, host, '/v1/functions/hello', { method: 'DELETE' });
    expect(del.status).toBe(405);
    const rebound = await http(relayPort, `attacker.example:${relayPort}`, '/v1/functions');
    expect(rebound.status).toBe(403);
    expect(rebound.text).toContain('attacker.example');
    const cross = await http(relayPort, host, '/v1/functions', { headers: { 'sec-fetch-site': 'cross-site' } });
    expect(cross.status).toBe(403);
    const other = await http(relayPort, host, '/metrics');
    expect(other.status).toBe(404);
    // Only what the page reads: not tokens, logs or a function's details.
    for (const path of ['/v1/tokens', '/v1/functions', '/v1/functions/hello/logs', '/v1/traces/../tokens']) {
      expect((await http(relayPort, host, path)).status, path).toBe(404);
    }
    const ok = await http(relayPort, `localhost:${relayPort}`, '/v1/dashboard');
    expect(ok.status).toBe(200);
    expect(JSON.parse(ok.text).functions.some((f: { name: string }) => f.name === 'hello')).toBe(true);
    expect((await http(relayPort, host, '/v1/traces?limit=1')).status).toBe(200);
    // The function is still there: nothing was changed through the relay.
    expect((await http(t.gatewayPort, 'hello.localhost', '/')).status).toBe(200);
  });

  it('the API serves the page without a token, but its data only with one (the page asks)', async () => {
    const page0 = await apiFetch(t, '/dashboard', { token: false });
    expect(page0.status).toBe(200);
    expect(page0.headers.get('content-security-policy')).toContain("default-src 'self'");
    expect((await apiFetch(t, '/dashboard/dashboard.js', { token: false })).status).toBe(200);
    expect((await apiFetch(t, '/dashboard/nope.js', { token: false })).status).toBe(401);
    expect((await apiFetch(t, '/v1/dashboard', { token: false })).status).toBe(401);
    const ctx = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1100, height: 900 } });
    try {
      const direct = await ctx.newPage();
      await direct.goto(`${t.apiUrl}/dashboard`);
      await direct.locator('#auth[open]').waitFor({ timeout: 10_000 });
      await direct.locator('#auth-token').fill('not-a-valid-token-at-all');
      await direct.locator('#auth button[type="submit"]').click();
      await expect.poll(() => direct.locator('#auth-error').textContent(), { timeout: 10_000 }).toContain('refused');
      await direct.locator('#auth-token').fill(t.token);
      await direct.locator('#auth button[type="submit"]').click();
      await direct.locator('#functions tbody tr[data-function="hello"]').waitFor({ timeout: 10_000 });
      expect(await direct.evaluate(() => sessionStorage.getItem('tide.dashboard.token'))).toBe(t.token);
    } finally {
      await ctx.close();
    }
  });

  it('stops on SIGTERM', async () => {
    expect(await stopProcess(relay)).toBe(0);
  });
});
