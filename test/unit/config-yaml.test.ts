import { Type } from '@sinclair/typebox';
import { describe, expect, it } from 'vitest';
import { parseYaml, validateDocument } from '../../lib/config/yaml.ts';
import { isTideError } from '../../lib/errors.ts';

const Route = Type.Object(
  {
    name: Type.String({ minLength: 1 }),
    timeoutMs: Type.Integer({ minimum: 1, default: 15000 }),
    methods: Type.Optional(Type.Array(Type.Union([Type.Literal('GET'), Type.Literal('POST')]))),
  },
  { additionalProperties: false },
);
const Config = Type.Object(
  { listeners: Type.Array(Type.Object({ port: Type.Integer({ minimum: 0, maximum: 65535 }) }, { additionalProperties: false })), routes: Type.Array(Route) },
  { additionalProperties: false },
);

function problems(text: string): string[] {
  try {
    for (const doc of parseYaml(text, 'proxy.yaml')) validateDocument(doc, Config);
  } catch (err) {
    expect(isTideError(err, 'ERR_CONFIG_INVALID')).toBe(true);
    return (err as Error).message.split('\n');
  }
  return [];
}

describe('YAML config files', () => {
  it('fills schema defaults into a valid document', () => {
    const [doc] = parseYaml('listeners:\n  - port: 8080\nroutes:\n  - name: a\n', 'proxy.yaml');
    expect(doc && validateDocument(doc, Config)).toEqual({ listeners: [{ port: 8080 }], routes: [{ name: 'a', timeoutMs: 15000 }] });
  });
  it('reports syntax errors with line and column', () => {
    expect(problems('listeners:\n  - port: 8080\n routes: [\n')[0]).toMatch(/^proxy\.yaml:3:\d+: \/: /);
  });
  it('reports an alias with no anchor (a bare * in a flow list) at its position instead of throwing (found by fuzzing)', () => {
    expect(problems('listeners: []\nroutes:\n  - { name: [*backend] }\n')).toEqual([
      'proxy.yaml:3:14: /: the alias *backend names no anchor defined before it (quote the value if * is meant literally)',
    ]);
    // An anchor defined before its alias still works.
    expect(problems('listeners: []\nroutes:\n  - &r { name: a }\n  - *r\n')).toEqual([]);
  });
  it('refuses duplicate keys', () => {
    expect(problems('listeners: []\nroutes: []\nroutes: []\n')[0]).toMatch(/^proxy\.yaml:3:1: \/: .*[Mm]ap keys must be unique/);
  });
  it('points at the offending value deep in a list, at an unknown key, and at the object missing a field', () => {
    // Line 6 holds the item that misspells name: it is both missing `name` and has `nmae`.
    const text = ['listeners:', '  - port: 99999', 'routes:', '  - name: a', '    timeoutMs: fast', '  - nmae: b', '    methods: [GET, PUT]', ''].join('\n');
    expect(problems(text).sort()).toEqual([
      'proxy.yaml:2:11: /listeners/0/port: must be <= 65535',
      'proxy.yaml:5:16: /routes/0/timeoutMs: must be integer',
      'proxy.yaml:6:5: /routes/1/nmae: unknown field "nmae" (did you mean "name"?)',
      'proxy.yaml:6:5: /routes/1: missing required field "name"',
      'proxy.yaml:7:20: /routes/1/methods/1: must be one of "GET", "POST"',
    ]);
  });
  it('names the document in a multi-document file', () => {
    const out = problems('listeners: []\nroutes: []\n---\nlisteners: []\nroutes: [{name: x, extra: 1}]\n');
    expect(out).toEqual(['proxy.yaml:5:20: [doc 2]/routes/0/extra: unknown field "extra"']);
  });
});
