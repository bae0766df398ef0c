/**
 * The strict HTTP/1.1 request-head parser of the proxy's listener (RFC 9110/9112). It accepts
 * only what every upstream parses the same way, so a request cannot mean one thing to Tide and
 * another to the server behind it (request smuggling):
 *
 * - the method is any token (RFC 9110 §9: extension methods such as BAN or CHECKIN are
 *   forwarded; an upstream that does not know one answers it itself);
 * - lines end in CRLF; a bare CR or LF, any other control character, or obs-fold is 400;
 * - header names are tokens with no space before the colon; values are visible ASCII, obs-text,
 *   SP and HTAB, trimmed of surrounding whitespace;
 * - Content-Length is digits only, and repeated only with the same value; Transfer-Encoding is
 *   exactly `chunked` (501 for other codings) and never together with Content-Length;
 * - HTTP/1.1 needs exactly one Host; absolute-form targets must name the same host;
 * - the path is normalised before routing as Envoy does (percent-decoding of unreserved
 *   characters such as `%2e`, `.`/`..` segments removed, duplicate slashes merged), so a route
 *   on `/admin` cannot be bypassed with `//admin` or `/x/../admin`.
 *
 * Hop-by-hop headers (Connection and the names it lists, Keep-Alive, TE, Trailer,
 * Transfer-Encoding, Upgrade, Proxy-Connection) are removed from the forwarded set; what they
 * said is kept in the parsed fields.
 */
import { TideError } from '../../lib/errors.ts';
import { CONTENT_LENGTH, CTL, HOP_BY_HOP, TOKEN } from './grammar.ts';

export interface RequestHead {
  method: string;
  /** Origin-form path and query after normalisation (what is routed and forwarded). */
  path: string;
  /** The Host (or the absolute-form authority), as sent. */
  host: string;
  /** 0 for HTTP/1.0, 1 for HTTP/1.1. */
  minor: number;
  /** Forwarded headers: lower-case names, duplicates joined with ", " (cookie with "; "). */
  headers: Record<string, string>;
  /** Declared body length; -1 for chunked; 0 when there is no body. */
  contentLength: number;
  chunked: boolean;
  /** The client asked to close after this request (or speaks HTTP/1.0 without keep-alive). */
  close: boolean;
  /** The Upgrade header's value when the client asked to switch protocols, else undefined. */
  upgrade: string | undefined;
  /** The client sent `Expect: 100-continue`. */
  expectContinue: boolean;
}

export interface HeadLimits {
  /** Most header fields (431 above). */
  maxHeaders: number;
}

const REQUEST_LINE = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+) ([\x21-\x7e]+) HTTP\/(\d)\.(\d)$/;

/**
 * Adds a field to `headers`, joining a repeated one with ", " (cookie with "; "). An empty
 * field adds nothing to a list (RFC 9110 §5.6.1): joining it would leave a separator that the
 * next hop trims, so it would see another value than Tide. Shared with the HTTP/2 listener.
 */
export function joinField(headers: Record<string, string>, name: string, value: string): void {
  const prev = headers[name];
  if (prev === undefined) headers[name] = value;
  else if (value !== '') headers[name] = prev === '' ? value : `${prev}${name === 'cookie' ? '; ' : ', '}${value}`;
}

function bad(message: string): TideError {
  return new TideError('ERR_BAD_REQUEST', message, { status: 400 });
}

/**
 * Parses the head `text` (latin1, without the final CRLFCRLF). Throws a TideError with the
 * status to answer (400, 431, 501, 505) when the request must be refused.
 */
export function parseRequestHead(text: string, limits: HeadLimits): RequestHead {
  const lines = text.split('\r\n');
  let first = 0;
  // A server should ignore at least one empty line before the request line (RFC 9112 §2.2).
  while (first < lines.length - 1 && lines[first] === '') first++;
  const requestLine = lines[first] as string;
  const m = REQUEST_LINE.exec(requestLine);
  if (!m) {
    if (CTL.test(requestLine)) throw bad('the request line has a control character or a bare CR/LF');
    throw bad('the request line is not "METHOD target HTTP/1.x"');
  }
  const method = m[1] as string;
  let target = m[2] as string;
  if (m[3] !== '1') throw new TideError('ERR_VERSION_NOT_SUPPORTED', `HTTP/${m[3]}.${m[4]} is not supported here`, { status: 505 });
  const minor = m[4] === '0' ? 0 : 1;
  if (lines.length - first - 1 > limits.maxHeaders) {
    throw new TideError('ERR_HEADERS_TOO_LARGE', `the request has more than ${limits.maxHeaders} header fields`, { status: 431 });
  }

  const headers: Record<string, string> = Object.create(null);
  let contentLength = -2;
  let te: string | undefined;
  let hosts = 0;
  let connection = '';
  for (let i = first + 1; i < lines.length; i++) {
    const line = lines[i] as string;
    const colon = line.indexOf(':');
    if (colon <= 0) {
      if (line.length > 0 && (line.charCodeAt(0) === 32 || line.charCodeAt(0) === 9))
        throw bad('obsolete line folding (a header line starting with whitespace)');
      throw bad(`header line ${i - first} has no "name:"`);
    }
    const rawName = line.slice(0, colon);
    if (!TOKEN.test(rawName)) throw bad(`header name "${printable(rawName)}" is not a token (no spaces before the colon)`);
    if (CTL.test(line)) throw bad(`header ${rawName} has a control character or a bare CR/LF in its value`);
    const name = rawName.toLowerCase();
    const value = trimOws(line, colon + 1);
    switch (name) {
      case 'content-length': {
        for (const part of value.split(',')) {
          const v = part.trim();
          if (!CONTENT_LENGTH.test(v)) throw bad(`Content-Length "${printable(value)}" is not a number`);
          const n = Number(v);
          if (contentLength !== -2 && contentLength !== n) throw bad('the request has conflicting Content-Length values');
          contentLength = n;
        }
        continue;
      }
      case 'transfer-encoding':
        te = te === undefined ? value : `${te}, ${value}`;
        continue;
      case 'host':
        hosts++;
        headers.host = value;
        continue;
      case 'connection':
        connection = connection ? `${connection},${value.toLowerCase()}` : value.toLowerCase();
        continue;
      case 'upgrade':
        headers[name] = value;
        continue;
    }
    joinField(headers, name, value);
  }

  let chunked = false;
  if (te !== undefined) {
    if (contentLength !== -2) throw bad('the request has both Content-Length and Transfer-Encoding');
    if (minor === 0) throw bad('Transfer-Encoding is not allowed in HTTP/1.0');
    if (te.toLowerCase() !== 'chunked') {
      throw new TideError('ERR_NOT_IMPLEMENTED', `Transfer-Encoding "${printable(te)}" is not supported; use chunked`, { status: 501 });
    }
    chunked = true;
  }

  let host = headers.host;
  if (hosts > 1) throw bad('the request has more than one Host header');
  if (target.charCodeAt(0) !== 47 /* / */) {
    const abs = /^https?:\/\/([^/?#@\s]+)([/?][^#]*)?$/i.exec(target);
    if (abs) {
      const authority = abs[1] as string;
      if (host !== undefined && host.toLowerCase() !== authority.toLowerCase()) {
        throw bad(`the absolute-form target names host ${printable(authority)} but the Host header says ${printable(host)}`);
      }
      host = authority;
      target = abs[2] === undefined ? '/' : abs[2].startsWith('?') ? `/${abs[2]}` : abs[2];
    } else if (target === '*' && method === 'OPTIONS') {
      // asterisk-form: forwarded as is
    } else if (method === 'CONNECT') {
      throw new TideError('ERR_METHOD_NOT_ALLOWED', 'CONNECT is not supported by this proxy', { status: 405 });
    } else {
      throw bad(`the request target "${printable(target)}" is not a path`);
    }
  }
  if (host === undefined) {
    if (minor === 1) throw bad('the HTTP/1.1 request has no Host header');
    host = '';
  }
  if (host !== '' && !/^[a-zA-Z0-9._~!$&'()*+,;=:[\]%-]+$/.test(host)) throw bad(`the Host "${printable(host)}" is not a valid authority`);
  delete headers.host;

  let closeAsked = false;
  let keepAlive10 = false;
  let upgrade: string | undefined;
  if (connection) {
    for (const part of connection.split(',')) {
      const token = part.trim();
      if (token === 'close') closeAsked = true;
      else if (token === 'keep-alive') keepAlive10 = true;
      else if (token === 'upgrade') upgrade = headers.upgrade;
      else if (token && !HOP_BY_HOP.has(token)) delete headers[token];
    }
  }
  const close = closeAsked || (minor === 0 && !keepAlive10);
  if (upgrade === undefined) delete headers.upgrade;
  delete headers['keep-alive'];
  delete headers['proxy-connection'];
  delete headers.te;
  delete headers.trailer;
  const expectContinue = headers.expect?.toLowerCase() === '100-continue';
  if (expectContinue) delete headers.expect;

  return {
    method,
    path: target === '*' ? target : normalizePath(target),
    host,
    minor,
    headers,
    contentLength: chunked ? -1 : contentLength === -2 ? 0 : contentLength,
    chunked,
    close,
    upgrade,
    expectContinue,
  };
}

function trimOws(line: string, from: number): string {
  let start = from;
  let end = line.length;
  while (start < end && (line.charCodeAt(start) === 32 || line.charCodeAt(start) === 9)) start++;
  while (end > start && (line.charCodeAt(end - 1) === 32 || line.charCodeAt(end - 1) === 9)) end--;
  return line.slice(start, end);
}

/** Shows untrusted text in an error message: at most 60 characters, control characters escaped. */
function printable(s: string): string {
  const cut = s.length > 60 ? `${s.slice(0, 60)}…` : s;
  // biome-ignore lint/suspicious/noControlCharactersInRegex: escaping control characters is the point
  return cut.replace(/[\x00-\x1f\x7f-\xff]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

const NEEDS_NORMALIZING = /%|\/\.|\/\/|\\/;
const UNRESERVED = /[A-Za-z0-9\-._~]/;

/**
 * RFC 3986 normalisation of the path part (the query is kept as sent): percent-encoded
 * unreserved characters are decoded, other escapes upper-cased (`%2f` stays encoded, so an
 * encoded slash is never a separator), dot segments removed, runs of slashes merged. A
 * backslash or a malformed escape is a 400. Paths that need none of this are returned as is.
 */
export function normalizePath(target: string): string {
  const q = target.indexOf('?');
  const path = q === -1 ? target : target.slice(0, q);
  if (!NEEDS_NORMALIZING.test(path)) return target;
  if (path.includes('\\')) throw bad('the path has a backslash');
  let decoded = '';
  for (let i = 0; i < path.length; i++) {
    const c = path[i] as string;
    if (c !== '%') {
      decoded += c;
      continue;
    }
    const hex = path.slice(i + 1, i + 3);
    if (!/^[0-9a-fA-F]{2}$/.test(hex)) throw bad(`the path has a malformed percent-escape at offset ${i}`);
    const ch = String.fromCharCode(Number.parseInt(hex, 16));
    decoded += UNRESERVED.test(ch) ? ch : `%${hex.toUpperCase()}`;
    i += 2;
  }
  const out: string[] = [];
  for (const seg of decoded.split('/').slice(1)) {
    if (seg === '.' || seg === '') continue;
    if (seg === '..') out.pop();
    else out.push(seg);
  }
  const trailing = decoded.endsWith('/') || decoded.endsWith('/.') || decoded.endsWith('/..');
  const normalized = `/${out.join('/')}${trailing && out.length > 0 ? '/' : ''}`;
  return q === -1 ? normalized : normalized + target.slice(q);
}
