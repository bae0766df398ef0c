/**
 * Routes as stored (/tide/routes/<ns>/<name>), and which revisions must run because of them: a
 * function's serving revision always, plus every revision a Route sends traffic to by name.
 */
import type { RouteSpec } from '../../../lib/config/resources.ts';
import { DEFAULT_NAMESPACE, type FunctionRecord, type RevisionRecord } from './function.ts';

export interface RouteRecord {
  name: string;
  namespace: string;
  spec: RouteSpec;
  /** Who wrote it: `tide apply` (or `tide split`), or a Rollout in progress. */
  managedBy: 'apply' | 'rollout';
}

export const routeKeys = {
  routes: (ns = DEFAULT_NAMESPACE) => `/tide/routes/${ns}/`,
  route: (name: string, ns = DEFAULT_NAMESPACE) => `/tide/routes/${ns}/${name}`,
};

/** Revision names a route points at by name (its rules and its tags). */
export function routedRevisions(routes: RouteRecord[]): Set<string> {
  const out = new Set<string>();
  for (const r of routes) {
    for (const rule of r.spec.rules) {
      for (const b of rule.split) if (b.revision && b.weight > 0) out.add(b.revision);
      if (rule.mirror?.revision) out.add(rule.mirror.revision);
    }
    for (const rev of Object.values(r.spec.tags ?? {})) out.add(rev);
  }
  return out;
}

/** The revisions that must run: each function's serving revision, and every revision routes name. */
export function activeRevisions(fns: FunctionRecord[], routes: RouteRecord[], revisions: ReadonlyMap<string, RevisionRecord>): Map<string, RevisionRecord> {
  const out = new Map<string, RevisionRecord>();
  for (const fn of fns) {
    const rev = revisions.get(fn.servingRevision);
    if (rev) out.set(rev.name, rev);
  }
  for (const name of routedRevisions(routes)) {
    const rev = revisions.get(name);
    if (rev) out.set(rev.name, rev);
  }
  return out;
}
