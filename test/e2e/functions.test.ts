/**
 * End to end through a real `tide up` process: deploy with the real CLI, requests through the
 * real gateway into worker-thread sandboxes.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eventually, FIXTURES, http, ROOT, startTide, stopTide, type TideProcess, tide } from '../helpers/tide.ts';

let t: TideProcess;
const fx = (f: string) => join(FIXTURES, 'functions', f);

beforeAll(async () => {
  t = await startTide({ args: ['--deploy', join(ROOT, 'examples/hello.ts')] });
  for (const [file, extra] of [
    ['faults.ts', ['--timeout', '1s', '--memory', '32']],
    ['stream.ts', ['--max-body', '1mb']],
    ['context.ts', ['--env', 'GREETING=hi', '--secret', 'API_KEY=s3cret-value']],
  ] as const) {
    const r = await tide(['deploy', fx(file), ...extra], { dataDir: t.dataDir });
    expect(r.code, r.stderr).toBe(0);
  }
});

afterAll(async () => {
  await stopTide(t);
});

const get = (name: string, path = '/', init?: Parameters<typeof http>[3]) => http(t.gatewayPort, `${name}.localhost:${t.gatewayPort}`, path, init);

describe('gateway routing', () => {
  it('serves hello from a worker-thread sandbox', async () => {
    const r = await get('hello');
    expect(r.status).toBe(200);
    expect(r.text).toBe('Hello from Tide\n');
    expect(r.headers['content-type']).toBe('text/plain; charset=utf-8');
  });
  it('runs on the proxy data plane: HTTP/2 (h2c) reaches a function, a smuggling attempt is refused before it', async () => {
    const { connect } = await import('node:http2');
    const session = connect(`http://127.0.0.1:${t.gatewayPort}`);
    try {
      const answer = await new Promise<{ status: number; body: string }>((resolve, reject) => {
        const stream = session.request({ ':path': '/', ':authority': 'hello.localhost' });
        let body = '';
        let status = 0;
        stream.on('response', (h) => {
          status = Number(h[':status']);
        });
        stream.on('data', (d: Buffer) => {
          body += d;
        });
        stream.on('end', () => resolve({ status, body }));
        stream.on('error', reject);
        stream.end();
      });
      expect(answer).toEqual({ status: 200, body: 'Hello from Tide\n' });
    } finally {
      session.close();
    }
    const { rawRequest } = await import('../helpers/proxy.ts');
    const smuggle = await rawRequest(
      t.gatewayPort,
      'POST / HTTP/1.1\r\nHost: echo.localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: hello.localhost\r\n\r\n',
    );
    expect(smuggle.status).toBe(400);
    expect(smuggle.text).toContain('tide-proxy-error: ERR_BAD_REQUEST');
    expect(smuggle.text.match(/HTTP\/1\.1 /g)).toHaveLength(1);
    expect(smuggle.closed).toBe(true);
  });
  it('cuts off a function that streams past its declared content-length: no second response on the connection', async () => {
    const { rawRequest } = await import('../helpers/proxy.ts');
    const r = await rawRequest(
      t.gatewayPort,
      'GET /split HTTP/1.1\r\nHost: faults.localhost\r\n\r\nGET /victim HTTP/1.1\r\nHost: faults.localhost\r\n\r\n',
      3000,
    );
    expect(r.text).not.toContain('x-injected');
    expect(r.text).not.toContain('INJECTED');
    expect(r.text.match(/HTTP\/1\.1 200/g)).toHaveLength(1);
    expect(r.closed).toBe(true);
  });
  it('a function that reads its body after the client left gets an error, and its thread is not killed', async () => {
    const { connect } = await import('node:net');
    const s = connect({ port: t.gatewayPort, host: '127.0.0.1' });
    s.on('error', () => {});
    s.write('POST /slow-read HTTP/1.1\r\nHost: faults.localhost\r\nContent-Length: 100000\r\n\r\n0123456789');
    await new Promise((r) => setTimeout(r, 200));
    s.destroy();
    // Had the second read hung, the thread would be killed at timeout (1 s) + grace (1 s),
    // failing whatever else runs on it then.
    await new Promise((r) => setTimeout(r, 1300));
    const other = await get('faults', '/sleep?ms=900');
    expect(other.status).toBe(200);
    expect(other.text).toBe('slept 900\n');
  });
  it('sends 100 Continue only before the response head, never inside a body', async () => {
    const { rawRequest } = await import('../helpers/proxy.ts');
    const head = 'POST /early HTTP/1.1\r\nHost: faults.localhost\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n';
    const r = await rawRequest(t.gatewayPort, [head, 'hello'], 3000, 300);
    expect(r.text).toContain('start;');
    expect(r.text).toContain('got:hello');
    expect(r.text).not.toContain('100 Continue');
  });
  it('answers an unknown host with 404 and a clear body', async () => {
    const r = await get('nosuch');
    expect(r.status).toBe(404);
    expect(r.headers['tide-proxy-error']).toBe('ERR_PROXY_NO_ROUTE');
    expect(r.text).toContain('no function named "nosuch"');
    const other = await http(t.gatewayPort, 'example.com');
    expect(other.status).toBe(404);
    expect(other.text).toContain('functions answer at NAME.localhost');
  });
  it('writes one access-log line per request', async () => {
    expect((await get('hello', '/access-log-probe')).status).toBe(200);
    await eventually(async () => {
      const { readFile } = await import('node:fs/promises');
      const log = await readFile(join(t.dataDir, 'access.log'), 'utf8').catch(() => '');
      return log.split('\n').some((l) => l.includes('/access-log-probe') && l.includes('"status":200'));
    }, 10_000);
  });
  it('passes headers both ways, including several set-cookie', async () => {
    const r = await get('context', '/headers');
    expect(r.headers['set-cookie']).toEqual(['a=1', 'b=2']);
    expect(r.headers['x-custom']).toBe('yes');
    const j = JSON.parse((await get('context', '/')).text) as { requestId: string };
    expect(j.requestId).toMatch(/^[0-9a-f]{8}-[0-9a-z]+$/);
  });
  it('refuses a malformed request with 400 without reaching a function', async () => {
    const { connect } = await import('node:net');
    const reply = await new Promise<string>((resolve) => {
      const s = connect(t.gatewayPort, '127.0.0.1', () => s.write('GET / HTTP/1.1\r\nHost: hello.localhost\r\nBad Header\r\n\r\n'));
      let data = '';
      s.on('data', (d) => {
        data += d;
      });
      s.on('close', () => resolve(data));
    });
    expect(reply).toMatch(/^HTTP\/1\.1 400/);
  });
});

describe('env, secrets, waitUntil and logs', () => {
  it('gives env and secrets to the function, and an empty process.env', async () => {
    const r = JSON.parse((await get('context', '/env')).text) as { env: Record<string, string>; processEnvKeys: string[] };
    expect(r.env).toEqual({ GREETING: 'hi', API_KEY: 's3cret-value' });
    expect(r.processEnvKeys).toEqual([]);
  });
  it('never prints a secret back', async () => {
    for (const args of [
      ['describe', 'context'],
      ['describe', 'context', '-o', 'json'],
      ['get', 'revisions', '-o', 'yaml'],
      ['get', 'functions', '-o', 'json'],
    ]) {
      const r = await tide(args, { dataDir: t.dataDir });
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).not.toContain('s3cret-value');
    }
    const d = await tide(['describe', 'context'], { dataDir: t.dataDir });
    expect(d.stdout).toContain('API_KEY (hidden)');
  });
  it('runs ctx.waitUntil work after the response is sent', async () => {
    const before = (JSON.parse((await get('context', '/after')).text) as { after: number }).after;
    const started = Date.now();
    const r = await get('context', '/later');
    expect(r.text).toBe('answered before the waitUntil work\n');
    expect(Date.now() - started).toBeLessThan(300);
    await eventually(async () => (JSON.parse((await get('context', '/after')).text) as { after: number }).after === before + 1, 5000);
  });
  it('shows console output with tide logs, and follows it with -f', async () => {
    await get('context', '/log?m=first');
    const r = await eventually(async () => {
      const res = await tide(['logs', 'context'], { dataDir: t.dataDir });
      return res.stdout.includes('hello from the log first') ? res : undefined;
    });
    expect(r.stdout).toMatch(/context-00001 INFO {3}\[[^\]]+\] hello from the log first/);
    expect(r.stdout).toMatch(/ERROR {2}\[[^\]]+\] an error line/);

    const { spawn } = await import('node:child_process');
    const follower = spawn(process.execPath, [join(ROOT, 'bin/tide.js'), 'logs', 'context', '-f', '--tail', '0', '--data-dir', t.dataDir], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let seen = '';
    follower.stdout.on('data', (d) => {
      seen += d;
    });
    try {
      await eventually(
        async () => {
          await get('context', '/log?m=live');
          return seen.includes('hello from the log live');
        },
        10_000,
        300,
      );
      expect(seen).not.toContain('hello from the log first');
    } finally {
      follower.kill('SIGINT');
    }
  });
});

describe('function logs', () => {
  it('tag console output with the request it was printed for, and filter by --revision and --since', async () => {
    await http(t.gatewayPort, 'context.localhost', '/log?m=tagged', { headers: { 'x-request-id': 'req-tagged-1' } });
    const r = await eventually(async () => {
      const res = await tide(['logs', 'context', '-o', 'json'], { dataDir: t.dataDir });
      return res.stdout.includes('hello from the log tagged') ? res : undefined;
    });
    const lines = r.stdout
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { message: string; requestId?: string; revision: string });
    expect(lines.find((l) => l.message.includes('hello from the log tagged'))?.requestId).toBe('req-tagged-1');
    const text = await tide(['logs', 'context'], { dataDir: t.dataDir });
    expect(text.stdout).toMatch(/INFO {3}\[req-tagged-1\] hello from the log tagged/);
    const rev = await tide(['logs', 'context', '--revision', 'context-00001'], { dataDir: t.dataDir });
    expect(rev.stdout).toContain('hello from the log tagged');
    expect((await tide(['logs', 'context', '--revision', 'context-00099'], { dataDir: t.dataDir })).stdout).toBe('');
    expect((await tide(['logs', 'context', '--since', '1h'], { dataDir: t.dataDir })).stdout).toContain('hello from the log tagged');
    expect((await tide(['logs', 'context', '--since', '2099-01-01T00:00:00Z'], { dataDir: t.dataDir })).stdout).toBe('');
    const bad = await tide(['logs', 'context', '--since', 'yesterday'], { dataDir: t.dataDir });
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--since');
  });
});

describe('faults stay inside their own request', () => {
  it('a throw fails only its request: 500 with a request id', async () => {
    const r = await get('faults', '/throw');
    expect(r.status).toBe(500);
    expect(r.headers['tide-proxy-error']).toBe('ERR_FUNCTION_THREW');
    expect(r.text).toContain('boom from the function');
    expect(r.text).toContain(`request id: ${r.headers['x-request-id']}`);
    expect((await get('faults', '/')).text).toBe('ok\n');
  });
  it('a non-Response return is a 502 naming the problem', async () => {
    const r = await get('faults', '/bad');
    expect(r.status).toBe(502);
    expect(r.text).toContain('fetch() must return a Response (got string)');
  });
  it('an endless loop is timed out, its thread replaced, and other requests keep working', async () => {
    const hello = get('hello');
    const started = Date.now();
    const r = await get('faults', '/loop');
    expect(r.status).toBe(504);
    expect(r.headers['tide-proxy-error']).toBe('ERR_SANDBOX_TIMEOUT');
    expect(Date.now() - started).toBeLessThan(5000);
    expect((await hello).status).toBe(200);
    const after = await eventually(async () => {
      const x = await get('faults', '/');
      return x.status === 200 ? x : undefined;
    }, 10_000);
    expect(after.text).toBe('ok\n');
    const d = await eventually(async () => {
      const res = await tide(['get', 'functions', '-o', 'json'], { dataDir: t.dataDir });
      const fn = (JSON.parse(res.stdout) as { items: { name: string; restarts: number; lastError: string | null }[] }).items.find((f) => f.name === 'faults');
      return fn && fn.restarts >= 1 ? fn : undefined;
    });
    expect(d.lastError).toMatch(/timeout|did not stop/);
  });
  it('a stream whose thread dies under it is ended, not left hanging', async () => {
    const { request } = await import('node:http');
    const ended = new Promise<string>((resolve) => {
      request({ port: t.gatewayPort, host: '127.0.0.1', path: '/tick', headers: { host: 'faults.localhost' } }, (res) => {
        res.once('data', () => void get('faults', '/hog')); // kill the thread while the stream runs
        res.on('error', () => resolve('error'));
        res.on('close', () => resolve('closed'));
        res.resume();
      })
        .on('error', () => resolve('error'))
        .end();
    });
    const outcome = await Promise.race([ended, new Promise<string>((r) => setTimeout(() => r('hung'), 8000))]);
    expect(outcome).not.toBe('hung');
    await eventually(async () => (await get('faults', '/')).status === 200, 10_000);
  });
  it('a function that ends its own thread (process.exit) fails only its request; the instance gets a new thread', async () => {
    const before = await tide(['describe', 'faults', '-o', 'json'], { dataDir: t.dataDir });
    const restarts = (JSON.parse(before.stdout) as { restarts: number }).restarts;
    const r = await get('faults', '/exit');
    expect(r.status).toBeGreaterThanOrEqual(500);
    expect(r.headers['tide-proxy-error']).toBeDefined();
    await eventually(async () => (await get('faults', '/')).status === 200, 10_000);
    const after = await eventually(async () => {
      const d = JSON.parse((await tide(['describe', 'faults', '-o', 'json'], { dataDir: t.dataDir })).stdout) as { restarts: number; lastError: string };
      return d.restarts > restarts ? d : undefined;
    });
    expect(after.lastError).toMatch(/thread failed|exit/i);
    expect((await get('hello')).status).toBe(200);
  });
  it('blowing the memory limit fails the request, replaces the thread and is reported', async () => {
    const r = await get('faults', '/hog');
    expect(r.status).toBe(500);
    expect(r.headers['tide-proxy-error']).toBe('ERR_SANDBOX_OUT_OF_MEMORY');
    expect(r.text).toContain('memory limit of 32 MiB');
    await eventually(async () => (await get('faults', '/')).status === 200, 10_000);
    const logs = await eventually(async () => {
      const res = await tide(['logs', 'faults'], { dataDir: t.dataDir });
      return res.stdout.includes('out-of-memory') ? res.stdout : undefined;
    });
    expect(logs).toMatch(/SYSTEM .*instance replaced \(out-of-memory\)/);
    expect((await get('hello')).status).toBe(200);
  });
});

describe('bodies stream both ways', () => {
  it('streams a request body in chunks to the function', async () => {
    const chunk = Buffer.alloc(64 * 1024, 7);
    async function* body() {
      for (let i = 0; i < 8; i++) yield chunk;
    }
    const r = await get('stream', '/', { method: 'POST', body: body(), headers: { 'transfer-encoding': 'chunked' } });
    const j = JSON.parse(r.text) as { length: number; chunks: number; sha256: string };
    const { createHash } = await import('node:crypto');
    expect(j.length).toBe(8 * 64 * 1024);
    expect(j.chunks).toBeGreaterThan(1);
    expect(j.sha256).toBe(
      createHash('sha256')
        .update(Buffer.concat(Array(8).fill(chunk)))
        .digest('hex'),
    );
  });
  it('sends response chunks as the function produces them', async () => {
    const { request } = await import('node:http');
    const arrivals = await new Promise<number[]>((resolve, reject) => {
      const times: number[] = [];
      request({ port: t.gatewayPort, host: '127.0.0.1', path: '/chunks?n=3&ms=300', headers: { host: 'stream.localhost' } }, (res) => {
        res.on('data', () => times.push(Date.now()));
        res.on('end', () => resolve(times));
      })
        .on('error', reject)
        .end();
    });
    expect(arrivals.length).toBe(3);
    expect((arrivals[2] as number) - (arrivals[0] as number)).toBeGreaterThanOrEqual(450);
  });
  it('streams a large response without buffering it whole', async () => {
    const r = await get('stream', '/big?mb=16');
    expect(r.status).toBe(200);
    expect(r.body.length).toBe(16 * 1024 * 1024);
  });
  it('refuses bodies over the limit with 413: declared up front or found while streaming', async () => {
    const declared = await get('stream', '/', { method: 'POST', body: Buffer.alloc(2 * 1024 * 1024) });
    expect(declared.status).toBe(413);
    expect(declared.headers['tide-proxy-error']).toBe('ERR_PAYLOAD_TOO_LARGE');
    const chunk = Buffer.alloc(256 * 1024, 1);
    async function* body() {
      for (let i = 0; i < 8; i++) yield chunk;
    }
    const streamed = await get('stream', '/?slow=1', { method: 'POST', body: body(), headers: { 'transfer-encoding': 'chunked' } });
    expect(streamed.status).toBe(413);
    expect(streamed.text).toContain("over the function's limit of 1048576 bytes");
    expect((await get('stream', '/')).status).toBe(200);
  });
});

describe('cancellation', () => {
  type Fns = { items: { name: string; restarts: number }[] };
  const restarts = async (name: string) =>
    (JSON.parse((await tide(['get', 'functions', '-o', 'json'], { dataDir: t.dataDir })).stdout) as Fns).items.find((f) => f.name === name)?.restarts;

  it('a client that goes away does not cost the thread of a slow but healthy request', async () => {
    const before = await restarts('context');
    const { request } = await import('node:http');
    // 1.5 s of work (timeout 30 s), abandoned by its client after 100 ms.
    const req = request({ port: t.gatewayPort, host: '127.0.0.1', path: '/sleep?ms=1500', headers: { host: 'context.localhost' } });
    req.on('error', () => {});
    req.end();
    await new Promise((r) => setTimeout(r, 100));
    req.destroy();
    await new Promise((r) => setTimeout(r, 2000));
    expect((await get('context', '/')).status).toBe(200);
    expect(await restarts('context')).toBe(before);
  });
});

describe('what a function sends back cannot break Tide', () => {
  it.each([
    ['/bad-header', /cannot be sent/],
    ['/number-chunk', /must be a Uint8Array \(got number\)/],
    ['/string-chunk', /must be a Uint8Array \(got string\)/],
  ])('%s gets a 502 and Tide keeps serving', async (path, message) => {
    const r = await get('faults', path);
    expect(r.status).toBe(502);
    expect(r.headers['tide-proxy-error']).toBe('ERR_FUNCTION_BAD_RESPONSE');
    expect(r.text).toMatch(message);
    expect((await get('hello')).status).toBe(200);
  });
  it('strips hop-by-hop headers a function sets, keeps the rest, and the connection stays usable', async () => {
    const { Agent } = await import('node:http');
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    const { request } = await import('node:http');
    const one = (path: string) =>
      new Promise<{ status: number; headers: Record<string, unknown>; body: string }>((resolve, reject) => {
        request({ port: t.gatewayPort, host: '127.0.0.1', path, agent, headers: { host: 'faults.localhost' } }, (res) => {
          let body = '';
          res.on('data', (d) => {
            body += d;
          });
          res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
        })
          .on('error', reject)
          .end();
      });
    const hop = await one('/hop');
    expect(hop.body).toBe('hop');
    expect(hop.headers['x-kept']).toBe('yes');
    expect(hop.headers['transfer-encoding']).toBeUndefined();
    expect(hop.headers['content-length']).toBe('3');
    // The function's `connection: close` is not passed on: the connection stays open.
    expect(hop.headers.connection).not.toBe('close');
    expect((await one('/')).body).toBe('ok\n');
    agent.destroy();
  });
  it('sends no content-length with 204, and none invented for HEAD', async () => {
    const nc = await get('faults', '/no-content');
    expect(nc.status).toBe(204);
    expect(nc.headers['content-length']).toBeUndefined();
    const head = await get('hello', '/', { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.headers['content-length']).not.toBe('0');
  });
});

describe('request bodies a function does not finish reading', () => {
  async function keepAliveClient() {
    const { Agent, request } = await import('node:http');
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    const send = (name: string, path: string, body?: Buffer, chunked = false) =>
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        const headers: Record<string, string> = { host: `${name}.localhost`, ...(chunked ? { 'transfer-encoding': 'chunked' } : {}) };
        const req = request({ port: t.gatewayPort, host: '127.0.0.1', path, method: body ? 'POST' : 'GET', agent, headers }, (res) => {
          let text = '';
          res.on('data', (d) => {
            text += d;
          });
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
        });
        req.setTimeout(4000, () => req.destroy(new Error('stalled')));
        req.on('error', reject);
        req.end(body);
      });
    return { send, close: () => agent.destroy() };
  }
  it('a body read only in part is drained: the next request on the connection is answered', async () => {
    const c = await keepAliveClient();
    const r = await c.send('faults', '/partial', Buffer.alloc(200 * 1024, 1));
    expect(r.status).toBe(200);
    expect(r.body).toMatch(/^read \d+ bytes of it/);
    expect((await c.send('faults', '/')).body).toBe('ok\n');
    c.close();
  });
  it.each([false, true])('a body over the limit gets 413 and the connection stays usable (chunked: %s)', async (chunked) => {
    const c = await keepAliveClient();
    const big = await c.send('stream', '/', Buffer.alloc(3 * 1024 * 1024, 2), chunked);
    expect(big.status).toBe(413);
    expect((await c.send('stream', '/')).status).toBe(200);
    c.close();
  });
});

describe('a stream whose client left before it started', () => {
  it('is cancelled instead of running on', async () => {
    const id = `s${Date.now()}`;
    const { request } = await import('node:http');
    const req = request({ port: t.gatewayPort, host: '127.0.0.1', path: `/forever?id=${id}`, headers: { host: 'stream.localhost' } });
    req.on('error', () => {});
    req.end();
    await new Promise((r) => setTimeout(r, 100));
    req.destroy();
    const logs = await eventually(async () => {
      const res = await tide(['logs', 'stream', '--tail', '1000'], { dataDir: t.dataDir });
      return res.stdout.includes(`stream ${id} cancelled`) ? res.stdout : undefined;
    }, 5000);
    expect(logs.split('\n').filter((l) => l.includes(`tick ${id}`)).length).toBeLessThan(3);
  });
});
