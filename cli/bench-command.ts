/**
 * The `tide bench` command: parses and checks its options, resolves the targets, runs the
 * rounds (or the cold starts), prints the report and writes `--json`/`--html`. The load and
 * the statistics are in bench.ts, the HTML in bench-report.ts.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { type Command, Option } from 'commander';
import { parseDuration } from '../lib/duration.ts';
import { errorMessage, TideError } from '../lib/errors.ts';
import {
  BENCH_LIMITS,
  type BenchOptions,
  type Comparison,
  checkAllowed,
  checkThresholds,
  compare,
  fmtMs,
  type RoundResult,
  renderSummary,
  resolveTarget,
  runRound,
  type Summary,
  summarize,
  type Target,
  timeOne,
} from './bench.ts';
import { renderHtml } from './bench-report.ts';
import { ApiClient, type ConnectOptions, locate } from './client.ts';

/** Exit code when the run worked but a threshold was missed (1 is for errors). */
export const EXIT_THRESHOLD = 3;

function positive(what: string, max: number, integer = true) {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isFinite(n) || n <= 0 || (integer && !Number.isInteger(n)) || n > max)
      throw new TideError('ERR_INVALID_ARGUMENT', `${what} must be ${integer ? 'an integer' : 'a number'} from ${integer ? 1 : '>0'} to ${max} (got "${v}")`);
    return n;
  };
}

function percent(what: string) {
  return (v: string) => {
    const m = /^(\d+(?:\.\d+)?)(%?)$/.exec(v.trim());
    const n = m ? Number(m[1]) / (m[2] ? 100 : 1) : Number.NaN;
    if (!m || n < 0 || n > 1) throw new TideError('ERR_INVALID_ARGUMENT', `${what} must be a share like 1% or 0.01 (got "${v}")`);
    return n;
  };
}

/** A latency threshold: fractions of a millisecond count (p50s here are often under 1 ms). */
function ms(what: string) {
  return (v: string) => parseDuration(v, what, { fraction: true });
}

export function registerBench(prog: Command, connectionOptions: (c: Command) => Command, out: (s: string) => void): void {
  connectionOptions(
    prog
      .command('bench')
      .description(
        'load test a function, a revision, a route tag (TAG.ROUTE) or a URL; two targets (or --compare A B) run in interleaved rounds and are compared. ' +
          `Exit 0 when every threshold is met, ${EXIT_THRESHOLD} when one is missed, 2 on bad options, 1 on other errors.`,
      )
      .argument('[targets...]', 'NAME, NAME-0000N, TAG.ROUTE or http(s)://URL (at most two)')
      .option('--compare <a b...>', 'compare two targets (same as giving two)')
      .option('-c, --connections <n>', 'concurrent connections', positive('--connections', BENCH_LIMITS.maxConnections), 10)
      .option('-d, --duration <duration>', 'how long each round runs, e.g. 10s (default 10s unless --amount)')
      .option('-n, --amount <n>', 'requests per round instead of a duration', positive('--amount', BENCH_LIMITS.maxAmount))
      .option('-r, --rate <req/s>', 'limit to this many requests per second in all (default: as fast as it goes)', positive('--rate', 10_000_000, false))
      .option('--rounds <n>', 'rounds per target (default 1; 3 with two targets or --cold)', positive('--rounds', BENCH_LIMITS.maxRounds))
      .option('--warmup <duration>', 'load sent before the measured rounds, not counted', '1s')
      .option('-m, --method <method>', 'HTTP method', 'GET')
      .option('-H, --header <K: V>', 'a request header (repeatable)', (v: string, prev: string[] = []) => [...prev, v])
      .option('--body-file <file>', 'send this file as the request body')
      .option('--path <path>', 'path and query for function, revision and tag targets', '/')
      .option('--timeout <duration>', 'a request with no answer after this counts as a timeout', '10s')
      .option('--cold', 'measure cold starts: scale the target to zero before each round and time its first request')
      .option('--max-p99 <duration>', 'fail (exit 3) when p99 latency is above this, e.g. 50ms')
      .option('--max-p50 <duration>', 'fail when p50 latency is above this')
      .option('--min-rps <n>', 'fail when requests/s is below this', positive('--min-rps', 1e9, false))
      .option('--max-error-rate <share>', 'fail when more than this share failed (socket errors, timeouts, 5xx), e.g. 1%', percent('--max-error-rate'))
      .option('--json <file>', 'write the report as JSON')
      .option('--html <file>', 'write a self-contained HTML report with charts')
      .option('--gateway <url>', "the gateway for function targets (default: the running Tide's)")
      .option('--allow-remote', 'allow a URL that is not on this machine (loopback)')
      .option('-q, --quiet', 'no live progress')
      .addOption(new Option('-o, --output <format>', 'print the report as json instead of text').choices(['text', 'json'])),
  ).action(async (positional: string[], o: Record<string, unknown> & ConnectOptions) => {
    const targets = [...positional, ...((o.compare as string[] | undefined) ?? [])];
    if (targets.length === 0)
      throw new TideError('ERR_INVALID_ARGUMENT', 'give a target: a function, a revision, TAG.ROUTE or a URL', { hint: 'tide bench hello' });
    if (targets.length > 2) throw new TideError('ERR_INVALID_ARGUMENT', `at most two targets can be compared (got ${targets.length}: ${targets.join(', ')})`);
    if (o.duration !== undefined && o.amount !== undefined) throw new TideError('ERR_INVALID_ARGUMENT', 'give --duration or --amount, not both');
    const durationMs = o.amount !== undefined ? undefined : parseDuration((o.duration as string | undefined) ?? '10s', '--duration');
    if (durationMs !== undefined && (durationMs <= 0 || durationMs > BENCH_LIMITS.maxDurationS * 1000))
      throw new TideError('ERR_INVALID_ARGUMENT', `--duration must be more than 0 and at most ${BENCH_LIMITS.maxDurationS / 60} minutes`);
    const cold = o.cold === true;
    if (cold && targets.length > 1) throw new TideError('ERR_INVALID_ARGUMENT', '--cold measures one target at a time');
    const headers: Record<string, string> = {};
    for (const h of (o.header as string[] | undefined) ?? []) {
      const colon = h.indexOf(':');
      if (colon <= 0) throw new TideError('ERR_INVALID_ARGUMENT', `--header must look like "Name: value" (got "${h}")`);
      headers[h.slice(0, colon).trim().toLowerCase()] = h.slice(colon + 1).trim();
    }
    let body: Buffer | undefined;
    if (o.bodyFile) {
      try {
        body = await readFile(o.bodyFile as string);
      } catch (err) {
        throw new TideError('ERR_INVALID_ARGUMENT', `--body-file ${o.bodyFile as string}: ${errorMessage(err)}`);
      }
    }
    const path = o.path as string;
    if (!path.startsWith('/')) throw new TideError('ERR_INVALID_ARGUMENT', `--path must start with / (got "${path}")`);
    const opts: BenchOptions = {
      targets,
      connections: o.connections as number,
      durationMs,
      amount: o.amount as number | undefined,
      rate: o.rate as number | undefined,
      method: (o.method as string).toUpperCase(),
      headers,
      body,
      path,
      rounds: (o.rounds as number | undefined) ?? (targets.length > 1 || cold ? 3 : 1),
      warmupS: parseDuration(o.warmup as string, '--warmup', { allowZero: true }) / 1000,
      cold,
      timeoutS: Math.max(1, Math.ceil(parseDuration(o.timeout as string, '--timeout') / 1000)),
      allowRemote: o.allowRemote === true,
      thresholds: {
        maxP99Ms: o.maxP99 !== undefined ? ms('--max-p99')(o.maxP99 as string) : undefined,
        maxP50Ms: o.maxP50 !== undefined ? ms('--max-p50')(o.maxP50 as string) : undefined,
        minRps: o.minRps as number | undefined,
        maxErrorRate: o.maxErrorRate as number | undefined,
      },
      progress: o.quiet !== true && process.stderr.isTTY === true,
    };

    // Targets: URLs as they are; the rest through the running Tide.
    let api: ApiClient | undefined;
    let gateway = o.gateway as string | undefined;
    let domain: string | undefined;
    if (targets.some((t) => !/^https?:\/\//i.test(t))) {
      const where = await locate(o);
      api = new ApiClient(where);
      gateway ??= where.gateway;
      domain = (await api.call<{ domain?: string }>('GET', '/v1/info')).domain ?? 'localhost';
    }
    const resolved: Target[] = [];
    for (const t of targets) resolved.push(await resolveTarget(t, { api, gateway, domain, path }));
    for (const t of resolved) await checkAllowed(t.url, opts.allowRemote);

    const command = `tide bench ${process.argv.slice(3).join(' ')}`.trim();
    let summaries: Summary[] = [];
    let comparison: Comparison | undefined;
    let coldReport: NonNullable<Parameters<typeof renderHtml>[0]['cold']> | undefined;
    const say = (s: string) => (o.output === 'json' ? process.stderr.write(`${s}\n`) : out(s));

    if (cold) {
      const target = resolved[0] as Target;
      if (!api || !target.function)
        throw new TideError('ERR_INVALID_ARGUMENT', '--cold needs a function, revision or tag of this Tide (it scales it to zero), not a URL');
      const samples: number[] = [];
      const warm: number[] = [];
      for (let r = 0; r < opts.rounds; r++) {
        await api.call('POST', `/v1/functions/${encodeURIComponent(target.function)}/zero`, {});
        const deadline = Date.now() + 30_000;
        for (;;) {
          const v = await api.call<{ instances: unknown[] }>('GET', `/v1/functions/${encodeURIComponent(target.function)}/instances`);
          if (v.instances.length === 0) break;
          if (Date.now() > deadline) throw new TideError('ERR_DEPLOY_TIMEOUT', `${target.function} did not reach zero instances within 30 s`);
          await new Promise((res) => setTimeout(res, 50));
        }
        const first = await timeOne(target, opts);
        const second = await timeOne(target, opts);
        if (first.status >= 500) throw new TideError('ERR_BAD_REQUEST', `the first request after zero got ${first.status}`);
        samples.push(first.ms);
        warm.push(second.ms);
        if (opts.progress) process.stderr.write(`\r  cold start ${r + 1}/${opts.rounds}: ${fmtMs(first.ms)} (then warm ${fmtMs(second.ms)})   `);
      }
      if (opts.progress) process.stderr.write('\n');
      const sorted = [...samples].sort((a, b) => a - b);
      const pct = (p: number) => sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? 0;
      const r3 = (x: number) => Math.round(x * 1000) / 1000;
      coldReport = {
        target: target.name,
        samplesMs: samples.map(r3),
        warmMs: warm.map(r3),
        p50: r3(pct(50)),
        p90: r3(pct(90)),
        max: r3(sorted[sorted.length - 1] ?? 0),
      };
      say(`${target.description}: ${samples.length} cold starts (scaled to zero before each)`);
      say(`  first request   p50 ${fmtMs(coldReport.p50)}   p90 ${fmtMs(coldReport.p90)}   max ${fmtMs(coldReport.max)}`);
      say(`  the next one    ${warm.map(fmtMs).join(', ')}`);
      const failures = checkThresholds(
        [{ target: target.name, latencyMs: { p50: coldReport.p50, p90: coldReport.p90, p99: coldReport.max, max: coldReport.max } } as Summary],
        {
          maxP99Ms: opts.thresholds.maxP99Ms,
          maxP50Ms: opts.thresholds.maxP50Ms,
        },
      );
      await finish(opts, { command, summaries, comparison, cold: coldReport, failures }, o, say, out);
      return;
    }

    // Warm-up, then the rounds, interleaved (A B, B A, …) so drift hits both the same.
    if (opts.warmupS > 0) for (const t of resolved) await runRound(t, { ...opts, amount: undefined }, opts.warmupS * 1000);
    const results: RoundResult[][] = resolved.map(() => []);
    for (let r = 0; r < opts.rounds; r++) {
      const order = r % 2 === 0 ? resolved.map((_, i) => i) : resolved.map((_, i) => resolved.length - 1 - i);
      for (const i of order) {
        const t = resolved[i] as Target;
        const label = `round ${r + 1}/${opts.rounds} ${t.name}`;
        const total = opts.amount ?? Math.round((opts.durationMs ?? 0) / 1000);
        const res = await runRound(t, opts, opts.durationMs, (done, rps) => {
          if (!opts.progress) return;
          const frac = opts.amount ? done / opts.amount : 0;
          const filled = Math.round(Math.min(1, frac || 0) * 20);
          process.stderr.write(
            `\r  ${label} ${opts.amount ? `[${'#'.repeat(filled)}${'.'.repeat(20 - filled)}] ` : ''}${done.toLocaleString('en')} req  ${rps.toLocaleString('en')} req/s${total && !opts.amount ? ` (${total} s)` : ''}   `,
          );
        });
        (results[i] as RoundResult[]).push(res);
        if (opts.progress) process.stderr.write('\n');
      }
    }
    summaries = resolved.map((t, i) => summarize(t, results[i] as RoundResult[]));
    if (summaries.length === 2) comparison = compare(summaries[0] as Summary, summaries[1] as Summary);
    if (o.output !== 'json') {
      for (const s of summaries) out(`${renderSummary(s)}\n`);
      if (comparison) {
        out(`comparison (B = ${comparison.b} ÷ A = ${comparison.a}, ${opts.rounds} rounds)`);
        out(`  req/s ratio  median ${comparison.rpsRatio.median}  rounds ${comparison.rpsRatio.rounds.join(', ')}`);
        out(`  p99 ratio    median ${comparison.p99Ratio.median}  rounds ${comparison.p99Ratio.rounds.join(', ')}`);
        out(`  ${comparison.verdict}\n`);
      }
    }
    await finish(opts, { command, summaries, comparison, cold: undefined, failures: checkThresholds(summaries, opts.thresholds) }, o, say, out);
  });
}

async function finish(
  opts: BenchOptions,
  r: { command: string; summaries: Summary[]; comparison: Comparison | undefined; cold: Parameters<typeof renderHtml>[0]['cold']; failures: string[] },
  o: Record<string, unknown>,
  say: (s: string) => void,
  out: (s: string) => void,
): Promise<void> {
  const checked = Object.values(opts.thresholds).some((v) => v !== undefined);
  const report = {
    date: new Date().toISOString(),
    command: r.command,
    options: {
      connections: opts.connections,
      durationS: opts.durationMs !== undefined ? opts.durationMs / 1000 : null,
      amount: opts.amount ?? null,
      rate: opts.rate ?? null,
      rounds: opts.rounds,
      method: opts.method,
      path: opts.path,
    },
    summaries: r.summaries,
    comparison: r.comparison ?? null,
    cold: r.cold ?? null,
    thresholds: { ...opts.thresholds, checked, passed: r.failures.length === 0, failures: r.failures },
  };
  if (o.output === 'json') out(JSON.stringify(report, null, 2));
  if (o.json) await writeFile(o.json as string, `${JSON.stringify(report, null, 2)}\n`);
  if (o.html)
    await writeFile(
      o.html as string,
      renderHtml({
        date: report.date,
        command: r.command,
        summaries: r.summaries,
        comparison: r.comparison,
        cold: r.cold,
        thresholds: { failures: r.failures, checked },
      }),
    );
  if (checked) {
    if (r.failures.length === 0) say('thresholds: all met');
    else {
      for (const f of r.failures) process.stderr.write(`threshold missed: ${f}\n`);
      process.exitCode = EXIT_THRESHOLD;
    }
  }
}
