/**
 * Where instances run: a pure function from nodes, workloads (how many instances each revision
 * wants, and what each needs) and the current placements to the next placements. As
 * Kubernetes' scheduler does it, per instance: filter the nodes (resources fit, nodeSelector,
 * taints the workload does not tolerate), score the rest (least allocated, fewest replicas of
 * the same revision, affinity and anti-affinity to other functions), bind to the best.
 * Instances already placed stay where they are unless their node is gone; fewer wanted means
 * instances leave the nodes with most replicas of the revision first. What cannot be placed is
 * pending, with the reasons in kubectl's words.
 */
import { TideError } from '../../lib/errors.ts';

export interface Taint {
  key: string;
  value?: string;
  effect: 'NoSchedule';
}

export interface Toleration {
  key: string;
  /** Equal (default when a value is given): key and value match; Exists: the key alone matches. */
  operator?: 'Equal' | 'Exists';
  value?: string;
}

export interface NodeInfo {
  name: string;
  capacity: { memoryMb: number; cpuMillis: number };
  labels: Record<string, string>;
  taints: Taint[];
}

export interface Workload {
  revision: string;
  function: string;
  desired: number;
  requests: { memoryMb: number; cpuMillis: number };
  nodeSelector: Record<string, string>;
  tolerations: Toleration[];
  /** Functions whose nodes this one prefers. */
  affinity: string[];
  /** Functions whose nodes this one avoids. */
  antiAffinity: string[];
}

export interface Placement {
  revision: string;
  /** Node name → instances of the revision bound there. */
  nodes: Record<string, number>;
  /** Instances wanted that no node can take now. */
  pending: number;
  /** Why they are pending: "0/1 nodes are available: 1 Insufficient memory." */
  reason?: string;
}

interface Usage {
  memoryMb: number;
  cpuMillis: number;
  /** Function name → instances on the node. */
  functions: Map<string, number>;
}

export function tolerates(tolerations: Toleration[], taint: Taint): boolean {
  return tolerations.some((t) => t.key === taint.key && ((t.operator ?? (t.value === undefined ? 'Exists' : 'Equal')) === 'Exists' || t.value === taint.value));
}

/** Next placements for `workloads` (in their order), starting from `current`. */
export function place(nodes: NodeInfo[], workloads: Workload[], current: ReadonlyMap<string, Placement>): Map<string, Placement> {
  const byName = new Map(nodes.map((n) => [n.name, n]));
  const usage = new Map<string, Usage>(nodes.map((n) => [n.name, { memoryMb: 0, cpuMillis: 0, functions: new Map() }]));
  const bind = (node: string, w: Workload, delta: number) => {
    const u = usage.get(node) as Usage;
    u.memoryMb += delta * w.requests.memoryMb;
    u.cpuMillis += delta * w.requests.cpuMillis;
    u.functions.set(w.function, (u.functions.get(w.function) ?? 0) + delta);
  };

  // What stays: every bound instance whose node still exists.
  const out = new Map<string, Placement>();
  for (const w of workloads) {
    const nodesOf: Record<string, number> = {};
    for (const [node, n] of Object.entries(current.get(w.revision)?.nodes ?? {})) {
      if (!byName.has(node) || n <= 0) continue;
      nodesOf[node] = n;
      bind(node, w, n);
    }
    out.set(w.revision, { revision: w.revision, nodes: nodesOf, pending: 0 });
  }

  for (const w of workloads) {
    const p = out.get(w.revision) as Placement;
    let bound = Object.values(p.nodes).reduce((a, b) => a + b, 0);
    // Fewer wanted: leave the nodes with most replicas of this revision (then the fullest) first.
    while (bound > w.desired) {
      const node = Object.keys(p.nodes).sort(
        (a, b) => (p.nodes[b] ?? 0) - (p.nodes[a] ?? 0) || fullness(usage.get(b), byName.get(b)) - fullness(usage.get(a), byName.get(a)) || a.localeCompare(b),
      )[0] as string;
      p.nodes[node] = (p.nodes[node] ?? 0) - 1;
      if (p.nodes[node] === 0) delete p.nodes[node];
      bind(node, w, -1);
      bound--;
    }
    // More wanted: one instance at a time, filter then score.
    while (bound < w.desired) {
      const failures = new Map<string, number>();
      const fit: NodeInfo[] = [];
      for (const n of nodes) {
        const why = unfit(n, usage.get(n.name) as Usage, w);
        if (why === undefined) fit.push(n);
        else failures.set(why, (failures.get(why) ?? 0) + 1);
      }
      if (fit.length === 0) {
        p.pending = w.desired - bound;
        const reasons = [...failures].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0])).map(([why, n]) => `${n} ${why}`);
        p.reason = `0/${nodes.length} nodes are available${reasons.length > 0 ? `: ${reasons.join(', ')}` : ''}.`;
        break;
      }
      const best = fit
        .map((n) => ({ n, s: score(n, usage.get(n.name) as Usage, w, p.nodes[n.name] ?? 0) }))
        .sort((a, b) => b.s - a.s || a.n.name.localeCompare(b.n.name))[0]?.n as NodeInfo;
      p.nodes[best.name] = (p.nodes[best.name] ?? 0) + 1;
      bind(best.name, w, 1);
      bound++;
    }
  }
  return out;
}

/** Why `w` cannot go on `n` now, in kubectl's words; undefined when it can. */
function unfit(n: NodeInfo, u: Usage, w: Workload): string | undefined {
  for (const [k, v] of Object.entries(w.nodeSelector)) if (n.labels[k] !== v) return "node(s) didn't match Pod's node affinity/selector";
  for (const t of n.taints) if (!tolerates(w.tolerations, t)) return `node(s) had untolerated taint {${t.key}${t.value === undefined ? '' : `: ${t.value}`}}`;
  if (u.memoryMb + w.requests.memoryMb > n.capacity.memoryMb) return 'Insufficient memory';
  if (u.cpuMillis + w.requests.cpuMillis > n.capacity.cpuMillis) return 'Insufficient cpu';
  return undefined;
}

function fullness(u: Usage | undefined, n: NodeInfo | undefined): number {
  if (!u || !n) return 0;
  return (u.memoryMb / Math.max(1, n.capacity.memoryMb) + u.cpuMillis / Math.max(1, n.capacity.cpuMillis)) / 2;
}

/** Higher is better: free share after placing (0–100), spread of the revision (0–100), affinity ±. */
function score(n: NodeInfo, u: Usage, w: Workload, replicasHere: number): number {
  const freeMem = 1 - (u.memoryMb + w.requests.memoryMb) / Math.max(1, n.capacity.memoryMb);
  const freeCpu = 1 - (u.cpuMillis + w.requests.cpuMillis) / Math.max(1, n.capacity.cpuMillis);
  const leastAllocated = ((freeMem + freeCpu) / 2) * 100;
  const spread = 100 / (1 + replicasHere);
  const near = w.affinity.some((f) => (u.functions.get(f) ?? 0) > 0) ? 50 : 0;
  const away = w.antiAffinity.some((f) => (u.functions.get(f) ?? 0) > 0) ? 100 : 0;
  return leastAllocated + spread + near - away;
}

/** A function's placement settings. */
export interface PlacementSpec {
  nodeSelector: Record<string, string>;
  tolerations: Toleration[];
  affinity: string[];
  antiAffinity: string[];
}

const LABEL = /^[A-Za-z0-9]([-A-Za-z0-9_./]{0,251}[A-Za-z0-9])?$/;
const VALUE = /^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$/;

function bad(message: string): TideError {
  return new TideError('ERR_INVALID_ARGUMENT', message, { status: 400 });
}

/** Checks a function's placement settings; throws naming the field. */
export function checkPlacement(input: unknown): PlacementSpec {
  const out: PlacementSpec = { nodeSelector: {}, tolerations: [], affinity: [], antiAffinity: [] };
  if (input === undefined || input === null) return out;
  if (typeof input !== 'object' || Array.isArray(input)) throw bad('placement must be an object');
  for (const [key, value] of Object.entries(input as Record<string, unknown>)) {
    if (value === undefined) continue;
    switch (key) {
      case 'nodeSelector': {
        if (value === null || typeof value !== 'object' || Array.isArray(value)) throw bad('placement.nodeSelector must be an object of label values');
        for (const [k, v] of Object.entries(value)) {
          if (!LABEL.test(k)) throw bad(`placement.nodeSelector: "${k}" is not a valid label key`);
          if (typeof v !== 'string' || !VALUE.test(v)) throw bad(`placement.nodeSelector.${k} must be a label value (letters, digits, -_.; at most 63)`);
          out.nodeSelector[k] = v;
        }
        break;
      }
      case 'tolerations': {
        if (!Array.isArray(value)) throw bad('placement.tolerations must be a list');
        value.forEach((t: unknown, i) => {
          const r = t as Toleration;
          if (r === null || typeof r !== 'object' || typeof r.key !== 'string' || !LABEL.test(r.key))
            throw bad(`placement.tolerations[${i}].key must be a label key`);
          if (r.operator !== undefined && r.operator !== 'Equal' && r.operator !== 'Exists')
            throw bad(`placement.tolerations[${i}].operator must be Equal or Exists`);
          if (r.value !== undefined && (typeof r.value !== 'string' || !VALUE.test(r.value)))
            throw bad(`placement.tolerations[${i}].value must be a label value`);
          out.tolerations.push({ key: r.key, ...(r.operator ? { operator: r.operator } : {}), ...(r.value !== undefined ? { value: r.value } : {}) });
        });
        break;
      }
      case 'affinity':
      case 'antiAffinity': {
        if (!Array.isArray(value) || value.some((f) => typeof f !== 'string' || !/^[a-z]([-a-z0-9]*[a-z0-9])?$/.test(f))) {
          throw bad(`placement.${key} must be a list of function names`);
        }
        out[key] = [...value] as string[];
        break;
      }
      default:
        throw bad(`unknown placement setting "placement.${key}": use nodeSelector, tolerations, affinity or antiAffinity`);
    }
  }
  return out;
}
