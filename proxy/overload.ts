/**
 * The overload policy: what the proxy does when the process itself runs short, before it falls
 * over. It samples the JavaScript heap and the event-loop delay every `intervalMs`; while one
 * is over its watermark, every new request is answered 503 `ERR_OVERLOADED` with
 * `retry-after` before routing (nothing reaches a function or an upstream), and past
 * `maxConnections` open connections (over all listeners) a new connection gets that answer
 * to its first request and is closed. Leaving the shedding state needs the readings to stay
 * below 90% of the watermark for two samples in a row, so it does not flap on the edge. It
 * covers every way in: HTTP/1.1 requests, Upgrade requests and HTTP/2 connections.
 *
 * Per-listener limits (maxConnections, header and body sizes, timeouts) stay in the listener.
 * Costs the hot path one field read per request.
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { getHeapStatistics } from 'node:v8';
import { TideError } from '../lib/errors.ts';
import type { Closable } from '../lib/lifecycle.ts';

export interface OverloadSettings {
  /** Shed while the JavaScript heap in use is over this, MiB. 0 = 90% of V8's heap limit. */
  maxHeapMb: number;
  /** Shed while the event loop's delay (the worst in the last interval) is over this, ms; 0 = never. */
  maxEventLoopDelayMs: number;
  /** Most open client connections over all listeners; 0 = no limit beyond each listener's. */
  maxConnections: number;
  /** The `retry-after` shed requests get, seconds. */
  retryAfterS: number;
}

export const OVERLOAD_DEFAULTS: Readonly<OverloadSettings> = Object.freeze({ maxHeapMb: 0, maxEventLoopDelayMs: 0, maxConnections: 0, retryAfterS: 1 });

export type OverloadReason = 'memory' | 'event-loop';

const MIB = 1024 * 1024;
const LEAVE = 0.9;
/** The delay monitor's timer period: its readings include it, so it is taken off. */
const RESOLUTION_MS = 10;
/** The smallest event-loop watermark that means something above the monitor's own noise. */
const MIN_DELAY_MS = 20;

export class Overload implements Closable {
  #settings: OverloadSettings;
  readonly #intervalMs: number;
  readonly #delay: ReturnType<typeof monitorEventLoopDelay>;
  readonly #timer: NodeJS.Timeout;
  readonly #readHeap: () => number;
  #reason: OverloadReason | undefined;
  #refusal: TideError | undefined;
  /** Quiet samples in a row while shedding. */
  #quiet = 0;
  /** Requests and connections shed, by reason (memory, event-loop, connections). */
  readonly shed = new Map<string, number>();
  /** The last readings, for /metrics. */
  heapMb = 0;
  eventLoopDelayMs = 0;

  readonly #readDelay: (() => number) | undefined;

  constructor(settings: Partial<OverloadSettings> = {}, opts: { intervalMs?: number; heapUsedBytes?: () => number; eventLoopDelayMs?: () => number } = {}) {
    this.#settings = check({ ...OVERLOAD_DEFAULTS, ...settings });
    this.#intervalMs = opts.intervalMs ?? 250;
    this.#readHeap = opts.heapUsedBytes ?? (() => process.memoryUsage().heapUsed);
    this.#readDelay = opts.eventLoopDelayMs;
    this.#delay = monitorEventLoopDelay({ resolution: RESOLUTION_MS });
    this.#delay.enable();
    this.#timer = setInterval(() => this.sample(), this.#intervalMs);
    this.#timer.unref();
  }

  get settings(): Readonly<OverloadSettings> {
    return this.#settings;
  }

  /**
   * New settings (a config reload): decided afresh against them at once, from the last
   * readings (the refusal says the new limits and retry-after).
   */
  update(settings: Partial<OverloadSettings>): void {
    this.#settings = check({ ...OVERLOAD_DEFAULTS, ...settings });
    this.#reason = undefined;
    this.#refusal = undefined;
    this.#quiet = 0;
    this.#decide();
  }

  /** Why the process sheds now, or undefined. */
  get reason(): OverloadReason | undefined {
    return this.#reason;
  }

  /** The answer for a request that arrives now: undefined unless shedding. Counts it. */
  refusal(): TideError | undefined {
    const r = this.#refusal;
    if (r !== undefined) this.shed.set(this.#reason as string, (this.shed.get(this.#reason as string) ?? 0) + 1);
    return r;
  }

  /** The answer for a new connection when `open` connections are already open, or undefined. */
  connectionRefusal(open: number): TideError | undefined {
    const max = this.#settings.maxConnections;
    if (max === 0 || open < max) return this.refusal();
    this.shed.set('connections', (this.shed.get('connections') ?? 0) + 1);
    return new TideError('ERR_OVERLOADED', `the proxy is overloaded: ${open} connections are open (maxConnections ${max})`, {
      status: 503,
      details: { retryAfterSeconds: this.#settings.retryAfterS },
    });
  }

  /** Takes a reading (the timer does this every interval). */
  sample(): void {
    this.heapMb = this.#readHeap() / MIB;
    // The monitor records the whole gap between its ticks (10 ms on an idle loop): the delay is what is over that.
    this.eventLoopDelayMs = this.#readDelay ? this.#readDelay() : Math.max(0, this.#delay.max / 1e6 - RESOLUTION_MS);
    this.#delay.reset();
    this.#decide();
  }

  #heapLimitMb(): number {
    return this.#settings.maxHeapMb > 0 ? this.#settings.maxHeapMb : (getHeapStatistics().heap_size_limit / MIB) * 0.9;
  }

  #decide(): void {
    const heapMax = this.#heapLimitMb();
    const delayMax = this.#settings.maxEventLoopDelayMs;
    const over = (value: number, max: number, was: boolean) => max > 0 && value > (was ? max * LEAVE : max);
    let reason: OverloadReason | undefined;
    if (over(this.heapMb, heapMax, this.#reason === 'memory')) reason = 'memory';
    else if (over(this.eventLoopDelayMs, delayMax, this.#reason === 'event-loop')) reason = 'event-loop';
    if (reason === undefined && this.#reason !== undefined && ++this.#quiet < 2) return;
    if (reason !== undefined) this.#quiet = 0;
    if (reason === this.#reason && (reason === undefined || this.#refusal !== undefined)) return;
    this.#reason = reason;
    this.#refusal =
      reason === undefined
        ? undefined
        : new TideError(
            'ERR_OVERLOADED',
            reason === 'memory'
              ? `the proxy is overloaded: its heap is ${Math.round(this.heapMb)} MiB (limit ${Math.round(heapMax)} MiB)`
              : `the proxy is overloaded: its event loop is ${Math.round(this.eventLoopDelayMs)} ms behind (limit ${delayMax} ms)`,
            { status: 503, details: { retryAfterSeconds: this.#settings.retryAfterS } },
          );
  }

  async close(): Promise<void> {
    clearInterval(this.#timer);
    this.#delay.disable();
  }

  destroy(): Promise<void> {
    return this.close();
  }
}

function check(s: OverloadSettings): OverloadSettings {
  for (const [name, v] of Object.entries(s)) {
    if (!Number.isFinite(v) || v < 0) throw new TideError('ERR_INVALID_ARGUMENT', `overload.${name} must be a number ≥ 0 (got ${v})`);
  }
  if (s.maxEventLoopDelayMs > 0 && s.maxEventLoopDelayMs < MIN_DELAY_MS)
    throw new TideError('ERR_INVALID_ARGUMENT', `overload.maxEventLoopDelay must be 0 (off) or at least ${MIN_DELAY_MS}ms (got ${s.maxEventLoopDelayMs}ms)`);
  if (s.retryAfterS < 1 || !Number.isInteger(s.retryAfterS))
    throw new TideError('ERR_INVALID_ARGUMENT', `overload.retryAfter must be a whole number of seconds ≥ 1 (got ${s.retryAfterS})`);
  return s;
}
