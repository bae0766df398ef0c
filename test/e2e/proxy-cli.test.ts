/**
 * `tide proxy -c FILE` as a real child process: --check, startup output, the file watcher,
 * rejected reloads, SIGHUP and SIGTERM. Upstreams run in the test process on loopback.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startUpstream, twoClusterConfig, type Upstream } from '../helpers/proxy.ts';
import { eventually, http, ROOT, sleep, stopProcess, TIDE_BIN, tempDir, tide } from '../helpers/tide.ts';

interface ProxyProcess {
  child: ChildProcess;
  pid: number;
  stdout(): string;
  stderr(): string;
  /** Listener (and "admin") ports, from the `listening on` lines. */
  ports: Record<string, number>;
  /** Resolves with the exit code (or the signal's name). */
  exited: Promise<number | string>;
}

const running: ProxyProcess[] = [];

async function spawnProxy(file: string, args: string[] = []): Promise<ProxyProcess> {
  const child = spawn(process.execPath, [TIDE_BIN, 'proxy', '-c', file, '--log-level', 'warn', ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout?.on('data', (d) => {
    out += d;
  });
  child.stderr?.on('data', (d) => {
    err += d;
  });
  const exited = new Promise<number | string>((r) => child.once('exit', (code, signal) => r(code ?? signal ?? -1)));
  const p: ProxyProcess = { child, pid: child.pid as number, stdout: () => out, stderr: () => err, ports: {}, exited };
  running.push(p);
  let exitedEarly: number | string | undefined;
  void exited.then((c) => {
    exitedEarly = c;
  });
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    if (exitedEarly !== undefined) throw new Error(`tide proxy exited (${exitedEarly}) before listening:\n${out}\n${err}`);
    if (/admin listening on/.test(out) && /main listening on/.test(out)) {
      for (const m of out.matchAll(/tide proxy: (\S+) listening on \S+:(\d+)/g)) p.ports[m[1] as string] = Number(m[2]);
      return p;
    }
    await sleep(25);
  }
  throw new Error(`tide proxy did not print "listening on" in time:\n${out}\n${err}`);
}

function lineOf(text: string, marker: string): number {
  return text.split('\n').findIndex((l) => l.includes(marker)) + 1;
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

describe('tide proxy (CLI)', () => {
  let a: Upstream;
  let b: Upstream;
  let dir: string;

  const config = (cluster: string, routesBefore = '') => twoClusterConfig(a, b, cluster, routesBefore);
  const newRoute = `
      - name: fresh
        match: { path: { exact: /new } }
        directResponse: { status: 200, body: new route }`;

  const ask = async (port: number, path = '/') => {
    const r = await http(port, 'cli.test', path, { timeoutMs: 3000 });
    return `${r.status} ${r.headers['x-upstream'] ?? r.text}`;
  };

  beforeAll(async () => {
    a = await startUpstream('a');
    b = await startUpstream('b');
    dir = tempDir('tide-proxy-cli-');
  });

  afterAll(async () => {
    for (const p of running) await stopProcess(p, 'SIGKILL', 2000);
    await a?.close();
    await b?.close();
  });

  it('--check accepts a good file and exits 0', async () => {
    const file = join(dir, 'good.yaml');
    writeFileSync(file, config('a'));
    const r = await tide(['proxy', '-c', file, '--check']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('ok (1 listeners, 1 virtual hosts, 2 clusters)');
  });

  it('--check rejects a bad file, exiting non-zero and printing file:line:col', async () => {
    const file = join(dir, 'bad.yaml');
    const text = config('nope');
    writeFileSync(file, text);
    const r = await tide(['proxy', '-c', file, '--check']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(new RegExp(`${escapeRe(file)}:${lineOf(text, 'cluster: nope')}:\\d+: .*no cluster named "nope"`));

    const schema = join(dir, 'bad-schema.yaml');
    const text2 = config('a').replace('port: 0', 'port: zero');
    writeFileSync(schema, text2);
    const r2 = await tide(['proxy', '-c', schema, '--check']);
    expect(r2.code).not.toBe(0);
    expect(r2.stderr).toMatch(new RegExp(`${escapeRe(schema)}:${lineOf(text2, 'port: zero')}:\\d+: /listeners/0/port`));
  });

  it('refuses to start on a bad file, exiting non-zero', async () => {
    const file = join(dir, 'bad-start.yaml');
    const text = config('a').replace('domains:', 'domainz:');
    writeFileSync(file, text);
    const r = await tide(['proxy', '-c', file]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(new RegExp(`${escapeRe(file)}:${lineOf(text, 'domainz:')}:\\d+: `));
    expect(r.stdout).not.toContain('listening on');
  });

  describe('watching the file', () => {
    let file: string;
    let p: ProxyProcess;

    beforeAll(async () => {
      file = join(dir, 'watched.yaml');
      writeFileSync(file, config('a'));
      p = await spawnProxy(file);
    });

    it('prints "listening on" for each listener and answers', async () => {
      expect(p.stdout()).toMatch(/tide proxy: main listening on 127\.0\.0\.1:\d+/);
      expect(p.stdout()).toMatch(/tide proxy: admin listening on 127\.0\.0\.1:\d+/);
      expect(await ask(p.ports.main as number)).toBe('200 a');
      const ready = await http(p.ports.admin as number, '127.0.0.1', '/ready', { timeoutMs: 3000 });
      expect(ready.status).toBe(200);
    });

    it('applies an edited file (new route, other cluster) without a restart', async () => {
      const port = p.ports.main as number;
      writeFileSync(file, config('b', newRoute));
      await eventually(async () => (await ask(port, '/new')) === '200 new route', 5000, 50);
      expect(await ask(port)).toBe('200 b');
      await eventually(() => p.stderr().includes('config version 2 applied'), 2000);
      const cfg = JSON.parse((await http(p.ports.admin as number, '127.0.0.1', '/config', { timeoutMs: 3000 })).text) as { version: number };
      expect(cfg.version).toBe(2);
    });

    it('applies a file replaced by a rename (as editors and config tools write it)', async () => {
      const port = p.ports.main as number;
      const tmp = join(dir, '.watched.yaml.tmp');
      writeFileSync(tmp, config('a', newRoute.replace('/new', '/renamed').replace('new route', 'renamed route')));
      renameSync(tmp, file);
      await eventually(async () => (await ask(port, '/renamed')) === '200 renamed route', 5000, 50);
      expect(await ask(port)).toBe('200 a');
      // Back to the previous file for the next test.
      writeFileSync(file, config('b', newRoute));
      await eventually(async () => (await ask(port, '/new')) === '200 new route', 5000, 50);
    });

    it('keeps the running config when the file breaks, printing "config rejected" with file:line:col', async () => {
      const port = p.ports.main as number;
      const broken = config('b', newRoute).replace('backends: [{ cluster: b }]', 'backends: [{ cluster: b }');
      writeFileSync(file, broken);
      await eventually(() => p.stderr().includes('config rejected'), 5000);
      expect(p.stderr()).toMatch(new RegExp(`config rejected, still running version 4:\\n.*${escapeRe(file)}:\\d+:\\d+: `));
      for (let i = 0; i < 3; i++) {
        expect(await ask(port, '/new')).toBe('200 new route');
        expect(await ask(port)).toBe('200 b');
      }
      const cfg = JSON.parse((await http(p.ports.admin as number, '127.0.0.1', '/config', { timeoutMs: 3000 })).text) as {
        version: number;
        lastError: string | null;
      };
      expect(cfg.version).toBe(4);
      expect(cfg.lastError).toContain(file);

      // Fixed again: applied as version 5.
      writeFileSync(file, config('a'));
      await eventually(async () => (await ask(port)) === '200 a', 5000, 50);
      expect(await ask(port, '/new')).toBe('200 a');
      await eventually(() => p.stderr().includes('config version 5 applied'), 2000);
    });

    it('exits 0 on SIGTERM', async () => {
      expect(await stopProcess(p, 'SIGTERM')).toBe(0);
      expect(p.stderr()).toContain('SIGTERM');
    });
  });

  describe('with --no-watch', () => {
    it('reloads on SIGHUP only, and exits 0 on SIGTERM', async () => {
      const file = join(dir, 'hup.yaml');
      writeFileSync(file, config('a'));
      const p = await spawnProxy(file, ['--no-watch']);
      const port = p.ports.main as number;
      expect(await ask(port)).toBe('200 a');

      writeFileSync(file, config('b', newRoute));
      await sleep(500);
      expect(await ask(port)).toBe('200 a');

      process.kill(p.pid, 'SIGHUP');
      await eventually(async () => (await ask(port, '/new')) === '200 new route', 5000, 50);
      expect(await ask(port)).toBe('200 b');
      expect(p.stderr()).toContain('config version 2 applied');

      expect(await stopProcess(p, 'SIGTERM')).toBe(0);
    });
  });
});
