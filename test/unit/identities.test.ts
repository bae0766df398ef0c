import { describe, expect, it } from 'vitest';
import { CertificateAuthority } from '../../control/ca/ca.ts';
import { createLogger } from '../../lib/log.ts';
import { Identities } from '../../proxy/tls/identities.ts';
import { sleep, tempDir } from '../helpers/tide.ts';

const log = createLogger({ level: 'silent' });

describe('workload certificates', () => {
  it('renews each certificate at half of its life, not sooner (notBefore is set back for clock skew)', async () => {
    const ca = await CertificateAuthority.open({ dir: tempDir('tide-ids-'), trustDomain: 'tide.local', certTtlMs: 2000 });
    let issued = 0;
    const ids = new Identities({
      issue: async (id, names) => {
        issued++;
        return { ...(await ca.issue({ id, names })), id };
      },
      log,
    });
    try {
      const first = await ids.ensure('spiffe://tide.local/ns/default/fn/a');
      expect(first.notBefore.getTime()).toBeLessThan(Date.now() - 50_000);
      await sleep(700);
      expect(issued).toBe(1);
      expect(ids.get('spiffe://tide.local/ns/default/fn/a')?.serial).toBe(first.serial);
      await sleep(700); // past 1 s: renewed once
      expect(issued).toBe(2);
      expect(ids.rotations).toBe(1);
      expect(ids.get('spiffe://tide.local/ns/default/fn/a')?.serial).not.toBe(first.serial);
    } finally {
      ids.close();
    }
  });

  it('after a roll-over every context trusts the new bundle at once, then every certificate is issued again', async () => {
    const ca = await CertificateAuthority.open({ dir: tempDir('tide-ids-'), trustDomain: 'tide.local' });
    const ids = new Identities({ issue: async (id, names) => ({ ...(await ca.issue({ id, names })), id }), log });
    try {
      const before = await ids.ensure('spiffe://tide.local/ns/default/fn/a');
      await ca.rotate();
      const renewing = ids.renewAll(ca.bundle());
      // Synchronously: same certificate, new trust.
      const now = ids.get('spiffe://tide.local/ns/default/fn/a');
      expect(now?.serial).toBe(before.serial);
      expect(now?.ca).toBe(ca.bundle());
      await renewing;
      expect(ids.get('spiffe://tide.local/ns/default/fn/a')?.serial).not.toBe(before.serial);
    } finally {
      ids.close();
    }
  });
});
