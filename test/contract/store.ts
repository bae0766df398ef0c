/**
 * The Store contract: every backend (memory, SQLite, etcd) must pass this suite unchanged. Call
 * storeContract(name, make) from a test file; `make` must give each call an empty keyspace
 * (etcd tests give each store its own key prefix). Revisions are compared relatively, never
 * absolutely: a fresh etcd starts at revision 1, the local stores at 0.
 *
 * Lease tests run on real time with 1 s TTLs; etcd's lessor checks expiry every 500 ms, so a
 * lease can outlive its TTL by up to ~1 s there, and waits are bounded polls.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { Store, WatchEvent } from '../../control/store/index.ts';
import { isTideError } from '../../lib/errors.ts';
import { eventually, sleep } from '../helpers/tide.ts';

export function storeContract(name: string, make: () => Promise<Store> | Store): void {
  describe(`Store contract: ${name}`, () => {
    const open: Store[] = [];
    const store = async () => {
      const s = await make();
      open.push(s);
      return s;
    };
    afterEach(async () => {
      await Promise.all(open.splice(0).map((s) => s.close()));
    });

    it('puts and gets with create/mod revisions and versions', async () => {
      const s = await store();
      const r1 = await s.put('/a', '1');
      const r2 = await s.put('/a', '2');
      expect(r2).toBe(r1 + 1);
      const kv = await s.get('/a');
      expect(kv).toMatchObject({ key: '/a', value: '2', createRevision: r1, modRevision: r2, version: 2 });
      expect(await s.get('/missing')).toBeUndefined();
    });

    it('lists by prefix in key order with the read revision', async () => {
      const s = await store();
      await s.put('/x/b', 'b');
      await s.put('/x/a', 'a');
      const last = await s.put('/y/c', 'c');
      const { items, revision } = await s.list('/x/');
      expect(items.map((i) => i.key)).toEqual(['/x/a', '/x/b']);
      expect(revision).toBe(last);
    });

    it('compare-and-swap: expectModRevision 0 means absent, n means last written at n', async () => {
      const s = await store();
      const r = await s.put('/k', 'v', { expectModRevision: 0 });
      await expect(s.put('/k', 'again', { expectModRevision: 0 })).rejects.toSatisfy((e) => isTideError(e, 'ERR_STORE_CONFLICT'));
      await expect(s.put('/k', 'stale', { expectModRevision: r - 1 })).rejects.toSatisfy((e) => isTideError(e, 'ERR_STORE_CONFLICT'));
      await s.put('/k', 'ok', { expectModRevision: r });
      expect((await s.get('/k'))?.value).toBe('ok');
    });

    it('transactions apply all or nothing', async () => {
      const s = await store();
      const r = await s.put('/t/a', '1');
      await expect(
        s.txn([
          { type: 'put', key: '/t/b', value: '2' },
          { type: 'put', key: '/t/a', value: 'x', expectModRevision: r + 100 },
        ]),
      ).rejects.toSatisfy((e) => isTideError(e, 'ERR_STORE_CONFLICT'));
      expect(await s.get('/t/b')).toBeUndefined();
      expect((await s.get('/t/a'))?.value).toBe('1');
      const r2 = await s.txn([
        { type: 'put', key: '/t/b', value: '2', expectModRevision: 0 },
        { type: 'delete', key: '/t/a', expectModRevision: r },
      ]);
      expect(r2).toBe(r + 1);
      expect(await s.get('/t/a')).toBeUndefined();
      expect((await s.get('/t/b'))?.modRevision).toBe(r2);
    });

    it('deletes, reporting whether the key existed', async () => {
      const s = await store();
      await s.put('/d', '1');
      expect(await s.delete('/d')).toBe(true);
      expect(await s.delete('/d')).toBe(false);
      expect(await s.get('/d')).toBeUndefined();
    });

    it('watch replays history after a revision, then streams live changes in order', async () => {
      const s = await store();
      const r0 = await s.put('/w/a', '1');
      await s.put('/other', 'x');
      await s.put('/w/b', '2');
      const seen: WatchEvent[] = [];
      const w = s.watch('/w/', r0 - 1, (events) => seen.push(...events));
      await s.delete('/w/a');
      await s.put('/w/c', '3');
      await waitFor(() => seen.length >= 4);
      w.cancel();
      await s.put('/w/d', 'after cancel');
      await new Promise((r) => setTimeout(r, 20));
      expect(seen.map((e) => [e.type, e.key, e.value])).toEqual([
        ['put', '/w/a', '1'],
        ['put', '/w/b', '2'],
        ['delete', '/w/a', undefined],
        ['put', '/w/c', '3'],
      ]);
      expect(seen.map((e) => e.revision)).toEqual([...seen.map((e) => e.revision)].sort((a, b) => a - b));
    });

    it('a watch from the current revision sees only new changes', async () => {
      const s = await store();
      await s.put('/n/a', '1');
      const { revision } = await s.list('/n/');
      const seen: WatchEvent[] = [];
      const w = s.watch('/n/', revision, (events) => seen.push(...events));
      await s.put('/n/b', '2');
      await waitFor(() => seen.length >= 1);
      w.cancel();
      expect(seen.map((e) => e.key)).toEqual(['/n/b']);
    });

    it('leases: a leased key carries its lease, and keepAlive keeps it past the TTL', async () => {
      const s = await store();
      const lease = await s.grantLease(1);
      expect(lease).toMatch(/^[1-9][0-9]*$/);
      const r = await s.put('/l/a', '1', { lease });
      await s.put('/l/b', '2');
      expect(await s.get('/l/a')).toMatchObject({ key: '/l/a', value: '1', modRevision: r, lease });
      expect((await s.get('/l/b'))?.lease).toBeUndefined();
      expect((await s.list('/l/')).items.map((kv) => kv.lease)).toEqual([lease, undefined]);
      const seen: WatchEvent[] = [];
      const w = s.watch('/l/', r, (events) => seen.push(...events));
      // 2.5 s: well past the 1 s TTL and past etcd's expiry slack.
      const end = Date.now() + 2500;
      while (Date.now() < end) {
        expect(await s.keepAlive(lease)).toBe(true);
        await sleep(250);
      }
      expect((await s.get('/l/a'))?.value).toBe('1');
      w.cancel();
      expect(seen.filter((e) => e.key === '/l/a')).toEqual([]);
      await s.revokeLease(lease);
    });

    it('leases: expiry deletes the keys at a new revision, which a watch sees', async () => {
      const s = await store();
      const lease = await s.grantLease(1);
      const r = await s.put('/e/a', '1', { lease });
      await s.put('/e/kept', 'k');
      const seen: WatchEvent[] = [];
      const w = s.watch('/e/', r, (events) => seen.push(...events));
      const started = Date.now();
      await eventually(async () => (await s.get('/e/a')) === undefined, 6000, 50);
      expect(Date.now() - started).toBeGreaterThan(500);
      await eventually(() => seen.some((e) => e.type === 'delete'), 2000, 20);
      w.cancel();
      const del = seen.find((e) => e.type === 'delete');
      expect(del).toMatchObject({ type: 'delete', key: '/e/a', value: undefined });
      expect(del?.revision).toBeGreaterThan(r + 1);
      expect(await s.keepAlive(lease)).toBe(false);
      expect((await s.get('/e/kept'))?.value).toBe('k');
      await expect(s.put('/e/b', '2', { lease })).rejects.toSatisfy((e) => isTideError(e, 'ERR_STORE_LEASE_NOT_FOUND'));
    });

    it('leases: revokeLease deletes its keys at once, in one revision; keepAlive is then false', async () => {
      const s = await store();
      const lease = await s.grantLease(60);
      await s.put('/v/a', '1', { lease });
      const r = await s.txn([
        { type: 'put', key: '/v/b', value: '2', lease },
        { type: 'put', key: '/v/c', value: '3' },
      ]);
      expect((await s.get('/v/b'))?.lease).toBe(lease);
      expect((await s.get('/v/c'))?.lease).toBeUndefined();
      const seen: WatchEvent[] = [];
      const w = s.watch('/v/', r, (events) => seen.push(...events));
      await s.revokeLease(lease);
      expect(await s.get('/v/a')).toBeUndefined();
      expect(await s.get('/v/b')).toBeUndefined();
      expect((await s.get('/v/c'))?.value).toBe('3');
      await eventually(() => seen.length >= 2, 2000, 10);
      w.cancel();
      expect(seen.map((e) => [e.type, e.key])).toEqual([
        ['delete', '/v/a'],
        ['delete', '/v/b'],
      ]);
      expect(seen[0]?.revision).toBe(r + 1);
      expect(seen[1]?.revision).toBe(r + 1);
      expect(await s.keepAlive(lease)).toBe(false);
      await s.revokeLease(lease); // already gone: no error
    });

    it('leases: writing a key again without a lease detaches it', async () => {
      const s = await store();
      const lease = await s.grantLease(60);
      await s.txn([
        { type: 'put', key: '/d/a', value: '1', lease },
        { type: 'put', key: '/d/b', value: '2', lease },
      ]);
      await s.put('/d/a', '1 again');
      expect((await s.get('/d/a'))?.lease).toBeUndefined();
      await s.revokeLease(lease);
      expect((await s.get('/d/a'))?.value).toBe('1 again');
      expect(await s.get('/d/b')).toBeUndefined();
    });

    it('leases: a write with an unknown lease is refused and changes nothing', async () => {
      const s = await store();
      const before = await s.put('/u/other', 'x');
      await expect(s.put('/u/a', '1', { lease: '12345' })).rejects.toSatisfy((e) => isTideError(e, 'ERR_STORE_LEASE_NOT_FOUND'));
      await expect(
        s.txn([
          { type: 'put', key: '/u/b', value: '2' },
          { type: 'put', key: '/u/c', value: '3', lease: '12345' },
        ]),
      ).rejects.toSatisfy((e) => isTideError(e, 'ERR_STORE_LEASE_NOT_FOUND'));
      expect(await s.get('/u/a')).toBeUndefined();
      expect(await s.get('/u/b')).toBeUndefined();
      expect((await s.list('/u/')).revision).toBe(before);
      expect(await s.keepAlive('12345')).toBe(false);
      await s.revokeLease('12345');
      await expect(s.grantLease(0)).rejects.toSatisfy((e) => isTideError(e, 'ERR_INVALID_ARGUMENT'));
      await expect(s.grantLease(1.5)).rejects.toSatisfy((e) => isTideError(e, 'ERR_INVALID_ARGUMENT'));
      await expect(s.keepAlive('not-a-lease')).rejects.toSatisfy((e) => isTideError(e, 'ERR_INVALID_ARGUMENT'));
    });

    it('refuses use after close', async () => {
      const s = await store();
      await s.close();
      await expect(s.get('/a')).rejects.toSatisfy((e) => isTideError(e, 'ERR_STORE_CLOSED'));
    });
  });
}

async function waitFor(cond: () => boolean, ms = 2000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 5));
  }
}
