import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createEtcdStore, createMemoryStore, createSqliteStore } from '../../control/store/index.ts';
import { isTideError } from '../../lib/errors.ts';
import { storeContract } from '../contract/store.ts';
import { type EtcdCluster, startEtcd } from '../helpers/etcd.ts';
import { tempDir } from '../helpers/tide.ts';

storeContract('memory', () => createMemoryStore());
storeContract('sqlite', () => createSqliteStore(join(tempDir(), 'state.db')));

// One real etcd member for this file; each store gets its own key prefix, so each contract
// test starts from an empty keyspace (tests in a file run one at a time, so revisions seen by
// one are not moved by another).
let etcd: EtcdCluster | undefined;
let etcdStores = 0;
beforeAll(async () => {
  etcd = await startEtcd();
}, 30_000);
afterAll(async () => {
  await etcd?.stop();
});
storeContract('etcd', () => createEtcdStore((etcd as EtcdCluster).url, { prefix: `/contract-${++etcdStores}` }));

describe('sqlite store', () => {
  it('keeps keys and revisions across reopen', async () => {
    const path = join(tempDir(), 'state.db');
    const a = createSqliteStore(path);
    await a.put('/p/1', 'one');
    const r = await a.put('/p/2', 'two');
    await a.close();
    const b = createSqliteStore(path);
    expect((await b.get('/p/2'))?.modRevision).toBe(r);
    expect(await b.put('/p/3', 'three')).toBe(r + 1);
    const events: string[] = [];
    const w = b.watch('/p/', 0, (es) => events.push(...es.map((e) => e.key)));
    await new Promise((res) => setTimeout(res, 20));
    w.cancel();
    expect(events).toEqual(['/p/1', '/p/2', '/p/3']);
    await b.close();
  });

  it('reports a damaged database file clearly', () => {
    const path = join(tempDir(), 'state.db');
    writeFileSync(path, 'this is not a database, just some text that is long enough to be read as a header '.repeat(100));
    try {
      createSqliteStore(path);
      expect.unreachable('opening a damaged file must fail');
    } catch (err) {
      expect(isTideError(err, 'ERR_STORE_CORRUPT')).toBe(true);
      expect((err as Error).message).toMatch(/cannot open the state database .*state\.db/);
    }
  });

  it('opens a schema 1 database (before leases) and migrates it', async () => {
    const path = join(tempDir(), 'state.db');
    const db = new DatabaseSync(path);
    db.exec(`
      CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
      CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL,
        create_rev INTEGER NOT NULL, mod_rev INTEGER NOT NULL, version INTEGER NOT NULL);
      CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, rev INTEGER NOT NULL,
        type TEXT NOT NULL, key TEXT NOT NULL, value TEXT);
      CREATE INDEX events_rev ON events (rev);
      INSERT INTO meta VALUES ('schema', '1'), ('revision', '7');
      INSERT INTO kv VALUES ('/old', 'v', 7, 7, 1);
      INSERT INTO events (rev, type, key, value) VALUES (7, 'put', '/old', 'v');
    `);
    db.close();
    const s = createSqliteStore(path);
    expect(await s.get('/old')).toEqual({ key: '/old', value: 'v', createRevision: 7, modRevision: 7, version: 1 });
    const lease = await s.grantLease(60);
    expect(await s.put('/new', 'n', { lease })).toBe(8);
    expect((await s.get('/new'))?.lease).toBe(lease);
    await s.close();
    const check = new DatabaseSync(path);
    expect(check.prepare("SELECT v FROM meta WHERE k = 'schema'").get()).toEqual({ v: '2' });
    check.close();
  });

  it('deletes, on open, the keys of leases lost with the previous process', async () => {
    const path = join(tempDir(), 'state.db');
    const a = createSqliteStore(path);
    const lease = await a.grantLease(3600);
    const r = await a.put('/p/leased', 'x', { lease });
    await a.put('/p/plain', 'y');
    await a.close();
    const b = createSqliteStore(path);
    expect(await b.get('/p/leased')).toBeUndefined();
    expect((await b.get('/p/plain'))?.value).toBe('y');
    expect(await b.keepAlive(lease)).toBe(false);
    const events = await new Promise<unknown[]>((resolve) => {
      const w = b.watch('/p/', r, (es) => {
        w.cancel();
        resolve(es.map((e) => [e.type, e.key, e.revision]));
      });
    });
    expect(events).toEqual([
      ['put', '/p/plain', r + 1],
      ['delete', '/p/leased', r + 2],
    ]);
    await b.close();
  });

  it('compacts old history and says so to a watch that asks for it', async () => {
    const s = createMemoryStore({ historyLimit: 5 });
    for (let i = 0; i < 20; i++) await s.put('/c', String(i));
    const err = await new Promise<Error>((resolve) => s.watch('/c', 1, () => {}, resolve));
    expect(isTideError(err, 'ERR_STORE_COMPACTED')).toBe(true);
    await s.close();
  });
});
