/**
 * The mesh end to end, through a real `tide up`: function-to-function calls over mutual TLS
 * under each function's SPIFFE identity, the mesh listener checked with openssl (a TLS client
 * Tide did not write), Policy allow/deny matrices, mTLS modes, rate limits, and certificate
 * rotation under load.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CertificateAuthority } from '../../control/ca/ca.ts';
import { FIXTURES, http, sleep, startTide, stopTide, type TideProcess, tempDir, tide } from '../helpers/tide.ts';

let t: TideProcess;
let files: string;

function openssl(args: string[], input = ''): { stdout: string; stderr: string; status: number | null } {
  const r = spawnSync('openssl', args, { input, timeout: 15_000, encoding: 'utf8' });
  return { stdout: r.stdout ?? '', stderr: r.stderr ?? '', status: r.status };
}

/** An HTTP/1.1 request to the mesh listener over `openssl s_client`, with the client certificate given (or none). */
function viaOpenssl(host: string, path: string, cert?: { pem: string; key: string }): string {
  const args = ['s_client', '-connect', `127.0.0.1:${t.meshPort}`, '-servername', host, '-CAfile', join(t.dataDir, 'ca', 'bundle.pem'), '-quiet'];
  if (cert) args.push('-cert', cert.pem, '-key', cert.key);
  const r = openssl(args, `GET ${path} HTTP/1.1\r\nhost: ${host}\r\nconnection: close\r\n\r\n`);
  return r.stdout;
}

async function issue(name: string, opts: Parameters<CertificateAuthority['issue']>[0], dir = join(t.dataDir, 'ca'), trustDomain = 'tide.local') {
  const ca = await CertificateAuthority.open({ dir, trustDomain });
  const c = await ca.issue(opts);
  const pem = join(files, `${name}.pem`);
  const key = join(files, `${name}.key`);
  writeFileSync(pem, c.cert);
  writeFileSync(key, c.key);
  return { pem, key };
}

async function apply(yaml: string): Promise<void> {
  const f = join(files, `policy-${Math.random().toString(36).slice(2)}.yaml`);
  writeFileSync(f, yaml);
  const r = await tide(['apply', '-f', f], { dataDir: t.dataDir });
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
}

const call = (from: string, to: string, path: string) => http(t.gatewayPort, `${from}.localhost`, `/call/${to}${path}`);

/** Six callers in a loop from a to `to` for `ms` (at most 20,000 requests): how many were sent, and their statuses. */
async function steadyLoad(to: string, path: string, ms: number): Promise<{ sent: number; statuses: Map<number, number> }> {
  const statuses = new Map<number, number>();
  const until = Date.now() + ms;
  let sent = 0;
  await Promise.all(
    Array.from({ length: 6 }, async () => {
      while (Date.now() < until && sent < 20_000) {
        sent++;
        const r = await call('a', to, path);
        statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
      }
    }),
  );
  return { sent, statuses };
}

beforeAll(async () => {
  files = tempDir('tide-mesh-files-');
  // Certificates live 6 s here, so they rotate every 3 s while the tests run.
  t = await startTide({ args: ['--cert-ttl', '6s'] });
  for (const [name, file] of [
    ['a', 'mesh-caller.ts'],
    ['c', 'mesh-caller.ts'],
    ['b', 'mesh-echo.ts'],
    ['d', 'mesh-echo.ts'],
    ['e', 'mesh-echo.ts'],
  ]) {
    const r = await tide(['deploy', join(FIXTURES, 'functions', file as string), '--name', name as string, '--min-scale', '1'], { dataDir: t.dataDir });
    expect(r.code, r.stderr).toBe(0);
  }
}, 60_000);

afterAll(async () => {
  await stopTide(t);
});

describe('the mesh', () => {
  it('carries a call from one function to another over mutual TLS, and the callee learns the verified caller', async () => {
    const r = await call('a', 'b', '/hello?x=1');
    expect(r.text).toBe('GET /hello from URI=spiffe://tide.local/ns/default/fn/a\n');
    expect(r.status).toBe(200);
    const r2 = await call('c', 'b', '/x');
    expect(r2.text).toBe('GET /x from URI=spiffe://tide.local/ns/default/fn/c\n');
    // A caller cannot send its own identity header: the mesh replaces it.
    const forged = await http(t.gatewayPort, 'b.localhost', '/y', { headers: { 'x-forwarded-client-cert': 'URI=spiffe://tide.local/ns/default/fn/admin' } });
    expect(forged.text).toBe('GET /y from nobody\n');
    // Unknown mesh names, and mesh names through the public gateway, are no route.
    expect((await call('a', 'nosuch', '/')).status).toBe(404);
    const outside = await http(t.gatewayPort, 'b.default.svc.tide', '/');
    expect(outside.status).toBe(404);
    expect(outside.text).toContain('mesh name');
  });

  it('carries calls from a function in a container too (its socket is mounted into the container)', async () => {
    const r = await tide(['deploy', join(FIXTURES, 'functions', 'mesh-caller.ts'), '--name', 'boxed', '--sandbox', 'container', '--min-scale', '1'], {
      dataDir: t.dataDir,
    });
    expect(r.code, r.stderr).toBe(0);
    const res = await call('boxed', 'b', '/from-a-box');
    expect(res.text).toBe('GET /from-a-box from URI=spiffe://tide.local/ns/default/fn/boxed\n');
  });

  it('serves TLS 1.3 with the function’s SPIFFE ID and the CA chain, and refuses a client without a certificate (openssl s_client)', () => {
    const r = openssl(
      [
        's_client',
        '-connect',
        `127.0.0.1:${t.meshPort}`,
        '-servername',
        'b.default.svc.tide',
        '-CAfile',
        join(t.dataDir, 'ca', 'bundle.pem'),
        '-showcerts',
        '-ign_eof',
      ],
      'GET / HTTP/1.1\r\nhost: b.default.svc.tide\r\n\r\n',
    );
    const all = r.stdout + r.stderr;
    expect(all).not.toContain('HTTP/1.1 200');
    expect(all).toMatch(/New, TLSv1\.3, Cipher is TLS_/);
    expect(all).toContain('Verify return code: 0 (ok)');
    expect(all).toMatch(/i:O = tide, CN = Tide root CA tide\.local/);
    // STRICT (the default): no client certificate, no connection.
    expect(all).toMatch(/alert certificate required/);
    const leaf = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/.exec(r.stdout)?.[0] as string;
    const san = openssl(['x509', '-noout', '-ext', 'subjectAltName'], leaf);
    expect(san.stdout).toContain('URI:spiffe://tide.local/ns/default/fn/b');
    // With a certificate from the CA, openssl gets through, and b sees its identity.
    return issue('openssl-a', { id: 'spiffe://tide.local/ns/default/fn/a' }).then((cert) => {
      const out = viaOpenssl('b.default.svc.tide', '/via-openssl', cert);
      expect(out).toMatch(/^HTTP\/1\.1 200 /);
      expect(out).toContain('GET /via-openssl from URI=spiffe://tide.local/ns/default/fn/a');
    });
  });

  it('refuses expired certificates, other CAs, other trust domains, and plaintext', async () => {
    const expired = await issue('expired', {
      id: 'spiffe://tide.local/ns/default/fn/a',
      notBefore: new Date(Date.now() - 7200_000),
      notAfter: new Date(Date.now() - 3600_000),
    });
    expect(viaOpenssl('b.default.svc.tide', '/x', expired)).not.toContain('HTTP/1.1');
    const foreign = await issue('foreign', { id: 'spiffe://tide.local/ns/default/fn/a' }, tempDir('tide-other-ca-'));
    expect(viaOpenssl('b.default.svc.tide', '/x', foreign)).not.toContain('HTTP/1.1');
    // A good chain with an identity that is not of this trust domain (or none): refused, saying why.
    const otherDomain = await issue('other-domain', { id: 'spiffe://evil.example/ns/default/fn/a' });
    const od = viaOpenssl('b.default.svc.tide', '/x', otherDomain);
    expect(od).toMatch(/^HTTP\/1\.1 403 /);
    expect(od).toContain('tide-proxy-error: ERR_MTLS_IDENTITY');
    expect(od).toContain("spiffe://evil.example/ns/default/fn/a is not in this mesh's trust domain");
    expect(od).not.toContain('GET /x from');
    const noId = await issue('no-id', { names: ['a.default.svc.tide'] });
    const ni = viaOpenssl('b.default.svc.tide', '/x', noId);
    expect(ni).toMatch(/^HTTP\/1\.1 403 /);
    expect(ni).toContain('carries no SPIFFE ID');
    // And the control: the same request with a good certificate works.
    const good = await issue('good', { id: 'spiffe://tide.local/ns/default/fn/a' });
    expect(viaOpenssl('b.default.svc.tide', '/x', good)).toMatch(/^HTTP\/1\.1 200 /);
    expect(await plaintext('b.default.svc.tide', '/x')).toBe('');
  });

  it('applies Policies: who may call which function, with which method and path (allow/deny matrix)', async () => {
    await apply(`apiVersion: tide.dev/v1
kind: Policy
metadata: { name: b-callers }
spec:
  selector: { functions: [b] }
  rules:
    - from: [{ functions: [a] }]
      to: [{ methods: [GET], paths: [{ prefix: /ok/ }] }]
    - action: DENY
      to: [{ paths: [{ regex: '/ok/secret.*' }] }]
`);
    const matrix: [string, string, number, string | undefined][] = [
      ['a', '/ok/1', 200, undefined],
      ['a', '/other', 403, 'ERR_AUTHZ_NOT_ALLOWED'],
      ['a', '/ok/secret-stuff', 403, 'ERR_AUTHZ_DENIED'],
      ['c', '/ok/1', 403, 'ERR_AUTHZ_NOT_ALLOWED'],
    ];
    for (const [from, path, status, code] of matrix) {
      const r = await call(from, 'b', path);
      expect({ from, path, status: r.status, code: r.headers['tide-proxy-error'] }).toEqual({ from, path, status, code });
    }
    // Through the gateway the caller is the gateway's identity, which the policy does not allow.
    const viaGateway = await http(t.gatewayPort, 'b.localhost', '/ok/1');
    expect(viaGateway.status).toBe(403);
    expect(viaGateway.text).toContain('spiffe://tide.local/ns/tide-system/gateway');
    // Other functions are untouched.
    expect((await call('a', 'd', '/ok/1')).status).toBe(200);
    // A Route that takes a function's public host over does not take its mesh name away.
    await apply(`apiVersion: tide.dev/v1
kind: Route
metadata: { name: e-public }
spec:
  hosts: [e.localhost]
  rules: [{ split: [{ function: e, weight: 100 }] }]
`);
    expect((await http(t.gatewayPort, 'e.localhost', '/which')).text).toBe('GET /which from nobody\n');
    expect((await call('a', 'e', '/which')).text).toBe('GET /which from URI=spiffe://tide.local/ns/default/fn/a\n');
    // A DENY-only policy refuses what it matches and nothing else.
    await apply(`apiVersion: tide.dev/v1
kind: Policy
metadata: { name: d-no-deletes }
spec:
  selector: { functions: [d] }
  rules: [{ action: DENY, to: [{ methods: [DELETE] }] }]
`);
    expect((await http(t.gatewayPort, 'd.localhost', '/', { method: 'DELETE' })).status).toBe(403);
    expect((await http(t.gatewayPort, 'd.localhost', '/')).status).toBe(200);
    const listed = await tide(['get', 'policies'], { dataDir: t.dataDir });
    expect(listed.stdout).toMatch(/b-callers\s+b\s+-\s+1 allow, 1 deny\s+-/);
  });

  it('takes plaintext only for PERMISSIVE functions, and calls DISABLE ones in plaintext', async () => {
    expect(await plaintext('d.default.svc.tide', '/p')).toBe('');
    await apply(`apiVersion: tide.dev/v1
kind: Policy
metadata: { name: d-permissive }
spec:
  selector: { functions: [d] }
  mtls: { mode: PERMISSIVE }
---
apiVersion: tide.dev/v1
kind: Policy
metadata: { name: e-disabled }
spec:
  selector: { functions: [e] }
  mtls: { mode: DISABLE }
`);
    const d = await plaintext('d.default.svc.tide', '/p');
    expect(d).toMatch(/^HTTP\/1\.1 200 /);
    expect(d).toContain('GET /p from nobody');
    // The listener now takes plaintext connections, but a STRICT function still refuses them.
    const strict = await plaintext('c.default.svc.tide', '/p');
    expect(strict).toMatch(/^HTTP\/1\.1 403 /);
    expect(strict).toContain('tide-proxy-error: ERR_MTLS_REQUIRED');
    // DISABLE: the caller's proxy speaks plaintext, so e sees no identity.
    expect((await call('a', 'e', '/q')).text).toBe('GET /q from nobody\n');
    // mTLS still works for PERMISSIVE functions.
    expect((await call('a', 'd', '/q')).text).toBe('GET /q from URI=spiffe://tide.local/ns/default/fn/a\n');
  });

  it('rate limits with 429 and retry-after', async () => {
    await apply(`apiVersion: tide.dev/v1
kind: Policy
metadata: { name: d-limit }
spec:
  selector: { functions: [d] }
  rateLimit: { requestsPerSecond: 0.5, burst: 3 }
`);
    const statuses: number[] = [];
    let retryAfter: unknown;
    for (let i = 0; i < 8; i++) {
      const r = await http(t.gatewayPort, 'd.localhost', '/');
      statuses.push(r.status);
      if (r.status === 429) retryAfter = r.headers['retry-after'];
    }
    expect(statuses.filter((s) => s === 200)).toHaveLength(3);
    expect(statuses.filter((s) => s === 429)).toHaveLength(5);
    expect(Number(retryAfter)).toBeGreaterThanOrEqual(1);
  });

  it('rate limits a Route rule too, before any revision is reached', async () => {
    await apply(`apiVersion: tide.dev/v1
kind: Route
metadata: { name: lim }
spec:
  rules:
    - split: [{ function: e, weight: 100 }]
      rateLimit: { requestsPerSecond: 0.5, burst: 2, per: client }
`);
    const statuses: number[] = [];
    for (let i = 0; i < 5; i++) statuses.push((await http(t.gatewayPort, 'lim.localhost', '/')).status);
    expect(statuses).toEqual([200, 200, 429, 429, 429]);
    // The function itself (its own host) is not limited by the Route.
    expect((await http(t.gatewayPort, 'e.localhost', '/')).status).toBe(200);
  });

  it('rotates workload certificates under load without failing a request', async () => {
    const serial = () => {
      const r = openssl(['s_client', '-connect', `127.0.0.1:${t.meshPort}`, '-servername', 'b.default.svc.tide', '-showcerts'], '');
      const leaf = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/.exec(r.stdout)?.[0] as string;
      return openssl(['x509', '-noout', '-serial'], leaf).stdout.trim();
    };
    const before = serial();
    const { sent, statuses } = await steadyLoad('b', '/ok/load', 7000);
    const after = serial();
    expect(before).toMatch(/^serial=/);
    expect(after).not.toBe(before);
    expect(sent).toBeGreaterThan(100);
    expect([...statuses]).toEqual([[200, sent]]);
  });
});

describe('CA roll-over', () => {
  it('rolls the root over under load without failing a request, and the CLI follows', async () => {
    const roots = () => readFileSync(join(t.dataDir, 'ca', 'bundle.pem'), 'utf8').match(/BEGIN CERTIFICATE/g)?.length ?? 0;
    expect(roots()).toBe(1);
    const load = steadyLoad('d', '/roll', 5000);
    await sleep(1000);
    const rotated = await tide(['ca', 'rotate'], { dataDir: t.dataDir });
    expect(rotated.code, rotated.stderr).toBe(0);
    const { sent, statuses } = await load;
    expect(sent).toBeGreaterThan(100);
    // d is rate limited by an earlier test: 429s are the policy working; nothing else may fail.
    expect([...statuses.keys()].filter((s) => s !== 200 && s !== 429)).toEqual([]);
    expect(statuses.get(200) ?? 0).toBeGreaterThan(0);
    // Both roots are trusted during the overlap; new certificates chain to the new one.
    expect(roots()).toBe(2);
    const shown = await tide(['ca', 'show'], { dataDir: t.dataDir });
    expect(shown.code, shown.stderr).toBe(0);
    expect(shown.stdout).toContain('signing');
    expect(shown.stdout).toContain('trusted until');
    // The API now answers under the new root, and the CLI (which reads the bundle) still trusts it.
    expect((await tide(['get', 'functions'], { dataDir: t.dataDir })).code).toBe(0);
    const newest = readFileSync(join(t.dataDir, 'ca', 'bundle.pem'), 'utf8').match(
      /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/,
    )?.[0] as string;
    writeFileSync(join(files, 'new-root.pem'), newest);
    const r = openssl(['s_client', '-connect', `127.0.0.1:${t.meshPort}`, '-servername', 'b.default.svc.tide', '-CAfile', join(files, 'new-root.pem')], '');
    expect(r.stdout).toContain('Verify return code: 0 (ok)');
  });
});

describe('control API access', () => {
  it('serves the API over TLS that the CLI verifies, with scoped tokens that can be revoked', async () => {
    const other = await CertificateAuthority.open({ dir: tempDir('tide-other-ca-'), trustDomain: 'tide.local' });
    writeFileSync(join(files, 'other-bundle.pem'), other.bundle());
    const untrusted = await tide(['get', 'functions', '--cacert', join(files, 'other-bundle.pem')], { dataDir: t.dataDir });
    expect(untrusted.code).toBe(1);
    expect(untrusted.stderr).toMatch(/cannot verify the TLS certificate of the Tide API/);

    const ro = await tide(['token', 'create', 'viewer', '--scope', 'read'], { dataDir: t.dataDir });
    expect(ro.code, ro.stderr).toBe(0);
    const viewer = ro.stdout.trim();
    expect(viewer).toMatch(/^tide_[a-z0-9]+_[A-Za-z0-9_-]{20,}$/);
    expect((await tide(['get', 'functions', '--token', viewer], { dataDir: t.dataDir })).code).toBe(0);
    const refused = await tide(['deploy', join(FIXTURES, 'functions', 'mesh-echo.ts'), '--name', 'z', '--token', viewer], { dataDir: t.dataDir });
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain('token viewer (scope read) may not POST');
    expect(refused.stderr).toContain('needs scope deploy');

    const dep = (await tide(['token', 'create', 'ci', '--scope', 'deploy', '--ttl', '1h'], { dataDir: t.dataDir })).stdout.trim();
    const deployed = await tide(['deploy', join(FIXTURES, 'functions', 'mesh-echo.ts'), '--name', 'z', '--token', dep], { dataDir: t.dataDir });
    expect(deployed.code, deployed.stderr).toBe(0);
    // deploy is not admin: no token management, and no Policy (it decides who may call whom).
    expect((await tide(['token', 'list', '--token', dep], { dataDir: t.dataDir })).stderr).toContain('needs scope admin');
    const pol = join(files, 'open-up.yaml');
    writeFileSync(pol, 'apiVersion: tide.dev/v1\nkind: Policy\nmetadata: { name: b-callers }\nspec:\n  rules: [{}]\n');
    const applied = await tide(['apply', '-f', pol, '--token', dep], { dataDir: t.dataDir });
    expect(applied.code).toBe(1);
    expect(applied.stderr).toContain('may not apply a Policy: it needs scope admin');
    const revoked = await tide(['token', 'revoke', 'ci'], { dataDir: t.dataDir });
    expect(revoked.code, revoked.stderr).toBe(0);
    const after = await tide(['get', 'functions', '--token', dep], { dataDir: t.dataDir });
    expect(after.code).toBe(1);
    expect(after.stderr).toMatch(/revoked/);
    const list = await tide(['token', 'list', '-o', 'json'], { dataDir: t.dataDir });
    const items =
      (JSON.parse(list.stdout) as { items?: { name: string; revokedAt: string | null }[] }).items ??
      (JSON.parse(list.stdout) as { name: string; revokedAt: string | null }[]);
    expect(items.find((i) => i.name === 'ci')?.revokedAt).toBeTruthy();
    expect(items.find((i) => i.name === 'viewer')?.revokedAt).toBeFalsy();
    expect(list.stdout).not.toContain(viewer);
  });
});

/** A plaintext HTTP/1.1 request to the mesh listener; '' when the connection is closed without an answer. */
function plaintext(host: string, path: string): Promise<string> {
  return new Promise((resolve) => {
    const s = connect(t.meshPort, '127.0.0.1', () => s.write(`GET ${path} HTTP/1.1\r\nhost: ${host}\r\nconnection: close\r\n\r\n`));
    let out = '';
    s.on('data', (d) => {
      out += d;
    });
    s.on('error', () => {});
    s.on('close', () => resolve(out));
    s.setTimeout(10_000, () => s.destroy());
  });
}
