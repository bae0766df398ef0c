/**
 * The Store contract: every backend (memory, SQLite, and etcd when it lands) must pass this
 * suite unchanged. Call storeContract(name, make) from a test file.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { Store, WatchEvent } from '../../control/store/index.ts';
import { isTideError } from '../../lib/errors.ts';

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
