import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  FUNCTION_DEFAULTS,
  parseRevision,
  resolveFunctionConfig,
  revisionName,
  validateFunctionName,
  validateVariables,
} from '../../control/api/schema/function.ts';
import { SCALING_DEFAULTS } from '../../control/autoscaler/config.ts';
import { resolveUpConfig, UP_DEFAULTS } from '../../lib/config/up.ts';
import { parseDuration } from '../../lib/duration.ts';
import { isTideError } from '../../lib/errors.ts';
import { ROOT } from '../helpers/tide.ts';

describe('function names', () => {
  it.each(['hello', 'a', 'my-fn-2', 'x'.repeat(57)])('accepts %s', (n) => expect(validateFunctionName(n)).toBe(n));
  it.each(['', 'Hello', '-x', 'x-', '1abc', 'a_b', 'a.b', 'x'.repeat(58), 'héllo'])('refuses %j', (n) => {
    expect(() => validateFunctionName(n)).toThrow(/function name/);
  });
  it('numbers revisions with five digits', () => expect(revisionName('hello', 3)).toBe('hello-00003'));
});

describe('function settings', () => {
  it('fills every default from one place', () => expect(resolveFunctionConfig({})).toEqual(FUNCTION_DEFAULTS));
  it('names the field and the rule', () => {
    expect(() => resolveFunctionConfig({ memoryMb: 4 })).toThrow('memoryMb must be an integer from 16 to 16384 (got 4)');
    expect(() => resolveFunctionConfig({ scaling: { maxScale: 1.5 } })).toThrow('scaling.maxScale must be an integer from 0 to 1000 (got 1.5)');
    expect(() => resolveFunctionConfig({ scaling: { minScale: 3, maxScale: 2 } })).toThrow(
      'scaling.maxScale must be 0 (no limit) or an integer ≥ minScale 3 (got 2)',
    );
    expect(() => resolveFunctionConfig({ scaling: { burst: 1 } } as never)).toThrow('unknown scaling setting "scaling.burst"');
    expect(() => resolveFunctionConfig({ instances: 2 } as never)).toThrow(/"instances" was replaced by scaling.minScale/);
    expect(() => resolveFunctionConfig({ nope: 1 } as never)).toThrow('unknown function setting "nope"');
  });
  it('reads a revision stored before scaling settings as its fixed count and per-instance limit', () => {
    const old = { name: 'a-00001', config: { timeoutMs: 5000, memoryMb: 128, concurrency: 8, instances: 3, maxBodyBytes: 10 } };
    const r = parseRevision(JSON.stringify(old));
    expect(r.config).toEqual({
      timeoutMs: 5000,
      memoryMb: 128,
      maxBodyBytes: 10,
      cpuMillis: 25,
      cpuLimitMillis: 1000,
      scaling: { ...SCALING_DEFAULTS, minScale: 3, maxScale: 3, initialScale: 3, containerConcurrency: 8 },
      probes: {},
      placement: { nodeSelector: {}, tolerations: [], affinity: [], antiAffinity: [] },
    });
  });

  it('fills probe defaults (Kubernetes) and names the probe and field that is wrong', () => {
    expect(resolveFunctionConfig({ probes: { liveness: { path: '/healthz' } } }).probes).toEqual({
      liveness: { path: '/healthz', initialDelaySeconds: 0, periodSeconds: 10, timeoutSeconds: 1, successThreshold: 1, failureThreshold: 3 },
    });
    expect(() => resolveFunctionConfig({ probes: { liveness: {} } })).toThrow('probes.liveness.path is required, e.g. /healthz');
    expect(() => resolveFunctionConfig({ probes: { readiness: { path: 'healthz' } } })).toThrow(/probes.readiness.path must start with \//);
    expect(() => resolveFunctionConfig({ probes: { liveness: { path: '/h', periodSeconds: 0 } } })).toThrow(
      'probes.liveness.periodSeconds must be a number from 0.1 to 3600 (got 0)',
    );
    expect(() => resolveFunctionConfig({ probes: { liveness: { path: '/h', successThreshold: 2 } } })).toThrow(/must be 1/);
    expect(() => resolveFunctionConfig({ probes: { health: { path: '/h' } } })).toThrow('unknown probe "probes.health": use startup, readiness or liveness');
  });

  it('keeps the CPU limit at or above the CPU request', () => {
    expect(() => resolveFunctionConfig({ cpuMillis: 500, cpuLimitMillis: 250 })).toThrow(
      'cpuLimitMillis must be 0 (no limit) or at least cpuMillis 500 (got 250)',
    );
    expect(resolveFunctionConfig({ cpuMillis: 500, cpuLimitMillis: 0 }).cpuLimitMillis).toBe(0);
  });

  it('checks env and secret names and refuses the same name in both', () => {
    expect(validateVariables({ A: '1' }, { B: '2' })).toEqual({ env: { A: '1' }, secrets: { B: '2' } });
    expect(() => validateVariables({ '1A': 'x' }, {})).toThrow(/env name "1A"/);
    expect(() => validateVariables({ A: '1' }, { A: '2' })).toThrow('A is given both as env and as secret');
  });
});

describe('tide up config', () => {
  it('parsing {}, the documented example and DEFAULTS agree', () => {
    const example = JSON.parse(readFileSync(join(ROOT, 'examples/up.defaults.json'), 'utf8')) as Record<string, unknown>;
    expect(resolveUpConfig({})).toEqual(UP_DEFAULTS);
    expect(resolveUpConfig(example)).toEqual(UP_DEFAULTS);
    expect(Object.keys(example).sort()).toEqual(Object.keys(UP_DEFAULTS).sort());
  });
  it('refuses bad values by name', () => {
    expect(() => resolveUpConfig({ port: 70000 })).toThrow('port must be an integer from 0 to 65535 (got 70000)');
    expect(() => resolveUpConfig({ port: 9000, apiPort: 9000 })).toThrow(/must differ/);
    expect(() => resolveUpConfig({ domain: 'bad domain' })).toThrow(/domain must be/);
  });
  it('parses durations', () => {
    expect(parseDuration('30s', 'x')).toBe(30_000);
    expect(parseDuration('250ms', 'x')).toBe(250);
    expect(parseDuration('2m', 'x')).toBe(120_000);
    expect(() => parseDuration('soon', '--timeout')).toThrow('--timeout must be a duration');
    try {
      parseDuration('0s', 'x');
    } catch (err) {
      expect(isTideError(err, 'ERR_INVALID_ARGUMENT')).toBe(true);
    }
  });
});
