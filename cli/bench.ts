/**
 * `tide bench`: load tests of functions, revisions, route tags or URLs, driven by autocannon in
 * this process. One target gives a summary (requests/s, latency percentiles, throughput, errors
 * by kind, a latency histogram); two targets (`--compare`) run in interleaved rounds and say
 * whether the difference is larger than the rounds' own spread; `--cold` scales the target to
 * zero before each round and times the first request. Reports go to the terminal, `--json`
 * and `--html` (self-contained, charts in inline SVG), and thresholds (`--max-p99 50ms`,
 * `--min-rps 1000`, `--max-error-rate 1%`) set the exit code, so a CI job can gate a rollout.
 *
 * Load is bounded in time and count, and goes only where it is told: a URL outside loopback
 * needs `--allow-remote`.
 */
import { lookup } from 'node:dns/promises';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { isIP } from 'node:net';
import type autocannon from 'autocannon';
import { TideError } from '../lib/errors.ts';
import type { ApiClient } from './client.ts';

export const BENCH_LIMITS = Object.freeze({ maxDurationS: 3600, maxAmount: 100_000_000, maxConnections: 10_000, maxRounds: 100 });

export interface Thresholds {
  maxP99Ms?: number | undefined;
  maxP50Ms?: number | undefined;
  minRps?: number | undefined;
  /** Share of requests that failed (socket errors, timeouts, 5xx), 0..1. */
  maxErrorRate?: number | undefined;
}

export interface BenchOptions {
  targets: string[];
  connections: number;
  /** Each round runs this long (ms), or… */
  durationMs?: number | undefined;
  /** …sends this many requests. */
  amount?: number | undefined;
  /** Overall requests per second (all connections together); undefined: as fast as it goes. */
  rate?: number | undefined;
  method: string;
  headers: Record<string, string>;
  body?: Buffer | undefined;
  path: string;
  rounds: number;
  warmupS: number;
  cold: boolean;
  timeoutS: number;
  allowRemote: boolean;
  thresholds: Thresholds;
  /** Live progress on stderr. */
  progress: boolean;
}

export interface Target {
  /** What the user wrote. */
  name: string;
  /** What it resolved to, in words. */
  description: string;
  url: string;
  /** Host header to send (gateway targets), or undefined to use the URL's. */
  host: string | undefined;
  /** The function, when the target is one of Tide's (for --cold). */
  function?: string | undefined;
}

/** Latency buckets: 1.05× apart from 10 µs, so a percentile read from them is within 5%. */
const B_MIN_MS = 0.01;
const B_RATIO = 1.05;
const B_COUNT = Math.ceil(Math.log(600_000 / B_MIN_MS) / Math.log(B_RATIO)) + 1;

export class LatencyHistogram {
  readonly counts = new Float64Array(B_COUNT);
  total = 0;
  sum = 0;
  max = 0;
  min = Number.POSITIVE_INFINITY;

  record(ms: number): void {
    const i = ms <= B_MIN_MS ? 0 : Math.min(B_COUNT - 1, Math.ceil(Math.log(ms / B_MIN_MS) / Math.log(B_RATIO)));
    this.counts[i] = (this.counts[i] ?? 0) + 1;
    this.total++;
    this.sum += ms;
    if (ms > this.max) this.max = ms;
    if (ms < this.min) this.min = ms;
  }

  /** The upper bound of the bucket holding the p-th percentile (p in 0..100), capped at the max seen. */
  percentile(p: number): number {
    if (this.total === 0) return 0;
    const rank = Math.ceil((p / 100) * this.total);
    let seen = 0;
    for (let i = 0; i < B_COUNT; i++) {
      seen += this.counts[i] ?? 0;
      if (seen >= rank) return Math.min(this.max, B_MIN_MS * B_RATIO ** i);
    }
    return this.max;
  }

  /** `rows` log-spaced buckets from min to max, for charts: [from, to, count]. */
  bins(rows: number): [number, number, number][] {
    if (this.total === 0) return [];
    const lo = Math.max(B_MIN_MS, this.min);
    const hi = Math.max(lo * 1.0001, this.max);
    const step = (Math.log(hi) - Math.log(lo)) / rows;
    const out: [number, number, number][] = Array.from({ length: rows }, (_, r) => [lo * Math.exp(step * r), lo * Math.exp(step * (r + 1)), 0]);
    for (let i = 0; i < B_COUNT; i++) {
      const c = this.counts[i] ?? 0;
      if (c === 0) continue;
      const v = Math.min(hi, Math.max(lo, B_MIN_MS * B_RATIO ** i));
      const r = Math.min(rows - 1, Math.max(0, Math.floor((Math.log(v) - Math.log(lo)) / step)));
      (out[r] as [number, number, number])[2] += c;
    }
    return out;
  }
}

export interface RoundResult {
  durationS: number;
  /** Responses received. */
  requests: number;
  /** Requests sent: with --duration, the ones still in flight when time ran out are sent but not received. */
  sent: number;
  /** Responses by status code. */
  statuses: Record<string, number>;
  /** Failures by kind: socket errors by code, timeouts. */
  errors: Record<string, number>;
  bytes: number;
  histogram: LatencyHistogram;
  /** Responses completed in each second. */
  perSecond: number[];
}

export interface Summary {
  target: string;
  description: string;
  /** Responses received (what the statistics are about). */
  requests: number;
  /** Requests sent, including those still in flight when a --duration ran out. */
  sent: number;
  durationS: number;
  rps: number;
  latencyMs: { p50: number; p90: number; p99: number; max: number; mean: number };
  throughputBytesPerS: number;
  statuses: Record<string, number>;
  errors: Record<string, number>;
  failed: number;
  errorRate: number;
  histogram: { fromMs: number; toMs: number; count: number }[];
  perSecond: number[];
  rounds: { rps: number; p50: number; p99: number }[];
}

const LOOPBACK_NAMES = /^(localhost|[a-z0-9-]+(\.[a-z0-9-]+)*\.localhost)\.?$/i;

function isLoopbackAddress(a: string): boolean {
  if (isIP(a) === 4) return a.startsWith('127.');
  const v6 = a.toLowerCase();
  return v6 === '::1' || v6.startsWith('::ffff:127.');
}

/** Refuses a URL whose host is not on loopback unless `allowRemote`. */
export async function checkAllowed(url: string, allowRemote: boolean): Promise<void> {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new TideError('ERR_INVALID_ARGUMENT', `not a URL: ${url}`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new TideError('ERR_INVALID_ARGUMENT', `${url}: only http:// and https:// can be load tested`);
  if (allowRemote) return;
  const host = u.hostname.replace(/^\[|\]$/g, '');
  if (LOOPBACK_NAMES.test(host)) return;
  const addresses = isIP(host) ? [host] : (await lookup(host, { all: true }).catch(() => [])).map((a) => a.address);
  if (addresses.length > 0 && addresses.every(isLoopbackAddress)) return;
  throw new TideError('ERR_INVALID_ARGUMENT', `${u.host} is not a loopback address; load goes only to this machine unless you say otherwise`, {
    hint: 'pass --allow-remote to load test a host you are allowed to load',
  });
}

interface RouteTags {
  name: string;
  hosts: string[] | null;
  tags: { tag: string; revision: string }[];
}

async function routes(api: ApiClient): Promise<RouteTags[]> {
  return (await api.call<{ items: RouteTags[] }>('GET', '/v1/routes')).items;
}

/** TAG.<the route's first host> (its own NAME.<domain> when it has none). */
function tagHost(r: RouteTags, tag: string, domain: string): string {
  return `${tag}.${(r.hosts ?? [`${r.name}.${domain}`])[0]}`;
}

/**
 * What a target is: a URL; `NAME` (a function, through the gateway); `TAG.NAME` (a route tag);
 * `NAME-0000N` (a revision: the one its function serves, or one a route tags).
 */
export async function resolveTarget(
  name: string,
  ctx: { api?: ApiClient | undefined; gateway?: string | undefined; domain?: string | undefined; path: string },
): Promise<Target> {
  if (/^https?:\/\//i.test(name)) return { name, description: name, url: name, host: undefined };
  const { api, gateway, domain } = ctx;
  if (!api || !gateway || !domain) {
    throw new TideError('ERR_INVALID_ARGUMENT', `"${name}" is a function, revision or tag, which needs a running Tide (its gateway and API)`, {
      hint: 'start one with `tide up`, pass --data-dir or --gateway URL, or give a full http:// URL',
    });
  }
  const url = `${gateway.replace(/\/+$/, '')}${ctx.path}`;
  const revision = /^([a-z]([-a-z0-9]*[a-z0-9])?)-(\d{5})$/.exec(name);
  if (revision) {
    const fnName = revision[1] as string;
    const fn = await api.call<{ servingRevision: string }>('GET', `/v1/functions/${encodeURIComponent(fnName)}`).catch(() => undefined);
    if (fn?.servingRevision === name)
      return { name, description: `revision ${name} (serving ${fnName}.${domain})`, url, host: `${fnName}.${domain}`, function: fnName };
    const items = await routes(api);
    for (const r of items) {
      const tag = r.tags.find((t) => t.revision === name);
      if (tag) {
        const host = tagHost(r, tag.tag, domain);
        return { name, description: `revision ${name} (tag ${tag.tag} of route ${r.name}: ${host})`, url, host, function: fnName };
      }
    }
    throw new TideError(
      'ERR_NOT_FOUND',
      `revision ${name} is not reachable: ${fn ? `${fnName} serves ${fn.servingRevision}` : `no function ${fnName}`} and no route tags ${name}`,
      {
        hint: fn ? `give it a tag: tide split ${fnName} ${fn.servingRevision}=100 --tag try=${name}` : 'tide get functions lists them',
      },
    );
  }
  const tagged = /^([a-z]([-a-z0-9]*[a-z0-9])?)\.([a-z]([-a-z0-9]*[a-z0-9])?)$/.exec(name);
  if (tagged) {
    const [, tag, , route] = tagged as unknown as [string, string, string, string];
    const items = await routes(api);
    const r = items.find((x) => x.name === route);
    const t = r?.tags.find((x) => x.tag === tag);
    if (!r || !t) throw new TideError('ERR_NOT_FOUND', `no route ${route} with a tag ${tag}`, { hint: 'tide get routes lists routes and their tags' });
    const host = tagHost(r, tag, domain);
    return { name, description: `tag ${tag} of route ${route} (${t.revision}: ${host})`, url, host, function: t.revision.replace(/-\d{5}$/, '') };
  }
  if (!/^[a-z]([-a-z0-9]*[a-z0-9])?$/.test(name))
    throw new TideError('ERR_INVALID_ARGUMENT', `"${name}" is not a URL, function, revision (NAME-0000N) or route tag (TAG.ROUTE)`);
  await api.call('GET', `/v1/functions/${encodeURIComponent(name)}`);
  return { name, description: `function ${name} (${name}.${domain})`, url, host: `${name}.${domain}`, function: name };
}

/** One round of load against `target`. */
export async function runRound(
  target: Target,
  o: BenchOptions,
  durationMs: number | undefined,
  onSecond?: (done: number, rps: number) => void,
): Promise<RoundResult> {
  // Loaded on use: other commands do not pay for it.
  const { default: autocannon } = await import('autocannon');
  const histogram = new LatencyHistogram();
  const statuses: Record<string, number> = {};
  const errors: Record<string, number> = {};
  const perSecond: number[] = [];
  let requests = 0;
  let bytes = 0;
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { ...o.headers };
    if (target.host && !Object.keys(headers).some((h) => h.toLowerCase() === 'host')) headers.host = target.host;
    const opts: autocannon.Options = {
      url: target.url,
      connections: o.connections,
      method: o.method as autocannon.Request['method'],
      headers,
      timeout: o.timeoutS,
      ...(o.body ? { body: o.body } : {}),
      ...(durationMs !== undefined ? { duration: durationMs / 1000 } : { amount: o.amount as number }),
      ...(o.rate ? { overallRate: o.rate } : {}),
    };
    let instance: autocannon.Instance;
    try {
      instance = autocannon(opts, (err, result) => {
        clearInterval(ticker);
        if (err) {
          reject(new TideError('ERR_INVALID_ARGUMENT', `the load could not start: ${String((err as Error).message ?? err)}`));
          return;
        }
        if (result.timeouts > 0) errors.timeout = result.timeouts;
        // The last fraction of a second (the stragglers after the time ran out) counts with the
        // second before it, so a chart of requests per second does not end in a false dip.
        const elapsed = (performance.now() - started) / 1000;
        if (perSecond.length >= 2 && elapsed - (perSecond.length - 1) < 0.5) {
          const tail = perSecond.pop() as number;
          perSecond[perSecond.length - 1] = (perSecond[perSecond.length - 1] ?? 0) + tail;
        }
        resolve({ durationS: (performance.now() - started) / 1000, requests, sent: result.requests.sent, statuses, errors, bytes, histogram, perSecond });
      });
    } catch (err) {
      reject(new TideError('ERR_INVALID_ARGUMENT', `the load could not start: ${(err as Error).message}`));
      return;
    }
    instance.on('response', (_client: unknown, status: number, resBytes: number, ms: number) => {
      requests++;
      bytes += resBytes;
      statuses[status] = (statuses[status] ?? 0) + 1;
      histogram.record(ms);
      const second = Math.floor((performance.now() - started) / 1000);
      while (perSecond.length <= second) perSecond.push(0);
      perSecond[second] = (perSecond[second] ?? 0) + 1;
    });
    instance.on('reqError', (err: NodeJS.ErrnoException) => {
      // Timeouts are counted from autocannon's own total.
      if (err?.code === 'UND_ERR_HEADERS_TIMEOUT' || /timeout/i.test(err?.message ?? '')) return;
      const kind = err?.code ?? 'error';
      errors[kind] = (errors[kind] ?? 0) + 1;
    });
    let last = 0;
    const ticker = setInterval(() => {
      onSecond?.(requests, requests - last);
      last = requests;
    }, 1000);
  });
}

export function summarize(target: Target, rounds: RoundResult[]): Summary {
  const h = new LatencyHistogram();
  const statuses: Record<string, number> = {};
  const errors: Record<string, number> = {};
  let requests = 0;
  let sent = 0;
  let bytes = 0;
  let durationS = 0;
  const perSecond: number[] = [];
  for (const r of rounds) {
    sent += r.sent;
    for (let i = 0; i < B_COUNT; i++) h.counts[i] = (h.counts[i] ?? 0) + (r.histogram.counts[i] ?? 0);
    h.total += r.histogram.total;
    h.sum += r.histogram.sum;
    h.max = Math.max(h.max, r.histogram.max);
    h.min = Math.min(h.min, r.histogram.min);
    for (const [k, v] of Object.entries(r.statuses)) statuses[k] = (statuses[k] ?? 0) + v;
    for (const [k, v] of Object.entries(r.errors)) errors[k] = (errors[k] ?? 0) + v;
    requests += r.requests;
    bytes += r.bytes;
    durationS += r.durationS;
    perSecond.push(...r.perSecond);
  }
  const socketErrors = Object.values(errors).reduce((a, b) => a + b, 0);
  const serverErrors = Object.entries(statuses).reduce((a, [k, v]) => a + (Number(k) >= 500 ? v : 0), 0);
  const failed = socketErrors + serverErrors;
  const round = (x: number) => Math.round(x * 1000) / 1000;
  return {
    target: target.name,
    description: target.description,
    requests,
    sent,
    durationS: round(durationS),
    rps: durationS > 0 ? Math.round((requests / durationS) * 10) / 10 : 0,
    latencyMs: {
      p50: round(h.percentile(50)),
      p90: round(h.percentile(90)),
      p99: round(h.percentile(99)),
      max: round(h.max),
      mean: round(h.total ? h.sum / h.total : 0),
    },
    throughputBytesPerS: durationS > 0 ? Math.round(bytes / durationS) : 0,
    statuses,
    errors,
    failed,
    errorRate: requests + socketErrors > 0 ? round(failed / (requests + socketErrors)) : 0,
    histogram: h.bins(12).map(([fromMs, toMs, count]) => ({ fromMs: round(fromMs), toMs: round(toMs), count })),
    perSecond,
    rounds: rounds.map((r) => ({
      rps: r.durationS > 0 ? Math.round((r.requests / r.durationS) * 10) / 10 : 0,
      p50: round(r.histogram.percentile(50)),
      p99: round(r.histogram.percentile(99)),
    })),
  };
}

export interface Comparison {
  a: string;
  b: string;
  /** B ÷ A per round, and their median, min and max. */
  rpsRatio: { median: number; min: number; max: number; rounds: number[] };
  p99Ratio: { median: number; min: number; max: number; rounds: number[] };
  /** In words: a real difference (every round agrees by more than 2%) or noise. */
  verdict: string;
}

function spread(xs: number[]): { median: number; min: number; max: number; rounds: number[] } {
  const s = [...xs].sort((x, y) => x - y);
  const mid = s.length % 2 ? (s[(s.length - 1) / 2] as number) : ((s[s.length / 2 - 1] as number) + (s[s.length / 2] as number)) / 2;
  const r3 = (x: number) => Math.round(x * 1000) / 1000;
  return { median: r3(mid), min: r3(s[0] ?? 0), max: r3(s[s.length - 1] ?? 0), rounds: xs.map(r3) };
}

export function compare(a: Summary, b: Summary): Comparison {
  const n = Math.min(a.rounds.length, b.rounds.length);
  const rps = spread(Array.from({ length: n }, (_, i) => (b.rounds[i]?.rps ?? 0) / Math.max(1e-9, a.rounds[i]?.rps ?? 0)));
  const p99 = spread(Array.from({ length: n }, (_, i) => (b.rounds[i]?.p99 ?? 0) / Math.max(1e-9, a.rounds[i]?.p99 ?? 0)));
  const pct = (x: number) => `${x >= 1 ? '+' : ''}${Math.round((x - 1) * 1000) / 10}%`;
  let verdict: string;
  if (n < 2) verdict = `one round: B/A req/s ${pct(rps.median)}; run --rounds 3 or more to tell a change from noise`;
  else if (rps.min > 1.02) verdict = `${b.target} is faster in every round: req/s ${pct(rps.median)} (rounds ${pct(rps.min)} … ${pct(rps.max)})`;
  else if (rps.max < 0.98) verdict = `${b.target} is slower in every round: req/s ${pct(rps.median)} (rounds ${pct(rps.min)} … ${pct(rps.max)})`;
  else verdict = `no clear difference: req/s ${pct(rps.median)}, but the rounds range from ${pct(rps.min)} to ${pct(rps.max)}`;
  return { a: a.target, b: b.target, rpsRatio: rps, p99Ratio: p99, verdict };
}

/** Sends one request and times it to the end of the body (ms). */
export function timeOne(target: Target, o: BenchOptions): Promise<{ ms: number; status: number }> {
  const u = new URL(target.url);
  const send = u.protocol === 'https:' ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    const started = performance.now();
    const req = send(
      u,
      { method: o.method, headers: { ...o.headers, ...(target.host ? { host: target.host } : {}) }, agent: false, timeout: o.timeoutS * 1000 },
      (res) => {
        res.resume();
        res.once('end', () => resolve({ ms: performance.now() - started, status: res.statusCode ?? 0 }));
      },
    );
    req.once('timeout', () => req.destroy(new Error(`no answer within ${o.timeoutS} s`)));
    req.once('error', reject);
    req.end(o.body);
  });
}

export function checkThresholds(summaries: Summary[], t: Thresholds): string[] {
  const out: string[] = [];
  for (const s of summaries) {
    const at = summaries.length > 1 ? `${s.target}: ` : '';
    if (t.maxP99Ms !== undefined && s.latencyMs.p99 > t.maxP99Ms) out.push(`${at}p99 ${fmtMs(s.latencyMs.p99)} > --max-p99 ${fmtMs(t.maxP99Ms)}`);
    if (t.maxP50Ms !== undefined && s.latencyMs.p50 > t.maxP50Ms) out.push(`${at}p50 ${fmtMs(s.latencyMs.p50)} > --max-p50 ${fmtMs(t.maxP50Ms)}`);
    if (t.minRps !== undefined && s.rps < t.minRps) out.push(`${at}${s.rps} req/s < --min-rps ${t.minRps}`);
    if (t.maxErrorRate !== undefined && s.errorRate > t.maxErrorRate)
      out.push(`${at}error rate ${(s.errorRate * 100).toFixed(2)}% > --max-error-rate ${(t.maxErrorRate * 100).toFixed(2)}%`);
  }
  return out;
}

export function fmtMs(ms: number): string {
  if (ms >= 1000) return `${(ms / 1000).toFixed(2)} s`;
  if (ms >= 10) return `${ms.toFixed(1)} ms`;
  return `${ms.toFixed(2)} ms`;
}

export function fmtBytes(n: number): string {
  if (n >= 1024 * 1024) return `${(n / 1024 / 1024).toFixed(2)} MiB`;
  if (n >= 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${n} B`;
}

/** "200: 598   503: 2", or `none` when there are none. */
export function counts(byKind: Record<string, number>, sep: string, none: string): string {
  return (
    Object.entries(byKind)
      .map(([k, v]) => `${k}: ${v}`)
      .join(sep) || none
  );
}

/** The terminal report of one target. */
export function renderSummary(s: Summary): string {
  const lines: string[] = [];
  const unanswered = s.sent - s.requests;
  lines.push(
    `${s.description}: ${s.requests.toLocaleString('en')} requests in ${s.durationS.toFixed(1)} s${unanswered > 0 ? ` (${unanswered} more sent, still in flight when the time ran out)` : ''}`,
  );
  lines.push('');
  lines.push(`  requests/s   ${s.rps.toLocaleString('en')}`);
  lines.push(
    `  latency      p50 ${fmtMs(s.latencyMs.p50)}   p90 ${fmtMs(s.latencyMs.p90)}   p99 ${fmtMs(s.latencyMs.p99)}   max ${fmtMs(s.latencyMs.max)}   mean ${fmtMs(s.latencyMs.mean)}`,
  );
  lines.push(`  throughput   ${fmtBytes(s.throughputBytesPerS)}/s`);
  lines.push(`  statuses     ${counts(s.statuses, '   ', '-')}`);
  lines.push(`  errors       ${counts(s.errors, '   ', 'none')}${s.failed ? `   (failed ${(s.errorRate * 100).toFixed(2)}% incl. 5xx)` : ''}`);
  if (s.rounds.length > 1) lines.push(`  rounds       ${s.rounds.map((r) => `${r.rps} req/s`).join(', ')}`);
  if (s.histogram.length > 0) {
    lines.push('');
    lines.push('  latency histogram');
    const most = Math.max(...s.histogram.map((b) => b.count));
    for (const b of s.histogram) {
      const bar = '█'.repeat(most ? Math.round((b.count / most) * 40) : 0);
      lines.push(`  ${fmtMs(b.fromMs).padStart(9)} – ${fmtMs(b.toMs).padEnd(9)} ${bar} ${b.count}`);
    }
  }
  return lines.join('\n');
}
