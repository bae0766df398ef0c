/**
 * RemoteStore: the Store contract as a cluster member (a node agent or a gateway) sees it,
 * through the control API's `/v1/cluster/store/*` (control/cluster/api.ts) of any control
 * replica. The agent, the snapshot builder and the informers run on it unchanged.
 *
 * - Calls go to the replica that answered last; on a connection failure or a 5xx they move to
 *   the next one, and keep trying (with a short back-off) until `callTimeoutMs`. A write that
 *   times out may or may not have happened, as with etcd itself; callers use compare-and-swap.
 * - A watch is one long NDJSON response. When it breaks (a replica dies, the network blips),
 *   it reconnects to the next replica and resumes after the last revision it delivered, so no
 *   event is lost or seen twice. While no replica answers it keeps trying (back-off up to 2 s),
 *   and the member keeps running on what it has: static stability.
 * - A watch that sees nothing, not even the replica's heartbeat, for `idleTimeoutMs` counts as
 *   broken (a replica that vanished without closing the connection).
 */
import { Agent, fetch } from 'undici';
import { type ErrorCode, errorMessage, TideError } from '../../lib/errors.ts';
import type { KeyValue, Store, TxnOp, Watch, WatchEvent, WatchListener } from '../store/index.ts';
import { WATCH_HEARTBEAT_MS } from './api.ts';

export interface RemoteStoreOptions {
  /** Control API base URLs (every replica); tried in turn. */
  urls: string[];
  joinToken: string;
  /** PEM CA bundle that verifies an https:// control API. */
  ca?: string;
  /** How long one call keeps trying the replicas, ms. Default 10000. */
  callTimeoutMs?: number;
  /** A watch stream silent this long is broken, ms. Default 3 heartbeats. */
  idleTimeoutMs?: number;
  /** Told when the store becomes unreachable and reachable again. */
  onConnectivity?: (up: boolean, detail: string) => void;
}

export class RemoteStore implements Store {
  readonly #opts: Required<Pick<RemoteStoreOptions, 'callTimeoutMs' | 'idleTimeoutMs'>> & RemoteStoreOptions;
  readonly #agent: Agent;
  readonly #watches = new Set<RemoteWatch>();
  #current = 0;
  #closed = false;
  #up = true;

  constructor(opts: RemoteStoreOptions) {
    if (opts.urls.length === 0) throw new TideError('ERR_INVALID_ARGUMENT', 'the cluster store needs at least one control URL');
    for (const u of opts.urls) {
      let parsed: URL;
      try {
        parsed = new URL(u);
      } catch {
        throw new TideError('ERR_INVALID_ARGUMENT', `--control: "${u}" is not a URL`, { hint: 'e.g. https://10.0.0.1:8081' });
      }
      if (parsed.protocol !== 'https:' && parsed.protocol !== 'http:')
        throw new TideError('ERR_INVALID_ARGUMENT', `--control: "${u}" must be an http:// or https:// URL`);
    }
    this.#opts = { callTimeoutMs: 10_000, idleTimeoutMs: 3 * WATCH_HEARTBEAT_MS + 1000, ...opts, urls: opts.urls.map((u) => u.replace(/\/+$/, '')) };
    this.#agent = new Agent({ connect: { ...(opts.ca ? { ca: opts.ca } : {}), timeout: 2000 }, keepAliveTimeout: 10_000, headersTimeout: 0, bodyTimeout: 0 });
  }

  /** The control URL calls go to now. */
  get current(): string {
    return this.#opts.urls[this.#current % this.#opts.urls.length] as string;
  }

  async get(key: string): Promise<KeyValue | undefined> {
    const r = (await this.call('store/get', { key })) as { kv: KeyValue | null };
    return r.kv ?? undefined;
  }

  async list(prefix: string): Promise<{ items: KeyValue[]; revision: number }> {
    return (await this.call('store/list', { prefix })) as { items: KeyValue[]; revision: number };
  }

  async put(key: string, value: string, options: { expectModRevision?: number; lease?: string } = {}): Promise<number> {
    return this.txn([{ type: 'put', key, value, ...options }]);
  }

  async delete(key: string, options: { expectModRevision?: number } = {}): Promise<boolean> {
    return ((await this.call('store/delete', { key, ...options })) as { deleted: boolean }).deleted;
  }

  async txn(ops: TxnOp[]): Promise<number> {
    return ((await this.call('store/txn', { ops })) as { revision: number }).revision;
  }

  async grantLease(ttlSeconds: number): Promise<string> {
    return ((await this.call('lease/grant', { ttl: ttlSeconds })) as { lease: string }).lease;
  }

  async keepAlive(lease: string): Promise<boolean> {
    return ((await this.call('lease/keepalive', { lease })) as { alive: boolean }).alive;
  }

  async revokeLease(lease: string): Promise<void> {
    await this.call('lease/revoke', { lease });
  }

  /** Any `/v1/cluster/` call: POST with a JSON body (GET when `body` is undefined). */
  async call(path: string, body?: unknown, timeoutMs = this.#opts.callTimeoutMs): Promise<unknown> {
    this.#assertOpen();
    const deadline = Date.now() + timeoutMs;
    let lastError: unknown;
    for (let attempt = 0; ; attempt++) {
      const base = this.current;
      try {
        const res = await fetch(`${base}/v1/cluster/${path}`, {
          method: body === undefined ? 'GET' : 'POST',
          headers: { authorization: `Bearer ${this.#opts.joinToken}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
          ...(body === undefined ? {} : { body: JSON.stringify(body) }),
          dispatcher: this.#agent,
          signal: AbortSignal.timeout(Math.max(500, Math.min(5000, deadline - Date.now()))),
        });
        const text = await res.text();
        if (res.status < 500) {
          this.#reachable(true, base);
          const parsed = text ? (JSON.parse(text) as Record<string, unknown>) : {};
          if (res.ok) return parsed;
          throw fromResponse(res.status, parsed, base);
        }
        lastError = fromResponse(res.status, text ? safeJson(text) : {}, base);
        // A replica that has lost the store answers 503: another may still have it.
      } catch (err) {
        if (err instanceof TideError && (err.status ?? 500) < 500) throw err;
        lastError = err;
      }
      if (this.#closed) throw new TideError('ERR_STORE_CLOSED', 'the store is closed');
      this.#current++;
      if (Date.now() >= deadline) break;
      // Each replica once at once, then a short back-off per round.
      if ((attempt + 1) % this.#opts.urls.length === 0) await sleep(Math.min(1000, 100 * (attempt + 1)));
    }
    this.#reachable(false, errorMessage(lastError));
    throw new TideError('ERR_STORE_UNAVAILABLE', `no control replica answered (${this.#opts.urls.join(', ')}): ${errorMessage(lastError)}`, {
      status: 503,
      cause: lastError,
      hint: 'check that `tide control` runs and that --control names it',
    });
  }

  watch(prefix: string, afterRevision: number, listener: WatchListener, onError?: (err: Error) => void): Watch {
    this.#assertOpen();
    const w = new RemoteWatch(this, prefix, afterRevision, listener, onError, () => this.#watches.delete(w));
    this.#watches.add(w);
    void w.run();
    return { cancel: () => w.cancel() };
  }

  /** Opens one watch stream at the current replica (for RemoteWatch). */
  async openWatch(prefix: string, after: number, signal: AbortSignal): Promise<{ body: AsyncIterable<Uint8Array>; base: string }> {
    const base = this.current;
    const res = await fetch(`${base}/v1/cluster/store/watch?prefix=${encodeURIComponent(prefix)}&after=${after}`, {
      headers: { authorization: `Bearer ${this.#opts.joinToken}` },
      dispatcher: this.#agent,
      signal,
    });
    if (!res.ok || !res.body) {
      const text = await res.text().catch(() => '');
      throw fromResponse(res.status, safeJson(text), base);
    }
    this.#reachable(true, base);
    return { body: res.body as AsyncIterable<Uint8Array>, base };
  }

  /** The watch at the current replica failed: use the next one. */
  rotate(): void {
    this.#current++;
  }

  get idleTimeoutMs(): number {
    return this.#opts.idleTimeoutMs;
  }

  get closed(): boolean {
    return this.#closed;
  }

  #reachable(up: boolean, detail: string): void {
    if (up === this.#up) return;
    this.#up = up;
    this.#opts.onConnectivity?.(up, detail);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const w of [...this.#watches]) w.cancel();
    await this.#agent.close().catch(() => {});
  }

  async destroy(): Promise<void> {
    await this.close();
  }

  #assertOpen(): void {
    if (this.#closed) throw new TideError('ERR_STORE_CLOSED', 'the store is closed');
  }
}

class RemoteWatch {
  readonly #store: RemoteStore;
  readonly #prefix: string;
  readonly #listener: WatchListener;
  readonly #onError: ((err: Error) => void) | undefined;
  readonly #done: () => void;
  #after: number;
  #cancelled = false;
  #abort: AbortController | undefined;

  constructor(store: RemoteStore, prefix: string, after: number, listener: WatchListener, onError: ((err: Error) => void) | undefined, done: () => void) {
    this.#store = store;
    this.#prefix = prefix;
    this.#after = after;
    this.#listener = listener;
    this.#onError = onError;
    this.#done = done;
  }

  cancel(): void {
    if (this.#cancelled) return;
    this.#cancelled = true;
    this.#abort?.abort();
    this.#done();
  }

  async run(): Promise<void> {
    let failures = 0;
    while (!this.#cancelled && !this.#store.closed) {
      const ac = new AbortController();
      this.#abort = ac;
      let idle: NodeJS.Timeout | undefined;
      const arm = () => {
        clearTimeout(idle);
        idle = setTimeout(() => ac.abort(new Error('the watch stream went silent')), this.#store.idleTimeoutMs);
      };
      try {
        arm();
        const { body } = await this.#store.openWatch(this.#prefix, this.#after, ac.signal);
        let buffered = '';
        const decoder = new TextDecoder();
        for await (const chunk of body) {
          arm();
          failures = 0;
          buffered += decoder.decode(chunk, { stream: true });
          let nl = buffered.indexOf('\n');
          while (nl !== -1) {
            const line = buffered.slice(0, nl);
            buffered = buffered.slice(nl + 1);
            nl = buffered.indexOf('\n');
            if (line.trim() === '') continue;
            const msg = JSON.parse(line) as { events?: WatchEvent[]; error?: { code: ErrorCode; message: string } };
            if (msg.error) {
              // The history is gone (compacted): the caller must list again. Anything else: reconnect.
              if (msg.error.code === 'ERR_STORE_COMPACTED') {
                this.#fail(new TideError('ERR_STORE_COMPACTED', msg.error.message));
                return;
              }
              throw new TideError(msg.error.code, msg.error.message);
            }
            if (!msg.events || msg.events.length === 0) continue;
            // A replica never sends what was delivered already, but a resumed stream is checked anyway.
            // JSON has no undefined: a delete's value comes back as the contract has it.
            const fresh = msg.events
              .filter((e) => e.revision > this.#after)
              .map((e) => ({ type: e.type, key: e.key, value: e.value ?? undefined, revision: e.revision }));
            if (fresh.length === 0 || this.#cancelled) continue;
            this.#after = (fresh[fresh.length - 1] as WatchEvent).revision;
            try {
              this.#listener(fresh);
            } catch (err) {
              this.#onError?.(err instanceof Error ? err : new Error(String(err)));
            }
          }
        }
      } catch (err) {
        if (this.#cancelled) return;
        if (err instanceof TideError && err.code === 'ERR_STORE_COMPACTED') {
          this.#fail(err);
          return;
        }
        if (err instanceof TideError && err.status !== undefined && err.status >= 400 && err.status < 500 && err.status !== 408 && err.status !== 429) {
          this.#fail(err);
          return;
        }
      } finally {
        clearTimeout(idle);
      }
      if (this.#cancelled) return;
      failures++;
      this.#store.rotate();
      await sleep(Math.min(2000, 50 * 2 ** Math.min(failures, 6)));
    }
  }

  #fail(err: Error): void {
    if (this.#cancelled) return;
    this.cancel();
    this.#onError?.(err);
  }
}

function fromResponse(status: number, body: Record<string, unknown>, base: string): TideError {
  const e = (body.error ?? {}) as { code?: ErrorCode; message?: string; hint?: string };
  return new TideError(e.code ?? (status >= 500 ? 'ERR_STORE_UNAVAILABLE' : 'ERR_BAD_REQUEST'), `${e.message ?? `HTTP ${status}`} (from ${base})`, {
    status,
    ...(e.hint ? { hint: e.hint } : {}),
  });
}

function safeJson(text: string): Record<string, unknown> {
  try {
    const v = JSON.parse(text) as unknown;
    return typeof v === 'object' && v !== null ? (v as Record<string, unknown>) : {};
  } catch {
    return {};
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
