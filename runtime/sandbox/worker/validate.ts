/**
 * Checks a bundle before a revision is created: loads it in a throwaway worker thread (same
 * limits as an instance, empty process env) and looks for `export default { fetch }`. A module
 * that throws at load, has no default export or no fetch method is refused with the reason.
 */

import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { TideError } from '../../../lib/errors.ts';

const CHECK = `
const { parentPort, workerData } = require('node:worker_threads');
for (const m of ['log', 'info', 'warn', 'error', 'debug', 'trace']) console[m] = () => {};
import(workerData.url).then((mod) => {
  const d = mod.default;
  if (d === undefined) return parentPort.postMessage({ ok: false, error: 'the module has no default export; write \`export default { fetch(request, env, ctx) { … } }\`' });
  if (d === null || typeof d !== 'object' && typeof d !== 'function') return parentPort.postMessage({ ok: false, error: 'the default export must be an object with a fetch(request, env, ctx) method (got ' + (d === null ? 'null' : typeof d) + ')' });
  if (typeof d.fetch !== 'function') return parentPort.postMessage({ ok: false, error: 'the default export has no fetch(request, env, ctx) method' });
  parentPort.postMessage({ ok: true });
}, (err) => parentPort.postMessage({ ok: false, error: 'loading the module failed: ' + (err && err.stack ? String(err.stack).split('\\n').slice(0, 3).join(' ') : String(err)) }));
`;

export async function validateWorkerBundle(bundlePath: string, options: { memoryMb?: number; timeoutMs?: number } = {}): Promise<void> {
  const worker = new Worker(CHECK, {
    eval: true,
    workerData: { url: pathToFileURL(bundlePath).href },
    env: {},
    stdout: true,
    stderr: true,
    resourceLimits: { maxOldGenerationSizeMb: options.memoryMb ?? 128 },
  });
  worker.stdout.resume();
  worker.stderr.resume();
  const timeoutMs = options.timeoutMs ?? 10_000;
  try {
    const result = await new Promise<{ ok: boolean; error?: string }>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`loading the module took longer than ${timeoutMs} ms`)), timeoutMs);
      worker.once('message', (m: { ok: boolean; error?: string }) => {
        clearTimeout(timer);
        resolve(m);
      });
      worker.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      worker.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`the module ended its thread while loading (exit code ${code})`));
      });
    });
    if (!result.ok) throw new Error(result.error);
  } catch (err) {
    throw new TideError('ERR_FUNCTION_INVALID', (err as Error).message, { status: 422, cause: err });
  } finally {
    await worker.terminate();
  }
}
