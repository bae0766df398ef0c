/**
 * The function host: runs inside each worker thread of a worker-sandbox instance (piscina
 * loads this file). It imports the function's bundle once, turns each request task into a
 * Web Request, calls `fetch(request, env, ctx)` and streams the Response back over the task's
 * MessagePort (see protocol.ts). It captures console output into the function's log channel.
 * A throw fails only its own request; it must never take the thread down.
 */
import { format } from 'node:util';
import { workerData } from 'piscina';
import { type HostData, type HostMessage, LOG_CHANNEL, type MainMessage, RESPONSE_WINDOW, type RequestTask, type Task } from './protocol.ts';

interface FetchHandler {
  fetch(request: Request, env: Record<string, string>, ctx: ExecutionContext): unknown;
}

interface ExecutionContext {
  waitUntil(promise: unknown): void;
  passThroughOnException(): void;
}

const data = workerData as HostData;
const env = Object.freeze({ ...data.env });
const logs = new BroadcastChannel(LOG_CHANNEL);

function emit(level: string, args: unknown[]): void {
  logs.postMessage({
    time: new Date().toISOString(),
    function: data.function,
    revision: data.revision,
    instance: data.instance,
    level,
    message: format(...args),
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
process.on('unhandledRejection', (reason) => emit('error', ['unhandled rejection:', reason]));
process.on('uncaughtException', (err) => emit('error', ['uncaught exception:', err]));

let loading: Promise<FetchHandler> | undefined;

function load(): Promise<FetchHandler> {
  loading ??= import(data.bundleUrl).then((mod: { default?: unknown }) => {
    const handler = mod.default as FetchHandler | undefined;
    if (!handler || typeof handler.fetch !== 'function') {
      throw new Error('the module has no `export default { fetch(request, env, ctx) { … } }`');
    }
    return handler;
  });
  return loading;
}

export default async function run(task: Task): Promise<{ ok: true }> {
  if (task.kind !== 'request') {
    await load();
    return { ok: true };
  }
  await serve(await load(), task);
  return { ok: true };
}

async function serve(handler: FetchHandler, task: RequestTask): Promise<void> {
  const port = task.port;
  const abort = new AbortController();
  const waits: Promise<unknown>[] = [];
  let body: ReadableStreamDefaultController<Uint8Array> | undefined;
  let pulled: (() => void) | undefined;
  let credits = RESPONSE_WINDOW;
  let creditWaiter: (() => void) | undefined;
  const post = (m: HostMessage) => port.postMessage(m);

  port.on('message', (m: MainMessage) => {
    switch (m.t) {
      case 'data':
        body?.enqueue(m.c);
        pulled?.();
        break;
      case 'eof':
        body?.close();
        pulled?.();
        break;
      case 'body-error':
        body?.error(new Error(m.message));
        pulled?.();
        break;
      case 'ack':
        credits++;
        creditWaiter?.();
        break;
      case 'cancel':
        abort.abort(new DOMException('the request was cancelled', 'AbortError'));
        creditWaiter?.();
        break;
    }
  });

  const stream = task.hasBody
    ? new ReadableStream<Uint8Array>(
        {
          start: (controller) => {
            body = controller;
          },
          pull: () =>
            new Promise<void>((resolve) => {
              pulled = resolve;
              post({ t: 'pull' });
            }),
        },
        { highWaterMark: 0 },
      )
    : null;

  const headers = new Headers();
  for (let i = 0; i + 1 < task.headers.length; i += 2) headers.append(task.headers[i] as string, task.headers[i + 1] as string);
  const request = new Request(task.url, {
    method: task.method,
    headers,
    body: stream,
    signal: abort.signal,
    duplex: 'half',
  } as RequestInit);
  const ctx: ExecutionContext = {
    waitUntil(promise) {
      waits.push(Promise.resolve(promise).catch((err: unknown) => emit('error', ['waitUntil promise rejected:', err])));
    },
    passThroughOnException() {},
  };

  try {
    let response: unknown;
    try {
      response = await handler.fetch(request, env, ctx);
    } catch (err) {
      emit('error', [`request ${task.requestId} failed:`, err]);
      post({ t: 'error', code: 'ERR_FUNCTION_THREW', message: err instanceof Error ? `${err.name}: ${err.message}` : String(err) });
      return;
    }
    if (!(response instanceof Response)) {
      const got = response === null ? 'null' : typeof response;
      emit('error', [`request ${task.requestId}: fetch() returned ${got}, not a Response`]);
      post({ t: 'error', code: 'ERR_FUNCTION_BAD_RESPONSE', message: `fetch() must return a Response (got ${got})` });
      return;
    }
    const h: string[] = [];
    response.headers.forEach((value, name) => {
      if (name !== 'set-cookie') h.push(name, value);
    });
    for (const cookie of response.headers.getSetCookie()) h.push('set-cookie', cookie);
    if (!response.body || task.method === 'HEAD') {
      post({ t: 'head', s: response.status, h, end: true });
      return;
    }
    await sendBody(response.body, response.status, h);
  } finally {
    if (waits.length > 0) await settle(waits, data.waitUntilMs);
    port.close();
  }

  async function sendBody(source: ReadableStream<Uint8Array>, status: number, h: string[]): Promise<void> {
    const reader = source.getReader();
    abort.signal.addEventListener('abort', () => void reader.cancel().catch(() => {}), { once: true });
    try {
      const first = await reader.read();
      if (first.done) {
        post({ t: 'head', s: status, h, end: true });
        return;
      }
      // Small bodies usually arrive whole: if the stream ends at once, send one message.
      let next = reader.read();
      const soon = await Promise.race([next, new Promise<null>((r) => setImmediate(r, null))]);
      if (soon?.done) {
        post({ t: 'head', s: status, h, b: first.value, end: true });
        return;
      }
      post({ t: 'head', s: status, h, b: first.value });
      for (;;) {
        const chunk = await next;
        if (chunk.done) break;
        if (abort.signal.aborted) return;
        if (credits === 0) await new Promise<void>((r) => (creditWaiter = r));
        if (abort.signal.aborted) return;
        credits--;
        post({ t: 'data', c: chunk.value });
        next = reader.read();
      }
      post({ t: 'end' });
    } catch (err) {
      if (abort.signal.aborted) return;
      emit('error', [`request ${task.requestId}: response body failed:`, err]);
      post({ t: 'abort', message: err instanceof Error ? err.message : String(err) });
    }
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
