/**
 * The chaos harness (test/chaos/harness.ts) in CI: a steady probe load of at least 400
 * requests a step on three functions (two worker, one runc container) through a `tide proxy`
 * edge in front of `tide up`, while a worker thread crashes, a container is killed, `tide up`
 * gets kill -9 and comes back on its data directory, the edge proxy gets kill -9 and comes
 * back, a new revision rolls out, and a function goes 0 → N → 0 → N. Graceful steps must be
 * 100% without retries; SIGKILL steps 99% with retries; the stored functions and their
 * serving revisions are the same after kill -9.
 */
import { describe, expect, it } from 'vitest';
import { runChaos } from '../chaos/harness.ts';

describe('chaos under load', () => {
  it('keeps answering through crashes, kills, a rollout and scaling to zero and back', async () => {
    const lines: string[] = [];
    const results = await runChaos({ perStep: 400, log: (l) => lines.push(l) });
    console.info(lines.join('\n'));
    expect(results.map((r) => r.step)).toEqual(['worker-crash', 'container-kill', 'control-kill', 'proxy-kill', 'rollout', 'scale-0-N-0']);
    for (const r of results) {
      expect(r.probes, r.step).toBeGreaterThanOrEqual(400);
      expect(r.successRate, `${r.step}: ${r.good}/${r.probes}; ${r.note}`).toBeGreaterThanOrEqual(r.required);
      // The chaos was real: the thread and the container were replaced, s1 cold-started again.
      expect(r.passed, `${r.step}: ${r.note}`).toBe(true);
    }
    // The SIGKILL of tide up was felt: some probes needed their retries, and all got through.
    expect(results.find((r) => r.step === 'control-kill')?.retried).toBeGreaterThan(0);
  }, 300_000);
});
