/** The control API over TLS: a certificate from Tide's CA, the CLI client verifying it against the CA bundle, and certificate swaps. */
import { X509Certificate } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect } from 'node:tls';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ApiClient, apiDispatcher, locate, type Target } from '../../cli/client.ts';
import { Functions } from '../../control/api/functions.ts';
import { ControlApi } from '../../control/api/server.ts';
import type { BlobStore } from '../../control/blobs.ts';
import { CertificateAuthority, type IssuedCertificate } from '../../control/ca/ca.ts';
import { createMemoryStore, type Store } from '../../control/store/index.ts';
import { isTideError, type TideError } from '../../lib/errors.ts';
import { silentLogger } from '../../lib/log.ts';
import { tempDir } from '../helpers/tide.ts';

const TOKEN = 'tls-test-token-0123456789abcdef';

async function failure(api: ApiClient): Promise<TideError> {
  try {
    await api.call('GET', '/v1/info');
  } catch (err) {
    if (isTideError(err)) return err;
    throw err;
  }
  throw new Error('expected the call to fail');
}

/** SHA-256 fingerprint of the certificate a fresh TLS handshake with 127.0.0.1:port presents. */
function servedFingerprint(port: number, ca: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port, ca }, () => {
      resolve(socket.getPeerCertificate().fingerprint256);
      socket.end();
    });
    socket.on('error', reject);
  });
}

describe('control API over TLS', () => {
  let dataDir: string;
  let store: Store;
  let api: ControlApi;
  let url: string;
  let port: number;
  let issued: IssuedCertificate;
  let ca: CertificateAuthority;
  const targets: Target[] = [];

  beforeEach(async () => {
    vi.stubEnv('TIDE_CA_CERT', '');
    vi.stubEnv('TIDE_API', '');
    vi.stubEnv('TIDE_TOKEN', '');
    dataDir = tempDir();
    ca = await CertificateAuthority.open({ dir: join(dataDir, 'ca'), trustDomain: 'tide.local' });
    issued = await ca.issue({ names: ['localhost', '127.0.0.1'] });
    store = createMemoryStore();
    api = new ControlApi({
      functions: new Functions(store, {} as BlobStore, { validate: async () => {} }),
      logs: { tail: async () => [], follow: () => () => {} },
      token: TOKEN,
      log: silentLogger,
      functionUrl: (name) => `http://${name}.localhost`,
      info: { version: 'test' },
      tls: { cert: issued.cert, key: issued.key },
    });
    port = (await api.listen(0, '127.0.0.1')).port;
    url = `https://127.0.0.1:${port}`;
    writeFileSync(join(dataDir, 'endpoint.json'), JSON.stringify({ api: url }));
    writeFileSync(join(dataDir, 'token'), `${TOKEN}\n`);
  });

  afterEach(async () => {
    vi.unstubAllEnvs();
    await Promise.all(targets.splice(0).map((t) => t.dispatcher?.close()));
    await api.close();
    await store.close();
  });

  const client = async (opts: Parameters<typeof locate>[0]) => {
    const target = await locate(opts);
    targets.push(target);
    return new ApiClient(target);
  };

  it('serves HTTPS that the CLI verifies with <data-dir>/ca/bundle.pem', async () => {
    const cli = await client({ dataDir });
    expect(cli.target.api).toBe(url);
    expect(cli.target.caFile).toBe(join(dataDir, 'ca', 'bundle.pem'));
    expect(await cli.call('GET', '/v1/info')).toEqual({ version: 'test' });
  });

  it('fails verification without the bundle, with the URL, the TLS reason and a hint', async () => {
    const elsewhere = tempDir();
    const err = await failure(await client({ dataDir: elsewhere, api: url, token: TOKEN }));
    expect(err.code).toBe('ERR_API_UNREACHABLE');
    expect(err.message).toContain(url);
    expect(err.message).toMatch(/unable to verify the first certificate|self-signed certificate in certificate chain|unable to get local issuer certificate/);
    expect(err.hint).toMatch(/--cacert/);
    expect(err.hint).toMatch(/system roots/);
    expect(err.message).not.toMatch(/--use-system-ca/);
  });

  it('takes the bundle from --cacert or TIDE_CA_CERT, and refuses one of another CA', async () => {
    const elsewhere = tempDir();
    const bundle = join(dataDir, 'ca', 'bundle.pem');
    expect(await (await client({ dataDir: elsewhere, api: url, token: TOKEN, cacert: bundle })).call('GET', '/v1/info')).toEqual({ version: 'test' });

    vi.stubEnv('TIDE_CA_CERT', bundle);
    expect(await (await client({ dataDir: elsewhere, api: url, token: TOKEN })).call('GET', '/v1/info')).toEqual({ version: 'test' });
    vi.stubEnv('TIDE_CA_CERT', '');

    const other = await CertificateAuthority.open({ dir: join(tempDir(), 'ca'), trustDomain: 'tide.local' });
    const otherBundle = join(elsewhere, 'other.pem');
    writeFileSync(otherBundle, other.bundle());
    const err = await failure(await client({ dataDir, api: url, token: TOKEN, cacert: otherBundle }));
    expect(err.message).toMatch(/cannot verify the TLS certificate of the Tide API at https:\/\/127\.0\.0\.1:\d+: /);
    expect(err.hint).toContain(otherBundle);

    const missing = await locate({ dataDir, api: url, token: TOKEN, cacert: join(elsewhere, 'none.pem') }).catch((e: unknown) => e);
    expect(isTideError(missing, 'ERR_INVALID_ARGUMENT')).toBe(true);
    expect((missing as Error).message).toMatch(/cannot read the CA bundle .*none\.pem given by --cacert/);
  });

  it('apiDispatcher gives an Agent only when there is a bundle', async () => {
    const agent = await apiDispatcher(dataDir);
    expect(agent).toBeDefined();
    await agent?.close();
    expect(await apiDispatcher(tempDir())).toBeUndefined();
    const dir = tempDir();
    mkdirSync(join(dir, 'ca'));
    writeFileSync(join(dir, 'ca', 'bundle.pem'), readFileSync(join(dataDir, 'ca', 'bundle.pem')));
    const other = await apiDispatcher(dir);
    expect(other).toBeDefined();
    await other?.close();
  });

  it('swaps the certificate for new handshakes with setCertificate', async () => {
    const fp = (pem: string) => new X509Certificate(pem).fingerprint256;
    expect(await servedFingerprint(port, issued.ca)).toBe(fp(issued.cert));
    const renewed = await ca.issue({ names: ['localhost', '127.0.0.1'] });
    api.setCertificate({ cert: renewed.cert, key: renewed.key });
    expect(await servedFingerprint(port, issued.ca)).toBe(fp(renewed.cert));
    expect(() => api.setCertificate({ cert: 'not a certificate', key: renewed.key })).toThrow(/setCertificate: the API certificate and key cannot be used/);
    // The old one still serves after a refused swap.
    expect(await servedFingerprint(port, issued.ca)).toBe(fp(renewed.cert));
  });

  it('refuses a certificate swap on a plain HTTP API', () => {
    const plain = new ControlApi({
      functions: new Functions(store, {} as BlobStore, { validate: async () => {} }),
      logs: { tail: async () => [], follow: () => () => {} },
      token: TOKEN,
      log: silentLogger,
      functionUrl: (name) => `http://${name}.localhost`,
    });
    expect(() => plain.setCertificate({ cert: issued.cert, key: issued.key })).toThrow(/serves plain HTTP/);
  });
});
