/**
 * The workload certificates a proxy holds: one per identity it speaks for (the gateway, and
 * each function whose instances run on this node), issued by control's CA through `issue` and
 * rotated at half life. New handshakes use the new certificate at once; connections already
 * open keep theirs, so a rotation drops nothing. After a CA roll-over every certificate is
 * issued again and every context trusts the new bundle (which still holds the old root).
 *
 * It sits beside the listeners and upstream pools: they ask it for a SecureContext per
 * handshake. It never issues on the request path unless an identity has no certificate yet.
 */
import { createSecureContext, type PeerCertificate, type SecureContext } from 'node:tls';
import { errorMessage } from '../../lib/errors.ts';
import type { Logger } from '../../lib/log.ts';
import { idOfCertificate } from '../../lib/spiffe.ts';

const MAX_TIMER_MS = 2 ** 31 - 1;

export interface Credential {
  id: string;
  cert: string;
  key: string;
  /** Trusted roots (PEM). */
  ca: string;
  notBefore: Date;
  notAfter: Date;
  serial: string;
  /** TLS 1.3 context with the key pair and the trusted roots: for servers (SNI) and clients. */
  context: SecureContext;
}

export type Issuer = (id: string, names: string[]) => Promise<Omit<Credential, 'context'>>;

export interface IdentitiesOptions {
  issue: Issuer;
  log: Logger;
  /** Re-issue at this fraction of the lifetime. Default 0.5. */
  renewAt?: number;
  /** Retry a failed issue after this, ms. Default 1000. */
  retryMs?: number;
}

interface Held {
  names: string[];
  current: Credential | undefined;
  pending: Promise<Credential> | undefined;
  timer: NodeJS.Timeout | undefined;
}

export class Identities {
  readonly #opts: Required<IdentitiesOptions>;
  readonly #held = new Map<string, Held>();
  readonly #renewed = new Map<string, Set<(c: Credential) => void>>();
  #closed = false;
  /** Rotations done, for tests and metrics. */
  rotations = 0;

  constructor(opts: IdentitiesOptions) {
    this.#opts = { renewAt: 0.5, retryMs: 1000, ...opts };
  }

  /** The current credential of `id`, issuing the first one if needed. */
  ensure(id: string, names: string[] = []): Promise<Credential> {
    let h = this.#held.get(id);
    if (!h) {
      h = { names, current: undefined, pending: undefined, timer: undefined };
      this.#held.set(id, h);
    }
    if (h.current && h.current.notAfter.getTime() > Date.now()) return Promise.resolve(h.current);
    return this.#renew(id, h);
  }

  /** The current credential, if there is one (the hot path: no waiting). */
  get(id: string): Credential | undefined {
    return this.#held.get(id)?.current;
  }

  /** Calls `cb` with each new credential of `id` after the first (a server that is not a listener here swaps its certificate). */
  onRenew(id: string, cb: (c: Credential) => void): () => void {
    let set = this.#renewed.get(id);
    if (!set) {
      set = new Set();
      this.#renewed.set(id, set);
    }
    set.add(cb);
    return () => set.delete(cb);
  }

  /** Stops holding `id` (its function left this node). */
  release(id: string): void {
    const h = this.#held.get(id);
    if (!h) return;
    clearTimeout(h.timer);
    this.#held.delete(id);
  }

  ids(): string[] {
    return [...this.#held.keys()];
  }

  /**
   * After a CA roll-over: first every context trusts `bundle` (the new root and the old) at
   * once, with the certificates it has, so no handshake between a renewed and a not yet renewed
   * identity can fail; then every certificate is issued again under the new root.
   */
  async renewAll(bundle?: string): Promise<void> {
    if (bundle !== undefined) {
      for (const h of this.#held.values()) {
        const c = h.current;
        if (c) h.current = { ...c, ca: bundle, context: createSecureContext({ cert: c.cert, key: c.key, ca: bundle, minVersion: 'TLSv1.3' }) };
      }
    }
    // An issue already in flight may be signed by the old root: issue again after it.
    await Promise.all(
      [...this.#held].map(([id, h]) => {
        const inFlight = h.pending;
        return (inFlight ? inFlight.catch(() => undefined).then(() => this.#renew(id, h)) : this.#renew(id, h)).catch(() => undefined);
      }),
    );
  }

  #renew(id: string, h: Held): Promise<Credential> {
    h.pending ??= this.#opts
      .issue(id, h.names)
      .then((c) => {
        const cred: Credential = { ...c, context: createSecureContext({ cert: c.cert, key: c.key, ca: c.ca, minVersion: 'TLSv1.3' }) };
        if (this.#held.get(id) !== h || this.#closed) return cred;
        const renewal = h.current !== undefined;
        if (renewal) this.rotations++;
        h.current = cred;
        if (renewal) for (const cb of this.#renewed.get(id) ?? []) cb(cred);
        // At half of the life left now (notBefore is set a little in the past for clock skew).
        this.#schedule(id, h, (c.notAfter.getTime() - Date.now()) * this.#opts.renewAt);
        this.#opts.log.debug({ id, serial: c.serial, notAfter: c.notAfter.toISOString() }, 'workload certificate issued');
        return cred;
      })
      .catch((err: unknown) => {
        this.#opts.log.warn({ id, err: errorMessage(err) }, 'workload certificate not issued; retrying');
        if (this.#held.get(id) === h) this.#schedule(id, h, this.#opts.retryMs);
        throw err;
      })
      .finally(() => {
        h.pending = undefined;
      });
    return h.pending;
  }

  #schedule(id: string, h: Held, ms: number): void {
    clearTimeout(h.timer);
    if (this.#closed) return;
    // setTimeout holds at most 2^31-1 ms (~24.8 days); a longer life is renewed that early.
    h.timer = setTimeout(() => void this.#renew(id, h).catch(() => {}), Math.min(MAX_TIMER_MS, Math.max(10, ms)));
    h.timer.unref();
  }

  close(): void {
    this.#closed = true;
    for (const h of this.#held.values()) clearTimeout(h.timer);
  }
}

/**
 * TLS options of a mesh client connection: TLS 1.3 with `source`'s certificate, SNI `servername`,
 * and the server must be `destId` itself by its SPIFFE ID (OpenSSL checks the chain).
 */
export function meshClientTls(identities: Identities, source: string, servername: string, destId: string) {
  return {
    secureContext: identities.get(source)?.context,
    servername,
    minVersion: 'TLSv1.3' as const,
    checkServerIdentity: (_host: string, cert: PeerCertificate) => {
      const got = idOfCertificate(cert.raw);
      return got === destId
        ? undefined
        : Object.assign(new Error(`the server's identity is ${got ?? 'missing'}, not ${destId}`), { code: 'ERR_MTLS_IDENTITY' });
    },
  };
}
