/**
 * Benchmark `autoscale`: how fast Tide's autoscaler follows load, through a real `tide up`.
 *
 * A function that answers after 100 ms (so concurrency = connections) is deployed at zero with
 * target 2 in flight per instance (1.4 at the default 70 % utilization), a 12 s stable window
 * (panic window 1.2 s), the default 2 s tick and a 5 s scale-to-zero grace period. Then:
 *  1. step: 0 → 20 connections for 15 s, then nothing until it is back at zero;
 *  2. ramp: 2, 4, 8, 16, 8, 2 connections, 5 s each, then nothing until zero.
 * The instance counts (ready, desired) are sampled every 250 ms from the API. Reported:
 * time from the step to the first answer, to the first ready instance and to the desired count;
 * time from the end of load to zero; failed requests; and a chart of instances over time
 * (SVG next to the JSON).
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { autocannon, type Knobs, knobs, printRows, ROOT, versions, writeReport } from '../lib/harness.ts';
import { startTideUp, type TideUp } from '../lib/tide.ts';

interface Sample {
  t: number;
  ready: number;
  desired: number;
  panic: boolean;
  /** Connections the load generator keeps open (the offered concurrency). */
  offered: number;
}

interface Phase {
  name: string;
  start: number;
  loadEnd: number;
  steps: { connections: number; seconds: number }[];
}

const TARGET = 2;
const UTILIZATION = 0.7;

async function sampleUntil(t: TideUp, t0: number, samples: Sample[], offered: () => number, done: () => boolean): Promise<void> {
  while (!done()) {
    const v = await t.api<{ ready: number; desired: number | null; panic: boolean }>('/v1/functions/slow/instances');
    samples.push({ t: (performance.now() - t0) / 1000, ready: v.ready, desired: v.desired ?? 0, panic: v.panic, offered: offered() });
    await new Promise((r) => setTimeout(r, 250));
  }
}

export async function run({ jsonFile }: { jsonFile?: string }): Promise<void> {
  const k: Knobs = knobs();
  let tide: TideUp | undefined;
  try {
    tide = await startTideUp(k);
    await tide.cli([
      'deploy',
      join(ROOT, 'test/fixtures/functions/sleepy.ts'),
      '--name',
      'slow',
      '--initial-scale',
      '0',
      '--target',
      String(TARGET),
      '--scale-to-zero-grace',
      '5s',
      '--scaling',
      'stableWindowMs=12000',
    ]);
    const url = `http://127.0.0.1:${tide.port}/?ms=100`;
    const headers = { host: 'slow.localhost' };
    const samples: Sample[] = [];
    const t0 = performance.now();
    let offered = 0;
    let stopSampling = false;
    const sampler = sampleUntil(
      tide,
      t0,
      samples,
      () => offered,
      () => stopSampling,
    );
    const phases: Phase[] = [];
    const failures: { phase: string; errors: number; non2xx: number; requests: number }[] = [];
    const firstAnswerMs: number[] = [];
    for (const [name, steps] of [
      ['step', [{ connections: 20, seconds: 15 }]],
      ['ramp', [2, 4, 8, 16, 8, 2].map((c) => ({ connections: c, seconds: 5 }))],
    ] as const) {
      const start = (performance.now() - t0) / 1000;
      // The first answer after idle, timed by itself, then the load.
      const f0 = performance.now();
      const first = await fetch(url, { headers });
      await first.text();
      firstAnswerMs.push(Math.round((performance.now() - f0) * 100) / 100);
      let errors = 0;
      let non2xx = 0;
      let requests = 0;
      for (const step of steps) {
        offered = step.connections;
        const r = await autocannon({ ...k, connections: step.connections }, url, headers, step.seconds);
        errors += r.errors;
        non2xx += r.non2xx;
        requests += r.requests;
      }
      offered = 0;
      const loadEnd = (performance.now() - t0) / 1000;
      phases.push({ name, start, loadEnd, steps: [...steps] });
      failures.push({ phase: name, errors, non2xx, requests });
      process.stdout.write(`  ${name}: ${requests} requests, ${errors} errors, ${non2xx} non-2xx; waiting for zero…\n`);
      const deadline = Date.now() + 90_000;
      while (Date.now() < deadline) {
        const last = samples.at(-1);
        if (last && last.t > loadEnd && last.ready === 0 && last.desired === 0) break;
        await new Promise((r) => setTimeout(r, 250));
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
    stopSampling = true;
    await sampler;

    const step = phases[0] as Phase;
    const inStep = samples.filter((s) => s.t >= step.start && s.t <= step.loadEnd + 0.5);
    const peakDesired = Math.max(...inStep.map((s) => s.desired));
    const firstReady = inStep.find((s) => s.ready >= 1);
    const atDesired = inStep.find((s) => s.ready >= peakDesired);
    const zeroAfter = (p: Phase) => samples.find((s) => s.t > p.loadEnd && s.ready === 0 && s.desired === 0);
    const round = (x: number | undefined) => (x === undefined ? null : Math.round(x * 100) / 100);
    const result = {
      step: {
        connections: 20,
        ideal_instances: Math.ceil(20 / (TARGET * UTILIZATION)),
        peak_desired: peakDesired,
        first_answer_ms: firstAnswerMs[0],
        first_ready_s: round(firstReady && firstReady.t - step.start),
        to_desired_s: round(atDesired && atDesired.t - step.start),
        to_zero_after_load_s: round((zeroAfter(step)?.t ?? Number.NaN) - step.loadEnd),
        panic_seen: inStep.some((s) => s.panic),
      },
      ramp: {
        first_answer_ms: firstAnswerMs[1],
        to_zero_after_load_s: round((zeroAfter(phases[1] as Phase)?.t ?? Number.NaN) - (phases[1] as Phase).loadEnd),
        peak_ready: Math.max(...samples.filter((s) => s.t >= (phases[1] as Phase).start).map((s) => s.ready)),
      },
      failures,
    };
    printRows(
      'autoscaling: a step load of 20 connections (100 ms requests, target 2 at 70 %), and a ramp 2→16→2',
      ['measure', 'value'],
      [
        ['first answer after idle (step), ms', String(result.step.first_answer_ms)],
        ['first instance ready after the step, s', String(result.step.first_ready_s)],
        [`desired count reached (${peakDesired}; ideal ${result.step.ideal_instances}), s`, String(result.step.to_desired_s)],
        ['panic mode during the step', String(result.step.panic_seen)],
        ['back to zero after the step load ended, s', String(result.step.to_zero_after_load_s)],
        ['back to zero after the ramp ended, s', String(result.ramp.to_zero_after_load_s)],
        ['failed requests (errors + non-2xx)', String(failures.reduce((n, f) => n + f.errors + f.non2xx, 0))],
      ],
    );
    const svg = chart(samples, phases);
    const svgFile = jsonFile ? jsonFile.replace(/\.json$/, '') + '.svg' : undefined;
    if (svgFile) {
      writeFileSync(svgFile, svg);
      process.stdout.write(`wrote ${svgFile}\n`);
    }
    writeReport(jsonFile, {
      benchmark: 'autoscale',
      ...result,
      settings: { target: TARGET, targetUtilization: UTILIZATION, stableWindowMs: 12_000, tickMs: 2000, scaleToZeroGracePeriodMs: 5000, requestMs: 100 },
      samples,
      chart: svgFile ?? null,
      versions: versions(),
      pinning: k.pin ? { tide: 'cpu1', load: 'cpu0' } : 'none',
      date: new Date().toISOString(),
    });
  } finally {
    await tide?.stop();
  }
}

/** Instances over time: ready (solid), desired (dashed), the ideal count for the offered load (grey steps), panic shaded. */
function chart(samples: Sample[], phases: Phase[]): string {
  const W = 900;
  const H = 400;
  const pad = { l: 50, r: 20, t: 30, b: 80 };
  const tMax = Math.max(1, ...samples.map((s) => s.t));
  const ideal = (s: Sample) => Math.ceil(s.offered / (TARGET * UTILIZATION));
  const yMax = Math.max(4, ...samples.map((s) => Math.max(s.ready, s.desired, ideal(s)))) + 1;
  const x = (t: number) => pad.l + (t / tMax) * (W - pad.l - pad.r);
  const y = (v: number) => H - pad.b - (v / yMax) * (H - pad.t - pad.b);
  const path = (f: (s: Sample) => number) => samples.map((s, i) => `${i === 0 ? 'M' : 'L'}${x(s.t).toFixed(1)},${y(f(s)).toFixed(1)}`).join(' ');
  const panics: string[] = [];
  for (let i = 0; i < samples.length; i++) {
    const s = samples[i] as Sample;
    const next = samples[i + 1];
    if (s.panic && next)
      panics.push(`<rect x="${x(s.t).toFixed(1)}" y="${pad.t}" width="${(x(next.t) - x(s.t)).toFixed(1)}" height="${H - pad.t - pad.b}" fill="#fde2e2"/>`);
  }
  const yTicks = Array.from({ length: yMax + 1 }, (_, v) => v).filter((v) => v % Math.ceil(yMax / 8) === 0);
  const xTicks = Array.from({ length: Math.floor(tMax / 10) + 1 }, (_, i) => i * 10);
  return `<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">
<rect width="${W}" height="${H}" fill="white"/>
<text x="${pad.l}" y="18" font-size="14">Tide autoscaling: instances over time (step to 20 connections, then a ramp 2→16→2)</text>
${panics.join('\n')}
${yTicks.map((v) => `<line x1="${pad.l}" x2="${W - pad.r}" y1="${y(v)}" y2="${y(v)}" stroke="#eee"/><text x="${pad.l - 8}" y="${y(v) + 4}" text-anchor="end">${v}</text>`).join('\n')}
${xTicks.map((t) => `<text x="${x(t)}" y="${H - pad.b + 16}" text-anchor="middle">${t}s</text>`).join('\n')}
${phases.map((p) => `<line x1="${x(p.start)}" x2="${x(p.start)}" y1="${pad.t}" y2="${H - pad.b}" stroke="#999" stroke-dasharray="2,3"/><text x="${x(p.start) + 4}" y="${pad.t + 12}">${p.name}</text>`).join('\n')}
<path d="${path(ideal)}" fill="none" stroke="#bbb" stroke-width="2"/>
<path d="${path((s) => s.desired)}" fill="none" stroke="#d97706" stroke-width="2" stroke-dasharray="6,4"/>
<path d="${path((s) => s.ready)}" fill="none" stroke="#2563eb" stroke-width="2.5"/>
<line x1="${pad.l}" x2="${W - pad.r}" y1="${H - pad.b}" y2="${H - pad.b}" stroke="#333"/>
<line x1="${pad.l}" x2="${pad.l}" y1="${pad.t}" y2="${H - pad.b}" stroke="#333"/>
<text x="${W / 2}" y="${H - pad.b + 32}" text-anchor="middle">time (s)</text>
<g transform="translate(${pad.l},${H - 26})">
<line x1="0" x2="30" y1="0" y2="0" stroke="#2563eb" stroke-width="2.5"/><text x="36" y="4">ready instances</text>
<line x1="150" x2="180" y1="0" y2="0" stroke="#d97706" stroke-width="2" stroke-dasharray="6,4"/><text x="186" y="4">desired (autoscaler)</text>
<line x1="330" x2="360" y1="0" y2="0" stroke="#bbb" stroke-width="2"/><text x="366" y="4">ideal: connections ÷ (target × utilization)</text>
<rect x="640" y="-5" width="30" height="10" fill="#fde2e2"/><text x="676" y="4">panic mode</text>
</g>
</svg>
`;
}
