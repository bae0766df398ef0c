/**
 * `tide apply -f` through a real `tide up`: every problem reported at its line and column,
 * all or nothing, dry runs that change nothing, and Secrets and Configs reaching a function.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import autocannon from 'autocannon';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KIND_SCHEMAS } from '../../lib/config/resources.ts';
import { apiFetch, eventually, FIXTURES, http, ROOT, startTide, stopTide, type TideProcess, tempDir, tide } from '../helpers/tide.ts';

let t: TideProcess;
const ECHO = join(ROOT, 'examples', 'echo.ts');

beforeAll(async () => {
  t = await startTide();
});

afterAll(async () => {
  await stopTide(t);
});

/** Writes `text` as app.yaml in a fresh folder and applies it. */
async function apply(text: string, ...flags: string[]) {
  const dir = tempDir('tide-apply-');
  const file = join(dir, 'app.yaml');
  writeFileSync(file, text);
  const r = await tide(['apply', '-f', file, ...flags], { dataDir: t.dataDir, cwd: dir });
  return { ...r, file };
}

/** A Secret or Config document with `data` written inline. */
const data = (kind: 'Secret' | 'Config', name: string, inline: string) => `apiVersion: tide.dev/v1
kind: ${kind}
metadata: { name: ${name} }
spec:
  data: ${inline}
`;

const fn = (name: string, extra = '') => `apiVersion: tide.dev/v1
kind: Function
metadata:
  name: ${name}
spec:
  source: ${ECHO}
${extra}`;

describe('tide apply', () => {
  it('creates Secrets, Configs and a Function whose env takes their values; applying again changes nothing', async () => {
    const text = `${data('Secret', 'keys', '{ token: s3cret }')}---
${data('Config', 'settings', '{ greeting: from-config }')}---
${fn(
  'echoed',
  `  env:
    - { name: GREETING, valueFrom: { configKeyRef: { name: settings, key: greeting } } }
    - { name: TOKEN, valueFrom: { secretKeyRef: { name: keys, key: token } } }
  resources: { memory: 64Mi, cpu: 250m }
  timeout: 5s
  scaling: { maxScale: 3, scaleToZeroGracePeriod: 45s }`,
)}`;
    const dry = await apply(text, '--dry-run');
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout).toBe('secret/keys created (dry run)\nconfig/settings created (dry run)\nfunction/echoed created (echoed-00001) (dry run)\n');
    expect((await tide(['get', 'functions'], { dataDir: t.dataDir })).stdout).not.toMatch(/echoed/); // a dry run changes nothing
    const r = await apply(text);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe('secret/keys created\nconfig/settings created\nfunction/echoed created (echoed-00001)\n');
    const res = await http(t.gatewayPort, 'echoed.localhost', '/');
    expect(JSON.parse(res.text).greeting).toBe('from-config');
    const d = JSON.parse((await tide(['describe', 'echoed', '-o', 'json'], { dataDir: t.dataDir })).stdout) as {
      secrets: string[];
      config: { memoryMb: number; cpuMillis: number; timeoutMs: number; scaling: { maxScale: number; scaleToZeroGracePeriodMs: number } };
    };
    expect(d.secrets).toEqual(['TOKEN']);
    expect(d.config).toMatchObject({ memoryMb: 64, cpuMillis: 250, timeoutMs: 5000, scaling: { maxScale: 3, scaleToZeroGracePeriodMs: 45_000 } });
    const again = await apply(text);
    expect(again.stdout).toBe('secret/keys unchanged\nconfig/settings unchanged\nfunction/echoed unchanged (echoed-00001)\n');
    const changed = await apply(text.replace('from-config', 'changed'));
    expect(changed.stdout).toMatch(/config\/settings configured\nfunction\/echoed configured \(echoed-00002\)/);
    expect(JSON.parse((await http(t.gatewayPort, 'echoed.localhost', '/')).text).greeting).toBe('changed');
  });

  it('reports every schema problem at its line and column, with a guess for a misspelled field, and applies nothing', async () => {
    const text = `${data('Secret', 'good-secret', '{ a: b }')}---
${fn(
  'typo',
  `  resources:
    memroy: 128Mi
  timeout: soon
  scaling:
    minScale: -1`,
)}
---
apiVersion: tide.dev/v2
kind: Function
metadata: { name: wrong-version }
spec: {}
`;
    const r = await apply(text);
    expect(r.code).toBe(1);
    const lines = r.stderr.trim().split('\n');
    expect(lines).toEqual([
      'error: app.yaml:14:5: [doc 2]/spec/resources/memroy: unknown field "memroy" (did you mean "memory"?)',
      expect.stringMatching(/^app\.yaml:15:12: \[doc 2\]\/spec\/timeout: must be a duration of at least 1ms like 500ms, 30s, 2m \(got "soon"\)$/),
      'app.yaml:17:15: [doc 2]/spec/scaling/minScale: must be >= 0',
      'app.yaml:19:13: [doc 3]/apiVersion: must be one of "tide.dev/v1"',
      '4 problems; nothing was applied',
    ]);
    expect((await tide(['apply', '-f', r.file, '--dry-run'], { dataDir: t.dataDir })).code).toBe(1);
    const secrets = await apiFetch(t, '/v1/functions');
    expect(await secrets.text()).not.toMatch(/typo/);
  });

  it('applies nothing when one reference is wrong, naming it where it is written', async () => {
    const text = `${data('Secret', 'fine', '{ k: v }')}---
${fn(
  'needs-config',
  `  env:
    - name: X
      valueFrom:
        configKeyRef: { name: missing, key: x }
    - name: Y
      valueFrom:
        secretKeyRef: { name: fine, key: nope }`,
)}`;
    const r = await apply(text);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/app\.yaml:16:23: \[doc 2\]\/spec\/env\/0\/valueFrom\/configKeyRef: Config "missing" does not exist/);
    expect(r.stderr).toMatch(/app\.yaml:19:23: \[doc 2\]\/spec\/env\/1\/valueFrom\/secretKeyRef: Secret "fine" has no key "nope" \(it has k\)/);
    // The good Secret in the same apply was not written either.
    const dry = await apply(text.replace(/---[\s\S]*$/, ''), '--dry-run');
    expect(dry.stdout).toBe('secret/fine created (dry run)\n');
  });

  it('names a duplicate, a missing source file, and a module without fetch, where they are written', async () => {
    const dup = await apply(`${fn('twice')}---\n${fn('twice')}`);
    expect(dup.code).toBe(1);
    expect(dup.stderr).toMatch(/app\.yaml:11:9: \[doc 2\]\/metadata\/name: Function\/twice is given twice \(first at .*app\.yaml:4:9\)/);
    const missing = await apply(`apiVersion: tide.dev/v1
kind: Function
metadata: { name: nofile }
spec:
  source: ./not-there.ts
`);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/app\.yaml:5:11: \/spec\/source: .*not-there\.ts/);
    const noFetch = await apply(`apiVersion: tide.dev/v1
kind: Function
metadata: { name: nofetch }
spec:
  source: ${join(FIXTURES, 'bad', 'no-fetch.ts')}
`);
    expect(noFetch.code).toBe(1);
    expect(noFetch.stderr).toMatch(/app\.yaml:5:11: \/spec\/source: .*fetch/);
  });

  it('diffs field by field (never showing secret values), and prunes what it created that the files dropped', async () => {
    const base = `${data('Secret', 'pkeys', '{ token: one }')}---
${data('Config', 'pconf', '{ mode: a }')}---
${fn('pruned-later', '  env: [{ name: MODE, valueFrom: { configKeyRef: { name: pconf, key: mode } } }]\n')}---
${fn('kept', '  resources: { memory: 128Mi }\n')}`;
    expect((await apply(base)).code).toBe(0);
    // A function deployed by hand is not the files' to prune.
    expect((await tide(['deploy', ECHO, '--name', 'by-hand'], { dataDir: t.dataDir })).code).toBe(0);
    const same = await apply(base, '--dry-run');
    expect(same.stdout).toMatch(/function\/kept unchanged/);
    const dir = tempDir('tide-diff-');
    const edited = base.replace('token: one', 'token: two').replace('mode: a', 'mode: b').replace('memory: 128Mi', 'memory: 64Mi');
    writeFileSync(join(dir, 'app.yaml'), edited);
    const d = await tide(['diff', '-f', join(dir, 'app.yaml')], { dataDir: t.dataDir, cwd: dir });
    expect(d.code).toBe(1);
    expect(d.stdout).toContain('secret/pkeys: changes\n  token: changed\n');
    expect(d.stdout).not.toContain('two');
    expect(d.stdout).toContain('config/pconf: changes\n  mode: "a" → "b"\n');
    expect(d.stdout).toContain('function/pruned-later: changes\n  env.MODE: "a" → "b"\n');
    expect(d.stdout).toContain('function/kept: changes\n  config.memoryMb: 128 → 64\n');
    const none = await tide(['diff', '-f', join(dir, 'app.yaml')], { dataDir: t.dataDir, cwd: dir });
    expect(none.code).toBe(1); // the diff itself changed nothing
    // Drop the Config and one Function from the files: --prune deletes them, never the hand-made one.
    const trimmed = `${fn('kept', '  resources: { memory: 128Mi }\n')}---
${data('Secret', 'pkeys', '{ token: one }')}`;
    const p = await apply(trimmed, '--prune', '--dry-run');
    expect(
      p.stdout
        .split('\n')
        .filter((l) => l.includes('pruned'))
        .sort(),
    ).toEqual(expect.arrayContaining([expect.stringMatching(/^config\/pconf pruned/), expect.stringMatching(/^function\/pruned-later pruned/)]));
    expect(p.stdout).not.toMatch(/by-hand/);
    expect(p.stdout).toMatch(/function\/echoed pruned/); // applied by the first test, not in these files
    const pruned = await apply(trimmed, '--prune');
    expect(pruned.code, pruned.stderr).toBe(0);
    const names = (await tide(['get', 'functions', '-o', 'json'], { dataDir: t.dataDir })).stdout;
    expect(names).not.toMatch(/pruned-later/);
    expect(names).toMatch(/by-hand/);
    expect(names).toMatch(/"kept"/);
  });

  it('splits a Route between revisions by weight, exactly, routes by header, and gives a tagged revision its own host', async () => {
    const web = (greeting: string) => fn('web', `  env: [{ name: GREETING, value: ${greeting} }]\n`);
    expect((await apply(web('v1'))).stdout).toBe('function/web created (web-00001)\n');
    expect((await apply(web('v2'))).stdout).toBe('function/web configured (web-00002)\n');
    const route = `apiVersion: tide.dev/v1
kind: Route
metadata: { name: shop }
spec:
  hosts: [shop.localhost]
  rules:
    - match:
        headers: [{ name: x-beta, exact: "yes" }]
      split: [{ revision: web-00002, weight: 100 }]
    - split:
        - { revision: web-00001, weight: 90 }
        - { function: web, weight: 10 }
  tags:
    canary: web-00002
`;
    const r = await apply(route);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toBe('route/shop created\n');
    const greeting = async (host: string, headers: Record<string, string> = {}) =>
      JSON.parse((await http(t.gatewayPort, host, '/', { headers })).text).greeting as string;
    const seen: string[] = [];
    for (let i = 0; i < 100; i++) seen.push(await greeting('shop.localhost'));
    // Smooth weighted round robin: 90/10 over any 100 requests, not only on average.
    expect(seen.filter((g) => g === 'v1').length).toBe(90);
    expect(seen.filter((g) => g === 'v2').length).toBe(10);
    expect(await greeting('shop.localhost', { 'x-beta': 'yes' })).toBe('v2');
    expect(await greeting('canary.shop.localhost')).toBe('v2');
    expect(await greeting('web.localhost')).toBe('v2'); // the function's own host: its serving revision
    // Per backend, what the gateway saw: web-00001 had exactly the 90 split requests.
    const described = JSON.parse((await tide(['describe', 'route', 'shop', '-o', 'json'], { dataDir: t.dataDir })).stdout) as {
      rules: { split: { resolved: string; traffic: { requests: number; errorRate: number } }[] }[];
    };
    expect(described.rules[1]?.split[0]).toMatchObject({ resolved: 'web-00001', traffic: { requests: 90, errorRate: 0 } });
    expect(described.rules[1]?.split[1]).toMatchObject({ function: 'web', resolved: 'web-00002' });
    const text = (await tide(['describe', 'route', 'shop'], { dataDir: t.dataDir })).stdout;
    expect(text).toMatch(/ 90% {2}web-00001: [\d.]+ req\/s, 0\.0% errors, p99 [\d.]+ ms \(last minute\)/);
    expect(text).toMatch(/Tags:\n {2}canary: web-00002: /);
    expect((await tide(['get', 'routes'], { dataDir: t.dataDir })).stdout).toMatch(/shop\s+shop\.localhost\s+2\s+web-00001=90 web-00002=10\s+canary=web-00002/);
    // Blue-green: everything to the old revision, in one apply.
    expect((await apply(route.replace('weight: 90', 'weight: 100').replace('{ function: web, weight: 10 }', '{ function: web, weight: 0 }'))).code).toBe(0);
    const after: string[] = [];
    for (let i = 0; i < 10; i++) after.push(await greeting('shop.localhost'));
    expect(new Set(after)).toEqual(new Set(['v1']));
  });

  it('refuses a Route whose weights do not add up to 100 or that names a revision that does not exist', async () => {
    const bad = await apply(`apiVersion: tide.dev/v1
kind: Route
metadata: { name: broken }
spec:
  rules:
    - split:
        - { revision: web-00001, weight: 50 }
        - { revision: web-00002, weight: 40 }
`);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/app\.yaml:7:9: \/spec\/rules\/0\/split: the weights add up to 90, not 100/);
    const missing = await apply(`apiVersion: tide.dev/v1
kind: Route
metadata: { name: broken }
spec:
  rules:
    - split: [{ revision: web-00099, weight: 100 }]
      match: { path: { regex: "([" } }
`);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/\/spec\/rules\/0\/split\/0\/revision: revision web-00099 does not exist/);
    expect(missing.stderr).toMatch(/\/spec\/rules\/0\/match\/path\/regex: not a valid regular expression/);
  });

  it("`tide split` shifts a function's own host between revisions: a blue-green switch under load drops nothing", async () => {
    for (const g of ['blue', 'green']) {
      const d = await tide(['deploy', ECHO, '--name', 'bg', '--env', `GREETING=${g}`, '--min-scale', '1'], { dataDir: t.dataDir });
      expect(d.code, d.stderr).toBe(0);
    }
    const first = await tide(['split', 'bg', 'bg-00001=100', '--tag', 'next=bg-00002'], { dataDir: t.dataDir });
    expect(first.code, first.stderr).toBe(0);
    expect(first.stdout).toMatch(/^route\/bg created: bg-00001 100% on bg\.localhost/);
    const greeting = async (host: string) => JSON.parse((await http(t.gatewayPort, host, '/')).text).greeting as string;
    expect(await greeting('bg.localhost')).toBe('blue');
    expect(await greeting('next.bg.localhost')).toBe('green');
    const load = autocannon({ url: `http://127.0.0.1:${t.gatewayPort}/`, headers: { host: 'bg.localhost' }, connections: 8, duration: 3 });
    await new Promise((r) => setTimeout(r, 1000));
    const switched = await tide(['split', 'bg', 'bg-00002=100'], { dataDir: t.dataDir });
    expect(switched.code, switched.stderr).toBe(0);
    const result = await load;
    expect({ errors: result.errors, timeouts: result.timeouts, non2xx: result.non2xx }).toEqual({ errors: 0, timeouts: 0, non2xx: 0 });
    expect(result.requests.total).toBeGreaterThan(100);
    expect(await greeting('bg.localhost')).toBe('green');
    const bad = await tide(['split', 'bg', 'bg-00001=50', 'bg-00002=40'], { dataDir: t.dataDir });
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/the weights add up to 90, not 100/);
    const missing = await tide(['split', 'bg', 'bg-00007=100'], { dataDir: t.dataDir });
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/revision bg-00007 does not exist/);
  }, 30_000);

  it('a Route to a revision that had stopped starts it again and answers from it, not from another one', async () => {
    // The old revision takes half a second to be ready (a startup probe that waits), so answering
    // before it is ready would show: the request would go elsewhere or fail.
    const slow = ['--startup', '/', '--probe-option', 'startup.initialDelaySeconds=0.5'];
    for (const g of ['old', 'new']) {
      const d = await tide(['deploy', ECHO, '--name', 'back', '--env', `GREETING=${g}`, ...(g === 'old' ? slow : [])], { dataDir: t.dataDir });
      expect(d.code, d.stderr).toBe(0);
    }
    // back-00001 stops once back-00002 serves; the split brings it back before it answers.
    await eventually(async () => {
      const revs = JSON.parse((await tide(['get', 'revisions', 'back', '-o', 'json'], { dataDir: t.dataDir })).stdout) as {
        items: { name: string; status: unknown }[];
      };
      return revs.items.find((r) => r.name === 'back-00001')?.status === null ? true : undefined;
    });
    const r = await tide(['split', 'back', 'back-00001=100'], { dataDir: t.dataDir });
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse((await http(t.gatewayPort, 'back.localhost', '/')).text).greeting).toBe('old');
  });

  it('rolls a new revision out step by step and promotes it; rolls back one that starts failing', async () => {
    const FLAKY = join(FIXTURES, 'functions', 'flaky.ts');
    const deploy = (version: string, fail = '0') =>
      tide(
        ['deploy', FLAKY, '--name', 'ro', '--env', `VERSION=${version}`, '--env', `FAIL=${fail}`, '--min-scale', '1', '--change-cause', `release ${version}`],
        {
          dataDir: t.dataDir,
        },
      );
    expect((await deploy('1')).code).toBe(0);
    const r = await apply(`apiVersion: tide.dev/v1
kind: Rollout
metadata: { name: ro }
spec:
  steps:
    - { weight: 20, pause: 600ms }
    - { weight: 60, pause: 600ms }
  analysis: { maxErrorRate: 0.05, minRequests: 5 }
`);
    expect(r.code, r.stderr).toBe(0);
    // Traffic on the function's own host while rollouts run, bounded in count and time.
    let stop = false;
    const seen: string[] = [];
    const traffic = (async () => {
      for (let i = 0; i < 3000 && !stop; i++) {
        seen.push((await http(t.gatewayPort, 'ro.localhost', '/')).text.trim());
        await new Promise((res) => setTimeout(res, 5));
      }
    })();
    try {
      expect((await deploy('2')).code).toBe(0);
      const promoted = await tide(['rollout', 'status', 'ro', '--timeout', '20s'], { dataDir: t.dataDir });
      expect(promoted.code, promoted.stdout).toBe(0);
      expect(promoted.stdout).toMatch(/Progressing: step 1 of 2: 20% to ro-00002/);
      expect(promoted.stdout).toMatch(/Promoted: promoted after 2 steps/);
      expect(JSON.parse((await tide(['describe', 'ro', '-o', 'json'], { dataDir: t.dataDir })).stdout).servingRevision).toBe('ro-00002');
      expect(seen).toContain('ok 1');
      expect(seen).toContain('ok 2');
      // A new revision that fails: rolled back, the function keeps serving ro-00002.
      expect((await deploy('3', '1')).code).toBe(0);
      const rolledBack = await tide(['rollout', 'status', 'ro', '--timeout', '20s'], { dataDir: t.dataDir });
      expect(rolledBack.code, rolledBack.stdout).toBe(1);
      expect(rolledBack.stdout).toMatch(/RolledBack: rolled back at step 1: [\d.]+% of \d+ requests failed \(limit 5\.0%\)/);
    } finally {
      stop = true;
      await traffic;
    }
    expect(JSON.parse((await tide(['describe', 'ro', '-o', 'json'], { dataDir: t.dataDir })).stdout).servingRevision).toBe('ro-00002');
    const after = await http(t.gatewayPort, 'ro.localhost', '/');
    expect(after.text).toBe('ok 2\n');
    const history = (await tide(['rollout', 'history', 'ro'], { dataDir: t.dataDir })).stdout;
    expect(history).toMatch(/ro-00002\s+release 2\s+Promoted/);
    expect(history).toMatch(/ro-00003\s+release 3\s+RolledBack/);
  }, 60_000);

  it("applies a rule's timeout, fault injection and header edits to the functions behind it", async () => {
    expect((await tide(['deploy', join(FIXTURES, 'functions', 'sleepy.ts'), '--name', 'drill'], { dataDir: t.dataDir })).code).toBe(0);
    const r = await apply(`apiVersion: tide.dev/v1
kind: Route
metadata: { name: drill }
spec:
  hosts: [drill.localhost]
  rules:
    - match: { path: { prefix: /abort } }
      fault: { abort: { status: 503, percent: 100 } }
      split: [{ function: drill, weight: 100 }]
    - match: { path: { prefix: /slow } }
      timeout: 200ms
      split: [{ function: drill, weight: 100 }]
    - requestHeaders: { set: { x-drill: "on" } }
      responseHeaders: { set: { x-served-by: drill-route } }
      split: [{ function: drill, weight: 100 }]
`);
    expect(r.code, r.stderr).toBe(0);
    const aborted = await http(t.gatewayPort, 'drill.localhost', '/abort');
    expect(aborted.status).toBe(503);
    expect(aborted.headers['tide-proxy-error']).toBe('ERR_PROXY_FAULT');
    const slow = await http(t.gatewayPort, 'drill.localhost', '/slow?ms=2000');
    expect(slow.status).toBe(504);
    const ok = await http(t.gatewayPort, 'drill.localhost', '/?ms=0');
    expect(ok.status).toBe(200);
    expect(ok.headers['x-served-by']).toBe('drill-route');
    const bad = await apply(`apiVersion: tide.dev/v1
kind: Route
metadata: { name: drill2 }
spec:
  rules:
    - fault: { abort: { status: 200, percent: 10 } }
      split: [{ function: drill, weight: 100 }]
`);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/app\.yaml:6:33: \/spec\/rules\/0\/fault\/abort\/status: an injected abort must be a 4xx or 5xx status/);
  });

  it('retries a failed try on another backend, and mirrors a copy of requests to a shadow', async () => {
    const FLAKY = join(FIXTURES, 'functions', 'flaky.ts');
    for (const fail of ['1', '0']) {
      const d = await tide(['deploy', FLAKY, '--name', 'half', '--env', `FAIL=${fail}`, '--env', 'VERSION=x', '--min-scale', '1'], { dataDir: t.dataDir });
      expect(d.code, d.stderr).toBe(0);
    }
    expect((await tide(['deploy', join(FIXTURES, 'functions', 'logger.ts'), '--name', 'shadow'], { dataDir: t.dataDir })).code).toBe(0);
    const route = (retries: string) => `apiVersion: tide.dev/v1
kind: Route
metadata: { name: half }
spec:
  hosts: [half.localhost]
  rules:
    - split:
        - { revision: half-00001, weight: 50 }
        - { revision: half-00002, weight: 50 }
      mirror: { function: shadow, percent: 100 }
${retries}`;
    expect((await apply(route(''))).code).toBe(0);
    const without = await Promise.all(Array.from({ length: 10 }, (_, i) => http(t.gatewayPort, 'half.localhost', `/plain-${i}`)));
    expect(without.filter((r) => r.status === 500).length).toBe(5); // half the split answers 500
    expect((await apply(route('      retries: { attempts: 2, on: [5xx] }\n'))).code).toBe(0);
    const withRetries = await Promise.all(Array.from({ length: 10 }, (_, i) => http(t.gatewayPort, 'half.localhost', `/retried-${i}`)));
    expect(withRetries.map((r) => r.status)).toEqual(Array(10).fill(200));
    expect(withRetries[0]?.text).toBe('ok x\n');
    // The shadow saw a copy of every request; the clients never saw its answers.
    const logs = await eventually(async () => {
      const l = (await tide(['logs', 'shadow'], { dataDir: t.dataDir })).stdout;
      return l.includes('seen /retried-9') && l.includes('seen /plain-9') ? l : undefined;
    });
    expect(logs.match(/seen \/(plain|retried)-\d/g)?.length).toBe(20);
  });

  it('pauses, promotes by hand and undoes a rollout', async () => {
    const deploy = (v: string) => tide(['deploy', join(FIXTURES, 'functions', 'flaky.ts'), '--name', 'hand', '--env', `VERSION=${v}`], { dataDir: t.dataDir });
    expect((await deploy('1')).code).toBe(0);
    const r = await apply(`apiVersion: tide.dev/v1
kind: Rollout
metadata: { name: hand }
spec:
  steps: [{ weight: 10, pause: 10m }]
`);
    expect(r.code, r.stderr).toBe(0);
    expect((await deploy('2')).code).toBe(0);
    const status = async () => (await tide(['rollout', 'status', 'hand', '--no-watch'], { dataDir: t.dataDir })).stdout.trim();
    await eventually(async () => ((await status()).startsWith('Progressing: step 1 of 1: 10% to hand-00002') ? true : undefined));
    expect((await tide(['rollout', 'pause', 'hand'], { dataDir: t.dataDir })).stdout).toBe('pause requested for hand\n');
    await eventually(async () => ((await status()) === 'Progressing: paused at step 1 of 1 (10% to hand-00002)' ? true : undefined));
    const undoTooSoon = await tide(['rollout', 'undo', 'hand'], { dataDir: t.dataDir });
    expect(undoTooSoon.code).toBe(2);
    expect(undoTooSoon.stderr).toMatch(/hand is rolling out hand-00002: abort it first/);
    expect((await tide(['rollout', 'promote', 'hand'], { dataDir: t.dataDir })).code).toBe(0);
    await eventually(async () => ((await status()) === 'Promoted: promoted by hand' ? true : undefined));
    expect((await tide(['get', 'rollouts'], { dataDir: t.dataDir })).stdout).toMatch(/\nhand\s+hand\s+Promoted\s+hand-00002\s+-\s+-/);
    expect((await http(t.gatewayPort, 'hand.localhost', '/')).text).toBe('ok 2\n');
    const undo = await tide(['rollout', 'undo', 'hand'], { dataDir: t.dataDir });
    expect(undo.stdout).toBe('hand: hand-00002 → hand-00001\n');
    await eventually(async () => ((await status()) === 'Stable: hand-00001 serves (moved by hand)' ? true : undefined));
    expect((await http(t.gatewayPort, 'hand.localhost', '/')).text).toBe('ok 1\n');
  });

  it('publishes one JSON Schema per kind, the same as `tide schema` prints', async () => {
    for (const kind of Object.keys(KIND_SCHEMAS)) {
      const r = await tide(['schema', kind.toLowerCase()]);
      expect(r.code).toBe(0);
      expect(JSON.parse(readFileSync(join(ROOT, 'schemas', 'v1', `${kind.toLowerCase()}.json`), 'utf8'))).toEqual(JSON.parse(r.stdout));
    }
  });
});
