/**
 * API tokens: who may call the control API, and with which scope. The control API asks
 * `authenticate()` for every request (before any route runs) and then checks the route's
 * scope; it never reads the records itself.
 *
 * Two kinds of token:
 * - the root token, the string in `<data-dir>/token`: scope admin, not stored here, and not
 *   revocable through the API (replace it by deleting the file and restarting Tide);
 * - issued tokens, `tide_<id>_<secret>` (id: 8 lowercase hex; secret: 32 random bytes,
 *   base64url). Only the SHA-256 of the whole token is stored, at `/tide/tokens/<name>`; the
 *   token itself is returned once, by `create()`, and never again.
 *
 * Revocation keeps the record (with `revokedAt`) so it can be listed and its name is not
 * silently reused; `purge()` deletes it. Every `authenticate()` reads the store, so a
 * revocation holds from the very next request, on every API replica. The API is not a hot
 * path; a token list of a few hundred records is one small range read.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { type Clock, systemClock } from '../../lib/clock.ts';
import { parseDuration } from '../../lib/duration.ts';
import { isTideError, TideError } from '../../lib/errors.ts';
import type { KeyValue, Store } from '../store/index.ts';

/** What a token may do: read = GET anything (but tokens); deploy = read + every change to functions, routes and rollouts; admin = everything. */
export type Scope = 'read' | 'deploy' | 'admin';

export const SCOPES: readonly Scope[] = ['read', 'deploy', 'admin'];

/** The name the root token (`<data-dir>/token`) goes by in messages and in `createdBy`. */
export const ROOT_TOKEN_NAME = 'root';

/** Who made a request: the token's name and scope. */
export interface Principal {
  name: string;
  scope: Scope;
}

/** What is stored at `/tide/tokens/<name>`. Never the token itself. */
export interface TokenRecord {
  name: string;
  /** The `<id>` part of `tide_<id>_<secret>`, to find the record from a token. */
  id: string;
  scope: Scope;
  /** SHA-256 (hex) of the whole token string. */
  hash: string;
  createdAt: string;
  expiresAt?: string;
  revokedAt?: string;
  /** Name of the token that created this one. */
  createdBy: string;
}

/** A token as the API lists it: no id, no hash. */
export interface TokenView {
  name: string;
  scope: Scope;
  createdAt: string;
  expiresAt: string | null;
  revokedAt: string | null;
  createdBy: string;
}

export interface CreateTokenInput {
  name: string;
  scope: Scope;
  /** Lifetime: "30d", "12h", "90m", or a number of seconds. Default: no expiry. */
  ttl?: string | number;
  /** Name of the token asking (default "root"). */
  createdBy?: string;
}

export interface CreatedToken {
  name: string;
  scope: Scope;
  /** The token. Shown this once. */
  token: string;
  expiresAt: string | null;
}

export interface TokenStoreOptions {
  /** Time for createdAt, expiry and revokedAt. Default: the system clock. */
  clock?: Clock;
}

export const tokenKeys = {
  tokens: () => '/tide/tokens/',
  token: (name: string) => `/tide/tokens/${name}`,
};

const TOKEN = /^tide_([0-9a-z]{8})_([A-Za-z0-9_-]{43})$/;
const NAME = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const RANK: Record<Scope, number> = { read: 0, deploy: 1, admin: 2 };

/** Whether a token of scope `have` may call a route that needs `need`. */
export function scopeAllows(have: Scope, need: Scope): boolean {
  return RANK[have] >= RANK[need];
}

export function isScope(v: unknown): v is Scope {
  return typeof v === 'string' && (SCOPES as readonly string[]).includes(v);
}

export class TokenStore {
  readonly #store: Store;
  readonly #rootHash: Buffer;
  readonly #clock: Clock;

  constructor(store: Store, rootToken: string, options: TokenStoreOptions = {}) {
    if (typeof rootToken !== 'string' || rootToken.length < 16)
      throw new TideError('ERR_INVALID_ARGUMENT', `rootToken must be a string of at least 16 characters (got ${String(rootToken).length})`);
    this.#store = store;
    this.#rootHash = sha256(rootToken);
    this.#clock = options.clock ?? systemClock;
  }

  /** Who `bearer` is. Throws 401 ERR_UNAUTHORIZED, ERR_TOKEN_REVOKED or ERR_TOKEN_EXPIRED. */
  async authenticate(bearer: string): Promise<Principal> {
    if (!bearer) throw unauthorized('the API needs a bearer token');
    const given = sha256(bearer);
    if (timingSafeEqual(given, this.#rootHash)) return { name: ROOT_TOKEN_NAME, scope: 'admin' };
    const m = TOKEN.exec(bearer);
    const record = m ? (await this.#records()).find((r) => r.record.id === m[1])?.record : undefined;
    const stored = record ? Buffer.from(record.hash, 'hex') : undefined;
    // Same answer for an unknown id and a wrong secret: a caller learns nothing from either.
    if (!record || !stored || stored.length !== given.length || !timingSafeEqual(stored, given)) throw unauthorized('the API token is not valid');
    if (record.revokedAt)
      throw new TideError('ERR_TOKEN_REVOKED', `token ${record.name} was revoked at ${record.revokedAt}`, {
        status: 401,
        hint: 'ask an admin for a new token (tide token create NAME --scope SCOPE)',
      });
    if (record.expiresAt && this.#clock.now() >= Date.parse(record.expiresAt))
      throw new TideError('ERR_TOKEN_EXPIRED', `token ${record.name} expired at ${record.expiresAt}`, {
        status: 401,
        hint: 'ask an admin for a new token (tide token create NAME --scope SCOPE --ttl 30d)',
      });
    return { name: record.name, scope: record.scope };
  }

  /** Issues a token. The answer holds the token; nothing else ever will. */
  async create(input: CreateTokenInput): Promise<CreatedToken> {
    checkName(input.name);
    if (!isScope(input.scope))
      throw new TideError('ERR_INVALID_ARGUMENT', `scope must be one of ${SCOPES.join(', ')} (got ${JSON.stringify(input.scope)})`, { status: 400 });
    const ttlMs = input.ttl === undefined || input.ttl === null ? undefined : parseTtl(input.ttl);
    const now = this.#clock.now();
    const existing = await this.#store.get(tokenKeys.token(input.name));
    if (existing) throw duplicate(parse(existing));
    const taken = new Set((await this.#records()).map((r) => r.record.id));
    let id = randomId();
    while (taken.has(id)) id = randomId();
    const token = `tide_${id}_${randomBytes(32).toString('base64url')}`;
    const record: TokenRecord = {
      name: input.name,
      id,
      scope: input.scope,
      hash: sha256(token).toString('hex'),
      createdAt: new Date(now).toISOString(),
      ...(ttlMs === undefined ? {} : { expiresAt: new Date(now + ttlMs).toISOString() }),
      createdBy: input.createdBy ?? ROOT_TOKEN_NAME,
    };
    try {
      await this.#store.put(tokenKeys.token(input.name), JSON.stringify(record), { expectModRevision: 0 });
    } catch (err) {
      if (!isTideError(err, 'ERR_STORE_CONFLICT')) throw err;
      const current = await this.#store.get(tokenKeys.token(input.name));
      throw current ? duplicate(parse(current)) : err;
    }
    return { name: record.name, scope: record.scope, token, expiresAt: record.expiresAt ?? null };
  }

  /** Every issued token (revoked and expired ones too), by name. */
  async list(): Promise<TokenView[]> {
    return (await this.#records()).map((r) => view(r.record));
  }

  /** Revokes `name` from the next request on; the record stays, with revokedAt. Revoking twice is a no-op. */
  async revoke(name: string): Promise<TokenView> {
    checkRevocable(name);
    for (let attempt = 0; ; attempt++) {
      const kv = await this.#store.get(tokenKeys.token(name));
      if (!kv) throw notFound(name);
      const record = parse(kv);
      if (record.revokedAt) return view(record);
      const next: TokenRecord = { ...record, revokedAt: new Date(this.#clock.now()).toISOString() };
      try {
        await this.#store.put(kv.key, JSON.stringify(next), { expectModRevision: kv.modRevision });
        return view(next);
      } catch (err) {
        if (!isTideError(err, 'ERR_STORE_CONFLICT') || attempt >= 5) throw err;
      }
    }
  }

  /** Deletes the record of `name` (revoked or not, even damaged): the token stops working and the name is free again. */
  async purge(name: string): Promise<{ name: string; revokedAt: string | null }> {
    checkRevocable(name);
    const kv = await this.#store.get(tokenKeys.token(name));
    if (!kv) throw notFound(name);
    await this.#store.delete(kv.key);
    return { name, revokedAt: tryParse(kv)?.revokedAt ?? null };
  }

  /** Every readable record. A damaged one is left out (no token can match it); `purge()` removes it. */
  async #records(): Promise<{ kv: KeyValue; record: TokenRecord }[]> {
    const { items } = await this.#store.list(tokenKeys.tokens());
    return items.flatMap((kv) => {
      const record = tryParse(kv);
      return record ? [{ kv, record }] : [];
    });
  }
}

/** "30d", "12h", "90m", "3600" or 3600 (seconds) → ms. */
export function parseTtl(ttl: string | number): number {
  const bad = () =>
    new TideError('ERR_INVALID_ARGUMENT', `ttl must be a duration like 30d, 12h or 90m, or a number of seconds (got ${JSON.stringify(ttl)})`, {
      status: 400,
    });
  if (typeof ttl === 'number') {
    if (!Number.isFinite(ttl) || ttl <= 0) throw bad();
    return Math.round(ttl * 1000);
  }
  if (typeof ttl !== 'string') throw bad();
  const s = ttl.trim();
  if (/^\d+$/.test(s) && Number(s) > 0) return Number(s) * 1000;
  const days = /^(\d+)d$/.exec(s);
  if (days && Number(days[1]) > 0) return Number(days[1]) * 86_400_000;
  if (!/^\d+(\.\d+)?(s|m|h)$/.test(s)) throw bad();
  try {
    return parseDuration(s, 'ttl');
  } catch {
    throw bad();
  }
}

function view(r: TokenRecord): TokenView {
  return { name: r.name, scope: r.scope, createdAt: r.createdAt, expiresAt: r.expiresAt ?? null, revokedAt: r.revokedAt ?? null, createdBy: r.createdBy };
}

function parse(kv: KeyValue): TokenRecord {
  const record = tryParse(kv);
  if (!record) {
    const name = kv.key.slice(tokenKeys.tokens().length);
    throw new TideError('ERR_STORE_CORRUPT', `the token record at ${kv.key} is damaged (not a token record)`, {
      status: 500,
      hint: `delete it: tide token revoke ${name} --purge`,
    });
  }
  return record;
}

function tryParse(kv: KeyValue): TokenRecord | undefined {
  try {
    const r = JSON.parse(kv.value) as TokenRecord;
    return r && typeof r === 'object' && typeof r.id === 'string' && typeof r.hash === 'string' && isScope(r.scope) ? r : undefined;
  } catch {
    return undefined;
  }
}

function sha256(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}

function randomId(): string {
  return randomBytes(4).toString('hex');
}

function checkName(name: unknown): asserts name is string {
  if (typeof name !== 'string' || !NAME.test(name))
    throw new TideError(
      'ERR_INVALID_NAME',
      `a token name must be a DNS label: 1 to 63 lowercase letters, digits and "-", starting and ending with a letter or digit (got ${JSON.stringify(name)})`,
      { status: 400 },
    );
  if (name === ROOT_TOKEN_NAME)
    throw new TideError('ERR_INVALID_NAME', `"${ROOT_TOKEN_NAME}" is the name of the data directory's token; pick another name`, { status: 400 });
}

function checkRevocable(name: string): void {
  if (name === ROOT_TOKEN_NAME)
    throw new TideError('ERR_FORBIDDEN', 'the root token (<data-dir>/token) cannot be revoked through the API', {
      status: 403,
      hint: 'to replace it, stop Tide, delete <data-dir>/token and start Tide again (it writes a new one)',
    });
}

function duplicate(r: TokenRecord): TideError {
  if (r.revokedAt)
    return new TideError('ERR_STORE_CONFLICT', `token name "${r.name}" is taken: that token was revoked at ${r.revokedAt} and its record is kept`, {
      status: 409,
      hint: `free the name with \`tide token revoke ${r.name} --purge\` (DELETE /v1/tokens/${r.name}?purge=true), or pick another name`,
    });
  return new TideError('ERR_STORE_CONFLICT', `a token named "${r.name}" already exists (scope ${r.scope}, created ${r.createdAt})`, {
    status: 409,
    hint: `pick another name, or revoke it first: tide token revoke ${r.name} --purge`,
  });
}

function notFound(name: string): TideError {
  return new TideError('ERR_NOT_FOUND', `no token named "${name}"`, { status: 404, hint: 'tide token list shows them' });
}

function unauthorized(message: string): TideError {
  return new TideError('ERR_UNAUTHORIZED', message, {
    status: 401,
    hint: 'the CLI reads the root token from <data-dir>/token (written by `tide up`); pass another with --token or TIDE_TOKEN',
  });
}
