/**
 * The cluster API: what node agents and gateways on other machines need from control, under
 * `/v1/cluster/`, behind the cluster's join token (not an API token: a join token lets a
 * machine take part in the cluster, nothing more).
 *
 * - `store/*`: the Store contract over HTTP (get, list, put/delete/txn with compare-and-swap,
 *   leases, and a watch as a stream of NDJSON lines). Node agents and gateways run on it exactly
 *   as they do on the embedded store; it is how they get their instances and config snapshots
 *   by watch without reaching etcd themselves. A member may read everything but the secrets
 *   (the CA's key, API tokens, the cluster's own records) and write only node registrations
 *   and revision statuses.
 * - `certificate`: a workload certificate for a function's identity or the proxies' own.
 * - `info`: the trust domain, the gateway domain and who leads now.
 * - `demand`: requests counted by gateways and nodes, for the leader's autoscaler (a replica
 *   that does not lead passes it on to the one that does).
 *
 * Every control replica serves it; the Store (etcd) is the one point of agreement, so a member
 * may talk to any replica and move to another when one goes away.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { errorMessage, isTideError, TideError } from '../../lib/errors.ts';
import type { Logger } from '../../lib/log.ts';
import { functionId, gatewayId, parseId } from '../../lib/spiffe.ts';
import type { Store, TxnOp, WatchEvent } from '../store/index.ts';
import { type DemandReport, parseDemandReport } from './demand.ts';

/** Keys a member may not read: the CA's state (its private key), API tokens, the cluster's own records. */
const SECRET_PREFIXES = ['/tide/ca/', '/tide/tokens/', '/tide/cluster/secret/'];
/** Keys a member may write: its node registration and the statuses it reports. */
const MEMBER_WRITES = ['/tide/nodes/', '/tide/status/'];

/** How often a watch stream sends an empty line, so a member notices a dead connection. */
export const WATCH_HEARTBEAT_MS = 3000;

export interface ClusterApiOptions {
  store: Store;
  /** The join token members present. */
  joinToken: string;
  trustDomain: string;
  domain: string;
  /** Issues a workload certificate (control/ca's CertificateAuthority.issue fits). */
  issue: (opts: { id: string; names?: string[] }) => Promise<{ cert: string; key: string; ca: string; serial: string; notBefore: Date; notAfter: Date }>;
  /** The leader as this replica knows it. */
  leader: () => { id: string; api: string } | undefined;
  /** A member's demand report (control/cluster/demand.ts), for the leader's autoscaler. */
  demand?: (report: DemandReport) => Promise<void>;
  log: Logger;
}

export class ClusterApi {
  readonly #opts: ClusterApiOptions;
  readonly #tokenHash: Buffer;

  constructor(opts: ClusterApiOptions) {
    if (opts.joinToken.length < 16) throw new TideError('ERR_INVALID_ARGUMENT', 'the join token must be at least 16 characters');
    this.#opts = opts;
    this.#tokenHash = sha256(opts.joinToken);
  }

  /** Answers `/v1/cluster/*`; undefined for any other path. */
  async handle(req: Request, url: URL): Promise<Response | undefined> {
    if (!url.pathname.startsWith('/v1/cluster/')) return undefined;
    this.#authenticate(req);
    const path = url.pathname.slice('/v1/cluster/'.length);
    if (path === 'store/watch' && req.method === 'GET') return this.#watch(req, url);
    if (path === 'info' && req.method === 'GET') {
      return json(200, { trustDomain: this.#opts.trustDomain, domain: this.#opts.domain, leader: this.#opts.leader() ?? null });
    }
    if (req.method !== 'POST') throw new TideError('ERR_BAD_REQUEST', `method ${req.method} not allowed on ${url.pathname}`, { status: 405 });
    const body = await readJson(req);
    const s = this.#opts.store;
    switch (path) {
      case 'store/get': {
        const key = this.#readable(str(body.key, 'key'));
        return json(200, { kv: (await s.get(key)) ?? null });
      }
      case 'store/list': {
        const prefix = str(body.prefix, 'prefix', true);
        const { items, revision } = await s.list(prefix);
        return json(200, { items: items.filter((kv) => !secret(kv.key)), revision });
      }
      case 'store/txn': {
        if (!Array.isArray(body.ops)) throw bad('ops must be an array of {type, key, …}');
        const ops = body.ops.map((op: unknown, i: number) => this.#op(op, i));
        return json(200, { revision: await s.txn(ops) });
      }
      case 'store/delete': {
        const key = this.#writable(str(body.key, 'key'));
        const expect = optionalRevision(body.expectModRevision);
        return json(200, { deleted: await s.delete(key, expect === undefined ? {} : { expectModRevision: expect }) });
      }
      case 'lease/grant': {
        const ttl = body.ttl;
        if (!Number.isInteger(ttl) || (ttl as number) < 1 || (ttl as number) > 3600) throw bad('ttl must be an integer number of seconds from 1 to 3600');
        return json(200, { lease: await s.grantLease(ttl as number) });
      }
      case 'lease/keepalive':
        return json(200, { alive: await s.keepAlive(leaseId(body.lease)) });
      case 'lease/revoke':
        await s.revokeLease(leaseId(body.lease));
        return json(200, { revoked: true });
      case 'certificate': {
        const id = str(body.id, 'id');
        const parsed = parseId(id);
        const td = this.#opts.trustDomain;
        if (!parsed || parsed.trustDomain !== td || (id !== gatewayId(td) && id !== functionId(td, parsed.namespace, parsed.name)))
          throw new TideError(
            'ERR_FORBIDDEN',
            `a cluster member may get certificates for functions and Tide's proxies of trust domain ${td} only (asked: ${id})`,
            {
              status: 403,
            },
          );
        const names = Array.isArray(body.names) ? body.names.filter((n): n is string => typeof n === 'string').slice(0, 16) : [];
        const c = await this.#opts.issue({ id, names });
        return json(200, { cert: c.cert, key: c.key, ca: c.ca, serial: c.serial, notBefore: c.notBefore.toISOString(), notAfter: c.notAfter.toISOString() });
      }
      case 'demand': {
        if (!this.#opts.demand) throw new TideError('ERR_NOT_FOUND', 'this control replica takes no demand reports', { status: 404 });
        await this.#opts.demand(parseDemandReport(body));
        return json(202, { accepted: true });
      }
      default:
        throw new TideError('ERR_NOT_FOUND', `no cluster endpoint ${url.pathname}`, { status: 404 });
    }
  }

  #authenticate(req: Request): void {
    const header = req.headers.get('authorization') ?? '';
    const m = /^Bearer (.+)$/.exec(header);
    if (!m || !timingSafeEqual(sha256(m[1] as string), this.#tokenHash)) {
      throw new TideError('ERR_UNAUTHORIZED', 'the cluster API needs the join token (Authorization: Bearer …)', {
        status: 401,
        hint: "start the node or gateway with --join-token-file FILE or $TIDE_JOIN_TOKEN (the token in the control data directory's join-token file)",
      });
    }
  }

  #readable(key: string): string {
    if (secret(key)) throw new TideError('ERR_FORBIDDEN', `cluster members may not read ${key}`, { status: 403 });
    return key;
  }

  #writable(key: string): string {
    if (!MEMBER_WRITES.some((p) => key.startsWith(p)))
      throw new TideError('ERR_FORBIDDEN', `cluster members may write only under ${MEMBER_WRITES.join(' and ')} (not ${key})`, { status: 403 });
    return key;
  }

  #op(raw: unknown, i: number): TxnOp {
    if (typeof raw !== 'object' || raw === null) throw bad(`ops[${i}] must be an object`);
    const op = raw as Record<string, unknown>;
    const key = this.#writable(str(op.key, `ops[${i}].key`));
    const expect = optionalRevision(op.expectModRevision, `ops[${i}].expectModRevision`);
    const cond = expect === undefined ? {} : { expectModRevision: expect };
    if (op.type === 'delete') return { type: 'delete', key, ...cond };
    if (op.type !== 'put') throw bad(`ops[${i}].type must be "put" or "delete"`);
    if (typeof op.value !== 'string') throw bad(`ops[${i}].value must be a string`);
    return { type: 'put', key, value: op.value, ...cond, ...(op.lease === undefined ? {} : { lease: leaseId(op.lease) }) };
  }

  /** The watch as NDJSON: `{"events":[…]}` lines, `{}` heartbeats, one `{"error":{…}}` line at the end when it fails. */
  #watch(req: Request, url: URL): Response {
    const prefix = url.searchParams.get('prefix') ?? '';
    const after = Number(url.searchParams.get('after') ?? '0');
    if (!Number.isInteger(after) || after < 0) throw bad('after must be a store revision (an integer ≥ 0)');
    const encoder = new TextEncoder();
    let stop = () => {};
    const stream = new ReadableStream<Uint8Array>({
      start: (controller) => {
        const send = (o: unknown) => {
          try {
            controller.enqueue(encoder.encode(`${JSON.stringify(o)}\n`));
          } catch {
            stop();
          }
        };
        const beat = setInterval(() => send({}), WATCH_HEARTBEAT_MS);
        const watch = this.#opts.store.watch(
          prefix,
          after,
          (events: WatchEvent[]) => {
            const visible = events.filter((e) => !secret(e.key));
            if (visible.length > 0) send({ events: visible });
          },
          (err) => {
            send({ error: { code: isTideError(err) ? err.code : 'ERR_INTERNAL', message: errorMessage(err) } });
            stop();
            try {
              controller.close();
            } catch {}
          },
        );
        stop = () => {
          clearInterval(beat);
          watch.cancel();
        };
        req.signal.addEventListener('abort', () => stop(), { once: true });
        send({});
      },
      cancel: () => stop(),
    });
    return new Response(stream, { status: 200, headers: { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store' } });
  }
}

function secret(key: string): boolean {
  return SECRET_PREFIXES.some((p) => key.startsWith(p));
}

function sha256(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}

function bad(message: string): TideError {
  return new TideError('ERR_INVALID_ARGUMENT', message, { status: 400 });
}

function str(v: unknown, what: string, allowEmpty = false): string {
  if (typeof v !== 'string' || (!allowEmpty && v.length === 0)) throw bad(`${what} must be a ${allowEmpty ? '' : 'non-empty '}string`);
  return v;
}

function optionalRevision(v: unknown, what = 'expectModRevision'): number | undefined {
  if (v === undefined || v === null) return undefined;
  if (!Number.isInteger(v) || (v as number) < 0) throw bad(`${what} must be a store revision (an integer ≥ 0)`);
  return v as number;
}

function leaseId(v: unknown): string {
  if (typeof v !== 'string' || !/^[0-9]{1,20}$/.test(v)) throw bad('lease must be a lease id (decimal digits)');
  return v;
}

async function readJson(req: Request): Promise<Record<string, unknown>> {
  const text = await req.text();
  try {
    const v = JSON.parse(text || '{}') as unknown;
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not an object');
    return v as Record<string, unknown>;
  } catch (err) {
    throw bad(`the body must be a JSON object (${errorMessage(err)})`);
  }
}

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json' } });
}
