/**
 * The proxy's routing, rewrites, splits, protocols and reloads, end to end over real loopback
 * sockets: an in-process ProxyServer (test/helpers/proxy.ts) in front of counting upstreams.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import { type ClientHttp2Session, type IncomingHttpHeaders as H2Headers, connect as h2connect, type OutgoingHttpHeaders } from 'node:http2';
import { request as httpsRequest } from 'node:https';
import { type AddressInfo, connect as netConnect, type Socket } from 'node:net';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { Pool } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isTideError } from '../../lib/errors.ts';
import { ProxyMetrics } from '../../proxy/metrics.ts';
import { loadConfig } from '../../proxy/server.ts';
import { type RunningProxy, startProxy, startUpstream, twoClusterConfig, type Upstream } from '../helpers/proxy.ts';
import { eventually, http, sleep, tempDir } from '../helpers/tide.ts';

// ---------------------------------------------------------------------------------------------
// helpers

/** An upstream that names itself in `x-upstream` and sends three headers the routes edit. */
function namedUpstream(name: string): Promise<Upstream> {
  return startUpstream(name, (_req, res) => {
    res.writeHead(200, {
      'content-type': 'text/plain',
      'x-upstream': name,
      'x-resp-set': 'upstream',
      'x-resp-add': 'upstream',
      'x-resp-remove': 'upstream',
    });
    res.end(`hello from ${name}`);
  });
}

interface LoadResult {
  sent: number;
  byUpstream: Map<string, number>;
  /** Non-200 statuses and client errors, described. */
  failures: string[];
}

/**
 * Sends up to `total` GETs over `pool` with `concurrency` requests in flight, until `stop()`
 * says so or `maxMs` passes, counting answers by their `x-upstream` header.
 */
async function load(
  pool: Pool,
  opts: { total: number; concurrency: number; maxMs: number; stop?: () => boolean },
  next: (i: number) => { path: string; headers: Record<string, string> },
): Promise<LoadResult> {
  const out: LoadResult = { sent: 0, byUpstream: new Map(), failures: [] };
  const deadline = Date.now() + opts.maxMs;
  await Promise.all(
    Array.from({ length: opts.concurrency }, async () => {
      while (out.sent < opts.total && Date.now() < deadline && !opts.stop?.()) {
        const r = next(out.sent++);
        try {
          const res = await pool.request({ method: 'GET', path: r.path, headers: r.headers });
          await res.body.text();
          const up = String(res.headers['x-upstream'] ?? '');
          if (res.statusCode !== 200) out.failures.push(`${res.statusCode} ${String(res.headers['tide-proxy-error'] ?? '')}`);
          out.byUpstream.set(up, (out.byUpstream.get(up) ?? 0) + 1);
        } catch (err) {
          out.failures.push(String(err));
        }
      }
    }),
  );
  return out;
}

interface H2Answer {
  status: number;
  headers: H2Headers;
  text: string;
}

function h2request(session: ClientHttp2Session, headers: OutgoingHttpHeaders): Promise<H2Answer> {
  return h2post(session, headers, undefined);
}

function h2post(session: ClientHttp2Session, headers: OutgoingHttpHeaders, body: string | undefined): Promise<H2Answer> {
  return new Promise((resolve, reject) => {
    const req = session.request(headers, { endStream: body === undefined });
    let status = 0;
    let got: H2Headers = {};
    const chunks: Buffer[] = [];
    req.setTimeout(5000, () => req.close());
    req.on('response', (h) => {
      status = Number(h[':status']);
      got = h;
    });
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => resolve({ status, headers: got, text: Buffer.concat(chunks).toString() }));
    req.on('error', reject);
    req.end(body);
  });
}

function closeH2(session: ClientHttp2Session): Promise<void> {
  return new Promise((r) => {
    if (session.closed || session.destroyed) r();
    else session.close(() => r());
  });
}

/** The subject CN of the certificate the server presents for `servername` (and whether `ca` trusts it). */
function peerCertificate(port: number, servername: string, ca?: Buffer): Promise<{ cn: string; authorized: boolean }> {
  return new Promise((resolve, reject) => {
    // An empty servername sends no SNI (as for a client connecting by IP address).
    const s = tlsConnect({ host: '127.0.0.1', port, servername: servername || undefined, ca, rejectUnauthorized: false }, () => {
      const cert = s.getPeerCertificate();
      const cn = cert.subject?.CN;
      resolve({ cn: Array.isArray(cn) ? cn.join(',') : String(cn), authorized: s.authorized });
      s.destroy();
    });
    s.setTimeout(5000, () => s.destroy(new Error('TLS handshake timed out')));
    s.on('error', reject);
  });
}

function httpsGet(
  port: number,
  host: string,
  path: string,
  ca: Buffer,
): Promise<{ status: number; headers: IncomingHttpHeaders; text: string; alpn: string | false | null }> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest({ host: '127.0.0.1', port, path, servername: host, ca, headers: { host }, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          text: Buffer.concat(chunks).toString(),
          alpn: (res.socket as import('node:tls').TLSSocket).alpnProtocol,
        }),
      );
      res.on('error', reject);
    });
    req.setTimeout(5000, () => req.destroy(new Error('request timed out')));
    req.on('error', reject);
    req.end();
  });
}

/** Reads a raw socket into a string and waits for text to show up in it. */
function socketReader(socket: Socket): { text: () => string; until: (what: string | RegExp, from?: number, timeoutMs?: number) => Promise<number> } {
  let text = '';
  const waiters = new Set<() => void>();
  socket.on('data', (d: Buffer) => {
    text += d.toString('latin1');
    for (const w of waiters) w();
  });
  socket.on('close', () => {
    for (const w of waiters) w();
  });
  return {
    text: () => text,
    until: (what, from = 0, timeoutMs = 3000) =>
      new Promise((resolve, reject) => {
        const check = () => {
          const i = typeof what === 'string' ? text.indexOf(what, from) : text.slice(from).search(what);
          if (i !== -1) {
            clearTimeout(timer);
            waiters.delete(check);
            resolve(typeof what === 'string' ? i : i + from);
          } else if (socket.destroyed) {
            clearTimeout(timer);
            waiters.delete(check);
            reject(new Error(`the socket closed before ${String(what)} arrived; got: ${JSON.stringify(text)}`));
          }
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`${String(what)} did not arrive within ${timeoutMs} ms; got: ${JSON.stringify(text)}`));
        }, timeoutMs);
        waiters.add(check);
        check();
      }),
  };
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

async function adminGet(port: number, path: string): Promise<{ status: number; text: string }> {
  const r = await http(port, '127.0.0.1', path);
  return { status: r.status, text: r.text };
}

function makeCert(dir: string, name: string): { cert: string; key: string; pem: Buffer } {
  const cert = join(dir, `${name}.crt`);
  const key = join(dir, `${name}.key`);
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-subj',
      `/CN=${name}`,
      '-addext',
      `subjectAltName=DNS:${name}`,
      '-days',
      '1',
      '-keyout',
      key,
      '-out',
      cert,
    ],
    { stdio: 'ignore', timeout: 20_000 },
  );
  return { cert, key, pem: readFileSync(cert) };
}

// ---------------------------------------------------------------------------------------------
// one proxy for routing, edits, splits and protocols

describe('tide proxy routing', () => {
  let a: Upstream;
  let b: Upstream;
  let ws: Server;
  let wsPort = 0;
  const wsSeen: { url: string; headers: IncomingHttpHeaders }[] = [];
  const wsSockets = new Set<import('node:stream').Duplex>();
  let proxy: RunningProxy;
  let certs: { a: ReturnType<typeof makeCert>; b: ReturnType<typeof makeCert> };
  let pool: Pool | undefined;

  beforeAll(async () => {
    a = await namedUpstream('a');
    b = await namedUpstream('b');
    ws = createServer((_req, res) => {
      res.writeHead(426, { 'content-type': 'text/plain' });
      res.end('upgrade required');
    });
    ws.on('upgrade', (req, socket, head: Buffer) => {
      wsSeen.push({ url: req.url ?? '', headers: req.headers });
      wsSockets.add(socket);
      socket.on('close', () => wsSockets.delete(socket));
      socket.on('error', () => {});
      // http servers allow half-open sockets: end ours when the proxy ends its side.
      socket.on('end', () => socket.end());
      socket.write(`HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: ${req.headers.upgrade}\r\n\r\n`);
      if (head.length > 0) socket.write(head);
      socket.on('data', (d: Buffer) => {
        if (d.toString('latin1').endsWith('CLOSE')) socket.end('bye');
        else socket.write(d);
      });
    });
    await new Promise<void>((r) => ws.listen(0, '127.0.0.1', r));
    wsPort = (ws.address() as AddressInfo).port;

    const dir = tempDir('tide-certs-');
    certs = { a: makeCert(dir, 'a.test'), b: makeCert(dir, 'b.test') };

    proxy = await startProxy(`
listeners:
  - name: main
    port: 0
  - name: tls
    port: 0
    tls:
      certificates:
        - { cert: '${certs.a.cert}', key: '${certs.a.key}', serverNames: [a.test] }
        - { cert: '${certs.b.cert}', key: '${certs.b.key}', serverNames: [b.test] }
admin: { port: 0 }
virtualHosts:
  - name: shop
    domains: [shop.example.com]
    routes:
      - { name: shop, directResponse: { status: 200, body: vh-exact } }
  - name: wild
    domains: ['*.example.com']
    routes:
      - { name: wild, directResponse: { status: 200, body: vh-wild } }
  - name: api
    domains: ['api.*']
    routes:
      - { name: api, directResponse: { status: 200, body: vh-api } }
  - name: match
    domains: [match.test]
    routes:
      - { name: exact, match: { path: { exact: /exact } }, directResponse: { status: 200, body: exact } }
      - { name: regex, match: { path: { regex: '/items/[0-9]+' } }, directResponse: { status: 200, body: regex } }
      - { name: methods, match: { path: { prefix: /m/ }, methods: [POST, PUT] }, directResponse: { status: 200, body: methods } }
      - name: hdr-exact
        match: { path: { prefix: /h/ }, headers: [{ name: X-Env, exact: canary }] }
        directResponse: { status: 200, body: hdr-exact }
      - name: hdr-regex
        match: { path: { prefix: /h/ }, headers: [{ name: x-version, regex: 'v[23]' }] }
        directResponse: { status: 200, body: hdr-regex }
      - name: hdr-present
        match: { path: { prefix: /h/ }, headers: [{ name: x-debug, present: true }] }
        directResponse: { status: 200, body: hdr-present }
      - name: hdr-absent
        match: { path: { prefix: /h/ }, headers: [{ name: authorization, present: false }] }
        directResponse: { status: 200, body: hdr-absent }
      - name: query-exact
        match: { path: { exact: /q }, query: [{ name: mode, exact: fast }] }
        directResponse: { status: 200, body: query-exact }
      - name: query-multi
        match: { path: { exact: /q }, query: [{ name: id, regex: '[0-9]+' }, { name: debug, present: true }] }
        directResponse: { status: 200, body: query-multi }
      - name: query-absent
        match: { path: { exact: /q }, query: [{ name: mode, present: false }, { name: id, present: false }] }
        directResponse: { status: 200, body: query-absent }
      - { name: shadow, match: { path: { prefix: /s/ } }, directResponse: { status: 200, body: shadow } }
      - { name: shadowed, match: { path: { prefix: /s/deep/ } }, directResponse: { status: 200, body: shadowed } }
      - { name: prefix, match: { path: { prefix: /exact } }, directResponse: { status: 200, body: prefix } }
      - { name: default, backends: [{ cluster: a }] }
  - name: edit
    domains: [edit.test]
    routes:
      - name: api-rewrite
        match: { path: { prefix: /api/ } }
        rewrite: { prefix: / }
        backends: [{ cluster: a }]
      - name: host-rewrite
        match: { path: { prefix: /host/ } }
        rewrite: { host: internal.svc.local }
        backends: [{ cluster: a }]
      - name: req-headers
        match: { path: { prefix: /req-headers } }
        requestHeaders: { set: { x-set: proxy }, add: { x-add: proxy, x-add-new: proxy }, remove: [x-remove] }
        backends: [{ cluster: a }]
      - name: res-headers
        match: { path: { prefix: /res-headers } }
        responseHeaders: { set: { x-resp-set: proxy }, add: { x-resp-add: proxy }, remove: [x-resp-remove] }
        backends: [{ cluster: a }]
      - name: redirect-prefix
        match: { path: { prefix: /old/ } }
        redirect: { status: 301, prefixRewrite: /new/ }
      - name: redirect-path
        match: { path: { exact: /moved } }
        redirect: { path: /elsewhere, stripQuery: true }
      - name: redirect-https
        match: { path: { prefix: /secure } }
        redirect: { status: 308, scheme: https, host: secure.example.com }
      - name: teapot
        match: { path: { exact: /teapot } }
        directResponse: { status: 418, body: short and stout, contentType: text/x-teapot }
      - name: json
        match: { path: { exact: /json } }
        directResponse: { status: 503, body: '{"down":true}', contentType: application/json }
  - name: split
    domains: [split.test]
    routes:
      - { name: ninety-ten, match: { path: { prefix: /w } }, backends: [{ cluster: a, weight: 90 }, { cluster: b, weight: 10 }] }
      - { name: zero, match: { path: { prefix: /zero } }, backends: [{ cluster: a, weight: 1 }, { cluster: b, weight: 0 }] }
      - name: sticky-header
        match: { path: { prefix: /sticky-h } }
        backends: [{ cluster: a, weight: 50 }, { cluster: b, weight: 50 }]
        sticky: { header: X-User }
      - name: sticky-cookie
        match: { path: { prefix: /sticky-c } }
        backends: [{ cluster: a, weight: 50 }, { cluster: b, weight: 50 }]
        sticky: { cookie: session }
  - name: tls
    domains: [a.test, b.test]
    routes:
      - { name: tls, backends: [{ cluster: a }] }
  - name: ws
    domains: [ws.test]
    routes:
      - name: ws-rewrite
        match: { path: { prefix: /ws/ } }
        rewrite: { prefix: /, host: ws.internal }
        requestHeaders: { set: { x-route: ws-rewrite }, remove: [x-secret] }
        backends: [{ cluster: ws }]
      - { name: ws, backends: [{ cluster: ws }] }
  - name: metrics
    domains: [metrics.test]
    routes:
      - { name: ok, match: { path: { exact: /ok } }, backends: [{ cluster: b }] }
      - { name: teapot, directResponse: { status: 418, body: tea } }
clusters:
  - { name: a, endpoints: ['${a.address}'] }
  - { name: b, endpoints: ['${b.address}'] }
  - { name: ws, endpoints: ['127.0.0.1:${wsPort}'] }
`);
  });

  afterAll(async () => {
    await pool?.close();
    await proxy?.close();
    await a?.close();
    await b?.close();
    if (ws) {
      for (const s of wsSockets) s.destroy();
      ws.closeAllConnections();
      await new Promise<void>((r) => ws.close(() => r()));
    }
  });

  const get = (host: string, path = '/', init: Parameters<typeof http>[3] = {}) => http(proxy.port, host, path, { timeoutMs: 5000, ...init });
  const splitPool = () => {
    pool ??= new Pool(`http://127.0.0.1:${proxy.port}`, { connections: 16 });
    return pool;
  };

  describe('virtual hosts', () => {
    it('picks an exact domain, folding case and ignoring the port', async () => {
      for (const host of ['shop.example.com', 'SHOP.Example.COM', 'shop.example.com:8443', 'Shop.Example.Com:80']) {
        const r = await get(host);
        expect([host, r.status, r.text]).toEqual([host, 200, 'vh-exact']);
      }
    });

    it('matches *.example.com for subdomains at any depth, but not example.com itself', async () => {
      for (const host of ['www.example.com', 'a.b.example.com', 'API.example.com:9000', 'api.example.com']) {
        const r = await get(host);
        expect([host, r.status, r.text]).toEqual([host, 200, 'vh-wild']);
      }
      const bare = await get('example.com');
      expect(bare.status).toBe(404);
      expect(bare.headers['tide-proxy-error']).toBe('ERR_PROXY_NO_ROUTE');
    });

    it('matches api.* by prefix', async () => {
      for (const host of ['api.other.org', 'API.internal:8080', 'api.x']) {
        const r = await get(host);
        expect([host, r.status, r.text]).toEqual([host, 200, 'vh-api']);
      }
      const r = await get('apix.other.org');
      expect(r.status).toBe(404);
    });

    it('answers an unknown host with 404 ERR_PROXY_NO_ROUTE', async () => {
      const r = await get('nobody.invalid');
      expect(r.status).toBe(404);
      expect(r.headers['tide-proxy-error']).toBe('ERR_PROXY_NO_ROUTE');
      expect(r.headers['x-request-id']).toBeTruthy();
      expect(a.seen.some((s) => s.headers['x-forwarded-host'] === 'nobody.invalid')).toBe(false);
    });

    it('falls back to the catch-all * only when nothing more specific matches', async () => {
      const p = await startProxy(`
listeners: [{ name: main, port: 0 }]
virtualHosts:
  - name: wild
    domains: ['*.example.com']
    routes: [{ name: wild, directResponse: { status: 200, body: vh-wild } }]
  - name: exact
    domains: [exact.test]
    routes: [{ name: exact, directResponse: { status: 200, body: vh-exact } }]
  - name: any
    domains: ['*']
    routes: [{ name: any, directResponse: { status: 200, body: vh-any } }]
`);
      try {
        const at = (host: string) => http(p.port, host, '/', { timeoutMs: 5000 }).then((r) => `${r.status} ${r.text}`);
        expect(await at('example.com')).toBe('200 vh-any');
        expect(await at('x.example.com')).toBe('200 vh-wild');
        expect(await at('EXACT.test:1234')).toBe('200 vh-exact');
        expect(await at('anything.else')).toBe('200 vh-any');
        expect(await at('127.0.0.1')).toBe('200 vh-any');
      } finally {
        await p.close();
      }
    });
  });

  describe('route matching (first match wins)', () => {
    const body = async (path: string, init: Parameters<typeof http>[3] = {}) => {
      const r = await get('match.test', path, init);
      expect(r.status).toBe(200);
      return r.headers['x-upstream'] === 'a' ? 'default' : r.text;
    };

    it('matches paths exactly, by prefix and by anchored regex, in order', async () => {
      expect(await body('/exact')).toBe('exact');
      expect(await body('/exact?x=1')).toBe('exact');
      expect(await body('/exactly')).toBe('prefix');
      expect(await body('/exact/sub')).toBe('prefix');
      expect(await body('/items/42')).toBe('regex');
      expect(await body('/items/42/more')).toBe('default');
      expect(await body('/items/abc')).toBe('default');
      expect(await body('/s/x')).toBe('shadow');
      expect(await body('/s/deep/x')).toBe('shadow');
      expect(await body('/nothing/here')).toBe('default');
    });

    it('matches methods', async () => {
      expect(await body('/m/x', { method: 'POST', body: 'x' })).toBe('methods');
      expect(await body('/m/x', { method: 'PUT', body: 'x' })).toBe('methods');
      expect(await body('/m/x')).toBe('default');
      expect(await body('/m/x', { method: 'DELETE' })).toBe('default');
    });

    it('matches headers: exact (name case-insensitive), anchored regex, present, absent', async () => {
      expect(await body('/h/1', { headers: { 'x-env': 'canary' } })).toBe('hdr-exact');
      expect(await body('/h/1', { headers: { 'X-ENV': 'canary', 'x-version': 'v2', 'x-debug': '1' } })).toBe('hdr-exact');
      expect(await body('/h/1', { headers: { 'x-env': 'Canary', 'x-version': 'v3' } })).toBe('hdr-regex');
      expect(await body('/h/1', { headers: { 'x-version': 'v2' } })).toBe('hdr-regex');
      expect(await body('/h/1', { headers: { 'x-version': 'v22', 'x-debug': '' } })).toBe('hdr-present');
      expect(await body('/h/1', { headers: { 'x-debug': 'yes', authorization: 'Bearer x' } })).toBe('hdr-present');
      expect(await body('/h/1')).toBe('hdr-absent');
      expect(await body('/h/1', { headers: { 'x-version': 'v4' } })).toBe('hdr-absent');
      expect(await body('/h/1', { headers: { authorization: 'Bearer x' } })).toBe('default');
    });

    it('matches query parameters: exact, regex plus present, absent', async () => {
      expect(await body('/q?mode=fast')).toBe('query-exact');
      expect(await body('/q?a=1&mode=fast&b=2')).toBe('query-exact');
      expect(await body('/q?id=12&debug')).toBe('query-multi');
      expect(await body('/q?debug=1&id=7')).toBe('query-multi');
      expect(await body('/q?id=12')).toBe('default');
      expect(await body('/q?id=x1&debug')).toBe('default');
      expect(await body('/q?mode=slow')).toBe('default');
      expect(await body('/q')).toBe('query-absent');
      expect(await body('/q?other=1')).toBe('query-absent');
    });

    it('sends what matches nothing else to the last, default route (to the upstream)', async () => {
      const r = await get('match.test', '/anything?k=v');
      expect(r.status).toBe(200);
      expect(r.headers['x-upstream']).toBe('a');
      expect(a.seen.at(-1)?.url).toBe('/anything?k=v');
    });
  });

  describe('rewrites, header edits, redirects, direct responses', () => {
    it('rewrites a path prefix (/api/ → /), keeping the query', async () => {
      const r = await get('edit.test', '/api/users/7?x=1');
      expect(r.status).toBe(200);
      expect(r.headers['x-upstream']).toBe('a');
      expect(a.seen.at(-1)?.url).toBe('/users/7?x=1');
      await get('edit.test', '/api/');
      expect(a.seen.at(-1)?.url).toBe('/');
    });

    it('rewrites the Host the upstream sees', async () => {
      const r = await get('edit.test', '/host/x');
      expect(r.status).toBe(200);
      const seen = a.seen.at(-1);
      expect(seen?.url).toBe('/host/x');
      expect(seen?.headers.host).toBe('internal.svc.local');
      expect(seen?.headers['x-forwarded-host']).toBe('edit.test');
    });

    it('sets, adds and removes request headers', async () => {
      const r = await get('edit.test', '/req-headers', { headers: { 'x-set': 'client', 'x-add': 'client', 'x-remove': 'client', 'x-keep': 'client' } });
      expect(r.status).toBe(200);
      const h = a.seen.at(-1)?.headers ?? {};
      expect(h['x-set']).toBe('proxy');
      expect(h['x-add']).toBe('client, proxy');
      expect(h['x-add-new']).toBe('proxy');
      expect(h['x-remove']).toBeUndefined();
      expect(h['x-keep']).toBe('client');
      expect(h['x-forwarded-proto']).toBe('http');
      expect(h['x-request-id']).toBeTruthy();
    });

    it('sets, adds and removes response headers', async () => {
      const r = await get('edit.test', '/res-headers');
      expect(r.status).toBe(200);
      expect(r.headers['x-resp-set']).toBe('proxy');
      expect(r.headers['x-resp-add']).toBe('upstream, proxy');
      expect(r.headers['x-resp-remove']).toBeUndefined();
      expect(r.headers['x-upstream']).toBe('a');
      // Other routes leave them alone.
      const plain = await get('edit.test', '/api/x');
      expect([plain.headers['x-resp-set'], plain.headers['x-resp-add'], plain.headers['x-resp-remove']]).toEqual(['upstream', 'upstream', 'upstream']);
    });

    it('redirects with a prefix rewrite, keeping the query by default', async () => {
      const before = a.seen.length;
      const r = await get('edit.test', '/old/page/1?x=1&y=2');
      expect(r.status).toBe(301);
      expect(r.headers.location).toBe('http://edit.test/new/page/1?x=1&y=2');
      expect(a.seen.length).toBe(before);
    });

    it('redirects to a fixed path with the query stripped, 302 by default', async () => {
      const r = await get('edit.test', '/moved?secret=1');
      expect(r.status).toBe(302);
      expect(r.headers.location).toBe('http://edit.test/elsewhere');
    });

    it('redirects to another scheme and host', async () => {
      const r = await get('edit.test', '/secure/area?q=1');
      expect(r.status).toBe(308);
      expect(r.headers.location).toBe('https://secure.example.com/secure/area?q=1');
    });

    it('answers direct responses with their status, body and content type', async () => {
      const before = a.seen.length;
      const t = await get('edit.test', '/teapot');
      expect(t.status).toBe(418);
      expect(t.text).toBe('short and stout');
      expect(t.headers['content-type']).toBe('text/x-teapot');
      expect(t.headers['content-length']).toBe(String(Buffer.byteLength('short and stout')));
      const j = await get('edit.test', '/json');
      expect(j.status).toBe(503);
      expect(JSON.parse(j.text)).toEqual({ down: true });
      expect(j.headers['content-type']).toBe('application/json');
      expect(a.seen.length).toBe(before);
    });
  });

  describe('weighted and sticky splits', () => {
    it('splits 90/10 over 10,000 requests (each side within ±2 points)', async () => {
      const started = Date.now();
      const r = await load(splitPool(), { total: 10_000, concurrency: 32, maxMs: 30_000 }, (i) => ({ path: `/w/${i}`, headers: { host: 'split.test' } }));
      expect(r.failures).toEqual([]);
      expect(r.sent).toBe(10_000);
      const na = r.byUpstream.get('a') ?? 0;
      const nb = r.byUpstream.get('b') ?? 0;
      expect(na + nb).toBe(10_000);
      expect(Math.abs((na / 10_000) * 100 - 90)).toBeLessThanOrEqual(2);
      expect(Math.abs((nb / 10_000) * 100 - 10)).toBeLessThanOrEqual(2);
      expect(Date.now() - started).toBeLessThan(30_000);
    });

    it('sends nothing to a backend of weight 0', async () => {
      const r = await load(splitPool(), { total: 300, concurrency: 8, maxMs: 10_000 }, () => ({ path: '/zero', headers: { host: 'split.test' } }));
      expect(r.failures).toEqual([]);
      expect(r.byUpstream.get('a')).toBe(300);
      expect(r.byUpstream.get('b') ?? 0).toBe(0);
    });

    for (const kind of ['header', 'cookie'] as const) {
      const path = kind === 'header' ? '/sticky-h' : '/sticky-c';
      const keyed = (key: string): Record<string, string> =>
        kind === 'header' ? { host: 'split.test', 'x-user': key } : { host: 'split.test', cookie: `theme=dark; session=${key}; other=1` };

      it(`keeps a client on one cluster by ${kind} and spreads different keys over both`, async () => {
        const same = await load(splitPool(), { total: 200, concurrency: 8, maxMs: 10_000 }, () => ({ path, headers: keyed('alice-123') }));
        expect(same.failures).toEqual([]);
        expect(same.byUpstream.size).toBe(1);
        expect([...same.byUpstream.values()]).toEqual([200]);

        // 40 keys, 5 requests each, interleaved: every key sticks; the keys cover both clusters.
        const byKey = new Map<string, Set<string>>();
        const keys = Array.from({ length: 40 }, (_, i) => `user-${i}`);
        for (let round = 0; round < 5; round++) {
          for (const k of keys) {
            const res = await splitPool().request({ method: 'GET', path, headers: keyed(k) });
            await res.body.text();
            expect(res.statusCode).toBe(200);
            const set = byKey.get(k) ?? new Set();
            set.add(String(res.headers['x-upstream']));
            byKey.set(k, set);
          }
        }
        for (const [k, set] of byKey) expect([k, set.size]).toEqual([k, 1]);
        const clusters = new Set([...byKey.values()].flatMap((s) => [...s]));
        expect([...clusters].sort()).toEqual(['a', 'b']);

        // Without the key, requests are split as usual.
        const keyless = await load(splitPool(), { total: 100, concurrency: 4, maxMs: 10_000 }, () => ({ path, headers: { host: 'split.test' } }));
        expect(keyless.failures).toEqual([]);
        expect(keyless.byUpstream.get('a')).toBe(50);
        expect(keyless.byUpstream.get('b')).toBe(50);
      });
    }
  });

  describe('HTTP/2 and TLS', () => {
    it('routes h2c with prior knowledge', async () => {
      const session = h2connect(`http://127.0.0.1:${proxy.port}`);
      session.on('error', () => {});
      try {
        const r = await h2request(session, { ':path': '/api/h2c?x=1', ':authority': 'edit.test' });
        expect(r.status).toBe(200);
        expect(r.text).toBe('hello from a');
        expect(r.headers['x-upstream']).toBe('a');
        expect(a.seen.at(-1)?.url).toBe('/h2c?x=1');
        expect(a.seen.at(-1)?.headers['x-forwarded-proto']).toBe('http');
        // Several streams on the one session.
        const many = await Promise.all(Array.from({ length: 10 }, (_, i) => h2request(session, { ':path': `/exact?i=${i}`, ':authority': 'match.test' })));
        expect(many.map((m) => `${m.status} ${m.text}`)).toEqual(Array.from({ length: 10 }, () => '200 exact'));
        const post = await h2post(session, { ':path': '/api/h2c-post', ':authority': 'edit.test', ':method': 'POST' }, 'h2 body');
        expect(post.status).toBe(200);
        expect(a.seen.at(-1)).toMatchObject({ method: 'POST', url: '/h2c-post', body: 'h2 body' });
        const none = await h2request(session, { ':path': '/', ':authority': 'nobody.invalid' });
        expect(none.status).toBe(404);
        expect(none.headers['tide-proxy-error']).toBe('ERR_PROXY_NO_ROUTE');
      } finally {
        await closeH2(session);
      }
    });

    it('presents the certificate matching the SNI name (first one by default)', async () => {
      const port = proxy.ports.tls as number;
      expect(await peerCertificate(port, 'a.test', certs.a.pem)).toEqual({ cn: 'a.test', authorized: true });
      expect(await peerCertificate(port, 'b.test', certs.b.pem)).toEqual({ cn: 'b.test', authorized: true });
      expect(await peerCertificate(port, 'B.TEST')).toMatchObject({ cn: 'b.test' });
      expect(await peerCertificate(port, 'unknown.test')).toMatchObject({ cn: 'a.test' });
    });

    it('answers HTTPS over HTTP/1.1 with x-forwarded-proto https at the upstream', async () => {
      const port = proxy.ports.tls as number;
      for (const [host, pem] of [
        ['a.test', certs.a.pem],
        ['b.test', certs.b.pem],
      ] as const) {
        const r = await httpsGet(port, host, `/tls-h1/${host}`, pem);
        expect(r.status).toBe(200);
        expect(r.text).toBe('hello from a');
        expect(r.alpn).not.toBe('h2');
        const seen = a.seen.at(-1);
        expect(seen?.url).toBe(`/tls-h1/${host}`);
        expect(seen?.headers['x-forwarded-proto']).toBe('https');
        expect(seen?.headers.host).toBe(host);
      }
    });

    it('answers HTTPS over h2 negotiated by ALPN with x-forwarded-proto https at the upstream', async () => {
      const port = proxy.ports.tls as number;
      const session = h2connect(`https://127.0.0.1:${port}`, { ca: certs.b.pem, servername: 'b.test' });
      session.on('error', () => {});
      try {
        const r = await h2request(session, { ':path': '/tls-h2', ':authority': 'b.test' });
        expect(r.status).toBe(200);
        expect(r.text).toBe('hello from a');
        expect((session.socket as import('node:tls').TLSSocket).alpnProtocol).toBe('h2');
        const seen = a.seen.at(-1);
        expect(seen?.url).toBe('/tls-h2');
        expect(seen?.headers['x-forwarded-proto']).toBe('https');
        expect(seen?.headers.host).toBe('b.test');
      } finally {
        await closeH2(session);
      }
    });
  });

  describe('TLS default certificate and certificate reloads', () => {
    it('presents the first certificate to a client that sends no SNI (connects by IP address)', async () => {
      const port = proxy.ports.tls as number;
      // Node sends no SNI for an IP address: the listener's default (first) certificate must answer.
      expect(await peerCertificate(port, '')).toMatchObject({ cn: 'a.test' });
    });

    it('serves the reloaded certificates to new connections, the default one included', async () => {
      const tlsConfig = (first: 'a' | 'b') => {
        const order = first === 'a' ? [certs.a, certs.b] : [certs.b, certs.a];
        const names = first === 'a' ? ['a.test', 'b.test'] : ['b.test', 'a.test'];
        return `
listeners:
  - name: tls
    port: 0
    tls:
      certificates:
        - { cert: '${order[0]?.cert}', key: '${order[0]?.key}', serverNames: [${names[0]}] }
        - { cert: '${order[1]?.cert}', key: '${order[1]?.key}', serverNames: [${names[1]}] }
virtualHosts:
  - name: all
    domains: ['*']
    routes: [{ name: r, directResponse: { status: 200, body: hi } }]
`;
      };
      const p = await startProxy(tlsConfig('a'));
      try {
        expect(await peerCertificate(p.port, 'a.test')).toMatchObject({ cn: 'a.test' });
        expect(await peerCertificate(p.port, 'other.test')).toMatchObject({ cn: 'a.test' });
        p.write(tlsConfig('b'));
        expect(await p.server.reload()).toEqual({ applied: true });
        expect(await peerCertificate(p.port, 'a.test')).toMatchObject({ cn: 'a.test' });
        expect(await peerCertificate(p.port, 'b.test')).toMatchObject({ cn: 'b.test' });
        expect(await peerCertificate(p.port, 'other.test')).toMatchObject({ cn: 'b.test' });
        expect(await peerCertificate(p.port, '')).toMatchObject({ cn: 'b.test' });
      } finally {
        await p.close();
      }
    });
  });

  describe('Upgrade', () => {
    it('passes a WebSocket-style upgrade through and round-trips bytes both ways', async () => {
      const socket = netConnect({ host: '127.0.0.1', port: proxy.port });
      socket.on('error', () => {});
      const rd = socketReader(socket);
      try {
        await new Promise<void>((r) => socket.once('connect', () => r()));
        socket.write('GET /chat?room=1 HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: tide-echo\r\nX-Client: raw\r\n\r\nearly-bytes;');
        const headEnd = await rd.until('\r\n\r\n');
        const head = rd.text().slice(0, headEnd);
        expect(head).toMatch(/^HTTP\/1\.1 101 /);
        expect(head.toLowerCase()).toContain('upgrade: tide-echo');
        let from = headEnd + 4;
        from = (await rd.until('early-bytes;', from)) + 'early-bytes;'.length;
        for (let i = 0; i < 5; i++) {
          const msg = `ping-${i}-${'x'.repeat(i * 1000)};`;
          socket.write(msg);
          from = (await rd.until(msg, from)) + msg.length;
        }
        const bin = Buffer.from([0, 1, 2, 255, 254, 10, 13]);
        socket.write(bin);
        await rd.until(bin.toString('latin1'), from);
        const seen = wsSeen.at(-1);
        expect(seen?.url).toBe('/chat?room=1');
        expect(seen?.headers.upgrade).toBe('tide-echo');
        expect(seen?.headers['x-client']).toBe('raw');
        expect(seen?.headers.host).toBe('ws.test');
        expect(seen?.headers['x-forwarded-for']).toBe('127.0.0.1');
        expect(wsSockets.size).toBe(1);
      } finally {
        socket.destroy();
      }
      // The client went away: the proxy closes the upstream side too.
      await eventually(() => wsSockets.size === 0, 3000);
    });

    it("applies the route's rewrites and request header edits to an upgrade request", async () => {
      const socket = netConnect({ host: '127.0.0.1', port: proxy.port });
      socket.on('error', () => {});
      const rd = socketReader(socket);
      try {
        socket.write('GET /ws/chat?room=2 HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: tide-echo\r\nX-Secret: s3cr3t\r\n\r\n');
        const headEnd = await rd.until('\r\n\r\n');
        expect(rd.text()).toMatch(/^HTTP\/1\.1 101 /);
        socket.write('hello;');
        await rd.until('hello;', headEnd + 4);
        const seen = wsSeen.at(-1);
        expect(seen?.url).toBe('/chat?room=2');
        expect(seen?.headers.host).toBe('ws.internal');
        expect(seen?.headers['x-route']).toBe('ws-rewrite');
        expect(seen?.headers['x-secret']).toBeUndefined();
      } finally {
        socket.destroy();
      }
    });

    it('closes the client side when the upstream ends the upgraded connection', async () => {
      const socket = netConnect({ host: '127.0.0.1', port: proxy.port });
      socket.on('error', () => {});
      const rd = socketReader(socket);
      try {
        socket.write('GET /chat HTTP/1.1\r\nHost: ws.test\r\nConnection: upgrade\r\nUpgrade: tide-echo\r\n\r\n');
        const headEnd = await rd.until('\r\n\r\n');
        expect(rd.text()).toMatch(/^HTTP\/1\.1 101 /);
        socket.write('CLOSE');
        await rd.until('bye', headEnd);
        await new Promise<void>((resolve, reject) => {
          const t = setTimeout(() => reject(new Error('the proxy kept the client socket open after the upstream closed')), 3000);
          if (socket.destroyed || socket.readableEnded) {
            clearTimeout(t);
            resolve();
          }
          socket.once('end', () => {
            clearTimeout(t);
            resolve();
          });
          socket.once('close', () => {
            clearTimeout(t);
            resolve();
          });
        });
      } finally {
        socket.destroy();
      }
    });

    it('refuses an upgrade for a host with no route', async () => {
      const socket = netConnect({ host: '127.0.0.1', port: proxy.port });
      socket.on('error', () => {});
      const rd = socketReader(socket);
      try {
        socket.write('GET /chat HTTP/1.1\r\nHost: nobody.invalid\r\nConnection: Upgrade\r\nUpgrade: tide-echo\r\n\r\n');
        await rd.until('\r\n\r\n');
        expect(rd.text()).toMatch(/^HTTP\/1\.1 404 /);
        expect(rd.text().toLowerCase()).toContain('tide-proxy-error: err_proxy_no_route');
      } finally {
        socket.destroy();
      }
    });
  });

  describe('admin', () => {
    it('/metrics counts requests by route, cluster and code; /ready is 200', async () => {
      for (let i = 0; i < 3; i++) expect((await get('metrics.test', '/ok')).status).toBe(200);
      for (let i = 0; i < 2; i++) expect((await get('metrics.test', '/brew')).status).toBe(418);
      const admin = proxy.ports.admin as number;
      const line = (labels: string) => new RegExp(`^tide_proxy_requests_total\\{${escapeRe(labels)}\\} (\\d+)$`, 'm');
      const text = await eventually(async () => {
        const m = await adminGet(admin, '/metrics');
        return m.status === 200 && line('virtual_host="metrics",route="teapot",cluster="",code="418"').test(m.text) ? m.text : undefined;
      }, 5000);
      expect(line('virtual_host="metrics",route="ok",cluster="b",code="200"').exec(text)?.[1]).toBe('3');
      expect(line('virtual_host="metrics",route="teapot",cluster="",code="418"').exec(text)?.[1]).toBe('2');
      expect(Number(line('virtual_host="",route="",cluster="",code="404"').exec(text)?.[1])).toBeGreaterThanOrEqual(1);
      expect(Number(line('virtual_host="split",route="ninety-ten",cluster="a",code="200"').exec(text)?.[1])).toBeGreaterThanOrEqual(8800);
      expect(text).toMatch(/^tide_proxy_config_version 1$/m);
      const ready = await adminGet(admin, '/ready');
      expect(ready.status).toBe(200);
    });
  });
});

// ---------------------------------------------------------------------------------------------
// config errors

describe('tide proxy config errors', () => {
  const listener = 'listeners:\n  - name: main\n    port: 0\n';
  const clusters = "clusters:\n  - name: a\n    endpoints: ['127.0.0.1:9']\n";

  /** Writes `yaml`, loads it, and expects ERR_CONFIG_INVALID at `file:LINE:COL` for the last line containing `marker`. */
  async function expectProblem(yaml: string, marker: string, message: RegExp): Promise<void> {
    const lines = yaml.split('\n');
    let line = -1;
    lines.forEach((l, i) => {
      if (l.includes(marker)) line = i + 1;
    });
    expect(line).toBeGreaterThan(0);
    const file = join(tempDir('tide-proxy-bad-'), 'proxy.yaml');
    writeFileSync(file, yaml);
    let err: unknown;
    try {
      const snapshot = loadConfig(file, 1, new ProxyMetrics());
      await Promise.all([...snapshot.clusters.values()].map((c) => c.destroy()));
    } catch (e) {
      err = e;
    }
    expect(isTideError(err, 'ERR_CONFIG_INVALID')).toBe(true);
    const msg = (err as Error).message;
    expect(msg).toMatch(new RegExp(`${escapeRe(file)}:${line}:\\d+: `));
    expect(msg).toMatch(message);

    // startProxy (ProxyServer.start) refuses the same file and starts nothing.
    let startErr: unknown;
    let started: RunningProxy | undefined;
    try {
      started = await startProxy(yaml);
    } catch (e) {
      startErr = e;
    }
    await started?.close();
    expect(isTideError(startErr, 'ERR_CONFIG_INVALID')).toBe(true);
    expect((startErr as Error).message).toMatch(new RegExp(`proxy\\.yaml:${line}:\\d+: `));
  }

  it('reports an unknown field at its key', async () => {
    const yaml = `${listener}virtualHosts:
  - name: all
    domains: ['*']
    routes:
      - name: r
        bogus: 1
        directResponse: { status: 200 }
`;
    await expectProblem(yaml, 'bogus: 1', /\/virtualHosts\/0\/routes\/0\/bogus: unknown field "bogus"/);
  });

  it('reports a value of the wrong type', async () => {
    const yaml = `listeners:
  - name: main
    port: eighty
virtualHosts:
  - name: all
    domains: ['*']
    routes:
      - { name: r, directResponse: { status: 200 } }
`;
    await expectProblem(yaml, 'port: eighty', /\/listeners\/0\/port: must be integer/);
  });

  it('reports a backend naming a missing cluster', async () => {
    const yaml = `${listener}virtualHosts:
  - name: all
    domains: ['*']
    routes:
      - name: r
        backends:
          - cluster: a
          - cluster: nope
${clusters}`;
    await expectProblem(yaml, 'cluster: nope', /backends\/1\/cluster: no cluster named "nope"/);
  });

  it('reports an invalid regular expression in a match', async () => {
    const yaml = `${listener}virtualHosts:
  - name: all
    domains: ['*']
    routes:
      - name: ok
        match: { path: { prefix: /ok } }
        backends: [{ cluster: a }]
      - name: bad
        match:
          headers:
            - name: x-v
              regex: 'v(1|2'
        backends: [{ cluster: a }]
${clusters}`;
    await expectProblem(yaml, "regex: 'v(1|2'", /routes\/1\/match\/headers\/0\/regex: invalid regular expression/);
  });

  it('reports an invalid path regex', async () => {
    const yaml = `${listener}virtualHosts:
  - name: all
    domains: ['*']
    routes:
      - name: bad
        match: { path: { regex: '/items/[0-9' } }
        backends: [{ cluster: a }]
${clusters}`;
    await expectProblem(yaml, '/items/[0-9', /match\/path\/regex: invalid regular expression/);
  });

  it('reports duplicate route names at the second one', async () => {
    const yaml = `${listener}virtualHosts:
  - name: all
    domains: ['*']
    routes:
      - name: twice
        match: { path: { prefix: /a } }
        backends: [{ cluster: a }]
      - name: twice
        backends: [{ cluster: a }]
${clusters}`;
    await expectProblem(yaml, 'name: twice', /routes\/1\/name: route "twice" is defined twice/);
  });

  it('reports a route with both backends and a redirect', async () => {
    const yaml = `${listener}virtualHosts:
  - name: all
    domains: ['*']
    routes:
      - name: first
        directResponse: { status: 200 }
      - name: both
        backends: [{ cluster: a }]
        redirect: { path: /x }
${clusters}`;
    await expectProblem(yaml, 'name: both', /routes\/1: a route needs exactly one of backends, redirect, directResponse \(has backends, redirect\)/);
  });

  it('reports a TLS certificate path that cannot be read', async () => {
    const dir = tempDir('tide-certs-');
    const ok = makeCert(dir, 'ok.test');
    const yaml = `listeners:
  - name: main
    port: 0
  - name: tls
    port: 0
    tls:
      certificates:
        - cert: '${ok.cert}'
          key: '${ok.key}'
        - cert: /nonexistent/tide/cert.pem
          key: '${ok.key}'
virtualHosts:
  - name: all
    domains: ['*']
    routes:
      - { name: r, directResponse: { status: 200 } }
`;
    await expectProblem(yaml, '/nonexistent/tide/cert.pem', /certificates\/1\/cert: cannot read \/nonexistent\/tide\/cert\.pem: ENOENT/);
  });
});

// ---------------------------------------------------------------------------------------------
// hot reload

describe('tide proxy hot reload', () => {
  let a: Upstream;
  let b: Upstream;
  let proxy: RunningProxy;
  let pool: Pool | undefined;

  const config = (cluster: string, extraRoute = '') => twoClusterConfig(a, b, cluster, extraRoute);

  beforeAll(async () => {
    a = await namedUpstream('a');
    b = await namedUpstream('b');
    proxy = await startProxy(config('a'));
  });
  afterAll(async () => {
    await pool?.close();
    await proxy?.close();
    await a?.close();
    await b?.close();
  });

  const upstreamOf = async () => {
    const r = await http(proxy.port, 'reload.test', '/', { timeoutMs: 5000 });
    return `${r.status} ${String(r.headers['x-upstream'] ?? r.headers['tide-proxy-error'])}`;
  };
  const adminConfig = async () => JSON.parse((await adminGet(proxy.ports.admin as number, '/config')).text) as { version: number; lastError: string | null };

  it('applies a changed config: new requests go to the new cluster', async () => {
    expect(await upstreamOf()).toBe('200 a');
    expect(proxy.server.version).toBe(1);
    proxy.write(config('b'));
    expect(await proxy.server.reload()).toEqual({ applied: true });
    expect(proxy.server.version).toBe(2);
    for (let i = 0; i < 5; i++) expect(await upstreamOf()).toBe('200 b');
    expect(await adminConfig()).toMatchObject({ version: 2, lastError: null });
    // The same file again: nothing to apply.
    expect((await proxy.server.reload()).applied).toBe(false);
    expect(proxy.server.version).toBe(2);
  });

  it('reloads 10 times under load from 20 keep-alive clients without failing a request', async () => {
    pool = new Pool(`http://127.0.0.1:${proxy.port}`, { connections: 20 });
    const startVersion = proxy.server.version;
    let stop = false;
    const running = load(pool, { total: 50_000, concurrency: 20, maxMs: 5000, stop: () => stop }, (i) => ({
      path: `/load/${i}`,
      headers: { host: 'reload.test' },
    }));
    const results: { applied: boolean; error?: string }[] = [];
    try {
      await sleep(150);
      for (let i = 0; i < 10; i++) {
        proxy.write(
          config(
            i % 2 === 0 ? 'a' : 'b',
            i % 3 === 0 ? `\n      - { name: extra-${i}, match: { path: { exact: /extra } }, directResponse: { status: 204 } }` : '',
          ),
        );
        results.push(await proxy.server.reload());
        await sleep(120);
      }
    } finally {
      stop = true;
    }
    const r = await running;
    expect(results.every((x) => x.applied)).toBe(true);
    expect(proxy.server.version).toBe(startVersion + 10);
    expect(r.failures.slice(0, 10)).toEqual([]);
    expect(r.failures.length).toBe(0);
    expect(r.sent).toBeGreaterThan(200);
    expect(r.byUpstream.get('a') ?? 0).toBeGreaterThan(0);
    expect(r.byUpstream.get('b') ?? 0).toBeGreaterThan(0);
    // The last config (i = 9) routes to b.
    expect(await upstreamOf()).toBe('200 b');
  });

  it('reloads that replace a cluster do not fail requests already routed to it (delayed by a fault)', async () => {
    // One cluster "app" whose endpoint alternates a/b: each reload builds a new cluster and retires
    // the old one while requests routed on the old snapshot are still waiting out their delay.
    const appConfig = (ep: string) => `
listeners: [{ name: main, port: 0 }]
virtualHosts:
  - name: all
    domains: ['*']
    routes:
      - name: main
        backends: [{ cluster: app }]
        fault: { delay: { duration: 20ms, percent: 100 } }
clusters:
  - { name: app, endpoints: ['${ep}'] }
`;
    const p = await startProxy(appConfig(a.address));
    const clients = new Pool(`http://127.0.0.1:${p.port}`, { connections: 20 });
    let stop = false;
    try {
      const running = load(clients, { total: 20_000, concurrency: 20, maxMs: 5000, stop: () => stop }, () => ({ path: '/', headers: { host: 'reload.test' } }));
      const results: { applied: boolean }[] = [];
      try {
        await sleep(100);
        for (let i = 0; i < 10; i++) {
          p.write(appConfig(i % 2 === 0 ? b.address : a.address));
          results.push(await p.server.reload());
          await sleep(100);
        }
      } finally {
        stop = true;
      }
      const r = await running;
      expect(results.every((x) => x.applied)).toBe(true);
      expect(r.failures.slice(0, 5)).toEqual([]);
      expect(r.failures.length).toBe(0);
      expect(r.byUpstream.get('a') ?? 0).toBeGreaterThan(0);
      expect(r.byUpstream.get('b') ?? 0).toBeGreaterThan(0);
    } finally {
      stop = true;
      await clients.close();
      await p.close();
    }
  });

  it('rejects invalid YAML with line:col, keeps serving the old config, and shows lastError on /config', async () => {
    const version = proxy.server.version;
    const target = (await upstreamOf()).split(' ')[1];
    proxy.write('listeners:\n  - name: main\n    port: 0\nvirtualHosts: [\n  { name: x,\n');
    const res = await proxy.server.reload();
    expect(res.applied).toBe(false);
    expect(res.error).toMatch(new RegExp(`${escapeRe(proxy.file)}:\\d+:\\d+: `));
    expect(proxy.server.version).toBe(version);
    for (let i = 0; i < 5; i++) expect(await upstreamOf()).toBe(`200 ${target}`);
    const cfg = await adminConfig();
    expect(cfg.version).toBe(version);
    expect(cfg.lastError).toBe(res.error);
  });

  it('rejects a config naming a missing cluster at its line, and keeps serving', async () => {
    const version = proxy.server.version;
    const target = (await upstreamOf()).split(' ')[1];
    const text = config('c');
    proxy.write(text);
    const line = text.split('\n').findIndex((l) => l.includes('cluster: c }')) + 1;
    const res = await proxy.server.reload();
    expect(res.applied).toBe(false);
    expect(res.error).toMatch(new RegExp(`${escapeRe(proxy.file)}:${line}:\\d+: .*no cluster named "c"`));
    expect(proxy.server.version).toBe(version);
    for (let i = 0; i < 5; i++) expect(await upstreamOf()).toBe(`200 ${target}`);
    expect(await adminConfig()).toMatchObject({ version, lastError: res.error });
    const metrics = (await adminGet(proxy.ports.admin as number, '/metrics')).text;
    expect(metrics).toMatch(/^tide_proxy_config_reloads_total\{result="rejected"\} 2$/m);
    expect(metrics).toMatch(new RegExp(`^tide_proxy_config_version ${version}$`, 'm'));

    // A good file afterwards is applied and clears the error.
    proxy.write(config('a'));
    expect(await proxy.server.reload()).toEqual({ applied: true });
    expect(await upstreamOf()).toBe('200 a');
    expect(await adminConfig()).toMatchObject({ version: version + 1, lastError: null });
  });
});
