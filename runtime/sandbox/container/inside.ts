/**
 * Tide's program inside a container (mounted read-only at /tide/inside.ts, run by the host's
 * Node mounted at /tide/node). It imports nothing from the rest of Tide.
 *
 * It listens on the Unix socket the node reaches the container through ($TIDE_SOCKET), and:
 * - function mode: serves the fetch handler of /fn/bundle.mjs (env from /fn/env.json, not
 *   process.env). With TIDE_WAIT=1 it starts before it has a function (a pre-started
 *   container) and loads it on `POST /.tide/load`;
 * - forward mode (images): starts the image's command, then forwards each request to
 *   127.0.0.1:$PORT, at most $TIDE_CONCURRENCY at once (0 = no limit; the rest wait).
 *
 * `GET /.tide/health` answers 200 once it can serve. A function that throws gets 500 with
 * `tide-function-error`; console output goes to stdout/stderr, which Tide keeps as the logs.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createServer, request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';

interface FetchHandler {
  fetch(request: Request, env: Record<string, string>, ctx: { waitUntil(p: unknown): void; passThroughOnException(): void }): unknown;
}

const SOCKET = process.env.TIDE_SOCKET ?? '/run/tide/tide.sock';
const BUNDLE = '/fn/bundle.mjs';
const MODE = process.env.TIDE_MODE ?? 'function';
const HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'proxy-connection', 'te', 'trailer', 'tide-scheme']);

// Calls to NAME.NAMESPACE.svc.tide go to the mesh through the socket Tide opens here once the
// container has a function (a pre-started one gets it later).
const MESH_SOCKET = '/run/tide/mesh.sock';
// Mesh calls made while serving a request continue its trace (the traceparent Tide sent).
const traceOf = new AsyncLocalStorage<{ traceparent: string; tracestate?: string }>();
if (MODE === 'function') {
  const where = '/tide/mesh-fetch.ts';
  const { installMeshFetch } = (await import(where)) as {
    installMeshFetch(socket: () => string | undefined, inject: (carrier: Record<string, string>) => void): void;
  };
  installMeshFetch(
    () => (existsSync(MESH_SOCKET) ? MESH_SOCKET : undefined),
    (carrier) => {
      const t = traceOf.getStore();
      if (!t) return;
      carrier.traceparent = t.traceparent;
      if (t.tracestate !== undefined) carrier.tracestate = t.tracestate;
    },
  );
}

let handler: FetchHandler | undefined;
let env: Record<string, string> = {};
let loading: Promise<void> | undefined;

function load(): Promise<void> {
  loading ??= (async () => {
    env = Object.freeze(JSON.parse(readFileSync('/fn/env.json', 'utf8')) as Record<string, string>) as Record<string, string>;
    const mod = (await import(BUNDLE)) as { default?: FetchHandler };
    if (!mod.default || typeof mod.default.fetch !== 'function') throw new Error('the module has no `export default { fetch(request, env, ctx) }`');
    handler = mod.default;
  })();
  return loading;
}

function fail(res: ServerResponse, status: number, code: string, message: string): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'tide-function-error': code });
  res.end(`${message}\n`);
}

async function serveFunction(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const fn = handler as FetchHandler;
  const headers = new Headers();
  for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) {
    const name = (req.rawHeaders[i] as string).toLowerCase();
    if (!HOP.has(name)) headers.append(name, req.rawHeaders[i + 1] as string);
  }
  const scheme = req.headers['tide-scheme'] === 'https' ? 'https' : 'http';
  const abort = new AbortController();
  res.on('close', () => {
    if (!res.writableFinished) abort.abort(new Error('the client went away'));
  });
  const hasBody = req.method !== 'GET' && req.method !== 'HEAD';
  const request = new Request(`${scheme}://${req.headers.host ?? 'localhost'}${req.url ?? '/'}`, {
    method: req.method,
    headers,
    body: hasBody ? (Readable.toWeb(req) as ReadableStream<Uint8Array>) : null,
    signal: abort.signal,
    duplex: 'half',
  } as RequestInit);
  let response: unknown;
  const tp = req.headers.traceparent;
  const ts = req.headers.tracestate;
  const call = () =>
    fn.fetch(request, env, {
      waitUntil: (p) => {
        Promise.resolve(p).catch((err: unknown) => console.error('waitUntil promise rejected:', err));
      },
      passThroughOnException() {},
    });
  try {
    response = await (typeof tp === 'string' ? traceOf.run({ traceparent: tp, ...(typeof ts === 'string' ? { tracestate: ts } : {}) }, call) : call());
  } catch (err) {
    console.error(`request failed:`, err);
    fail(res, 500, 'ERR_FUNCTION_THREW', err instanceof Error ? `${err.name}: ${err.message}` : String(err));
    return;
  }
  if (!(response instanceof Response)) {
    fail(res, 502, 'ERR_FUNCTION_BAD_RESPONSE', `the function returned ${response === null ? 'null' : typeof response}, not a Response`);
    return;
  }
  const out: string[] = [];
  response.headers.forEach((value, name) => {
    if (!HOP.has(name)) out.push(name, value);
  });
  try {
    res.writeHead(response.status, out);
  } catch (err) {
    fail(res, 502, 'ERR_FUNCTION_BAD_RESPONSE', `the function's response cannot be sent: ${(err as Error).message}`);
    return;
  }
  if (!response.body || req.method === 'HEAD') {
    await response.body?.cancel().catch(() => {});
    res.end();
    return;
  }
  // Most bodies are complete at once (a string, JSON): one chunk and done, sent in one write.
  const reader = response.body.getReader();
  try {
    const first = await reader.read();
    if (first.done) {
      res.end();
      return;
    }
    const next = reader.read();
    const second = await Promise.race([next, microtasks(4)]);
    if (second?.done) {
      res.end(first.value);
      return;
    }
    res.write(first.value);
    if (second !== null) res.write(second.value);
    else {
      const r = await next;
      if (r.done) {
        res.end();
        return;
      }
      res.write(r.value);
    }
    reader.releaseLock();
    await pipeline(Readable.fromWeb(response.body as import('node:stream/web').ReadableStream), res);
  } catch {
    res.destroy();
  }
}

/** Resolves with null after a few microtask turns: long enough for a complete stream to say it is done. */
function microtasks(turns: number): Promise<null> {
  return new Promise((resolve) => {
    const step = (n: number) => (n === 0 ? resolve(null) : queueMicrotask(() => step(n - 1)));
    step(turns);
  });
}

// Forward mode: the image's process, and a gate of $TIDE_CONCURRENCY requests at once.
const limit = Number(process.env.TIDE_CONCURRENCY ?? 0);
let inflight = 0;
const waiting: (() => void)[] = [];
let workloadUp = false;

function serveForward(req: IncomingMessage, res: ServerResponse): void {
  if (limit > 0 && inflight >= limit) {
    waiting.push(() => serveForward(req, res));
    return;
  }
  inflight++;
  let released = false;
  const release = () => {
    if (released) return;
    released = true;
    inflight--;
    waiting.shift()?.();
  };
  const headers = { ...req.headers };
  delete headers['tide-scheme'];
  const up = httpRequest({ host: '127.0.0.1', port: Number(process.env.PORT), method: req.method, path: req.url, headers }, (ures) => {
    res.writeHead(ures.statusCode ?? 502, ures.rawHeaders);
    ures.pipe(res);
    ures.on('end', release);
    ures.on('error', () => {
      release();
      res.destroy();
    });
  });
  up.on('error', (err) => {
    release();
    fail(res, 502, 'ERR_FUNCTION_BAD_RESPONSE', `the container's process did not answer: ${err.message}`);
  });
  res.on('close', () => {
    if (!res.writableFinished) up.destroy();
    release();
  });
  req.pipe(up);
}

function checkWorkload(): Promise<boolean> {
  return new Promise((resolve) => {
    const r = httpRequest({ host: '127.0.0.1', port: Number(process.env.PORT), method: 'HEAD', path: '/' }, (res) => {
      res.resume();
      resolve(true);
    });
    r.on('error', () => resolve(false));
    r.end();
  });
}

const server = createServer((req, res) => {
  if (req.url === '/.tide/health') {
    const up = MODE === 'forward' ? workloadUp : handler !== undefined;
    res.writeHead(up ? 200 : 503).end(up ? 'ok\n' : 'starting\n');
    return;
  }
  if (req.url === '/.tide/load' && req.method === 'POST') {
    load().then(
      () => res.writeHead(200).end('loaded\n'),
      (err: unknown) => fail(res, 422, 'ERR_FUNCTION_INVALID', `could not load the function: ${err instanceof Error ? err.message : String(err)}`),
    );
    return;
  }
  if (MODE === 'forward') {
    serveForward(req, res);
    return;
  }
  if (!handler) {
    fail(res, 503, 'ERR_SANDBOX_CLOSED', 'no function loaded yet');
    return;
  }
  serveFunction(req, res).catch((err: unknown) => fail(res, 500, 'ERR_FUNCTION_THREW', String(err)));
});
server.keepAliveTimeout = 60_000;

async function main(): Promise<void> {
  if (MODE === 'forward') {
    const [cmd, ...args] = JSON.parse(process.env.TIDE_COMMAND ?? '[]') as string[];
    if (!cmd) throw new Error('no command to run (the image has no entrypoint or cmd)');
    const child = spawn(cmd, args, { stdio: 'inherit', cwd: process.env.TIDE_WORKDIR || '/' });
    child.on('exit', (code, signal) => {
      console.error(`the container's process exited (${signal ?? `code ${code}`})`);
      process.exit(code ?? 1);
    });
    for (const sig of ['SIGTERM', 'SIGINT'] as const) process.on(sig, () => child.kill(sig));
    server.listen(SOCKET);
    while (!(await checkWorkload())) await new Promise((r) => setTimeout(r, 5));
    workloadUp = true;
    return;
  }
  if (process.env.TIDE_WAIT !== '1') await load();
  server.listen(SOCKET);
  process.on('SIGTERM', () => {
    server.close(() => process.exit(0));
    server.closeIdleConnections();
  });
}

main().catch((err: unknown) => {
  console.error('tide: the container could not start:', err);
  process.exit(1);
});
