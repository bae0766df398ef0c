import { afterEach, describe, expect, it } from 'vitest';
import { Overload } from '../../proxy/overload.ts';

const MIB = 1024 * 1024;
let o: Overload | undefined;
afterEach(async () => {
  await o?.close();
});

describe('Overload', () => {
  it('sheds over the heap watermark and stops only after two readings under 90% of it', () => {
    let heap = 50 * MIB;
    o = new Overload({ maxHeapMb: 100, retryAfterS: 2 }, { intervalMs: 60_000, heapUsedBytes: () => heap });
    o.sample();
    expect(o.refusal()).toBeUndefined();
    heap = 101 * MIB;
    o.sample();
    const r = o.refusal();
    expect(r?.code).toBe('ERR_OVERLOADED');
    expect(r?.status).toBe(503);
    expect(r?.details?.retryAfterSeconds).toBe(2);
    heap = 95 * MIB; // under the watermark, not under 90% of it
    o.sample();
    expect(o.reason).toBe('memory');
    heap = 80 * MIB;
    o.sample();
    expect(o.reason).toBe('memory'); // one quiet reading is not enough
    o.sample();
    expect(o.reason).toBeUndefined();
    expect(o.refusal()).toBeUndefined();
    expect(o.shed.get('memory')).toBe(1);
  });

  it('applies a new watermark at once', () => {
    o = new Overload({ maxHeapMb: 1 }, { intervalMs: 60_000, heapUsedBytes: () => 10 * MIB });
    o.sample();
    expect(o.reason).toBe('memory');
    o.update({ maxHeapMb: 100 });
    expect(o.reason).toBeUndefined();
  });

  it('refuses connections past maxConnections, and counts them', () => {
    o = new Overload({ maxConnections: 3 }, { intervalMs: 60_000, heapUsedBytes: () => MIB });
    expect(o.connectionRefusal(2)).toBeUndefined();
    expect(o.connectionRefusal(3)?.message).toContain('3 connections are open (maxConnections 3)');
    expect(o.shed.get('connections')).toBe(1);
  });

  it('refuses settings that make no sense, naming them', () => {
    expect(() => new Overload({ maxHeapMb: -1 })).toThrow(/overload.maxHeapMb must be a number ≥ 0/);
    expect(() => new Overload({ retryAfterS: 0 })).toThrow(/overload.retryAfter/);
  });
});

describe('Overload: event loop, and reloads', () => {
  it('sheds while the event loop is behind, with the same hysteresis', () => {
    let delay = 0;
    o = new Overload({ maxEventLoopDelayMs: 100 }, { intervalMs: 60_000, heapUsedBytes: () => MIB, eventLoopDelayMs: () => delay });
    o.sample();
    expect(o.reason).toBeUndefined();
    delay = 150;
    o.sample();
    expect(o.reason).toBe('event-loop');
    expect(o.refusal()?.message).toContain('its event loop is 150 ms behind (limit 100 ms)');
    delay = 0;
    o.sample();
    expect(o.reason).toBe('event-loop');
    o.sample();
    expect(o.reason).toBeUndefined();
  });

  it('refuses an event-loop watermark under 20ms, which the monitor cannot tell from its own ticks (found in review)', () => {
    expect(() => new Overload({ maxEventLoopDelayMs: 5 })).toThrow(/must be 0 \(off\) or at least 20ms/);
    expect(() => new Overload({ maxEventLoopDelayMs: 0 })).not.toThrow();
  });

  it('reads an idle event loop as (about) no delay, not the monitor’s 10 ms tick (found in review)', async () => {
    o = new Overload({}, { intervalMs: 60_000 });
    await new Promise((r) => setTimeout(r, 200));
    o.sample();
    expect(o.eventLoopDelayMs).toBeLessThan(8);
  });

  it('a reload decides afresh: the refusal carries the new limit and retry-after (found in review)', () => {
    o = new Overload({ maxHeapMb: 10, retryAfterS: 1 }, { intervalMs: 60_000, heapUsedBytes: () => 15 * MIB });
    o.sample();
    expect(o.refusal()?.details?.retryAfterSeconds).toBe(1);
    o.update({ maxHeapMb: 12, retryAfterS: 30 });
    const r = o.refusal();
    expect(r?.details?.retryAfterSeconds).toBe(30);
    expect(r?.message).toContain('limit 12 MiB');
  });
});
