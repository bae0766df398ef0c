/**
 * Benchmark `mesh`: the cost of mutual TLS on the mesh hop. Two identical pairs of functions
 * (examples/mesh: a frontend that calls its backend through the mesh) run in one `tide up`;
 * one backend takes mTLS (STRICT, the default), the other is called in plaintext (a Policy
 * with mtls DISABLE). Clients hit each frontend through the gateway, rounds interleaved, and
 * the report gives requests/s and latency of both, their ratio, and how many TLS connections
 * the mTLS hop used (connection reuse is why the handshake cost hardly shows). The backend
 * called straight through the gateway (no mesh hop) is in the same run for scale.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { autocannon, getText, type Knobs, knobs, printTable, ROOT, type Series, summarize, versions, writeReport } from '../lib/harness.ts';
import { startTideUp } from '../lib/tide.ts';

/** Established connections to `port` on loopback now (each one a TLS handshake on the mTLS path). */
function established(port: number): number {
  try {
    const out = execFileSync('ss', ['-Htn', 'state', 'established', `( dport = :${port} )`], { encoding: 'utf8' });
    return out.split('\n').filter((l) => l.trim() !== '').length;
  } catch {
    return -1;
  }
}

export async function run({ jsonFile }: { jsonFile?: string }): Promise<void> {
  const k: Knobs = knobs();
  const t = await startTideUp(k);
  try {
    const dir = join(ROOT, 'examples/mesh');
    const file = join(t.dataDir, 'mesh-bench.yaml');
    const fn = (name: string, source: string, env?: string) =>
      `apiVersion: tide.dev/v1\nkind: Function\nmetadata: { name: ${name} }\nspec:\n  source: ${join(dir, source)}\n  scaling: { minScale: 1, maxScale: 1 }\n${env ? `  env: [{ name: BACKEND, value: ${env} }]\n` : ''}---\n`;
    writeFileSync(
      file,
      `${fn('front-mtls', 'frontend.ts', 'back-mtls')}${fn('back-mtls', 'backend.ts')}${fn('front-plain', 'frontend.ts', 'back-plain')}${fn('back-plain', 'backend.ts')}` +
        'apiVersion: tide.dev/v1\nkind: Policy\nmetadata: { name: plain }\nspec:\n  selector: { functions: [back-plain] }\n  mtls: { mode: DISABLE }\n',
    );
    await t.cli(['apply', '-f', file]);
    const meshPort = (JSON.parse(readFileSync(join(t.dataDir, 'endpoint.json'), 'utf8')) as { meshPort: number }).meshPort;
    const url = `http://127.0.0.1:${t.port}/x`;
    const targets = [
      { name: 'mesh hop, mTLS', host: 'front-mtls.localhost', expect: 'spiffe://tide.local/ns/default/fn/front-mtls' },
      { name: 'mesh hop, plaintext', host: 'front-plain.localhost', expect: 'an unauthenticated caller' },
      { name: 'no mesh hop (backend via gateway)', host: 'back-mtls.localhost', expect: '"path":"/x"' },
    ];
    for (const target of targets) {
      const body = await getText(url, target.host);
      if (!body.includes(target.expect)) throw new Error(`${target.name}: unexpected answer ${JSON.stringify(body)}`);
    }
    process.stdout.write(
      `mesh: ${k.rounds} rounds × ${k.durationS}s, ${k.connections} connections, warm-up ${k.warmupS}s, pinning ${k.pin ? 'tide cpu1, load cpu0' : 'off'}\n`,
    );
    for (const target of targets) await autocannon(k, url, { host: target.host }, k.warmupS);
    const series: Series[] = targets.map((x) => ({ name: x.name, rounds: [] }));
    const tlsConnections: number[] = [];
    for (let round = 0; round < k.rounds; round++) {
      for (const [i, target] of targets.entries()) {
        const r = await autocannon(k, url, { host: target.host }, k.durationS);
        series[i]?.rounds.push(r);
        if (i === 0) tlsConnections.push(established(meshPort));
        process.stdout.write(
          `  round ${round + 1} ${target.name}: ${Math.round(r.rps)} req/s, p50 ${r.p50_ms} ms, p99 ${r.p99_ms} ms, errors ${r.errors}, non-2xx ${r.non2xx}\n`,
        );
      }
    }
    const results = series.map(summarize);
    printTable('frontend → backend through the mesh: mutual TLS vs plaintext on the hop (same run)', results);
    const [mtls, plain] = results;
    const ratios = {
      mtls_vs_plaintext_rps: mtls && plain ? Math.round((mtls.rps / plain.rps) * 1000) / 1000 : null,
      mtls_minus_plaintext_p99_ms: mtls && plain ? Math.round((mtls.p99_ms - plain.p99_ms) * 100) / 100 : null,
      mtls_minus_plaintext_p50_ms: mtls && plain ? Math.round((mtls.p50_ms - plain.p50_ms) * 100) / 100 : null,
    };
    const requests = mtls ? Math.round(mtls.rps * k.durationS) : 0;
    process.stdout.write(
      `\nratios: mTLS vs plaintext req/s = ${ratios.mtls_vs_plaintext_rps}; p99 +${ratios.mtls_minus_plaintext_p99_ms} ms; p50 +${ratios.mtls_minus_plaintext_p50_ms} ms\n` +
        `connection reuse: ~${requests} mTLS requests per round over ${tlsConnections.join(', ')} TLS connections (handshakes) to the mesh listener\n`,
    );
    writeReport(jsonFile, {
      benchmark: 'mesh',
      results,
      ratios,
      tls_connections_per_round: tlsConnections,
      versions: versions({ openssl: process.versions.openssl }),
      pinning: k.pin ? { tide: 'cpu1', load: 'cpu0' } : 'none',
      knobs: k,
      date: new Date().toISOString(),
    });
  } finally {
    await t.stop();
  }
}
