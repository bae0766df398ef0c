/**
 * Config files: YAML (many documents per file) checked against a JSON Schema, with every
 * problem reported as file:line:column and the field's path. Nothing is returned unless the
 * whole file is valid, so a caller applies all of it or none. Defaults declared in the schema
 * are filled in (Ajv `useDefaults`), so the schema stays the one place they live.
 */
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import { type Document, isMap, isSeq, LineCounter, type Node, parseAllDocuments, visit } from 'yaml';
import { TideError } from '../errors.ts';

export interface ConfigIssue {
  source: string;
  line: number;
  column: number;
  /** JSON-pointer-like path of the field, e.g. /virtualHosts/0/routes/2/match. */
  path: string;
  message: string;
}

export function formatIssue(i: ConfigIssue): string {
  return `${i.source}:${i.line}:${i.column}: ${i.path || '/'}: ${i.message}`;
}

export interface YamlDocument {
  /** 0-based position of the document in its file. */
  index: number;
  value: unknown;
  source: string;
  /** Line and column of the value at `path`, or of the nearest enclosing value that exists. */
  positionOf(path: (string | number)[], key?: boolean): { line: number; column: number };
}

function fail(issues: ConfigIssue[]): never {
  const sorted = [...issues].sort((a, b) => a.line - b.line || a.column - b.column);
  throw new TideError('ERR_CONFIG_INVALID', sorted.map(formatIssue).join('\n'), { status: 400, details: { issues: sorted } });
}

/**
 * A document's plain value. An alias whose anchor is not defined before it (`*name`; a bare
 * `*` in a flow list is one too) or too many aliases fail here, not in the parser: each is
 * reported at its position like any other problem.
 */
function toJS(doc: Document.Parsed, source: string, lines: LineCounter, issues: ConfigIssue[]): unknown {
  try {
    return doc.toJS({ maxAliasCount: 100 }) as unknown;
  } catch (err) {
    let found = false;
    visit(doc, {
      Alias(_key, node) {
        if (node.resolve(doc) !== undefined) return;
        const pos = lines.linePos(node.range?.[0] ?? 0);
        issues.push({
          source,
          line: pos.line,
          column: pos.col,
          path: '',
          message: `the alias *${node.source} names no anchor defined before it (quote the value if * is meant literally)`,
        });
        found = true;
      },
    });
    if (!found) {
      const pos = lines.linePos(doc.range[0]);
      issues.push({ source, line: pos.line, column: pos.col, path: '', message: err instanceof Error ? err.message : String(err) });
    }
    return undefined;
  }
}

/** Parses every document of a YAML file; throws ERR_CONFIG_INVALID listing all syntax errors. */
export function parseYaml(text: string, source: string): YamlDocument[] {
  const lines = new LineCounter();
  const docs = parseAllDocuments(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  const list = Array.isArray(docs) ? docs : [docs];
  const issues: ConfigIssue[] = [];
  for (const doc of list) {
    for (const err of doc.errors) {
      const pos = lines.linePos(err.pos[0]);
      issues.push({ source, line: pos.line, column: pos.col, path: '', message: err.message.split('\n')[0] ?? err.message });
    }
  }
  if (issues.length > 0) fail(issues);
  const values = list.filter((doc) => doc.contents !== null).map((doc) => ({ doc, value: toJS(doc, source, lines, issues) }));
  if (issues.length > 0) fail(issues);
  return values.map(({ doc, value }, index) => ({
    index,
    source,
    value,
    positionOf(path, key = false) {
      let node: unknown = doc.contents;
      let at: Node | undefined = doc.contents ?? undefined;
      for (const seg of path) {
        if (isMap(node)) {
          const pair = node.items.find((p) => String((p.key as { value?: unknown } | null)?.value) === String(seg));
          if (!pair) break;
          if (key && seg === path[path.length - 1]) {
            at = pair.key as Node;
            break;
          }
          node = pair.value;
        } else if (isSeq(node)) {
          node = node.items[Number(seg)];
        } else break;
        if (!node) break;
        at = node as Node;
      }
      const offset = at?.range?.[0] ?? 0;
      const pos = lines.linePos(offset);
      return { line: pos.line, column: pos.col };
    },
  }));
}

/**
 * Throws ERR_CONFIG_INVALID for problems found after schema validation (a reference to a
 * cluster that does not exist, a bad regular expression…), each placed at its field.
 * Paths may be arrays or dotted strings like `virtualHosts[0].routes[2].match`.
 */
export function failAt(doc: YamlDocument, problems: { path: (string | number)[] | string; message: string }[]): never {
  fail(
    problems.map((p) => {
      const segs = typeof p.path === 'string' ? fieldPath(p.path) : p.path;
      const pos = doc.positionOf(segs);
      const path = segs.length ? `/${segs.join('/')}` : '';
      return { source: doc.source, line: pos.line, column: pos.column, path: `${doc.index > 0 ? `[doc ${doc.index + 1}]` : ''}${path}`, message: p.message };
    }),
  );
}

/** `a[0].b.c[2]` → ['a', 0, 'b', 'c', 2]. */
export function fieldPath(field: string): (string | number)[] {
  const out: (string | number)[] = [];
  for (const part of field.split('.')) {
    const m = /^([^[\]]*)((?:\[\d+\])*)$/.exec(part);
    if (!m) {
      out.push(part);
      continue;
    }
    if (m[1]) out.push(m[1]);
    for (const idx of (m[2] ?? '').matchAll(/\[(\d+)\]/g)) out.push(Number(idx[1]));
  }
  return out;
}

const ajv = new Ajv({ allErrors: true, useDefaults: true, strict: false, verbose: true });

/** The known name closest to `name` (at most two edits away), for "did you mean". */
export function closest(name: string, known: string[]): string | undefined {
  let best: string | undefined;
  let bestD = 3;
  for (const k of known) {
    const d = distance(name.toLowerCase(), k.toLowerCase());
    if (d < bestD) {
      best = k;
      bestD = d;
    }
  }
  return best;
}

function distance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0] as number;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = row[j] as number;
      row[j] = Math.min((row[j] as number) + 1, (row[j - 1] as number) + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = tmp;
    }
  }
  return row[b.length] as number;
}
const compiled = new WeakMap<object, ValidateFunction>();

/**
 * Checks one document against `schema` (filling defaults into it) and returns it typed; throws
 * ERR_CONFIG_INVALID listing every problem with its position.
 */
export function validateDocument<T>(doc: YamlDocument, schema: object): T {
  let check = compiled.get(schema);
  if (!check) {
    check = ajv.compile(schema);
    compiled.set(schema, check);
  }
  if (check(doc.value)) return doc.value as T;
  fail(issuesOf(doc, check.errors ?? []));
}

function issuesOf(doc: YamlDocument, errors: ErrorObject[]): ConfigIssue[] {
  const seen = new Set<string>();
  const issues: ConfigIssue[] = [];
  // A union of literals fails once per literal; say it once, with all of them.
  const allowed = new Map<string, unknown[]>();
  for (const e of errors) {
    if (e.keyword === 'const') allowed.set(e.instancePath, [...(allowed.get(e.instancePath) ?? []), (e.params as { allowedValue: unknown }).allowedValue]);
  }
  for (const e of errors) {
    // anyOf/oneOf wrappers repeat what their branches said.
    if (e.keyword === 'anyOf' || e.keyword === 'oneOf') continue;
    const segs = e.instancePath
      .split('/')
      .slice(1)
      .map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
    let path = e.instancePath;
    let message = e.message ?? 'is not valid';
    let pos = doc.positionOf(segs);
    if (e.keyword === 'additionalProperties') {
      const extra = String((e.params as { additionalProperty: string }).additionalProperty);
      path = `${e.instancePath}/${extra}`;
      const known = Object.keys(((e.parentSchema as { properties?: object } | undefined)?.properties ?? {}) as object);
      const guess = closest(extra, known);
      message = `unknown field "${extra}"${guess ? ` (did you mean "${guess}"?)` : ''}`;
      pos = doc.positionOf([...segs, extra], true);
    } else if (e.keyword === 'required') {
      message = `missing required field "${(e.params as { missingProperty: string }).missingProperty}"`;
    } else if (e.keyword === 'const') {
      message = `must be one of ${(allowed.get(e.instancePath) ?? []).map((v) => JSON.stringify(v)).join(', ')}`;
    } else if (e.keyword === 'enum') {
      message = `must be one of ${((e.params as { allowedValues: unknown[] }).allowedValues ?? []).map((v) => JSON.stringify(v)).join(', ')}`;
    } else if (e.keyword === 'pattern') {
      // A schema that says what its pattern means says it instead of the regular expression.
      const described = (e.parentSchema as { description?: string } | undefined)?.description;
      // The value is echoed shortened: a header value may be a secret.
      const got = String(e.data);
      if (described) message = `must be ${described} (got ${JSON.stringify(got.length > 24 ? `${got.slice(0, 20)}…` : got)})`;
    }
    const k = `${path}|${message}`;
    if (seen.has(k)) continue;
    seen.add(k);
    issues.push({ source: doc.source, line: pos.line, column: pos.column, path: `${doc.index > 0 ? `[doc ${doc.index + 1}]` : ''}${path}`, message });
  }
  return issues;
}
