/**
 * Table-driven tests of the proxy's strict HTTP/1.1 pieces: the request-head parser, path
 * normalisation and the chunked decoder. Every refusal is checked for its status, since the
 * status is what the listener answers.
 */
import { describe, expect, it } from 'vitest';
import { TideError } from '../../lib/errors.ts';
import { ChunkedDecoder } from '../../proxy/http/chunked.ts';
import { normalizePath, parseRequestHead, type RequestHead } from '../../proxy/http/parse.ts';

/** Parses head lines joined with CRLF (the head as the listener hands it over: no final CRLFCRLF). */
function parse(lines: string[], maxHeaders = 100): RequestHead {
  return parseRequestHead(lines.join('\r\n'), { maxHeaders });
}

/** Runs `fn` and returns the TideError it threw (fails the test if it threw nothing or something else). */
function refusal(fn: () => unknown): TideError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(TideError);
    return err as TideError;
  }
  throw new Error('expected a refusal, but the input was accepted');
}

describe('parseRequestHead: accepted requests', () => {
  it('parses a plain GET', () => {
    const h = parse(['GET /a/b?x=1 HTTP/1.1', 'Host: example.com', 'Accept: */*']);
    expect(h).toMatchObject({
      method: 'GET',
      path: '/a/b?x=1',
      host: 'example.com',
      minor: 1,
      contentLength: 0,
      chunked: false,
      close: false,
      upgrade: undefined,
      expectContinue: false,
    });
    expect({ ...h.headers }).toEqual({ accept: '*/*' });
  });

  it('lower-cases names, trims OWS (SP and HTAB) around values, keeps inner spaces', () => {
    const h = parse(['GET / HTTP/1.1', 'Host: a', 'X-Thing: \t  inner  value \t ', 'X-Empty:', 'X-TAB:\tv']);
    expect(h.headers['x-thing']).toBe('inner  value');
    expect(h.headers['x-empty']).toBe('');
    expect(h.headers['x-tab']).toBe('v');
  });

  it('joins repeated headers with ", " and cookies with "; "', () => {
    const h = parse(['GET / HTTP/1.1', 'Host: a', 'X-A: 1', 'Cookie: a=1', 'x-a: 2', 'cookie: b=2', 'X-A: 3', 'COOKIE: c=3']);
    expect(h.headers['x-a']).toBe('1, 2, 3');
    expect(h.headers.cookie).toBe('a=1; b=2; c=3');
  });

  it('takes extension methods as they are (RFC 9110 §9): any token, case kept', () => {
    for (const m of ['BAN', 'CHECKIN', 'PURGE', 'get', '.GET']) expect(parse([`${m} / HTTP/1.1`, 'Host: a']).method).toBe(m);
  });

  it('skips empty repeated fields when joining, so the next hop reads the same value (found by fuzzing)', () => {
    const h = parse(['GET / HTTP/1.1', 'Host: a', 'Cookie: a=1', 'Cookie: ', 'X-A: ', 'X-A: b', 'X-B: c', 'X-B:']);
    expect(h.headers.cookie).toBe('a=1');
    expect(h.headers['x-a']).toBe('b');
    expect(h.headers['x-b']).toBe('c');
  });

  it('removes hop-by-hop headers and every name listed in Connection', () => {
    const h = parse([
      'GET / HTTP/1.1',
      'Host: a',
      'Connection: keep-alive, X-Secret',
      'Connection: x-other',
      'Keep-Alive: timeout=5',
      'TE: trailers',
      'Trailer: x-t',
      'Proxy-Connection: keep-alive',
      'Upgrade: h2c',
      'X-Secret: s',
      'X-Other: o',
      'X-Kept: k',
    ]);
    expect({ ...h.headers }).toEqual({ 'x-kept': 'k' });
    expect(h.upgrade).toBeUndefined();
    expect(h.close).toBe(false);
  });

  it('keeps Upgrade only when Connection lists upgrade', () => {
    const h = parse(['GET /ws HTTP/1.1', 'Host: a', 'Connection: Upgrade', 'Upgrade: websocket']);
    expect(h.upgrade).toBe('websocket');
    expect(h.headers.upgrade).toBe('websocket');
    expect(h.headers.connection).toBeUndefined();
  });

  it.each([
    { name: 'HTTP/1.1 stays open by default', lines: ['GET / HTTP/1.1', 'Host: a'], minor: 1, close: false },
    { name: 'HTTP/1.1 with Connection: close', lines: ['GET / HTTP/1.1', 'Host: a', 'Connection: Close'], minor: 1, close: true },
    { name: 'HTTP/1.0 closes by default', lines: ['GET / HTTP/1.0'], minor: 0, close: true },
    { name: 'HTTP/1.0 with Connection: keep-alive', lines: ['GET / HTTP/1.0', 'Connection: Keep-Alive'], minor: 0, close: false },
    { name: 'HTTP/1.0 with keep-alive and close', lines: ['GET / HTTP/1.0', 'Connection: keep-alive, close'], minor: 0, close: true },
  ])('connection persistence: $name', ({ lines, minor, close }) => {
    const h = parse(lines);
    expect(h.minor).toBe(minor);
    expect(h.close).toBe(close);
  });

  it('accepts HTTP/1.0 without Host (host is empty)', () => {
    const h = parse(['GET /x HTTP/1.0']);
    expect(h.host).toBe('');
    expect(h.path).toBe('/x');
  });

  it.each([
    { target: 'http://example.com/a/b?x=1', host: 'example.com', want: { host: 'example.com', path: '/a/b?x=1' } },
    { target: 'http://example.com', host: undefined, want: { host: 'example.com', path: '/' } },
    { target: 'HTTP://Example.COM:8080?q=1', host: 'example.com:8080', want: { host: 'Example.COM:8080', path: '/?q=1' } },
    { target: 'https://h/x/../y', host: 'h', want: { host: 'h', path: '/y' } },
  ])('converts absolute-form $target to origin-form', ({ target, host, want }) => {
    const h = parse([`GET ${target} HTTP/1.1`, ...(host === undefined ? [] : [`Host: ${host}`])]);
    expect(h).toMatchObject(want);
    expect(h.headers.host).toBeUndefined();
  });

  it('ignores one empty line before the request line', () => {
    const h = parse(['', 'GET /x HTTP/1.1', 'Host: a']);
    expect(h.method).toBe('GET');
    expect(h.path).toBe('/x');
  });

  it.each(['100-continue', '100-Continue'])('notes Expect: %s and does not forward it', (value) => {
    const h = parse(['POST / HTTP/1.1', 'Host: a', `Expect: ${value}`, 'Content-Length: 3']);
    expect(h.expectContinue).toBe(true);
    expect(h.headers.expect).toBeUndefined();
    expect(h.contentLength).toBe(3);
  });

  it.each([
    { name: 'one Content-Length', lines: ['Content-Length: 42'], contentLength: 42, chunked: false },
    { name: 'repeated identical Content-Length', lines: ['Content-Length: 5', 'Content-Length: 5'], contentLength: 5, chunked: false },
    { name: 'a list of identical values', lines: ['Content-Length: 5, 5'], contentLength: 5, chunked: false },
    { name: 'leading zeros', lines: ['Content-Length: 007'], contentLength: 7, chunked: false },
    { name: 'chunked', lines: ['Transfer-Encoding: chunked'], contentLength: -1, chunked: true },
    { name: 'Chunked (case-insensitive)', lines: ['Transfer-Encoding: Chunked'], contentLength: -1, chunked: true },
    { name: 'chunked after a tab (OWS)', lines: ['Transfer-Encoding:\tchunked'], contentLength: -1, chunked: true },
    { name: 'no body', lines: [], contentLength: 0, chunked: false },
  ])('body framing: $name', ({ lines, contentLength, chunked }) => {
    const h = parse(['POST / HTTP/1.1', 'Host: a', ...lines]);
    expect(h.contentLength).toBe(contentLength);
    expect(h.chunked).toBe(chunked);
    expect(h.headers['content-length']).toBeUndefined();
    expect(h.headers['transfer-encoding']).toBeUndefined();
  });

  it('accepts OPTIONS * (asterisk-form) as is', () => {
    expect(parse(['OPTIONS * HTTP/1.1', 'Host: a']).path).toBe('*');
  });

  it('normalises the path of the request target', () => {
    expect(parse(['GET //admin/./x/../y?q=/../z HTTP/1.1', 'Host: a']).path).toBe('/admin/y?q=/../z');
  });

  it('accepts exactly maxHeaders header fields', () => {
    expect(parse(['GET / HTTP/1.1', 'Host: a', 'X-1: 1', 'X-2: 2'], 3).headers['x-2']).toBe('2');
  });

  it('accepts obs-text (bytes 0x80-0xff) in values', () => {
    expect(parse(['GET / HTTP/1.1', 'Host: a', 'X-Latin: caf\xe9']).headers['x-latin']).toBe('caf\xe9');
  });
});

describe('parseRequestHead: refusals', () => {
  const H = ['GET / HTTP/1.1', 'Host: a'];
  const P = ['POST / HTTP/1.1', 'Host: a'];
  const cases: { name: string; lines: string[]; status: number; maxHeaders?: number }[] = [
    // Content-Length
    { name: 'conflicting Content-Length headers', lines: [...P, 'Content-Length: 5', 'Content-Length: 6'], status: 400 },
    { name: 'conflicting Content-Length list', lines: [...P, 'Content-Length: 5, 6'], status: 400 },
    { name: 'Content-Length +5', lines: [...P, 'Content-Length: +5'], status: 400 },
    { name: 'Content-Length -1', lines: [...P, 'Content-Length: -1'], status: 400 },
    { name: 'Content-Length 0x10', lines: [...P, 'Content-Length: 0x10'], status: 400 },
    { name: 'Content-Length "1 2"', lines: [...P, 'Content-Length: 1 2'], status: 400 },
    { name: 'empty Content-Length', lines: [...P, 'Content-Length:'], status: 400 },
    { name: 'Content-Length of 16 digits', lines: [...P, 'Content-Length: 1234567890123456'], status: 400 },
    // Transfer-Encoding
    { name: 'Content-Length then Transfer-Encoding', lines: [...P, 'Content-Length: 0', 'Transfer-Encoding: chunked'], status: 400 },
    { name: 'Transfer-Encoding then Content-Length', lines: [...P, 'Transfer-Encoding: chunked', 'Content-Length: 5'], status: 400 },
    { name: 'Transfer-Encoding gzip', lines: [...P, 'Transfer-Encoding: gzip'], status: 501 },
    { name: 'Transfer-Encoding identity', lines: [...P, 'Transfer-Encoding: identity'], status: 501 },
    { name: 'Transfer-Encoding chunked, identity', lines: [...P, 'Transfer-Encoding: chunked, identity'], status: 501 },
    { name: 'Transfer-Encoding gzip, chunked', lines: [...P, 'Transfer-Encoding: gzip, chunked'], status: 501 },
    { name: 'Transfer-Encoding chunked twice', lines: [...P, 'Transfer-Encoding: chunked', 'Transfer-Encoding: chunked'], status: 501 },
    { name: 'Transfer-Encoding xchunked', lines: [...P, 'Transfer-Encoding: xchunked'], status: 501 },
    { name: 'Transfer-Encoding in HTTP/1.0', lines: ['POST / HTTP/1.0', 'Transfer-Encoding: chunked'], status: 400 },
    // header syntax
    { name: 'obs-fold (SP)', lines: [...H, 'X-A: a', ' b'], status: 400 },
    { name: 'obs-fold (HTAB)', lines: [...H, 'X-A: a', '\tb'], status: 400 },
    { name: 'obs-fold of Transfer-Encoding', lines: [...P, 'Transfer-Encoding:', ' chunked'], status: 400 },
    { name: 'obs-fold line holding a colon', lines: [...H, 'X-A: a', ' b: c'], status: 400 },
    { name: 'space before the colon', lines: [...P, 'Transfer-Encoding : chunked'], status: 400 },
    { name: 'tab before the colon', lines: [...H, 'X-A\t: 1'], status: 400 },
    { name: 'Host with space before the colon', lines: ['GET / HTTP/1.1', 'Host : a'], status: 400 },
    { name: 'header name with "("', lines: [...H, 'X(A): 1'], status: 400 },
    { name: 'header name with "@"', lines: [...H, 'X@A: 1'], status: 400 },
    { name: 'header name with "/"', lines: [...H, 'X/A: 1'], status: 400 },
    { name: 'header name with a quote', lines: [...H, 'X"A: 1'], status: 400 },
    { name: 'header name with obs-text', lines: [...H, 'X\xe9: 1'], status: 400 },
    { name: 'empty header name', lines: [...H, ': 1'], status: 400 },
    { name: 'header line without a colon', lines: [...H, 'NoColon'], status: 400 },
    { name: 'NUL in a value', lines: [...H, 'X-A: a\x00b'], status: 400 },
    { name: 'bare CR in a value', lines: [...H, 'X-A: a\rb'], status: 400 },
    { name: 'bare LF in a value', lines: [...H, 'X-A: a\nX-Injected: b'], status: 400 },
    { name: 'bare CR at the end of a value', lines: [...H, 'X-A: a\r'], status: 400 },
    { name: 'control character 0x01 in a value', lines: [...H, 'X-A: a\x01'], status: 400 },
    { name: 'DEL in a value', lines: [...H, 'X-A: a\x7f'], status: 400 },
    { name: 'ESC in a value', lines: [...H, 'X-A: \x1b[31m'], status: 400 },
    { name: 'bare LF in a name', lines: [...H, 'X\nA: 1'], status: 400 },
    // request line
    { name: 'empty head', lines: [''], status: 400 },
    { name: 'request line without a version', lines: ['GET /', 'Host: a'], status: 400 },
    { name: 'request line with two spaces', lines: ['GET  / HTTP/1.1', 'Host: a'], status: 400 },
    { name: 'request line with a trailing space', lines: ['GET / HTTP/1.1 ', 'Host: a'], status: 400 },
    { name: 'lower-case protocol name', lines: ['GET / http/1.1', 'Host: a'], status: 400 },
    { name: 'two-digit version', lines: ['GET / HTTP/11', 'Host: a'], status: 400 },
    { name: 'method with "("', lines: ['G(T / HTTP/1.1', 'Host: a'], status: 400 },
    { name: 'NUL in the target', lines: ['GET /a\x00b HTTP/1.1', 'Host: a'], status: 400 },
    { name: 'space in the target', lines: ['GET /a b HTTP/1.1', 'Host: a'], status: 400 },
    { name: 'bare LF in the request line', lines: ['GET / HTTP/1.1\nHost: a'], status: 400 },
    { name: 'tab separators in the request line', lines: ['GET\t/\tHTTP/1.1', 'Host: a'], status: 400 },
    { name: 'target that is not a path', lines: ['GET foo HTTP/1.1', 'Host: a'], status: 400 },
    { name: 'target starting with "?"', lines: ['GET ?x=1 HTTP/1.1', 'Host: a'], status: 400 },
    { name: 'absolute-form with userinfo', lines: ['GET http://user@a/ HTTP/1.1', 'Host: a'], status: 400 },
    { name: 'HTTP/2.0', lines: ['GET / HTTP/2.0', 'Host: a'], status: 505 },
    { name: 'HTTP/0.9', lines: ['GET / HTTP/0.9', 'Host: a'], status: 505 },
    { name: 'HTTP/3.0', lines: ['GET / HTTP/3.0', 'Host: a'], status: 505 },
    // Host
    { name: 'HTTP/1.1 without Host', lines: ['GET / HTTP/1.1', 'Accept: */*'], status: 400 },
    { name: 'two Host headers', lines: ['GET / HTTP/1.1', 'Host: a', 'Host: b'], status: 400 },
    { name: 'two identical Host headers', lines: ['GET / HTTP/1.1', 'Host: a', 'Host: a'], status: 400 },
    { name: 'Host with a space', lines: ['GET / HTTP/1.1', 'Host: a b'], status: 400 },
    { name: 'Host with a slash', lines: ['GET / HTTP/1.1', 'Host: a/b'], status: 400 },
    { name: 'Host with userinfo', lines: ['GET / HTTP/1.1', 'Host: user@a'], status: 400 },
    { name: 'absolute-form host mismatch', lines: ['GET http://evil.example/ HTTP/1.1', 'Host: good.example'], status: 400 },
    // method and limits
    { name: 'CONNECT', lines: ['CONNECT example.com:443 HTTP/1.1', 'Host: example.com:443'], status: 405 },
    { name: 'too many headers', lines: ['GET / HTTP/1.1', 'Host: a', 'X-1: 1', 'X-2: 2', 'X-3: 3'], status: 431, maxHeaders: 3 },
    // the path
    { name: 'malformed percent-escape in the path', lines: ['GET /a%zz HTTP/1.1', 'Host: a'], status: 400 },
    { name: 'backslash in the path', lines: ['GET /a\\..\\admin HTTP/1.1', 'Host: a'], status: 400 },
  ];

  it.each(cases)('$name → $status', ({ lines, status, maxHeaders }) => {
    const err = refusal(() => parse(lines, maxHeaders));
    expect(err.status).toBe(status);
    expect(err.code).toBe(
      status === 400
        ? 'ERR_BAD_REQUEST'
        : status === 431
          ? 'ERR_HEADERS_TOO_LARGE'
          : status === 501
            ? 'ERR_NOT_IMPLEMENTED'
            : status === 505
              ? 'ERR_VERSION_NOT_SUPPORTED'
              : 'ERR_METHOD_NOT_ALLOWED',
    );
  });

  it('shows untrusted bytes escaped in the error message', () => {
    const err = refusal(() => parse([...P, 'Content-Length: 1\xe9\xff']));
    expect(err.message).not.toMatch(/[\x80-\xff]/);
    expect(err.message).toContain('1\\xe9\\xff');
  });
});

describe('normalizePath', () => {
  it.each([
    ['/', '/'],
    ['/plain/path?q=1', '/plain/path?q=1'],
    ['/%2e%2e/admin', '/admin'],
    ['/%2E%2E/%2e%2E/admin', '/admin'],
    ['/x/%2e%2e/admin', '/admin'],
    ['/a/../b', '/b'],
    ['/a/b/../../c', '/c'],
    ['/../../etc/passwd', '/etc/passwd'],
    ['//admin', '/admin'],
    ['///a//b///c', '/a/b/c'],
    ['/./x', '/x'],
    ['/a/./b/.', '/a/b/'],
    ['/a/b/..', '/a/'],
    ['/a/..', '/'],
    ['/%2e', '/'],
    ['/a/b/', '/a/b/'],
    ['/a//', '/a/'],
    ['/%61dmin', '/admin'],
    ['/%41%42%7e%2D%5f', '/AB~-_'],
    ['/a%2Fb', '/a%2Fb'],
    ['/a%2fb', '/a%2Fb'],
    ['/a%2f..%2fadmin', '/a%2F..%2Fadmin'],
    ['/a/%2e%2e%2fadmin', '/a/..%2Fadmin'],
    ['/%20sp%3f', '/%20sp%3F'],
    ['/%252e%252e/admin', '/%252e%252e/admin'],
    ['/%00', '/%00'],
    ['/a/../b?x=/../y&z=%zz\\', '/b?x=/../y&z=%zz\\'],
    ['/a?%2e%2e', '/a?%2e%2e'],
    ['//x?//y', '/x?//y'],
  ])('%s → %s', (input, want) => {
    expect(normalizePath(input)).toBe(want);
  });

  it.each(['/a%zz', '/a%', '/a%2', '/%g0/x', '/a\\b', '/a\\..\\admin', '\\\\evil'])('refuses %s with 400', (input) => {
    const err = refusal(() => normalizePath(input));
    expect(err.status).toBe(400);
    expect(err.code).toBe('ERR_BAD_REQUEST');
  });

  it('is idempotent on its own output', () => {
    for (const p of ['/%2e%2e/admin', '/a/./b/../c//d/', '/%61%2fb', '/x/%2e/y?z']) {
      const once = normalizePath(p);
      expect(normalizePath(once)).toBe(once);
    }
  });
});

/** Feeds `input` in `pieces` (byte lengths; the rest goes in the last feed) and collects the data. */
function decode(input: string | Buffer, pieces?: number[]): { data: string; done: boolean; consumed: number } {
  const buf = typeof input === 'string' ? Buffer.from(input, 'latin1') : input;
  const dec = new ChunkedDecoder();
  const parts: Buffer[] = [];
  let consumed = 0;
  let at = 0;
  const cuts = pieces ?? [buf.length];
  for (let i = 0; i < cuts.length && at < buf.length; i++) {
    const len = i === cuts.length - 1 ? buf.length - at : (cuts[i] as number);
    const piece = buf.subarray(at, at + len);
    at += len;
    consumed += dec.feed(piece, (c) => parts.push(Buffer.from(c)));
    if (dec.done) break;
  }
  return { data: Buffer.concat(parts).toString('latin1'), done: dec.done, consumed };
}

describe('ChunkedDecoder', () => {
  it.each([
    { name: 'one chunk', input: '5\r\nhello\r\n0\r\n\r\n', data: 'hello' },
    { name: 'several chunks', input: '5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n', data: 'hello world' },
    { name: 'upper- and lower-case hex', input: 'A\r\n0123456789\r\na\r\nabcdefghij\r\n0\r\n\r\n', data: '0123456789abcdefghij' },
    { name: 'leading zeros in sizes', input: '0005\r\nhello\r\n000\r\n\r\n', data: 'hello' },
    { name: '15-digit size of zero', input: '000000000000000\r\n\r\n', data: '' },
    { name: 'empty body', input: '0\r\n\r\n', data: '' },
    { name: 'extensions', input: '5;name=value;flag\r\nhello\r\n6;q="a;b c"\r\n world\r\n0;last=1\r\n\r\n', data: 'hello world' },
    { name: 'extension with a tab', input: '5;a=\tb\r\nhello\r\n0\r\n\r\n', data: 'hello' },
    { name: 'trailers', input: '5\r\nhello\r\n0\r\nX-Checksum: abc\r\nX-Other:\tv\r\n\r\n', data: 'hello' },
    { name: 'data holding CRLFs and a fake last chunk', input: 'c\r\n\r\n0\r\n\r\nGET /\r\n0\r\n\r\n', data: '\r\n0\r\n\r\nGET /' },
    { name: 'binary data', input: Buffer.concat([Buffer.from('4\r\n'), Buffer.from([0, 255, 13, 10]), Buffer.from('\r\n0\r\n\r\n')]), data: '\x00\xff\r\n' },
  ])('decodes $name, whole and byte by byte', ({ input, data }) => {
    const buf = typeof input === 'string' ? Buffer.from(input, 'latin1') : input;
    const whole = decode(buf);
    expect(whole).toEqual({ data, done: true, consumed: buf.length });
    const bytewise = decode(buf, new Array(buf.length).fill(1));
    expect(bytewise).toEqual({ data, done: true, consumed: buf.length });
    // and split in uneven pieces
    const uneven = decode(buf, [2, 3, 1, 7, 4, 5, 1]);
    expect(uneven).toEqual({ data, done: true, consumed: buf.length });
  });

  it('stops at the end of the body and reports what it consumed (the rest is the next request)', () => {
    const body = '3\r\nabc\r\n0\r\n\r\n';
    const r = decode(`${body}GET /next HTTP/1.1\r\n`);
    expect(r).toEqual({ data: 'abc', done: true, consumed: body.length });
    const dec = new ChunkedDecoder();
    dec.feed(Buffer.from(body), () => {});
    expect(dec.feed(Buffer.from('more'), () => {})).toBe(0);
  });

  it('hands data over as it arrives (streaming)', () => {
    const dec = new ChunkedDecoder();
    const got: string[] = [];
    dec.feed(Buffer.from('a\r\n01234'), (c) => got.push(c.toString()));
    expect(got).toEqual(['01234']);
    expect(dec.done).toBe(false);
    dec.feed(Buffer.from('56789\r\n0\r\n'), (c) => got.push(c.toString()));
    expect(got).toEqual(['01234', '56789']);
    expect(dec.done).toBe(false);
    dec.feed(Buffer.from('\r\n'), () => {});
    expect(dec.done).toBe(true);
  });

  const bad: { name: string; input: string }[] = [
    { name: 'non-hex size', input: 'g\r\n' },
    { name: 'size with a trailing non-hex byte', input: '5x\r\nhello\r\n0\r\n\r\n' },
    { name: '0x prefix', input: '0x5\r\nhello\r\n0\r\n\r\n' },
    { name: 'negative size', input: '-5\r\nhello\r\n0\r\n\r\n' },
    { name: 'leading space', input: ' 5\r\nhello\r\n0\r\n\r\n' },
    { name: 'empty size line', input: '\r\nhello\r\n0\r\n\r\n' },
    { name: 'size line ending in a bare LF', input: '5\nhello\r\n0\r\n\r\n' },
    { name: 'size line ending in CR without LF', input: '5\rhello\r\n0\r\n\r\n' },
    { name: 'size overflow (18 hex digits)', input: 'ffffffffffffffffff\r\nx\r\n0\r\n\r\n' },
    { name: 'size of 16 digits even if small', input: '0000000000000001\r\nx\r\n0\r\n\r\n' },
    { name: 'missing CRLF after the data', input: '5\r\nhello0\r\n\r\n' },
    { name: 'data longer than its size', input: '3\r\nhello\r\n0\r\n\r\n' },
    { name: 'data followed by a bare LF', input: '5\r\nhello\n0\r\n\r\n' },
    { name: 'data followed by CR and no LF', input: '5\r\nhello\rX0\r\n\r\n' },
    { name: 'NUL in an extension', input: '5;a\x00b\r\nhello\r\n0\r\n\r\n' },
    { name: 'control character in an extension', input: '5;a=\x01\r\nhello\r\n0\r\n\r\n' },
    { name: 'DEL in an extension', input: '5;a=\x7f\r\nhello\r\n0\r\n\r\n' },
    { name: 'bare LF in an extension', input: '5;a\nb\r\nhello\r\n0\r\n\r\n' },
    { name: 'bare LF ending the extension', input: '5;a\nhello\r\n0\r\n\r\n' },
    { name: 'CRLF inside a quoted extension', input: '5;a="x\r\n"\r\nhello\r\n0\r\n\r\n' },
    { name: 'extension over 4096 bytes', input: `5;${'a'.repeat(5000)}\r\nhello\r\n0\r\n\r\n` },
    { name: 'control character in a trailer', input: '0\r\nX-A: \x01\r\n\r\n' },
    { name: 'bare CR in a trailer', input: '0\r\nX-A: a\rb\r\n\r\n' },
    { name: 'bare LF ending a trailer', input: '0\r\nX-A: a\n\r\n' },
    { name: 'last chunk ending in a bare LF', input: '0\r\n\n' },
    { name: 'trailer section over 16 KiB', input: `0\r\n${'X-Pad: aaaaaaaaaaaaaaaa\r\n'.repeat(1000)}\r\n` },
  ];

  it.each(bad)('refuses $name with 400 (whole and byte by byte)', ({ input }) => {
    const buf = Buffer.from(input, 'latin1');
    for (const pieces of [undefined, new Array(buf.length).fill(1)]) {
      const err = refusal(() => decode(buf, pieces));
      expect(err.status).toBe(400);
      expect(err.code).toBe('ERR_BAD_REQUEST');
    }
  });

  it('refuses an overflowing size before any data is handed over', () => {
    const got: Buffer[] = [];
    const dec = new ChunkedDecoder();
    expect(() => dec.feed(Buffer.from('ffffffffffffffffff\r\n'), (c) => got.push(c))).toThrow(TideError);
    expect(got).toHaveLength(0);
  });
});
