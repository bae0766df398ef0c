/**
 * Header and rewrite edits of a route, compiled once: path-prefix and host rewrites and
 * request header set/add/remove on the way in; response header set/add/remove on the way out.
 * (The headers every request gets — x-request-id, x-forwarded-*, forwarded, via — are set by
 * the proxy before routing; see proxy.ts.)
 */
import type { RouteConfig } from '../../lib/config/proxy.ts';
import type { Dispatch, ProxyRequest, ResponseControl, ResponseHandler } from '../http/types.ts';

type Edits = NonNullable<RouteConfig['requestHeaders']>;

/** The request half of a route's edits (rewrites, header set/add/remove), or undefined when it has none. */
export function requestEditor(route: RouteConfig, matchedPrefix: string | undefined): ((req: ProxyRequest) => void) | undefined {
  const rw = route.rewrite;
  const reqEdits = route.requestHeaders;
  if (!rw && !reqEdits) return undefined;
  const setReq = Object.entries(reqEdits?.set ?? {}).map(([k, v]) => [k.toLowerCase(), v] as const);
  const addReq = Object.entries(reqEdits?.add ?? {}).map(([k, v]) => [k.toLowerCase(), v] as const);
  const removeReq = (reqEdits?.remove ?? []).map((k) => k.toLowerCase());
  return (req) => {
    if (rw?.prefix !== undefined && matchedPrefix !== undefined && req.path.startsWith(matchedPrefix)) {
      const rest = req.path.slice(matchedPrefix.length);
      req.path = rw.prefix.endsWith('/') && rest.startsWith('/') ? rw.prefix + rest.slice(1) : rw.prefix + rest;
      if (!req.path.startsWith('/')) req.path = `/${req.path}`;
    }
    if (rw?.host !== undefined) req.host = rw.host;
    for (const k of removeReq) delete req.headers[k];
    for (const [k, v] of setReq) req.headers[k] = v;
    for (const [k, v] of addReq) req.headers[k] = req.headers[k] === undefined ? v : `${req.headers[k]}, ${v}`;
  };
}

export function headersLayer(route: RouteConfig, matchedPrefix: string | undefined): ((next: Dispatch) => Dispatch) | undefined {
  const editRequest = requestEditor(route, matchedPrefix);
  const editResponse = route.responseHeaders ? responseEditor(route.responseHeaders) : undefined;
  if (!editRequest && !editResponse) return undefined;
  return (next) => (req, handler) => {
    editRequest?.(req);
    next(req, editResponse ? wrap(handler, editResponse) : handler);
  };
}

function responseEditor(e: Edits): (headers: string[]) => string[] {
  const remove = new Set([...(e.remove ?? []), ...Object.keys(e.set ?? {})].map((k) => k.toLowerCase()));
  const append = [...Object.entries(e.set ?? {}), ...Object.entries(e.add ?? {})].flat();
  return (headers) => {
    const out: string[] = [];
    for (let i = 0; i < headers.length; i += 2) if (!remove.has((headers[i] as string).toLowerCase())) out.push(headers[i] as string, headers[i + 1] as string);
    out.push(...append);
    return out;
  };
}

function wrap(h: ResponseHandler, edit: (headers: string[]) => string[]): ResponseHandler {
  return {
    onHeaders: (status: number, headers: string[], contentLength: number, ctl: ResponseControl) => h.onHeaders(status, edit(headers), contentLength, ctl),
    onData: (chunk) => h.onData(chunk),
    onEnd: () => h.onEnd(),
    onError: (err) => h.onError(err),
  };
}
