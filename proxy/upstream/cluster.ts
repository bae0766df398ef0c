/**
 * An upstream cluster: its endpoints and the three innermost layers of the stack, circuit →
 * balance → endpoint.
 *
 * - Circuit breaking (Envoy's per-cluster thresholds): more than `maxRequests` in flight, or
 *   more than `maxPending` waiting for a connection, fails at once with 503
 *   ERR_PROXY_CIRCUIT_OPEN instead of queueing; `maxRetries` caps concurrent retries (read by
 *   the retry layer).
 * - Balancing over the eligible endpoints (not ejected, not failing health checks; if none is
 *   eligible, all of them, as Envoy's panic mode does): round robin, least-request with the
 *   power of two choices, or peak-EWMA (latency × load, Finagle/Linkerd style).
 * - Passive outlier detection: N consecutive 5xx or connect failures eject an endpoint for
 *   base × (times ejected), capped at the max; never more than maxEjectionPercent of the
 *   cluster (at least one may be ejected).
 * - Active health checks (optional): GET `path` every interval; unhealthyThreshold failures
 *   take an endpoint out, healthyThreshold passes bring it back.
 *
 * A cluster is built when a snapshot is applied and reused by the next snapshot if its config
 * did not change, so keep-alive pools survive reloads; replaced clusters drain (`close`).
 */
import { request } from 'undici';
import type { ClusterConfig } from '../../lib/config/proxy.ts';
import { parseDuration } from '../../lib/duration.ts';
import { TideError } from '../../lib/errors.ts';
import type { ProxyRequest, ResponseHandler } from '../http/types.ts';
import type { ProxyMetrics } from '../metrics.ts';
import { type Outcome, UpstreamEndpoint } from './endpoint.ts';

export class Cluster {
  readonly name: string;
  readonly config: ClusterConfig;
  /** The config this cluster was built from, to tell whether a new snapshot can reuse it. */
  readonly fingerprint: string;
  readonly endpoints: UpstreamEndpoint[];
  readonly #metrics: ProxyMetrics;
  readonly #pick: (eligible: UpstreamEndpoint[]) => UpstreamEndpoint;
  readonly #capacity: number;
  #rr = 0;
  active = 0;
  retriesActive = 0;
  #timer: NodeJS.Timeout | undefined;
  #checks: { fails: number; passes: number }[];
  readonly #baseEjectMs: number;
  readonly #maxEjectMs: number;

  constructor(config: ClusterConfig, metrics: ProxyMetrics) {
    this.name = config.name;
    this.config = config;
    this.fingerprint = JSON.stringify(config);
    this.#metrics = metrics;
    const connectTimeoutMs = parseDuration(config.connectTimeout, 'connectTimeout');
    this.endpoints = config.endpoints.map(
      (a) => new UpstreamEndpoint(a, { connections: config.connectionsPerEndpoint, connectTimeoutMs, client: config.client }),
    );
    this.#capacity = config.connectionsPerEndpoint * this.endpoints.length;
    this.#baseEjectMs = parseDuration(config.outlierDetection.baseEjectionTime, 'baseEjectionTime');
    this.#maxEjectMs = parseDuration(config.outlierDetection.maxEjectionTime, 'maxEjectionTime');
    this.#pick =
      config.balancer === 'least-request' ? leastRequest : config.balancer === 'peak-ewma' ? peakEwma : (e) => e[this.#rr++ % e.length] as UpstreamEndpoint;
    this.#checks = this.endpoints.map(() => ({ fails: 0, passes: 0 }));
    if (config.healthCheck) this.#startHealthChecks(config.healthCheck);
  }

  /** The innermost dispatch: circuit → balance → endpoint. */
  dispatch(req: ProxyRequest, handler: ResponseHandler): void {
    const cb = this.config.circuitBreaker;
    if (this.active >= cb.maxRequests) {
      this.#metrics.circuitOpen(this.name);
      handler.onError(circuitOpen(this.name, `${cb.maxRequests} requests in flight`));
      return;
    }
    if (this.active >= this.#capacity && this.#pending() >= cb.maxPending) {
      this.#metrics.circuitOpen(this.name);
      handler.onError(circuitOpen(this.name, `${cb.maxPending} requests waiting for a connection`));
      return;
    }
    const endpoint = this.pick(req.tried);
    req.endpoint = endpoint.address;
    this.active++;
    endpoint.dispatch(req, handler, (outcome, status) => {
      this.active--;
      this.#record(endpoint, outcome, status);
    });
  }

  /** An endpoint for the next request, avoiding `avoid` (endpoints earlier tries failed on) when another is eligible. */
  pick(avoid?: string[]): UpstreamEndpoint {
    const all = this.endpoints;
    if (all.length === 1) return all[0] as UpstreamEndpoint;
    const now = performance.now();
    let eligible: UpstreamEndpoint[] | undefined;
    for (let i = 0; i < all.length; i++) {
      const e = all[i] as UpstreamEndpoint;
      const ok = e.healthy && (e.ejectedUntil === 0 || now >= e.ejectedUntil) && (avoid === undefined || !avoid.includes(e.address));
      if (!ok && eligible === undefined) eligible = all.slice(0, i);
      else if (ok && eligible !== undefined) eligible.push(e);
    }
    if (eligible !== undefined && eligible.length === 0 && avoid !== undefined) return this.pick();
    const from = eligible === undefined ? all : eligible.length === 0 ? all : eligible;
    return this.#pick(from);
  }

  #pending(): number {
    let n = 0;
    for (const e of this.endpoints) n += e.pool.stats.pending;
    return n;
  }

  #record(e: UpstreamEndpoint, outcome: Outcome, _status: number): void {
    const od = this.config.outlierDetection;
    // An abandoned request says nothing about the endpoint either way.
    if (outcome === 'aborted') return;
    if (outcome === 'ok') {
      e.consecutiveFailures = 0;
      return;
    }
    if (od.consecutiveFailures === 0) return;
    const now = performance.now();
    if (e.ejectedUntil !== 0 && now >= e.ejectedUntil) {
      // Back from an ejection: start counting afresh.
      e.ejectedUntil = 0;
      e.consecutiveFailures = 0;
    }
    e.consecutiveFailures++;
    if (e.consecutiveFailures < od.consecutiveFailures || e.ejectedUntil !== 0) return;
    const ejectedNow = this.endpoints.filter((x) => x.ejectedUntil > now).length;
    const allowed = Math.max(1, Math.floor((this.endpoints.length * od.maxEjectionPercent) / 100));
    if (ejectedNow >= allowed || od.maxEjectionPercent === 0) return;
    e.ejections++;
    e.ejectedUntil = now + Math.min(this.#baseEjectMs * e.ejections, this.#maxEjectMs);
    this.#metrics.ejected(this.name);
  }

  #startHealthChecks(hc: NonNullable<ClusterConfig['healthCheck']>): void {
    const interval = parseDuration(hc.interval, 'healthCheck.interval');
    const timeout = parseDuration(hc.timeout, 'healthCheck.timeout');
    const run = () => {
      this.endpoints.forEach((e, i) => {
        const state = this.#checks[i] as { fails: number; passes: number };
        request(`http://${e.address}${hc.path}`, {
          method: 'GET',
          headers: { 'user-agent': 'tide-health-check' },
          headersTimeout: timeout,
          bodyTimeout: timeout,
          signal: AbortSignal.timeout(timeout),
        })
          .then(async (r) => {
            await r.body.dump();
            return r.statusCode >= 200 && r.statusCode < 400;
          })
          .catch(() => false)
          .then((ok) => {
            if (ok) {
              state.fails = 0;
              if (++state.passes >= hc.healthyThreshold) e.healthy = true;
            } else {
              state.passes = 0;
              if (++state.fails >= hc.unhealthyThreshold) e.healthy = false;
            }
          });
      });
    };
    run();
    this.#timer = setInterval(run, interval);
    this.#timer.unref();
  }

  /** Stops health checks and lets pooled connections finish what they are doing. */
  async close(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer);
    await Promise.all(this.endpoints.map((e) => e.close()));
  }

  async destroy(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer);
    await Promise.all(this.endpoints.map((e) => e.destroy()));
  }
}

function circuitOpen(cluster: string, why: string): TideError {
  return new TideError('ERR_PROXY_CIRCUIT_OPEN', `cluster ${cluster} is over its limit (${why})`, { status: 503, details: { cluster } });
}

function twoRandom(e: UpstreamEndpoint[]): [UpstreamEndpoint, UpstreamEndpoint] {
  const i = Math.floor(Math.random() * e.length);
  let j = Math.floor(Math.random() * (e.length - 1));
  if (j >= i) j++;
  return [e[i] as UpstreamEndpoint, e[j] as UpstreamEndpoint];
}

function leastRequest(e: UpstreamEndpoint[]): UpstreamEndpoint {
  if (e.length === 1) return e[0] as UpstreamEndpoint;
  const [a, b] = twoRandom(e);
  return b.active < a.active ? b : a;
}

function peakEwma(e: UpstreamEndpoint[]): UpstreamEndpoint {
  if (e.length === 1) return e[0] as UpstreamEndpoint;
  const [a, b] = twoRandom(e);
  const now = performance.now();
  return b.cost(now) < a.cost(now) ? b : a;
}
