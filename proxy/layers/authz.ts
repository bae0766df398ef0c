/**
 * Authorization and rate limits on the way into a function, from Policy resources (compiled
 * once per snapshot, per function on first use). It runs in the gateway before the activator,
 * for requests from the gateway's own listener (the caller is the gateway's identity) and from
 * the mesh listener (the caller is the SPIFFE ID its client certificate proved, or nobody for
 * plaintext).
 *
 * Semantics, as Istio's AuthorizationPolicy and Kubernetes' NetworkPolicy have them:
 * - a function no policy with `rules` selects takes every request;
 * - DENY rules are checked first, and one that matches refuses (403 ERR_AUTHZ_DENIED);
 * - once a policy with ALLOW rules (or `rules: []`) selects a function, a request no ALLOW rule
 *   matches is refused (403 ERR_AUTHZ_NOT_ALLOWED); DENY rules alone change nothing else;
 * - mTLS mode: a function-level `mtls` wins over a namespace-wide one; among equals the
 *   strictest; STRICT when none is given. A plaintext mesh request to a STRICT function is
 *   refused (403 ERR_MTLS_REQUIRED);
 * - rate limits are token buckets per policy and function (and caller, with `per: source`):
 *   429 ERR_RATE_LIMITED with `retry-after`.
 */
import type { PolicyRecord } from '../../control/api/schema/policy.ts';
import { TideError } from '../../lib/errors.ts';
import { functionId, parseId } from '../../lib/spiffe.ts';
import type { RateLimiter } from './ratelimit.ts';

export type MtlsMode = 'STRICT' | 'PERMISSIVE' | 'DISABLE';
const STRICTNESS: Record<MtlsMode, number> = { STRICT: 2, PERMISSIVE: 1, DISABLE: 0 };

/** What the authorizer knows of a request. */
export interface AuthzRequest {
  method: string;
  /** Path and query. */
  path: string;
  /** The caller's SPIFFE ID, when it is known (mTLS, or the gateway itself). */
  source: string | undefined;
  /** The request came over the mesh without TLS. */
  plaintext: boolean;
}

type Matcher = (r: AuthzRequest, pathOnly: string) => boolean;

interface CompiledRule {
  policy: string;
  action: 'ALLOW' | 'DENY';
  matches: Matcher;
}

interface Limit {
  policy: string;
  rate: number;
  burst: number;
  perSource: boolean;
}

interface ForFunction {
  mode: MtlsMode;
  deny: CompiledRule[];
  allow: CompiledRule[];
  /** Some selecting policy has rules: deny by default. */
  selected: boolean;
  limits: Limit[];
}

export class Authorizer {
  readonly #policies: readonly PolicyRecord[];
  readonly #trustDomain: string;
  readonly #limiter: RateLimiter;
  readonly #cache = new Map<string, ForFunction>();
  /** Some function accepts plaintext mesh calls (so the mesh listener must take them). */
  readonly plaintextAccepted: boolean;

  constructor(policies: readonly PolicyRecord[], trustDomain: string, limiter: RateLimiter) {
    this.#policies = policies;
    this.#trustDomain = trustDomain;
    this.#limiter = limiter;
    this.plaintextAccepted = policies.some((p) => p.spec.mtls && p.spec.mtls.mode !== 'STRICT');
  }

  /** The mTLS mode of a function. */
  mode(namespace: string, fn: string): MtlsMode {
    return this.#for(namespace, fn).mode;
  }

  /** True when requests to the function have anything to check besides the mTLS mode. */
  active(namespace: string, fn: string): boolean {
    const f = this.#for(namespace, fn);
    return f.selected || f.deny.length > 0 || f.limits.length > 0;
  }

  /** undefined: allowed; else the error to answer with. */
  check(namespace: string, fn: string, r: AuthzRequest): TideError | undefined {
    const f = this.#for(namespace, fn);
    if (r.plaintext && f.mode === 'STRICT')
      return new TideError('ERR_MTLS_REQUIRED', `${fn} takes mesh calls over mutual TLS only (mtls mode STRICT); this one came in plaintext`, {
        status: 403,
      });
    if (f.deny.length === 0 && !f.selected && f.limits.length === 0) return undefined;
    const q = r.path.indexOf('?');
    const pathOnly = q === -1 ? r.path : r.path.slice(0, q);
    for (const rule of f.deny) {
      if (rule.matches(r, pathOnly))
        return new TideError(
          'ERR_AUTHZ_DENIED',
          `${r.method} ${pathOnly} to ${fn} from ${r.source ?? 'an unauthenticated caller'} is denied by policy ${rule.policy}`,
          {
            status: 403,
          },
        );
    }
    if (f.selected && !f.allow.some((rule) => rule.matches(r, pathOnly)))
      return new TideError(
        'ERR_AUTHZ_NOT_ALLOWED',
        `${r.method} ${pathOnly} to ${fn} from ${r.source ?? 'an unauthenticated caller'} is not allowed by any policy selecting ${fn}`,
        { status: 403 },
      );
    for (const l of f.limits) {
      const key = l.perSource ? `${l.policy}\u0000${fn}\u0000${r.source ?? ''}` : `${l.policy}\u0000${fn}`;
      const wait = this.#limiter.take(key, l.rate, l.burst);
      if (wait > 0)
        return new TideError('ERR_RATE_LIMITED', `${fn} takes at most ${l.rate} requests/s${l.perSource ? ' from each caller' : ''} (policy ${l.policy})`, {
          status: 429,
          details: { retryAfterSeconds: Math.max(1, Math.ceil(wait)) },
        });
    }
    return undefined;
  }

  #for(namespace: string, fn: string): ForFunction {
    const key = `${namespace}/${fn}`;
    let f = this.#cache.get(key);
    if (f) return f;
    f = { mode: 'STRICT', deny: [], allow: [], selected: false, limits: [] };
    let modeLevel = -1;
    for (const p of this.#policies) {
      if (p.namespace !== namespace) continue;
      const specific = p.spec.selector !== undefined;
      if (specific && !p.spec.selector?.functions.includes(fn)) continue;
      const mode = p.spec.mtls?.mode;
      if (mode) {
        const level = specific ? 1 : 0;
        if (level > modeLevel || (level === modeLevel && STRICTNESS[mode] > STRICTNESS[f.mode])) {
          f.mode = mode;
          modeLevel = level;
        }
      }
      if (p.spec.rules) {
        // ALLOW rules (or an empty list: allow nothing) make the function deny by default;
        // DENY rules alone only refuse what they match.
        if (p.spec.rules.length === 0 || p.spec.rules.some((r) => (r.action ?? 'ALLOW') === 'ALLOW')) f.selected = true;
        for (const rule of p.spec.rules) {
          const compiled: CompiledRule = { policy: p.name, action: rule.action ?? 'ALLOW', matches: this.#rule(rule, namespace) };
          (compiled.action === 'DENY' ? f.deny : f.allow).push(compiled);
        }
      }
      const rl = p.spec.rateLimit;
      if (rl) {
        f.limits.push({ policy: p.name, rate: rl.requestsPerSecond, burst: rl.burst ?? Math.ceil(rl.requestsPerSecond), perSource: rl.per === 'source' });
      }
    }
    this.#cache.set(key, f);
    return f;
  }

  #rule(rule: NonNullable<PolicyRecord['spec']['rules']>[number], namespace: string): Matcher {
    const from = rule.from?.map((src) => {
      const principals = src.principals?.map(principalMatcher);
      const namespaces = src.namespaces;
      const fns = src.functions?.map((n) => functionId(this.#trustDomain, namespace, n));
      return (source: string | undefined): boolean => {
        if (source === undefined) return false;
        if (principals && !principals.some((m) => m(source))) return false;
        if (namespaces) {
          const ns = parseId(source)?.namespace;
          if (!ns || !namespaces.includes(ns)) return false;
        }
        if (fns && !fns.includes(source)) return false;
        return true;
      };
    });
    const to = rule.to?.map((t) => {
      const methods = t.methods;
      const paths = t.paths?.map((p): ((path: string) => boolean) => {
        if (p.exact !== undefined) {
          const exact = p.exact;
          return (path) => path === exact;
        }
        if (p.prefix !== undefined) {
          const prefix = p.prefix;
          return (path) => path.startsWith(prefix);
        }
        const re = new RegExp(`^(?:${p.regex})$`);
        return (path) => re.test(path);
      });
      return (r: AuthzRequest, path: string): boolean => {
        if (methods && !methods.includes(r.method)) return false;
        if (paths && !paths.some((m) => m(path))) return false;
        return true;
      };
    });
    return (r, path) => (!from || from.some((m) => m(r.source))) && (!to || to.some((m) => m(r, path)));
  }
}

function principalMatcher(p: string): (source: string) => boolean {
  if (p === '*') return () => true;
  if (p.endsWith('*')) {
    const prefix = p.slice(0, -1);
    return (s) => s.startsWith(prefix);
  }
  return (s) => s === p;
}
