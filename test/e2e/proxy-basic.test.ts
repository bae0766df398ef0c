import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type RunningProxy, rawRequest, simpleConfig, startProxy, startUpstream, type Upstream } from '../helpers/proxy.ts';

describe('tide proxy basics', () => {
  let up: Upstream;
  let proxy: RunningProxy;
  beforeAll(async () => {
    up = await startUpstream('a');
    proxy = await startProxy(simpleConfig([up.address]));
  });
  afterAll(async () => {
    await proxy.close();
    await up.close();
  });

  it('forwards a GET over keep-alive and answers pipelined requests in order', async () => {
    const r = await fetch(`http://127.0.0.1:${proxy.port}/x?y=1`);
    expect(r.status).toBe(200);
    expect(await r.text()).toBe('hello from a');
    expect(r.headers.get('x-request-id')).toBeTruthy();
    const two = await rawRequest(proxy.port, 'GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n');
    expect(two.text.match(/HTTP\/1\.1 200/g)).toHaveLength(2);
    expect(up.seen.slice(-2).map((s) => s.url)).toEqual(['/1', '/2']);
  });
});
