/**
 * The activator: stands in front of a function revision that cannot take a request right now
 * (scaled to zero, still starting, or every instance at its containerConcurrency limit). It
 * holds such requests in a bounded queue per revision, asks for capacity (the autoscaler scales
 * from zero at once instead of waiting for its next tick), and sends the held requests in
 * arrival order as capacity appears. Beyond the queue's size, or after waiting its timeout, a
 * request gets 503 with `retry-after`. A client that leaves while held is dropped from the queue.
 *
 * When the revision has capacity and nobody is waiting, a request goes straight through: the
 * activator is then one check on the path and nothing more.
 */
import { TideError } from '../../lib/errors.ts';
import type { Span } from '../../lib/trace/tracer.ts';
import type { ProxyRequest, ResponseHandler } from '../http/types.ts';
import { dispatchToSandbox, type SandboxEndpoint } from './sandbox.ts';

/** An endpoint the activator can wait on (runtime's RevisionEndpoint fits). */
export interface ActivatableEndpoint extends SandboxEndpoint {
  /** True when a request sent now starts at once. */
  hasCapacity(): boolean;
  /** Calls `cb` whenever capacity may have appeared; returns the unsubscribe. */
  onCapacity(cb: () => void): () => void;
  /** True once the endpoint is gone for good (its revision stopped here): held requests are routed again. */
  readonly stopped: boolean;
  /** The latest instance start of this revision (performance.now() times), for cold-start spans. */
  readonly lastStart?: { instance: string; sandbox: string; startedAt: number; readyAt: number } | undefined;
}

export interface ActivatorHooks {
  /** Asks for capacity for `revision` now (requests are waiting for it). */
  activate(revision: string): void;
  /** How many requests wait for `revision` (demand the autoscaler counts). */
  queued?(revision: string, depth: number): void;
  /** A held request for `revision` was sent on after `seconds` (for the wait histogram). */
  waited?(revision: string, seconds: number): void;
}

export interface QueueLimits {
  /** Most requests held per revision; 0 holds none (503 at once). */
  queueSize: number;
  /** Longest one request is held, ms. */
  queueTimeoutMs: number;
}

interface Held {
  req: ProxyRequest;
  handler: ResponseHandler;
  timer: NodeJS.Timeout;
  /** The revision demand is counted for (the route's), which may differ from the endpoint's while it starts. */
  revision: string;
  /** Routes the request again (when the endpoint it waits for stops). */
  again: () => void;
  /** performance.now() when it began to wait. */
  since: number;
}

class Queue {
  readonly endpoint: ActivatableEndpoint;
  readonly items: Held[] = [];
  unsubscribe: () => void = () => {};

  constructor(endpoint: ActivatableEndpoint) {
    this.endpoint = endpoint;
  }
}

/**
 * The span of a held request's wait, ended now; with a child for the instance start it waited
 * for, when one became ready while it waited.
 */
function waitSpan(held: Held, endpoint: ActivatableEndpoint, revision: string): Span {
  const root = held.req.trace as Span;
  const wait = root.child('activator wait', 'internal', 'tide', held.since);
  wait.attributes = { 'tide.revision': revision, 'faas.coldstart': false };
  const s = endpoint.lastStart;
  if (s !== undefined && s.readyAt >= held.since) {
    wait.attributes['faas.coldstart'] = true;
    // An instance started before this request came (for an earlier one) shows from the
    // request's arrival; how long the whole start took is an attribute.
    const cold = wait.child(`cold start ${s.sandbox}`, 'internal', 'tide', Math.max(s.startedAt, held.since));
    cold.attributes = {
      'tide.instance': s.instance,
      'tide.sandbox': s.sandbox,
      'tide.revision': revision,
      'tide.start_ms': Math.round((s.readyAt - s.startedAt) * 100) / 100,
    };
    cold.finish(s.readyAt);
  }
  wait.finish();
  return wait;
}

export class Activator {
  readonly #hooks: ActivatorHooks;
  readonly #queues = new Map<ActivatableEndpoint, Queue>();

  constructor(hooks: ActivatorHooks) {
    this.#hooks = hooks;
  }

  /** Requests held right now, over all revisions. */
  get depth(): number {
    let n = 0;
    for (const q of this.#queues.values()) n += q.items.length;
    return n;
  }

  /**
   * Sends `req` to `endpoint` now if it has capacity, else holds it. `revision` is the route's;
   * `again` routes the request anew if the endpoint stops while it is held.
   */
  send(endpoint: ActivatableEndpoint, revision: string, limits: QueueLimits, req: ProxyRequest, handler: ResponseHandler, again: () => void): void {
    const queue = this.#queues.get(endpoint);
    if (queue === undefined && endpoint.hasCapacity()) {
      dispatchToSandbox(endpoint, req, handler);
      return;
    }
    const q = queue ?? this.#open(endpoint);
    if (q.items.length >= limits.queueSize) {
      this.#closeIfEmpty(q);
      handler.onError(
        new TideError(
          'ERR_ACTIVATOR_QUEUE_FULL',
          `${revision} has no free instance and ${q.items.length} requests already wait for one (queueSize ${limits.queueSize})`,
          { status: 503, details: { retryAfterSeconds: 1 } },
        ),
      );
      this.#hooks.activate(revision);
      return;
    }
    const held: Held = {
      req,
      handler,
      revision,
      again,
      since: performance.now(),
      timer: setTimeout(() => {
        if (!this.#remove(q, held)) return;
        if (req.trace !== undefined) waitSpan(held, q.endpoint, revision).fail('no free instance in time');
        handler.onError(
          new TideError('ERR_ACTIVATOR_TIMEOUT', `${revision} found no free instance within ${limits.queueTimeoutMs} ms (queueTimeout)`, {
            status: 503,
            details: { retryAfterSeconds: Math.max(1, Math.ceil(limits.queueTimeoutMs / 1000)) },
          }),
        );
      }, limits.queueTimeoutMs),
    };
    held.timer.unref();
    q.items.push(held);
    req.cancel = (err) => {
      if (this.#remove(q, held)) handler.onError(err);
    };
    this.#hooks.queued?.(revision, q.items.length);
    this.#hooks.activate(revision);
    // Capacity may have appeared between the check and now (a request ended synchronously).
    this.#flush(q);
  }

  #open(endpoint: ActivatableEndpoint): Queue {
    const q = new Queue(endpoint);
    q.unsubscribe = endpoint.onCapacity(() => this.#flush(q));
    this.#queues.set(endpoint, q);
    return q;
  }

  /** Sends held requests, oldest first, while the endpoint has capacity. */
  #flush(q: Queue): void {
    if (q.endpoint.stopped) {
      this.#queues.delete(q.endpoint);
      q.unsubscribe();
      for (const held of q.items.splice(0)) {
        clearTimeout(held.timer);
        held.req.cancel = undefined;
        held.again();
      }
      return;
    }
    while (q.items.length > 0 && q.endpoint.hasCapacity()) {
      const held = q.items.shift() as Held;
      clearTimeout(held.timer);
      held.req.cancel = undefined;
      this.#hooks.queued?.(held.revision, q.items.length);
      this.#hooks.waited?.(held.revision, (performance.now() - held.since) / 1000);
      const cold = held.req.trace === undefined ? false : waitSpan(held, q.endpoint, held.revision).attributes['faas.coldstart'] === true;
      dispatchToSandbox(q.endpoint, held.req, held.handler, cold);
    }
    this.#closeIfEmpty(q);
  }

  #remove(q: Queue, held: Held): boolean {
    const i = q.items.indexOf(held);
    if (i === -1) return false;
    q.items.splice(i, 1);
    clearTimeout(held.timer);
    held.req.cancel = undefined;
    this.#hooks.queued?.(held.revision, q.items.length);
    this.#closeIfEmpty(q);
    return true;
  }

  #closeIfEmpty(q: Queue): void {
    if (q.items.length > 0 || this.#queues.get(q.endpoint) !== q) return;
    q.unsubscribe();
    this.#queues.delete(q.endpoint);
  }

  /** Answers every held request with 503 (the gateway is shutting down). */
  close(): void {
    for (const q of [...this.#queues.values()]) {
      for (const held of q.items.splice(0)) {
        clearTimeout(held.timer);
        held.req.cancel = undefined;
        held.handler.onError(new TideError('ERR_ACTIVATOR_TIMEOUT', `${held.revision}: the gateway is shutting down`, { status: 503 }));
      }
      this.#closeIfEmpty(q);
    }
  }
}
