/**
 * Cluster pieces on the in-memory store: the cluster API's access rules, the Store contract
 * over HTTP (RemoteStore ↔ ClusterApi) including a watch that resumes on another replica,
 * leader election on leases, and demand reports.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { ClusterApi } from '../../control/cluster/api.ts';
import { DemandCollector, DemandReporter, parseDemandReport } from '../../control/cluster/demand.ts';
import { LEADER_KEY, LeaderElection } from '../../control/cluster/leader.ts';
import { RemoteStore } from '../../control/cluster/remote-store.ts';
import { createMemoryStore, type Store, type WatchEvent } from '../../control/store/index.ts';
import { isTideError } from '../../lib/errors.ts';
import { createLogger } from '../../lib/log.ts';
import { storeContract } from '../contract/store.ts';
import { eventually, sleep } from '../helpers/tide.ts';

const log = createLogger({ level: 'silent' });
const JOIN = 'join-token-0123456789abcdef';
const cleanup: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

/** A control replica's cluster API on plain HTTP (TLS is the API server's, tested elsewhere). */
async function replica(store: Store): Promise<{ url: string; server: Server; stop(): Promise<void> }> {
  const api = new ClusterApi({
    store,
    joinToken: JOIN,
    trustDomain: 'tide.local',
    domain: 'localhost',
    issue: async () => ({ cert: 'c', key: 'k', ca: 'ca', serial: '1', notBefore: new Date(), notAfter: new Date() }),
    leader: () => undefined,
    log,
  });
  const server = createServer(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const ac = new AbortController();
    res.on('close', () => ac.abort());
    const url = new URL(req.url ?? '/', 'http://x');
    try {
      const r = await api.handle(
        new Request(url, {
          method: req.method,
          headers: req.headers as Record<string, string>,
          body: req.method === 'GET' ? null : Buffer.concat(chunks),
          signal: ac.signal,
        }),
        url,
      );
      if (!r) {
        res.writeHead(404).end();
        return;
      }
      res.writeHead(r.status, Object.fromEntries(r.headers));
      if (!r.body) return void res.end();
      for await (const chunk of r.body as unknown as AsyncIterable<Uint8Array>) res.write(chunk);
      res.end();
    } catch (err) {
      const e = err as { status?: number; code?: string; message: string };
      res.writeHead(e.status ?? 500, { 'content-type': 'application/json' }).end(JSON.stringify({ error: { code: e.code, message: e.message } }));
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const stop = () =>
    new Promise<void>((r) => {
      server.close(() => r());
      server.closeAllConnections();
    });
  cleanup.push(stop);
  return { url, server, stop };
}

function remote(urls: string[], token = JOIN): RemoteStore {
  const s = new RemoteStore({ urls, joinToken: token, callTimeoutMs: 3000 });
  cleanup.push(() => s.close());
  return s;
}

describe('cluster API access', () => {
  it('refuses a wrong join token, secret keys, and writes outside node records and statuses', async () => {
    const store = createMemoryStore();
    await store.put('/tide/ca/state', '{"key":"secret"}');
    await store.put('/tide/tokens/x', 'hash');
    await store.put('/tide/functions/default/a', '{}');
    const r = await replica(store);
    await expect(remote([r.url], 'wrong-token-0123456789').get('/tide/functions/default/a')).rejects.toMatchObject({ status: 401 });
    const s = remote([r.url]);
    expect((await s.get('/tide/functions/default/a'))?.value).toBe('{}');
    await expect(s.get('/tide/ca/state')).rejects.toMatchObject({ status: 403 });
    expect((await s.list('/tide/')).items.map((i) => i.key)).toEqual(['/tide/functions/default/a']);
    await expect(s.put('/tide/functions/default/a', 'changed')).rejects.toMatchObject({ status: 403 });
    await expect(s.put('/tide/tokens/y', 'mine')).rejects.toMatchObject({ status: 403 });
    expect((await store.get('/tide/functions/default/a'))?.value).toBe('{}');
    await s.put('/tide/nodes/n1', '{}');
    expect((await store.get('/tide/nodes/n1'))?.value).toBe('{}');
    // A watch from the root never carries secrets.
    const seen: WatchEvent[] = [];
    const w = s.watch('/tide/', (await s.list('/tide/')).revision, (e) => seen.push(...e));
    await store.put('/tide/ca/state', '{"key":"rotated"}');
    await store.put('/tide/status/revisions/default/a-00001/n1', '{}');
    await eventually(() => seen.length >= 1);
    await sleep(100);
    w.cancel();
    expect(seen.map((e) => e.key)).toEqual(['/tide/status/revisions/default/a-00001/n1']);
  });

  it('a conflict stays a conflict across the wire', async () => {
    const store = createMemoryStore();
    const s = remote([(await replica(store)).url]);
    await s.put('/tide/nodes/a', '1');
    const err = await s.put('/tide/nodes/a', '2', { expectModRevision: 0 }).catch((e: unknown) => e);
    expect(isTideError(err, 'ERR_STORE_CONFLICT')).toBe(true);
  });
});

describe('RemoteStore', () => {
  it('moves to another replica and resumes its watch there with no gap and no repeat', async () => {
    const store = createMemoryStore();
    const a = await replica(store);
    const b = await replica(store);
    const s = remote([a.url, b.url]);
    const seen: number[] = [];
    const start = (await s.list('/tide/status/')).revision;
    const w = s.watch('/tide/status/', start, (events) => seen.push(...events.map((e) => e.revision)));
    cleanup.push(() => w.cancel());
    const written: number[] = [];
    for (let i = 0; i < 5; i++) written.push(await store.put(`/tide/status/k${i}`, String(i)));
    await eventually(() => seen.length === 5);
    await a.stop();
    for (let i = 5; i < 15; i++) written.push(await store.put(`/tide/status/k${i}`, String(i)));
    await eventually(() => seen.length >= 15, 10_000);
    await sleep(200);
    expect(seen).toEqual(written);
    // Calls go to the replica left, too.
    expect((await s.get('/tide/status/k14'))?.value).toBe('14');
  });

  it('tells a compacted history apart from a lost connection', async () => {
    const store = createMemoryStore({ historyLimit: 2 });
    const s = remote([(await replica(store)).url]);
    for (let i = 0; i < 10; i++) await store.put('/tide/status/x', String(i));
    const err = await new Promise<Error>((resolve) => s.watch('/tide/status/', 1, () => {}, resolve));
    expect(isTideError(err, 'ERR_STORE_COMPACTED')).toBe(true);
  });

  it('fails a call with ERR_STORE_UNAVAILABLE when no replica answers, within its timeout', async () => {
    const s = new RemoteStore({ urls: ['http://127.0.0.1:9'], joinToken: JOIN, callTimeoutMs: 1000 });
    cleanup.push(() => s.close());
    const started = Date.now();
    const err = await s.get('/tide/nodes/x').catch((e: unknown) => e);
    expect(isTideError(err, 'ERR_STORE_UNAVAILABLE')).toBe(true);
    expect(Date.now() - started).toBeLessThan(5000);
  });

  it('refuses a control URL that is not http(s)', () => {
    expect(() => new RemoteStore({ urls: ['etcd://x:1'], joinToken: JOIN })).toThrow(/http/);
  });
});

storeContract('cluster API (memory behind it)', async () => {
  // The contract writes keys like /a and /x/b: a replica whose members may write anything is the
  // contract's view; access rules are tested above. Keys are mapped under /tide/status/.
  const store = createMemoryStore();
  const r = await replica(store);
  const s = new RemoteStore({ urls: [r.url], joinToken: JOIN, callTimeoutMs: 3000 });
  return prefixed(s, '/tide/status/c', async () => {
    await s.close();
    await r.stop();
  });
});

/** The Store contract's keys under `prefix` (members may write only there). */
function prefixed(s: RemoteStore, prefix: string, close: () => Promise<void>): Store {
  const inner = (k: string) => prefix + k;
  const outer = <T extends { key: string }>(x: T): T => ({ ...x, key: x.key.slice(prefix.length) });
  return {
    get: async (k) => {
      const kv = await s.get(inner(k));
      return kv && outer(kv);
    },
    list: async (p) => {
      const r = await s.list(inner(p));
      return { items: r.items.map(outer), revision: r.revision };
    },
    put: (k, v, o) => s.put(inner(k), v, o),
    delete: (k, o) => s.delete(inner(k), o),
    txn: (ops) => s.txn(ops.map((op) => ({ ...op, key: inner(op.key) }))),
    watch: (p, after, l, e) => s.watch(inner(p), after, (events) => l(events.map(outer)), e),
    grantLease: (t) => s.grantLease(t),
    keepAlive: (l) => s.keepAlive(l),
    revokeLease: (l) => s.revokeLease(l),
    close,
    destroy: close,
  };
}

describe('leader election', () => {
  it('elects one leader, hands over when it stops, and again when its lease runs out', async () => {
    const store = createMemoryStore();
    const events: string[] = [];
    const make = (id: string) => {
      const e = new LeaderElection({
        store,
        id,
        api: `https://${id}`,
        ttlSeconds: 1,
        log,
        onElected: () => void events.push(`${id} elected`),
        onDeposed: () => void events.push(`${id} deposed`),
      });
      cleanup.push(() => e.close());
      return e;
    };
    const a = make('a');
    const b = make('b');
    await a.start();
    await b.start();
    expect(a.leading).toBe(true);
    expect(b.leading).toBe(false);
    expect(b.leader?.id).toBe('a');
    // A graceful stop hands over at once.
    await a.close();
    await eventually(() => b.leading, 3000);
    expect(events).toEqual(['a elected', 'a deposed', 'b elected']);
    // A leader that can no longer renew (its store is gone) steps down on its own.
    const c = make('c');
    await c.start();
    expect(c.leading).toBe(false);
    const kv = await store.get(LEADER_KEY);
    expect(JSON.parse(kv?.value ?? '{}').id).toBe('b');
    expect(kv?.lease).toBeDefined();
    // b's lease revoked from outside (as when etcd lets it expire): c takes over, b notices and steps down.
    await store.revokeLease(kv?.lease as string);
    await eventually(() => c.leading && !b.leading, 5000);
  });
});

describe('demand reports', () => {
  it('replays counts into the leader, never ends more than began, and ends what a silent source left open', async () => {
    const calls: string[] = [];
    const target = {
      begin: (r: string) => calls.push(`begin ${r}`),
      end: (r: string) => calls.push(`end ${r}`),
      queued: () => {},
      activate: (r: string) => calls.push(`activate ${r}`),
    };
    const c = new DemandCollector(target);
    cleanup.push(() => c.close());
    c.apply({ source: 'gw', revisions: { 'a-00001': { began: 2, ended: 1, queued: 0, activate: false } } });
    // An end this leader never saw begin is dropped.
    c.apply({ source: 'gw2', revisions: { 'a-00001': { began: 0, ended: 3, queued: 0, activate: true } } });
    expect(calls).toEqual(['begin a-00001', 'begin a-00001', 'end a-00001', 'activate a-00001']);
    expect(() => parseDemandReport({ source: 'x', revisions: { r: { began: -1, ended: 0, queued: 0 } } })).toThrow(/began/);
    expect(() => parseDemandReport({ revisions: {} })).toThrow(/source/);
  });

  it('a reporter keeps its counts while control is away and sends them together later', async () => {
    const sent: unknown[] = [];
    let up = false;
    const r = new DemandReporter({
      source: 'n1',
      intervalMs: 10_000,
      send: async (report) => {
        if (!up) throw new Error('away');
        sent.push(report);
      },
    });
    cleanup.push(() => r.close());
    r.begin('a');
    r.begin('a');
    await r.flush();
    r.end('a');
    up = true;
    await r.flush();
    expect(sent).toEqual([{ source: 'n1', revisions: { a: { began: 2, ended: 1, queued: 0, activate: false } } }]);
  });
});
