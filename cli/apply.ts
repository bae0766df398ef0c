/**
 * The CLI half of `tide apply -f`: reads the files (a folder: every .yaml/.yml in it, in
 * name order), checks every document against its kind's schema, checks what can be checked
 * without the server (duplicates, one of source or image, the source file, units), bundles each
 * function's source, and turns the documents into apply items. Every problem, here or from the
 * server, is printed as file:line:column: /path: message, and then nothing is applied.
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import { dirname, extname, join, relative, resolve } from 'node:path';
import type { DeployInput } from '../control/api/functions.ts';
import type { ApplyItem, ApplyProblem, EnvRef } from '../control/api/resources.ts';
import {
  type ConfigResource,
  EnvelopeSchema,
  type FunctionResource,
  KIND_SCHEMAS,
  type Kind,
  type PolicyResource,
  type Resource,
  type RolloutResource,
  type RouteResource,
  type SecretResource,
} from '../lib/config/resources.ts';
import { type ConfigIssue, failAt, formatIssue, parseYaml, validateDocument, type YamlDocument } from '../lib/config/yaml.ts';
import { parseDuration } from '../lib/duration.ts';
import { isTideError, TideError } from '../lib/errors.ts';

export interface Loaded {
  doc: YamlDocument;
  resource: Resource;
  /** The folder relative paths in the document are resolved against. */
  dir: string;
}

/** Every problem as file:line:col lines, in one error that says nothing was applied. */
export function invalid(issues: ConfigIssue[]): TideError {
  const sorted = [...issues].sort((a, b) => a.source.localeCompare(b.source) || a.line - b.line || a.column - b.column);
  return new TideError(
    'ERR_CONFIG_INVALID',
    `${sorted.map(formatIssue).join('\n')}\n${sorted.length} problem${sorted.length === 1 ? '' : 's'}; nothing was applied`,
    {
      details: { issues: sorted },
    },
  );
}

function issuesOf(err: unknown): ConfigIssue[] {
  if (isTideError(err, 'ERR_CONFIG_INVALID')) return ((err.details?.issues as ConfigIssue[] | undefined) ?? []).slice();
  throw err;
}

function issueAt(doc: YamlDocument, path: string, message: string): ConfigIssue[] {
  try {
    failAt(doc, [{ path, message }]);
  } catch (err) {
    return issuesOf(err);
  }
}

async function files(paths: string[]): Promise<string[]> {
  const out: string[] = [];
  for (const p of paths) {
    const st = await stat(p).catch(() => undefined);
    if (!st) throw new TideError('ERR_INVALID_ARGUMENT', `-f ${p}: no such file or folder`);
    if (st.isDirectory()) {
      const names = (await readdir(p)).filter((f) => ['.yaml', '.yml'].includes(extname(f))).sort();
      if (names.length === 0) throw new TideError('ERR_INVALID_ARGUMENT', `-f ${p}: the folder has no .yaml or .yml file`);
      out.push(...names.map((n) => join(p, n)));
    } else out.push(p);
  }
  return out;
}

/** Parses and schema-checks every document of every file; throws with every problem found. */
export async function loadResources(paths: string[]): Promise<Loaded[]> {
  const loaded: Loaded[] = [];
  const issues: ConfigIssue[] = [];
  for (const file of await files(paths)) {
    const text = await readFile(file, 'utf8');
    const source = relative(process.cwd(), file) || file;
    let docs: YamlDocument[];
    try {
      docs = parseYaml(text, source);
    } catch (err) {
      issues.push(...issuesOf(err));
      continue;
    }
    for (const doc of docs) {
      if (doc.value === null || doc.value === undefined) continue;
      try {
        validateDocument(doc, EnvelopeSchema);
        const kind = (doc.value as { kind: Kind }).kind;
        loaded.push({ doc, resource: validateDocument<Resource>(doc, KIND_SCHEMAS[kind]), dir: dirname(resolve(file)) });
      } catch (err) {
        issues.push(...issuesOf(err));
      }
    }
  }
  const seen = new Map<string, Loaded>();
  for (const l of loaded) {
    const id = `${l.resource.kind}/${l.resource.metadata.name}`;
    const first = seen.get(id);
    if (first) {
      const at = first.doc.positionOf(['metadata', 'name']);
      issues.push(...issueAt(l.doc, 'metadata.name', `${id} is given twice (first at ${first.doc.source}:${at.line}:${at.column})`));
    } else seen.set(id, l);
  }
  if (issues.length > 0) throw invalid(issues);
  if (loaded.length === 0) throw new TideError('ERR_INVALID_ARGUMENT', `no resources in ${paths.join(', ')}`);
  return loaded;
}

const MIB = 1024 * 1024;
const UNITS: Record<string, number> = { '': 1, Ki: 1024, Mi: MIB, Gi: 1024 * MIB, K: 1000, M: 1000 ** 2, G: 1000 ** 3, kb: 1024, mb: MIB, gb: 1024 * MIB };

function bytes(q: string): number {
  const m = /^(\d+(?:\.\d+)?)([A-Za-z]*)$/.exec(q) as RegExpExecArray;
  return Math.round(Number(m[1]) * (UNITS[m[2] as string] ?? 1));
}

function millicores(v: string | number): number {
  if (typeof v === 'number') return Math.round(v * 1000);
  return v.endsWith('m') ? Number(v.slice(0, -1)) : Math.round(Number(v) * 1000);
}

/** The items to send; bundles each function's source (`bundle` does the work). */
export async function toItems(loaded: Loaded[], bundle: (file: string) => Promise<Uint8Array>): Promise<ApplyItem[]> {
  const items: ApplyItem[] = [];
  const issues: ConfigIssue[] = [];
  for (const l of loaded) {
    const r = l.resource;
    if (r.kind === 'Secret' || r.kind === 'Config') {
      items.push({ kind: r.kind, name: r.metadata.name, data: (r as SecretResource | ConfigResource).spec.data });
      continue;
    }
    if (r.kind === 'Rollout') {
      items.push({ kind: 'Rollout', name: r.metadata.name, spec: (r as RolloutResource).spec });
      continue;
    }
    if (r.kind === 'Policy') {
      items.push({ kind: 'Policy', name: r.metadata.name, spec: (r as PolicyResource).spec });
      continue;
    }
    if (r.kind === 'Route') {
      const spec = (r as RouteResource).spec;
      let ok = true;
      spec.rules.forEach((rule, i) => {
        rule.split.forEach((b, j) => {
          if ((b.revision === undefined) === (b.function === undefined)) {
            issues.push(...issueAt(l.doc, `spec.rules[${i}].split[${j}]`, 'give exactly one of revision or function'));
            ok = false;
          }
        });
        if (rule.mirror && (rule.mirror.revision === undefined) === (rule.mirror.function === undefined)) {
          issues.push(...issueAt(l.doc, `spec.rules[${i}].mirror`, 'give exactly one of revision or function'));
          ok = false;
        }
        if (rule.fault?.abort && rule.fault.abort.status < 400) {
          issues.push(...issueAt(l.doc, `spec.rules[${i}].fault.abort.status`, 'an injected abort must be a 4xx or 5xx status'));
          ok = false;
        }
        const sum = rule.split.reduce((n, b) => n + b.weight, 0);
        if (sum !== 100) {
          issues.push(...issueAt(l.doc, `spec.rules[${i}].split`, `the weights add up to ${sum}, not 100`));
          ok = false;
        }
      });
      if (ok) items.push({ kind: 'Route', name: r.metadata.name, spec });
      continue;
    }
    const spec = (r as FunctionResource).spec;
    const at = (path: string, message: string) => issues.push(...issueAt(l.doc, path, message));
    if ((spec.source === undefined) === (spec.image === undefined)) {
      at('spec', 'give exactly one of source (a module to bundle) or image');
      continue;
    }
    const env: Record<string, string> = {};
    const envRefs: EnvRef[] = [];
    (spec.env ?? []).forEach((e, i) => {
      if ((e.value === undefined) === (e.valueFrom === undefined)) {
        at(`spec.env[${i}]`, 'give exactly one of value or valueFrom');
        return;
      }
      if (e.value !== undefined) env[e.name] = e.value;
      const s = e.valueFrom?.secretKeyRef;
      const c = e.valueFrom?.configKeyRef;
      if (s) envRefs.push({ name: e.name, from: 'secret', source: s.name, key: s.key, path: `spec.env[${i}].valueFrom.secretKeyRef` });
      if (c) envRefs.push({ name: e.name, from: 'config', source: c.name, key: c.key, path: `spec.env[${i}].valueFrom.configKeyRef` });
    });
    const config: Record<string, unknown> = {};
    try {
      if (spec.resources?.memory !== undefined) {
        const b = bytes(spec.resources.memory);
        if (b % MIB !== 0) throw Object.assign(new Error('memory must be a whole number of MiB, like 128Mi'), { at: 'spec.resources.memory' });
        config.memoryMb = b / MIB;
      }
      if (spec.resources?.cpu !== undefined) config.cpuMillis = millicores(spec.resources.cpu);
      if (spec.resources?.cpuLimit !== undefined) config.cpuLimitMillis = millicores(spec.resources.cpuLimit);
      if (spec.maxBody !== undefined) config.maxBodyBytes = bytes(spec.maxBody);
      if (spec.timeout !== undefined) config.timeoutMs = parseDuration(spec.timeout, 'timeout');
      if (spec.scaling) {
        const { stableWindow, scaleToZeroGracePeriod, scaleDownDelay, tick, queueTimeout, ...rest } = spec.scaling;
        config.scaling = {
          ...rest,
          ...(stableWindow ? { stableWindowMs: parseDuration(stableWindow, 'stableWindow') } : {}),
          ...(scaleToZeroGracePeriod ? { scaleToZeroGracePeriodMs: parseDuration(scaleToZeroGracePeriod, 'scaleToZeroGracePeriod', { allowZero: true }) } : {}),
          ...(scaleDownDelay ? { scaleDownDelayMs: parseDuration(scaleDownDelay, 'scaleDownDelay', { allowZero: true }) } : {}),
          ...(tick ? { tickMs: parseDuration(tick, 'tick') } : {}),
          ...(queueTimeout ? { queueTimeoutMs: parseDuration(queueTimeout, 'queueTimeout') } : {}),
        };
      }
      if (spec.probes) config.probes = spec.probes;
      if (spec.placement) config.placement = spec.placement;
    } catch (err) {
      at((err as { at?: string }).at ?? 'spec', (err as Error).message);
      continue;
    }
    let code: Uint8Array | undefined;
    if (spec.source !== undefined) {
      const file = resolve(l.dir, spec.source);
      try {
        code = await bundle(file);
      } catch (err) {
        at('spec.source', (err as Error).message.split('\n').slice(0, 3).join(' '));
        continue;
      }
    }
    items.push({
      kind: 'Function',
      name: r.metadata.name,
      envRefs,
      deploy: {
        name: r.metadata.name,
        source: spec.source ?? spec.image?.path ?? '',
        ...(code ? { bundle: code } : {}),
        ...(spec.image ? { image: { ...spec.image, path: resolve(l.dir, spec.image.path) } } : {}),
        env,
        ...(spec.sandbox ? { sandbox: spec.sandbox } : {}),
        ...(r.metadata.annotations?.['tide.dev/change-cause'] ? { changeCause: r.metadata.annotations['tide.dev/change-cause'] } : {}),
        config: config as DeployInput['config'],
      },
    });
  }
  if (issues.length > 0) throw invalid(issues);
  return items;
}

/** The server's problems (by item and field) placed in the files. */
export function placeProblems(loaded: Loaded[], problems: ApplyProblem[]): TideError {
  const issues: ConfigIssue[] = [];
  for (const p of problems) {
    const l = loaded[p.item];
    if (!l) continue;
    issues.push(...issueAt(l.doc, p.path, p.message));
  }
  return invalid(issues);
}
