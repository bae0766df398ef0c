/**
 * Bundles a function file with its imports into one ES module (esbuild), as `tide deploy`
 * does before upload. Syntax errors and a missing default export are reported as
 * file:line:column, and nothing is uploaded.
 */
import { stat } from 'node:fs/promises';
import { relative } from 'node:path';
import { type BuildFailure, build, type Message } from 'esbuild';
import { TideError } from '../lib/errors.ts';

export interface Bundle {
  code: Uint8Array;
  warnings: string[];
}

const BANNER = "import { createRequire as __tideCreateRequire } from 'node:module'; const require = __tideCreateRequire(import.meta.url);";

export async function bundleFunction(file: string): Promise<Bundle> {
  const shown = relative(process.cwd(), file) || file;
  try {
    const st = await stat(file);
    if (!st.isFile()) throw new TideError('ERR_BUNDLE', `${shown} is not a file`);
  } catch (err) {
    if (err instanceof TideError) throw err;
    throw new TideError('ERR_BUNDLE', `cannot read ${shown}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as Error).message}`);
  }
  try {
    const result = await build({
      entryPoints: [file],
      bundle: true,
      format: 'esm',
      platform: 'node',
      target: 'node22',
      write: false,
      metafile: true,
      logLevel: 'silent',
      outfile: 'bundle.mjs',
      banner: { js: BANNER },
      legalComments: 'none',
    });
    const out = result.outputFiles[0];
    const meta = Object.values(result.metafile.outputs)[0];
    if (!out || !meta) throw new TideError('ERR_BUNDLE', `${shown}: the bundler produced no output`);
    if (!meta.exports.includes('default')) {
      throw new TideError('ERR_BUNDLE', `${shown}:1:1: error: no default export`, {
        hint: 'a Tide function is a module whose default export has fetch(request, env, ctx): `export default { fetch() { return new Response("hi") } }`',
      });
    }
    return { code: out.contents, warnings: result.warnings.map((w) => formatMessage(w, 'warning')) };
  } catch (err) {
    if (err instanceof TideError) throw err;
    const failure = err as BuildFailure;
    if (Array.isArray(failure.errors) && failure.errors.length > 0) {
      throw new TideError('ERR_BUNDLE', failure.errors.map((m) => formatMessage(m, 'error')).join('\n'), { details: { errors: failure.errors.length } });
    }
    throw new TideError('ERR_BUNDLE', `bundling ${shown} failed: ${(err as Error).message}`);
  }
}

function formatMessage(m: Message, kind: 'error' | 'warning'): string {
  const loc = m.location;
  if (!loc) return `${kind}: ${m.text}`;
  const caret = `${' '.repeat(loc.column)}^`;
  return `${loc.file}:${loc.line}:${loc.column + 1}: ${kind}: ${m.text}\n    ${loc.lineText}\n    ${caret}`;
}
