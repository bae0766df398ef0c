/**
 * The Function kind: names, per-function settings with their defaults (declared here and only
 * here), and the records Tide stores for functions and their immutable revisions.
 */
import { TideError } from '../../../lib/errors.ts';
import { resolveScalingSpec, SCALING_DEFAULTS, type ScalingSpec } from '../../autoscaler/config.ts';
import { checkPlacement, type NodeInfo, type PlacementSpec } from '../../scheduler/placement.ts';
import { type ProbesSpec, resolveProbes } from './probe.ts';

/** Per-revision settings. Every field has a default in FUNCTION_DEFAULTS (scaling: SCALING_DEFAULTS). */
export interface FunctionConfig {
  /** Longest one request may run, from dispatch to the last body byte, in ms. Default 30000; 1..3600000. */
  timeoutMs: number;
  /** Heap limit of each worker-thread instance (V8 old generation), in MiB; also what the scheduler reserves for it. Default 128; 16..16384. */
  memoryMb: number;
  /** CPU the scheduler reserves for each instance, in millicores (1000 = one core); a container's CPU weight. Default 25 (40 instances a core); 1..64000. */
  cpuMillis: number;
  /** Most CPU a container instance may use (its cgroup quota), millicores; 0 = no limit. Default 1000; 0..64000. */
  cpuLimitMillis: number;
  /** Largest request body accepted, in bytes; larger gets 413. Default 10 MiB; 0..1 GiB. */
  maxBodyBytes: number;
  /** How many instances run, and how many requests each takes at once (control/autoscaler/config.ts). */
  scaling: ScalingSpec;
  /** Startup, readiness and liveness probes (schema/probe.ts). Default none. */
  probes: ProbesSpec;
  /** Which nodes instances may run on and which they prefer (control/scheduler/placement.ts). Default anywhere. */
  placement: PlacementSpec;
}

type NumericSetting = Exclude<keyof FunctionConfig, 'scaling' | 'probes' | 'placement'>;

export const FUNCTION_DEFAULTS: Readonly<FunctionConfig> = Object.freeze({
  timeoutMs: 30_000,
  memoryMb: 128,
  cpuMillis: 25,
  cpuLimitMillis: 1000,
  maxBodyBytes: 10 * 1024 * 1024,
  scaling: SCALING_DEFAULTS,
  probes: Object.freeze({}),
  placement: Object.freeze({ nodeSelector: {}, tolerations: [], affinity: [], antiAffinity: [] }),
});

const LIMITS: Record<NumericSetting, [number, number]> = {
  timeoutMs: [1, 3_600_000],
  memoryMb: [16, 16_384],
  cpuMillis: [1, 64_000],
  cpuLimitMillis: [0, 64_000],
  maxBodyBytes: [0, 1024 * 1024 * 1024],
};

/** Settings of earlier versions, and what replaced them. */
const REPLACED: Record<string, string> = {
  instances: 'scaling.minScale, scaling.maxScale and scaling.initialScale (the CLI keeps --instances N as a shorthand for all three)',
  concurrency: 'scaling.containerConcurrency',
};

/** Fills defaults and checks every field; names the field and the rule on failure. */
export function resolveFunctionConfig(input: Partial<Record<keyof FunctionConfig, unknown>> = {}): FunctionConfig {
  const out: FunctionConfig = { ...FUNCTION_DEFAULTS, scaling: { ...SCALING_DEFAULTS }, probes: {}, placement: checkPlacement(undefined) };
  for (const [key, value] of Object.entries(input)) {
    if (value === undefined) continue;
    if (key === 'scaling') {
      if (value === null || typeof value !== 'object' || Array.isArray(value)) {
        throw new TideError('ERR_INVALID_ARGUMENT', 'scaling must be an object of scaling settings', { status: 400 });
      }
      out.scaling = resolveScalingSpec(value as Partial<Record<keyof ScalingSpec, unknown>>, 'scaling.');
      continue;
    }
    if (key === 'probes') {
      out.probes = resolveProbes(value);
      continue;
    }
    if (key === 'placement') {
      out.placement = checkPlacement(value);
      continue;
    }
    if (key in REPLACED) {
      throw new TideError('ERR_INVALID_ARGUMENT', `the function setting "${key}" was replaced by ${REPLACED[key]}`, { status: 400 });
    }
    if (!(key in LIMITS)) {
      throw new TideError('ERR_INVALID_ARGUMENT', `unknown function setting "${key}"`, { status: 400 });
    }
    const field = key as NumericSetting;
    const [min, max] = LIMITS[field];
    if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
      throw new TideError('ERR_INVALID_ARGUMENT', `${field} must be an integer from ${min} to ${max} (got ${JSON.stringify(value)})`, { status: 400 });
    }
    out[field] = value;
  }
  if (out.cpuLimitMillis !== 0 && out.cpuLimitMillis < out.cpuMillis) {
    throw new TideError('ERR_INVALID_ARGUMENT', `cpuLimitMillis must be 0 (no limit) or at least cpuMillis ${out.cpuMillis} (got ${out.cpuLimitMillis})`, {
      status: 400,
    });
  }
  return out;
}

/** Longest function name: a revision name (name + "-00001") must still be a DNS label (63). */
export const MAX_NAME_LENGTH = 57;
const DNS_LABEL = /^[a-z]([-a-z0-9]*[a-z0-9])?$/;

export function validateFunctionName(name: unknown): string {
  if (typeof name !== 'string' || name.length === 0) {
    throw new TideError('ERR_INVALID_NAME', 'a function name is required', { status: 400 });
  }
  if (name.length > MAX_NAME_LENGTH || !DNS_LABEL.test(name)) {
    throw new TideError(
      'ERR_INVALID_NAME',
      `invalid function name "${name}": use at most ${MAX_NAME_LENGTH} lowercase letters, digits and '-', ` +
        'starting with a letter and ending with a letter or digit (it becomes a DNS label: NAME.localhost)',
      { status: 400 },
    );
  }
  return name;
}

const ENV_KEY = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** Checks env or secret maps: keys are identifiers, values strings, no key in both. */
export function validateVariables(env: unknown, secrets: unknown): { env: Record<string, string>; secrets: Record<string, string> } {
  const check = (what: string, value: unknown): Record<string, string> => {
    if (value === undefined || value === null) return {};
    if (typeof value !== 'object' || Array.isArray(value)) {
      throw new TideError('ERR_INVALID_ARGUMENT', `${what} must be an object of string values`, { status: 400 });
    }
    const out: Record<string, string> = {};
    for (const [k, v] of Object.entries(value)) {
      if (!ENV_KEY.test(k)) {
        throw new TideError('ERR_INVALID_ARGUMENT', `${what} name "${k}" is not valid: use letters, digits and _, not starting with a digit`, { status: 400 });
      }
      if (typeof v !== 'string') {
        throw new TideError('ERR_INVALID_ARGUMENT', `${what} ${k} must be a string`, { status: 400 });
      }
      out[k] = v;
    }
    return out;
  };
  const e = check('env', env);
  const s = check('secret', secrets);
  for (const k of Object.keys(s)) {
    if (k in e) throw new TideError('ERR_INVALID_ARGUMENT', `${k} is given both as env and as secret`, { status: 400 });
  }
  return { env: e, secrets: s };
}

export const DEFAULT_NAMESPACE = 'default';

export type SandboxKind = 'worker' | 'container';

/** A container image a revision runs: where it is on the node, what it is, and how to run it. */
export interface ImageRef {
  /** Absolute path of the OCI layout, tar or root filesystem folder on the node. */
  source: string;
  kind: 'oci' | 'docker' | 'rootfs';
  digest: string;
  /** Chain id of its layers: the unpacked copy's name in the node's image cache ('' for a root filesystem folder). */
  chain: string;
  /** What runs: the function's command if given, else the image's entrypoint + cmd. */
  command: string[];
  /** Environment from the image config (the function's env comes on top). */
  env: string[];
  workingDir: string;
  /** The port the process listens on ($PORT): the function's, else the image's first exposed one, else 8080. */
  port: number;
}

export function validateSandbox(value: unknown): SandboxKind {
  if (value === undefined || value === null) return 'worker';
  if (value === 'worker' || value === 'container') return value;
  throw new TideError('ERR_INVALID_ARGUMENT', `sandbox must be "worker" or "container" (got ${JSON.stringify(value)})`, { status: 400 });
}

/** Stored at /tide/functions/<namespace>/<name>. */
export interface FunctionRecord {
  name: string;
  namespace: string;
  createdAt: string;
  /** The revision the gateway sends traffic to. */
  servingRevision: string;
  /** The newest revision ever created. */
  latestRevision: string;
  /** Number of the newest revision; the next is this + 1 (numbers are never reused). */
  revisionCounter: number;
  /** Set when `tide apply` wrote it last: `tide apply --prune` may delete it when its file no longer has it. */
  managedBy?: 'apply';
}

/**
 * Reads a stored revision. Revisions written before scaling settings existed carry
 * `instances` and `concurrency`; they read as that fixed count and that per-instance limit.
 */
export function parseRevision(json: string): RevisionRecord {
  const r = JSON.parse(json) as RevisionRecord & { config: { instances?: number; concurrency?: number } };
  r.config.probes ??= {};
  r.config.placement ??= checkPlacement(undefined);
  r.config.cpuMillis ??= FUNCTION_DEFAULTS.cpuMillis;
  r.config.cpuLimitMillis ??= FUNCTION_DEFAULTS.cpuLimitMillis;
  if (r.config.scaling === undefined) {
    const { instances, concurrency, ...rest } = r.config;
    const n = instances ?? 1;
    r.config = { ...rest, scaling: { ...SCALING_DEFAULTS, minScale: n, maxScale: n, initialScale: n, containerConcurrency: concurrency ?? 0 } };
  }
  return r;
}

/** Stored at /tide/revisions/<namespace>/<revision>. Immutable once written. */
export interface RevisionRecord {
  name: string;
  namespace: string;
  function: string;
  number: number;
  createdAt: string;
  /** sha256 of the bundle, hex. */
  digest: string;
  /** sha256 over digest, env, secrets and config: equal hashes mean an identical deploy. */
  templateHash: string;
  /** File the bundle was built from, as the deployer named it. */
  source: string;
  /** Why it was made, in the deployer's words (`--change-cause`, annotation tide.dev/change-cause). */
  changeCause?: string;
  /** worker: a thread in Tide's process; container: a runc container (runtime/sandbox/container). */
  sandbox: SandboxKind;
  /** For an image instead of a bundle (container sandbox only). */
  image?: ImageRef;
  env: Record<string, string>;
  secrets: Record<string, string>;
  config: FunctionConfig;
}

/**
 * Reported by each node agent that runs the revision at /tide/status/revisions/<namespace>/<revision>/<node>;
 * `mergeStatuses` makes the revision's status from them.
 */
export interface RevisionStatus {
  revision: string;
  /** pending: no node can take its instances (see `pending`). */
  phase: 'starting' | 'ready' | 'failed' | 'stopping' | 'pending';
  readyInstances: number;
  desiredInstances: number;
  /** Every instance on this node, ready or not. */
  instances?: InstanceStatus[];
  /** Why some instances are not placed, as the scheduler says: "Pending: 1 instance: 0/1 nodes are available: 1 Insufficient memory." */
  pending?: string;
  /** Instances replaced after a crash, timeout kill or memory limit, since the revision started here. */
  restarts: number;
  /** The node that reported it (absent in records written before nodes were named here). */
  node?: string;
  /** Merged statuses: ready instances per node. */
  nodes?: Record<string, number>;
  lastError?: string;
  lastErrorAt?: string;
  updatedAt: string;
}

export interface InstanceStatus {
  id: string;
  /**
   * starting: loading the function, or waiting for its startup/first readiness probe; ready:
   * receiving requests; unready: its readiness probe fails, so it gets none; draining: finishing
   * its requests before it stops.
   */
  phase: 'starting' | 'ready' | 'unready' | 'draining';
  since: string;
}

/**
 * Written by the autoscaler at /tide/scale/<namespace>/<revision> when the count it wants
 * changes; the node agents make it so. Absent: the revision's initialScale (bounded by minScale).
 */
export interface ScaleRecord {
  revision: string;
  desired: number;
  reason: string;
  updatedAt: string;
}

/** A node as it registers itself at /tide/nodes/<name>. */
export interface NodeRecord extends NodeInfo {
  /** When it (re)registered. */
  registeredAt: string;
  /** A cluster node: where gateways and other nodes reach its mesh listener (host:port). */
  mesh?: string;
}

/**
 * Written by the scheduler at /tide/placements/<namespace>/<revision>: how many instances of
 * the revision each node runs, and how many no node can take (with kubectl-style reasons).
 */
export interface PlacementRecord {
  revision: string;
  nodes: Record<string, number>;
  pending: number;
  reason?: string;
  updatedAt: string;
}

export function revisionName(fn: string, n: number): string {
  return `${fn}-${String(n).padStart(5, '0')}`;
}

export const keys = {
  functions: (ns = DEFAULT_NAMESPACE) => `/tide/functions/${ns}/`,
  function: (name: string, ns = DEFAULT_NAMESPACE) => `/tide/functions/${ns}/${name}`,
  revisions: (ns = DEFAULT_NAMESPACE) => `/tide/revisions/${ns}/`,
  revision: (name: string, ns = DEFAULT_NAMESPACE) => `/tide/revisions/${ns}/${name}`,
  statuses: (ns = DEFAULT_NAMESPACE) => `/tide/status/revisions/${ns}/`,
  /** The revision's status records: one per node that runs it, at <this>/<node>. */
  status: (rev: string, ns = DEFAULT_NAMESPACE) => `/tide/status/revisions/${ns}/${rev}`,
  nodeStatus: (rev: string, node: string, ns = DEFAULT_NAMESPACE) => `/tide/status/revisions/${ns}/${rev}/${node}`,
  scales: (ns = DEFAULT_NAMESPACE) => `/tide/scale/${ns}/`,
  scale: (rev: string, ns = DEFAULT_NAMESPACE) => `/tide/scale/${ns}/${rev}`,
  nodes: () => '/tide/nodes/',
  node: (name: string) => `/tide/nodes/${name}`,
  placements: (ns = DEFAULT_NAMESPACE) => `/tide/placements/${ns}/`,
  placement: (rev: string, ns = DEFAULT_NAMESPACE) => `/tide/placements/${ns}/${rev}`,
};

/** The keys a node agent watches and writes, for namespace `ns`. */
export function agentKeys(ns = DEFAULT_NAMESPACE) {
  return {
    functions: keys.functions(ns),
    revisions: keys.revisions(ns),
    statuses: keys.statuses(ns),
    status: (rev: string, node: string) => keys.nodeStatus(rev, node, ns),
    placements: keys.placements(ns),
    node: (name: string) => keys.node(name),
    routes: `/tide/routes/${ns}/`,
  };
}

const PHASE_RANK: Record<RevisionStatus['phase'], number> = { ready: 4, starting: 3, pending: 2, failed: 1, stopping: 0 };

/**
 * One status per revision from the nodes' reports: ready if any node serves it, its ready
 * instances summed, every instance listed (with its node), the latest error.
 */
export function mergeStatuses(reports: Iterable<RevisionStatus>): Map<string, RevisionStatus> {
  const out = new Map<string, RevisionStatus>();
  for (const r of reports) {
    const node = r.node ?? '';
    const instances = (r.instances ?? []).map((i) => (node ? { ...i, node } : i));
    const have = out.get(r.revision);
    if (!have) {
      out.set(r.revision, { ...r, instances, nodes: { [node]: r.readyInstances } });
      continue;
    }
    const better = PHASE_RANK[r.phase] > PHASE_RANK[have.phase];
    const latestError = (r.lastErrorAt ?? '') > (have.lastErrorAt ?? '') ? r : have;
    out.set(r.revision, {
      ...have,
      phase: better ? r.phase : have.phase,
      readyInstances: have.readyInstances + r.readyInstances,
      desiredInstances: Math.max(have.desiredInstances, r.desiredInstances),
      instances: [...(have.instances ?? []), ...instances],
      restarts: have.restarts + r.restarts,
      nodes: { ...have.nodes, [node]: r.readyInstances },
      ...(have.pending || r.pending ? { pending: have.pending ?? r.pending } : {}),
      ...(latestError.lastError ? { lastError: latestError.lastError, lastErrorAt: latestError.lastErrorAt } : {}),
      updatedAt: r.updatedAt > have.updatedAt ? r.updatedAt : have.updatedAt,
    });
  }
  return out;
}
