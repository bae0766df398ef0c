import { X509Certificate } from 'node:crypto';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CertificateAuthority, splitPem } from '../../control/ca/ca.ts';
import { functionId, idOfCertificate, parseId, parseMeshHost } from '../../lib/spiffe.ts';
import { tempDir } from '../helpers/tide.ts';

describe('certificate authority', () => {
  it('makes a P-256 root once, keeps its key 0600, and issues SPIFFE certificates that chain to it', async () => {
    const dir = tempDir('tide-ca-');
    const ca = await CertificateAuthority.open({ dir, trustDomain: 'tide.local', certTtlMs: 3600_000 });
    expect(statSync(join(dir, 'state.json')).mode & 0o777).toBe(0o600);
    const id = functionId('tide.local', 'default', 'orders');
    const c = await ca.issue({ id, names: ['orders.default.svc.tide'] });
    const leaf = new X509Certificate(c.cert);
    const root = new X509Certificate(readFileSync(join(dir, 'bundle.pem')));
    expect(leaf.verify(root.publicKey)).toBe(true);
    expect(leaf.ca).toBe(false);
    expect(leaf.publicKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
    expect(idOfCertificate(leaf)).toBe(id);
    expect(leaf.subjectAltName).toContain('DNS:orders.default.svc.tide');
    expect(leaf.keyUsage ?? []).toEqual(expect.arrayContaining(['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2']));
    const life = new Date(leaf.validTo).getTime() - Date.now();
    expect(life).toBeGreaterThan(3500_000);
    expect(life).toBeLessThanOrEqual(3600_000);
    // Opening again keeps the same root.
    const again = await CertificateAuthority.open({ dir, trustDomain: 'tide.local' });
    expect(again.bundle()).toBe(ca.bundle());
    await expect(CertificateAuthority.open({ dir, trustDomain: 'other.test' })).rejects.toThrow(/trust domain "tide.local", not "other.test"/);
  });

  it('rolls the root over: the new one signs, the old one stays trusted for the overlap, then is dropped', async () => {
    let now = Date.now();
    const dir = tempDir('tide-ca-');
    const ca = await CertificateAuthority.open({ dir, trustDomain: 'tide.local', now: () => now });
    const oldRoot = ca.bundle();
    let changed = 0;
    ca.onChange(() => changed++);
    const roots = await ca.rotate(10_000);
    expect(changed).toBe(1);
    expect(roots.map((r) => r.current)).toEqual([true, false]);
    expect(splitPem(ca.bundle())).toHaveLength(2);
    expect(ca.bundle()).toContain(oldRoot.trim());
    const leaf = new X509Certificate((await ca.issue({ id: functionId('tide.local', 'default', 'a') })).cert);
    const [current, previous] = splitPem(ca.bundle()).map((p) => new X509Certificate(p));
    expect(leaf.verify((current as X509Certificate).publicKey)).toBe(true);
    expect(leaf.verify((previous as X509Certificate).publicKey)).toBe(false);
    expect(splitPem(readFileSync(join(dir, 'bundle.pem'), 'utf8'))).toHaveLength(2);
    now += 10_000 + 61_000;
    expect(splitPem(ca.bundle())).toHaveLength(1);
  });

  it('takes a CA of your own after checking it, and refuses what cannot work', async () => {
    const dir = tempDir('tide-ca-');
    const mine = await CertificateAuthority.open({ dir: join(dir, 'mine'), trustDomain: 'tide.local' });
    const state = JSON.parse(readFileSync(join(dir, 'mine', 'state.json'), 'utf8')) as { chain: string; key: string };
    writeFileSync(join(dir, 'ca.pem'), state.chain);
    writeFileSync(join(dir, 'ca.key'), state.key);
    const brought = await CertificateAuthority.open({
      dir: join(dir, 'tide'),
      trustDomain: 'tide.local',
      certFile: join(dir, 'ca.pem'),
      keyFile: join(dir, 'ca.key'),
    });
    expect(brought.external).toBe(true);
    expect(brought.bundle()).toBe(mine.bundle());
    await expect(brought.rotate()).rejects.toThrow(/--ca-cert/);
    // A leaf is no CA.
    const leaf = await mine.issue({ id: functionId('tide.local', 'default', 'a') });
    writeFileSync(join(dir, 'leaf.pem'), leaf.cert);
    writeFileSync(join(dir, 'leaf.key'), leaf.key);
    await expect(
      CertificateAuthority.open({ dir: join(dir, 'x'), trustDomain: 'tide.local', certFile: join(dir, 'leaf.pem'), keyFile: join(dir, 'leaf.key') }),
    ).rejects.toThrow(/not a CA/);
    // The wrong key.
    await expect(
      CertificateAuthority.open({ dir: join(dir, 'y'), trustDomain: 'tide.local', certFile: join(dir, 'ca.pem'), keyFile: join(dir, 'leaf.key') }),
    ).rejects.toThrow(/is not the key of the first certificate/);
    await expect(CertificateAuthority.open({ dir: join(dir, 'z'), trustDomain: 'tide.local', certFile: join(dir, 'ca.pem') })).rejects.toThrow(/both/);
  });
});

describe('SPIFFE IDs and mesh names', () => {
  it('parses what Tide issues and nothing else', () => {
    expect(parseId('spiffe://tide.local/ns/default/fn/orders')).toEqual({ trustDomain: 'tide.local', namespace: 'default', name: 'orders', kind: 'fn' });
    expect(parseId('spiffe://tide.local/ns/tide-system/gateway')?.kind).toBe('gateway');
    expect(parseId('spiffe://tide.local/ns/default/fn/orders/extra')).toBeUndefined();
    expect(parseId('https://tide.local/ns/default/fn/orders')).toBeUndefined();
    expect(parseMeshHost('Orders.Default.svc.tide:80')).toEqual({ name: 'orders', namespace: 'default' });
    expect(parseMeshHost('orders.svc.tide')).toBeUndefined();
    expect(parseMeshHost('orders.localhost')).toBeUndefined();
  });
});
