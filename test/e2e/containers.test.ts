/**
 * The container sandbox through a real `tide up` and real runc: a function served from a
 * container, and each isolation point checked from inside it.
 */
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cachedImages } from '../../runtime/sandbox/container/image.ts';
import { findRunc } from '../../runtime/sandbox/container/runc.ts';
import { buildImage, imageTar } from '../helpers/image.ts';
import { eventually, FIXTURES, http, ROOT, startTide, stopTide, type TideProcess, tide } from '../helpers/tide.ts';

let t: TideProcess;
let RUNC = 'runc';
const INSPECT = join(FIXTURES, 'functions', 'inspect.ts');
const get = (fn: string, path = '/', timeoutMs = 20_000) => http(t.gatewayPort, `${fn}.localhost`, path, { timeoutMs });
const json = async (fn: string, path: string) => JSON.parse((await get(fn, path)).text) as Record<string, unknown>;

beforeAll(async () => {
  RUNC = await findRunc();
  t = await startTide();
  const r = await tide(['deploy', INSPECT, '--sandbox', 'container', '--memory', '128', '--min-scale', '1'], { dataDir: t.dataDir });
  expect(r.code, r.stderr).toBe(0);
}, 60_000);

afterAll(async () => {
  await stopTide(t);
});

describe('a function in a container', () => {
  it('serves the hello example through the gateway', async () => {
    const r = await tide(['deploy', join(ROOT, 'examples/hello.ts'), '--sandbox', 'container'], { dataDir: t.dataDir });
    expect(r.code, r.stderr).toBe(0);
    const res = await get('hello', '/');
    expect(res.status).toBe(200);
    expect(res.text).toBe('Hello from Tide\n');
  });

  it('streams request and response bodies both ways, and reports a function that throws as 500', async () => {
    const r = await tide(['deploy', join(FIXTURES, 'functions', 'stream.ts'), '--name', 'cstream', '--sandbox', 'container'], { dataDir: t.dataDir });
    expect(r.code, r.stderr).toBe(0);
    const chunk = Buffer.alloc(64 * 1024, 7);
    async function* body() {
      for (let i = 0; i < 8; i++) yield chunk;
    }
    const posted = await http(t.gatewayPort, 'cstream.localhost', '/', { method: 'POST', body: body(), headers: { 'transfer-encoding': 'chunked' } });
    const { createHash } = await import('node:crypto');
    const want = createHash('sha256');
    for (let i = 0; i < 8; i++) want.update(chunk);
    expect(JSON.parse(posted.text)).toMatchObject({ length: 8 * 64 * 1024, sha256: want.digest('hex') });
    const chunks = await http(t.gatewayPort, 'cstream.localhost', '/chunks?n=3&ms=50');
    expect(chunks.text.trim().split('\n')).toHaveLength(3);
    expect(chunks.headers['content-length']).toBeUndefined(); // streamed
    const big = await http(t.gatewayPort, 'cstream.localhost', '/big?mb=8');
    expect(big.body.length).toBe(8 * 1024 * 1024);
    const thrown = await tide(['deploy', join(FIXTURES, 'functions', 'faults.ts'), '--name', 'cfaults', '--sandbox', 'container'], { dataDir: t.dataDir });
    expect(thrown.code, thrown.stderr).toBe(0);
    const err = await http(t.gatewayPort, 'cfaults.localhost', '/throw');
    expect(err.status).toBe(500);
    expect(err.headers['tide-proxy-error']).toBe('ERR_FUNCTION_THREW');
    expect(err.text).toMatch(/boom from the function/);
  });

  it('runs in its own pid, uts, network and user namespaces, with no capabilities, no-new-privileges and seccomp', async () => {
    const w = await json('inspect', '/whoami');
    expect(w.uid).toBe(0);
    expect(w.uidMap).toEqual(['0', '100000', '65536']); // root inside is uid 100000 outside
    expect(w.hostname).toBe('inspect');
    expect((w.pids as string[]).length).toBeLessThanOrEqual(3); // cannot see host processes
    expect(w.capEff).toBe('0000000000000000');
    expect(w.noNewPrivs).toBe('1');
    expect(w.seccomp).toBe('2');
    expect(w.interfaces).toEqual(['lo']);
    const { readlinkSync } = await import('node:fs');
    for (const [ns, inside] of Object.entries(w.namespaces as Record<string, string>)) expect(inside, ns).not.toBe(readlinkSync(`/proc/self/ns/${ns}`));
  });

  it('has the CPU quota and memory limit of its function in its cgroup', async () => {
    const { readFileSync } = await import('node:fs');
    const ids = readdirSync('/sys/fs/cgroup/memory/tide').filter((d) => d.startsWith('inspect-'));
    expect(ids.length).toBeGreaterThan(0);
    const id = ids[0] as string;
    expect(readFileSync(`/sys/fs/cgroup/memory/tide/${id}/memory.limit_in_bytes`, 'utf8').trim()).toBe(String(128 * 1024 * 1024));
    expect(readFileSync(`/sys/fs/cgroup/cpu/tide/${id}/cpu.cfs_quota_us`, 'utf8').trim()).toBe('100000'); // 1000 millicores
    expect(readFileSync(`/sys/fs/cgroup/pids/tide/${id}/pids.max`, 'utf8').trim()).toBe('256');
  });

  it('cannot open a network connection out, nor reach the host', async () => {
    const n = await json('inspect', `/net?port=${t.gatewayPort}`);
    expect(n.outside).toBe('ENETUNREACH');
    expect(n.hostLoopback).toBe('ECONNREFUSED'); // its loopback is its own
  });

  it('cannot write its root filesystem; /tmp is writable and size-limited; /proc is masked; unshare is refused', async () => {
    const f = await json('inspect', '/fs');
    expect(f.root).toBe('EROFS');
    expect(f.usr).toBe('EROFS');
    expect(f.tmp).toBe('ok');
    expect(f.tmpFull).toBe('ENOSPC');
    expect(f.kcore).not.toBe('ok');
    expect(f.sysrq).not.toBe('ok');
    expect(f.unshare).not.toBe('ok');
  });

  it('contains a fork bomb at its pids limit', async () => {
    const b = await json('inspect', '/forkbomb');
    expect(b.started).toBeGreaterThan(0);
    expect(b.started).toBeLessThan(256);
    expect(b.refused).toBe('EAGAIN');
    expect((await get('inspect', '/')).status).toBe(200);
  });

  it('is killed at its memory limit, reported as OOMKilled, and replaced', async () => {
    const r = await get('inspect', '/oom');
    expect(r.status).toBeGreaterThanOrEqual(500);
    await eventually(async () => ((await get('inspect', '/')).status === 200 ? true : undefined), 20_000);
    const logs = await eventually(async () => {
      const l = await tide(['logs', 'inspect'], { dataDir: t.dataDir });
      return /OOMKilled/.test(l.stdout) ? l.stdout : undefined;
    });
    expect(logs).toMatch(/instance replaced \(out-of-memory\): OOMKilled: the container went over its memory limit of 128 MiB/);
  }, 40_000);

  it('answers the requests that come while a killed container is replaced (they wait for the new one)', async () => {
    const { createHash } = await import('node:crypto');
    const { execFileSync } = await import('node:child_process');
    const root = join('/run/tide', createHash('sha256').update(t.dataDir).digest('hex').slice(0, 10), 'runc');
    const { readFileSync } = await import('node:fs');
    const list = (JSON.parse(execFileSync(RUNC, ['--root', root, 'list', '--format', 'json'], { encoding: 'utf8' })) ?? []) as {
      id: string;
      pid: number;
      bundle: string;
    }[];
    // inspect's container (pre-started ones have generic names): the one running its bundle
    const victim = list.find((c) => readFileSync(join(c.bundle, 'fn', 'bundle.mjs'), 'utf8').includes('/forkbomb'));
    expect(victim).toBeDefined();
    const answers = Array.from({ length: 40 }, (_, i) => new Promise((r) => setTimeout(r, i * 10)).then(() => get('inspect', '/')));
    setTimeout(() => process.kill(victim?.pid as number, 'SIGKILL'), 55);
    const statuses = (await Promise.all(answers)).map((a) => a.status);
    // Only a request in flight at the moment of the kill may fail; the rest wait for the replacement.
    expect(statuses.filter((s) => s !== 200).length).toBeLessThanOrEqual(1);
    const logs = await eventually(async () => {
      const l = await tide(['logs', 'inspect'], { dataDir: t.dataDir });
      return /instance replaced \(crashed\): the container exited/.test(l.stdout) ? l.stdout : undefined;
    });
    expect(logs).toBeTruthy();
  }, 30_000);

  it("keeps the function's stdout and stderr in tide logs", async () => {
    await get('inspect', '/log?n=42');
    const logs = await eventually(async () => {
      const l = await tide(['logs', 'inspect'], { dataDir: t.dataDir });
      return l.stdout.includes('line for stdout 42') ? l.stdout : undefined;
    });
    expect(logs).toMatch(/INFO\s+line for stdout 42/);
    expect(logs).toMatch(/ERROR\s+line for stderr/);
  });
});

describe('an image in a container', () => {
  let layout = '';
  beforeAll(async () => {
    layout = await buildImage();
  }, 60_000);

  it('runs an OCI image layout through the gateway, with its layers, whiteouts, config and the function env', async () => {
    const r = await tide(['deploy', '--image', layout, '--name', 'img', '--env', 'GREETING=hi'], { dataDir: t.dataDir });
    expect(r.code, r.stderr).toBe(0);
    const res = await get('img', '/anything');
    expect(res.status).toBe(200);
    // layer two's file, layer one's old.txt whited out, etc/junk made opaque, env from the function, read-only root
    expect(res.text).toBe('message=layer two old=0 junk=b.txt, greeting=hi rootWritable=0\n');
    const logs = await eventually(async () => {
      const l = await tide(['logs', 'img'], { dataDir: t.dataDir });
      return l.stdout.includes('image server listening on 9000') ? l.stdout : undefined;
    });
    expect(logs).toMatch(/ERROR\s+image server listening on 9000/); // its exposed port became $PORT; stderr kept
  });

  it('runs the same image from a tar, two instances sharing one unpacked copy', async () => {
    const tar = await imageTar(layout);
    const before = (await cachedImages()).length;
    const r = await tide(['deploy', '--image', tar, '--name', 'imgtar', '--instances', '2'], { dataDir: t.dataDir });
    expect(r.code, r.stderr).toBe(0);
    expect((await get('imgtar', '/')).text).toMatch(/^message=layer two old=0 junk=b.txt, greeting= rootWritable=0/);
    const d = await eventually(async () => {
      const out = await tide(['describe', 'imgtar'], { dataDir: t.dataDir });
      return /2\/2 instances/.test(out.stdout) ? out : undefined;
    });
    expect(d.stdout).toMatch(/2\/2 instances/);
    expect((await cachedImages()).length).toBe(before); // same layers: the copy unpacked for `img`
  });

  it('refuses what is not an image, and an image without a command, saying why', async () => {
    const notImage = await tide(['deploy', '--image', join(FIXTURES, 'functions', 'inspect.ts'), '--name', 'bad'], { dataDir: t.dataDir });
    expect(notImage.code).toBe(1);
    expect(notImage.stderr).toMatch(/not a readable tar/);
    const both = await tide(['deploy', INSPECT, '--image', layout], { dataDir: t.dataDir });
    expect(both.code).toBe(2);
    expect(both.stderr).toMatch(/give a function file or --image PATH \(one of them\)/);
  });
});

describe('container clean-up', () => {
  it('leaves no container, folder or cgroup after a kill -9 of Tide and a restart, nor after a clean stop', async () => {
    const { createHash } = await import('node:crypto');
    const { execFileSync } = await import('node:child_process');
    const dir = join('/run/tide', createHash('sha256').update(t.dataDir).digest('hex').slice(0, 10));
    const containers = () =>
      ((JSON.parse(execFileSync(RUNC, ['--root', join(dir, 'runc'), 'list', '--format', 'json'], { encoding: 'utf8' })) ?? []) as { id: string }[])
        .map((c) => c.id)
        .sort();
    const folders = () =>
      readdirSync(dir)
        .filter((f) => !['runc', 'rootfs', 'bin'].includes(f))
        .sort();
    const cgroups = () => (existsSync('/sys/fs/cgroup/memory/tide') ? readdirSync('/sys/fs/cgroup/memory/tide').filter((d) => !d.includes('.')) : []);
    const before = containers();
    expect(before.length).toBeGreaterThanOrEqual(2);
    t.child.kill('SIGKILL');
    await t.exited;
    const dataDir = t.dataDir;
    t = await startTide({ dataDir });
    // The restarted Tide removed the killed one's containers, and runs its own again.
    await eventually(async () => ((await get('inspect', '/')).status === 200 ? true : undefined), 20_000);
    await eventually(async () => (containers().length >= 2 ? true : undefined));
    const after = containers();
    for (const id of before) expect(after).not.toContain(id);
    expect(folders()).toEqual(after); // a folder only for each live container
    for (const id of before) expect(cgroups()).not.toContain(id);
    await stopTide(t);
    expect(existsSync(dir)).toBe(false); // a clean stop leaves nothing
    for (const id of after) expect(cgroups()).not.toContain(id);
    t = await startTide({ dataDir });
  }, 60_000);
});
