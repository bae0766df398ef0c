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
const { main } = await import('../cli/main.ts');
process.exitCode = await main(process.argv);
