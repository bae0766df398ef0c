/**
 * The control plane's Prometheus metrics: what the autoscaler wants and sees per revision,
 * the activator's queue, and cold starts (an instance started, and how long it took until it
 * could serve). Rendered with the gateway's on the API's /metrics.
 *
 *   tide_revision_instances_desired{function,revision}, tide_revision_instances_ready{…}
 *   tide_activator_queue_depth{function,revision}, tide_autoscaler_panic{function,revision}
 *   tide_sandbox_cold_starts_total{function,revision,sandbox}
 *   tide_sandbox_cold_start_duration_seconds{function,revision,sandbox} (histogram)
 *   tide_sandbox_memory_bytes, tide_sandbox_cpu_seconds_total{function,revision,instance,sandbox}
 */
import { esc, family, Histogram, histogramFamily } from '../lib/prom.ts';

export interface RevisionGauges {
  function: string;
  revision: string;
  desired: number;
  ready: number;
  queued: number;
  panic: boolean;
}

export interface SandboxUsageRow {
  function: string;
  revision: string;
  instance: string;
  sandbox: string;
  memoryBytes: number;
  cpuSeconds: number;
}

export class ControlMetrics {
  readonly #gauges: () => RevisionGauges[];
  readonly #usage: () => Promise<SandboxUsageRow[]>;
  readonly #cold = new Map<string, Histogram>();

  constructor(gauges: () => RevisionGauges[], usage: () => Promise<SandboxUsageRow[]> = async () => []) {
    this.#gauges = gauges;
    this.#usage = usage;
  }

  coldStart(info: { function: string; revision: string; sandbox: string; seconds: number }): void {
    const labels = `function="${esc(info.function)}",revision="${esc(info.revision)}",sandbox="${esc(info.sandbox)}"`;
    let h = this.#cold.get(labels);
    if (!h) {
      h = new Histogram();
      this.#cold.set(labels, h);
    }
    h.observe(info.seconds);
  }

  async render(): Promise<string> {
    const out: string[] = [];
    const usage = (await this.#usage()).map((u) => ({
      ...u,
      labels: `function="${esc(u.function)}",revision="${esc(u.revision)}",instance="${esc(u.instance)}",sandbox="${esc(u.sandbox)}"`,
    }));
    family(
      out,
      'tide_sandbox_memory_bytes',
      "Memory an instance uses: a worker thread's heap, a container's cgroup.",
      'gauge',
      usage.map((u) => [u.labels, u.memoryBytes]),
    );
    family(
      out,
      'tide_sandbox_cpu_seconds_total',
      'CPU time of an instance since its thread or container started.',
      'counter',
      usage.map((u) => [u.labels, u.cpuSeconds]),
    );
    const g = this.#gauges().map((r) => ({ ...r, labels: `function="${esc(r.function)}",revision="${esc(r.revision)}"` }));
    family(
      out,
      'tide_revision_instances_desired',
      'Instances the autoscaler wants for a revision.',
      'gauge',
      g.map((r) => [r.labels, r.desired]),
    );
    family(
      out,
      'tide_revision_instances_ready',
      'Instances of a revision ready to serve.',
      'gauge',
      g.map((r) => [r.labels, r.ready]),
    );
    family(
      out,
      'tide_activator_queue_depth',
      'Requests the activator holds for a revision, waiting for a free instance.',
      'gauge',
      g.map((r) => [r.labels, r.queued]),
    );
    family(
      out,
      'tide_autoscaler_panic',
      '1 while the autoscaler is in panic mode for a revision.',
      'gauge',
      g.map((r) => [r.labels, r.panic ? 1 : 0]),
    );
    family(
      out,
      'tide_sandbox_cold_starts_total',
      'Instances started (cold starts).',
      'counter',
      [...this.#cold].map(([l, h]) => [l, h.count]),
    );
    histogramFamily(out, 'tide_sandbox_cold_start_duration_seconds', 'Time from deciding to start an instance until it could serve.', [...this.#cold]);
    return `${out.join('\n')}\n`;
  }
}
