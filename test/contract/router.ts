/**
 * The Router contract: every router implementation must pass this suite unchanged.
 */
import { describe, expect, it } from 'vitest';
import { isTideError } from '../../lib/errors.ts';
import type { RouteRequest, Router, VirtualHostSpec } from '../../proxy/router/index.ts';

type Make = (hosts: VirtualHostSpec<string>[]) => Router<string>;

const req = (host: string, url = '/', method = 'GET', headers: Record<string, string> = {}): RouteRequest => ({ host, url, method, headers });

export function routerContract(name: string, make: Make): void {
  describe(`Router contract: ${name}`, () => {
    const hosts: VirtualHostSpec<string>[] = [
      { name: 'exact', domains: ['shop.example.com'], routes: [{ name: 'all', match: {}, target: 'shop' }] },
      { name: 'deep-suffix', domains: ['*.api.example.com'], routes: [{ name: 'all', match: {}, target: 'deep' }] },
      { name: 'suffix', domains: ['*.example.com'], routes: [{ name: 'all', match: {}, target: 'suffix' }] },
      { name: 'prefix', domains: ['admin.*'], routes: [{ name: 'all', match: {}, target: 'prefix' }] },
      {
        name: 'default',
        domains: ['*'],
        routes: [
          { name: 'exact-path', match: { path: { exact: '/health' } }, target: 'health' },
          { name: 'post-only', match: { path: { prefix: '/api/' }, methods: ['POST'] }, target: 'api-post' },
          { name: 'canary', match: { path: { prefix: '/api/' }, headers: [{ name: 'X-Canary', exact: 'yes' }] }, target: 'api-canary' },
          { name: 'debug', match: { path: { prefix: '/api/' }, query: [{ name: 'debug', present: true }] }, target: 'api-debug' },
          { name: 'no-auth', match: { path: { prefix: '/api/' }, headers: [{ name: 'authorization', present: false }] }, target: 'api-anon' },
          { name: 'api', match: { path: { prefix: '/api/' } }, target: 'api' },
          { name: 'users', match: { path: { regex: '/users/[0-9]+' } }, target: 'user' },
          { name: 'lang', match: { query: [{ name: 'lang', regex: 'en|de' }] }, target: 'lang' },
          { name: 'agent', match: { headers: [{ name: 'user-agent', regex: 'curl/.*' }] }, target: 'curl' },
          { name: 'fallback', match: {}, target: 'fallback' },
        ],
      },
    ];
    const router = make(hosts);
    const target = (r: RouteRequest) => router.route(r)?.target;

    it('matches hosts most specific first, ignoring case and port', () => {
      expect(target(req('shop.example.com'))).toBe('shop');
      expect(target(req('SHOP.Example.COM:8080'))).toBe('shop');
      expect(target(req('v1.api.example.com'))).toBe('deep');
      expect(target(req('a.b.example.com'))).toBe('suffix');
      expect(target(req('admin.local'))).toBe('prefix');
      expect(target(req('example.com'))).toBe('fallback'); // *.example.com needs a label before it
      expect(target(req('shop.example.com.'))).toBe('shop');
    });
    it('tries routes in order; the first match wins', () => {
      expect(target(req('x', '/health'))).toBe('health');
      expect(target(req('x', '/health/deep'))).toBe('fallback');
      expect(target(req('x', '/api/a', 'POST', { 'x-canary': 'yes' }))).toBe('api-post');
      expect(target(req('x', '/api/a', 'GET', { 'x-canary': 'yes' }))).toBe('api-canary');
      expect(target(req('x', '/api/a?debug', 'GET', { authorization: 'Bearer t' }))).toBe('api-debug');
      expect(target(req('x', '/api/a', 'GET'))).toBe('api-anon');
      expect(target(req('x', '/api/a', 'GET', { authorization: 'Bearer t' }))).toBe('api');
    });
    it('anchors regular expressions to the whole value', () => {
      expect(target(req('x', '/users/42'))).toBe('user');
      expect(target(req('x', '/users/42/orders'))).toBe('fallback');
      expect(target(req('x', '/?lang=en'))).toBe('lang');
      expect(target(req('x', '/?lang=english'))).toBe('fallback');
      expect(target(req('x', '/', 'GET', { 'user-agent': 'curl/8.0' }))).toBe('curl');
    });
    it('matches the path without its query string', () => {
      expect(target(req('x', '/health?verbose=1'))).toBe('health');
    });
    it('answers undefined when no host or no route matches', () => {
      const strict = make([{ name: 'only', domains: ['a.test'], routes: [{ name: 'r', match: { path: { exact: '/' } }, target: 't' }] }]);
      expect(strict.route(req('b.test'))).toBeUndefined();
      expect(strict.route(req('a.test', '/nope'))).toBeUndefined();
      expect(strict.route(req('a.test', '/'))).toEqual({ virtualHost: 'only', route: 'r', target: 't' });
    });
    it.each([
      [
        [
          { name: 'a', domains: ['x.test'], routes: [] },
          { name: 'b', domains: ['X.test'], routes: [] },
        ],
        'virtualHosts[1].domains[0]',
        /already a domain of virtual host "a"/,
      ],
      [[{ name: 'a', domains: ['a*b.test'], routes: [] }], 'virtualHosts[0].domains[0]', /is not a domain/],
      [[{ name: 'a', domains: [], routes: [] }], 'virtualHosts[0].domains', /at least one domain/],
      [
        [{ name: 'a', domains: ['*'], routes: [{ name: 'r', match: { path: { regex: '(' } }, target: 't' }] }],
        'virtualHosts[0].routes[0].match.path.regex',
        /invalid regular expression/,
      ],
      [
        [{ name: 'a', domains: ['*'], routes: [{ name: 'r', match: { path: { exact: '/', prefix: '/' } }, target: 't' }] }],
        'virtualHosts[0].routes[0].match.path',
        /exactly one of/,
      ],
      [
        [{ name: 'a', domains: ['*'], routes: [{ name: 'r', match: { headers: [{ name: 'x' }] }, target: 't' }] }],
        'virtualHosts[0].routes[0].match.headers[0]',
        /exactly one of/,
      ],
    ] as [VirtualHostSpec<string>[], string, RegExp][])('refuses a bad config and names the field: %#', (config, field, message) => {
      try {
        make(config);
        expect.unreachable('a bad config must be refused');
      } catch (err) {
        expect(isTideError(err, 'ERR_CONFIG_INVALID')).toBe(true);
        expect((err as { details: { field: string } }).details.field).toBe(field);
        expect((err as Error).message).toMatch(message);
      }
    });
  });
}
