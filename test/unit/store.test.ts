import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { createMemoryStore, createSqliteStore } from '../../control/store/index.ts';
import { isTideError } from '../../lib/errors.ts';
import { storeContract } from '../contract/store.ts';
import { tempDir } from '../helpers/tide.ts';

storeContract('memory', () => createMemoryStore());
storeContract('sqlite', () => createSqliteStore(join(tempDir(), 'state.db')));

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

  it('compacts old history and says so to a watch that asks for it', async () => {
    const s = createMemoryStore({ historyLimit: 5 });
    for (let i = 0; i < 20; i++) await s.put('/c', String(i));
    const err = await new Promise<Error>((resolve) => s.watch('/c', 1, () => {}, resolve));
    expect(isTideError(err, 'ERR_STORE_COMPACTED')).toBe(true);
    await s.close();
  });
});
