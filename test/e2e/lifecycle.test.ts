/**
 * Deploy semantics, bad input, restarts and shutdown, each against real `tide up` processes.
 */
import { mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { apiFetch, FIXTURES, http, pidAlive, ROOT, startTide, stopTide, type TideProcess, tempDir, tide } from '../helpers/tide.ts';

const started: TideProcess[] = [];
async function up(opts: Parameters<typeof startTide>[0] = {}): Promise<TideProcess> {
  const t = await startTide(opts);
  started.push(t);
  return t;
}
afterEach(async () => {
  for (const t of started.splice(0)) await stopTide(t, 'SIGKILL');
});

function writeFn(dir: string, name: string, text: string): string {
  const file = join(dir, `${name}.ts`);
  writeFileSync(file, `export default { fetch: () => new Response(${JSON.stringify(text)}) };\n`);
  return file;
}

const json = <T>(s: string) => JSON.parse(s) as T;
type Fns = { items: { name: string; servingRevision: string; latestRevision: string; ready: boolean }[] };

describe('deploys and revisions', () => {
  it('creates a revision per change, reuses identical code, rolls back and deletes', async () => {
    const t = await up();
    const src = tempDir('tide-src-');
    const get = () => http(t.gatewayPort, 'greet.localhost');

    const d1 = await tide(['deploy', writeFn(src, 'greet', 'v1')], { dataDir: t.dataDir });
    expect(d1.code, d1.stderr).toBe(0);
    expect(d1.stdout).toMatch(/^Deployed greet revision greet-00001 in \d+ ms\nURL: http:\/\/greet\.localhost:\d+\/\n$/);
    expect((await get()).text).toBe('v1');

    const same = await tide(['deploy', join(src, 'greet.ts')], { dataDir: t.dataDir });
    expect(same.code).toBe(0);
    expect(same.stdout).toContain('Unchanged: greet revision greet-00001');

    const d2 = await tide(['deploy', writeFn(src, 'greet', 'v2'), '-o', 'json'], { dataDir: t.dataDir });
    const r2 = json<{ created: boolean; revision: { name: string }; url: string }>(d2.stdout);
    expect(r2).toMatchObject({ created: true, revision: { name: 'greet-00002' } });
    expect((await get()).text).toBe('v2');

    const revs = await tide(['get', 'revisions', 'greet'], { dataDir: t.dataDir });
    expect(revs.stdout.split('\n')[0]).toMatch(/^NAME\s+FUNCTION\s+SERVING\s+READY\s+DIGEST\s+AGE$/);
    expect(revs.stdout).toMatch(/greet-00002\s+greet\s+yes\s+True/);

    const rb = await tide(['rollback', 'greet'], { dataDir: t.dataDir });
    expect(rb.stdout).toContain('Rolled back greet: greet-00002 → greet-00001');
    expect((await get()).text).toBe('v1');
    const rbNone = await tide(['rollback', 'greet'], { dataDir: t.dataDir });
    expect(rbNone.code).toBe(1);
    expect(rbNone.stderr).toContain('no revision older than greet-00001');
    const rbTo = await tide(['rollback', 'greet', '--to', 'greet-00002'], { dataDir: t.dataDir });
    expect(rbTo.code).toBe(0);
    expect((await get()).text).toBe('v2');
    const rbBad = await tide(['rollback', 'greet', '--to', 'greet-00009'], { dataDir: t.dataDir });
    expect(rbBad.stderr).toContain('function greet has no revision greet-00009');

    const table = await tide(['get', 'functions'], { dataDir: t.dataDir });
    expect(table.stdout.split('\n')[0]).toMatch(/^NAME\s+REVISION\s+URL\s+READY\s+INSTANCES\s+AGE$/);
    expect(table.stdout).toMatch(/greet\s+greet-00002\s+http:\/\/greet\.localhost:\d+\s+True\s+1\/1\s+\d+s/);
    const yaml = await tide(['get', 'functions', '-o', 'yaml'], { dataDir: t.dataDir });
    expect(yaml.stdout).toMatch(/items:\n\s+- name: greet\n/);

    const del = await tide(['delete', 'greet'], { dataDir: t.dataDir });
    expect(del.stdout).toContain('Deleted greet (2 revisions: greet-00001, greet-00002)');
    expect((await get()).status).toBe(404);
    const gone = await tide(['describe', 'greet'], { dataDir: t.dataDir });
    expect(gone.code).toBe(1);
    expect(gone.stderr).toContain('error: function greet not found');
  });

  it('refuses bad functions with file:line:column and changes nothing', async () => {
    const t = await up();
    const src = tempDir('tide-src-');
    expect((await tide(['deploy', writeFn(src, 'keep', 'original')], { dataDir: t.dataDir })).code).toBe(0);
    const before = await tide(['get', 'revisions', '-o', 'json'], { dataDir: t.dataDir });

    const syntax = await tide(['deploy', join(FIXTURES, 'bad/syntax-error.ts'), '--name', 'keep'], { dataDir: t.dataDir });
    expect(syntax.code).toBe(1);
    expect(syntax.stderr).toMatch(/syntax-error\.ts:4:3: error: Expected "\)" but found "}"/);
    expect(syntax.stderr).not.toMatch(/\n\s+at /); // no stack trace

    const noDefault = await tide(['deploy', join(FIXTURES, 'bad/no-default.ts'), '--name', 'keep'], { dataDir: t.dataDir });
    expect(noDefault.stderr).toMatch(/no-default\.ts:1:1: error: no default export/);

    const noFetch = await tide(['deploy', join(FIXTURES, 'bad/no-fetch.ts'), '--name', 'keep'], { dataDir: t.dataDir });
    expect(noFetch.code).toBe(1);
    expect(noFetch.stderr).toContain('the default export has no fetch(request, env, ctx) method');

    const topThrow = await tide(['deploy', join(FIXTURES, 'bad/top-throw.ts'), '--name', 'keep'], { dataDir: t.dataDir });
    expect(topThrow.stderr).toContain('fails at load');

    for (const bad of ['Bad_Name', 'x'.repeat(60), '-lead']) {
      const r = await tide(['deploy', join(src, 'keep.ts'), '--name', bad], { dataDir: t.dataDir });
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(`invalid function name "${bad}"`);
    }
    const badEnv = await tide(['deploy', join(src, 'keep.ts'), '--env', 'NOEQUALS'], { dataDir: t.dataDir });
    expect(badEnv.code).toBe(2);
    expect(badEnv.stderr).toContain('--env must look like KEY=VALUE');

    const after = await tide(['get', 'revisions', '-o', 'json'], { dataDir: t.dataDir });
    expect(after.stdout).toBe(before.stdout.replace(/"ageMs": \d+/g, ''));
    expect((await http(t.gatewayPort, 'keep.localhost')).text).toBe('original');
  });

  it('refuses API calls without the token, and the token file is private', async () => {
    const t = await up();
    expect(t.apiUrl).toMatch(/^https:\/\//);
    const res = await apiFetch(t, '/v1/functions', { token: false });
    expect(res.status).toBe(401);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('ERR_UNAUTHORIZED');
    const wrong = await apiFetch(t, '/v1/functions', { token: 'nope' });
    expect(wrong.status).toBe(401);
    const ok = await apiFetch(t, '/v1/functions');
    expect(ok.status).toBe(200);
    expect(statSync(join(t.dataDir, 'token')).mode & 0o777).toBe(0o600);
    // A refused request's body is read, so the keep-alive connection stays usable.
    const { Agent, request } = await import('node:https');
    const agent = new Agent({ keepAlive: true, maxSockets: 1, ca: readFileSync(join(t.dataDir, 'ca', 'bundle.pem'), 'utf8') });
    const url = new URL(t.apiUrl);
    const call = (method: string, path: string, auth: string, body?: Buffer, chunked = false) =>
      new Promise<number>((resolve, reject) => {
        const headers: Record<string, string> = { authorization: `Bearer ${auth}`, ...(chunked ? { 'transfer-encoding': 'chunked' } : {}) };
        const req = request({ host: url.hostname, port: url.port, path, method, agent, headers }, (res) => {
          res.resume();
          res.on('end', () => resolve(res.statusCode ?? 0));
        });
        req.setTimeout(4000, () => req.destroy(new Error('stalled')));
        req.on('error', reject);
        req.end(body);
      });
    expect(await call('POST', '/v1/functions/x/deploy', 'nope', Buffer.alloc(256 * 1024, 1))).toBe(401);
    expect(await call('GET', '/v1/functions', t.token)).toBe(200);
    // Over the API limit without a declared length: 413, not a parse error.
    expect(await call('POST', '/v1/functions/x/deploy', t.token, Buffer.alloc(65 * 1024 * 1024, 1), true)).toBe(413);
    agent.destroy();
    const cli = await tide(['get', 'functions', '--token', 'wrong'], { dataDir: t.dataDir });
    expect(cli.code).toBe(1);
    expect(cli.stderr).toContain('error: the API token is not valid');
  });
});

describe('restarts and shutdown', () => {
  it('after kill -9 and a restart, every function and revision is there and serving', async () => {
    const dataDir = tempDir();
    const src = tempDir('tide-src-');
    const t1 = await up({ dataDir });
    await tide(['deploy', writeFn(src, 'alpha', 'a1')], { dataDir });
    await tide(['deploy', writeFn(src, 'alpha', 'a2')], { dataDir });
    await tide(['deploy', writeFn(src, 'beta', 'b1')], { dataDir });
    await tide(['rollback', 'alpha'], { dataDir });
    const before = json<Fns>((await tide(['get', 'functions', '-o', 'json'], { dataDir })).stdout).items.map(({ name, servingRevision, latestRevision }) => ({
      name,
      servingRevision,
      latestRevision,
    }));
    process.kill(t1.pid, 'SIGKILL');
    await t1.exited;

    const t2 = await up({ dataDir });
    expect((await http(t2.gatewayPort, 'alpha.localhost')).text).toBe('a1');
    expect((await http(t2.gatewayPort, 'beta.localhost')).text).toBe('b1');
    const after = json<Fns>((await tide(['get', 'functions', '-o', 'json'], { dataDir })).stdout).items;
    expect(after.map(({ name, servingRevision, latestRevision }) => ({ name, servingRevision, latestRevision }))).toEqual(before);
    expect(after.every((f) => f.ready)).toBe(true);
    const d3 = await tide(['deploy', writeFn(src, 'alpha', 'a3')], { dataDir });
    expect(d3.stdout).toContain('alpha-00003');
  });

  it('SIGTERM stops accepting, lets in-flight requests finish, stops sandboxes and exits 0', async () => {
    const t = await up({ args: ['--deploy', join(FIXTURES, 'functions/faults.ts')] });
    const slow = http(t.gatewayPort, 'faults.localhost', '/sleep?ms=1500');
    await new Promise((r) => setTimeout(r, 300));
    process.kill(t.pid, 'SIGTERM');
    const r = await slow;
    expect(r.status).toBe(200);
    expect(r.text).toBe('slept 1500\n');
    expect(await t.exited).toBe(0);
    expect(pidAlive(t.pid)).toBe(false);
    expect(t.output()).toContain('draining in-flight requests');
    await expect(http(t.gatewayPort, 'faults.localhost', '/')).rejects.toThrow(/ECONNREFUSED/);
  });

  it('refuses a second tide up on the same data directory', async () => {
    const t = await up();
    await expect(startTide({ dataDir: t.dataDir })).rejects.toThrow(new RegExp(`another Tide \\(pid ${t.pid}\\) is running on`));
  });
});

describe('data directory problems give a clear message, never a stack trace', () => {
  it('a corrupt state database', async () => {
    const dataDir = tempDir();
    writeFileSync(join(dataDir, 'state.db'), 'garbage '.repeat(1000));
    const r = await tide(['up', '--port', '0', '--api-port', '0'], { dataDir });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^error: cannot open the state database .*state\.db: .+\nhint: the data directory may be damaged/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });
  it('a data directory that is a file', async () => {
    const file = join(tempDir(), 'not-a-dir');
    writeFileSync(file, 'x');
    const r = await tide(['up', '--port', '0', '--api-port', '0', '--data-dir', file]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`error: the data directory ${file} is not a directory`);
  });
  it('the CLI with no running Tide', async () => {
    const dataDir = join(tempDir(), 'missing');
    const r = await tide(['get', 'functions'], { dataDir });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^error: no running Tide found: .*endpoint\.json does not exist\nhint: start one with `tide up`/);
  });
  it('a Tide that has gone away', async () => {
    const dataDir = tempDir();
    mkdirSync(dataDir, { recursive: true });
    const { createServer } = await import('node:net');
    const port = await new Promise<number>((resolve) => {
      const s = createServer().listen(0, '127.0.0.1', () => {
        const p = (s.address() as { port: number }).port;
        s.close(() => resolve(p));
      });
    });
    writeFileSync(join(dataDir, 'endpoint.json'), JSON.stringify({ api: `http://127.0.0.1:${port}` }));
    writeFileSync(join(dataDir, 'token'), 'x'.repeat(43));
    const r = await tide(['get', 'functions'], { dataDir });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`error: cannot reach the Tide API at http://127.0.0.1:${port} (ECONNREFUSED)`);
    expect(r.stderr).toContain('hint: is `tide up` running?');
  });
});

describe('the CLI', () => {
  it('has --help on every command', async () => {
    for (const cmd of [[], ['up'], ['deploy'], ['get'], ['get', 'functions'], ['get', 'revisions'], ['describe'], ['delete'], ['logs'], ['rollback']]) {
      const r = await tide([...cmd, '--help']);
      expect(r.code, cmd.join(' ')).toBe(0);
      expect(r.stdout).toMatch(/^Usage: tide/);
    }
  });
  it('exits 2 on a usage error, with a pointer to --help', async () => {
    const r = await tide(['deploy']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('give a function file or --image PATH (one of them)');
    expect(r.stderr).toContain('see tide deploy --help');
    const u = await tide(['frobnicate']);
    expect(u.code).toBe(2);
  });
  it('says when a port is taken', async () => {
    const t = await up();
    const r = await tide(['up', '--data-dir', tempDir(), '--port', String(t.gatewayPort), '--api-port', '0']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/the port is taken/);
  });
  it('README quick start names the commands that exist', () => {
    const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
    expect(readme).toContain('npm run demo');
    expect(readme).toContain('npm test');
  });
});
