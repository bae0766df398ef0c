/**
 * `tide dashboard`: a small relay on 127.0.0.1 between a browser and the control API, so the
 * dashboard opens with one command and the browser never sees the API token or has to trust
 * Tide's CA. It forwards GET and HEAD of /dashboard…, /v1/dashboard and /v1/traces… to the API, adding the CLI's
 * bearer token and verifying the API's certificate as every other command does (cli/client.ts:
 * --cacert, $TIDE_CA_CERT, <data-dir>/ca/bundle.pem), and refuses everything else:
 *
 *   - other methods: 405, so nothing reached through it can change anything;
 *   - a Host header that is not its own 127.0.0.1:PORT or localhost:PORT: 403, so a web page
 *     whose name an attacker re-points at 127.0.0.1 (DNS rebinding) cannot read through it;
 *   - a request another site's page made (Sec-Fetch-Site cross-site or same-site): 403.
 *
 * It runs until SIGINT or SIGTERM. Anyone who can open connections to 127.0.0.1 on this
 * machine can read through it while it runs, with the CLI's token: `--help` says so.
 */
import { spawn } from 'node:child_process';
import { constants } from 'node:fs';
import { access } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { delimiter, join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { Command } from 'commander';
import { Agent, request } from 'undici';
import { errorMessage, TideError } from '../lib/errors.ts';
import { listen } from '../lib/net.ts';
import { ApiClient, type ConnectOptions, locate, type Target } from './client.ts';

/** Request headers passed on to the API (the relay adds authorization itself). */

/** The API paths the page reads. */
const RELAYED = /^\/v1\/(dashboard|traces(\/[0-9a-f]{1,32})?)$/;
const FORWARDED = ['accept', 'accept-language', 'if-none-match', 'if-modified-since', 'cache-control'];
/** Response headers that belong to one connection, not to the answer. */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'proxy-authenticate', 'proxy-connection']);

export interface RelayOptions {
  target: Target;
  /** 0 = a free port. */
  port: number;
}

export interface Relay {
  /** http://127.0.0.1:PORT/dashboard */
  url: string;
  port: number;
  close(): Promise<void>;
}

/** Starts the relay on 127.0.0.1. */
export async function startRelay(opts: RelayOptions): Promise<Relay> {
  const { target } = opts;
  const dispatcher = target.dispatcher ?? new Agent();
  let port = 0;
  const server = createServer((req, res) => {
    void relay(req, res).catch((err) => reply(res, 502, 'ERR_API_UNREACHABLE', `cannot reach the Tide API at ${target.api}: ${errorMessage(err)}`));
  });

  async function relay(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const host = (req.headers.host ?? '').toLowerCase();
    if (host !== `127.0.0.1:${port}` && host !== `localhost:${port}`)
      return reply(res, 403, 'ERR_FORBIDDEN', `this relay answers only requests for 127.0.0.1:${port} or localhost:${port} (Host was ${host || 'missing'})`);
    const site = req.headers['sec-fetch-site'];
    if (site !== undefined && site !== 'same-origin' && site !== 'none')
      return reply(res, 403, 'ERR_FORBIDDEN', `this relay does not answer requests made by other sites' pages (Sec-Fetch-Site: ${site})`);
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('allow', 'GET, HEAD');
      return reply(res, 405, 'ERR_BAD_REQUEST', `the dashboard relay only reads: ${req.method} is refused (use the tide CLI to change things)`);
    }
    const raw = req.url ?? '/';
    if (!raw.startsWith('/')) return reply(res, 400, 'ERR_BAD_REQUEST', 'the request target must be a path');
    // Paths are checked after normalising (/dashboard/../x is /x).
    const url = new URL(raw, `http://127.0.0.1:${port}`);
    if (url.pathname === '/') {
      res.writeHead(302, { location: '/dashboard' });
      res.end();
      return;
    }
    // Only what the page reads: its own files, /v1/dashboard and the traces. Not tokens, logs
    // or function details, whatever the CLI's token may read.
    if (url.pathname !== '/dashboard' && !url.pathname.startsWith('/dashboard/') && !RELAYED.test(url.pathname))
      return reply(res, 404, 'ERR_NOT_FOUND', `the dashboard relay serves the dashboard, /v1/dashboard and /v1/traces only (not ${url.pathname})`);
    const headers: Record<string, string> = { authorization: `Bearer ${target.token}` };
    for (const h of FORWARDED) {
      const v = req.headers[h];
      if (typeof v === 'string') headers[h] = v;
    }
    const ac = new AbortController();
    res.on('close', () => ac.abort());
    const upstream = await request(`${target.api}${url.pathname}${url.search}`, { method: req.method, headers, dispatcher, signal: ac.signal });
    const out: Record<string, string | string[]> = {};
    for (const [k, v] of Object.entries(upstream.headers)) if (v !== undefined && !HOP_BY_HOP.has(k)) out[k] = v;
    res.writeHead(upstream.statusCode, out);
    await pipeline(upstream.body, res).catch(() => res.destroy());
  }

  const address = await listen(server, opts.port, '127.0.0.1');
  port = address.port;
  return {
    url: `http://127.0.0.1:${port}/dashboard`,
    port,
    close: async () => {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      await dispatcher.close();
    },
  };
}

function reply(res: ServerResponse, status: number, code: string, message: string): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = JSON.stringify({ error: { code, message, hint: null } });
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), 'x-content-type-options': 'nosniff' });
  res.end(body);
}

/** The path of `xdg-open` when it is on $PATH. */
async function xdgOpen(): Promise<string | undefined> {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (!dir) continue;
    const file = join(dir, 'xdg-open');
    if (
      await access(file, constants.X_OK).then(
        () => true,
        () => false,
      )
    )
      return file;
  }
  return undefined;
}

function portNumber(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new TideError('ERR_INVALID_ARGUMENT', `--port must be an integer from 0 to 65535 (got "${value}")`);
  return n;
}

export function registerDashboard(prog: Command, connectionOptions: (c: Command) => Command, out: (s: string) => void): void {
  connectionOptions(
    prog
      .command('dashboard')
      .description(
        "open Tide's dashboard: functions, revisions and traffic splits, instances and the autoscaler's decisions, requests/s, errors and latency, recent traces.\n\n" +
          "It starts a relay on 127.0.0.1 that forwards the browser's GET requests for the page and what it reads (/v1/dashboard, /v1/traces) to the control API with this CLI's token, " +
          "checking the API's certificate the way every tide command does (--cacert). So the browser never sees the token and never has to trust Tide's CA. " +
          'The relay refuses other methods (405), requests whose Host is not its own 127.0.0.1:PORT or localhost:PORT (403, against DNS rebinding), ' +
          "and requests made by other sites' pages. While it runs, any program on this machine that can reach 127.0.0.1:PORT can read functions, traffic and traces " +
          'through it (not change anything): stop it with Ctrl+C when done.\n\n' +
          'Without the relay, the API serves the same page at https://API/dashboard; it asks for a token.',
      )
      .option('--port <port>', 'port of the relay on 127.0.0.1 (0 = any free port)', portNumber, 0)
      .option('--no-open', 'print the URL only; do not open a browser (default: open it with xdg-open when there is one)'),
  ).action(async (o: ConnectOptions & { port: number; open: boolean }) => {
    const target = await locate(o);
    // Fails now, with the CLI's usual message, when the API is not there or refuses the token.
    await new ApiClient(target).call('GET', '/v1/info');
    const relay = await startRelay({ target, port: o.port });
    out(`Dashboard: ${relay.url}`);
    process.stderr.write(`tide dashboard: relaying GET requests to ${target.api} with your token; Ctrl+C to stop\n`);
    if (o.open) {
      const opener = await xdgOpen();
      if (opener)
        spawn(opener, [relay.url], { stdio: 'ignore', detached: true })
          .on('error', () => {})
          .unref();
      else process.stderr.write('tide dashboard: no xdg-open here: open the URL in a browser\n');
    }
    await new Promise<void>((resolve) => {
      const stop = () => {
        process.off('SIGINT', stop);
        process.off('SIGTERM', stop);
        relay.close().then(resolve, resolve);
      };
      process.on('SIGINT', stop);
      process.on('SIGTERM', stop);
    });
  });
}
