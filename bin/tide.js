#!/usr/bin/env node
// The `tide` command. Tide's sources are TypeScript run directly by Node's type stripping,
// which needs Node 22.18+ (Node 24 LTS is what Tide is built and tested on).
const [major, minor] = process.versions.node.split('.').map(Number);
if (major < 22 || (major === 22 && minor < 18)) {
  process.stderr.write(
    `error: Tide needs Node.js 22.18 or newer (this is ${process.version}).\n` +
      'hint: run it through npm (`npx tide …`, `npm run demo`): the project installs Node 24 as a dependency.\n',
  );
  process.exit(1);
}
// V8's allocation-site pretenuring misjudges the proxy's per-request objects as long-lived:
// it allocates them in the old generation, where (dead) they keep young objects alive through
// scavenges, so every scavenge promotes megabytes and takes several ms (the proxy's p99). Off,
// scavenges promote almost nothing (bench/results/proxy.md has the numbers).
const v8 = await import('node:v8');
v8.setFlagsFromString('--no-allocation-site-pretenuring');
const { main } = await import('../cli/main.ts');
process.exitCode = await main(process.argv);
