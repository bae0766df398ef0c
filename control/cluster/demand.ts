/**
 * Demand in a cluster: the autoscaler runs on the leader control replica, but requests arrive
 * at gateways and nodes on other machines. Each of those counts, per revision, the requests
 * that began and ended, how many its activator holds, and whether it asks for capacity; it
 * sends that every 250 ms (at once when it asks for capacity) to any control replica, which
 * hands it to the leader. The leader replays the counts into its autoscaler, so concurrency is
 * measured as on one machine, a quarter of a second late.
 *
 * A source that stops reporting (it died with requests in flight) would leave them counted
 * forever: after 5 s of silence its open requests are ended. Ends the leader never saw begin
 * (reports from before it led) are ignored.
 */
import { TideError } from '../../lib/errors.ts';

export interface RevisionDemand {
  began: number;
  ended: number;
  /** Requests the source's activator holds now. */
  queued: number;
  /** The source holds requests and asks for capacity now. */
  activate: boolean;
}

export interface DemandReport {
  /** Who reports (a node's or a gateway's name and process). */
  source: string;
  revisions: Record<string, RevisionDemand>;
}

/** What the leader replays into (control/autoscaler's Autoscaler fits). */
export interface DemandTarget {
  begin(revision: string): void;
  end(revision: string): void;
  queued(revision: string, depth: number): void;
  activate(revision: string): void;
}

/** The member's side: a DemandSink (proxy/gateway.ts) that batches and sends. */
export class DemandReporter {
  readonly #source: string;
  readonly #send: (report: DemandReport) => Promise<unknown>;
  #pending: Record<string, RevisionDemand> = {};
  readonly #timer: NodeJS.Timeout;
  #sending = false;
  #closed = false;

  constructor(opts: { source: string; send: (report: DemandReport) => Promise<unknown>; intervalMs?: number }) {
    this.#source = opts.source;
    this.#send = opts.send;
    this.#timer = setInterval(() => void this.flush(), opts.intervalMs ?? 250);
    this.#timer.unref();
  }

  #of(revision: string): RevisionDemand {
    let d = this.#pending[revision];
    if (!d) {
      d = { began: 0, ended: 0, queued: 0, activate: false };
      this.#pending[revision] = d;
    }
    return d;
  }

  begin(revision: string): void {
    this.#of(revision).began++;
  }

  end(revision: string): void {
    this.#of(revision).ended++;
  }

  queued(revision: string, depth: number): void {
    this.#of(revision).queued = depth;
  }

  activate(revision: string): void {
    this.#of(revision).activate = true;
    void this.flush();
  }

  /** Sends what was counted since the last report; on failure it is kept for the next one. */
  async flush(): Promise<void> {
    if (this.#sending || this.#closed) return;
    const batch = this.#pending;
    if (Object.keys(batch).length === 0) return;
    this.#pending = {};
    this.#sending = true;
    try {
      await this.#send({ source: this.#source, revisions: batch });
    } catch {
      // Control is away: keep the counts (they are totals, so they merge) for the next report.
      for (const [rev, d] of Object.entries(batch)) {
        const now = this.#of(rev);
        now.began += d.began;
        now.ended += d.ended;
        now.activate ||= d.activate;
      }
    } finally {
      this.#sending = false;
    }
  }

  /** Stops reporting, after one last report of what was counted. */
  async close(): Promise<void> {
    clearInterval(this.#timer);
    await this.flush();
    this.#closed = true;
  }
}

const SILENT_MS = 5000;

/** The leader's side. */
export class DemandCollector {
  readonly #target: DemandTarget;
  /** source → revision → requests open (began and not ended) as this leader counted them. */
  readonly #open = new Map<string, { seen: number; revisions: Map<string, number> }>();
  readonly #timer: NodeJS.Timeout;

  constructor(target: DemandTarget) {
    this.#target = target;
    this.#timer = setInterval(() => this.#sweep(), 1000);
    this.#timer.unref();
  }

  apply(report: DemandReport): void {
    let src = this.#open.get(report.source);
    if (!src) {
      src = { seen: Date.now(), revisions: new Map() };
      this.#open.set(report.source, src);
    }
    src.seen = Date.now();
    for (const [rev, d] of Object.entries(report.revisions)) {
      let open = src.revisions.get(rev) ?? 0;
      for (let i = 0; i < d.began; i++) this.#target.begin(rev);
      open += d.began;
      const ends = Math.min(d.ended, open);
      for (let i = 0; i < ends; i++) this.#target.end(rev);
      open -= ends;
      src.revisions.set(rev, open);
      this.#target.queued(rev, d.queued);
      if (d.activate) this.#target.activate(rev);
    }
  }

  #sweep(): void {
    const now = Date.now();
    for (const [source, src] of this.#open) {
      if (now - src.seen < SILENT_MS) continue;
      for (const [rev, open] of src.revisions) {
        for (let i = 0; i < open; i++) this.#target.end(rev);
        this.#target.queued(rev, 0);
      }
      this.#open.delete(source);
    }
  }

  close(): void {
    clearInterval(this.#timer);
  }
}

/** Checks a report that came over the wire. */
export function parseDemandReport(body: Record<string, unknown>): DemandReport {
  const bad = (m: string) => new TideError('ERR_BAD_REQUEST', `demand report: ${m}`, { status: 400 });
  if (typeof body.source !== 'string' || body.source.length === 0 || body.source.length > 256) throw bad('source must be a non-empty string');
  if (typeof body.revisions !== 'object' || body.revisions === null || Array.isArray(body.revisions)) throw bad('revisions must be an object');
  const revisions: Record<string, RevisionDemand> = {};
  const count = (v: unknown, what: string) => {
    if (!Number.isInteger(v) || (v as number) < 0 || (v as number) > 1e9) throw bad(`${what} must be a count`);
    return v as number;
  };
  const entries = Object.entries(body.revisions as Record<string, unknown>);
  if (entries.length > 10_000) throw bad('too many revisions');
  for (const [rev, raw] of entries) {
    if (typeof raw !== 'object' || raw === null) throw bad(`revisions.${rev} must be an object`);
    const d = raw as Record<string, unknown>;
    revisions[rev] = {
      began: count(d.began, `revisions.${rev}.began`),
      ended: count(d.ended, `revisions.${rev}.ended`),
      queued: count(d.queued, `revisions.${rev}.queued`),
      activate: d.activate === true,
    };
  }
  return { source: body.source, revisions };
}
