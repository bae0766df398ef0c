/**
 * Messages between the worker driver (main thread) and the function host (worker thread).
 * One MessageChannel per request carries the request body down and the response up:
 *
 *   host → main  pull                      the function wants the next request-body chunk
 *   main → host  data {c} | eof | body-error {message}
 *   host → main  head {s, h, b?, end?}     status, headers; with `end` the whole body is in `b`
 *   host → main  data {c} … end            streamed body; main answers each chunk with ack
 *   main → host  ack                       one chunk written to the client (flow-control credit)
 *   host → main  error {code, message}     the function threw or returned no Response
 *   host → main  abort {message}           the body stream failed after the head went out
 *   main → host  cancel                    the client went away or the request timed out
 */
import type { MessagePort } from 'node:worker_threads';

export const LOG_CHANNEL = 'tide:function-logs';

/** Chunks the host may send before it waits for an ack. */
export const RESPONSE_WINDOW = 8;

export interface HostData {
  bundleUrl: string;
  env: Record<string, string>;
  function: string;
  revision: string;
  instance: string;
  /** How long ctx.waitUntil work may run after the response, ms. */
  waitUntilMs: number;
}

export interface RequestTask {
  kind: 'request';
  port: MessagePort;
  method: string;
  url: string;
  /** Flat [name, value, name, value, …] as node's rawHeaders, hop-by-hop headers removed. */
  headers: string[];
  hasBody: boolean;
  requestId: string;
}

export interface ControlTask {
  kind: 'load' | 'probe';
}

export type Task = RequestTask | ControlTask;

export type HostMessage =
  | { t: 'pull' }
  | { t: 'head'; s: number; h: string[]; b?: Uint8Array; end?: boolean }
  | { t: 'data'; c: Uint8Array }
  | { t: 'end' }
  | { t: 'error'; code: 'ERR_FUNCTION_THREW' | 'ERR_FUNCTION_BAD_RESPONSE'; message: string }
  | { t: 'abort'; message: string };

export type MainMessage = { t: 'data'; c: Uint8Array } | { t: 'eof' } | { t: 'body-error'; message: string } | { t: 'ack' } | { t: 'cancel' };
