/**
 * The SandboxDriver contract: `worker` now, `container` next, both must pass it unchanged.
 * Requests reach the instance through a real node:http server, as the gateway sends them.
 */
import { writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FUNCTION_DEFAULTS } from '../../control/api/schema/function.ts';
import { isTideError } from '../../lib/errors.ts';
import type { Instance, InstanceSpec, SandboxDriver } from '../../runtime/sandbox/driver.ts';
import { fromNodeRequest, fromNodeResponse } from '../helpers/sandbox-http.ts';
import { http, tempDir } from '../helpers/tide.ts';

const MODULE = `
let inflight = 0, peak = 0;
export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    inflight++; peak = Math.max(peak, inflight);
    try {
      if (url.pathname === '/sleep') await new Promise((r) => setTimeout(r, Number(url.searchParams.get('ms'))));
      if (url.pathname === '/peak') return Response.json({ peak });
      return new Response('hi ' + (env.WHO ?? 'nobody') + ' ' + request.method + ' ' + url.pathname);
    } finally { inflight--; }
  },
};
`;

export function sandboxDriverContract(name: string, makeDriver: () => SandboxDriver): void {
  describe(`SandboxDriver contract: ${name}`, () => {
    const cleanups: (() => Promise<void>)[] = [];
    afterEach(async () => {
      for (const c of cleanups.splice(0).reverse()) await c();
    });

    function newDriver(): SandboxDriver {
      const driver = makeDriver();
      cleanups.unshift(async () => driver.close?.());
      return driver;
    }

    function bundle(code: string): string {
      const file = join(tempDir('tide-bundle-'), 'fn.mjs');
      writeFileSync(file, code);
      return file;
    }

    async function start(driver: SandboxDriver, code: string, config: Partial<InstanceSpec['config']> = {}, env = { WHO: 'tide' }): Promise<Instance> {
      const spec: InstanceSpec = {
        id: `t-${Math.random().toString(36).slice(2, 8)}`,
        function: 'contract',
        revision: 'contract-00001',
        namespace: 'default',
        bundlePath: bundle(code),
        env,
        config: { ...FUNCTION_DEFAULTS, ...config },
      };
      const inst = await driver.start(spec);
      cleanups.push(() => driver.stop(inst, { drain: false }));
      return inst;
    }

    async function serve(inst: Instance): Promise<number> {
      const server: Server = createServer((req, res) => {
        inst
          .dispatch(fromNodeRequest(req, 'http'), fromNodeResponse(res), { requestId: 'r1', scheme: 'http' })
          .catch((err: Error & { status?: number; code?: string }) => {
            res.writeHead(err.status ?? 500, { 'x-code': err.code ?? '' });
            res.end(err.message);
          });
      });
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      cleanups.push(() => new Promise<void>((r) => server.close(() => r())));
      return (server.address() as AddressInfo).port;
    }

    it('starts an instance that serves requests with its env and probes healthy', async () => {
      const driver = newDriver();
      const inst = await start(driver, MODULE);
      expect(await driver.probe(inst)).toBe(true);
      const port = await serve(inst);
      const r = await http(port, 'x.localhost', '/path');
      expect(r.status).toBe(200);
      expect(r.text).toBe('hi tide GET /path');
      expect(inst.inflight).toBe(0);
    });

    it('gives each instance its own function and env, one after another on the same driver', async () => {
      const driver = newDriver();
      const a = await start(driver, MODULE);
      const b = await start(driver, 'export default { fetch: (r, env) => new Response("b sees " + (env.WHO ?? "nothing")) };', {}, { WHO: 'b-only' });
      const [pa, pb] = [await serve(a), await serve(b)];
      expect((await http(pa, 'x.localhost', '/one')).text).toBe('hi tide GET /one');
      expect((await http(pb, 'x.localhost', '/')).text).toBe('b sees b-only');
      expect((await http(pa, 'x.localhost', '/two')).text).toBe('hi tide GET /two');
    });

    it('starts an instance with a memory limit of its own', async () => {
      const driver = newDriver();
      const inst = await start(driver, MODULE, { memoryMb: 64 });
      expect((await http(await serve(inst), 'x.localhost', '/m')).text).toBe('hi tide GET /m');
    });

    it('refuses to start a module without a fetch handler', async () => {
      const driver = newDriver();
      await expect(start(driver, 'export default { nope: 1 };')).rejects.toSatisfy((e) => isTideError(e, 'ERR_FUNCTION_INVALID'));
    });

    it('serves concurrent requests at once on one instance', async () => {
      const driver = newDriver();
      const inst = await start(driver, MODULE);
      const port = await serve(inst);
      const started = Date.now();
      await Promise.all(Array.from({ length: 4 }, () => http(port, 'x.localhost', '/sleep?ms=300')));
      expect(Date.now() - started).toBeLessThan(1100);
      const peak = JSON.parse((await http(port, 'x.localhost', '/peak')).text) as { peak: number };
      expect(peak.peak).toBe(4);
    });

    it('drains in-flight requests on stop, then refuses new ones', async () => {
      const driver = newDriver();
      const inst = await start(driver, MODULE);
      const port = await serve(inst);
      const slow = http(port, 'x.localhost', '/sleep?ms=400');
      await new Promise((r) => setTimeout(r, 100));
      const stopping = driver.stop(inst, { drain: true, drainMs: 5000 });
      const r = await slow;
      expect(r.status).toBe(200);
      await stopping;
      const after = await http(port, 'x.localhost', '/');
      expect(after.status).toBe(503);
      expect(after.headers['x-code']).toBe('ERR_SANDBOX_CLOSED');
    });
  });
}
