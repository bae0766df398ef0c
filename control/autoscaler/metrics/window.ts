/**
 * Per-revision load over time, in one-second buckets: the time-weighted average of requests
 * in flight during each second (concurrency) and the requests started in it (rps). The proxy
 * and the activator feed it (`start`/`finish` on every request, or `report` with a second's
 * aggregate from a remote proxy); the decider reads averages over its stable and panic windows.
 *
 * Time comes from the caller (ms), so tests drive it. Seconds with no traffic count as zero:
 * an idle revision's average falls to zero over the window, which is what scale to zero needs.
 */

interface Bucket {
  /** Integral of in-flight requests over the second, in request·ms. */
  inflightMs: number;
  requests: number;
}

export class LoadWindow {
  readonly #capacity: number;
  readonly #buckets: Bucket[];
  /** The second the newest bucket belongs to. */
  #second = -1;
  #inflight = 0;
  /** When `#inflight` last changed (or was accounted up to), ms. */
  #since = 0;
  /** When anything last happened, ms (for scale to zero's grace period). */
  lastActivityAt = 0;

  /** `maxWindowMs`: the longest window anyone will ask for (the stable window). */
  constructor(maxWindowMs: number) {
    this.#capacity = Math.ceil(maxWindowMs / 1000) + 2;
    this.#buckets = Array.from({ length: this.#capacity }, () => ({ inflightMs: 0, requests: 0 }));
  }

  get inflight(): number {
    return this.#inflight;
  }

  /** A request began. */
  start(now: number): void {
    this.#advance(now);
    this.#bucket(now).requests++;
    this.#inflight++;
    this.lastActivityAt = now;
  }

  /** A request ended. */
  finish(now: number): void {
    this.#advance(now);
    this.#inflight = Math.max(0, this.#inflight - 1);
    this.lastActivityAt = now;
  }

  /** A whole second's aggregate from elsewhere (a remote proxy), added to this window. */
  report(second: number, avgConcurrency: number, requests: number): void {
    this.#advance(second * 1000);
    if (second <= this.#second - this.#capacity) return;
    const b = this.#buckets[((second % this.#capacity) + this.#capacity) % this.#capacity] as Bucket;
    b.inflightMs += avgConcurrency * 1000;
    b.requests += requests;
    if (requests > 0 || avgConcurrency > 0) this.lastActivityAt = Math.max(this.lastActivityAt, second * 1000 + 999);
  }

  /** Average concurrency and requests per second over the `windowMs` before `now`. */
  average(now: number, windowMs: number): { concurrency: number; rps: number } {
    this.#advance(now);
    const seconds = Math.max(1, Math.min(this.#capacity - 1, Math.round(windowMs / 1000)));
    // Whole seconds before the current one, plus the part of the current second that has passed.
    const current = this.#second;
    const partMs = now - current * 1000;
    let inflightMs = 0;
    let requests = 0;
    for (let s = current - seconds + (partMs > 0 ? 1 : 0); s <= current; s++) {
      if (s < 0) continue;
      const b = this.#buckets[s % this.#capacity] as Bucket;
      inflightMs += b.inflightMs;
      requests += b.requests;
    }
    const spanMs = (seconds - (partMs > 0 ? 1 : 0)) * 1000 + partMs;
    return { concurrency: spanMs > 0 ? inflightMs / spanMs : 0, rps: spanMs > 0 ? (requests * 1000) / spanMs : 0 };
  }

  #bucket(now: number): Bucket {
    return this.#buckets[Math.floor(now / 1000) % this.#capacity] as Bucket;
  }

  /** Accounts in-flight time up to `now`, opening new buckets (zeroed) as seconds pass. */
  #advance(now: number): void {
    const second = Math.floor(now / 1000);
    if (this.#second === -1) {
      this.#second = second;
      this.#since = now;
      return;
    }
    if (now < this.#since) return; // late call; time never runs backwards here
    while (this.#second < second) {
      const end = (this.#second + 1) * 1000;
      (this.#buckets[this.#second % this.#capacity] as Bucket).inflightMs += this.#inflight * (end - this.#since);
      this.#since = end;
      this.#second++;
      if (second - this.#second >= this.#capacity) {
        // A gap longer than the window: every bucket is one second of the same in-flight count.
        for (const b of this.#buckets) {
          b.inflightMs = this.#inflight * 1000;
          b.requests = 0;
        }
        this.#second = second;
        this.#since = second * 1000;
        (this.#buckets[second % this.#capacity] as Bucket).inflightMs = 0;
        break;
      }
      const b = this.#buckets[this.#second % this.#capacity] as Bucket;
      b.inflightMs = 0;
      b.requests = 0;
    }
    (this.#buckets[this.#second % this.#capacity] as Bucket).inflightMs += this.#inflight * (now - this.#since);
    this.#since = now;
  }
}
