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

/** Revision names routes point at by name (their rules, mirrors and tags). */
export function routedRevisions(specs: RouteSpec[]): Set<string> {
  const out = new Set<string>();
  for (const spec of specs) {
    for (const rule of spec.rules) {
      for (const b of rule.split) if (b.revision && b.weight > 0) out.add(b.revision);
      if (rule.mirror?.revision) out.add(rule.mirror.revision);
    }
    for (const rev of Object.values(spec.tags ?? {})) out.add(rev);
  }
  return out;
}

/**
 * The revisions that must run: each function's serving revision, and every revision routes
 * name. Takes the stored function and route records as listed (JSON values).
 */
export function activeRevisions(
  fns: readonly { value: string }[],
  routes: readonly { value: string }[],
  revisions: ReadonlyMap<string, RevisionRecord>,
): Map<string, RevisionRecord> {
  const out = new Map<string, RevisionRecord>();
  for (const kv of fns) {
    const rev = revisions.get((JSON.parse(kv.value) as FunctionRecord).servingRevision);
    if (rev) out.set(rev.name, rev);
  }
  for (const name of routedRevisions(routes.map((kv) => (JSON.parse(kv.value) as RouteRecord).spec))) {
    const rev = revisions.get(name);
    if (rev) out.set(rev.name, rev);
  }
  return out;
}
