/**
 * Per-revision traffic, as the gateway saw it: requests, server errors (5xx) and latency, in
 * one-second buckets over the last few minutes. `tide describe route` shows it per backend, and
 * progressive rollouts will judge a new revision by it.
 *
 * Latency is kept as a histogram of powers of √2 from 0.1 ms (p99 within ~20 %), so a summary
 * costs the same however many requests there were.
 */

const BUCKETS = 48;
const BASE_MS = 0.1;
const SECONDS = 300;

interface Second {
  at: number;
  requests: number;
  errors: number;
  latency: Uint32Array;
}

export interface TrafficSummary {
  requests: number;
  /** Requests per second over the window. */
  rps: number;
  /** Share of requests answered 5xx (0..1). */
  errorRate: number;
  /** 99th percentile of the time to answer, ms; null without requests. */
  p99Ms: number | null;
}

function bucketOf(ms: number): number {
  if (ms <= BASE_MS) return 0;
  return Math.min(BUCKETS - 1, Math.ceil(Math.log(ms / BASE_MS) / Math.log(Math.SQRT2)));
}

function upperMs(bucket: number): number {
  return BASE_MS * Math.SQRT2 ** bucket;
}

class RevisionTraffic {
  readonly seconds: Second[] = Array.from({ length: SECONDS }, () => ({ at: -1, requests: 0, errors: 0, latency: new Uint32Array(BUCKETS) }));

  slot(now: number): Second {
    const at = Math.floor(now / 1000);
    const s = this.seconds[at % SECONDS] as Second;
    if (s.at !== at) {
      s.at = at;
      s.requests = 0;
      s.errors = 0;
      s.latency.fill(0);
    }
    return s;
  }
}

export class RevisionStats {
  readonly #revisions = new Map<string, RevisionTraffic>();
  readonly #now: () => number;

  constructor(now: () => number = Date.now) {
    this.#now = now;
  }

  /** One request for `revision` ended with `status` after `ms`. */
  record(revision: string, status: number, ms: number): void {
    let t = this.#revisions.get(revision);
    if (!t) {
      t = new RevisionTraffic();
      this.#revisions.set(revision, t);
    }
    const s = t.slot(this.#now());
    s.requests++;
    if (status >= 500) s.errors++;
    (s.latency as Uint32Array)[bucketOf(ms)] = ((s.latency as Uint32Array)[bucketOf(ms)] as number) + 1;
  }

  /** What `revision` saw over the last `windowMs` (at most five minutes). */
  summary(revision: string, windowMs = 60_000): TrafficSummary {
    const t = this.#revisions.get(revision);
    const now = Math.floor(this.#now() / 1000);
    const span = Math.max(1, Math.min(SECONDS - 1, Math.round(windowMs / 1000)));
    let requests = 0;
    let errors = 0;
    const latency = new Uint32Array(BUCKETS);
    for (const s of t?.seconds ?? []) {
      if (s.at < 0 || s.at <= now - span || s.at > now) continue;
      requests += s.requests;
      errors += s.errors;
      for (let i = 0; i < BUCKETS; i++) latency[i] = (latency[i] as number) + (s.latency[i] as number);
    }
    let p99Ms: number | null = null;
    if (requests > 0) {
      const rank = Math.ceil(requests * 0.99);
      let seen = 0;
      for (let i = 0; i < BUCKETS; i++) {
        seen += latency[i] as number;
        if (seen >= rank) {
          p99Ms = Math.round(upperMs(i) * 100) / 100;
          break;
        }
      }
    }
    return { requests, rps: Math.round((requests / span) * 100) / 100, errorRate: requests ? Math.round((errors / requests) * 10_000) / 10_000 : 0, p99Ms };
  }
}
