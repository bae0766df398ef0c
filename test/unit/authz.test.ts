import { describe, expect, it } from 'vitest';
import type { PolicyRecord } from '../../control/api/schema/policy.ts';
import type { PolicySpec } from '../../lib/config/resources.ts';
import { Authorizer } from '../../proxy/layers/authz.ts';
import { RateLimiter } from '../../proxy/layers/ratelimit.ts';

const TD = 'tide.local';
const id = (fn: string) => `spiffe://${TD}/ns/default/fn/${fn}`;
const GATEWAY = `spiffe://${TD}/ns/tide-system/gateway`;
const policy = (name: string, spec: PolicySpec): PolicyRecord => ({ name, namespace: 'default', spec, managedBy: 'apply' });

function authz(policies: PolicyRecord[], now = () => 0) {
  return new Authorizer(policies, TD, new RateLimiter(now));
}

const req = (source: string | undefined, method = 'GET', path = '/', plaintext = false) => ({ method, path, source, plaintext });

describe('authorization policies', () => {
  it('allows everything to a function no policy with rules selects, and STRICT is the default mTLS mode', () => {
    const a = authz([policy('modes', { selector: { functions: ['other'] }, mtls: { mode: 'PERMISSIVE' } })]);
    expect(a.check('default', 'orders', req(id('web')))).toBeUndefined();
    expect(a.check('default', 'orders', req(undefined))).toBeUndefined();
    expect(a.mode('default', 'orders')).toBe('STRICT');
    expect(a.check('default', 'orders', req(undefined, 'GET', '/', true))?.code).toBe('ERR_MTLS_REQUIRED');
    expect(a.mode('default', 'other')).toBe('PERMISSIVE');
    expect(a.check('default', 'other', req(undefined, 'GET', '/', true))).toBeUndefined();
    expect(a.plaintextAccepted).toBe(true);
    expect(authz([]).plaintextAccepted).toBe(false);
  });

  it('a function-level mode wins over the namespace-wide one; among equals the strictest', () => {
    const a = authz([
      policy('ns', { mtls: { mode: 'DISABLE' } }),
      policy('fn1', { selector: { functions: ['orders'] }, mtls: { mode: 'PERMISSIVE' } }),
      policy('fn2', { selector: { functions: ['orders'] }, mtls: { mode: 'STRICT' } }),
    ]);
    expect(a.mode('default', 'orders')).toBe('STRICT');
    expect(a.mode('default', 'web')).toBe('DISABLE');
  });

  it('denies by default once rules select a function, and matches source, method and path', () => {
    const a = authz([
      policy('orders-callers', {
        selector: { functions: ['orders'] },
        rules: [
          { from: [{ functions: ['web'] }], to: [{ methods: ['GET', 'POST'], paths: [{ prefix: '/api/' }] }] },
          { from: [{ namespaces: ['tide-system'] }], to: [{ paths: [{ exact: '/healthz' }] }] },
          { from: [{ principals: [`spiffe://${TD}/ns/default/fn/batch-*`] }], to: [{ paths: [{ regex: '/jobs/[0-9]+' }] }] },
        ],
      }),
    ]);
    const matrix: [string | undefined, string, string, string | undefined][] = [
      [id('web'), 'GET', '/api/orders?x=1', undefined],
      [id('web'), 'POST', '/api/orders', undefined],
      [id('web'), 'DELETE', '/api/orders', 'ERR_AUTHZ_NOT_ALLOWED'],
      [id('web'), 'GET', '/admin', 'ERR_AUTHZ_NOT_ALLOWED'],
      [id('other'), 'GET', '/api/orders', 'ERR_AUTHZ_NOT_ALLOWED'],
      [undefined, 'GET', '/api/orders', 'ERR_AUTHZ_NOT_ALLOWED'],
      [GATEWAY, 'GET', '/healthz', undefined],
      [GATEWAY, 'GET', '/api/orders', 'ERR_AUTHZ_NOT_ALLOWED'],
      [id('batch-nightly'), 'GET', '/jobs/42', undefined],
      [id('batch-nightly'), 'GET', '/jobs/42/x', 'ERR_AUTHZ_NOT_ALLOWED'],
      [`spiffe://elsewhere/ns/default/fn/web`, 'GET', '/api/orders', 'ERR_AUTHZ_NOT_ALLOWED'],
    ];
    for (const [source, method, path, want] of matrix) {
      const got = a.check('default', 'orders', req(source, method, path));
      expect({ source, method, path, code: got?.code }).toEqual({ source, method, path, code: want });
      if (got) expect(got.status).toBe(403);
    }
    // Other functions are not selected.
    expect(a.check('default', 'web', req(undefined))).toBeUndefined();
  });

  it('DENY rules are checked first and win over ALLOW, and an empty rule list denies everything', () => {
    const a = authz([
      policy('allow-all', { rules: [{}] }),
      policy('no-deletes', { rules: [{ action: 'DENY', to: [{ methods: ['DELETE'] }] }] }),
      policy('locked', { selector: { functions: ['vault'] }, rules: [] }),
    ]);
    expect(a.check('default', 'orders', req(id('web'), 'GET'))).toBeUndefined();
    const denied = a.check('default', 'orders', req(id('web'), 'DELETE', '/x'));
    expect(denied?.code).toBe('ERR_AUTHZ_DENIED');
    expect(denied?.message).toContain('no-deletes');
    // vault: selected by allow-all too (namespace-wide), so allow-all's rule lets requests in.
    expect(a.check('default', 'vault', req(id('web')))).toBeUndefined();
    const b = authz([policy('locked', { selector: { functions: ['vault'] }, rules: [] })]);
    expect(b.check('default', 'vault', req(id('web')))?.code).toBe('ERR_AUTHZ_NOT_ALLOWED');
  });

  it('a policy of DENY rules alone refuses only what they match (as Istio has it)', () => {
    const a = authz([policy('no-deletes', { rules: [{ action: 'DENY', to: [{ methods: ['DELETE'] }] }] })]);
    expect(a.check('default', 'orders', req(GATEWAY, 'GET'))).toBeUndefined();
    expect(a.check('default', 'orders', req(undefined, 'POST'))).toBeUndefined();
    expect(a.check('default', 'orders', req(GATEWAY, 'DELETE'))?.code).toBe('ERR_AUTHZ_DENIED');
  });

  it('rate limits with a token bucket per function, or per function and caller, and says when to come back', () => {
    let now = 0;
    const limiter = new RateLimiter(() => now);
    const policies = [
      policy('per-fn', { selector: { functions: ['orders'] }, rateLimit: { requestsPerSecond: 2, burst: 4 } }),
      policy('per-src', { selector: { functions: ['search'] }, rateLimit: { requestsPerSecond: 1, per: 'source' } }),
    ];
    let a = new Authorizer(policies, TD, limiter);
    const results = Array.from({ length: 6 }, () => a.check('default', 'orders', req(id('web')))?.code);
    expect(results).toEqual([undefined, undefined, undefined, undefined, 'ERR_RATE_LIMITED', 'ERR_RATE_LIMITED']);
    const limited = a.check('default', 'orders', req(id('web')));
    expect(limited?.status).toBe(429);
    expect(limited?.details?.retryAfterSeconds).toBe(1);
    now += 500; // one token back at 2/s
    // A new snapshot (new Authorizer) keeps the buckets: a config change does not refill them.
    a = new Authorizer(policies, TD, limiter);
    expect(a.check('default', 'orders', req(id('web')))).toBeUndefined();
    expect(a.check('default', 'orders', req(id('web')))?.code).toBe('ERR_RATE_LIMITED');
    // Per source: each caller has its own bucket of 1.
    expect(a.check('default', 'search', req(id('a')))).toBeUndefined();
    expect(a.check('default', 'search', req(id('a')))?.code).toBe('ERR_RATE_LIMITED');
    expect(a.check('default', 'search', req(id('b')))).toBeUndefined();
  });
});
