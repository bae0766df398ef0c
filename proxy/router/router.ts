/**
 * The Router: picks the virtual host for a request's Host, then the first of that host's
 * routes whose match accepts the request (path exact/prefix/regex, methods, headers, query).
 * Routers are compiled once from a snapshot and only read on the request path; they never
 * allocate per request beyond the match result. Every implementation passes the shared
 * contract in test/contract/router.ts.
 *
 * Host matching, most specific first: an exact domain; then the longest suffix wildcard
 * (`*.example.com` matches `a.example.com` and `a.b.example.com`, not `example.com`); then the
 * longest prefix wildcard (`api.*`); then the catch-all `*`. Ports are ignored; case is folded.
 */
import type { IncomingHttpHeaders } from 'node:http';
import { TideError } from '../../lib/errors.ts';

export interface StringMatch {
  exact?: string;
  prefix?: string;
  /** Must match the whole value (anchored). */
  regex?: string;
}

export interface HeaderMatch {
  /** Header name, case-insensitive. */
  name: string;
  exact?: string;
  regex?: string;
  /** true: the header must be present (any value); false: it must be absent. */
  present?: boolean;
}

export interface QueryMatch {
  name: string;
  exact?: string;
  regex?: string;
  present?: boolean;
}

export interface RouteMatch {
  /** Path without the query string. Absent: any path. */
  path?: StringMatch;
  /** Upper-case methods; absent or empty: any method. */
  methods?: string[];
  /** All must hold. */
  headers?: HeaderMatch[];
  /** All must hold. */
  query?: QueryMatch[];
}

export interface RouteSpec<T> {
  name: string;
  match: RouteMatch;
  target: T;
}

export interface VirtualHostSpec<T> {
  name: string;
  /** Exact names, `*.suffix`, `prefix.*`, or `*`. */
  domains: string[];
  /** Tried in order; the first match wins. */
  routes: RouteSpec<T>[];
}

export interface RouteRequest {
  /** The Host header (a port, if any, is ignored). */
  host: string;
  method: string;
  /** Path and query as in the request line, e.g. `/a/b?x=1`. */
  url: string;
  headers: IncomingHttpHeaders;
}

export interface Matched<T> {
  virtualHost: string;
  route: string;
  target: T;
}

export interface Router<T> {
  route(req: RouteRequest): Matched<T> | undefined;
}

/** The error a router throws at compile time, naming the field, e.g. `virtualHosts[0].routes[2].match.path.regex`. */
export function configError(field: string, message: string): TideError {
  return new TideError('ERR_CONFIG_INVALID', `${field}: ${message}`, { details: { field } });
}

/** Lower-cases and drops a port (`Host: a.example:8080` → `a.example`; `[::1]:80` → `[::1]`). */
export function normalizeHost(host: string): string {
  let h = host.toLowerCase();
  if (h.startsWith('[')) {
    const end = h.indexOf(']');
    return end === -1 ? h : h.slice(0, end + 1);
  }
  const colon = h.lastIndexOf(':');
  if (colon !== -1) h = h.slice(0, colon);
  return h.endsWith('.') ? h.slice(0, -1) : h;
}
