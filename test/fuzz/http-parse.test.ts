/**
 * Fuzzing the proxy's HTTP/1.1 request parser and chunked decoder (the code that decides
 * what a request means before anything is forwarded):
 *  - any input either parses or is refused with a TideError carrying 400/431/501/505, never
 *    another exception;
 *  - whatever parses is sane (token method, normalised path, no control characters in any
 *    header, never both a length and chunked);
 *  - what the proxy would forward parses again to the same request: Tide and the server behind
 *    it cannot disagree about it (the property request smuggling breaks);
 *  - a chunked body decodes to the same bytes however the network splits it.
 * Budget: FUZZ_SECONDS per property (see budget.ts).
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { isTideError } from '../../lib/errors.ts';
import { ChunkedDecoder } from '../../proxy/http/chunked.ts';
import { parseRequestHead, type RequestHead } from '../../proxy/http/parse.ts';
import { budget, corpus } from './budget.ts';
import { mutated } from './mutate.ts';

const LIMITS = { maxHeaders: 100 };
const REFUSALS = new Set([400, 431, 501, 505]);
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
// biome-ignore lint/suspicious/noControlCharactersInRegex: the point is to find them
const CTL_BUT_TAB = /[\x00-\x08\x0a-\x1f\x7f]/;

/** The head of a corpus entry: what the listener hands the parser (without the final CRLFCRLF). */
function heads(): string[] {
  return corpus('http').map((s) => {
    const end = s.indexOf('\r\n\r\n');
    return end === -1 ? s : s.slice(0, end);
  });
}

function parse(text: string): RequestHead | undefined {
  try {
    return parseRequestHead(text, LIMITS);
  } catch (err) {
    if (!isTideError(err) || !REFUSALS.has(err.status ?? 0))
      throw new Error(`the parser threw something other than a refusal on ${JSON.stringify(text)}: ${String(err)}`);
    return undefined;
  }
}

/** The head the proxy forwards for `h`: host first (as the upstream writer does), then the headers (hop-by-hop ones are already gone). */
function forwarded(h: RequestHead): string {
  let out = `${h.method} ${h.path} HTTP/1.1\r\nhost: ${h.host}\r\n`;
  // An Upgrade request goes out as the upgrade path writes it (proxy.ts: connection: upgrade).
  if (h.upgrade !== undefined) out += `connection: upgrade\r\nupgrade: ${h.upgrade}\r\n`;
  for (const [name, value] of Object.entries(h.headers)) if (name !== 'host' && name !== 'upgrade') out += `${name}: ${value}\r\n`;
  if (h.chunked) out += 'transfer-encoding: chunked\r\n';
  else if (h.contentLength > 0 && h.headers['content-length'] === undefined) out += `content-length: ${h.contentLength}\r\n`;
  return out.slice(0, -2);
}

function checkSane(h: RequestHead, input: string): void {
  const where = JSON.stringify(input);
  expect(h.method, where).toMatch(TOKEN);
  const path = h.path.split('?')[0] as string;
  if (h.path !== '*') {
    expect(path.startsWith('/'), where).toBe(true);
    expect(path.includes('//'), `${where} → ${h.path}`).toBe(false);
    expect(
      path.split('/').some((seg) => seg === '.' || seg === '..'),
      `${where} → ${h.path}`,
    ).toBe(false);
  }
  // biome-ignore lint/suspicious/noControlCharactersInRegex: checking the target has none
  expect(/[\x00-\x20\x7f]/.test(h.path), where).toBe(false);
  for (const [name, value] of Object.entries(h.headers)) {
    expect(name, where).toMatch(TOKEN);
    expect(name, where).toBe(name.toLowerCase());
    expect(CTL_BUT_TAB.test(value), `${where}: header ${name}`).toBe(false);
  }
  expect(CTL_BUT_TAB.test(h.host), where).toBe(false);
  if (h.chunked) expect(h.contentLength, where).toBe(-1);
  else expect(h.contentLength, where).toBeGreaterThanOrEqual(0);
}

describe('fuzz: request head parser', () => {
  it('refuses or parses mutated requests; what it parses is sane and forwards as the same request', () => {
    fc.assert(
      fc.property(mutated(heads()), (input) => {
        const h = parse(input);
        if (!h) return;
        checkSane(h, input);
        if (h.host === '') return; // HTTP/1.0 without Host: refused by routing (400), never forwarded
        const again = parse(forwarded(h));
        expect(again, `${JSON.stringify(input)} forwarded as ${JSON.stringify(forwarded(h))}`).toBeDefined();
        expect(again?.method).toBe(h.method);
        expect(again?.path).toBe(h.path);
        expect(again?.host).toBe(h.host);
        expect({ ...again?.headers, host: undefined }).toEqual({ ...h.headers, host: undefined });
        expect(again?.contentLength).toBe(h.contentLength);
        expect(again?.chunked).toBe(h.chunked);
        expect(again?.upgrade).toBe(h.upgrade);
      }),
      budget(),
    );
  });

  it('never throws anything but a refusal on arbitrary bytes', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary', maxLength: 400 }), (input) => {
        const h = parse(input);
        if (h) checkSane(h, input);
      }),
      budget(),
    );
  });

  it('parses generated valid requests to what was sent', () => {
    const name = fc
      .stringMatching(/^[a-z][a-z0-9-]{0,15}$/)
      .filter(
        (n) =>
          ![
            'host',
            'content-length',
            'transfer-encoding',
            'connection',
            'upgrade',
            'keep-alive',
            'te',
            'trailer',
            'proxy-connection',
            'cookie',
            'expect',
          ].includes(n),
      );
    const value = fc.stringMatching(/^[!-~]([ !-~]{0,30}[!-~])?$/);
    const seg = fc.stringMatching(/^[a-zA-Z0-9_~-]{1,8}$/);
    fc.assert(
      fc.property(
        fc.constantFrom('GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'HEAD', 'OPTIONS'),
        fc.array(seg, { maxLength: 5 }),
        fc.uniqueArray(fc.tuple(name, value), { selector: ([n]) => n, maxLength: 10 }),
        fc.nat({ max: 100_000 }),
        (method, segs, headers, length) => {
          const path = `/${segs.join('/')}`;
          let text = `${method} ${path} HTTP/1.1\r\nHost: example.test\r\n`;
          for (const [n, v] of headers) text += `${n}: ${v}\r\n`;
          text += `Content-Length: ${length}`;
          const h = parse(text);
          expect(h, JSON.stringify(text)).toBeDefined();
          expect(h?.method).toBe(method);
          expect(h?.path).toBe(path);
          expect(h?.contentLength).toBe(length);
          for (const [n, v] of headers) expect(h?.headers[n]).toBe(v);
        },
      ),
      budget(),
    );
  });
});

function encodeChunked(body: Buffer, sizes: number[]): Buffer {
  const parts: Buffer[] = [];
  let at = 0;
  for (const s of sizes) {
    if (at >= body.length) break;
    const piece = body.subarray(at, at + Math.max(1, s));
    at += piece.length;
    parts.push(Buffer.from(`${piece.length.toString(16)}\r\n`, 'latin1'), piece, Buffer.from('\r\n', 'latin1'));
  }
  if (at < body.length) parts.push(Buffer.from(`${(body.length - at).toString(16)}\r\n`, 'latin1'), body.subarray(at), Buffer.from('\r\n', 'latin1'));
  parts.push(Buffer.from('0\r\n\r\n', 'latin1'));
  return Buffer.concat(parts);
}

function decode(wire: Buffer, cuts: number[]): { body: Buffer; used: number; done: boolean } {
  const d = new ChunkedDecoder();
  const got: Buffer[] = [];
  let used = 0;
  let from = 0;
  for (const cut of [...cuts.map((c) => c % (wire.length + 1)).sort((a, b) => a - b), wire.length]) {
    if (cut < from) continue;
    const piece = wire.subarray(from, cut);
    from = cut;
    if (piece.length === 0) continue;
    const n = d.feed(piece, (c) => got.push(Buffer.from(c)));
    used += n;
    if (d.done) break;
  }
  return { body: Buffer.concat(got), used, done: d.done };
}

describe('fuzz: chunked decoder', () => {
  it('decodes the same body however it is chunked and however the network splits it, and stops at its end', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ maxLength: 2000 }),
        fc.array(fc.integer({ min: 1, max: 300 }), { maxLength: 20 }),
        fc.array(fc.nat(), { maxLength: 12 }),
        (bytes, sizes, cuts) => {
          const body = Buffer.from(bytes);
          const wire = encodeChunked(body, sizes);
          const next = Buffer.from('GET /next HTTP/1.1\r\n', 'latin1');
          const r = decode(Buffer.concat([wire, next]), cuts);
          expect(r.done).toBe(true);
          expect(r.body.equals(body)).toBe(true);
          // Not a byte of the next request is taken as body.
          expect(r.used).toBe(wire.length);
        },
      ),
      budget(),
    );
  });

  it('refuses mutated chunked bodies with a 400, never another exception', () => {
    const wires = corpus('http')
      .filter((s) => /transfer-encoding: chunked/i.test(s))
      .map((s) => s.slice(s.indexOf('\r\n\r\n') + 4));
    fc.assert(
      fc.property(mutated(wires), fc.array(fc.nat(), { maxLength: 6 }), (input, cuts) => {
        try {
          decode(Buffer.from(input, 'latin1'), cuts);
        } catch (err) {
          if (!isTideError(err) || err.status !== 400) throw new Error(`the decoder threw ${String(err)} on ${JSON.stringify(input)}`);
        }
      }),
      budget(),
    );
  });
});
