/**
 * The etcd Store beyond the shared contract (which test/unit/store.test.ts runs against etcd):
 * watches that survive a restarted member and killed members of a 3-member cluster with no gap
 * and no duplicate, compaction, keep-alive of another client's lease, a dead endpoint, the URL
 * parser. Real etcd processes (test/helpers/etcd.ts), stopped by PID in afterAll.
 */
import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createEtcdStore, type EtcdStore, parseEtcdUrl, type WatchEvent } from '../../control/store/index.ts';
import { isTideError } from '../../lib/errors.ts';
import { type EtcdCluster, startEtcd, startEtcdCluster } from '../helpers/etcd.ts';
import { eventually, freePort, sleep } from '../helpers/tide.ts';

const started: EtcdCluster[] = [];
const stores: EtcdStore[] = [];
afterAll(async () => {
  await Promise.all(stores.map((s) => s.close()));
  await Promise.all(started.map((c) => c.stop()));
});

function open(url: string | string[], prefix: string, requestTimeoutMs?: number): EtcdStore {
  const s = createEtcdStore(url, { prefix, ...(requestTimeoutMs ? { requestTimeoutMs } : {}) });
  stores.push(s);
  return s;
}

/** Revisions of `events` are strictly increasing (so none is seen twice). */
function expectOrderedOnce(events: WatchEvent[]): void {
  for (let i = 1; i < events.length; i++) {
    const [a, b] = [events[i - 1] as WatchEvent, events[i] as WatchEvent];
    if (b.revision <= a.revision) throw new Error(`event ${i} (${b.key}@${b.revision}) does not come after ${a.key}@${a.revision}`);
  }
}

describe('etcd store: one member', () => {
  let etcd: EtcdCluster;
  beforeAll(async () => {
    etcd = await startEtcd();
    started.push(etcd);
  }, 30_000);

  it('a watch resumes after its member restarts, mid catch-up, with no gap and no duplicate', async () => {
    const s = open(etcd.url, '/restart', 1500);
    const r0 = (await s.list('/w/')).revision;
    // 2100 revisions of history: etcd sends a catching-up watch at most 1000 revisions per
    // response, one response per 100 ms sync round, so the member killed on the first response
    // dies while the history is still being delivered.
    for (let i = 0; i < 2100; i += 100) {
      await Promise.all(Array.from({ length: 100 }, (_, j) => s.put(`/w/${String(i + j).padStart(4, '0')}`, String(i + j))));
    }
    const last = (await s.list('/w/')).revision;
    expect(last).toBe(r0 + 2100);
    const seen: WatchEvent[] = [];
    let killed = false;
    const [m] = etcd.members;
    if (!m) throw new Error('no member');
    const w = s.watch('/w/', r0, (events) => {
      seen.push(...events);
      if (!killed) {
        killed = true;
        process.kill(m.pid, 'SIGKILL');
      }
    });
    await eventually(() => killed, 5000, 10);
    await eventually(() => !m.running(), 5000, 10);
    const deliveredWhileDown = seen.length;
    // While the only member is down, calls fail clearly.
    const t0 = Date.now();
    await expect(s.get('/w/0000')).rejects.toSatisfy((e) => isTideError(e, 'ERR_STORE_UNAVAILABLE') && /is unavailable/.test((e as Error).message));
    expect(Date.now() - t0).toBeLessThan(4000);
    await m.start();
    const after = await s.put('/w/after-restart', 'x');
    await eventually(() => seen.at(-1)?.revision === after, 10_000, 20);
    w.cancel();
    expectOrderedOnce(seen);
    expect(seen.map((e) => e.revision)).toEqual(Array.from({ length: after - r0 }, (_, i) => r0 + 1 + i));
    expect(seen.at(-1)).toMatchObject({ type: 'put', key: '/w/after-restart', value: 'x' });
    // The kill did land during the catch-up, not after it.
    expect(deliveredWhileDown).toBeLessThan(2100);
  }, 40_000);

  it('a watch from a compacted revision fails with ERR_STORE_COMPACTED; from the compaction revision it works', async () => {
    const s = open(etcd.url, '/compact');
    const r1 = await s.put('/c/a', '1');
    await s.put('/c/a', '2');
    const r3 = await s.put('/c/a', '3');
    const raw = new Etcd3({ hosts: etcd.endpoints });
    try {
      await raw.kv.compact({ revision: r3, physical: true });
    } finally {
      raw.close();
    }
    const err = await new Promise<Error>((resolve) => s.watch('/c/', r1, () => resolve(new Error('delivered events')), resolve));
    expect(isTideError(err, 'ERR_STORE_COMPACTED')).toBe(true);
    expect(err.message).toMatch(new RegExp(`history before ${r3} was compacted`));
    // afterRevision r3 - 1 starts at r3, the oldest revision kept.
    const seen: WatchEvent[] = [];
    const errors: Error[] = [];
    const w = s.watch(
      '/c/',
      r3 - 1,
      (events) => seen.push(...events),
      (e) => errors.push(e),
    );
    await eventually(() => seen.length >= 1, 5000, 10);
    w.cancel();
    expect(errors).toEqual([]);
    expect(seen.map((e) => [e.value, e.revision])).toEqual([['3', r3]]);
  });

  it('keeps alive a lease granted by another client, and revokes it from there', async () => {
    const a = open(etcd.url, '/lease');
    const b = open(etcd.url, '/lease');
    const lease = await a.grantLease(1);
    await a.put('/held', 'by a', { lease });
    await a.close();
    const end = Date.now() + 2500;
    while (Date.now() < end) {
      expect(await b.keepAlive(lease)).toBe(true);
      await sleep(250);
    }
    expect((await b.get('/held'))?.lease).toBe(lease);
    await b.revokeLease(lease);
    expect(await b.get('/held')).toBeUndefined();
    expect(await b.keepAlive(lease)).toBe(false);
  });

  it('close() ends the watches', async () => {
    const a = open(etcd.url, '/close');
    const b = open(etcd.url, '/close');
    const seen: WatchEvent[] = [];
    a.watch('/', (await a.list('/')).revision, (events) => seen.push(...events));
    await b.put('/x', '1');
    await eventually(() => seen.length === 1, 5000, 10);
    await a.close();
    await b.put('/x', '2');
    await sleep(300);
    expect(seen.map((e) => e.value)).toEqual(['1']);
    await expect(a.get('/x')).rejects.toSatisfy((e) => isTideError(e, 'ERR_STORE_CLOSED'));
  });
});

describe('etcd store: three members', () => {
  let cluster: EtcdCluster;
  beforeAll(async () => {
    cluster = await startEtcdCluster(3);
    started.push(cluster);
  }, 30_000);

  it('a watch and writes go on while each member in turn is killed and restarted', async () => {
    const s = open(cluster.url, '/chaos');
    const r0 = (await s.list('/k/')).revision;
    const seen: WatchEvent[] = [];
    const errors: Error[] = [];
    const w = s.watch(
      '/k/',
      r0,
      (events) => seen.push(...events),
      (e) => errors.push(e),
    );
    const acked: number[] = [];
    const ambiguous: string[] = [];
    let writing = true;
    let writerFailed: unknown;
    let i = 0;
    const writer = (async () => {
      while (writing) {
        try {
          acked.push(await s.put(`/k/${i % 50}`, String(i)));
        } catch (err) {
          if (!isTideError(err, 'ERR_STORE_UNAVAILABLE')) {
            writerFailed = err;
            return;
          }
          ambiguous.push((err as Error).message);
        }
        i++;
      }
    })();
    try {
      // The watch's stream lives on one member; killing each in turn kills that one at least
      // once. With a member down, writes must go on through the other two (after a new election
      // when the leader was the one killed: a write caught in flight then fails after up to 2 s).
      for (const m of cluster.members) {
        await sleep(300);
        await m.stop('SIGKILL');
        const before = acked.length;
        await eventually(() => writerFailed !== undefined || acked.length >= before + 20, 8000, 20);
        if (writerFailed) throw writerFailed;
        await m.start();
      }
      await sleep(300);
    } finally {
      writing = false;
    }
    await writer;
    const final = (await s.list('/k/')).revision;
    await eventually(() => (seen.at(-1)?.revision ?? 0) >= final, 10_000, 20);
    w.cancel();
    expect(errors).toEqual([]);
    expectOrderedOnce(seen);
    // Every write etcd acknowledged was seen by the watch...
    const seenRevs = new Set(seen.map((e) => e.revision));
    expect(acked.filter((r) => !seenRevs.has(r))).toEqual([]);
    // ...and the watch saw exactly etcd's history: a fresh watch from the start (after the
    // chaos, on a fresh client) reads the same revisions.
    const truth: WatchEvent[] = [];
    const fresh = open(cluster.url, '/chaos');
    const tw = fresh.watch('/k/', r0, (events) => truth.push(...events));
    await eventually(() => (truth.at(-1)?.revision ?? 0) >= final, 10_000, 20);
    tw.cancel();
    expect(seen.map((e) => `${e.type} ${e.key}=${e.value}@${e.revision}`)).toEqual(truth.map((e) => `${e.type} ${e.key}=${e.value}@${e.revision}`));
    // Only writes caught in flight on a killed member (or its lost leader) were in doubt.
    expect(ambiguous.length).toBeLessThan(acked.length / 10);
  }, 60_000);
});

describe('etcd store: failures and configuration', () => {
  it('fails a call on a dead endpoint within seconds, naming it', async () => {
    const port = await freePort();
    const s = open(`etcd://127.0.0.1:${port}`, '');
    const t0 = Date.now();
    const err = await s.get('/a').then(
      () => undefined,
      (e: unknown) => e,
    );
    const took = Date.now() - t0;
    expect(isTideError(err, 'ERR_STORE_UNAVAILABLE')).toBe(true);
    expect((err as { status?: number }).status).toBe(503);
    expect((err as Error).message).toContain(`http://127.0.0.1:${port}`);
    expect((err as Error).message).not.toMatch(/\n\s+at /);
    expect(took).toBeGreaterThan(4000); // it kept trying for requestTimeoutMs (5 s)...
    expect(took).toBeLessThan(8000); // ...and no longer
  });

  it('parses etcd:// URLs and refuses bad ones clearly', () => {
    expect(parseEtcdUrl('etcd://127.0.0.1:2379')).toEqual(['http://127.0.0.1:2379']);
    expect(parseEtcdUrl('etcd://a:1,b.example:2,[::1]:3/')).toEqual(['http://a:1', 'http://b.example:2', 'http://[::1]:3']);
    expect(parseEtcdUrl('etcd://10.0.0.1')).toEqual(['http://10.0.0.1:2379']);
    expect(parseEtcdUrl('etcd+https://e1:2379,e2:2379')).toEqual(['https://e1:2379', 'https://e2:2379']);
    const refused = (s: string, re: RegExp) => {
      try {
        parseEtcdUrl(s);
      } catch (err) {
        expect(isTideError(err, 'ERR_CONFIG_INVALID')).toBe(true);
        expect((err as Error).message).toMatch(re);
        return;
      }
      throw new Error(`${s} was accepted`);
    };
    refused('http://127.0.0.1:2379', /must start with etcd:\/\//);
    refused('etcd://', /names no member/);
    refused('etcd://a:1,', /"" is not host:port/);
    refused('etcd://a:99999', /port of "a:99999" must be 1-65535/);
    refused('etcd://a:1/path', /only host:port pairs/);
    refused('etcd://user:pw@a:1', /only host:port pairs/);
    expect(() => createEtcdStore(['http://a:1', 'https://b:2'])).toThrow(/all use TLS or none/);
    expect(() => createEtcdStore('etcd://a:1', { requestTimeoutMs: 0 })).toThrow(/requestTimeoutMs must be a number ≥ 100/);
  });
});
