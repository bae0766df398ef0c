/**
 * How long each fuzz property runs: FUZZ_SECONDS (default 5 per property in `npm test`;
 * `npm run fuzz` runs 300). fast-check stops a property at the time limit or after its run
 * count, whichever comes first; a failure prints the seed and path to replay it
 * (FUZZ_SEED, FUZZ_PATH).
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Parameters } from 'fast-check';

export const FUZZ_SECONDS = Number(process.env.FUZZ_SECONDS ?? 5);

/**
 * `npm test` runs with a fixed seed (the same inputs every time, as many as fit the time), so
 * an unrelated change cannot fail CI on a newly drawn input; `npm run fuzz` (FUZZ_RANDOM=1)
 * draws new ones each run.
 */
export function budget<T>(runs = 1_000_000): Parameters<T> {
  const p: Parameters<T> = { numRuns: runs, interruptAfterTimeLimit: FUZZ_SECONDS * 1000, markInterruptAsFailure: false };
  if (process.env.FUZZ_SEED) p.seed = Number(process.env.FUZZ_SEED);
  else if (process.env.FUZZ_RANDOM !== '1') p.seed = 20261123;
  if (process.env.FUZZ_PATH) p.path = process.env.FUZZ_PATH;
  return p;
}

export const CORPUS = join(import.meta.dirname, 'corpus');

/** The files of a corpus folder, as latin1 strings (HTTP heads are bytes). */
export function corpus(kind: string): string[] {
  const dir = join(CORPUS, kind);
  return readdirSync(dir)
    .sort()
    .map((f) => readFileSync(join(dir, f), 'latin1'));
}
