/**
 * The client side of the mesh: a function's egress socket calls the destination over mutual
 * TLS under the function's identity, and refuses a server whose SPIFFE ID is not the
 * destination's even when its chain is good.
 */
import { existsSync } from 'node:fs';
import { request } from 'node:http';
import { type AddressInfo, connect } from 'node:net';
import { createServer, type TLSSocket } from 'node:tls';
import { afterEach, describe, expect, it } from 'vitest';
import { CertificateAuthority } from '../../control/ca/ca.ts';
import { createLogger } from '../../lib/log.ts';
import { functionId, idOfCertificate } from '../../lib/spiffe.ts';
import { Gateway } from '../../proxy/gateway.ts';
import { Egress } from '../../proxy/mesh/egress.ts';
import { Identities } from '../../proxy/tls/identities.ts';
import { eventually, tempDir } from '../helpers/tide.ts';

const log = createLogger({ level: 'silent' });
const closers: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of closers.splice(0).reverse()) await c();
});

async function setup(serverId: string, serverTrusts?: string) {
  const ca = await CertificateAuthority.open({ dir: tempDir('tide-egress-ca-'), trustDomain: 'tide.local' });
  const issued = await ca.issue({ id: serverId });
  const server = serverTrusts ? { ...issued, ca: `${issued.ca}\n${serverTrusts}`.replace(issued.ca, serverTrusts) } : issued;
  let seenClient: string | undefined;
  const tls = createServer(
    { cert: server.cert, key: server.key, ca: server.ca, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3' },
    (s: TLSSocket) => {
      seenClient = idOfCertificate(s.getPeerX509Certificate());
      s.once('data', () => s.end('HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok'));
    },
  );
  await new Promise<void>((r) => tls.listen(0, '127.0.0.1', r));
  closers.push(() => new Promise<void>((r) => tls.close(() => r())));
  const identities = new Identities({ issue: async (id, names) => ({ ...(await ca.issue({ id, names })), id }), log });
  closers.push(() => identities.close());
  const port = (tls.address() as AddressInfo).port;
  const egress = new Egress({
    trustDomain: 'tide.local',
    identities,
    dir: tempDir('tide-egress-'),
    locate: () => ({ host: '127.0.0.1', port }),
    mode: () => 'STRICT',
    log,
  });
  closers.push(() => egress.close());
  const socket = await egress.open('default', 'web');
  return { socket, egress, client: () => seenClient };
}

function get(socketPath: string, host: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path: '/', headers: { host } }, (res) => {
      let body = '';
      res.on('data', (d) => {
        body += d;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('mesh egress', () => {
  it('calls the destination under the caller’s identity when the server is who it should be', async () => {
    const { socket, client } = await setup(functionId('tide.local', 'default', 'orders'));
    const r = await get(socket, 'orders.default.svc.tide');
    expect(r).toEqual({ status: 200, body: 'ok' });
    expect(client()).toBe(functionId('tide.local', 'default', 'web'));
  });

  it('refuses a server with a good chain but another identity', async () => {
    const { socket, client } = await setup(functionId('tide.local', 'default', 'impostor'));
    const r = await get(socket, 'orders.default.svc.tide');
    expect(r.status).toBe(503);
    expect(r.body).toContain("the server's identity is spiffe://tide.local/ns/default/fn/impostor, not spiffe://tide.local/ns/default/fn/orders");
    expect(client()).toBeUndefined();
  });

  it('says why when the server refuses the caller’s certificate (a TLS alert after the handshake is a connect failure)', async () => {
    const other = await CertificateAuthority.open({ dir: tempDir('tide-egress-other-'), trustDomain: 'tide.local' });
    const { socket } = await setup(functionId('tide.local', 'default', 'orders'), other.bundle());
    const r = await get(socket, 'orders.default.svc.tide');
    expect(r.status).toBe(503);
    expect(r.body).toContain('the server closed the TLS connection without accepting it (it refused this client certificate');
  });

  it('closes the way out of a function that is gone (retain), and keeps the others', async () => {
    const { socket, egress } = await setup(functionId('tide.local', 'default', 'orders'));
    const other = await egress.open('default', 'batch');
    egress.retain(new Set(['default/batch']));
    await eventually(() => !existsSync(socket));
    expect(existsSync(other)).toBe(true);
    await expect(get(socket, 'orders.default.svc.tide')).rejects.toThrow(/ENOENT|ECONNREFUSED/);
    expect([...egress.sockets().keys()]).toEqual(['default/batch']);
  });

  it('answers 404 for hosts that are not mesh names', async () => {
    const { socket } = await setup(functionId('tide.local', 'default', 'orders'));
    const r = await get(socket, 'example.com');
    expect(r.status).toBe(404);
    expect(r.body).toContain('NAME.NAMESPACE.svc.tide');
  });
});

describe('mesh listener', () => {
  it('closes connections that never send a byte when it shuts down, instead of waiting for them', async () => {
    const ca = await CertificateAuthority.open({ dir: tempDir('tide-mesh-ca-'), trustDomain: 'tide.local' });
    const identities = new Identities({ issue: async (id, names) => ({ ...(await ca.issue({ id, names })), id }), log });
    closers.push(() => identities.close());
    const gateway = new Gateway({ log, resolve: () => undefined, identities });
    const { port } = await gateway.listenMesh(0, '127.0.0.1');
    const idle = connect(port, '127.0.0.1');
    await new Promise((r) => idle.once('connect', r));
    const closedIdle = new Promise((r) => idle.once('close', r));
    const started = Date.now();
    await gateway.close(500);
    await closedIdle;
    expect(Date.now() - started).toBeLessThan(2000);
  });
});
