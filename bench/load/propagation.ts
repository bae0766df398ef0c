/**
 * Benchmark `propagation`: how long a Route change takes to reach the gateway. One `tide up`
 * (pinned to cpu1), a function with two revisions kept running, and a Route on its host that
 * is switched from one revision to the other ROUNDS times (default 20). A client on cpu0 sends
 * requests back to back on one keep-alive connection from the moment it posts the change, and
 * stops at the first answer from the new revision.
 *
 * Reported: `change_to_served` (ms, median / p90 / max: post sent → first answer from the new
 * revision), and `stale_after_answer`: requests sent after the API had answered that still got
 * the old revision, over all rounds (0: as `tide apply` promises, once it answers the change is
 * what clients get). The bound: within 1 s.
 */
import { Agent, request } from 'node:http';
import { join } from 'node:path';
import { knobs, printRows, ROOT, versions, writeReport } from '../lib/harness.ts';
import { startTideUp, type TideUp } from '../lib/tide.ts';

const ROUNDS = Number(process.env.ROUNDS ?? 20);

function greeting(agent: Agent, port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    request({ host: '127.0.0.1', port, path: '/', headers: { host: 'prop.localhost' }, agent }, (res) => {
      let body = '';
      res.on('data', (d) => {
        body += d;
      });
      res.on('end', () => resolve((JSON.parse(body) as { greeting: string }).greeting));
    })
      .on('error', reject)
      .end();
  });
}

function stats(xs: number[]) {
  const s = [...xs].sort((a, b) => a - b);
  const at = (q: number) => s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)] ?? Number.NaN;
  const r = (x: number) => Math.round(x * 100) / 100;
  return { median_ms: r(at(0.5)), p90_ms: r(at(0.9)), max_ms: r(s.at(-1) ?? Number.NaN), samples_ms: xs.map(r) };
}

export async function run({ jsonFile }: { jsonFile?: string }): Promise<void> {
  const k = knobs();
  let tide: TideUp | undefined;
  try {
    tide = await startTideUp(k);
    for (const g of ['a', 'b']) await tide.cli(['deploy', join(ROOT, 'examples/echo.ts'), '--name', 'prop', '--env', `GREETING=${g}`, '--min-scale', '1']);
    const route = (revision: string) => ({
      items: [
        { kind: 'Route', name: 'prop', spec: { hosts: ['prop.localhost'], rules: [{ split: [{ revision, weight: 100 }] }], tags: { other: 'prop-00001' } } },
      ],
    });
    await tide.api('/v1/apply', route('prop-00001'));
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    const changeToServed: number[] = [];
    let staleAfterAnswer = 0;
    process.stdout.write(`propagation: ${ROUNDS} switches, pinning ${k.pin ? 'tide on cpu1, client on cpu0' : 'off'}\n`);
    for (let i = 0; i < ROUNDS; i++) {
      const [to, want] = i % 2 === 0 ? ['prop-00002', 'b'] : ['prop-00001', 'a'];
      if ((await greeting(agent, tide.port)) === want) throw new Error(`already serving ${want} before the switch`);
      const t0 = performance.now();
      let answeredAt = Number.POSITIVE_INFINITY;
      const posted = tide.api('/v1/apply', route(to)).then(() => {
        answeredAt = performance.now();
      });
      let servedAt = 0;
      const deadline = t0 + 10_000;
      while (performance.now() < deadline) {
        const sentAfterAnswer = performance.now() > answeredAt;
        if ((await greeting(agent, tide.port)) === want) {
          servedAt = performance.now();
          break;
        }
        if (sentAfterAnswer) staleAfterAnswer++;
      }
      await posted;
      if (servedAt === 0) throw new Error(`the switch to ${to} did not reach the gateway within 10 s`);
      changeToServed.push(servedAt - t0);
      process.stdout.write(
        `  switch ${i + 1} → ${to}: served after ${(servedAt - t0).toFixed(2)} ms (API answered after ${(answeredAt - t0).toFixed(2)} ms)\n`,
      );
    }
    agent.destroy();
    const results = { change_to_served: stats(changeToServed), stale_after_answer: staleAfterAnswer };
    printRows(
      'route change → first answer from the new revision, ms',
      ['measure', 'median', 'p90', 'max'],
      [['change_to_served', String(results.change_to_served.median_ms), String(results.change_to_served.p90_ms), String(results.change_to_served.max_ms)]],
    );
    process.stdout.write(`requests sent after the API answered that got the old revision: ${staleAfterAnswer}\n`);
    process.stdout.write(`\ntarget: within 1000 ms → ${results.change_to_served.max_ms <= 1000 ? 'met' : 'missed'}\n`);
    writeReport(jsonFile, {
      benchmark: 'propagation',
      ...results,
      rounds: ROUNDS,
      versions: versions(),
      pinning: k.pin ? { tide: 'cpu1', client: 'cpu0' } : 'none',
      date: new Date().toISOString(),
    });
  } finally {
    await tide?.stop();
  }
}
