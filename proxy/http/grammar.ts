/**
 * The pieces of HTTP syntax every part of the proxy checks the same way (RFC 9110): tokens,
 * control characters, Content-Length values, hop-by-hop header names, idempotent methods. One
 * definition each, so the listener, the upstream pool and the sandbox adapter cannot drift apart.
 */

/** A token (header names, methods). */
export const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/** Any control character except HTAB (CR and LF included). */
// biome-ignore lint/suspicious/noControlCharactersInRegex: finding control characters is the point
export const CTL = /[\x00-\x08\x0a-\x1f\x7f]/;

/** A Content-Length value: digits only, at most 15 (so it stays an exact integer). */
export const CONTENT_LENGTH = /^\d{1,15}$/;

/** Headers that describe one connection, not the message; never forwarded. */
export const HOP_BY_HOP: ReadonlySet<string> = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade']);

/** Methods a proxy may send again without changing their effect. */
export const IDEMPOTENT: ReadonlySet<string> = new Set(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE']);
