/**
 * `npm run bench -- NAME [--json FILE]`: installs the benchmark tools (bench/package.json) if
 * any is missing, then runs bench/load/NAME.ts. Every benchmark starts its own loopback servers, runs
 * several interleaved rounds against its peers, and prints medians and ratios.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

const here = import.meta.dirname;
const args = process.argv.slice(2);
const name = args.find((a) => !a.startsWith('-'));
const jsonAt = args.indexOf('--json');
const jsonFile = jsonAt >= 0 ? args[jsonAt + 1] : undefined;
const available = readdirSync(join(here, 'load'))
  .filter((f) => f.endsWith('.ts'))
  .map((f) => f.slice(0, -3));

if (!name || args.includes('--help') || !available.includes(name) || (jsonAt >= 0 && !jsonFile)) {
  process.stderr.write(
    `usage: npm run bench -- NAME [--json FILE]\n  NAME: ${available.join(', ')}\n` +
      '  env: DUR (seconds per round, default 10), CONNS (connections, default 50), ROUNDS (default 3), WARMUP (seconds, default 2), PIN (1 = pin servers to cpu1 and load to cpu0, default 1 when taskset exists)\n',
  );
  process.exit(name && !available.includes(name) ? 2 : args.includes('--help') ? 0 : 2);
}

const deps = Object.keys((JSON.parse(readFileSync(join(here, 'package.json'), 'utf8')) as { dependencies?: Record<string, string> }).dependencies ?? {});
const missing = deps.filter((d) => !existsSync(join(here, 'node_modules', d, 'package.json')));
if (missing.length > 0) {
  process.stderr.write(`installing benchmark tools (bench/package.json; missing ${missing.join(', ')})…\n`);
  execFileSync('npm', ['install', '--no-audit', '--no-fund', '--loglevel=error'], { cwd: here, stdio: 'inherit' });
}

const mod = (await import(`./load/${name}.ts`)) as { run(opts: { jsonFile?: string }): Promise<void> };
await mod.run({ jsonFile });
