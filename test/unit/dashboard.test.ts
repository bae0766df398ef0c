/**
 * The dashboard's sampler (control/dashboard/series.ts: rates and percentiles from diffs of
 * cumulative counts, a bounded ring) and its view (control/dashboard/view.ts: traffic splits,
 * decisions that changed a count), on driven time.
 */
import { describe, expect, it } from 'vitest';
import type { RevisionStatus } from '../../control/api/schema/function.ts';
import { DashboardSeries, quantileMs, type RevisionCounts } from '../../control/dashboard/series.ts';
import { dashboardView, type FunctionViewLike } from '../../control/dashboard/view.ts';
import type { RevisionGauges } from '../../control/metrics.ts';
import { BUCKETS_S } from '../../lib/prom.ts';

/** Bucket counts with `n` observations in the bucket whose upper bound is `le` seconds. */
function buckets(...pairs: [number, number][]): number[] {
  const out = new Array<number>(BUCKETS_S.length + 1).fill(0);
  for (const [le, n] of pairs) {
    const i = BUCKETS_S.indexOf(le);
    out[i === -1 ? BUCKETS_S.length : i] = (out[i === -1 ? BUCKETS_S.length : i] as number) + n;
  }
  return out;
}

function rig(opts: { keepMs?: number } = {}) {
  let now = 1_000_000;
  let counts: RevisionCounts[] = [];
  let gauges: RevisionGauges[] = [];
  const series = new DashboardSeries({ counts: () => counts, gauges: () => gauges, now: () => now, start: false, ...opts });
  return {
    series,
    advance: (ms: number) => {
      now += ms;
    },
    setCounts: (c: RevisionCounts[]) => {
      counts = c;
    },
    setGauges: (g: RevisionGauges[]) => {
      gauges = g;
    },
  };
}

describe('quantileMs', () => {
  it('interpolates inside the bucket the rank falls in (the worked example of series.ts)', () => {
    const b = buckets([0.005, 60], [0.01, 40]);
    expect(quantileMs(b, 0.99)).toBe(9.88);
    // Rank 50 of 60 in the 2.5–5 ms bucket: 2.5 + 2.5 × 50/60.
    expect(quantileMs(b, 0.5)).toBe(4.58);
    expect(quantileMs(buckets(), 0.5)).toBeNull();
    // Past the last bucket: "at least 10 s".
    expect(quantileMs(buckets([Number.POSITIVE_INFINITY, 3]), 0.99)).toBe(10_000);
  });
});

describe('DashboardSeries', () => {
  it('turns cumulative counts into per-interval rates, error shares and percentiles, per function', () => {
    const r = rig();
    r.setCounts([{ function: 'hello', revision: 'hello-00001', requests: 100, errors: 0, buckets: buckets([0.001, 100]) }]);
    r.setGauges([{ function: 'hello', revision: 'hello-00001', desired: 1, ready: 1, queued: 0, panic: false }]);
    r.advance(2000);
    const first = r.series.sample();
    expect(first.functions.hello).toMatchObject({ requests: 100, rps: 50, errorRate: 0 });
    expect(first.revisions['hello-00001']).toEqual({ function: 'hello', desired: 1, ready: 1, queued: 0, panic: false });
    // Two revisions of one function add up; only what happened since the last sample counts.
    r.setCounts([
      { function: 'hello', revision: 'hello-00001', requests: 140, errors: 10, buckets: buckets([0.001, 100], [0.1, 40]) },
      { function: 'hello', revision: 'hello-00002', requests: 60, errors: 0, buckets: buckets([0.1, 60]) },
    ]);
    r.advance(4000);
    const second = r.series.sample();
    expect(second.intervalMs).toBe(4000);
    expect(second.functions.hello).toMatchObject({ requests: 100, errors: 10, rps: 25, errorRate: 0.1 });
    // All 100 new requests took 50–100 ms: p50 is halfway, p99 near the top.
    expect(second.functions.hello?.p50Ms).toBe(75);
    expect(second.functions.hello?.p99Ms).toBe(99.5);
    // A revision the autoscaler scales with no traffic yet is there with zero.
    r.setGauges([{ function: 'quiet', revision: 'quiet-00001', desired: 0, ready: 0, queued: 0, panic: false }]);
    r.advance(2000);
    const third = r.series.sample();
    expect(third.functions.quiet).toEqual({ requests: 0, errors: 0, rps: 0, errorRate: null, p50Ms: null, p99Ms: null });
    expect(third.functions.hello?.rps).toBe(0);
  });

  it('treats a counter that went down as reset, and keeps a bounded ring', () => {
    const r = rig({ keepMs: 10_000 });
    r.setCounts([{ function: 'a', revision: 'a-00001', requests: 50, errors: 0, buckets: buckets([0.001, 50]) }]);
    r.advance(2000);
    r.series.sample();
    r.setCounts([{ function: 'a', revision: 'a-00001', requests: 10, errors: 0, buckets: buckets([0.001, 10]) }]);
    r.advance(2000);
    expect(r.series.sample().functions.a?.requests).toBe(10);
    for (let i = 0; i < 10; i++) {
      r.advance(2000);
      r.series.sample();
    }
    const all = r.series.samples();
    expect(all).toHaveLength(5);
    expect(all.map((s) => s.at)).toEqual([...all.map((s) => s.at)].sort((x, y) => x - y));
    const last = all[all.length - 1]?.at ?? 0;
    expect(r.series.samples(last - 4000).map((s) => s.at)).toEqual([last - 2000, last]);
  });

  it('validates its options and stops its timer on close', async () => {
    expect(() => new DashboardSeries({ counts: () => [], gauges: () => [], intervalMs: 10 })).toThrow(/intervalMs must be an integer from 100/);
    expect(() => new DashboardSeries({ counts: () => [], gauges: () => [], intervalMs: 1000, keepMs: 500 })).toThrow(/keepMs must be/);
    let calls = 0;
    const s = new DashboardSeries({
      counts: () => {
        calls++;
        return [];
      },
      gauges: () => [],
      intervalMs: 100,
    });
    await new Promise((r) => setTimeout(r, 350));
    await s.close();
    const after = calls;
    expect(after).toBeGreaterThanOrEqual(2);
    await new Promise((r) => setTimeout(r, 250));
    expect(calls).toBe(after);
    await s.destroy();
  });
});

describe('dashboardView', () => {
  const fn = (name: string, serving: string): FunctionViewLike => ({
    name,
    url: `http://${name}.localhost:8080`,
    phase: 'ready',
    servingRevision: serving,
    latestRevision: serving,
    readyInstances: 1,
    desiredInstances: 1,
    restarts: 0,
    lastError: null,
    pending: null,
    createdAt: '2026-01-01T00:00:00.000Z',
    config: null,
  });
  const rev = (name: string, number: number) =>
    ({
      name: `${name}-0000${number}`,
      namespace: 'default',
      function: name,
      number,
      createdAt: '2026-01-01T00:00:00.000Z',
      digest: 'd',
      templateHash: 'h',
      source: `${name}.ts`,
      sandbox: 'worker',
      env: { K: 'v' },
      secrets: { S: 'secret-value' },
      config: {},
    }) as never;

  it('gives each function its split, its revisions without env or secrets, and decisions that changed a count', () => {
    const statuses = new Map<string, RevisionStatus>([
      ['a-00002', { revision: 'a-00002', phase: 'ready', readyInstances: 2, desiredInstances: 2, restarts: 0, updatedAt: '' }],
    ]);
    const decisions: Record<string, unknown[]> = {
      'a-00002': [
        { seq: 1, at: 10, revision: 'a-00002', desired: 1, wanted: 1, ready: 0, queued: 0, panic: false, reason: 'initial', observedStable: 0 },
        { seq: 3, at: 12, revision: 'a-00002', desired: 1, wanted: 1, ready: 1, queued: 0, panic: false, reason: 'steady', observedStable: 1 },
        { seq: 5, at: 14, revision: 'a-00002', desired: 2, wanted: 2, ready: 1, queued: 0, panic: false, reason: 'load', observedStable: 3 },
      ],
    };
    const view = dashboardView({
      functions: [fn('a', 'a-00002'), fn('b', 'b-00001')],
      routes: [
        {
          name: 'a',
          hosts: null,
          rules: [
            {
              match: null,
              split: [
                { revision: 'a-00001', weight: 10, resolved: 'a-00001' },
                { function: 'a', weight: 90, resolved: 'a-00002' },
              ],
            },
          ],
          tags: [],
        },
      ],
      revisions: [rev('a', 1), rev('a', 2), rev('b', 1)],
      statuses,
      decisions: (r) => decisions[r] ?? [],
      since: 0,
      now: 20,
    });
    const [a, b] = view.functions;
    expect(a?.split).toEqual([
      { revision: 'a-00001', weight: 10, route: 'a' },
      { revision: 'a-00002', weight: 90, route: 'a' },
    ]);
    expect(b?.split).toEqual([{ revision: 'b-00001', weight: 100 }]);
    expect(a?.revisions.map((r) => [r.name, r.weight, r.serving, r.phase, r.readyInstances])).toEqual([
      ['a-00002', 90, true, 'ready', 2],
      ['a-00001', 10, false, null, 0],
    ]);
    expect(JSON.stringify(view)).not.toContain('secret-value');
    expect(JSON.stringify(view)).not.toContain('"K"');
    expect(view.decisions.map((d) => [d.seq, d.function, d.desired])).toEqual([
      [5, 'a', 2],
      [1, 'a', 1],
    ]);
    // The route that only sets a's own split is not listed again.
    expect(view.routes).toEqual([]);
    expect(view.series).toEqual([]);
  });
});
