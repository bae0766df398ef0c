/** Output helpers: aligned tables (kubectl style), JSON and YAML. */
import { stringify } from 'yaml';
import { TideError } from '../lib/errors.ts';

export type OutputFormat = 'table' | 'json' | 'yaml' | 'wide';

export function parseOutput(value: string | undefined): OutputFormat {
  const v = value ?? 'table';
  if (v === 'table' || v === 'json' || v === 'yaml' || v === 'wide') return v;
  throw new TideError('ERR_INVALID_ARGUMENT', `-o must be one of json, yaml, wide (got "${v}")`);
}

export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0)))
      .join('   ')
      .trimEnd();
  return [line(headers), ...rows.map(line)].join('\n');
}

export function structured(data: unknown, format: 'json' | 'yaml'): string {
  return format === 'json' ? JSON.stringify(data, null, 2) : stringify(data).trimEnd();
}
