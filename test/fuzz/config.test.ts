/**
 * Fuzzing config files and the router:
 *  - mutated copies of the shipped examples (tide apply resources, the tide proxy config)
 *    either load or are refused with ERR_CONFIG_INVALID whose every problem says file:line:col;
 *    never another exception, never a hang;
 *  - the table router never throws on any host or path, and finds what a plain reference
 *    matcher finds (exact domains, path prefixes, first match wins).
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { loadResources } from '../../cli/apply.ts';
import { isTideError } from '../../lib/errors.ts';
import { ProxyMetrics } from '../../proxy/metrics.ts';
import { TableRouter } from '../../proxy/router/index.ts';
import type { RouteMatch } from '../../proxy/router/router.ts';
import { loadConfig } from '../../proxy/server.ts';
import { ROOT } from '../helpers/tide.ts';
import { budget, corpus } from './budget.ts';
import { mutated } from './mutate.ts';

const dir = mkdtempSync(join(tmpdir(), 'tide-fuzz-config-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const resourceExamples = [
  join(ROOT, 'examples/apply/app.yaml'),
  join(ROOT, 'examples/mesh/mesh.yaml'),
  ...readdirSync(join(ROOT, 'examples/routes')).map((f) => join(ROOT, 'examples/routes', f)),
]
  .map((f) => readFileSync(f, 'utf8'))
  .concat(corpus('config').filter((t) => t.startsWith('apiVersion')));
const proxyExamples = [readFileSync(join(ROOT, 'examples/proxy.yaml'), 'utf8'), ...corpus('config').filter((t) => t.startsWith('listeners'))];

function checkRefusal(err: unknown, file: string, input: string): void {
  if (!isTideError(err) || err.code !== 'ERR_CONFIG_INVALID') throw new Error(`not a config refusal for ${JSON.stringify(input)}: ${String(err)}`);
  for (const line of err.message.split('\n').filter((l) => l.startsWith(file) || l.includes('.yaml:'))) {
    expect(line, JSON.stringify(input)).toMatch(/\.yaml:\d+:\d+/);
  }
  expect(err.message, JSON.stringify(input)).toMatch(/\.yaml:\d+:\d+/);
}

describe('fuzz: config files', () => {
  it('tide apply: a mutated resource file loads or is refused with file:line:col', async () => {
    let n = 0;
    await fc.assert(
      fc.asyncProperty(mutated(resourceExamples), async (input) => {
        const file = join(dir, `r${n++ % 8}.yaml`);
        writeFileSync(file, input);
        try {
          await loadResources([file]);
        } catch (err) {
          checkRefusal(err, file, input);
        }
      }),
      budget(200_000),
    );
  });

  it('tide proxy: a mutated proxy config compiles or is refused with file:line:col', () => {
    let n = 0;
    fc.assert(
      fc.property(mutated(proxyExamples), (input) => {
        const file = join(dir, `p${n++ % 8}.yaml`);
        writeFileSync(file, input);
        try {
          const s = loadConfig(file, 1, new ProxyMetrics());
          for (const c of s.clusters.values()) void c.destroy();
        } catch (err) {
          checkRefusal(err, file, input);
        }
      }),
      budget(200_000),
    );
  });
});

describe('fuzz: router', () => {
  const seg = fc.stringMatching(/^[a-z0-9]{1,4}$/);
  const domain = fc.tuple(seg, fc.constantFrom('test', 'example')).map(([a, b]) => `${a}.${b}`);
  const prefix = fc.array(seg, { maxLength: 3 }).map((s) => `/${s.join('/')}`);

  it('never throws on any host or path, and matches like a plain reference matcher', () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.tuple(domain, fc.array(prefix, { minLength: 1, maxLength: 4 })), { selector: ([d]) => d, minLength: 1, maxLength: 5 }),
        fc.oneof(domain, fc.string({ unit: 'binary', maxLength: 30 })),
        fc.oneof(
          prefix.chain((p) => fc.array(seg, { maxLength: 2 }).map((rest) => `${p}${rest.length ? `/${rest.join('/')}` : ''}`)),
          fc.string({ unit: 'binary', maxLength: 30 }),
        ),
        (hosts, host, path) => {
          const router = new TableRouter(
            hosts.map(([d, prefixes], i) => ({
              name: `vh${i}`,
              domains: [d],
              routes: prefixes.map((p, j) => ({ name: `r${j}`, match: { path: { prefix: p } } as RouteMatch, target: `${d} ${p}` })),
            })),
          );
          const got = router.route({ host, method: 'GET', url: path, headers: {} });
          // The parser hands the router origin-form paths only; anything else must just not throw.
          if (!path.startsWith('/')) return;
          // Reference: the virtual host whose domain equals the host (case-insensitive, port
          // ignored), then its first route whose prefix starts the path.
          const h = host.toLowerCase().replace(/:\d+$/, '');
          const vh = hosts.find(([d]) => d === h);
          const p = path.split('?')[0] as string;
          const want = vh?.[1].find((pre) => p.startsWith(pre));
          const where = JSON.stringify({ hosts, host, path });
          if (!vh || want === undefined) expect(got, where).toBeUndefined();
          else expect(got?.target, where).toBe(`${vh[0]} ${want}`);
        },
      ),
      budget(),
    );
  });
});
