import { describe, expect, it } from 'vitest';
import { RevisionStats } from '../../control/analysis/stats.ts';

describe('revision traffic', () => {
  it('counts requests, the share of 5xx and p99 over a window, and forgets what is older', () => {
    let now = 1_000_000;
    const s = new RevisionStats(() => now);
    for (let i = 0; i < 98; i++) s.record('a-00001', 200, 2);
    s.record('a-00001', 503, 40);
    s.record('a-00001', 500, 40);
    const sum = s.summary('a-00001', 10_000);
    expect(sum.requests).toBe(100);
    expect(sum.errorRate).toBe(0.02);
    expect(sum.rps).toBe(10);
    expect(sum.p99Ms).toBeGreaterThanOrEqual(40);
    expect(sum.p99Ms).toBeLessThan(40 * 1.42);
    now += 20_000;
    expect(s.summary('a-00001', 10_000)).toEqual({ requests: 0, rps: 0, errorRate: 0, p99Ms: null });
    expect(s.summary('nobody')).toEqual({ requests: 0, rps: 0, errorRate: 0, p99Ms: null });
  });
});
