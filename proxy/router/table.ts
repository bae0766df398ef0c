/**
 * TableRouter: the straightforward Router. Hosts resolve through a Map (exact) and two lists of
 * wildcards sorted longest first; routes are compiled predicates tried in order. Good for the
 * tens of routes per host that configs have; a trie can replace it behind the same contract.
 */
import {
  configError,
  type HeaderMatch,
  type Matched,
  normalizeHost,
  type QueryMatch,
  type RouteRequest,
  type Router,
  type StringMatch,
  type VirtualHostSpec,
} from './router.ts';

type Predicate = (req: RouteRequest, path: string, query: URLSearchParams | undefined) => boolean;

interface CompiledRoute<T> {
  name: string;
  target: T;
  test: Predicate;
  needsQuery: boolean;
}

interface CompiledHost<T> {
  name: string;
  routes: CompiledRoute<T>[];
}

export class TableRouter<T> implements Router<T> {
  readonly #exact = new Map<string, CompiledHost<T>>();
  readonly #suffixes: [string, CompiledHost<T>][] = [];
  readonly #prefixes: [string, CompiledHost<T>][] = [];
  #any: CompiledHost<T> | undefined;

  constructor(virtualHosts: VirtualHostSpec<T>[]) {
    const seen = new Map<string, string>();
    virtualHosts.forEach((vh, i) => {
      const at = `virtualHosts[${i}]`;
      if (!vh.name) throw configError(`${at}.name`, 'is required');
      if (!Array.isArray(vh.domains) || vh.domains.length === 0) throw configError(`${at}.domains`, 'needs at least one domain');
      const host: CompiledHost<T> = { name: vh.name, routes: (vh.routes ?? []).map((r, j) => compileRoute(r, `${at}.routes[${j}]`)) };
      vh.domains.forEach((raw, j) => {
        const d = raw.toLowerCase();
        const field = `${at}.domains[${j}]`;
        const other = seen.get(d);
        if (other !== undefined) throw configError(field, `"${raw}" is already a domain of virtual host "${other}"`);
        seen.set(d, vh.name);
        if (d === '*') this.#any = host;
        else if (d.startsWith('*.') && !d.slice(2).includes('*')) this.#suffixes.push([d.slice(1), host]);
        else if (d.endsWith('.*') && !d.slice(0, -2).includes('*')) this.#prefixes.push([d.slice(0, -1), host]);
        else if (!d.includes('*') && /^[a-z0-9.[\]:-]+$/.test(d)) this.#exact.set(d, host);
        else throw configError(field, `"${raw}" is not a domain: use a name, *.suffix, prefix.* or *`);
      });
    });
    this.#suffixes.sort((a, b) => b[0].length - a[0].length);
    this.#prefixes.sort((a, b) => b[0].length - a[0].length);
  }

  route(req: RouteRequest): Matched<T> | undefined {
    const host = this.#host(normalizeHost(req.host));
    if (!host) return undefined;
    const q = req.url.indexOf('?');
    const path = q === -1 ? req.url : req.url.slice(0, q);
    let query: URLSearchParams | undefined;
    for (const r of host.routes) {
      if (r.needsQuery && query === undefined) query = new URLSearchParams(q === -1 ? '' : req.url.slice(q + 1));
      if (r.test(req, path, query)) return { virtualHost: host.name, route: r.name, target: r.target };
    }
    return undefined;
  }

  #host(h: string): CompiledHost<T> | undefined {
    const exact = this.#exact.get(h);
    if (exact) return exact;
    for (const [suffix, host] of this.#suffixes) if (h.length > suffix.length && h.endsWith(suffix)) return host;
    for (const [prefix, host] of this.#prefixes) if (h.length > prefix.length && h.startsWith(prefix)) return host;
    return this.#any;
  }
}

function compileRoute<T>(spec: { name: string; match: import('./router.ts').RouteMatch; target: T }, at: string): CompiledRoute<T> {
  if (!spec.name) throw configError(`${at}.name`, 'is required');
  const m = spec.match ?? {};
  const tests: Predicate[] = [];
  if (m.path) {
    const p = stringTest(m.path, `${at}.match.path`);
    tests.push((_r, path) => p(path));
  }
  if (m.methods && m.methods.length > 0) {
    const methods = new Set(m.methods.map((x) => x.toUpperCase()));
    tests.push((r) => methods.has(r.method));
  }
  (m.headers ?? []).forEach((h, i) => {
    const t = presenceTest(h, `${at}.match.headers[${i}]`);
    const name = h.name.toLowerCase();
    tests.push((r) => {
      const v = r.headers[name];
      return t(v === undefined ? undefined : Array.isArray(v) ? v.join(',') : v);
    });
  });
  (m.query ?? []).forEach((qm, i) => {
    const t = presenceTest(qm, `${at}.match.query[${i}]`);
    tests.push((_r, _p, query) => t(query?.get(qm.name) ?? undefined));
  });
  const test: Predicate = tests.length === 0 ? () => true : (r, path, query) => tests.every((f) => f(r, path, query));
  return { name: spec.name, target: spec.target, test, needsQuery: (m.query ?? []).length > 0 };
}

function stringTest(s: StringMatch, at: string): (v: string) => boolean {
  const kinds = (['exact', 'prefix', 'regex'] as const).filter((k) => s[k] !== undefined);
  if (kinds.length !== 1) throw configError(at, 'needs exactly one of exact, prefix, regex');
  if (s.exact !== undefined) {
    const e = s.exact;
    return (v) => v === e;
  }
  if (s.prefix !== undefined) {
    const p = s.prefix;
    return (v) => v.startsWith(p);
  }
  const re = compileRegex(s.regex as string, `${at}.regex`);
  return (v) => re.test(v);
}

function presenceTest(m: HeaderMatch | QueryMatch, at: string): (v: string | undefined) => boolean {
  if (!m.name) throw configError(`${at}.name`, 'is required');
  const kinds = (['exact', 'regex', 'present'] as const).filter((k) => m[k] !== undefined);
  if (kinds.length !== 1) throw configError(at, 'needs exactly one of exact, regex, present');
  if (m.present !== undefined) {
    const want = m.present;
    return (v) => (v !== undefined) === want;
  }
  if (m.exact !== undefined) {
    const e = m.exact;
    return (v) => v === e;
  }
  const re = compileRegex(m.regex as string, `${at}.regex`);
  return (v) => v !== undefined && re.test(v);
}

function compileRegex(source: string, at: string): RegExp {
  try {
    return new RegExp(`^(?:${source})$`);
  } catch (err) {
    throw configError(at, `invalid regular expression: ${(err as Error).message}`);
  }
}
