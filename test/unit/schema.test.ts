import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { FUNCTION_DEFAULTS, resolveFunctionConfig, revisionName, validateFunctionName, validateVariables } from '../../control/api/schema/function.ts';
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
    expect(() => resolveFunctionConfig({ instances: 1.5 })).toThrow(/instances must be an integer/);
    expect(() => resolveFunctionConfig({ nope: 1 } as never)).toThrow('unknown function setting "nope"');
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
