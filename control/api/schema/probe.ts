/**
 * Health probes of a function's instances, with Kubernetes' fields and defaults. A probe is an
 * HTTP GET of `path` sent to the instance itself (not through the gateway); a status from 200
 * to 399 within `timeoutSeconds` is a success.
 *
 * - startup: until it succeeds, the instance gets no traffic and the other probes wait; after
 *   `failureThreshold` failures the instance is restarted.
 * - readiness: after `failureThreshold` failures in a row the instance stops getting requests,
 *   after `successThreshold` successes it gets them again.
 * - liveness: after `failureThreshold` failures in a row the instance is restarted, with a
 *   back-off of 10 s doubling to 5 min (the kubelet's).
 *
 * Without probes an instance is ready once it has loaded its function, as in Kubernetes.
 * Seconds may be fractions (Kubernetes takes whole seconds only).
 */
import { TideError } from '../../../lib/errors.ts';

export interface ProbeSpec {
  /** Path (and query) of the GET, e.g. /healthz. */
  path: string;
  initialDelaySeconds: number;
  periodSeconds: number;
  timeoutSeconds: number;
  successThreshold: number;
  failureThreshold: number;
}

export type ProbeKind = 'startup' | 'readiness' | 'liveness';

export type ProbesSpec = Partial<Record<ProbeKind, ProbeSpec>>;

export const PROBE_DEFAULTS: Readonly<Omit<ProbeSpec, 'path'>> = Object.freeze({
  initialDelaySeconds: 0,
  periodSeconds: 10,
  timeoutSeconds: 1,
  successThreshold: 1,
  failureThreshold: 3,
});

const RULES: Record<keyof Omit<ProbeSpec, 'path'>, { min: number; max: number; integer: boolean }> = {
  initialDelaySeconds: { min: 0, max: 3600, integer: false },
  periodSeconds: { min: 0.1, max: 3600, integer: false },
  timeoutSeconds: { min: 0.1, max: 3600, integer: false },
  successThreshold: { min: 1, max: 100, integer: true },
  failureThreshold: { min: 1, max: 100, integer: true },
};

const KINDS: ProbeKind[] = ['startup', 'readiness', 'liveness'];

function invalid(message: string): TideError {
  return new TideError('ERR_INVALID_ARGUMENT', message, { status: 400 });
}

/** Fills defaults and checks every field; names the probe, the field and the rule on failure. */
export function resolveProbes(input: unknown): ProbesSpec {
  if (input === undefined || input === null) return {};
  if (typeof input !== 'object' || Array.isArray(input)) throw invalid('probes must be an object with startup, readiness and/or liveness');
  const out: ProbesSpec = {};
  for (const [kind, raw] of Object.entries(input)) {
    if (raw === undefined) continue;
    if (!KINDS.includes(kind as ProbeKind)) throw invalid(`unknown probe "probes.${kind}": use startup, readiness or liveness`);
    if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw invalid(`probes.${kind} must be an object with at least a path`);
    const spec: ProbeSpec = { path: '', ...PROBE_DEFAULTS };
    for (const [key, value] of Object.entries(raw as Record<string, unknown>)) {
      if (value === undefined) continue;
      if (key === 'path') {
        if (typeof value !== 'string' || !/^\/[\x21-\x7e]*$/.test(value) || value.length > 1024) {
          throw invalid(`probes.${kind}.path must start with / and have no spaces or control characters (got ${JSON.stringify(value)})`);
        }
        spec.path = value;
        continue;
      }
      const rule = RULES[key as keyof typeof RULES];
      if (!rule) throw invalid(`unknown probe setting "probes.${kind}.${key}"`);
      if (typeof value !== 'number' || !Number.isFinite(value) || (rule.integer && !Number.isInteger(value)) || value < rule.min || value > rule.max) {
        throw invalid(
          `probes.${kind}.${key} must be ${rule.integer ? 'an integer' : 'a number'} from ${rule.min} to ${rule.max} (got ${JSON.stringify(value)})`,
        );
      }
      (spec as unknown as Record<string, number>)[key] = value;
    }
    if (spec.path === '') throw invalid(`probes.${kind}.path is required, e.g. /healthz`);
    if ((kind === 'liveness' || kind === 'startup') && spec.successThreshold !== 1) {
      throw invalid(`probes.${kind}.successThreshold must be 1 (as in Kubernetes; got ${spec.successThreshold})`);
    }
    out[kind as ProbeKind] = spec;
  }
  return out;
}
