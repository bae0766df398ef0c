import { describe, expect, it, vi } from 'vitest';
import { FUNCTION_DEFAULTS, keys } from '../../control/api/schema/function.ts';
import { Autoscaler } from '../../control/autoscaler/autoscaler.ts';
import { panicWindowMs, resolveScalingSpec, SCALING_DEFAULTS, type ScalingSpec } from '../../control/autoscaler/config.ts';
import { LoadWindow } from '../../control/autoscaler/metrics/window.ts';
import { type DeciderState, decide, initialState, type Observed } from '../../control/autoscaler/scaling/decider.ts';
import { createMemoryStore } from '../../control/store/index.ts';
import { isTideError } from '../../lib/errors.ts';
import { silentLogger } from '../../lib/log.ts';

describe('scaling spec', () => {
  it('has Knative KPA defaults in one place', () => {
    expect(resolveScalingSpec()).toEqual(SCALING_DEFAULTS);
    expect(SCALING_DEFAULTS).toMatchObject({
      target: 100,
      targetUtilization: 0.7,
      stableWindowMs: 60_000,
      panicThreshold: 2,
      maxScaleUpRate: 1000,
      maxScaleDownRate: 2,
    });
    expect(panicWindowMs(SCALING_DEFAULTS)).toBe(6000);
  });
  it.each([
    [{ maxScale: 2, minScale: 3 }, /maxScale must be 0 \(no limit\) or an integer ≥ minScale 3 \(got 2\)/],
    [{ minScale: -1 }, /minScale must be an integer from 0 to 1000 \(got -1\)/],
    [{ target: 0 }, /target must be a number from 0.01/],
    [{ stableWindowMs: 1000 }, /stableWindowMs must be an integer from 6000/],
    [{ metric: 'cpu' }, /metric must be "concurrency" or "rps"/],
    [{ containerConcurrency: 10, target: 20 }, /target must be ≤ containerConcurrency 10/],
    [{ bogus: 1 }, /unknown scaling setting "bogus"/],
  ])('refuses %j naming the knob and the rule', (input, message) => {
    let err: unknown;
    try {
      resolveScalingSpec(input as Partial<Record<keyof ScalingSpec, unknown>>);
    } catch (e) {
      err = e;
    }
    expect(isTideError(err, 'ERR_INVALID_ARGUMENT')).toBe(true);
    expect((err as Error).message).toMatch(message);
  });
});

describe('load window', () => {
  it('averages requests in flight over time and counts requests per second', () => {
    const w = new LoadWindow(60_000);
    const t0 = 1_000_000;
    // 3 requests in flight for 10 s, one new request every 100 ms replacing one.
    for (let i = 0; i < 3; i++) w.start(t0);
    for (let t = t0 + 100; t <= t0 + 10_000; t += 100) {
      w.finish(t);
      w.start(t);
    }
    const a = w.average(t0 + 10_000, 6000);
    expect(a.concurrency).toBeCloseTo(3, 5);
    expect(a.rps).toBeCloseTo(10, 0);
    expect(w.average(t0 + 10_000, 60_000).concurrency).toBeCloseTo(3 * (10 / 60), 1);
  });
  it('falls to zero after traffic stops, and counts a long request held across a long gap', () => {
    const w = new LoadWindow(60_000);
    w.start(5000);
    w.finish(5500);
    expect(w.average(70_000, 60_000).concurrency).toBe(0);
    expect(w.lastActivityAt).toBe(5500);
    w.start(100_000);
    expect(w.average(300_000, 6000).concurrency).toBeCloseTo(1, 5);
  });
  it('adds seconds reported by remote proxies', () => {
    const w = new LoadWindow(60_000);
    for (let s = 10; s < 16; s++) w.report(s, 4, 40);
    const a = w.average(16_000, 6000);
    expect(a.concurrency).toBeCloseTo(4, 5);
    expect(a.rps).toBeCloseTo(40, 5);
  });
});

const spec = (over: Partial<ScalingSpec> = {}): ScalingSpec => ({ ...SCALING_DEFAULTS, ...over });
const obs = (over: Partial<Observed>): Observed => ({ stable: 0, panic: 0, ready: 1, lastActivityAt: 0, queued: 0, ...over });

describe('decider (KPA)', () => {
  it('wants ceil(observed / (target × utilization)) instances in stable mode', () => {
    const s = spec({ target: 10 });
    const { decision } = decide(s, obs({ stable: 50, panic: 50, ready: 8 }), initialState(s), 100_000);
    expect(decision).toMatchObject({ desired: 8, wanted: 8, panic: false }); // 50 / 7 = 7.14 → 8
  });
  it('enters panic on a burst (panic demand ≥ 2× capacity), never scales down in panic, leaves after a calm stable window', () => {
    const s = spec({ target: 10, targetUtilization: 1 });
    let state = initialState(s);
    let now = 100_000;
    const step = (o: Partial<Observed>) => {
      const r = decide(s, obs(o), state, now);
      state = r.state;
      now += 2000;
      return r.decision;
    };
    expect(step({ stable: 5, panic: 40, ready: 1 })).toMatchObject({ panic: true, desired: 4 });
    expect(step({ stable: 10, panic: 60, ready: 4 })).toMatchObject({ panic: true, desired: 6 });
    // Demand drops but the panic stays: no scale down.
    expect(step({ stable: 10, panic: 10, ready: 6 })).toMatchObject({ panic: true, desired: 6 });
    // A full stable window (60 s) after the last burst, panic ends and the count may fall.
    now += 60_000;
    const calm = step({ stable: 10, panic: 10, ready: 6 });
    expect(calm.panic).toBe(false);
    expect(calm.desired).toBe(3); // wanted 1, but at most ÷2 per decision
  });
  it('bounds each decision by maxScaleUpRate and maxScaleDownRate', () => {
    const s = spec({ target: 1, targetUtilization: 1, maxScaleUpRate: 2, maxScaleDownRate: 2 });
    expect(decide(s, obs({ stable: 100, panic: 1, ready: 3 }), initialState(s), 1e6).decision.desired).toBe(6);
    expect(decide(s, obs({ stable: 1, panic: 1, ready: 10 }), initialState(s), 1e6).decision.desired).toBe(5);
  });
  it('keeps the last instance through the grace period, then goes to zero', () => {
    const s = spec({ scaleToZeroGracePeriodMs: 30_000 });
    const during = decide(s, obs({ ready: 1, lastActivityAt: 1e6 - 20_000 }), initialState(s), 1e6).decision;
    expect(during).toMatchObject({ desired: 1 });
    expect(during.reason).toMatch(/idle for 20 s of the 30 s grace period/);
    expect(decide(s, obs({ ready: 1, lastActivityAt: 1e6 - 31_000 }), initialState(s), 1e6).decision.desired).toBe(0);
  });
  it('asks for an instance when requests wait in the activator at zero', () => {
    const s = spec();
    const d = decide(s, obs({ ready: 0, queued: 3, lastActivityAt: 1e6 }), initialState(s), 1e6).decision;
    expect(d.desired).toBe(1);
    expect(d.observedStable).toBe(3); // queued requests count as demand
  });
  it('respects minScale and maxScale', () => {
    const s = spec({ minScale: 2, maxScale: 4, target: 1, targetUtilization: 1 });
    expect(decide(s, obs({ ready: 2, lastActivityAt: 0 }), initialState(s), 1e6).decision).toMatchObject({ desired: 2, reason: 'minScale 2' });
    expect(decide(s, obs({ stable: 100, panic: 100, ready: 4 }), initialState(s), 1e6).decision).toMatchObject({ desired: 4, reason: 'maxScale 4' });
  });
  it('holds a scale-down for scaleDownDelay', () => {
    const s = spec({ target: 1, targetUtilization: 1, scaleDownDelayMs: 10_000, maxScaleDownRate: 100 });
    let state: DeciderState = initialState(s);
    const at = (now: number, stable: number, ready: number) => {
      const r = decide(s, obs({ stable, panic: stable, ready, lastActivityAt: now }), state, now);
      state = r.state;
      return r.decision.desired;
    };
    expect(at(100_000, 8, 8)).toBe(8);
    expect(at(102_000, 2, 8)).toBe(8); // wanted 2, held
    expect(at(108_000, 2, 8)).toBe(8);
    expect(at(112_000, 2, 8)).toBe(2); // the 8 is older than 10 s now
  });
  it('goes 0 → N under a step load and N → 0 after the grace period (window and decider together)', () => {
    const s = spec({ target: 10, targetUtilization: 1, stableWindowMs: 60_000, scaleToZeroGracePeriodMs: 30_000 });
    const w = new LoadWindow(s.stableWindowMs);
    let state = initialState(s);
    let ready = 0;
    const history: { t: number; desired: number; panic: boolean }[] = [];
    // 40 requests in flight from t=10 s to t=70 s, nothing after.
    let t = 0;
    for (; t <= 200_000; t += s.tickMs) {
      if (t === 10_000) for (let i = 0; i < 40; i++) w.start(t);
      if (t === 70_000) for (let i = 0; i < 40; i++) w.finish(t);
      const stable = w.average(t, s.stableWindowMs).concurrency;
      const panic = w.average(t, panicWindowMs(s)).concurrency;
      const r = decide(s, { stable, panic, ready, lastActivityAt: w.lastActivityAt, queued: 0 }, state, t);
      state = r.state;
      ready = r.decision.desired; // instances start at once in this model
      history.push({ t, desired: r.decision.desired, panic: r.decision.panic });
    }
    const at = (time: number) => history.find((h) => h.t === time)?.desired;
    expect(at(8000)).toBe(0);
    // Within the panic window (6 s) of the step, panic brings the count to the demand (40 / 10 = 4).
    expect(Math.max(...history.filter((h) => h.t >= 10_000 && h.t <= 16_000).map((h) => h.desired))).toBe(4);
    expect(history.some((h) => h.panic)).toBe(true);
    expect(at(60_000)).toBe(4);
    // Load gone at 70 s: the stable average decays over 60 s, the last instance waits out the grace period.
    expect(at(90_000)).toBeGreaterThanOrEqual(1);
    expect(at(200_000)).toBe(0);
    const firstZero = history.find((h) => h.t > 70_000 && h.desired === 0)?.t ?? Number.POSITIVE_INFINITY;
    expect(firstZero).toBeGreaterThanOrEqual(70_000 + s.scaleToZeroGracePeriodMs);
  });
});

describe('autoscaler reconciler', () => {
  async function setup(scaling: Partial<ScalingSpec>) {
    const store = createMemoryStore();
    const rev = {
      name: 'a-00001',
      namespace: 'default',
      function: 'a',
      number: 1,
      createdAt: new Date(0).toISOString(),
      digest: 'd',
      templateHash: 'h',
      source: 'a.ts',
      sandbox: 'worker',
      env: {},
      secrets: {},
      config: { ...FUNCTION_DEFAULTS, scaling: { ...SCALING_DEFAULTS, tickMs: 60_000, ...scaling } },
    };
    await store.put(keys.revision(rev.name), JSON.stringify(rev));
    await store.put(
      keys.function('a'),
      JSON.stringify({ name: 'a', namespace: 'default', createdAt: rev.createdAt, servingRevision: rev.name, latestRevision: rev.name, revisionCounter: 1 }),
    );
    let now = 1_000_000;
    const scaler = new Autoscaler({ store, log: silentLogger, now: () => now, keep: 5 });
    await scaler.start();
    const written = async () => {
      const kv = await store.get(keys.scale('a-00001'));
      return kv ? (JSON.parse(kv.value) as { desired: number }).desired : undefined;
    };
    const setReady = (n: number) => store.put(keys.status('a-00001'), JSON.stringify({ revision: 'a-00001', phase: 'ready', readyInstances: n }));
    return { store, scaler, written, setReady, advance: (ms: number) => (now += ms), close: () => scaler.close() };
  }

  it('writes the count the load asks for, and keeps a bounded log of every decision', async () => {
    const s = await setup({ target: 10, targetUtilization: 1 });
    await s.setReady(1);
    for (let i = 0; i < 25; i++) s.scaler.begin('a-00001');
    s.advance(5000);
    await s.scaler.tick();
    expect(await s.written()).toBe(3);
    for (let i = 0; i < 6; i++) await s.scaler.tick();
    const log = s.scaler.decisions('a-00001');
    expect(log).toHaveLength(5);
    expect(log.map((d) => d.seq)).toEqual([3, 4, 5, 6, 7]);
    expect(s.scaler.decisions('a-00001', 6).map((d) => d.seq)).toEqual([7]);
    s.close();
  });

  it('decides at once when the activator asks for a revision at zero', async () => {
    const s = await setup({ initialScale: 0 });
    await s.setReady(0);
    await s.scaler.tick();
    expect(await s.written()).toBe(0);
    s.scaler.begin('a-00001');
    s.scaler.queued('a-00001', 1);
    s.scaler.activate('a-00001');
    await vi.waitFor(async () => expect(await s.written()).toBe(1));
    expect(s.scaler.decisions('a-00001').at(-1)?.reason).toBe('1 request waiting in the activator, no instance ready');
    s.close();
  });

  it('forgets the count of a revision that no longer serves', async () => {
    const s = await setup({});
    await s.scaler.tick();
    expect(await s.written()).toBe(1);
    await s.store.delete(keys.function('a'));
    await vi.waitFor(async () => expect(await s.written()).toBeUndefined());
    expect(s.scaler.describe('a-00001')).toBeUndefined();
    s.close();
  });
});
