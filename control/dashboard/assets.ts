/**
 * The dashboard's static files (index.html, dashboard.css, favicon.svg and the ES modules
 * dashboard.js, core.js, charts.js, traces.js in this folder), served by the control API at /dashboard without a token: they hold no data, and the
 * page asks /v1/dashboard and /v1/traces for everything, with whatever token it has (none
 * behind `tide dashboard`'s relay). Only the exact paths below are served; nothing is looked
 * up on disk from a request's path.
 *
 * Plain browser JavaScript and CSS, no framework, no build step: the charts are SVG drawn by
 * hand. The content security policy allows scripts, styles and requests from the page's own
 * origin only, and no inline script or style.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';

const FILES: Record<string, { file: string; type: string }> = {
  '/dashboard': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/dashboard/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/dashboard/dashboard.js': { file: 'dashboard.js', type: 'text/javascript; charset=utf-8' },
  '/dashboard/core.js': { file: 'core.js', type: 'text/javascript; charset=utf-8' },
  '/dashboard/charts.js': { file: 'charts.js', type: 'text/javascript; charset=utf-8' },
  '/dashboard/traces.js': { file: 'traces.js', type: 'text/javascript; charset=utf-8' },
  '/dashboard/dashboard.css': { file: 'dashboard.css', type: 'text/css; charset=utf-8' },
  '/dashboard/favicon.svg': { file: 'favicon.svg', type: 'image/svg+xml' },
};

/** Headers on every dashboard file. */
export const DASHBOARD_HEADERS: Readonly<Record<string, string>> = {
  'content-security-policy':
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'cache-control': 'no-cache',
};

const cache = new Map<string, Buffer>();

/** True for a GET or HEAD of one of the dashboard's files. */
export function isDashboardAsset(method: string, pathname: string): boolean {
  return (method === 'GET' || method === 'HEAD') && Object.hasOwn(FILES, pathname);
}

/** The file for `pathname` (see isDashboardAsset), read once and kept. */
export async function dashboardAsset(pathname: string, method: string): Promise<Response> {
  const entry = FILES[pathname];
  if (!entry) return new Response('not found\n', { status: 404, headers: { 'content-type': 'text/plain; charset=utf-8', ...DASHBOARD_HEADERS } });
  let body = cache.get(entry.file);
  if (!body) {
    body = await readFile(join(import.meta.dirname, entry.file));
    cache.set(entry.file, body);
  }
  const headers = { 'content-type': entry.type, 'content-length': String(body.length), ...DASHBOARD_HEADERS };
  return new Response(method === 'HEAD' ? null : new Uint8Array(body), { status: 200, headers });
}
