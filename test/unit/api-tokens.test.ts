/** API tokens: the TokenStore over the memory store, and scope enforcement by the control API on a real port. */
import { createHash } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Functions } from '../../control/api/functions.ts';
import { Resources } from '../../control/api/resources.ts';
import { ControlApi } from '../../control/api/server.ts';
import { parseTtl, type Scope, scopeAllows, TokenStore, tokenKeys } from '../../control/api/tokens.ts';
import type { BlobStore } from '../../control/blobs.ts';
import { createMemoryStore, type Store } from '../../control/store/index.ts';
import { isTideError, type TideError } from '../../lib/errors.ts';
import { silentLogger } from '../../lib/log.ts';

const ROOT = 'root-token-0123456789abcdef0123456789';

async function rejection(p: Promise<unknown>): Promise<TideError> {
  try {
    await p;
  } catch (err) {
    if (isTideError(err)) return err;
    throw err;
  }
  throw new Error('expected a TideError, but it resolved');
}

describe('TokenStore', () => {
  let store: Store;
  let now: number;
  let tokens: TokenStore;

  beforeEach(() => {
    store = createMemoryStore();
    now = Date.parse('2030-01-01T00:00:00Z');
    tokens = new TokenStore(store, ROOT, { clock: { now: () => now } });
  });
  afterEach(() => store.close());

  it('knows the root token as admin, and nothing else', async () => {
    expect(await tokens.authenticate(ROOT)).toEqual({ name: 'root', scope: 'admin' });
    for (const bad of ['', 'nope', `${ROOT}x`, ROOT.slice(1)]) {
      const err = await rejection(tokens.authenticate(bad));
      expect(err.code).toBe('ERR_UNAUTHORIZED');
      expect(err.status).toBe(401);
    }
  });

  it('issues tide_<id>_<secret> tokens that authenticate with their scope', async () => {
    const created = await tokens.create({ name: 'ci', scope: 'deploy', createdBy: 'root' });
    expect(created).toMatchObject({ name: 'ci', scope: 'deploy', expiresAt: null });
    expect(created.token).toMatch(/^tide_[0-9a-z]{8}_[A-Za-z0-9_-]{43}$/);
    expect(await tokens.authenticate(created.token)).toEqual({ name: 'ci', scope: 'deploy' });
    // The right id with another secret is just an invalid token.
    const forged = `${created.token.slice(0, 14)}${'A'.repeat(43)}`;
    expect((await rejection(tokens.authenticate(forged))).code).toBe('ERR_UNAUTHORIZED');
  });

  it('stores only the hash of a token, and lists no hash', async () => {
    const { token } = await tokens.create({ name: 'reader', scope: 'read' });
    const kv = await store.get(tokenKeys.token('reader'));
    const secret = token.split('_')[2] ?? '';
    expect(kv?.value).not.toContain(token);
    expect(kv?.value).not.toContain(secret);
    const record = JSON.parse(kv?.value ?? '{}');
    expect(record).toMatchObject({ name: 'reader', scope: 'read', createdBy: 'root', createdAt: '2030-01-01T00:00:00.000Z' });
    expect(record.hash).toBe(createHash('sha256').update(token).digest('hex'));
    expect(record.id).toBe(token.slice(5, 13));
    const listed = await tokens.list();
    expect(listed).toEqual([{ name: 'reader', scope: 'read', createdAt: '2030-01-01T00:00:00.000Z', expiresAt: null, revokedAt: null, createdBy: 'root' }]);
    expect(JSON.stringify(listed)).not.toContain(record.hash);
  });

  it('refuses a revoked token on the next call, keeps its record, and frees the name only on purge', async () => {
    const { token } = await tokens.create({ name: 'ci', scope: 'deploy' });
    await tokens.authenticate(token);
    now += 1000;
    const revoked = await tokens.revoke('ci');
    expect(revoked.revokedAt).toBe('2030-01-01T00:00:01.000Z');
    const err = await rejection(tokens.authenticate(token));
    expect(err.code).toBe('ERR_TOKEN_REVOKED');
    expect(err.status).toBe(401);
    expect(err.message).toBe('token ci was revoked at 2030-01-01T00:00:01.000Z');
    expect((await tokens.revoke('ci')).revokedAt).toBe(revoked.revokedAt);
    expect((await tokens.list()).map((t) => t.revokedAt)).toEqual([revoked.revokedAt]);

    const reuse = await rejection(tokens.create({ name: 'ci', scope: 'read' }));
    expect(reuse.code).toBe('ERR_STORE_CONFLICT');
    expect(reuse.status).toBe(409);
    expect(reuse.message).toMatch(/"ci" is taken: that token was revoked/);
    expect(reuse.hint).toMatch(/--purge/);

    await tokens.purge('ci');
    expect(await tokens.list()).toEqual([]);
    expect((await rejection(tokens.authenticate(token))).code).toBe('ERR_UNAUTHORIZED');
    const again = await tokens.create({ name: 'ci', scope: 'read' });
    expect(await tokens.authenticate(again.token)).toEqual({ name: 'ci', scope: 'read' });
  });

  it('refuses a duplicate name while the token is live', async () => {
    await tokens.create({ name: 'ci', scope: 'deploy' });
    const err = await rejection(tokens.create({ name: 'ci', scope: 'admin' }));
    expect(err.code).toBe('ERR_STORE_CONFLICT');
    expect(err.message).toMatch(/a token named "ci" already exists/);
  });

  it('expires a token after its ttl', async () => {
    const { token, expiresAt } = await tokens.create({ name: 'short', scope: 'read', ttl: '12h' });
    expect(expiresAt).toBe('2030-01-01T12:00:00.000Z');
    now += 12 * 3600_000 - 1;
    expect((await tokens.authenticate(token)).name).toBe('short');
    now += 1;
    const err = await rejection(tokens.authenticate(token));
    expect(err.code).toBe('ERR_TOKEN_EXPIRED');
    expect(err.message).toBe('token short expired at 2030-01-01T12:00:00.000Z');
    expect((await tokens.create({ name: 'month', scope: 'read', ttl: '30d' })).expiresAt).toBe('2030-01-31T12:00:00.000Z');
  });

  it('checks names, scopes and ttls, and never revokes the root token', async () => {
    for (const name of ['CI', '-ci', 'ci-', 'a_b', '', 'x'.repeat(64)])
      expect((await rejection(tokens.create({ name, scope: 'read' }))).code).toBe('ERR_INVALID_NAME');
    expect((await rejection(tokens.create({ name: 'root', scope: 'read' }))).message).toMatch(/"root" is the name of the data directory's token/);
    expect((await rejection(tokens.create({ name: 'ok', scope: 'owner' as Scope }))).message).toMatch(/scope must be one of read, deploy, admin/);
    expect((await rejection(tokens.create({ name: 'ok', scope: 'read', ttl: 'soon' }))).status).toBe(400);
    const root = await rejection(tokens.revoke('root'));
    expect(root.code).toBe('ERR_FORBIDDEN');
    expect(root.message).toMatch(/root token .* cannot be revoked through the API/);
    expect((await rejection(tokens.revoke('missing'))).code).toBe('ERR_NOT_FOUND');
  });

  it('parses ttls as days, hours, minutes or seconds', () => {
    expect(parseTtl('30d')).toBe(30 * 86_400_000);
    expect(parseTtl('12h')).toBe(12 * 3600_000);
    expect(parseTtl('90m')).toBe(90 * 60_000);
    expect(parseTtl(3600)).toBe(3600_000);
    expect(parseTtl('3600')).toBe(3600_000);
    for (const bad of ['0', '0d', '-1', 'soon', '1w', 0, -5]) expect(() => parseTtl(bad)).toThrow(/ttl must be a duration like 30d/);
  });

  it('orders scopes read < deploy < admin', () => {
    const scopes: Scope[] = ['read', 'deploy', 'admin'];
    const allowed = scopes.map((have) => scopes.filter((need) => scopeAllows(have, need)));
    expect(allowed).toEqual([['read'], ['read', 'deploy'], ['read', 'deploy', 'admin']]);
  });
});

describe('control API scopes', () => {
  let store: Store;
  let api: ControlApi;
  let base: string;
  let rotated = 0;

  const call = async (token: string | undefined, method: string, path: string, body?: unknown) => {
    const res = await fetch(`${base}${path}`, {
      method,
      headers: { ...(token === undefined ? {} : { authorization: `Bearer ${token}` }), ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: res.status, body: (await res.json()) as Record<string, unknown> & { error?: { code: string; message: string } } };
  };

  const start = async (extra: Partial<ConstructorParameters<typeof ControlApi>[0]> = {}) => {
    const functions = new Functions(store, {} as BlobStore, { validate: async () => {} });
    api = new ControlApi({
      functions,
      logs: { tail: async () => [], follow: () => () => {} },
      log: silentLogger,
      functionUrl: (name) => `http://${name}.localhost`,
      resources: new Resources(store, functions),
      ...extra,
    });
    const addr = await api.listen(0, '127.0.0.1');
    base = `http://127.0.0.1:${addr.port}`;
  };

  beforeEach(() => {
    store = createMemoryStore();
  });
  afterEach(async () => {
    await api?.close();
    await store.close();
  });

  const issue = async (name: string, scope: Scope) => {
    const r = await call(ROOT, 'POST', '/v1/tokens', { name, scope });
    expect(r.status).toBe(201);
    return r.body.token as string;
  };

  it('lets each scope do what it covers, and answers 403 naming the scope otherwise', async () => {
    await start({ tokens: new TokenStore(store, ROOT) });
    const t = { read: await issue('reader', 'read'), deploy: await issue('deployer', 'deploy'), admin: await issue('boss', 'admin') };
    const matrix: [string, string, unknown, Record<Scope, number>][] = [
      ['GET', '/v1/functions', undefined, { read: 200, deploy: 200, admin: 200 }],
      ['GET', '/v1/info', undefined, { read: 200, deploy: 200, admin: 200 }],
      ['POST', '/v1/apply', { items: [] }, { read: 403, deploy: 200, admin: 200 }],
      ['POST', '/v1/functions/nope/rollback', {}, { read: 403, deploy: 404, admin: 404 }],
      ['GET', '/v1/tokens', undefined, { read: 403, deploy: 403, admin: 200 }],
      ['POST', '/v1/tokens', { name: 'x', scope: 'read' }, { read: 403, deploy: 403, admin: 201 }],
    ];
    for (const [method, path, body, want] of matrix) {
      const got: Record<string, number> = {};
      for (const scope of ['read', 'deploy', 'admin'] as const) got[scope] = (await call(t[scope], method, path, body)).status;
      expect({ route: `${method} ${path}`, ...got }).toEqual({ route: `${method} ${path}`, ...want });
    }
    const denied = await call(t.read, 'POST', '/v1/apply', { items: [] });
    expect(denied.body.error).toMatchObject({ code: 'ERR_FORBIDDEN', message: 'token reader (scope read) may not POST /v1/apply: it needs scope deploy' });
    expect((await call(undefined, 'GET', '/v1/functions')).body.error?.code).toBe('ERR_UNAUTHORIZED');
    expect((await call('tide_00000000_nope', 'GET', '/v1/functions')).status).toBe(401);
  });

  it('lists tokens without secrets, and a revocation holds from the very next request', async () => {
    await start({ tokens: new TokenStore(store, ROOT) });
    const token = await issue('ci', 'deploy');
    expect((await call(token, 'GET', '/v1/functions')).status).toBe(200);
    const listed = await call(ROOT, 'GET', '/v1/tokens');
    expect(listed.body.items).toEqual([expect.objectContaining({ name: 'ci', scope: 'deploy', revokedAt: null, expiresAt: null })]);
    expect(JSON.stringify(listed.body)).not.toMatch(/hash|tide_/);

    expect((await call(ROOT, 'DELETE', '/v1/tokens/ci')).status).toBe(200);
    const after = await call(token, 'GET', '/v1/functions');
    expect(after.status).toBe(401);
    expect(after.body.error?.code).toBe('ERR_TOKEN_REVOKED');
    expect(after.body.error?.message).toMatch(/^token ci was revoked at /);

    const reuse = await call(ROOT, 'POST', '/v1/tokens', { name: 'ci', scope: 'read' });
    expect(reuse.status).toBe(409);
    expect((await call(ROOT, 'DELETE', '/v1/tokens/ci?purge=true')).body).toMatchObject({ name: 'ci', purged: true });
    expect((await call(ROOT, 'POST', '/v1/tokens', { name: 'ci', scope: 'read', ttl: '30d' })).status).toBe(201);

    expect((await call(ROOT, 'DELETE', '/v1/tokens/root')).status).toBe(403);
    expect((await call(ROOT, 'POST', '/v1/tokens', { name: 'Bad Name', scope: 'read' })).status).toBe(400);
    expect((await call(ROOT, 'POST', '/v1/tokens', { name: 'ok', scope: 'everything' })).status).toBe(400);
  });

  it('shows CA roots to read tokens and rotates them only for admin; 404 without a CA', async () => {
    const tokens = new TokenStore(store, ROOT);
    await start({ tokens });
    expect((await call(ROOT, 'GET', '/v1/ca')).status).toBe(404);
    await api.close();
    await start({
      tokens,
      ca: {
        roots: () => [{ fingerprint256: `AA:${rotated}` }],
        rotate: async () => {
          rotated++;
          return [{ fingerprint256: `AA:${rotated}` }];
        },
      },
    });
    const reader = await issue('reader', 'read');
    expect((await call(reader, 'GET', '/v1/ca')).body).toEqual({ roots: [{ fingerprint256: 'AA:0' }] });
    expect((await call(reader, 'POST', '/v1/ca/rotate', {})).status).toBe(403);
    expect((await call(ROOT, 'POST', '/v1/ca/rotate', {})).body).toEqual({ roots: [{ fingerprint256: 'AA:1' }] });
  });

  it('keeps the single-token mode when no TokenStore is given', async () => {
    await start({ token: ROOT });
    expect((await call(ROOT, 'GET', '/v1/functions')).status).toBe(200);
    expect((await call(ROOT, 'POST', '/v1/apply', { items: [] })).status).toBe(200);
    expect((await call('other', 'GET', '/v1/functions')).status).toBe(401);
    expect((await call(ROOT, 'GET', '/v1/tokens')).status).toBe(404);
  });
});
