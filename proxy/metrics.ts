/**
 * The proxy's Prometheus metrics, kept as plain counters on the request path (one Map lookup
 * and a few increments per request) and rendered as text on the admin listener's /metrics.
 *
 *   tide_proxy_requests_total{virtual_host,route,cluster,code}
 *   tide_proxy_request_duration_seconds{virtual_host,route} (histogram)
 *   tide_proxy_upstream_retries_total{cluster}
 *   tide_proxy_outlier_ejections_total{cluster}
 *   tide_proxy_circuit_open_total{cluster}
 *   tide_proxy_refused_total{listener,code} (refused by the listener: 400, 408, 413, 431…)
 *   tide_proxy_config_reloads_total{result}, tide_proxy_config_version
 *   tide_proxy_connections (gauge: HTTP/1.1, HTTP/2 and upgraded connections)
 *   tide_proxy_overload_shed_total{reason}, tide_proxy_overloaded, tide_proxy_event_loop_delay_seconds
 */
import { BUCKETS_S, esc, Histogram } from '../lib/prom.ts';
import type { Overload } from './overload.ts';

export { BUCKETS_S, esc, Histogram };

/** Requests of one route by cluster and status, and their durations. */
export class RouteMetrics {
  readonly byCluster = new Map<string, Map<number, number>>();
  readonly duration = new Histogram();

  count(cluster: string, status: number, seconds: number): void {
    let byStatus = this.byCluster.get(cluster);
    if (!byStatus) {
      byStatus = new Map();
      this.byCluster.set(cluster, byStatus);
    }
    byStatus.set(status, (byStatus.get(status) ?? 0) + 1);
    this.duration.observe(seconds);
  }
}

export class ProxyMetrics {
  readonly #routes = new Map<string, RouteMetrics>();
  readonly #retries = new Map<string, number>();
  readonly #ejections = new Map<string, number>();
  readonly #circuit = new Map<string, number>();
  readonly #refused = new Map<string, number>();
  readonly #reloads = new Map<string, number>();
  readonly #policy = new Map<string, number>();
  readonly #handshakes = new Map<string, number>();
  configVersion = 0;
  connections = 0;
  /** Open connections that left HTTP/1.1: HTTP/2 sessions and upgraded (WebSocket) sockets. */
  rawConnections = 0;
  /** The overload policy, when the process runs one (its readings and what it shed go on /metrics). */
  overload: Overload | undefined;

  /** The counters of one route, looked up once when a snapshot is compiled. */
  route(virtualHost: string, route: string): RouteMetrics {
    const key = `virtual_host="${esc(virtualHost)}",route="${esc(route)}"`;
    let m = this.#routes.get(key);
    if (!m) {
      m = new RouteMetrics();
      this.#routes.set(key, m);
    }
    return m;
  }

  retry(cluster: string): void {
    bump(this.#retries, `cluster="${esc(cluster)}"`);
  }

  ejected(cluster: string): void {
    bump(this.#ejections, `cluster="${esc(cluster)}"`);
  }

  circuitOpen(cluster: string): void {
    bump(this.#circuit, `cluster="${esc(cluster)}"`);
  }

  refused(listener: string, code: string): void {
    bump(this.#refused, `listener="${esc(listener)}",code="${code}"`);
  }

  /** A request refused by policy: 403 (authorization, mTLS mode) or 429 (rate limit). */
  policyRefused(fn: string, code: string): void {
    bump(this.#policy, `function="${esc(fn)}",code="${code}"`);
  }

  /** A mesh connection refused before any request: plaintext, no or bad client certificate, unknown identity. */
  handshakeRefused(listener: string, reason: string): void {
    bump(this.#handshakes, `listener="${esc(listener)}",reason="${esc(reason)}"`);
  }

  reload(result: 'applied' | 'rejected'): void {
    bump(this.#reloads, `result="${result}"`);
  }

  render(): string {
    const out: string[] = [];
    const family = (name: string, help: string, type: string, m: Map<string, number>) => {
      out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
      for (const [k, v] of m) out.push(`${name}{${k}} ${v}`);
    };
    out.push('# HELP tide_proxy_requests_total Requests answered, by route, upstream cluster and status code.', '# TYPE tide_proxy_requests_total counter');
    for (const [k, r] of this.#routes) {
      for (const [cluster, byStatus] of r.byCluster)
        for (const [code, n] of byStatus) out.push(`tide_proxy_requests_total{${k},cluster="${esc(cluster)}",code="${code}"} ${n}`);
    }
    out.push('# HELP tide_proxy_request_duration_seconds Time from request head to response end.', '# TYPE tide_proxy_request_duration_seconds histogram');
    for (const [k, r] of this.#routes) {
      const h = r.duration;
      let cum = 0;
      BUCKETS_S.forEach((b, i) => {
        cum += h.counts[i] as number;
        out.push(`tide_proxy_request_duration_seconds_bucket{${k},le="${b}"} ${cum}`);
      });
      out.push(`tide_proxy_request_duration_seconds_bucket{${k},le="+Inf"} ${h.count}`);
      out.push(`tide_proxy_request_duration_seconds_sum{${k}} ${h.sum}`, `tide_proxy_request_duration_seconds_count{${k}} ${h.count}`);
    }
    family('tide_proxy_upstream_retries_total', 'Retries sent to a cluster.', 'counter', this.#retries);
    family('tide_proxy_outlier_ejections_total', 'Endpoints ejected by outlier detection.', 'counter', this.#ejections);
    family('tide_proxy_circuit_open_total', 'Requests refused because a cluster was over a circuit-breaker limit.', 'counter', this.#circuit);
    family('tide_proxy_refused_total', 'Requests refused by a listener before routing (malformed, too large, too slow).', 'counter', this.#refused);
    family(
      'tide_proxy_policy_refused_total',
      'Requests refused by a Policy: authorization (403), mTLS mode (403) or rate limit (429).',
      'counter',
      this.#policy,
    );
    family(
      'tide_proxy_mesh_connections_refused_total',
      'Mesh connections refused before any request (plaintext, client certificate, identity).',
      'counter',
      this.#handshakes,
    );
    family('tide_proxy_config_reloads_total', 'Config reloads, applied or rejected.', 'counter', this.#reloads);
    out.push(
      '# HELP tide_proxy_config_version Version of the running config snapshot.',
      '# TYPE tide_proxy_config_version gauge',
      `tide_proxy_config_version ${this.configVersion}`,
    );
    out.push(
      '# HELP tide_proxy_connections Open client connections.',
      '# TYPE tide_proxy_connections gauge',
      `tide_proxy_connections ${this.connections + this.rawConnections}`,
    );
    const o = this.overload;
    if (o) {
      out.push(
        '# HELP tide_proxy_overload_shed_total Requests and connections answered 503 by the overload policy, by reason.',
        '# TYPE tide_proxy_overload_shed_total counter',
      );
      for (const [reason, n] of o.shed) out.push(`tide_proxy_overload_shed_total{reason="${reason}"} ${n}`);
      out.push(
        '# HELP tide_proxy_overloaded 1 while the overload policy sheds requests.',
        '# TYPE tide_proxy_overloaded gauge',
        `tide_proxy_overloaded ${o.reason === undefined ? 0 : 1}`,
        '# HELP tide_proxy_event_loop_delay_seconds The worst event-loop delay in the last sampling interval.',
        '# TYPE tide_proxy_event_loop_delay_seconds gauge',
        `tide_proxy_event_loop_delay_seconds ${o.eventLoopDelayMs / 1000}`,
      );
    }
    return `${out.join('\n')}\n`;
  }
}

function bump(m: Map<string, number>, k: string): void {
  m.set(k, (m.get(k) ?? 0) + 1);
}
