/**
 * Workload identities: SPIFFE IDs of the form `spiffe://<trust-domain>/ns/<namespace>/fn/<name>`
 * for functions and `spiffe://<trust-domain>/ns/tide-system/gateway` for gateways, carried as
 * the one URI SAN of a workload certificate. Shared by control (the CA issues them) and the
 * proxy (it verifies them on every mTLS handshake); imports no plane.
 */
import { X509Certificate } from 'node:crypto';
import { TideError } from './errors.ts';

/** The namespace of Tide's own workloads (gateways). */
export const SYSTEM_NAMESPACE = 'tide-system';
/** Mesh host names: NAME.NAMESPACE.svc.<MESH_DOMAIN>. */
export const MESH_DOMAIN = 'svc.tide';

const TRUST_DOMAIN = /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/;

export function validateTrustDomain(td: string): string {
  if (!TRUST_DOMAIN.test(td) || td.length > 255)
    throw new TideError('ERR_INVALID_ARGUMENT', `trustDomain must be lowercase letters, digits, '-' and '.' (got "${td}")`);
  return td;
}

export function functionId(trustDomain: string, namespace: string, name: string): string {
  return `spiffe://${trustDomain}/ns/${namespace}/fn/${name}`;
}

export function gatewayId(trustDomain: string): string {
  return `spiffe://${trustDomain}/ns/${SYSTEM_NAMESPACE}/gateway`;
}

export interface ParsedId {
  trustDomain: string;
  namespace: string;
  /** The function's name, or "gateway" for a gateway. */
  name: string;
  kind: 'fn' | 'gateway';
}

const ID = /^spiffe:\/\/([a-z0-9.-]+)\/ns\/([a-z0-9-]+)\/(?:fn\/([a-z0-9-]+)|(gateway))$/;

/** Parses a Tide SPIFFE ID; undefined when it is not one. */
export function parseId(id: string): ParsedId | undefined {
  const m = ID.exec(id);
  if (!m) return undefined;
  return m[4]
    ? { trustDomain: m[1] as string, namespace: m[2] as string, name: 'gateway', kind: 'gateway' }
    : { trustDomain: m[1] as string, namespace: m[2] as string, name: m[3] as string, kind: 'fn' };
}

/**
 * The SPIFFE ID in a certificate (DER or a node:crypto X509Certificate): its one `spiffe://` URI
 * SAN. Undefined when it has none, or more than one (SPIFFE allows exactly one).
 */
export function idOfCertificate(cert: Buffer | X509Certificate | undefined): string | undefined {
  if (!cert) return undefined;
  const x = Buffer.isBuffer(cert) ? new X509Certificate(cert) : cert;
  const san = x.subjectAltName;
  if (!san) return undefined;
  const ids: string[] = [];
  for (const part of splitSan(san)) if (part.startsWith('URI:spiffe://')) ids.push(part.slice(4));
  return ids.length === 1 ? ids[0] : undefined;
}

/** node's subjectAltName is "TYPE:value, TYPE:value" with values JSON-quoted when they hold ", ". */
function splitSan(san: string): string[] {
  const out: string[] = [];
  let i = 0;
  while (i < san.length) {
    const colon = san.indexOf(':', i);
    if (colon === -1) break;
    const type = san.slice(i, colon);
    let value: string;
    if (san[colon + 1] === '"') {
      let j = colon + 2;
      while (j < san.length && san[j] !== '"') j += san[j] === '\\' ? 2 : 1;
      value = JSON.parse(san.slice(colon + 1, j + 1)) as string;
      i = j + 1;
    } else {
      const end = san.indexOf(', ', colon);
      value = san.slice(colon + 1, end === -1 ? san.length : end);
      i = end === -1 ? san.length : end;
    }
    out.push(`${type}:${value}`);
    while (san[i] === ',' || san[i] === ' ') i++;
  }
  return out;
}

/** The mesh host of a function: NAME.NAMESPACE.svc.tide. */
export function meshHost(namespace: string, name: string): string {
  return `${name}.${namespace}.${MESH_DOMAIN}`;
}

/** NAME and NAMESPACE of a mesh host (port and case ignored); undefined for other hosts. */
export function parseMeshHost(host: string): { name: string; namespace: string } | undefined {
  const h = host.toLowerCase().replace(/:\d+$/, '').replace(/\.$/, '');
  const suffix = `.${MESH_DOMAIN}`;
  if (!h.endsWith(suffix)) return undefined;
  const parts = h.slice(0, -suffix.length).split('.');
  if (parts.length !== 2 || !parts[0] || !parts[1]) return undefined;
  return { name: parts[0], namespace: parts[1] };
}
