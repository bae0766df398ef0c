/**
 * The Store on etcd (v3 API over gRPC, through the `etcd3` client), for Tide clusters whose
 * control replicas share state. Same contract as SQLite and memory: etcd's revisions are the
 * store's revisions (one per transaction), `expectModRevision` is an etcd txn compare on
 * mod_revision (0 = the key does not exist), leases are etcd leases.
 *
 * Design choices:
 * - Keys and values are UTF-8 strings. An optional `prefix` is prepended to every key and taken
 *   off everything returned, so several Tide clusters (or tests) can share one etcd.
 * - Calls go to any member (etcd3's pool picks one at random per call). etcd3's own retry and
 *   per-host circuit breaker are replaced by one loop here: a call keeps trying members, with a
 *   short back-off, until `requestTimeoutMs`, and then fails with ERR_STORE_UNAVAILABLE (503)
 *   naming the endpoints. Reads retry on any transient error; writes only when the request
 *   surely was not applied (no connection, no leader, proposal dropped), because retrying a
 *   write whose answer was lost could apply it twice or report a conflict with itself. Such an
 *   ambiguous write fails with ERR_STORE_UNAVAILABLE saying it may have been applied, as
 *   etcd's own clients do; callers use compare-and-swap and re-read.
 * - Watches do not use etcd3's Watcher: on reconnect it resumes after the revision of the last
 *   response *header*, and the header of a watch's creation (or of a catch-up batch) carries
 *   the member's current revision, not the last event sent, so a disconnect during catch-up
 *   skips events. Here each watch is its own gRPC stream that remembers the next revision to
 *   deliver (the last delivered + 1, or a progress notification's revision + 1), reopens on any
 *   member after a disconnect and drops anything below it: no gap, no duplicate. Events of one
 *   transaction are never split across responses (etcd batches whole revisions), and each
 *   response is one listener call.
 * - A watch whose start is compacted away fails with ERR_STORE_COMPACTED; the informer relists.
 * - keepAlive works for any lease id, not only those this client granted: it opens a
 *   LeaseKeepAlive stream, sends the id once, reads etcd's answer (TTL 0 = gone) and closes it.
 *   etcd3's Lease class cannot adopt an existing id.
 * - A transaction may write a key only once (etcd refuses duplicates; ERR_INVALID_ARGUMENT) and
 *   holds at most etcd's --max-txn-ops operations (128 by default).
 */
import { createRequire } from 'node:module';
import type * as Etcd3Lib from 'etcd3';
import type { Etcd3, ICompare, IDuplexStream, IKeyValue, IOptions, IRequestOp, IWatchRequest, IWatchResponse, KVClient } from 'etcd3';
import { errorMessage, TideError } from '../../lib/errors.ts';
import { checkKey, checkLeaseId, checkTtl, compacted, conflict, leaseNotFound } from './errors.ts';
import type { KeyValue, PutOptions, Store, TxnOp, Watch, WatchEvent, WatchListener } from './store.ts';

export interface EtcdStoreOptions {
  /**
   * Prepended to every key in etcd and removed from every key returned, e.g. `/tide/prod`.
   * Default '' (keys are used as they are).
   */
  prefix?: string;
  /**
   * How long one call keeps trying the members before it fails with ERR_STORE_UNAVAILABLE, ms.
   * Default 5000; at least 100.
   */
  requestTimeoutMs?: number;
}

let lib: typeof Etcd3Lib | undefined;
/** etcd3 (and gRPC with it) loads on first use, so processes on SQLite never pay for it (~80 ms). */
function etcd3(): typeof Etcd3Lib {
  lib ??= createRequire(import.meta.url)('etcd3') as typeof Etcd3Lib;
  return lib;
}

type CallOptions = NonNullable<Parameters<KVClient['range']>[1]>;
type Policy = NonNullable<NonNullable<IOptions['faultHandling']>['global']>;

type Execute = <T>(fn: (ctx: { signal: AbortSignal }) => PromiseLike<T> | T) => Promise<T>;
const policy = (execute: Execute) => ({ execute }) as unknown as Policy;

/** The pool-wide policy: run the call once; retries and fail-over are this module's (#call). */
const once = policy(async (fn) => fn({ signal: new AbortController().signal }));

/** Thrown for a member skipped because it failed lately; the pool then tries the next one. */
class MemberSkipped extends Error {}

/**
 * Which members failed lately. etcd3's pool picks a member at random per call; a member whose
 * connection failed (refused, dropped, timed out) in the last MEMBER_COOLDOWN_MS is skipped
 * while another one has not failed, so calls stop going to a dead or unreachable member (one that
 * does not answer at all would otherwise cost each call routed to it ATTEMPT_MS). With every
 * member failing, all are tried: a restarted single member is used at once.
 */
class MemberHealth {
  readonly #downUntil = new Map<string, number>();

  policy(host: string): Policy {
    return policy(async (fn) => {
      const now = Date.now();
      if ((this.#downUntil.get(host) ?? 0) > now && [...this.#downUntil.values()].some((t) => t <= now)) throw new MemberSkipped(host);
      try {
        return await fn({ signal: new AbortController().signal });
      } catch (err) {
        if (err instanceof etcd3().GRPCUnavailableError || err instanceof etcd3().GRPCDeadlineExceededError) {
          this.#downUntil.set(host, Date.now() + MEMBER_COOLDOWN_MS);
        }
        throw err;
      }
    });
  }

  add(host: string): void {
    this.#downUntil.set(host, 0);
  }
}

/** One attempt on one member gets at most this long (a member that hangs is given up on). */
const ATTEMPT_MS = 2000;
const BACKOFF_FIRST_MS = 25;
const BACKOFF_MAX_MS = 250;
const MEMBER_COOLDOWN_MS = 2000;
const LIST_PAGE = 1000;
/** Errors after which a write surely was not applied, so trying again is safe. */
const UNSENT = /No connection established|ECONNREFUSED|etcdserver: no leader|proposal dropped|etcdserver: too many requests/;

/**
 * Parses `etcd://host[:port][,host[:port]…]` (port 2379 when left out; `etcd+https://` for TLS)
 * into the members' client URLs, `http://host:port` each.
 */
export function parseEtcdUrl(s: string): string[] {
  const bad = (rule: string) =>
    new TideError('ERR_CONFIG_INVALID', `etcd URL ${JSON.stringify(s)}: ${rule}`, {
      hint: 'write it as etcd://host:port[,host:port…], e.g. etcd://10.0.0.1:2379,10.0.0.2:2379',
    });
  const m = /^(etcd|etcd\+https):\/\/(.*)$/.exec(s.trim());
  if (!m) throw bad('must start with etcd:// (or etcd+https://)');
  const scheme = m[1] === 'etcd' ? 'http' : 'https';
  const rest = (m[2] as string).replace(/\/$/, '');
  if (rest === '') throw bad('names no member');
  if (/[/?#@]/.test(rest)) throw bad('must hold only host:port pairs separated by commas (no path, query or credentials)');
  return rest.split(',').map((part) => {
    const hp = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(?::([0-9]+))?$/.exec(part.trim());
    if (!hp) throw bad(`"${part}" is not host:port`);
    const port = hp[2] === undefined ? 2379 : Number(hp[2]);
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw bad(`port of "${part}" must be 1-65535`);
    return `${scheme}://${hp[1]}:${port}`;
  });
}

/** Accepts etcd:// URLs and http(s)://host:port member URLs, one or several. */
function endpointsOf(url: string | string[]): string[] {
  const list = (Array.isArray(url) ? url : [url]).flatMap((u) => (u.trim().startsWith('etcd') ? parseEtcdUrl(u) : [u.trim()]));
  if (list.length === 0) throw new TideError('ERR_CONFIG_INVALID', 'the etcd store needs at least one endpoint');
  for (const u of list) {
    if (!/^https?:\/\/(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$/.test(u)) {
      throw new TideError('ERR_CONFIG_INVALID', `etcd endpoint ${JSON.stringify(u)} must be http(s)://host:port or an etcd:// URL`);
    }
  }
  if (new Set(list.map((u) => u.startsWith('https:'))).size > 1) {
    throw new TideError('ERR_CONFIG_INVALID', `etcd endpoints must all use TLS or none: ${list.join(', ')}`);
  }
  return list;
}

/** Creates a Store on the etcd cluster at `url` (an etcd:// URL or a list of member URLs). */
export function createEtcdStore(url: string | string[], options: EtcdStoreOptions = {}): EtcdStore {
  return new EtcdStore(endpointsOf(url), options);
}

export class EtcdStore implements Store {
  readonly #endpoints: string[];
  readonly #client: Etcd3;
  readonly #ns: string;
  readonly #timeoutMs: number;
  readonly #watches = new Set<EtcdWatch>();
  #closed = false;

  constructor(endpoints: string[], options: EtcdStoreOptions = {}) {
    const timeout = options.requestTimeoutMs ?? 5000;
    if (!Number.isFinite(timeout) || timeout < 100) {
      throw new TideError('ERR_CONFIG_INVALID', `requestTimeoutMs must be a number ≥ 100 (got ${timeout})`);
    }
    this.#endpoints = endpoints;
    this.#ns = options.prefix ?? '';
    this.#timeoutMs = timeout;
    const health = new MemberHealth();
    this.#client = new (etcd3().Etcd3)({
      hosts: endpoints,
      grpcOptions: {
        // A member that vanished without closing the connection is noticed within 15 s.
        'grpc.keepalive_time_ms': 10_000,
        'grpc.keepalive_timeout_ms': 5_000,
        // A restarted member is reconnected to quickly.
        'grpc.initial_reconnect_backoff_ms': 100,
        'grpc.max_reconnect_backoff_ms': 1_000,
        'grpc.max_receive_message_length': 64 * 1024 * 1024,
      },
      faultHandling: {
        global: once,
        host: (host) => {
          health.add(host);
          return health.policy(host);
        },
      },
    });
  }

  /** The member URLs this store talks to. */
  get endpoints(): readonly string[] {
    return this.#endpoints;
  }

  async get(key: string): Promise<KeyValue | undefined> {
    checkKey(key);
    const res = await this.#call(`reading ${key}`, 'read', (o) => this.#client.kv.range({ key: this.#key(key) }, o));
    const kv = res.kvs[0];
    return kv ? this.#kv(kv) : undefined;
  }

  async list(prefix: string): Promise<{ items: KeyValue[]; revision: number }> {
    const start = this.#key(prefix);
    const end = prefixEnd(start);
    // Pages read at the revision of the first, so the list is one consistent snapshot; if that
    // revision is compacted between pages, the list starts over.
    for (let round = 0; ; round++) {
      const items: KeyValue[] = [];
      let revision: string | undefined;
      let from = start.length === 0 ? Buffer.from([0]) : start;
      try {
        for (;;) {
          const req = { key: from, range_end: end, limit: LIST_PAGE, ...(revision ? { revision } : {}) };
          const res = await this.#call(`listing ${prefix}`, 'read', (o) => this.#client.kv.range(req, o));
          revision ??= res.header.revision;
          for (const kv of res.kvs) items.push(this.#kv(kv));
          const last = res.kvs.at(-1);
          if (!res.more || !last) break;
          from = Buffer.concat([last.key, Buffer.from([0])]);
        }
        return { items, revision: Number(revision) };
      } catch (err) {
        if (round < 2 && err instanceof TideError && err.cause instanceof etcd3().GRPCOutOfRangeError) continue;
        throw err;
      }
    }
  }

  async put(key: string, value: string, options: PutOptions = {}): Promise<number> {
    return this.txn([{ type: 'put', key, value, ...options }]);
  }

  async delete(key: string, options: { expectModRevision?: number } = {}): Promise<boolean> {
    checkKey(key);
    const res = await this.#txn([{ type: 'delete', key, ...options }]);
    return Number(res.responses[0]?.response_delete_range?.deleted ?? 0) > 0;
  }

  async txn(ops: TxnOp[]): Promise<number> {
    if (ops.length === 0) {
      this.#assertOpen();
      const res = await this.#call('reading the revision', 'read', (o) => this.#client.kv.range({ key: Buffer.from([0]), count_only: true }, o));
      return Number(res.header.revision);
    }
    return Number((await this.#txn(ops)).header.revision);
  }

  watch(prefix: string, afterRevision: number, listener: WatchListener, onError?: (err: Error) => void): Watch {
    this.#assertOpen();
    const start = this.#key(prefix);
    const w = new EtcdWatch(this.#client, start.length === 0 ? Buffer.from([0]) : start, prefixEnd(start), this.#ns, afterRevision, listener, onError, () =>
      this.#watches.delete(w),
    );
    this.#watches.add(w);
    return w;
  }

  async grantLease(ttlSeconds: number): Promise<string> {
    checkTtl(ttlSeconds);
    // A grant whose answer was lost leaves an unused lease that expires on its own: safe to retry.
    const res = await this.#call('granting a lease', 'read', (o) => this.#client.leaseClient.leaseGrant({ TTL: ttlSeconds }, o));
    return res.ID;
  }

  async keepAlive(lease: string): Promise<boolean> {
    checkLeaseId(lease);
    return this.#call(`keeping lease ${lease} alive`, 'read', async (o) => {
      const stream = await this.#client.leaseClient.leaseKeepAlive(o);
      try {
        return await new Promise<boolean>((resolve, reject) => {
          stream.on('data', (res) => resolve(Number(res.TTL) > 0));
          stream.on('error', (err) => reject(etcd3().castGrpcError(err)));
          stream.on('end', () => reject(new Error('the keep-alive stream ended without an answer')));
          stream.write({ ID: lease });
        });
      } finally {
        closeStream(stream);
      }
    });
  }

  async revokeLease(lease: string): Promise<void> {
    checkLeaseId(lease);
    try {
      await this.#call(`revoking lease ${lease}`, 'read', (o) => this.#client.leaseClient.leaseRevoke({ ID: lease }, o), lease);
    } catch (err) {
      if (err instanceof TideError && err.code === 'ERR_STORE_LEASE_NOT_FOUND') return;
      throw err;
    }
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const w of this.#watches) w.cancel();
    this.#client.close();
  }

  async destroy(): Promise<void> {
    await this.close();
  }

  async #txn(ops: TxnOp[]) {
    const seen = new Set<string>();
    const compare: ICompare[] = [];
    const success: IRequestOp[] = [];
    const failure: IRequestOp[] = [];
    for (const op of ops) {
      checkKey(op.key);
      if (seen.has(op.key)) throw new TideError('ERR_INVALID_ARGUMENT', `a transaction may write ${op.key} only once (etcd refuses duplicates)`);
      seen.add(op.key);
      const key = this.#key(op.key);
      if (op.expectModRevision !== undefined) {
        compare.push({ key, target: 'Mod', result: 'Equal', mod_revision: op.expectModRevision });
        // On failure, read what is there, to say which condition failed and why.
        failure.push({ request_range: { key, keys_only: true } });
      }
      if (op.type === 'put') {
        if (op.lease !== undefined) checkLeaseId(op.lease);
        success.push({ request_put: { key, value: Buffer.from(op.value, 'utf8'), ...(op.lease === undefined ? {} : { lease: op.lease }) } });
      } else {
        success.push({ request_delete_range: { key } });
      }
    }
    const what = ops.length === 1 ? `writing ${(ops[0] as TxnOp).key}` : `writing ${ops.length} keys`;
    const leases = [...new Set(ops.flatMap((op) => (op.type === 'put' && op.lease !== undefined ? [op.lease] : [])))];
    const res = await this.#call(what, 'write', (o) => this.#client.kv.txn({ compare, success, failure }, o), leases.join(' or '));
    if (!res.succeeded) {
      const conditional = ops.filter((op) => op.expectModRevision !== undefined);
      conditional.forEach((op, i) => {
        const actual = Number(res.responses[i]?.response_range.kvs[0]?.mod_revision ?? 0);
        if (actual !== op.expectModRevision) throw conflict(op.key, op.expectModRevision as number, actual);
      });
      const first = conditional[0] as TxnOp;
      throw conflict(first.key, first.expectModRevision as number, first.expectModRevision as number);
    }
    return res;
  }

  /**
   * Runs one gRPC call, trying again (on any member, with back-off) until requestTimeoutMs:
   * reads on any transient error, writes only when the request surely was not applied.
   */
  async #call<T>(what: string, kind: 'read' | 'write', fn: (options: CallOptions) => Promise<T>, lease?: string): Promise<T> {
    this.#assertOpen();
    const deadline = Date.now() + this.#timeoutMs;
    let backoff = BACKOFF_FIRST_MS;
    for (;;) {
      try {
        return await fn({ deadline: Math.min(deadline, Date.now() + ATTEMPT_MS) });
      } catch (err) {
        if (this.#closed || err instanceof etcd3().ClientClosedError) throw new TideError('ERR_STORE_CLOSED', 'the store is closed', { cause: err });
        if (err instanceof etcd3().EtcdLeaseInvalidError) throw leaseNotFound(lease ?? '(unknown)');
        if (err instanceof etcd3().GRPCInvalidArgumentError) {
          throw new TideError('ERR_INVALID_ARGUMENT', `${what}: etcd refused the request: ${errorMessage(err)}`, { status: 400, cause: err });
        }
        const skipped = err instanceof MemberSkipped; // every member skipped: nothing was sent
        const transient = skipped || (err instanceof Error && etcd3().isRecoverableError(err));
        if (!transient) throw new TideError('ERR_INTERNAL', `${what}: etcd failed: ${errorMessage(err)}`, { cause: err });
        if (kind === 'write' && !skipped && !UNSENT.test(errorMessage(err))) {
          throw this.#unavailable(what, err, ' (the write may or may not have been applied)');
        }
        if (Date.now() + backoff >= deadline) throw this.#unavailable(what, err, '');
        await new Promise((r) => setTimeout(r, backoff));
        backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
      }
    }
  }

  #unavailable(what: string, err: unknown, note: string): TideError {
    const detail = errorMessage(err)
      .replace(/\s*Resolution note:.*$/s, '')
      .slice(0, 300);
    return new TideError('ERR_STORE_UNAVAILABLE', `${what}: etcd at ${this.#endpoints.join(', ')} is unavailable${note}: ${detail}`, {
      status: 503,
      cause: err,
      hint: 'check that the etcd members run and that this machine reaches them',
      details: { endpoints: this.#endpoints },
    });
  }

  #key(key: string): Buffer {
    return Buffer.from(this.#ns + key, 'utf8');
  }

  #kv(kv: IKeyValue): KeyValue {
    return {
      key: kv.key.toString('utf8').slice(this.#ns.length),
      value: kv.value.toString('utf8'),
      createRevision: Number(kv.create_revision),
      modRevision: Number(kv.mod_revision),
      version: Number(kv.version),
      ...(kv.lease && kv.lease !== '0' ? { lease: kv.lease } : {}),
    };
  }

  #assertOpen(): void {
    if (this.#closed) throw new TideError('ERR_STORE_CLOSED', 'the store is closed');
  }
}

/**
 * One watch on its own gRPC stream. `#next` is the first revision not yet delivered: the stream
 * is (re)created from there, and anything older that arrives is dropped.
 */
class EtcdWatch implements Watch {
  readonly #client: Etcd3;
  readonly #key: Buffer;
  readonly #end: Buffer;
  readonly #ns: string;
  readonly #listener: WatchListener;
  readonly #onError: ((err: Error) => void) | undefined;
  readonly #forget: () => void;
  readonly #after: number;
  #next: number;
  #stream: IDuplexStream<IWatchRequest, IWatchResponse> | undefined;
  #timer: NodeJS.Timeout | undefined;
  #backoff = 50;
  #cancelled = false;

  constructor(
    client: Etcd3,
    key: Buffer,
    end: Buffer,
    ns: string,
    afterRevision: number,
    listener: WatchListener,
    onError: ((err: Error) => void) | undefined,
    forget: () => void,
  ) {
    this.#client = client;
    this.#key = key;
    this.#end = end;
    this.#ns = ns;
    this.#after = afterRevision;
    this.#next = Math.max(afterRevision, 0) + 1;
    this.#listener = listener;
    this.#onError = onError;
    this.#forget = forget;
    void this.#open();
  }

  cancel(): void {
    if (this.#cancelled) return;
    this.#cancelled = true;
    clearTimeout(this.#timer);
    if (this.#stream) closeStream(this.#stream);
    this.#stream = undefined;
    this.#forget();
  }

  async #open(): Promise<void> {
    let stream: IDuplexStream<IWatchRequest, IWatchResponse>;
    try {
      stream = await this.#client.watchClient.watch();
    } catch {
      this.#retry();
      return;
    }
    if (this.#cancelled) {
      closeStream(stream);
      return;
    }
    this.#stream = stream;
    stream.on('data', (res) => this.#onResponse(stream, res));
    stream.on('error', () => this.#onBroken(stream));
    stream.on('end', () => this.#onBroken(stream));
    stream.write({
      create_request: { key: this.#key, range_end: this.#end, start_revision: String(this.#next), progress_notify: true },
    });
  }

  #onResponse(stream: IDuplexStream<IWatchRequest, IWatchResponse>, res: IWatchResponse): void {
    if (stream !== this.#stream || this.#cancelled) return;
    if (res.compact_revision && res.compact_revision !== '0') {
      this.cancel();
      this.#onError?.(compacted(this.#after, Number(res.compact_revision)));
      return;
    }
    if (res.canceled) {
      // Cancelled by the member for another reason (it lost its leader, for one): reconnect.
      this.#onBroken(stream);
      return;
    }
    if (res.created) {
      // Its header has the member's current revision, not what was sent: not a resume point.
      this.#backoff = 50;
      return;
    }
    if (res.events.length === 0) {
      // A progress notification: everything up to the header's revision has been sent.
      this.#next = Math.max(this.#next, Number(res.header.revision) + 1);
      return;
    }
    const events: WatchEvent[] = [];
    for (const e of res.events) {
      const revision = Number(e.kv.mod_revision);
      if (revision < this.#next) continue;
      const key = e.kv.key.toString('utf8').slice(this.#ns.length);
      events.push(e.type === 'Put' ? { type: 'put', key, value: e.kv.value.toString('utf8'), revision } : { type: 'delete', key, value: undefined, revision });
    }
    if (events.length === 0) return;
    this.#next = (events.at(-1) as WatchEvent).revision + 1;
    try {
      this.#listener(events);
    } catch (err) {
      this.#onError?.(err instanceof Error ? err : new Error(String(err)));
    }
  }

  #onBroken(stream: IDuplexStream<IWatchRequest, IWatchResponse>): void {
    if (stream !== this.#stream || this.#cancelled) return;
    this.#stream = undefined;
    closeStream(stream);
    this.#retry();
  }

  #retry(): void {
    if (this.#cancelled) return;
    this.#timer = setTimeout(() => void this.#open(), this.#backoff);
    this.#backoff = Math.min(this.#backoff * 2, 1000);
  }
}

/**
 * Ends a stream from this side. end() first: etcd3 treats an error on a still-writable stream
 * (which cancel() alone produces) as a failed member and closes every channel to it.
 */
function closeStream(stream: { on(event: 'error', fn: (err: Error) => void): unknown; end(): void; cancel(): void }): void {
  stream.on('error', () => {});
  stream.end();
  stream.cancel();
}

/** The smallest key greater than every key starting with `prefix` (etcd's range_end); [0] = no end. */
function prefixEnd(prefix: Buffer): Buffer {
  const end = Buffer.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if ((end[i] as number) < 0xff) {
      end[i] = (end[i] as number) + 1;
      return end.subarray(0, i + 1);
    }
  }
  return Buffer.from([0]);
}
