/**
 * The function host: runs inside each worker thread of a worker-sandbox instance (piscina
 * loads this file). It imports the function's bundle once, turns each request task into a
 * Web Request, calls `fetch(request, env, ctx)` and returns the Response as the task result,
 * streaming over a MessagePort only what is not complete yet (see protocol.ts). It captures
 * console output into the function's log channel. A throw fails only its own request; it must
 * never take the thread down.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { format } from 'node:util';
import { MessageChannel, type MessagePort } from 'node:worker_threads';
import { move, transferableSymbol, valueSymbol, workerData } from 'piscina';
import { installMeshFetch } from '../mesh-fetch.ts';
import { type HostData, type HostMessage, LOG_CHANNEL, type MainMessage, type RequestTask, type Task, type TaskResult } from './protocol.ts';
import type { FunctionTracing } from './tracing.ts';

interface FetchHandler {
  fetch(request: Request, env: Record<string, string>, ctx: ExecutionContext): unknown;
}

interface ExecutionContext {
  waitUntil(promise: unknown): void;
  passThroughOnException(): void;
}

/**
 * Who this thread serves. A warm thread starts generic and is told by its first load task; a
 * thread started later for the same instance (after one was killed) knows from its workerData.
 */
const seed = (workerData as { host?: HostData } | undefined)?.host;
/** False when Tide traces nothing (`--no-tracing`): the OpenTelemetry SDK is not even loaded. */
const tracingOn = (workerData as { tracing?: boolean } | undefined)?.tracing !== false;
let data: HostData = seed ?? { bundleUrl: '', env: {}, function: '', revision: '', instance: '', waitUntilMs: 0 };
let env: Readonly<Record<string, string>> = Object.freeze({ ...data.env });
const logs = new BroadcastChannel(LOG_CHANNEL);

/** The request a piece of function code runs for (console output carries its ids). */
const current = new AsyncLocalStorage<{ requestId: string; traceId: string | undefined; traceparent: string | undefined }>();

function emit(level: string, args: unknown[]): void {
  const req = current.getStore();
  logs.postMessage({
    time: new Date().toISOString(),
    function: data.function,
    revision: data.revision,
    instance: data.instance,
    level,
    message: format(...args),
    ...(req ? { requestId: req.requestId, ...(req.traceId ? { traceId: req.traceId } : {}) } : {}),
  });
}

for (const [method, level] of [
  ['log', 'info'],
  ['info', 'info'],
  ['debug', 'debug'],
  ['warn', 'warn'],
  ['error', 'error'],
  ['trace', 'debug'],
] as const) {
  console[method] = (...args: unknown[]) => emit(level, args);
}
// The OpenTelemetry API for functions' own spans; loaded while the thread warms up, before
// any function is (a function's module may ask for a tracer when it loads).
let tracing: FunctionTracing | undefined;
const tracingReady = tracingOn
  ? import('./tracing.ts').then(
      (m) => {
        tracing = m.installTracing(() => data.function);
      },
      (err: unknown) => emit('warn', ['tracing is not available in this thread:', err]),
    )
  : Promise.resolve();

// Calls to NAME.NAMESPACE.svc.tide go through the mesh, under this function's identity, and
// continue the trace of the request being served.
installMeshFetch(
  () => data.meshSocket,
  (carrier) => {
    // The function's own active span (sampled requests), else the execution span Tide sent.
    if (tracing?.inject(carrier)) return;
    const tp = current.getStore()?.traceparent;
    if (tp !== undefined) carrier.traceparent = tp;
  },
);

process.on('unhandledRejection', (reason) => emit('error', ['unhandled rejection:', reason]));
process.on('uncaughtException', (err) => emit('error', ['uncaught exception:', err]));

let loading: Promise<FetchHandler> | undefined;

function load(): Promise<FetchHandler> {
  if (!loading && data.bundleUrl === '') return Promise.reject(new Error('this thread was given no function to load'));
  loading ??= tracingReady
    .then(() => import(data.bundleUrl))
    .then((mod: { default?: unknown }) => {
      const handler = mod.default as FetchHandler | undefined;
      if (!handler || typeof handler.fetch !== 'function') {
        throw new Error('the module has no `export default { fetch(request, env, ctx) { … } }`');
      }
      return handler;
    });
  return loading;
}

/**
 * Node loads its fetch machinery (Request, Response, Headers, web streams) on first use, which
 * costs a fresh thread about 20 ms. A thread does that here, before it is given a function,
 * by sending one made-up request through the same path a real one takes.
 */
async function prewarm(): Promise<void> {
  const task: RequestTask = { kind: 'request', method: 'GET', url: 'http://prewarm.invalid/', headers: ['accept', '*/*'], requestId: 'prewarm' };
  await new Exchange(task).serve({
    async fetch(request: Request) {
      const echo = new Request(request.url, { method: 'POST', body: new Blob(['warm']).stream(), duplex: 'half' } as RequestInit);
      const text = await echo.text();
      return new Response(text, { headers: { 'content-type': 'text/plain' } });
    },
  });
}

let warmed: Promise<void> = Promise.resolve();

export default async function run(task: Task): Promise<TaskResult> {
  if (task.kind === 'load') {
    if (!loading) {
      data = task.host;
      env = Object.freeze({ ...task.host.env });
    } else if (task.host.instance !== data.instance) {
      throw new Error(`this thread already serves ${data.instance}`);
    }
    await load();
    return { t: 'ok' };
  }
  if (task.kind === 'request') return new Exchange(task).serve(await load());
  if (task.kind === 'probe') await load();
  else await warmed;
  return { t: 'ok' };
}

/** Resolves after a few microtask turns: long enough for a stream that is already complete to report done. */
function microtasks(turns: number): Promise<null> {
  return new Promise((resolve) => {
    const step = (n: number) => (n === 0 ? resolve(null) : queueMicrotask(() => step(n - 1)));
    step(turns);
  });
}

/** Response headers that describe one hop; Tide's own listener sets its framing. */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'proxy-connection', 'te', 'trailer', 'proxy-authenticate']);

function notBytes(value: unknown): string {
  const got = value === null ? 'null' : typeof value === 'object' ? (value.constructor?.name ?? 'object') : typeof value;
  return `a response body chunk must be a Uint8Array (got ${got}); encode strings with TextEncoder`;
}

class Exchange {
  readonly #task: RequestTask;
  readonly #abort = new AbortController();
  readonly #waits: Promise<unknown>[] = [];
  #port: MessagePort | undefined;
  #body: ReadableStreamDefaultController<Uint8Array> | undefined;
  #pulled: (() => void) | undefined;
  #credits = 0;
  #creditWaiter: (() => void) | undefined;

  constructor(task: RequestTask) {
    this.#task = task;
    if (task.port) this.#listen(task.port);
  }

  async serve(handler: FetchHandler): Promise<TaskResult> {
    const task = this.#task;
    const headers = new Headers();
    for (let i = 0; i + 1 < task.headers.length; i += 2) headers.append(task.headers[i] as string, task.headers[i + 1] as string);
    const request = new Request(task.url, {
      method: task.method,
      headers,
      body: task.port ? this.#bodyStream() : null,
      signal: this.#abort.signal,
      duplex: 'half',
    } as RequestInit);
    const ctx: ExecutionContext = {
      waitUntil: (promise) => {
        this.#waits.push(Promise.resolve(promise).catch((err: unknown) => emit('error', ['waitUntil promise rejected:', err])));
      },
      passThroughOnException() {},
    };

    let response: unknown;
    let traceparent: string | undefined;
    for (let i = 0; i + 1 < task.headers.length; i += 2) if (task.headers[i] === 'traceparent') traceparent = task.headers[i + 1];
    // Only a sampled request records the function's own spans: it alone needs the
    // OpenTelemetry context (traceparent flags "01").
    const t = traceparent?.endsWith('1') ? tracing : undefined;
    const ids = { requestId: task.requestId, traceId: traceparent?.slice(3, 35), traceparent };
    try {
      // Everything the handler does for this request, waitUntil work included, logs with its
      // ids and, when sampled, runs in the context of its execution span.
      response = await current.run(ids, () =>
        t ? t.run(t.contextFor(traceparent), () => handler.fetch(request, env, ctx)) : handler.fetch(request, env, ctx),
      );
    } catch (err) {
      emit('error', [`request ${task.requestId} failed:`, err]);
      this.#after();
      return { t: 'error', code: 'ERR_FUNCTION_THREW', message: err instanceof Error ? `${err.name}: ${err.message}` : String(err) };
    }
    if (!(response instanceof Response)) {
      const got = response === null ? 'null' : typeof response;
      emit('error', [`request ${task.requestId}: fetch() returned ${got}, not a Response`]);
      this.#after();
      return { t: 'error', code: 'ERR_FUNCTION_BAD_RESPONSE', message: `fetch() must return a Response (got ${got})` };
    }
    const h: string[] = [];
    response.headers.forEach((value, name) => {
      if (name !== 'set-cookie' && !HOP_BY_HOP.has(name)) h.push(name, value);
    });
    for (const cookie of response.headers.getSetCookie()) h.push('set-cookie', cookie);
    if (!response.body || task.method === 'HEAD') {
      void response.body?.cancel().catch(() => {});
      this.#after();
      return { t: 'response', s: response.status, h, end: true };
    }
    const reader = response.body.getReader();
    let first: ReadableStreamReadResult<Uint8Array>;
    try {
      first = await reader.read();
    } catch (err) {
      emit('error', [`request ${task.requestId}: response body failed:`, err]);
      this.#after();
      return { t: 'error', code: 'ERR_FUNCTION_THREW', message: `the response body failed: ${err instanceof Error ? err.message : String(err)}` };
    }
    if (first.done) {
      this.#after();
      return { t: 'response', s: response.status, h, end: true };
    }
    if (!(first.value instanceof Uint8Array)) {
      void reader.cancel().catch(() => {});
      this.#after();
      return { t: 'error', code: 'ERR_FUNCTION_BAD_RESPONSE', message: notBytes(first.value) };
    }
    // Bodies made from a string, a buffer or JSON are complete now; send them in one piece.
    const next = reader.read();
    const soon = await Promise.race([next, microtasks(8)]);
    if (soon?.done) {
      this.#after();
      return { t: 'response', s: response.status, h, b: first.value, end: true };
    }
    let transfer: MessagePort | undefined;
    if (!this.#port) {
      const channel = new MessageChannel();
      this.#listen(channel.port1);
      transfer = channel.port2;
    }
    void this.#pump(reader, next).finally(() => this.#after());
    const result: TaskResult = { t: 'response', s: response.status, h, b: first.value, end: false };
    if (!transfer) return result;
    return move({ [transferableSymbol]: transfer, [valueSymbol]: { ...result, port: transfer } }) as unknown as TaskResult;
  }

  #listen(port: MessagePort): void {
    this.#port = port;
    // Main closes its end when it gives up on the request (client gone, timed out).
    port.once('close', () => this.#cancel());
    port.on('message', (m: MainMessage) => {
      switch (m.t) {
        case 'data':
        case 'eof':
        case 'body-error':
          try {
            if (m.t === 'data') this.#body?.enqueue(m.c);
            else if (m.t === 'eof') this.#body?.close();
            else this.#body?.error(new Error(m.message));
          } catch {
            // The function cancelled its request body; late chunks have nowhere to go.
          }
          this.#pulled?.();
          break;
        case 'ack':
          this.#credits += m.n;
          this.#creditWaiter?.();
          break;
        case 'cancel':
          this.#cancel();
          break;
      }
    });
  }

  #cancel(): void {
    if (!this.#abort.signal.aborted) this.#abort.abort(new DOMException('the request was cancelled', 'AbortError'));
    this.#creditWaiter?.();
  }

  #bodyStream(): ReadableStream<Uint8Array> {
    return new ReadableStream<Uint8Array>(
      {
        start: (controller) => {
          this.#body = controller;
        },
        pull: () =>
          new Promise<void>((resolve) => {
            this.#pulled = resolve;
            this.#post({ t: 'pull' });
          }),
      },
      { highWaterMark: 0 },
    );
  }

  #post(m: HostMessage): void {
    this.#port?.postMessage(m);
  }

  /** Waits until main has granted a credit (or the request was cancelled). */
  async #credit(): Promise<boolean> {
    while (this.#credits === 0 && !this.#abort.signal.aborted) {
      await new Promise<void>((r) => {
        this.#creditWaiter = r;
      });
    }
    if (this.#abort.signal.aborted) return false;
    this.#credits--;
    return true;
  }

  async #pump(reader: ReadableStreamDefaultReader<Uint8Array>, pending: Promise<ReadableStreamReadResult<Uint8Array>>): Promise<void> {
    this.#abort.signal.addEventListener('abort', () => void reader.cancel().catch(() => {}), { once: true });
    let next = pending;
    try {
      for (;;) {
        const chunk = await next;
        if (!(await this.#credit())) return;
        if (chunk.done) break;
        if (!(chunk.value instanceof Uint8Array)) throw new TypeError(notBytes(chunk.value));
        this.#post({ t: 'data', c: chunk.value });
        next = reader.read();
      }
      this.#post({ t: 'end' });
    } catch (err) {
      if (this.#abort.signal.aborted) return;
      emit('error', [`request ${this.#task.requestId}: response body failed:`, err]);
      if (await this.#credit()) this.#post({ t: 'abort', message: err instanceof Error ? err.message : String(err) });
    }
  }

  /** After the response: let ctx.waitUntil work finish (bounded), then release the port. */
  #after(): void {
    const close = () => this.#port?.close();
    if (this.#waits.length === 0) {
      // A request body the function never read may still be pulled by nobody: close now.
      close();
      return;
    }
    void settle(this.#waits, data.waitUntilMs).finally(close);
  }
}

async function settle(waits: Promise<unknown>[], ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<void>((resolve) => {
    timer = setTimeout(() => {
      emit('warn', [`ctx.waitUntil work still running after ${ms} ms; no longer waiting for it`]);
      resolve();
    }, ms);
  });
  await Promise.race([Promise.allSettled(waits), limit]);
  clearTimeout(timer);
}

// Last: prewarm uses the classes above, which exist only once the module has run this far.
warmed = prewarm().catch((err: unknown) => emit('warn', ['prewarming the thread failed:', err]));
