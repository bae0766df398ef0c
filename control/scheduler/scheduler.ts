/**
 * The scheduler: decides on which node each instance runs. It reads the nodes that registered,
 * the serving revisions with the count the autoscaler wants (before it has said: initialScale,
 * at least minScale) and the placements it wrote before; runs `place` (placement.ts); and writes
 * /tide/placements/<namespace>/<revision> where it changed. The node agents run what is placed
 * on them. It never assumes: every pass starts from what the store says.
 */
import { errorMessage } from '../../lib/errors.ts';
import { Informer } from '../../lib/informer.ts';
import type { Logger } from '../../lib/log.ts';
import { keys, type NodeRecord, type PlacementRecord, parseRevision, type ScaleRecord } from '../api/schema/function.ts';
import { activeRevisions, routeKeys } from '../api/schema/route.ts';
import type { Store } from '../store/index.ts';
import { type Placement, place, type Workload } from './placement.ts';

export class Scheduler {
  readonly #store: Store;
  readonly #log: Logger;
  #informer: Informer | undefined;
  #closed = false;

  constructor(opts: { store: Store; log: Logger }) {
    this.#store = opts.store;
    this.#log = opts.log.child({ component: 'control.scheduler' });
  }

  async start(): Promise<void> {
    this.#informer = new Informer(
      this.#store,
      [keys.functions(), keys.revisions(), keys.scales(), keys.nodes(), routeKeys.routes()],
      () => this.reconcile(),
      (err) => this.#log.error({ err: errorMessage(err) }, 'scheduler watch failed'),
    );
    await this.#informer.start();
  }

  /** One pass; idempotent. */
  async reconcile(): Promise<void> {
    if (this.#closed) return;
    const [nodes, fns, revs, scales, placements, routes] = await Promise.all([
      this.#store.list(keys.nodes()),
      this.#store.list(keys.functions()),
      this.#store.list(keys.revisions()),
      this.#store.list(keys.scales()),
      this.#store.list(keys.placements()),
      this.#store.list(routeKeys.routes()),
    ]);
    if (this.#closed) return;
    const revisions = new Map(revs.items.map((kv) => [kv.key.slice(keys.revisions().length), kv.value]));
    const counts = new Map(
      scales.items.map((kv) => {
        const s = JSON.parse(kv.value) as ScaleRecord;
        return [s.revision, s.desired];
      }),
    );
    const current = new Map<string, Placement & { kv: { key: string; modRevision: number; value: string } }>(
      placements.items.map((kv) => {
        const p = JSON.parse(kv.value) as PlacementRecord;
        return [p.revision, { ...p, kv }];
      }),
    );
    const workloads: Workload[] = [];
    const parsed = new Map([...revisions].map(([name, raw]) => [name, parseRevision(raw)]));
    const active = activeRevisions(fns.items, routes.items, parsed);
    for (const rev of active.values()) {
      const s = rev.config.scaling;
      const wanted = counts.get(rev.name) ?? Math.max(s.minScale, s.initialScale);
      workloads.push({
        revision: rev.name,
        function: rev.function,
        desired: s.maxScale > 0 ? Math.min(s.maxScale, wanted) : wanted,
        requests: { memoryMb: rev.config.memoryMb, cpuMillis: rev.config.cpuMillis },
        ...rev.config.placement,
      });
    }
    // Revisions that already have instances keep their claim on the nodes: they go first.
    workloads.sort((a, b) => Number(current.has(b.revision)) - Number(current.has(a.revision)) || a.revision.localeCompare(b.revision));
    const next = place(
      nodes.items.map((kv) => JSON.parse(kv.value) as NodeRecord),
      workloads,
      current,
    );
    for (const [revision, p] of next) {
      const before = current.get(revision);
      if (before && same(before, p)) continue;
      const record: PlacementRecord = {
        revision,
        nodes: p.nodes,
        pending: p.pending,
        ...(p.reason ? { reason: p.reason } : {}),
        updatedAt: new Date().toISOString(),
      };
      try {
        await this.#store.put(keys.placement(revision), JSON.stringify(record), { expectModRevision: before?.kv.modRevision ?? 0 });
        if (p.pending > 0 && before?.reason !== p.reason) this.#log.warn({ revision, pending: p.pending, reason: p.reason }, 'instances pending');
      } catch (err) {
        // A conflict means someone wrote in between: the watch brings another pass.
        if (!this.#closed) this.#log.debug({ err: errorMessage(err), revision }, 'placement write skipped');
      }
    }
    for (const [revision, p] of current) {
      if (!next.has(revision)) await this.#store.delete(p.kv.key, { expectModRevision: p.kv.modRevision }).catch(() => {});
    }
  }

  close(): void {
    this.#closed = true;
    this.#informer?.close();
  }
}

function same(a: Placement, b: Placement): boolean {
  const ka = Object.entries(a.nodes).filter(([, n]) => n > 0);
  const kb = Object.entries(b.nodes).filter(([, n]) => n > 0);
  return a.pending === b.pending && a.reason === b.reason && ka.length === kb.length && ka.every(([k, n]) => b.nodes[k] === n);
}
