/**
 * Prometheus metrics of function traffic through the gateway, labelled the way people look
 * for it (function, revision, route, method, code), and the activator's waits. Counted when a
 * request to a function ends (the gateway's Counted handler): one Map lookup and a histogram
 * bucket per request. Rendered with the rest of `tide up`'s metrics on the API's /metrics.
 *
 *   tide_function_requests_total{function,revision,route,method,code}
 *   tide_function_request_duration_seconds{function,revision} (histogram)
 *   tide_activator_wait_seconds{function,revision} (histogram: time held for an instance)
 */
import { esc, Histogram, histogramFamily } from '../lib/prom.ts';

export class TargetMetrics {
  readonly function: string;
  readonly revision: string;
  readonly labels: string;
  /** "route\0method\0code" → count. */
  readonly requests = new Map<string, number>();
  readonly duration = new Histogram();
  readonly wait = new Histogram();

  constructor(fn: string, revision: string) {
    this.function = fn;
    this.revision = revision;
    this.labels = `function="${esc(fn)}",revision="${esc(revision)}"`;
  }

  count(route: string, method: string, code: number, seconds: number): void {
    const key = `${route}\u0000${method}\u0000${code}`;
    this.requests.set(key, (this.requests.get(key) ?? 0) + 1);
    this.duration.observe(seconds);
  }
}

export class FunctionMetrics {
  readonly #targets = new Map<string, TargetMetrics>();

  /** The metrics of one function revision (looked up when a snapshot is compiled, not per request). */
  target(fn: string, revision: string): TargetMetrics {
    const key = `${fn}\u0000${revision}`;
    let t = this.#targets.get(key);
    if (!t) {
      t = new TargetMetrics(fn, revision);
      this.#targets.set(key, t);
    }
    return t;
  }

  /**
   * Cumulative counts per function revision, copied: requests, 5xx answers, and the duration
   * histogram's bucket counts (lib/prom.ts BUCKETS_S, then the overflow). The dashboard's
   * sampler diffs two of these to get rates and percentiles over an interval.
   */
  counts(): { function: string; revision: string; requests: number; errors: number; buckets: number[] }[] {
    return [...this.#targets.values()].map((t) => {
      let errors = 0;
      for (const [key, n] of t.requests) if (Number(key.slice(key.lastIndexOf('\u0000') + 1)) >= 500) errors += n;
      return { function: t.function, revision: t.revision, requests: t.duration.count, errors, buckets: [...t.duration.counts] };
    });
  }

  render(): string {
    const out: string[] = [];
    out.push(
      '# HELP tide_function_requests_total Requests to functions, by function, revision, route, method and status code.',
      '# TYPE tide_function_requests_total counter',
    );
    for (const t of this.#targets.values()) {
      for (const [key, n] of t.requests) {
        const [route, method, code] = key.split('\u0000') as [string, string, string];
        out.push(`tide_function_requests_total{${t.labels},route="${esc(route)}",method="${esc(method)}",code="${code}"} ${n}`);
      }
    }
    histogramFamily(
      out,
      'tide_function_request_duration_seconds',
      'Time from request head to the end of a function’s response.',
      [...this.#targets.values()].map((t) => [t.labels, t.duration]),
    );
    histogramFamily(
      out,
      'tide_activator_wait_seconds',
      'Time requests were held by the activator for a free instance (cold starts, full instances).',
      [...this.#targets.values()].filter((t) => t.wait.count > 0).map((t) => [t.labels, t.wait]),
    );
    return `${out.join('\n')}\n`;
  }
}
