/**
 * The CLI's view of the control API: where it is (flags, env, or the data directory that
 * `tide up` wrote), its token, which CA to trust for an https:// API, and JSON calls that turn
 * API errors (and certificate failures) into TideErrors.
 *
 * Calls go through undici's own `fetch` with an undici `Agent` as dispatcher, so the Agent
 * that carries the CA bundle and the fetch that uses it come from the same undici version.
 */
import { access, readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Agent, fetch } from 'undici';
import { type ErrorCode, errorMessage, TideError } from '../lib/errors.ts';

export interface Target {
  api: string;
  token: string;
  gateway?: string;
  /** For an https:// API: the Agent that trusts the CA bundle. Absent: the system roots. */
  dispatcher?: Agent;
  /** Where the trusted CA came from (a file path), for error messages. Absent: the system roots. */
  caFile?: string;
}

export interface ConnectOptions {
  api?: string;
  token?: string;
  dataDir?: string;
  /** PEM bundle of the CA roots that sign the API's certificate (default $TIDE_CA_CERT, else <data-dir>/ca/bundle.pem). */
  cacert?: string;
}

/** The data directory the CLI talks to: --data-dir, $TIDE_DATA_DIR, or ./.tide. */
function dataDirOf(dataDir: string | undefined): string {
  return resolve(dataDir || process.env.TIDE_DATA_DIR || './.tide');
}

/**
 * Which CA bundle file verifies an https:// API: `cacert` (--cacert), else $TIDE_CA_CERT, else
 * `<data-dir>/ca/bundle.pem` when it exists. Undefined: the system roots.
 */
export async function caBundleFile(dataDir?: string, cacert?: string): Promise<string | undefined> {
  const given = cacert || process.env.TIDE_CA_CERT;
  if (given) return resolve(given);
  const bundle = join(dataDirOf(dataDir), 'ca', 'bundle.pem');
  return (await access(bundle).then(
    () => true,
    () => false,
  ))
    ? bundle
    : undefined;
}

/**
 * An undici Agent that trusts the CA bundle chosen as `caBundleFile()` says, for fetch's
 * `dispatcher`; undefined when no bundle applies (the system roots are trusted then).
 */
export async function apiDispatcher(dataDir?: string, cacert?: string): Promise<Agent | undefined> {
  const file = await caBundleFile(dataDir, cacert);
  if (!file) return undefined;
  return new Agent({ connect: { ca: await readBundle(file, Boolean(cacert || process.env.TIDE_CA_CERT)) } });
}

async function readBundle(file: string, given: boolean): Promise<string> {
  const from = given ? '--cacert (or $TIDE_CA_CERT)' : 'the data directory';
  let pem: string;
  try {
    pem = await readFile(file, 'utf8');
  } catch (err) {
    throw new TideError('ERR_INVALID_ARGUMENT', `cannot read the CA bundle ${file} given by ${from}: ${errorMessage(err)}`, {
      hint: 'pass --cacert FILE with the PEM roots of the Tide CA (<data-dir>/ca/bundle.pem on the machine that runs `tide up`)',
    });
  }
  if (!pem.includes('-----BEGIN CERTIFICATE-----'))
    throw new TideError('ERR_INVALID_ARGUMENT', `the CA bundle ${file} given by ${from} holds no PEM certificate`, {
      hint: 'it should hold one or more "-----BEGIN CERTIFICATE-----" blocks, like <data-dir>/ca/bundle.pem',
    });
  return pem;
}

export async function locate(opts: ConnectOptions): Promise<Target> {
  const dataDir = dataDirOf(opts.dataDir);
  let api = opts.api ?? process.env.TIDE_API;
  let token = opts.token ?? process.env.TIDE_TOKEN;
  let gateway: string | undefined;
  if (!api) {
    const raw = await readFile(join(dataDir, 'endpoint.json'), 'utf8').catch(() => undefined);
    if (raw === undefined) {
      throw new TideError('ERR_API_UNREACHABLE', `no running Tide found: ${join(dataDir, 'endpoint.json')} does not exist`, {
        hint: 'start one with `tide up` (in this folder), or pass --data-dir DIR, or --api URL and --token TOKEN',
      });
    }
    try {
      const ep = JSON.parse(raw) as { api: string; gateway?: string };
      api = ep.api;
      gateway = ep.gateway;
    } catch {
      throw new TideError('ERR_DATA_DIR', `${join(dataDir, 'endpoint.json')} is damaged (not JSON)`, { hint: 'restart `tide up`; it rewrites the file' });
    }
  }
  if (!token) {
    const raw = await readFile(join(dataDir, 'token'), 'utf8').catch(() => undefined);
    if (raw === undefined) {
      throw new TideError('ERR_UNAUTHORIZED', `no API token: ${join(dataDir, 'token')} does not exist`, {
        hint: 'pass --token, set TIDE_TOKEN, or point --data-dir at the folder `tide up` uses',
      });
    }
    token = raw.trim();
  }
  const target: Target = { api: api.replace(/\/+$/, ''), token, gateway };
  if (target.api.startsWith('https:')) {
    target.caFile = await caBundleFile(dataDir, opts.cacert);
    target.dispatcher = await apiDispatcher(dataDir, opts.cacert);
  }
  return target;
}

/** Node's codes for a server certificate that did not verify, and for other failed handshakes. */
const CERT_CODES = /CERT|SIGNATURE|SELF_SIGNED|ISSUER|HOSTNAME|ALTNAME/;
const HANDSHAKE_CODES = /^(ERR_SSL_|ERR_TLS_|EPROTO$)/;

export class ApiClient {
  readonly target: Target;
  constructor(target: Target) {
    this.target = target;
  }

  async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await this.raw(method, path, body);
    const text = await res.text();
    let data: unknown;
    try {
      data = text ? JSON.parse(text) : {};
    } catch {
      throw new TideError('ERR_INTERNAL', `the API answered ${res.status} with something that is not JSON`);
    }
    if (!res.ok) {
      const e = (data as { error?: { code?: string; message?: string; hint?: string | null } & Record<string, unknown> }).error ?? {};
      const { code, message, hint, ...details } = e;
      throw new TideError((code ?? 'ERR_INTERNAL') as ErrorCode, message ?? `the API answered ${res.status}`, {
        status: res.status,
        hint: hint ?? undefined,
        details,
      });
    }
    return data as T;
  }

  async raw(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<Response> {
    try {
      const res = await fetch(`${this.target.api}${path}`, {
        method,
        headers: { authorization: `Bearer ${this.target.token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
        ...(this.target.dispatcher ? { dispatcher: this.target.dispatcher } : {}),
      });
      // undici's Response is the WHATWG Response the rest of the CLI expects.
      return res as unknown as Response;
    } catch (err) {
      const cause = (err as { cause?: { code?: string; message?: string; errors?: { code?: string }[] } }).cause;
      const code = cause?.code ?? cause?.errors?.[0]?.code ?? cause?.message;
      if (this.target.api.startsWith('https:') && cause?.code && HANDSHAKE_CODES.test(cause.code) && !CERT_CODES.test(cause.code)) {
        throw new TideError('ERR_API_UNREACHABLE', `the TLS handshake with the Tide API at ${this.target.api} failed (${cause.code})`, {
          hint: 'is that port serving HTTPS? For a Tide started with --no-api-tls, use an http:// URL',
          cause: err,
        });
      }
      if (this.target.api.startsWith('https:') && cause?.code && CERT_CODES.test(cause.code)) {
        const trusted = this.target.caFile ? `the CA bundle ${this.target.caFile}` : 'the system roots (no CA bundle found)';
        // Node adds advice about --use-system-ca that does not apply to Tide's own CA.
        const reason = (cause.message ?? cause.code).replace(/; if the root CA is installed locally.*$/s, '');
        throw new TideError('ERR_API_UNREACHABLE', `cannot verify the TLS certificate of the Tide API at ${this.target.api}: ${reason} (${cause.code})`, {
          hint: `it was checked against ${trusted}; pass --cacert FILE (or set TIDE_CA_CERT) with the CA bundle of that Tide, <data-dir>/ca/bundle.pem`,
          cause: err,
        });
      }
      throw new TideError('ERR_API_UNREACHABLE', `cannot reach the Tide API at ${this.target.api}${code ? ` (${code})` : ''}`, {
        hint: 'is `tide up` running? (its data directory holds endpoint.json)',
        cause: err,
      });
    }
  }
}
