/**
 * The small part of the Prometheus text format Tide needs, shared by the proxy's and the
 * control plane's metrics: a fixed-bucket histogram, label escaping, and histogram families.
 * Names follow Prometheus' conventions: `tide_<area>_<thing>_<unit>`, counters end in `_total`,
 * durations are seconds.
 */

/** Latency buckets, seconds: 0.5 ms to 10 s. */
export const BUCKETS_S = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

export class Histogram {
  readonly counts = new Array<number>(BUCKETS_S.length + 1).fill(0);
  sum = 0;
  count = 0;

  observe(seconds: number): void {
    let i = 0;
    while (i < BUCKETS_S.length && seconds > (BUCKETS_S[i] as number)) i++;
    this.counts[i] = (this.counts[i] as number) + 1;
    this.sum += seconds;
    this.count++;
  }
}

/** A label value, escaped for the text format. */
export function esc(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

/** Appends a histogram family (HELP, TYPE, then buckets, sum and count of each series) to `out`. */
export function histogramFamily(out: string[], name: string, help: string, series: [string, Histogram][]): void {
  out.push(`# HELP ${name} ${help}`, `# TYPE ${name} histogram`);
  for (const [labels, h] of series) {
    let cum = 0;
    BUCKETS_S.forEach((b, i) => {
      cum += h.counts[i] as number;
      out.push(`${name}_bucket{${labels},le="${b}"} ${cum}`);
    });
    out.push(`${name}_bucket{${labels},le="+Inf"} ${h.count}`, `${name}_sum{${labels}} ${h.sum}`, `${name}_count{${labels}} ${h.count}`);
  }
}

/** Appends a gauge or counter family. */
export function family(out: string[], name: string, help: string, type: 'gauge' | 'counter', series: [string, number][]): void {
  out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
  for (const [labels, v] of series) out.push(`${name}{${labels}} ${v}`);
}
