/**
 * Messages between the worker driver (main thread) and the function host (worker thread).
 *
 * The fast path is one piscina task and its result: the task carries the request head, the
 * result carries the whole response (`end: true`). Only what cannot fit that uses a
 * MessagePort:
 *  - a request with a body: main creates the port and sends it with the task; the host pulls
 *    the body chunk by chunk (`pull` → `data` | `eof` | `body-error`), so the function's reading
 *    pace is the backpressure;
 *  - a response that is still streaming when the function's first chunk is ready: the result
 *    carries the head and first chunk (`end: false`), and the rest follows on the request's port
 *    or, for a bodiless request, on a port the host creates and transfers with the result.
 *    The host sends nothing on the port until main grants credits (`ack {n}`), which main does
 *    only after writing the head: that keeps port messages behind the result, and each chunk
 *    written to the client returns one credit (backpressure from the client socket).
 *
 *   host → main (port)  pull | data {c} | end | abort {message}
 *   main → host (port)  data {c} | eof | body-error {message} | ack {n} | cancel
 */
import type { MessagePort } from 'node:worker_threads';

export const LOG_CHANNEL = 'tide:function-logs';

/** Where worker threads send the spans a function made itself (SpanData[] per message). */
export const SPAN_CHANNEL = 'tide:function-spans';

/** Response chunks the host may have in flight before it waits for credit. */
export const RESPONSE_WINDOW = 8;

export interface HostData {
  bundleUrl: string;
  env: Record<string, string>;
  function: string;
  revision: string;
  instance: string;
  /** How long ctx.waitUntil work may run after the response, ms. */
  waitUntilMs: number;
  /** The function's way out to the mesh (a Unix socket), when the node runs one. */
  meshSocket?: string | undefined;
}

export interface RequestTask {
  kind: 'request';
  /** Present when the request has a body. */
  port?: MessagePort;
  method: string;
  url: string;
  /** Flat [name, value, name, value, …] as node's rawHeaders, hop-by-hop headers removed. */
  headers: string[];
  requestId: string;
}

/** probe: is the function loaded and the thread answering; ping: is the thread up (a warm thread has no function yet). */
export interface ControlTask {
  kind: 'probe' | 'ping';
}

/**
 * Gives a thread its function: a pre-started generic thread (the warm pool) becomes one
 * instance of one revision here, and stays that for the rest of its life.
 */
export interface LoadTask {
  kind: 'load';
  host: HostData;
}

export type Task = RequestTask | ControlTask | LoadTask;

export type TaskResult =
  | { t: 'response'; s: number; h: string[]; b?: Uint8Array; end: boolean; port?: MessagePort }
  | { t: 'error'; code: 'ERR_FUNCTION_THREW' | 'ERR_FUNCTION_BAD_RESPONSE'; message: string }
  | { t: 'ok' };

export type HostMessage = { t: 'pull' } | { t: 'data'; c: Uint8Array } | { t: 'end' } | { t: 'abort'; message: string };

export type MainMessage = { t: 'data'; c: Uint8Array } | { t: 'eof' } | { t: 'body-error'; message: string } | { t: 'ack'; n: number } | { t: 'cancel' };
