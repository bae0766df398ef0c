/**
 * The errors every Store backend raises the same way (same code, status and message shape), and
 * the argument checks they share, so callers and the contract suite cannot tell backends apart.
 */
import { TideError } from '../../lib/errors.ts';

/** A failed compare-and-swap: `actual` is the key's mod revision, 0 when it does not exist. */
export function conflict(key: string, expected: number, actual: number): TideError {
  return new TideError(
    'ERR_STORE_CONFLICT',
    `conflict on ${key}: expected it at revision ${expected}, found ${actual === 0 ? 'no key' : `revision ${actual}`}`,
    { status: 409, details: { key, expected, actual } },
  );
}

export function leaseNotFound(lease: string): TideError {
  return new TideError('ERR_STORE_LEASE_NOT_FOUND', `lease ${lease} not found: it expired or was revoked`, {
    status: 404,
    details: { lease },
  });
}

export function compacted(afterRevision: number, oldest: number): TideError {
  return new TideError('ERR_STORE_COMPACTED', `watch from revision ${afterRevision} is no longer possible: history before ${oldest} was compacted`, {
    status: 410,
    details: { afterRevision, oldest },
  });
}

export function checkKey(key: unknown): void {
  if (typeof key !== 'string' || key.length === 0) {
    throw new TideError('ERR_INVALID_ARGUMENT', 'store keys must be non-empty strings');
  }
}

export function checkTtl(ttlSeconds: unknown): void {
  if (typeof ttlSeconds !== 'number' || !Number.isInteger(ttlSeconds) || ttlSeconds < 1) {
    throw new TideError('ERR_INVALID_ARGUMENT', `ttlSeconds must be an integer ≥ 1 (got ${String(ttlSeconds)})`);
  }
}

const MAX_LEASE = 2n ** 63n - 1n;

/** Lease ids are decimal strings of a positive 64-bit integer (etcd's; 0 means "no lease" there). */
export function checkLeaseId(lease: unknown): asserts lease is string {
  if (typeof lease !== 'string' || !/^[1-9][0-9]{0,18}$/.test(lease) || BigInt(lease) > MAX_LEASE) {
    throw new TideError('ERR_INVALID_ARGUMENT', `a lease id is a positive decimal integer below 2^63 (got ${JSON.stringify(lease)})`);
  }
}
