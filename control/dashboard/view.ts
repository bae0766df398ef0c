/**
 * What `GET /v1/dashboard` answers: the functions with their revisions and the traffic split of
 * their host, the sampled series (series.ts), and the autoscaler's recent decisions that changed
 * a count. Pure: the API passes in what it read (its function and route views, the revisions
 * and their statuses), so this file reads no store and knows no HTTP.
 *
 * Secrets never appear (revisions are reduced to name, number, time, source and status), and
 * neither do environment values.
 */
import type { RevisionRecord, RevisionStatus } from '../api/schema/function.ts';
import type { Sample } from './series.ts';

/** The API's function view (control/api/server.ts `#view`), as far as the dashboard reads it. */
export interface FunctionViewLike {
  name: string;
  url: string;
  phase: string;
  servingRevision: string;
  latestRevision: string;
  readyInstances: number;
  desiredInstances: number;
  restarts: number;
  lastError: string | null;
  pending: string | null;
  createdAt: string;
  config: { sandbox?: unknown; scaling?: { minScale?: number; maxScale?: number; target?: number; metric?: string } } | null;
}

/** The API's route view (`#routeViews`), as far as the dashboard reads it. */
export interface RouteViewLike {
  name: string;
  hosts: string[] | null;
  rules: { match: unknown; split: { revision?: string; function?: string; weight: number; resolved: string | null }[] }[];
  tags: { tag: string; revision: string }[];
}

/** The series and decisions sources (DashboardSeries and the Autoscaler fit). */
export interface SeriesSource {
  readonly intervalMs: number;
  readonly keepMs: number;
  samples(since?: number): Sample[];
}

export interface DashboardInput {
  functions: FunctionViewLike[];
  routes: RouteViewLike[];
  revisions: RevisionRecord[];
  statuses: Map<string, RevisionStatus>;
  series?: SeriesSource;
  decisions?: (revision: string) => unknown[];
  /** Only samples after this time (ms since the epoch): the page asks for what it has not got. */
  since: number;
  now: number;
}

export interface SplitView {
  revision: string;
  /** Percent of the host's requests (the catch-all rule of a route named like the function). */
  weight: number;
  /** The route that sets it; absent when the function serves its host alone. */
  route?: string;
}

interface DecisionLike {
  seq: number;
  at: number;
  revision: string;
  desired: number;
  wanted: number;
  ready: number;
  queued: number;
  panic: boolean;
  reason: string;
  observedStable: number;
}

/** Revisions listed per function: the newest ones, plus any that get traffic. */
const REVISIONS_SHOWN = 10;
/** Decisions answered: the newest that changed a count. */
const DECISIONS_SHOWN = 100;

export function dashboardView(input: DashboardInput) {
  const byFunction = new Map<string, RevisionRecord[]>();
  for (const r of input.revisions) {
    const list = byFunction.get(r.function) ?? [];
    list.push(r);
    byFunction.set(r.function, list);
  }
  const functions = input.functions.map((fn) => {
    const split = splitOf(fn, input.routes);
    const weights = new Map(split.map((s) => [s.revision, s.weight]));
    const revisions = (byFunction.get(fn.name) ?? [])
      .sort((a, b) => b.number - a.number)
      .filter((r, i) => i < REVISIONS_SHOWN || weights.has(r.name))
      .map((r) => {
        const st = input.statuses.get(r.name);
        return {
          name: r.name,
          number: r.number,
          createdAt: r.createdAt,
          source: r.source,
          sandbox: r.sandbox,
          changeCause: r.changeCause ?? null,
          serving: r.name === fn.servingRevision,
          weight: weights.get(r.name) ?? 0,
          phase: st?.phase ?? null,
          readyInstances: st?.readyInstances ?? 0,
          desiredInstances: st?.desiredInstances ?? 0,
          restarts: st?.restarts ?? 0,
        };
      });
    return {
      name: fn.name,
      url: fn.url,
      phase: fn.phase,
      servingRevision: fn.servingRevision,
      latestRevision: fn.latestRevision,
      readyInstances: fn.readyInstances,
      desiredInstances: fn.desiredInstances,
      restarts: fn.restarts,
      lastError: fn.lastError,
      pending: fn.pending,
      createdAt: fn.createdAt,
      scaling: fn.config?.scaling ?? null,
      split,
      revisions,
    };
  });
  // Every revision that may have decisions: the ones listed, and the ones the series saw.
  const revisionFunction = new Map<string, string>();
  for (const f of functions) for (const r of f.revisions) revisionFunction.set(r.name, f.name);
  const samples = input.series?.samples(input.since) ?? [];
  for (const s of input.series?.samples(0).slice(-1) ?? []) for (const [rev, r] of Object.entries(s.revisions)) revisionFunction.set(rev, r.function);
  const decisions: (DecisionLike & { function: string })[] = [];
  if (input.decisions) {
    for (const [rev, fn] of revisionFunction) {
      let previous: number | undefined;
      for (const d of input.decisions(rev) as DecisionLike[]) {
        if (d.desired !== previous) decisions.push({ ...pick(d), function: fn });
        previous = d.desired;
      }
    }
  }
  decisions.sort((a, b) => b.at - a.at || b.seq - a.seq);
  return {
    now: input.now,
    intervalMs: input.series?.intervalMs ?? null,
    keepMs: input.series?.keepMs ?? null,
    functions,
    routes: input.routes.filter((r) => !input.functions.some((f) => f.name === r.name && r.hosts === null)),
    series: samples,
    decisions: decisions.slice(0, DECISIONS_SHOWN),
  };
}

function pick(d: DecisionLike): DecisionLike {
  return {
    seq: d.seq,
    at: d.at,
    revision: d.revision,
    desired: d.desired,
    wanted: d.wanted,
    ready: d.ready,
    queued: d.queued,
    panic: d.panic,
    reason: d.reason,
    observedStable: d.observedStable,
  };
}

/**
 * How a function's own host splits its traffic: a Route named like the function with the
 * default host (`tide split` writes one) decides with its catch-all rule; otherwise the serving
 * revision takes it all.
 */
function splitOf(fn: FunctionViewLike, routes: RouteViewLike[]): SplitView[] {
  const route = routes.find((r) => r.name === fn.name && r.hosts === null);
  const rule = route && (route.rules.find((r) => r.match === null) ?? route.rules[route.rules.length - 1]);
  if (!route || !rule) return [{ revision: fn.servingRevision, weight: 100 }];
  const total = rule.split.reduce((a, b) => a + (b.resolved ? b.weight : 0), 0);
  const out = new Map<string, number>();
  for (const b of rule.split) if (b.resolved && b.weight > 0) out.set(b.resolved, (out.get(b.resolved) ?? 0) + b.weight);
  if (total <= 0 || out.size === 0) return [{ revision: fn.servingRevision, weight: 100 }];
  return [...out].map(([revision, w]) => ({ revision, weight: Math.round((w / total) * 1000) / 10, route: route.name }));
}
