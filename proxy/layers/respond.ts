/**
 * Routes that answer by themselves, without an upstream: direct responses and redirects.
 */
import type { RouteConfig } from '../../lib/config/proxy.ts';
import type { Dispatch, ResponseControl } from '../http/types.ts';

const NO_CONTROL: ResponseControl = { pause() {}, resume() {}, abort() {} };

export function directResponse(d: NonNullable<RouteConfig['directResponse']>): Dispatch {
  const body = Buffer.from(d.body, 'utf8');
  const headers = d.body === '' ? [] : ['content-type', d.contentType];
  return (_req, handler) => {
    handler.onHeaders(d.status, headers.slice(), body.length, NO_CONTROL);
    if (body.length > 0) handler.onData(body);
    handler.onEnd();
  };
}

/** `matchedPrefix`: the route's path prefix, replaced by `prefixRewrite` when that is set. */
export function redirect(r: NonNullable<RouteConfig['redirect']>, matchedPrefix: string | undefined): Dispatch {
  return (req, handler) => {
    const q = req.path.indexOf('?');
    let path = q === -1 ? req.path : req.path.slice(0, q);
    const query = q === -1 || r.stripQuery ? '' : req.path.slice(q);
    if (r.path !== undefined) path = r.path;
    else if (r.prefixRewrite !== undefined && matchedPrefix !== undefined && path.startsWith(matchedPrefix))
      path = r.prefixRewrite + path.slice(matchedPrefix.length);
    const location = `${r.scheme ?? req.conn.scheme}://${r.host ?? req.host}${path}${query}`;
    handler.onHeaders(r.status, ['location', location], 0, NO_CONTROL);
    handler.onEnd();
  };
}
