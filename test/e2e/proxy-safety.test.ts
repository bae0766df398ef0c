/**
 * The proxy's HTTP/1.1 listener against hostile and sloppy clients, over real loopback sockets:
 * malformed heads and request-smuggling variants are refused (with `connection: close`, then
 * the connection is closed) before anything reaches an upstream; listener limits (head size,
 * header count, body size, slow heads, slow bodies, idle keep-alive) hold; the path is
 * normalised before routing; forwarding headers are added and hop-by-hop ones dropped;
 * pipelining, request bodies and `Expect: 100-continue` work.
 */
import type { IncomingMessage } from 'node:http';
import { connect, type Socket } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type RawResult, type RunningProxy, rawRequest, startProxy, startUpstream, type Upstream } from '../helpers/proxy.ts';

const LIMITS = { maxHeaderBytes: 1024, maxHeaders: 10, maxBodyBytes: 64, headersTimeoutMs: 300, idleTimeoutMs: 600, bodyTimeoutMs: 800 };
/** The listener's sweeper runs every 250 ms; deadlines fire up to that late. */
const SWEEP_SLACK_MS = 250 + 700;

function config(upstream: string): string {
  return `
listeners:
  - name: main
    port: 0
  - name: tight
    port: 0
    limits:
      maxHeaderBytes: ${LIMITS.maxHeaderBytes}
      maxHeaders: ${LIMITS.maxHeaders}
      maxBodyBytes: ${LIMITS.maxBodyBytes}
      headersTimeout: ${LIMITS.headersTimeoutMs}ms
      idleTimeout: ${LIMITS.idleTimeoutMs}ms
      bodyTimeout: ${LIMITS.bodyTimeoutMs}ms
virtualHosts:
  - name: all
    domains: ['*']
    routes:
      - name: admin
        match: { path: { prefix: /admin } }
        directResponse: { status: 403, body: "admin is off limits\\n" }
      - name: all
        match: { path: { prefix: / } }
        backends: [{ cluster: app }]
clusters:
  - name: app
    endpoints: ['${upstream}']
`;
}

/** A client connection driven step by step (for 100-continue and idle timing). */
interface Client {
  socket: Socket;
  readonly text: string;
  /** Resolves with performance.now() when the connection closes. */
  closed: Promise<number>;
  isClosed(): boolean;
  write(bytes: string | Buffer): void;
  /** Resolves true once the received text matches `re`, false on close or after `ms`. */
  waitFor(re: RegExp, ms?: number): Promise<boolean>;
}

const clients: Client[] = [];

function openClient(port: number): Promise<Client> {
  return new Promise((resolve, reject) => {
    const socket = connect({ port, host: '127.0.0.1' });
    let text = '';
    let isClosed = false;
    const waiters = new Set<() => void>();
    const closed = new Promise<number>((r) =>
      socket.on('close', () => {
        isClosed = true;
        r(performance.now());
        for (const w of [...waiters]) w();
      }),
    );
    socket.on('data', (d: Buffer) => {
      text += d.toString('latin1');
      for (const w of [...waiters]) w();
    });
    socket.on('error', () => {});
    const client: Client = {
      socket,
      get text() {
        return text;
      },
      closed,
      isClosed: () => isClosed,
      write: (bytes) => {
        socket.write(bytes);
      },
      waitFor: (re, ms = 3000) =>
        new Promise<boolean>((done) => {
          const finish = (v: boolean) => {
            clearTimeout(timer);
            waiters.delete(check);
            done(v);
          };
          const check = () => {
            if (re.test(text)) finish(true);
            else if (isClosed) finish(false);
          };
          const timer = setTimeout(() => finish(false), ms);
          waiters.add(check);
          check();
        }),
    };
    clients.push(client);
    socket.once('connect', () => resolve(client));
    socket.once('error', reject);
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Resolves with `p`'s value, or `fallback` after `ms`. */
function within<T>(p: Promise<T>, ms: number, fallback: T): Promise<T> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(fallback), ms);
    p.then((v) => {
      clearTimeout(timer);
      resolve(v);
    });
  });
}

function statusLines(text: string): string[] {
  return text.match(/HTTP\/1\.[01] \d{3}[^\r\n]*/g) ?? [];
}

describe('tide proxy: request safety over real sockets', () => {
  let up: Upstream;
  let proxy: RunningProxy;
  let main: number;
  let tight: number;
  /** Request heads that reached the upstream (even ones whose body never completed). */
  const heads: { method: string; url: string }[] = [];

  beforeAll(async () => {
    up = await startUpstream('app', (req: IncomingMessage, res, body) => {
      const delay = req.url === '/p1' ? 80 : req.url === '/p2' ? 40 : 0;
      setTimeout(() => {
        const out = JSON.stringify({ url: req.url, method: req.method, body });
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(out), 'x-upstream': 'app' });
        res.end(out);
      }, delay);
    });
    up.server.on('request', (req: IncomingMessage) => heads.push({ method: req.method ?? '', url: req.url ?? '' }));
    proxy = await startProxy(config(up.address));
    main = proxy.ports.main as number;
    tight = proxy.ports.tight as number;
  });

  afterEach(() => {
    for (const c of clients.splice(0)) c.socket.destroy();
  });

  afterAll(async () => {
    await proxy?.close();
    await up?.close();
  });

  /** Snapshot of what reached the upstream, to compare after a refused request. */
  function mark(): { seen: number; heads: number } {
    return { seen: up.seen.length, heads: heads.length };
  }

  /**
   * Sends one good request first, so the cluster's pool holds an idle keep-alive connection to
   * the upstream: a request wrongly dispatched afterwards would reach the upstream at once
   * instead of losing a race with connection setup. Returns the snapshot to compare against.
   */
  async function prepare(): Promise<{ seen: number; heads: number }> {
    const r = await rawRequest(main, 'GET /warm HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n', 3000);
    expect(r.status, r.text).toBe(200);
    return mark();
  }

  /**
   * Asserts a refusal: one response with `status` and `connection: close`, the connection then
   * closed by the proxy, and nothing more reaching the upstream (no complete request; and no
   * request head either when `headUnseen`, i.e. when the refusal could be decided from bytes
   * that arrived together with the head).
   */
  async function expectRefused(r: RawResult, status: number, before: { seen: number; heads: number }, headUnseen = true): Promise<void> {
    expect(r.status, r.text).toBe(status);
    expect(statusLines(r.text), 'exactly one response').toHaveLength(1);
    const headEnd = r.text.indexOf('\r\n\r\n');
    expect(r.text.slice(0, headEnd + 2).toLowerCase()).toContain('\r\nconnection: close\r\n');
    expect(r.text).toMatch(/\r\ntide-proxy-error: ERR_[A-Z_]+\r\n/);
    expect(r.closed, 'the proxy closed the connection').toBe(true);
    await sleep(50); // let anything wrongly forwarded arrive
    expect(up.seen.slice(before.seen), 'requests that reached the upstream').toEqual([]);
    if (headUnseen) expect(heads.slice(before.heads), 'request heads that reached the upstream').toEqual([]);
  }

  describe('malformed requests and smuggling variants are refused and never forwarded', () => {
    const smuggled = 'GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n';
    const cases: { name: string; bytes: string; status: number }[] = [
      {
        name: 'Content-Length: 0 + Transfer-Encoding: chunked',
        bytes: `POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n${smuggled}`,
        status: 400,
      },
      {
        name: 'Transfer-Encoding: chunked + Content-Length',
        bytes: `POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n${smuggled}`,
        status: 400,
      },
      {
        name: 'Transfer-Encoding: chunked, identity',
        bytes: `POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n${smuggled}`,
        status: 501,
      },
      { name: 'Transfer-Encoding: gzip', bytes: 'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n', status: 501 },
      {
        name: 'Transfer-Encoding : chunked (space before the colon)',
        bytes: `POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n${smuggled}`,
        status: 400,
      },
      { name: 'Transfer-Encoding in HTTP/1.0', bytes: 'POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n', status: 400 },
      {
        name: 'duplicate differing Content-Length',
        bytes: `POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 46\r\n\r\nhello${smuggled}`,
        status: 400,
      },
      { name: 'Content-Length: 5, 46', bytes: `POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 46\r\n\r\nhello${smuggled}`, status: 400 },
      { name: 'Content-Length: +5', bytes: 'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello', status: 400 },
      { name: 'Content-Length: -1', bytes: 'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n', status: 400 },
      { name: 'obs-fold', bytes: 'GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n', status: 400 },
      {
        name: 'obs-fold hiding Transfer-Encoding',
        bytes: `POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nX-A: b\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n${smuggled}`,
        status: 400,
      },
      {
        name: 'bare LF inside a header line (header injection)',
        bytes: 'GET / HTTP/1.1\r\nHost: a\r\nX-A: a\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello',
        status: 400,
      },
      { name: 'bare CR inside a header value', bytes: 'GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rX-B: b\r\n\r\n', status: 400 },
      { name: 'NUL inside a header value', bytes: 'GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n', status: 400 },
      { name: 'invalid header name', bytes: 'GET / HTTP/1.1\r\nHost: a\r\nX(A): 1\r\n\r\n', status: 400 },
      { name: 'NUL in the target', bytes: 'GET /a\x00b HTTP/1.1\r\nHost: a\r\n\r\n', status: 400 },
      { name: 'bad request line', bytes: 'GET /\r\nHost: a\r\n\r\n', status: 400 },
      { name: 'HTTP/2.0 in an HTTP/1 request line', bytes: 'GET / HTTP/2.0\r\nHost: a\r\n\r\n', status: 505 },
      { name: 'HTTP/1.1 without Host', bytes: 'GET / HTTP/1.1\r\nAccept: */*\r\n\r\n', status: 400 },
      { name: 'two Host headers', bytes: 'GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n', status: 400 },
      { name: 'absolute-form host mismatch', bytes: 'GET http://evil.example/ HTTP/1.1\r\nHost: good.example\r\n\r\n', status: 400 },
      { name: 'CONNECT', bytes: 'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n', status: 405 },
      { name: 'malformed percent-escape in the path', bytes: 'GET /a%zz HTTP/1.1\r\nHost: a\r\n\r\n', status: 400 },
      { name: 'backslash in the path', bytes: 'GET /x\\..\\admin HTTP/1.1\r\nHost: a\r\n\r\n', status: 400 },
      {
        name: 'chunk size overflow ffffffffffffffffff',
        bytes: `POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nhello\r\n0\r\n\r\n${smuggled}`,
        status: 400,
      },
      {
        name: 'chunked body whose data is longer than its size',
        bytes: `POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n${smuggled}`,
        status: 400,
      },
      {
        name: 'chunked body with a bad hex size',
        bytes: `POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n${smuggled}`,
        status: 400,
      },
      {
        name: 'chunked body with a control character in an extension',
        bytes: 'POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\x01\r\nhello\r\n0\r\n\r\n',
        status: 400,
      },
    ];

    it.each(cases)('$name → $status', async ({ bytes, status }) => {
      const before = await prepare();
      const r = await rawRequest(main, bytes, 3000);
      await expectRefused(r, status, before);
      expect(heads.some((h) => h.url === '/smuggled')).toBe(false);
    });

    it('a request with only bare LFs is refused at once (400), not left to time out', async () => {
      const before = await prepare();
      const t0 = performance.now();
      const r = await rawRequest(main, 'GET / HTTP/1.1\nHost: a\n\n', 5000);
      expect(performance.now() - t0).toBeLessThan(1000);
      await expectRefused(r, 400, before);
    });

    it('a head ended by LF CRLF is refused (400)', async () => {
      const before = await prepare();
      const r = await rawRequest(main, 'GET / HTTP/1.1\r\nHost: a\n\r\n', 3000);
      await expectRefused(r, 400, before);
    });

    it('a bad chunked body arriving after the head is refused (400) and the upstream never gets a complete request', async () => {
      const before = await prepare();
      const r = await rawRequest(
        main,
        ['POST /late HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n', `3\r\nhello\r\n0\r\n\r\n${smuggled}`],
        3000,
        100,
      );
      await expectRefused(r, 400, before, false);
    });

    it('accepts Transfer-Encoding:<TAB>chunked (tab is valid OWS) and forwards the body', async () => {
      const before = await prepare();
      const r = await rawRequest(
        main,
        'POST /tab HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tchunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n',
        3000,
      );
      expect(r.status, r.text).toBe(200);
      expect(up.seen.slice(before.seen).map((s) => [s.url, s.body])).toEqual([['/tab', 'hello']]);
    });
  });

  describe('listener limits', () => {
    it('a head over maxHeaderBytes is 431', async () => {
      const before = await prepare();
      const r = await rawRequest(tight, `GET / HTTP/1.1\r\nHost: a\r\nX-Big: ${'a'.repeat(LIMITS.maxHeaderBytes + 100)}\r\n\r\n`, 3000);
      await expectRefused(r, 431, before);
    });

    it('a head growing past maxHeaderBytes without an end is 431 at once (no timeout wait)', async () => {
      const before = await prepare();
      const r = await rawRequest(tight, `GET / HTTP/1.1\r\nHost: a\r\nX-Big: ${'a'.repeat(LIMITS.maxHeaderBytes + 100)}`, 3000);
      await expectRefused(r, 431, before); // 431, not the 408 a wait for the headers timeout would give
    });

    it('more than maxHeaders header fields is 431; exactly maxHeaders is fine', async () => {
      const fields = (n: number) => Array.from({ length: n - 1 }, (_, i) => `X-H${i}: ${i}\r\n`).join('');
      const before = await prepare();
      const r = await rawRequest(tight, `GET / HTTP/1.1\r\nHost: a\r\n${fields(LIMITS.maxHeaders + 1)}\r\n`, 3000);
      await expectRefused(r, 431, before);
      const ok = await rawRequest(tight, `GET /ten HTTP/1.1\r\nHost: a\r\nConnection: close\r\n${fields(LIMITS.maxHeaders - 1)}\r\n`, 3000);
      expect(ok.status, ok.text).toBe(200);
    });

    it('a declared body over maxBodyBytes is 413 before any of it is sent', async () => {
      const before = await prepare();
      const t0 = performance.now();
      const r = await rawRequest(tight, 'POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n', 3000);
      expect(performance.now() - t0).toBeLessThan(1000);
      await expectRefused(r, 413, before);
    });

    it('a declared body over maxBodyBytes with Expect: 100-continue is 413 without a 100 Continue', async () => {
      const before = await prepare();
      const r = await rawRequest(tight, 'POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 100000\r\n\r\n', 3000);
      expect(r.text).not.toContain('100 Continue');
      await expectRefused(r, 413, before);
    });

    it('a body of exactly maxBodyBytes is forwarded', async () => {
      const before = await prepare();
      const body = 'b'.repeat(LIMITS.maxBodyBytes);
      const r = await rawRequest(tight, `POST /exact HTTP/1.1\r\nHost: a\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`, 3000);
      expect(r.status, r.text).toBe(200);
      expect(up.seen.slice(before.seen).map((s) => s.body)).toEqual([body]);
    });

    it('a chunked body exceeding maxBodyBytes (sent with the head) is 413', async () => {
      const before = await prepare();
      const chunk = 'c'.repeat(40);
      const r = await rawRequest(tight, `POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n28\r\n${chunk}\r\n28\r\n${chunk}\r\n0\r\n\r\n`, 3000);
      await expectRefused(r, 413, before);
    });

    it('a chunked body exceeding maxBodyBytes (sent after the head) is 413 and never completes upstream', async () => {
      const before = await prepare();
      const chunk = 'c'.repeat(40);
      const r = await rawRequest(
        tight,
        ['POST /big-chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n', `28\r\n${chunk}\r\n`, `28\r\n${chunk}\r\n0\r\n\r\n`],
        3000,
        100,
      );
      await expectRefused(r, 413, before, false);
    });

    it('slowloris: a head dribbled byte by byte past headersTimeout is 408 and closed', async () => {
      const before = await prepare();
      const head = 'GET /slow HTTP/1.1\r\nHost: a\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n';
      const t0 = performance.now();
      const r = await rawRequest(tight, head.split(''), 5000, 50);
      const took = performance.now() - t0;
      expect(took).toBeGreaterThanOrEqual(LIMITS.headersTimeoutMs - 20);
      expect(took).toBeLessThan(LIMITS.headersTimeoutMs + SWEEP_SLACK_MS);
      await expectRefused(r, 408, before);
    });

    it('slowloris on a keep-alive connection: the second head dribbled past headersTimeout is 408', async () => {
      const c = await openClient(tight);
      c.write('GET /first HTTP/1.1\r\nHost: a\r\n\r\n');
      expect(await c.waitFor(/"url":"\/first"/)).toBe(true);
      const before = mark();
      const t0 = performance.now();
      const head = 'GET /second HTTP/1.1\r\nHost: a\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n';
      for (let i = 0; i < head.length && !c.isClosed() && !/ 408 /.test(c.text); i++) {
        c.write(head.slice(i, i + 1));
        await sleep(25);
      }
      expect(await c.waitFor(/ 408 /, 2000), c.text).toBe(true);
      const took = performance.now() - t0;
      expect(took).toBeLessThan(LIMITS.headersTimeoutMs + SWEEP_SLACK_MS);
      expect(statusLines(c.text)).toEqual(['HTTP/1.1 200 OK', 'HTTP/1.1 408 Request Timeout']);
      expect(c.text.slice(c.text.indexOf('HTTP/1.1 408')).toLowerCase()).toContain('\r\nconnection: close\r\n');
      expect(await within(c.closed, 3000, 0)).toBeGreaterThan(0);
      expect(heads.slice(before.heads)).toEqual([]);
    });

    it('a stalled body past bodyTimeout is 408 and closed', async () => {
      const before = await prepare();
      const t0 = performance.now();
      const r = await rawRequest(tight, 'POST /stall HTTP/1.1\r\nHost: a\r\nContent-Length: 20\r\n\r\nabc', 5000);
      const took = performance.now() - t0;
      expect(took).toBeGreaterThanOrEqual(LIMITS.bodyTimeoutMs - 20);
      expect(took).toBeLessThan(LIMITS.bodyTimeoutMs + SWEEP_SLACK_MS);
      await expectRefused(r, 408, before, false);
    });

    it('an idle keep-alive connection is closed after idleTimeout, without a response', async () => {
      const c = await openClient(tight);
      c.write('GET /keep HTTP/1.1\r\nHost: a\r\n\r\n');
      expect(await c.waitFor(/"url":"\/keep"/)).toBe(true);
      const t0 = performance.now();
      expect(c.text.toLowerCase()).not.toContain('connection: close');
      const closedAt = await within(c.closed, LIMITS.idleTimeoutMs + SWEEP_SLACK_MS + 1000, 0);
      expect(closedAt, 'the idle connection was closed').toBeGreaterThan(0);
      expect(closedAt - t0).toBeGreaterThanOrEqual(LIMITS.idleTimeoutMs - 50);
      expect(closedAt - t0).toBeLessThan(LIMITS.idleTimeoutMs + SWEEP_SLACK_MS);
      expect(statusLines(c.text)).toEqual(['HTTP/1.1 200 OK']);
    });

    it('a connection that never sends anything is closed after idleTimeout', async () => {
      const t0 = performance.now();
      const c = await openClient(tight);
      const closedAt = await within(c.closed, LIMITS.idleTimeoutMs + SWEEP_SLACK_MS + 1000, 0);
      expect(closedAt).toBeGreaterThan(0);
      expect(closedAt - t0).toBeLessThan(LIMITS.idleTimeoutMs + SWEEP_SLACK_MS);
      expect(c.text).toBe('');
    });
  });

  describe('path normalisation happens before routing', () => {
    it.each(['/admin', '//admin', '/x/../admin', '/%61dmin', '/%2e%2e/admin', '/./admin', '/%2E%2E/x/%2e%2e/admin/', '///admin//panel'])(
      '%s hits the /admin route (403), never the upstream',
      async (path) => {
        const before = await prepare();
        const r = await rawRequest(main, `GET ${path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n`, 3000);
        expect(r.status, r.text).toBe(403);
        expect(r.text).toContain('admin is off limits');
        await sleep(30);
        expect(heads.slice(before.heads)).toEqual([]);
      },
    );

    it('an encoded slash stays encoded (not a separator) and the normalised path is what is forwarded', async () => {
      const before = await prepare();
      const r1 = await rawRequest(main, 'GET /%2Fadmin HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n', 3000);
      expect(r1.status, r1.text).toBe(200);
      const r2 = await rawRequest(main, 'GET /a/./b/../c//d?x=/../y HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n', 3000);
      expect(r2.status, r2.text).toBe(200);
      expect(up.seen.slice(before.seen).map((s) => s.url)).toEqual(['/%2Fadmin', '/a/c/d?x=/../y']);
    });
  });

  describe('forwarding headers', () => {
    function responseHeader(text: string, name: string): string | undefined {
      const head = text.slice(0, text.indexOf('\r\n\r\n'));
      const m = new RegExp(`\\r\\n${name}: ([^\\r\\n]*)`, 'i').exec(head);
      return m?.[1];
    }

    it('adds x-forwarded-* (overriding spoofed proto/host), forwarded, via; keeps a sane x-request-id; drops hop-by-hop headers', async () => {
      const before = await prepare();
      const r = await rawRequest(
        main,
        'GET /fwd HTTP/1.1\r\n' +
          'Host: shop.example\r\n' +
          'X-Forwarded-For: 203.0.113.7\r\n' +
          'X-Forwarded-Proto: https\r\n' +
          'X-Forwarded-Host: spoofed.example\r\n' +
          'X-Request-Id: client-id-123\r\n' +
          'Connection: close, x-secret\r\n' +
          'X-Secret: s3cr3t\r\n' +
          'Keep-Alive: timeout=5\r\n' +
          'TE: trailers\r\n' +
          'Trailer: x-t\r\n' +
          'Proxy-Connection: keep-alive\r\n' +
          'Upgrade: h2c\r\n' +
          'X-Kept: yes\r\n\r\n',
        3000,
      );
      expect(r.status, r.text).toBe(200);
      const seen = up.seen.slice(before.seen);
      expect(seen).toHaveLength(1);
      const h = seen[0]?.headers ?? {};
      expect(h['x-forwarded-for']).toBe('203.0.113.7, 127.0.0.1');
      expect(h['x-forwarded-proto']).toBe('http');
      expect(h['x-forwarded-host']).toBe('shop.example');
      expect(h.forwarded).toBe('for=127.0.0.1;host=shop.example;proto=http');
      expect(h.via).toBe('1.1 tide');
      expect(h.host).toBe('shop.example');
      expect(h['x-request-id']).toBe('client-id-123');
      expect(responseHeader(r.text, 'x-request-id')).toBe('client-id-123');
      expect(h['x-kept']).toBe('yes');
      for (const name of ['x-secret', 'keep-alive', 'te', 'trailer', 'proxy-connection', 'upgrade', 'transfer-encoding']) {
        expect(h[name], name).toBeUndefined();
      }
      // The proxy's own hop to the upstream may say keep-alive; the client's Connection value must not pass.
      expect(h.connection ?? 'keep-alive').toBe('keep-alive');
    });

    it('appends to a client-sent forwarded and via, quotes a host with a port', async () => {
      const before = await prepare();
      const r = await rawRequest(
        main,
        'GET /fwd2 HTTP/1.1\r\nHost: shop.example:8080\r\nForwarded: for=198.51.100.1\r\nVia: 1.0 edge\r\n' +
          'X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\nConnection: close\r\n\r\n',
        3000,
      );
      expect(r.status, r.text).toBe(200);
      const h = up.seen.slice(before.seen)[0]?.headers ?? {};
      expect(h.forwarded).toBe('for=198.51.100.1, for=127.0.0.1;host="shop.example:8080";proto=http');
      expect(h.via).toBe('1.0 edge, 1.1 tide');
      expect(h['x-forwarded-for']).toBe('10.0.0.1, 10.0.0.2, 127.0.0.1');
      expect(h['x-forwarded-host']).toBe('shop.example:8080');
    });

    it.each([
      ['absent', ''],
      ['with spaces', 'X-Request-Id: not a sane id\r\n'],
      ['too long', `X-Request-Id: ${'a'.repeat(129)}\r\n`],
      ['with a quote', 'X-Request-Id: abc"def\r\n'],
    ])('generates an x-request-id when the client sent none or an insane one (%s), and echoes it', async (_label, line) => {
      const before = await prepare();
      const r = await rawRequest(main, `GET /rid HTTP/1.1\r\nHost: a\r\n${line}Connection: close\r\n\r\n`, 3000);
      expect(r.status, r.text).toBe(200);
      const id = up.seen.slice(before.seen)[0]?.headers['x-request-id'];
      expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-z]+$/);
      expect(responseHeader(r.text, 'x-request-id')).toBe(id);
    });

    it('generates distinct ids for distinct requests', async () => {
      const before = await prepare();
      await rawRequest(main, 'GET /r1 HTTP/1.1\r\nHost: a\r\n\r\nGET /r2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n', 3000);
      const ids = up.seen.slice(before.seen).map((s) => s.headers['x-request-id']);
      expect(ids).toHaveLength(2);
      expect(ids[0]).not.toBe(ids[1]);
    });
  });

  describe('pipelining, bodies and 100-continue', () => {
    it('answers 3 pipelined requests sent in one write in order', async () => {
      const before = await prepare();
      const r = await rawRequest(
        main,
        'GET /p1 HTTP/1.1\r\nHost: a\r\n\r\nGET /p2 HTTP/1.1\r\nHost: a\r\n\r\nGET /p3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n',
        3000,
      );
      expect(statusLines(r.text)).toEqual(['HTTP/1.1 200 OK', 'HTTP/1.1 200 OK', 'HTTP/1.1 200 OK']);
      const urls = [...r.text.matchAll(/"url":"(\/p\d)"/g)].map((m) => m[1]);
      expect(urls).toEqual(['/p1', '/p2', '/p3']);
      expect(r.closed).toBe(true);
      expect(up.seen.slice(before.seen).map((s) => s.url)).toEqual(['/p1', '/p2', '/p3']);
    });

    it('pipelined requests after bodies (Content-Length and chunked) are framed correctly', async () => {
      const before = await prepare();
      const r = await rawRequest(
        main,
        'POST /b1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello' +
          'POST /b2 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n' +
          'GET /b3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n',
        3000,
      );
      expect(statusLines(r.text)).toHaveLength(3);
      expect(up.seen.slice(before.seen).map((s) => [s.method, s.url, s.body])).toEqual([
        ['POST', '/b1', 'hello'],
        ['POST', '/b2', 'abc'],
        ['GET', '/b3', ''],
      ]);
    });

    it('forwards a Content-Length body intact', async () => {
      const before = await prepare();
      const body = 'hello world \u00e9\u20ac';
      const len = Buffer.byteLength(body);
      const r = await rawRequest(
        main,
        [Buffer.from(`POST /cl HTTP/1.1\r\nHost: a\r\nContent-Length: ${len}\r\nConnection: close\r\n\r\n`), Buffer.from(body)],
        3000,
      );
      expect(r.status, r.text).toBe(200);
      const seen = up.seen.slice(before.seen);
      expect(seen.map((s) => [s.method, s.url, s.body])).toEqual([['POST', '/cl', body]]);
      expect(seen[0]?.headers['content-length']).toBe(String(len));
      expect(seen[0]?.headers['transfer-encoding']).toBeUndefined();
    });

    it('forwards a chunked body intact, re-framed, without the client trailers', async () => {
      const before = await prepare();
      const r = await rawRequest(
        main,
        [
          'POST /chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5;ext=1\r\nhello\r\n',
          '6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n',
        ],
        3000,
        50,
      );
      expect(r.status, r.text).toBe(200);
      const seen = up.seen.slice(before.seen);
      expect(seen.map((s) => [s.url, s.body])).toEqual([['/chunked', 'hello world']]);
      expect(seen[0]?.headers['x-trailer']).toBeUndefined();
      expect(seen[0]?.headers['transfer-encoding']).toBe('chunked');
    });

    it('keeps an HTTP/1.0 connection open only when the client asked for keep-alive', async () => {
      const before = await prepare();
      const r = await rawRequest(main, 'GET /h10a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /h10b HTTP/1.0\r\n\r\n', 3000);
      const responses = r.text.split(/(?=HTTP\/1\.1 )/);
      expect(responses, r.text).toHaveLength(2);
      expect(responses[0]?.toLowerCase()).toContain('\r\nconnection: keep-alive\r\n');
      expect(responses[0]).toContain('"url":"/h10a"');
      expect(responses[1]?.toLowerCase()).toContain('\r\nconnection: close\r\n');
      expect(responses[1]).toContain('"url":"/h10b"');
      expect(r.closed).toBe(true);
      expect(up.seen.slice(before.seen).map((s) => [s.url, s.headers.via])).toEqual([
        ['/h10a', '1.0 tide'],
        ['/h10b', '1.0 tide'],
      ]);
    });

    it('Expect: 100-continue gets 100 Continue before the final response', async () => {
      const before = await prepare();
      const c = await openClient(main);
      c.write('POST /expect HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\nConnection: close\r\n\r\n');
      expect(await c.waitFor(/^HTTP\/1\.1 100 Continue\r\n\r\n/), c.text).toBe(true);
      await sleep(50);
      expect(statusLines(c.text)).toEqual(['HTTP/1.1 100 Continue']);
      c.write('hello');
      expect(await c.waitFor(/"body":"hello"/), c.text).toBe(true);
      expect(statusLines(c.text)).toEqual(['HTTP/1.1 100 Continue', 'HTTP/1.1 200 OK']);
      const seen = up.seen.slice(before.seen);
      expect(seen.map((s) => [s.url, s.body])).toEqual([['/expect', 'hello']]);
      expect(seen[0]?.headers.expect).toBeUndefined();
    });
  });
});
