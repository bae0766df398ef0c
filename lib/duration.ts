/** Parses human durations used on the command line and in config: "30s", "250ms", "2m", "1h", or a bare number of ms. */
import { TideError } from './errors.ts';

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/**
 * Milliseconds, rounded to whole ones (what timers and config run on), unless `fraction` (a
 * latency threshold such as 0.25ms keeps its fraction).
 */
export function parseDuration(input: string, what: string, options: { allowZero?: boolean; fraction?: boolean } = {}): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(input.trim());
  if (!m) {
    throw new TideError('ERR_INVALID_ARGUMENT', `${what} must be a duration like 500ms, 30s or 2m (got "${input}")`);
  }
  const value = Number(m[1]) * (UNITS[m[2] ?? 'ms'] ?? 1);
  if (!Number.isFinite(value) || value < 0 || (value === 0 && !options.allowZero)) {
    throw new TideError('ERR_INVALID_ARGUMENT', `${what} must be greater than zero (got "${input}")`);
  }
  if (options.fraction) return value;
  const ms = Math.round(value);
  // Milliseconds are the unit everything runs on: 0.4ms would silently become 0.
  if (ms === 0 && value > 0) throw new TideError('ERR_INVALID_ARGUMENT', `${what} must be at least 1ms (got "${input}")`);
  return ms;
}

/** "3s", "5m", "2h", "4d": the AGE column style of kubectl. */
export function formatAge(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 120) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 120) return `${m}m`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h`;
  return `${Math.floor(h / 24)}d`;
}
