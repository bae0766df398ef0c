/**
 * Builds the proxy Snapshot from the Store: which revision each function's host routes to,
 * with the per-route limits the gateway enforces before dispatch. A snapshot is immutable and
 * versioned by the store revision it was read at; the gateway swaps it atomically.
 */

import type { RouteSpec } from '../../lib/config/resources.ts';
import { Informer } from '../../lib/informer.ts';
import type { FunctionRecord, RevisionRecord } from '../api/schema/function.ts';
import { keys, parseRevision } from '../api/schema/function.ts';
import { type PolicyRecord, policyKeys } from '../api/schema/policy.ts';
import { type RouteRecord, routeKeys } from '../api/schema/route.ts';
import type { Store } from '../store/index.ts';

export interface RouteTarget {
  function: string;
  namespace: string;
  revision: string;
  maxBodyBytes: number;
  /** Requests the activator may hold for this revision while it has no capacity. */
  queueSize: number;
  /** Longest a request waits there, ms. */
  queueTimeoutMs: number;
  /**
   * True for a function's own host: while its serving revision starts, its previous ready
   * revision answers. A Route that names a revision means that revision and no other.
   */
  fallback: boolean;
}

type RouteMatch = NonNullable<RouteSpec['rules'][number]['match']>;

/** A Route resource, resolved to revisions. */
export interface CustomRoute {
  name: string;
  /** Its hosts; undefined: NAME.<domain>. */
  hosts: string[] | undefined;
  /** In order; the first that matches takes the request. */
  rules: (Omit<RouteSpec['rules'][number], 'split' | 'match' | 'mirror'> & {
    match: RouteMatch | undefined;
    split: { target: RouteTarget; weight: number }[];
    mirror: { target: RouteTarget; percent: number } | undefined;
  })[];
  /** TAG.<host> → that revision alone. */
  tags: { tag: string; target: RouteTarget }[];
}

export interface Snapshot {
  /** Store revision this snapshot was built from. */
  readonly version: number;
  /** Function name → target. */
  readonly routes: ReadonlyMap<string, RouteTarget>;
  /** Route resources (their hosts win over a function's own). */
  readonly custom: readonly CustomRoute[];
  /** Policy resources: mTLS modes, who may call whom, rate limits. */
  readonly policies: readonly PolicyRecord[];
}

export const EMPTY_SNAPSHOT: Snapshot = Object.freeze({ version: 0, routes: new Map(), custom: [], policies: [] });

function target(rev: RevisionRecord): RouteTarget {
  return {
    function: rev.function,
    namespace: rev.namespace,
    revision: rev.name,
    maxBodyBytes: rev.config.maxBodyBytes,
    queueSize: rev.config.scaling.queueSize,
    queueTimeoutMs: rev.config.scaling.queueTimeoutMs,
    fallback: false,
  };
}

export async function buildSnapshot(store: Store): Promise<Snapshot> {
  const [fns, revs, routeKvs, policyKvs] = await Promise.all([
    store.list(keys.functions()),
    store.list(keys.revisions()),
    store.list(routeKeys.routes()),
    store.list(policyKeys.policies()),
  ]);
  const revisions = new Map(
    revs.items.map((kv) => {
      const r = parseRevision(kv.value);
      return [r.name, r];
    }),
  );
  const routes = new Map<string, RouteTarget>();
  for (const kv of fns.items) {
    const fn = JSON.parse(kv.value) as FunctionRecord;
    const rev = revisions.get(fn.servingRevision);
    if (!rev) continue;
    routes.set(fn.name, { ...target(rev), fallback: true });
  }
  // A backend that names a function goes to its serving revision; one that is gone is left out.
  const resolve = (b: { revision?: string; function?: string }) => {
    if (b.revision) {
      const rev = revisions.get(b.revision);
      return rev && target(rev);
    }
    const own = b.function ? routes.get(b.function) : undefined;
    return own && { ...own, fallback: false };
  };
  const custom: CustomRoute[] = routeKvs.items.map((kv) => {
    const r = JSON.parse(kv.value) as RouteRecord;
    return {
      name: r.name,
      hosts: r.spec.hosts,
      rules: r.spec.rules.map((rule) => ({
        ...rule,
        match: rule.match as RouteMatch | undefined,
        mirror: (() => {
          const t = rule.mirror ? resolve(rule.mirror) : undefined;
          return t && rule.mirror ? { target: t, percent: rule.mirror.percent } : undefined;
        })(),
        split: rule.split.flatMap((b) => {
          const t = resolve(b);
          return t && b.weight > 0 ? [{ target: t, weight: b.weight }] : [];
        }),
      })),
      tags: Object.entries(r.spec.tags ?? {}).flatMap(([tag, revision]) => {
        const t = resolve({ revision });
        return t ? [{ tag, target: t }] : [];
      }),
    };
  });
  const policies = policyKvs.items.map((kv) => JSON.parse(kv.value) as PolicyRecord);
  return Object.freeze({ version: Math.max(fns.revision, revs.revision, routeKvs.revision, policyKvs.revision), routes, custom, policies });
}

/** Rebuilds and publishes a snapshot after every change to functions, revisions or routes. */
export class SnapshotPublisher {
  readonly #informer: Informer;

  constructor(store: Store, publish: (snapshot: Snapshot) => void, onError: (err: unknown) => void) {
    this.#informer = new Informer(
      store,
      [keys.functions(), keys.revisions(), routeKeys.routes(), policyKeys.policies()],
      async () => publish(await buildSnapshot(store)),
      onError,
    );
  }

  start(): Promise<void> {
    return this.#informer.start();
  }

  close(): void {
    this.#informer.close();
  }
}
