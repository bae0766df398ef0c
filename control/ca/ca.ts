/**
 * Tide's certificate authority: an ECDSA P-256 root (made on first start, or the user's own
 * root or intermediate) that issues short-lived X.509 workload certificates, one SPIFFE ID as
 * the URI SAN of each. It sits beside the control plane, never on the request path: the proxy
 * asks it for certificates through an issuer function and rotates them at half life.
 *
 * State lives in `<dir>/state.json` (mode 0600: it holds the signing key); the trusted roots,
 * which are public, are also written to `<dir>/bundle.pem` for the CLI, curl and openssl.
 *
 * Root roll-over (`rotate()`): a new root signs every certificate from then on, while the old
 * root stays in the trust bundle until the last certificate it signed has expired, so no
 * handshake fails during the change. Certificates are built with @peculiar/x509 on node:crypto
 * keys; no ASN.1 is written by hand here.
 */
import 'reflect-metadata';
import { createPrivateKey, generateKeyPairSync, type KeyObject, X509Certificate as NodeX509, randomBytes, webcrypto } from 'node:crypto';
import { chmod, mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { join } from 'node:path';
import * as x509 from '@peculiar/x509';
import { errorMessage, TideError } from '../../lib/errors.ts';

x509.cryptoProvider.set(webcrypto as unknown as Crypto);

const EC = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGN = { name: 'ECDSA', hash: 'SHA-256' } as const;
const ROOT_YEARS = 10;
/** Certificates start a minute in the past, for clocks a little behind. */
const SKEW_MS = 60_000;

export const CA_DEFAULTS = Object.freeze({
  /** Lifetime of a workload certificate. 24 h; rotated at half life. */
  certTtlMs: 24 * 3600_000,
});

export interface CaOptions {
  /** Folder of the CA's state (created 0700). */
  dir: string;
  /** SPIFFE trust domain, e.g. "tide.local". */
  trustDomain: string;
  /** Default lifetime of issued certificates, ms. Default 24 h. */
  certTtlMs?: number;
  /** Bring your own CA: a PEM file with the signing certificate first and its chain up to the root. */
  certFile?: string;
  /** …and the PEM private key of that first certificate. */
  keyFile?: string;
  now?: () => number;
}

export interface IssueOptions {
  /** The SPIFFE ID (URI SAN). */
  id?: string;
  /** DNS names and IP addresses to add (for servers reached by name, like the control API). */
  names?: string[];
  /** Lifetime, ms. Default the CA's certTtlMs. */
  ttlMs?: number;
  /** For tests: a certificate already expired, or not yet valid. */
  notBefore?: Date;
  notAfter?: Date;
}

export interface IssuedCertificate {
  /** PEM: the leaf, then the intermediates up to (not including) the root. */
  cert: string;
  /** PEM PKCS#8 private key of the leaf. */
  key: string;
  /** PEM of every root trusted now (current and, during a roll-over, previous). */
  ca: string;
  id: string | undefined;
  serial: string;
  notBefore: Date;
  notAfter: Date;
}

export interface RootInfo {
  subject: string;
  serial: string;
  fingerprint256: string;
  notAfter: string;
  /** This root signs new certificates. */
  current: boolean;
  /** Trusted until then (a previous root during a roll-over). */
  trustedUntil?: string;
}

interface State {
  version: 1;
  trustDomain: string;
  /** The signing certificate (then its chain), and its key. */
  chain: string;
  key: string;
  /** Brought by the user (not rotated by Tide). */
  external: boolean;
  /** Earlier roots, trusted until the certificates they signed expire. */
  previous: { cert: string; trustedUntil: number }[];
}

interface Signer {
  key: KeyObject;
  crypto: CryptoKey;
  cert: x509.X509Certificate;
  /** PEMs: the signing certificate first, the root last. */
  chainPems: string[];
}

export class CertificateAuthority {
  readonly trustDomain: string;
  readonly certTtlMs: number;
  readonly #dir: string;
  readonly #now: () => number;
  #state: State;
  #signer: Signer;
  #listeners = new Set<() => void>();

  private constructor(opts: CaOptions, state: State, signer: Signer) {
    this.trustDomain = opts.trustDomain;
    this.certTtlMs = opts.certTtlMs ?? CA_DEFAULTS.certTtlMs;
    this.#dir = opts.dir;
    this.#now = opts.now ?? Date.now;
    this.#state = state;
    this.#signer = signer;
  }

  /** Loads the CA from `dir`, making a new root the first time (or taking the user's files). */
  static async open(opts: CaOptions): Promise<CertificateAuthority> {
    if (opts.certTtlMs !== undefined && (!Number.isInteger(opts.certTtlMs) || opts.certTtlMs < 2000))
      throw new TideError('ERR_INVALID_ARGUMENT', `certTtl must be at least 2s (got ${opts.certTtlMs} ms)`);
    if (Boolean(opts.certFile) !== Boolean(opts.keyFile))
      throw new TideError('ERR_INVALID_ARGUMENT', 'a CA of your own needs both its certificate (--ca-cert) and its key (--ca-key)');
    await mkdir(opts.dir, { recursive: true, mode: 0o700 });
    const file = join(opts.dir, 'state.json');
    let state: State | undefined;
    const text = await readFile(file, 'utf8').catch((err: NodeJS.ErrnoException) => (err.code === 'ENOENT' ? undefined : Promise.reject(err)));
    if (text !== undefined) {
      try {
        state = JSON.parse(text) as State;
      } catch (err) {
        throw new TideError('ERR_DATA_DIR', `the CA state ${file} is not valid JSON: ${errorMessage(err)}`, {
          hint: 'restore it, or move it away to start a new CA',
        });
      }
      if (state.trustDomain !== opts.trustDomain)
        throw new TideError('ERR_INVALID_ARGUMENT', `this data directory's CA is for trust domain "${state.trustDomain}", not "${opts.trustDomain}"`, {
          hint: `start with --trust-domain ${state.trustDomain}, or use another --data-dir`,
        });
    }
    if (opts.certFile && opts.keyFile) {
      const brought = await bringOwn(opts.certFile, opts.keyFile);
      if (!state || state.chain !== brought.chain) {
        const previous = state ? [...state.previous, { cert: rootOf(state), trustedUntil: Date.now() + (opts.certTtlMs ?? CA_DEFAULTS.certTtlMs) }] : [];
        state = { version: 1, trustDomain: opts.trustDomain, chain: brought.chain, key: brought.key, external: true, previous };
      }
    }
    state ??= { version: 1, trustDomain: opts.trustDomain, ...(await newRoot(opts.trustDomain)), external: false, previous: [] };
    const ca = new CertificateAuthority(opts, state, await signerOf(state));
    ca.#prune();
    await ca.#save();
    return ca;
  }

  /** Issues a certificate for `id` (and/or names), signed by the current root or intermediate. */
  async issue(opts: IssueOptions): Promise<IssuedCertificate> {
    const now = this.#now();
    // The signer as it is now, for the whole certificate (a roll-over may happen meanwhile).
    const signer = this.#signer;
    const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    const notBefore = opts.notBefore ?? new Date(now - SKEW_MS);
    const notAfter = opts.notAfter ?? new Date(now + (opts.ttlMs ?? this.certTtlMs));
    const san: { type: 'url' | 'dns' | 'ip'; value: string }[] = [];
    if (opts.id) san.push({ type: 'url', value: opts.id });
    for (const n of opts.names ?? []) san.push({ type: isIP(n) ? 'ip' : 'dns', value: n });
    const pub = web(await publicKey.toCryptoKey(EC, true, ['verify']));
    const serial = serialNumber();
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: serial,
      subject: opts.id ? 'O=tide' : `O=tide, CN=${opts.names?.[0] ?? 'tide'}`,
      issuer: signer.cert.subject,
      notBefore,
      notAfter,
      signingAlgorithm: SIGN,
      publicKey: pub,
      signingKey: signer.crypto,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyAgreement, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
        // SPIFFE X509-SVID: the SAN is critical when the subject is empty; ours has O=tide.
        new x509.SubjectAlternativeNameExtension(san, false),
        await x509.SubjectKeyIdentifierExtension.create(pub),
        await x509.AuthorityKeyIdentifierExtension.create(signer.cert.publicKey),
      ],
    });
    return {
      cert: [cert.toString('pem'), ...signer.chainPems.slice(0, -1)].join('\n'),
      key: privateKey.export({ type: 'pkcs8', format: 'pem' }) as string,
      ca: this.bundle(),
      id: opts.id,
      serial,
      notBefore,
      notAfter,
    };
  }

  /** PEM of every trusted root. */
  bundle(): string {
    this.#prune();
    return [rootOf(this.#state), ...this.#state.previous.map((p) => p.cert)].map((p) => p.trim()).join('\n');
  }

  roots(): RootInfo[] {
    this.#prune();
    const info = (pem: string, current: boolean, trustedUntil?: number): RootInfo => {
      const c = new NodeX509(pem);
      return {
        subject: c.subject.replace(/\n/g, ', '),
        serial: c.serialNumber,
        fingerprint256: c.fingerprint256,
        notAfter: new Date(c.validTo).toISOString(),
        current,
        ...(trustedUntil ? { trustedUntil: new Date(trustedUntil).toISOString() } : {}),
      };
    };
    return [info(rootOf(this.#state), true), ...this.#state.previous.map((p) => info(p.cert, false, p.trustedUntil))];
  }

  get external(): boolean {
    return this.#state.external;
  }

  /**
   * Called, synchronously, when a roll-over changes the signer and the trust bundle, before any
   * certificate is issued by the new root: holders trust `bundle()` at once, then re-issue.
   */
  onChange(cb: () => void): () => void {
    this.#listeners.add(cb);
    return () => this.#listeners.delete(cb);
  }

  /**
   * Root roll-over: a new root signs from now on; the old one stays trusted for `overlapMs`
   * (default: the certificate lifetime, so every certificate it signed expires first).
   */
  async rotate(overlapMs = this.certTtlMs): Promise<RootInfo[]> {
    if (this.#state.external)
      throw new TideError('ERR_INVALID_ARGUMENT', 'this CA was brought with --ca-cert/--ca-key; roll it over by starting with the new files');
    const next = await newRoot(this.trustDomain);
    const state: State = {
      ...this.#state,
      ...next,
      previous: [...this.#state.previous, { cert: rootOf(this.#state), trustedUntil: this.#now() + overlapMs + SKEW_MS }],
    };
    const signer = await signerOf(state);
    // From here to the listeners, nothing waits: no certificate can be issued by the new root
    // before every holder (listening here) trusts it.
    this.#state = state;
    this.#signer = signer;
    for (const l of this.#listeners) l();
    await this.#save();
    return this.roots();
  }

  #prune(): void {
    const now = this.#now();
    const kept = this.#state.previous.filter((p) => p.trustedUntil > now);
    if (kept.length !== this.#state.previous.length) this.#state = { ...this.#state, previous: kept };
  }

  async #save(): Promise<void> {
    const file = join(this.#dir, 'state.json');
    await writeFile(`${file}.tmp`, `${JSON.stringify(this.#state, null, 2)}\n`, { mode: 0o600 });
    await chmod(`${file}.tmp`, 0o600);
    await rename(`${file}.tmp`, file);
    await writeFile(join(this.#dir, 'bundle.pem'), `${this.bundle()}\n`, { mode: 0o644 });
  }
}

/** node:crypto's CryptoKey is the Web Crypto one; only the two type declarations differ. */
function web(key: import('node:crypto').webcrypto.CryptoKey): CryptoKey {
  return key as unknown as CryptoKey;
}

function serialNumber(): string {
  const b = randomBytes(16);
  b[0] = (b[0] as number) & 0x7f; // positive
  return b.toString('hex');
}

async function newRoot(trustDomain: string): Promise<{ chain: string; key: string }> {
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const keys = { publicKey: web(await publicKey.toCryptoKey(EC, true, ['verify'])), privateKey: web(await privateKey.toCryptoKey(EC, true, ['sign'])) };
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serialNumber(),
    name: `O=tide, CN=Tide root CA ${trustDomain} ${new Date(now).toISOString().slice(0, 19)}`,
    notBefore: new Date(now - SKEW_MS),
    notAfter: new Date(now + ROOT_YEARS * 365 * 24 * 3600_000),
    signingAlgorithm: SIGN,
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(true, 1, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { chain: cert.toString('pem'), key: privateKey.export({ type: 'pkcs8', format: 'pem' }) as string };
}

async function signerOf(state: State): Promise<Signer> {
  const chainPems = splitPem(state.chain);
  const key = createPrivateKey(state.key);
  return { key, crypto: web(await key.toCryptoKey(EC, false, ['sign'])), cert: new x509.X509Certificate(chainPems[0] as string), chainPems };
}

function rootOf(state: State): string {
  const pems = splitPem(state.chain);
  return pems[pems.length - 1] as string;
}

export function splitPem(pem: string): string[] {
  return pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
}

/** Checks the user's CA files: a CA certificate whose key matches, and a chain that ends in a root. */
async function bringOwn(certFile: string, keyFile: string): Promise<{ chain: string; key: string }> {
  const read = async (f: string, what: string) => {
    try {
      return await readFile(f, 'utf8');
    } catch (err) {
      throw new TideError('ERR_INVALID_ARGUMENT', `${what} ${f}: ${errorMessage(err)}`);
    }
  };
  const chainText = await read(certFile, '--ca-cert');
  const keyText = await read(keyFile, '--ca-key');
  const pems = splitPem(chainText);
  if (pems.length === 0) throw new TideError('ERR_INVALID_ARGUMENT', `--ca-cert ${certFile}: no PEM certificate in the file`);
  const certs = pems.map((p, i) => {
    try {
      return new NodeX509(p);
    } catch (err) {
      throw new TideError('ERR_INVALID_ARGUMENT', `--ca-cert ${certFile}: certificate ${i + 1} does not parse: ${errorMessage(err)}`);
    }
  });
  const first = certs[0] as NodeX509;
  if (!first.ca) throw new TideError('ERR_INVALID_ARGUMENT', `--ca-cert ${certFile}: the first certificate is not a CA (basicConstraints CA:FALSE)`);
  let key: KeyObject;
  try {
    key = createPrivateKey(keyText);
  } catch (err) {
    throw new TideError('ERR_INVALID_ARGUMENT', `--ca-key ${keyFile}: not a PEM private key: ${errorMessage(err)}`);
  }
  if (key.asymmetricKeyType !== 'ec' || key.asymmetricKeyDetails?.namedCurve !== 'prime256v1')
    throw new TideError(
      'ERR_INVALID_ARGUMENT',
      `--ca-key ${keyFile}: the key must be ECDSA P-256 (got ${key.asymmetricKeyType} ${key.asymmetricKeyDetails?.namedCurve ?? ''})`,
    );
  if (!first.checkPrivateKey(key)) throw new TideError('ERR_INVALID_ARGUMENT', `--ca-key ${keyFile} is not the key of the first certificate in ${certFile}`);
  for (let i = 0; i + 1 < certs.length; i++) {
    if (!(certs[i] as NodeX509).checkIssued(certs[i + 1] as NodeX509))
      throw new TideError(
        'ERR_INVALID_ARGUMENT',
        `--ca-cert ${certFile}: certificate ${i + 1} was not issued by certificate ${i + 2}; list the chain in order`,
      );
  }
  const last = certs[certs.length - 1] as NodeX509;
  if (!last.checkIssued(last))
    throw new TideError('ERR_INVALID_ARGUMENT', `--ca-cert ${certFile}: the chain must end with its root (a self-signed certificate)`, {
      hint: 'append the intermediates and the root after the signing certificate',
    });
  return { chain: pems.join('\n'), key: key.export({ type: 'pkcs8', format: 'pem' }) as string };
}
