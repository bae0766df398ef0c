/**
 * `npm run chaos`: the chaos harness with its full sizes (400 probes a step by default;
 * CHAOS_PROBES, CHAOS_STEPS=worker-crash,rollout…). Prints each step's success rate and exits
 * 1 when a step missed its bar (graceful 100%, SIGKILL 99%).
 */
import { runChaos, STEPS, type StepName } from './harness.ts';

const steps = process.env.CHAOS_STEPS ? (process.env.CHAOS_STEPS.split(',') as StepName[]) : STEPS;
for (const s of steps) if (!STEPS.includes(s)) throw new Error(`unknown step ${s}; steps: ${STEPS.join(', ')}`);
const results = await runChaos({ perStep: Number(process.env.CHAOS_PROBES ?? 400), steps, log: (l) => process.stdout.write(`${l}\n`) });
process.stdout.write('\n| step | kind | good / probes | success | needed | retried | |\n|---|---|---:|---:|---:|---:|---|\n');
for (const r of results)
  process.stdout.write(
    `| ${r.step} | ${r.kind} | ${r.good} / ${r.probes} | ${(r.successRate * 100).toFixed(2)}% | ${r.required * 100}% | ${r.retried} | ${r.passed ? 'pass' : 'FAIL'} |\n`,
  );
process.exit(results.every((r) => r.passed) ? 0 : 1);
