/**
 * Mutations of byte strings for fuzzing HTTP and YAML: insert, delete, replace and duplicate,
 * biased towards the characters parsers trip on (CR, LF, NUL, SP, HTAB, ':', ',', '%', '.',
 * '/', '-', quotes) and towards line boundaries.
 */
import fc from 'fast-check';

const INTERESTING = [
  '\r',
  '\n',
  '\r\n',
  '\0',
  ' ',
  '\t',
  ':',
  ',',
  ';',
  '%',
  '.',
  '/',
  '-',
  '"',
  "'",
  '#',
  '\x7f',
  '\xff',
  '0',
  'a',
  'Z',
  '\\',
  '*',
  '{',
  '}',
  '[',
];

export type Mutation = { op: 'insert' | 'delete' | 'replace' | 'duplicate'; at: number; len: number; text: string };

const text = fc.oneof(
  fc.constantFrom(...INTERESTING),
  fc.string({ unit: 'binary-ascii', minLength: 1, maxLength: 4 }),
  fc.constantFrom('Transfer-Encoding: chunked', 'Content-Length: 5', 'Host: b', '\r\n\r\n', 'GET / HTTP/1.1', ' HTTP/1.0', '%2e%2e', '%00', 'ffffffff'),
);

export const mutation: fc.Arbitrary<Mutation> = fc.record({
  op: fc.constantFrom('insert', 'delete', 'replace', 'duplicate'),
  at: fc.nat(),
  len: fc.integer({ min: 1, max: 8 }),
  text,
});

/** Applies `ms` to `s` in order; positions wrap around the current length. */
export function mutate(s: string, ms: Mutation[]): string {
  let out = s;
  for (const m of ms) {
    const at = out.length === 0 ? 0 : m.at % (out.length + 1);
    switch (m.op) {
      case 'insert':
        out = out.slice(0, at) + m.text + out.slice(at);
        break;
      case 'delete':
        out = out.slice(0, at) + out.slice(at + m.len);
        break;
      case 'replace':
        out = out.slice(0, at) + m.text + out.slice(at + m.text.length);
        break;
      case 'duplicate':
        out = out.slice(0, at + m.len) + out.slice(at, at + m.len) + out.slice(at + m.len);
        break;
    }
  }
  return out;
}

/** A corpus entry with 1..6 mutations. */
export function mutated(entries: string[]): fc.Arbitrary<string> {
  return fc.tuple(fc.constantFrom(...entries), fc.array(mutation, { minLength: 1, maxLength: 6 })).map(([s, ms]) => mutate(s, ms));
}
