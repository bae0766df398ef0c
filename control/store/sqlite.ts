/**
 * The embedded Store on SQLite (node:sqlite), one file under the data directory. WAL mode with
 * synchronous=NORMAL: a committed transaction survives a killed process (kill -9); only an OS
 * crash can lose the last few. Watches are fed in-process, so exactly one process may write the
 * file: `tide up` holds a pid lock on its data directory and refuses to share it.
 *
 * Tables: kv (current state, with the lease id of a leased key), events (the history watches
 * resume from, trimmed to the last `historyLimit` revisions), meta (schema version, compacted
 * revision). Schema 2 added kv.lease; a schema 1 file is migrated when it opens.
 *
 * Leases live in the process (LocalStore), not in the file: they end with it. So when the file
 * opens, keys still attached to a lease (a previous process's) are deleted in one transaction,
 * a delete event each at a new revision, exactly as if their lease had expired.
 */
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import { TideError } from '../../lib/errors.ts';
import { type LocalBackend, LocalStore, type LocalStoreOptions } from './local.ts';
import type { KeyValue, WatchEvent } from './store.ts';

const SCHEMA_VERSION = '2';

interface Row {
  key: string;
  value: string;
  create_rev: number;
  mod_rev: number;
  version: number;
  lease: string | null;
}

function toKv(row: Row): KeyValue {
  return {
    key: row.key,
    value: row.value,
    createRevision: Number(row.create_rev),
    modRevision: Number(row.mod_rev),
    version: Number(row.version),
    ...(row.lease === null ? {} : { lease: row.lease }),
  };
}

class SqliteBackend implements LocalBackend {
  readonly #db: DatabaseSync;
  readonly #historyLimit: number;
  readonly #stmt: Record<'get' | 'range' | 'leased' | 'upsert' | 'del' | 'event' | 'events' | 'trim' | 'setMeta', StatementSync>;
  #rev: number;
  #compacted: number;

  constructor(path: string, historyLimit: number) {
    this.#historyLimit = historyLimit;
    try {
      this.#db = new DatabaseSync(path);
      this.#db.exec('PRAGMA journal_mode = WAL');
      this.#db.exec('PRAGMA synchronous = NORMAL');
      this.#db.exec('PRAGMA busy_timeout = 2000');
      this.#db.exec(`
        CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL,
          create_rev INTEGER NOT NULL, mod_rev INTEGER NOT NULL, version INTEGER NOT NULL, lease TEXT);
        CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, rev INTEGER NOT NULL,
          type TEXT NOT NULL, key TEXT NOT NULL, value TEXT);
        CREATE INDEX IF NOT EXISTS events_rev ON events (rev);
      `);
      const version = this.#db.prepare('SELECT v FROM meta WHERE k = ?').get('schema') as { v: string } | undefined;
      if (!version) {
        this.#db.prepare('INSERT INTO meta (k, v) VALUES (?, ?)').run('schema', SCHEMA_VERSION);
      } else if (version.v === '1') {
        // 1 → 2: kv.lease. Existing keys have no lease.
        this.#db.exec('BEGIN IMMEDIATE');
        try {
          this.#db.exec('ALTER TABLE kv ADD COLUMN lease TEXT');
          this.#db.prepare('UPDATE meta SET v = ? WHERE k = ?').run(SCHEMA_VERSION, 'schema');
          this.#db.exec('COMMIT');
        } catch (err) {
          this.#db.exec('ROLLBACK');
          throw err;
        }
      } else if (version.v !== SCHEMA_VERSION) {
        throw new Error(`unknown schema version ${version.v} (this Tide understands ${SCHEMA_VERSION})`);
      }
      this.#db.exec('CREATE INDEX IF NOT EXISTS kv_lease ON kv (lease) WHERE lease IS NOT NULL');
      this.#db.prepare('SELECT count(*) FROM kv').get(); // reads a page, so a damaged file fails here
    } catch (err) {
      throw new TideError('ERR_STORE_CORRUPT', `cannot open the state database ${path}: ${(err as Error).message}`, {
        cause: err,
        hint: 'the data directory may be damaged or belong to another program; move it aside to start empty, or pass --data-dir',
      });
    }
    const db = this.#db;
    this.#stmt = {
      get: db.prepare('SELECT key, value, create_rev, mod_rev, version, lease FROM kv WHERE key = ?'),
      range: db.prepare('SELECT key, value, create_rev, mod_rev, version, lease FROM kv WHERE key >= ? AND key < ? ORDER BY key'),
      leased: db.prepare('SELECT key FROM kv WHERE lease = ? ORDER BY key'),
      upsert: db.prepare(
        'INSERT INTO kv (key, value, create_rev, mod_rev, version, lease) VALUES (?, ?, ?, ?, ?, ?) ' +
          'ON CONFLICT (key) DO UPDATE SET value = excluded.value, mod_rev = excluded.mod_rev, version = excluded.version, lease = excluded.lease',
      ),
      del: db.prepare('DELETE FROM kv WHERE key = ?'),
      event: db.prepare('INSERT INTO events (rev, type, key, value) VALUES (?, ?, ?, ?)'),
      events: db.prepare('SELECT rev, type, key, value FROM events WHERE rev > ? AND key >= ? AND key < ? ORDER BY id'),
      trim: db.prepare('DELETE FROM events WHERE rev <= ?'),
      setMeta: db.prepare('INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v'),
    };
    const meta = (k: string) => (db.prepare('SELECT v FROM meta WHERE k = ?').get(k) as { v: string } | undefined)?.v;
    this.#rev = Number(meta('revision') ?? 0);
    this.#compacted = Number(meta('compacted') ?? 0);
    this.#dropOrphanedLeases();
  }

  /** Deletes keys attached to leases of a previous process (leases do not outlive it). */
  #dropOrphanedLeases(): void {
    const keys = (this.#db.prepare('SELECT key FROM kv WHERE lease IS NOT NULL ORDER BY key').all() as { key: string }[]).map((r) => r.key);
    if (keys.length === 0) return;
    const rev = this.#rev + 1;
    this.apply(
      rev,
      [],
      keys,
      keys.map((key) => ({ type: 'delete', key, value: undefined, revision: rev })),
    );
  }

  revision(): number {
    return this.#rev;
  }
  compactedRevision(): number {
    return this.#compacted;
  }
  get(key: string): KeyValue | undefined {
    const row = this.#stmt.get.get(key) as Row | undefined;
    return row ? toKv(row) : undefined;
  }
  range(prefix: string): KeyValue[] {
    return (this.#stmt.range.all(prefix, prefixEnd(prefix)) as unknown as Row[]).map(toKv);
  }
  leasedKeys(lease: string): string[] {
    return (this.#stmt.leased.all(lease) as { key: string }[]).map((r) => r.key);
  }
  events(after: number, prefix: string): WatchEvent[] {
    const rows = this.#stmt.events.all(after, prefix, prefixEnd(prefix)) as unknown as {
      rev: number;
      type: 'put' | 'delete';
      key: string;
      value: string | null;
    }[];
    return rows.map((r) => ({ type: r.type, key: r.key, value: r.value ?? undefined, revision: Number(r.rev) }));
  }
  apply(rev: number, puts: KeyValue[], deletes: string[], events: WatchEvent[]): void {
    const s = this.#stmt;
    this.#db.exec('BEGIN IMMEDIATE');
    try {
      for (const kv of puts) s.upsert.run(kv.key, kv.value, kv.createRevision, kv.modRevision, kv.version, kv.lease ?? null);
      for (const key of deletes) s.del.run(key);
      for (const e of events) s.event.run(e.revision, e.type, e.key, e.value ?? null);
      s.setMeta.run('revision', String(rev));
      const floor = rev - this.#historyLimit;
      const compact = floor > this.#compacted && rev % 100 === 0;
      if (compact) {
        s.trim.run(floor);
        s.setMeta.run('compacted', String(floor));
      }
      this.#db.exec('COMMIT');
      if (compact) this.#compacted = floor;
    } catch (err) {
      if (this.#db.isTransaction) this.#db.exec('ROLLBACK');
      throw err;
    }
    this.#rev = rev;
  }
  close(): void {
    if (this.#db.isOpen) this.#db.close();
  }
}

/** The smallest string greater than every string starting with `prefix`. */
function prefixEnd(prefix: string): string {
  return `${prefix}\u{10FFFF}`;
}

export function createSqliteStore(path: string, options: { historyLimit?: number } & LocalStoreOptions = {}): LocalStore {
  return new LocalStore(new SqliteBackend(path, options.historyLimit ?? 10_000), options);
}
