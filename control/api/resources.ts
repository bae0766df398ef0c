/**
 * `tide apply`: a set of resources (Functions, Secrets, Configs) checked together and written
 * in one store transaction, or not at all. The CLI has parsed and schema-checked the files and
 * bundled each function; here the references are resolved (an env var from a Secret or Config,
 * in the same apply or already stored), every bundle is loaded once, and the whole set is
 * planned against the store. A problem anywhere is reported with the item and field it is
 * about, and nothing is written. A dry run plans and reports without writing.
 */

import type { PolicySpec, RolloutSpec, RouteSpec } from '../../lib/config/resources.ts';
import { isTideError, TideError } from '../../lib/errors.ts';
import type { KeyValue, Store, TxnOp } from '../store/index.ts';
import type { DeployInput, Functions, PreparedDeploy } from './functions.ts';
import { DEFAULT_NAMESPACE, type FunctionRecord, keys as fnKeys, validateFunctionName } from './schema/function.ts';
import { type PolicyRecord, policyKeys } from './schema/policy.ts';
import { type RolloutRecord, rolloutKeys } from './schema/rollout.ts';
import { type RouteRecord, routeKeys } from './schema/route.ts';

export const resourceKeys = {
  secrets: (ns = DEFAULT_NAMESPACE) => `/tide/secrets/${ns}/`,
  secret: (name: string, ns = DEFAULT_NAMESPACE) => `/tide/secrets/${ns}/${name}`,
  configs: (ns = DEFAULT_NAMESPACE) => `/tide/configs/${ns}/`,
  config: (name: string, ns = DEFAULT_NAMESPACE) => `/tide/configs/${ns}/${name}`,
};

/** An env var whose value comes from a Secret or a Config. */
export interface EnvRef {
  name: string;
  from: 'secret' | 'config';
  source: string;
  key: string;
  /** Where it is written in the item, for errors: e.g. spec.env[2].valueFrom. */
  path: string;
}

export type ApplyItem =
  | { kind: 'Secret' | 'Config'; name: string; data: Record<string, string> }
  | { kind: 'Function'; name: string; deploy: DeployInput; envRefs: EnvRef[] }
  | { kind: 'Route'; name: string; spec: RouteSpec }
  | { kind: 'Rollout'; name: string; spec: RolloutSpec }
  | { kind: 'Policy'; name: string; spec: PolicySpec };

export interface ApplyProblem {
  /** Index of the item in the request. */
  item: number;
  /** The field, e.g. spec.env[0].valueFrom.secretKeyRef. */
  path: string;
  message: string;
}

export interface ApplyResult {
  kind: string;
  name: string;
  action: 'created' | 'configured' | 'unchanged' | 'pruned';
  /** For a Function: the revision that serves after the apply. */
  revision?: string;
  /** With `diff`: what changes, one line per field (secret values never shown). */
  changes?: string[];
}

export interface ApplyOptions {
  /** Plan and report; write nothing. */
  dryRun?: boolean;
  /** Also delete what an earlier apply wrote and these items no longer have. */
  prune?: boolean;
  /** Report what changes, field by field. */
  diff?: boolean;
  /** Never prune Policies (the caller may not change them). */
  keepPolicies?: boolean;
}

interface Stored {
  name: string;
  data: Record<string, string>;
}

const CAS_ATTEMPTS = 5;

export class Resources {
  readonly #store: Store;
  readonly #functions: Functions;

  constructor(store: Store, functions: Functions) {
    this.#store = store;
    this.#functions = functions;
  }

  async apply(
    items: ApplyItem[],
    options: ApplyOptions = {},
  ): Promise<{ results: ApplyResult[]; storeRevision: number; newRevisions: string[]; written: boolean }> {
    const dryRun = options.dryRun === true || options.diff === true;
    const problems: ApplyProblem[] = [];
    const seen = new Map<string, number>();
    items.forEach((it, i) => {
      try {
        validateFunctionName(it.name);
      } catch (err) {
        problems.push({ item: i, path: 'metadata.name', message: (err as Error).message });
      }
      const id = `${it.kind}/${it.name}`;
      const first = seen.get(id);
      if (first !== undefined) problems.push({ item: i, path: 'metadata.name', message: `${id} is already given by document ${first + 1}` });
      else seen.set(id, i);
    });

    // Secrets and Configs: those applied now, over those stored.
    let stored = await this.#loadStored();
    const values = {
      secret: new Map([...stored.secret].map(([n, s]) => [n, s.value.data])),
      config: new Map([...stored.config].map(([n, s]) => [n, s.value.data])),
    };
    for (const it of items) {
      if (it.kind === 'Secret') values.secret.set(it.name, it.data);
      if (it.kind === 'Config') values.config.set(it.name, it.data);
    }

    // Functions: resolve their env references, then check and ready each one.
    const prepared = new Map<number, PreparedDeploy>();
    for (const [i, it] of items.entries()) {
      if (it.kind !== 'Function') continue;
      const env = { ...(it.deploy.env ?? {}) };
      const secrets = { ...(it.deploy.secrets ?? {}) };
      let broken = false;
      for (const ref of it.envRefs) {
        const data = values[ref.from].get(ref.source);
        const kind = ref.from === 'secret' ? 'Secret' : 'Config';
        if (!data) {
          problems.push({ item: i, path: ref.path, message: `${kind} "${ref.source}" does not exist (not in these files, not applied before)` });
          broken = true;
        } else if (!(ref.key in data)) {
          const keys = Object.keys(data);
          problems.push({
            item: i,
            path: ref.path,
            message: `${kind} "${ref.source}" has no key "${ref.key}" (it has ${keys.length ? keys.join(', ') : 'none'})`,
          });
          broken = true;
        } else if (ref.from === 'secret') secrets[ref.name] = data[ref.key] as string;
        else env[ref.name] = data[ref.key] as string;
      }
      if (broken) continue;
      try {
        prepared.set(i, await this.#functions.prepare({ ...it.deploy, env, secrets, managedBy: 'apply' }));
      } catch (err) {
        if (!isTideError(err)) throw err;
        const path =
          err.code === 'ERR_FUNCTION_INVALID' ? (it.deploy.image ? 'spec.image' : 'spec.source') : err.message.startsWith('scaling') ? 'spec.scaling' : 'spec';
        problems.push({ item: i, path, message: err.message });
      }
    }
    // Routes: every backend must exist now or come with this apply; regular expressions must compile.
    const existingRevisions = new Set((await this.#store.list(fnKeys.revisions())).items.map((kv) => kv.key.slice(fnKeys.revisions().length)));
    const existingFunctions = new Set((await this.#store.list(fnKeys.functions())).items.map((kv) => (JSON.parse(kv.value) as FunctionRecord).name));
    // The functions' plans against the store now: the revisions they create count as existing.
    let plans: Map<number, Awaited<ReturnType<Functions['plan']>>> | undefined = new Map();
    for (const [i, p] of prepared) plans.set(i, await this.#functions.plan(p));
    const upcoming = new Set([...plans.values()].map((plan) => plan.result.revision.name));
    const appliedFunctions = new Set(items.filter((it) => it.kind === 'Function').map((it) => it.name));
    for (const [i, it] of items.entries()) {
      if (it.kind !== 'Route') continue;
      const known = (rev: string) => existingRevisions.has(rev) || upcoming.has(rev);
      it.spec.rules.forEach((rule, r) => {
        rule.split.forEach((b, j) => {
          if (b.revision && !known(b.revision))
            problems.push({ item: i, path: `spec.rules[${r}].split[${j}].revision`, message: `revision ${b.revision} does not exist` });
          if (b.function && !existingFunctions.has(b.function) && !appliedFunctions.has(b.function)) {
            problems.push({ item: i, path: `spec.rules[${r}].split[${j}].function`, message: `function ${b.function} does not exist` });
          }
        });
        const m = rule.mirror;
        if (m?.revision && !known(m.revision))
          problems.push({ item: i, path: `spec.rules[${r}].mirror.revision`, message: `revision ${m.revision} does not exist` });
        if (m?.function && !existingFunctions.has(m.function) && !appliedFunctions.has(m.function)) {
          problems.push({ item: i, path: `spec.rules[${r}].mirror.function`, message: `function ${m.function} does not exist` });
        }
        for (const [path, pattern] of regexes(rule.match, `spec.rules[${r}].match`)) {
          try {
            new RegExp(pattern);
          } catch (err) {
            problems.push({ item: i, path, message: `not a valid regular expression: ${(err as Error).message}` });
          }
        }
      });
      for (const [tag, rev] of Object.entries(it.spec.tags ?? {})) {
        if (!known(rev)) problems.push({ item: i, path: `spec.tags.${tag}`, message: `revision ${rev} does not exist` });
      }
    }
    for (const [i, it] of items.entries()) {
      if (it.kind !== 'Policy') continue;
      it.spec.rules?.forEach((rule, r) => {
        for (const [path, pattern] of regexes(rule.to, `spec.rules[${r}].to`)) {
          try {
            new RegExp(pattern);
          } catch (err) {
            problems.push({ item: i, path, message: `not a valid regular expression: ${(err as Error).message}` });
          }
        }
      });
    }
    for (const [i, it] of items.entries()) {
      if (it.kind !== 'Rollout') continue;
      const fn = it.spec.function ?? it.name;
      if (!existingFunctions.has(fn) && !appliedFunctions.has(fn))
        problems.push({ item: i, path: it.spec.function ? 'spec.function' : 'metadata.name', message: `function ${fn} does not exist` });
    }
    if (problems.length > 0) {
      throw new TideError('ERR_CONFIG_INVALID', `${problems.length} problem${problems.length === 1 ? '' : 's'}; nothing was applied`, {
        status: 400,
        details: { problems },
      });
    }

    for (let attempt = 1; ; attempt++) {
      const ops: TxnOp[] = [];
      const results: ApplyResult[] = [];
      const newRevisions: string[] = [];
      let storeRevision = 0;
      for (const [i, it] of items.entries()) {
        if (it.kind === 'Function') {
          const p = prepared.get(i) as PreparedDeploy;
          const plan = plans?.get(i) ?? (await this.#functions.plan(p));
          ops.push(...plan.ops);
          storeRevision = Math.max(storeRevision, plan.storeRevision);
          const result: ApplyResult = {
            kind: 'Function',
            name: it.name,
            action: plan.ops.length === 0 ? 'unchanged' : plan.result.created && plan.result.revision.number === 1 ? 'created' : 'configured',
            revision: plan.result.revision.name,
          };
          if (options.diff) result.changes = await this.#functionChanges(p);
          results.push(result);
          if (plan.ops.length > 0) newRevisions.push(plan.result.revision.name);
          continue;
        }
        if (it.kind === 'Route' || it.kind === 'Rollout' || it.kind === 'Policy') {
          const before = (it.kind === 'Route' ? stored.route : it.kind === 'Rollout' ? stored.rollout : stored.policy).get(it.name);
          const record = { name: it.name, namespace: DEFAULT_NAMESPACE, spec: it.spec, managedBy: 'apply' } as RouteRecord | RolloutRecord | PolicyRecord;
          const key = it.kind === 'Route' ? routeKeys.route(it.name) : it.kind === 'Rollout' ? rolloutKeys.rollout(it.name) : policyKeys.policy(it.name);
          const same = before !== undefined && JSON.stringify(before.value.spec) === JSON.stringify(it.spec);
          if (!same) ops.push({ type: 'put', key, value: JSON.stringify(record), expectModRevision: before?.kv.modRevision ?? 0 });
          const result: ApplyResult = { kind: it.kind, name: it.name, action: same ? 'unchanged' : before ? 'configured' : 'created' };
          if (options.diff) result.changes = before ? leafChanges('spec', before.value.spec, it.spec) : [`new ${it.kind.toLowerCase()}`];
          results.push(result);
          continue;
        }
        const from = it.kind === 'Secret' ? 'secret' : 'config';
        const before = stored[from].get(it.name);
        const key = from === 'secret' ? resourceKeys.secret(it.name) : resourceKeys.config(it.name);
        const same = before !== undefined && JSON.stringify(before.value.data) === JSON.stringify(it.data);
        if (!same)
          ops.push({
            type: 'put',
            key,
            value: JSON.stringify({ name: it.name, data: it.data } satisfies Stored),
            expectModRevision: before?.kv.modRevision ?? 0,
          });
        const result: ApplyResult = { kind: it.kind, name: it.name, action: same ? 'unchanged' : before ? 'configured' : 'created' };
        if (options.diff) result.changes = dataChanges(before?.value.data ?? {}, it.data, it.kind === 'Secret');
        results.push(result);
      }
      if (options.prune) {
        const wanted = new Set(items.map((it) => `${it.kind}/${it.name}`));
        for (const fn of await this.#functions.list()) {
          if (fn.managedBy !== 'apply' || wanted.has(`Function/${fn.name}`)) continue;
          const del = await this.#functions.deleteOps(fn.name);
          ops.push(...del.ops);
          results.push({
            kind: 'Function',
            name: fn.name,
            action: 'pruned',
            ...(options.diff ? { changes: [`deleted, with revisions ${del.revisions.join(', ')}`] } : {}),
          });
        }
        for (const [kind, stored2] of [
          ['Route', stored.route],
          ['Rollout', stored.rollout],
          ['Policy', options.keepPolicies ? new Map() : stored.policy],
        ] as const) {
          for (const [name, { kv, value }] of stored2) {
            if (wanted.has(`${kind}/${name}`) || value.managedBy !== 'apply') continue;
            ops.push({ type: 'delete', key: kv.key, expectModRevision: kv.modRevision });
            results.push({ kind, name, action: 'pruned', ...(options.diff ? { changes: ['deleted'] } : {}) });
          }
        }
        for (const [kind, from] of [
          ['Secret', 'secret'],
          ['Config', 'config'],
        ] as const) {
          for (const [name, { kv }] of stored[from]) {
            if (wanted.has(`${kind}/${name}`)) continue;
            ops.push({ type: 'delete', key: kv.key, expectModRevision: kv.modRevision });
            results.push({ kind, name, action: 'pruned', ...(options.diff ? { changes: ['deleted'] } : {}) });
          }
        }
      }
      if (dryRun || ops.length === 0) return { results, storeRevision, newRevisions: dryRun ? [] : newRevisions, written: false };
      try {
        return { results, storeRevision: await this.#store.txn(ops), newRevisions, written: true };
      } catch (err) {
        if (isTideError(err, 'ERR_STORE_CONFLICT') && attempt < CAS_ATTEMPTS) {
          // Someone wrote in between: plan again against what is there now.
          stored = await this.#loadStored();
          plans = undefined;
          continue;
        }
        throw err;
      }
    }
  }

  /** Every Policy, by name. */
  async policies(): Promise<PolicyRecord[]> {
    return [...(await this.#loadSpecs<PolicyRecord>(policyKeys.policies())).values()].map((p) => p.value).sort((a, b) => a.name.localeCompare(b.name));
  }

  /** What a prepared function changes against its newest revision, field by field. */
  async #functionChanges(p: PreparedDeploy): Promise<string[]> {
    const fn = await this.#functions.get(p.name).catch(() => undefined);
    const latest = fn ? await this.#functions.getRevision(fn.latestRevision) : undefined;
    if (!latest) return ['new function'];
    if (latest.templateHash === p.templateHash) return fn?.servingRevision === latest.name ? [] : [`serve ${latest.name} again`];
    const out: string[] = [];
    if (latest.digest !== p.digest) out.push(`code: ${short(latest.digest)} → ${short(p.digest)}`);
    if (latest.sandbox !== p.sandbox) out.push(`sandbox: ${latest.sandbox} → ${p.sandbox}`);
    out.push(...leafChanges('config', latest.config, p.config));
    out.push(...dataChanges(latest.env, p.env, false).map((l) => `env.${l}`));
    out.push(...dataChanges(latest.secrets, p.secrets, true).map((l) => `secrets.${l}`));
    return out;
  }

  async #loadSpecs<T extends { name: string }>(prefix: string): Promise<Map<string, { value: T; kv: KeyValue }>> {
    const { items } = await this.#store.list(prefix);
    return new Map(
      items.map((kv) => {
        const value = JSON.parse(kv.value) as T;
        return [value.name, { value, kv }];
      }),
    );
  }

  /** Every stored Secret, Config, Route, Rollout and Policy, by name (what an apply plans against). */
  async #loadStored() {
    const [secret, config, route, rollout, policy] = await Promise.all([
      this.#loadSpecs<Stored>(resourceKeys.secrets()),
      this.#loadSpecs<Stored>(resourceKeys.configs()),
      this.#loadSpecs<RouteRecord>(routeKeys.routes()),
      this.#loadSpecs<RolloutRecord>(rolloutKeys.rollouts()),
      this.#loadSpecs<PolicyRecord>(policyKeys.policies()),
    ]);
    return { secret, config, route, rollout, policy };
  }
}

function short(digest: string): string {
  return digest.replace(/^sha256:/, '').slice(0, 12);
}

/** Key by key: added, removed, changed; a secret's values are never shown. */
function dataChanges(before: Record<string, string>, after: Record<string, string>, secret: boolean): string[] {
  const out: string[] = [];
  const show = (v: string) => (secret ? '(hidden)' : JSON.stringify(v));
  for (const k of [...new Set([...Object.keys(before), ...Object.keys(after)])].sort()) {
    const a = before[k];
    const b = after[k];
    if (a === b) continue;
    if (a === undefined) out.push(`${k}: added ${show(b as string)}`);
    else if (b === undefined) out.push(`${k}: removed`);
    else out.push(secret ? `${k}: changed` : `${k}: ${show(a)} → ${show(b)}`);
  }
  return out;
}

/** Leaf values that differ between two settings objects, as `path: before → after`. */
function leafChanges(path: string, a: unknown, b: unknown): string[] {
  if (a !== null && b !== null && typeof a === 'object' && typeof b === 'object' && !Array.isArray(a) && !Array.isArray(b)) {
    const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])].sort();
    return keys.flatMap((k) => leafChanges(`${path}.${k}`, (a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]));
  }
  return JSON.stringify(a) === JSON.stringify(b) ? [] : [`${path}: ${JSON.stringify(a) ?? 'unset'} → ${JSON.stringify(b) ?? 'unset'}`];
}

/** Every `regex` in a match, with its field path. */
function regexes(match: unknown, at: string): [string, string][] {
  if (match === null || typeof match !== 'object') return [];
  const out: [string, string][] = [];
  for (const [k, v] of Object.entries(match as Record<string, unknown>)) {
    const path = Array.isArray(match) ? `${at}[${k}]` : `${at}.${k}`;
    if (k === 'regex' && typeof v === 'string') out.push([path, v]);
    else out.push(...regexes(v, path));
  }
  return out;
}
