/**
 * `tide bench` end to end: against functions of a real `tide up`, its numbers checked against
 * what the function itself counted; thresholds and exit codes; comparisons; cold starts; the
 * HTML report opened in headless Chromium (playwright-core), with a screenshot kept in
 * test/artifacts/.
 */
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { launchChromium } from '../helpers/browser.ts';
import { apiFetch, FIXTURES, http, ROOT, startTide, stopTide, type TideProcess, tempDir, tide } from '../helpers/tide.ts';

let t: TideProcess;
let dir: string;

interface Report {
  summaries: {
    target: string;
    requests: number;
    sent: number;
    rps: number;
    statuses: Record<string, number>;
    errors: Record<string, number>;
    latencyMs: { p50: number; p90: number; p99: number; max: number; mean: number };
    histogram: { count: number }[];
    perSecond: number[];
    rounds: { rps: number }[];
  }[];
  comparison: { rpsRatio: { rounds: number[]; median: number }; verdict: string } | null;
  cold: { samplesMs: number[]; warmMs: number[]; p50: number } | null;
  thresholds: { checked: boolean; passed: boolean; failures: string[] };
}

const bench = (args: string[]) => tide(['bench', ...args, '-q'], { dataDir: t.dataDir });
const count = async (fn = 'counter') => Number((await http(t.gatewayPort, `${fn}.localhost`, '/count')).text);
const report = (file: string) => JSON.parse(readFileSync(file, 'utf8')) as Report;

beforeAll(async () => {
  dir = tempDir('tide-bench-test-');
  t = await startTide();
  for (const [name, file, extra] of [
    ['counter', 'counter.ts', ['--min-scale', '1', '--max-scale', '1']],
    ['coldfn', 'counter.ts', []],
  ] as const) {
    const r = await tide(['deploy', join(FIXTURES, 'functions', file), '--name', name, ...extra], { dataDir: t.dataDir });
    expect(r.code, r.stderr).toBe(0);
  }
}, 60_000);

afterAll(async () => {
  await stopTide(t);
});

describe('tide bench', () => {
  it('sends exactly --amount requests, and its report agrees with what the function counted', async () => {
    const json = join(dir, 'amount.json');
    const html = join(dir, 'amount.html');
    const r = await bench(['counter', '-n', '600', '-c', '8', '--warmup', '0', '--json', json, '--html', html]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('function counter (counter.localhost): 600 requests');
    expect(r.stdout).toContain('latency histogram');
    const s = report(json).summaries[0] as Report['summaries'][number];
    expect(s.requests).toBe(600);
    expect(s.sent).toBe(600);
    expect(s.statuses).toEqual({ 200: 600 });
    expect(s.errors).toEqual({});
    expect(await count()).toBe(600);
    expect(s.histogram.reduce((a, b) => a + b.count, 0)).toBe(600);
    expect(s.latencyMs.p50).toBeGreaterThan(0);
    expect(s.latencyMs.p50).toBeLessThanOrEqual(s.latencyMs.p90);
    expect(s.latencyMs.p90).toBeLessThanOrEqual(s.latencyMs.p99);
    expect(s.latencyMs.p99).toBeLessThanOrEqual(s.latencyMs.max);
    expect(s.rps).toBeGreaterThan(0);
  });

  it('runs for --duration, and counts every response the function sent', async () => {
    const before = await count();
    const json = join(dir, 'duration.json');
    const r = await bench(['counter', '-d', '2s', '-c', '4', '--warmup', '0', '--json', json, '--html', join(dir, 'duration.html')]);
    expect(r.code, r.stderr).toBe(0);
    const s = report(json).summaries[0] as Report['summaries'][number];
    // Every answer the report counts, the function served; at most the requests still in flight
    // when the time ran out (one per connection) were served and not answered in time.
    const served = (await count()) - before;
    expect(s.requests).toBeGreaterThan(100);
    expect(served).toBeGreaterThanOrEqual(s.requests);
    expect(served).toBeLessThanOrEqual(s.sent);
    expect(s.sent - s.requests).toBeLessThanOrEqual(4);
    expect(s.perSecond.length).toBeGreaterThanOrEqual(2);
    expect(s.perSecond.reduce((a, b) => a + b, 0)).toBe(s.requests);
  });

  it('sets the exit code from thresholds: 0 when met, 3 when missed, saying which', async () => {
    const met = await bench(['counter', '-n', '200', '--warmup', '0', '--max-p99', '10s', '--max-error-rate', '1%']);
    expect(met.code, met.stderr).toBe(0);
    expect(met.stdout).toContain('thresholds: all met');
    const json = join(dir, 'missed.json');
    const missed = await bench(['counter', '-n', '200', '--warmup', '0', '--min-rps', '100000000', '--max-p99', '0.001ms', '--json', json]);
    expect(missed.code).toBe(3);
    expect(missed.stderr).toMatch(/threshold missed: [\d.]+ req\/s < --min-rps 100000000/);
    expect(missed.stderr).toMatch(/threshold missed: p99 .* > --max-p99 0\.00 ms/);
    expect(report(json).thresholds).toMatchObject({ checked: true, passed: false });
  });

  it('refuses remote URLs without --allow-remote, and bad options, before sending anything', async () => {
    const remote = await bench(['http://192.0.2.10:9/', '-n', '10']);
    expect(remote.code).toBe(2);
    expect(remote.stderr).toContain('192.0.2.10:9 is not a loopback address');
    expect(remote.stderr).toContain('--allow-remote');
    const both = await bench(['counter', '-n', '10', '-d', '1s']);
    expect(both.code).toBe(2);
    expect(both.stderr).toContain('give --duration or --amount, not both');
    const three = await bench(['counter', 'counter', 'counter']);
    expect(three.stderr).toContain('at most two targets');
    const unknown = await bench(['nosuch', '-n', '10']);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/nosuch/);
    const before = await count();
    const untagged = await bench(['counter-00009', '-n', '10']);
    expect(untagged.code).toBe(1);
    expect(await count()).toBe(before);
  });

  it('compares two targets over interleaved rounds, with the spread of the rounds', async () => {
    const v2 = await tide(['deploy', join(FIXTURES, 'functions', 'counter.ts'), '--name', 'counter', '--env', 'V=2', '--min-scale', '1', '--max-scale', '1'], {
      dataDir: t.dataDir,
    });
    expect(v2.code, v2.stderr).toBe(0);
    const split = await tide(['split', 'counter', 'counter-00002=100', '--tag', 'old=counter-00001'], { dataDir: t.dataDir });
    expect(split.code, split.stderr).toBe(0);
    const json = join(dir, 'compare.json');
    const r = await bench([
      '--compare',
      'counter-00001',
      'counter-00002',
      '-d',
      '1s',
      '--rounds',
      '2',
      '--warmup',
      '0',
      '--json',
      json,
      '--html',
      join(dir, 'compare.html'),
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('revision counter-00001 (tag old of route counter');
    expect(r.stdout).toContain('comparison (B = counter-00002 ÷ A = counter-00001, 2 rounds)');
    const rep = report(json);
    expect(rep.summaries.map((s) => s.target)).toEqual(['counter-00001', 'counter-00002']);
    expect(rep.comparison?.rpsRatio.rounds).toHaveLength(2);
    expect(rep.comparison?.verdict).toMatch(/faster in every round|slower in every round|no clear difference/);
    for (const s of rep.summaries) expect(s.rounds).toHaveLength(2);
  });

  it('measures cold starts: the target goes to zero before each round', async () => {
    const json = join(dir, 'cold.json');
    const r = await bench(['coldfn', '--cold', '--rounds', '3', '--json', json, '--html', join(dir, 'cold.html')]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('3 cold starts');
    const c = report(json).cold;
    expect(c?.samplesMs).toHaveLength(3);
    for (const ms of c?.samplesMs ?? []) expect(ms).toBeGreaterThan(0);
    const v = (await (await apiFetch(t, '/v1/functions/coldfn/instances')).json()) as { decisions: { reason: string; desired: number }[] };
    expect(v.decisions.filter((d) => d.reason === 'scaled to zero on request')).toHaveLength(3);
    // A function that keeps instances cannot be taken to zero.
    const kept = await bench(['counter', '--cold', '--rounds', '1']);
    expect(kept.code).toBe(1);
    expect(kept.stderr).toContain('keeps minScale 1');
  });

  it('writes an HTML report whose charts a browser draws (headless Chromium, screenshot kept)', async () => {
    const browser = await launchChromium();
    try {
      const page = await browser.newPage({ viewport: { width: 800, height: 1200 } });
      const requests: string[] = [];
      page.on('request', (req) => requests.push(req.url()));
      await page.goto(`file://${join(dir, 'duration.html')}`);
      expect(await page.title()).toBe('tide bench counter');
      expect(await page.locator('svg.chart').count()).toBe(2);
      const bars = page.locator('svg.chart rect.bar');
      expect(await bars.count()).toBe(12);
      // Drawn, not just present: the bars and the per-second line have a size on the page.
      const box = await bars.nth(0).boundingBox();
      expect(box?.width ?? 0).toBeGreaterThan(10);
      const line = await page.locator('svg.chart polyline.line').boundingBox();
      expect(line?.width ?? 0).toBeGreaterThan(200);
      expect(await page.locator('text=requests/s').count()).toBeGreaterThan(0);
      const artifacts = join(ROOT, 'test', 'artifacts');
      mkdirSync(artifacts, { recursive: true });
      await page.screenshot({ path: join(artifacts, 'bench-report.png'), fullPage: true });
      // The comparison and cold-start reports draw their own charts.
      await page.goto(`file://${join(dir, 'compare.html')}`);
      expect(await page.locator('.verdict').textContent()).toMatch(/every round|no clear difference/);
      expect(await page.locator('svg.chart').count()).toBeGreaterThanOrEqual(4);
      await page.screenshot({ path: join(artifacts, 'bench-compare.png'), fullPage: true });
      await page.goto(`file://${join(dir, 'cold.html')}`);
      expect(await page.locator('svg.chart rect.bar').count()).toBe(6);
      // Self-contained: nothing but the files themselves was loaded.
      expect(requests.every((u) => u.startsWith('file://'))).toBe(true);
    } finally {
      await browser.close();
    }
  });
});
