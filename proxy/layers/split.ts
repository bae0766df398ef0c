/**
 * The weighted split: picks one backend (cluster stack) per request and keeps it for every
 * retry, so per-backend metrics stay exact. Weights are integers; picks follow smooth
 * weighted round robin (nginx's), so a 90/10 split is 90/10 over any 10 consecutive requests,
 * not only on average. With `sticky`, a request carrying the header or cookie goes to the
 * backend its value hashes to (stable while the weights do not change); others are split as
 * usual.
 */
import type { Dispatch, ProxyRequest } from '../http/types.ts';

export interface Backend {
  name: string;
  weight: number;
  dispatch: Dispatch;
}

export interface StickyBy {
  header?: string | undefined;
  cookie?: string | undefined;
}

export function splitDispatch(backends: Backend[], sticky: StickyBy | undefined): Dispatch {
  const live = backends.filter((b) => b.weight > 0);
  if (live.length === 1 && !sticky) {
    const only = live[0] as Backend;
    return (req, handler) => {
      req.cluster = only.name;
      only.dispatch(req, handler);
    };
  }
  const total = live.reduce((s, b) => s + b.weight, 0);
  const current = live.map(() => 0);
  const next = (): Backend => {
    let best = 0;
    for (let i = 0; i < live.length; i++) {
      current[i] = (current[i] as number) + (live[i] as Backend).weight;
      if ((current[i] as number) > (current[best] as number)) best = i;
    }
    current[best] = (current[best] as number) - total;
    return live[best] as Backend;
  };
  const byKey = (key: string): Backend => {
    let point = fnv1a(key) % total;
    for (const b of live) {
      if (point < b.weight) return b;
      point -= b.weight;
    }
    return live[live.length - 1] as Backend;
  };
  const header = sticky?.header?.toLowerCase();
  const cookie = sticky?.cookie;
  return (req, handler) => {
    const key = sticky ? stickyKey(req, header, cookie) : undefined;
    const b = key === undefined ? next() : byKey(key);
    req.cluster = b.name;
    b.dispatch(req, handler);
  };
}

function stickyKey(req: ProxyRequest, header: string | undefined, cookie: string | undefined): string | undefined {
  if (header) {
    const v = req.headers[header];
    if (v) return v;
  }
  if (cookie) {
    const all = req.headers.cookie;
    if (all) {
      for (const part of all.split(';')) {
        const eq = part.indexOf('=');
        if (eq !== -1 && part.slice(0, eq).trim() === cookie) return part.slice(eq + 1).trim();
      }
    }
  }
  return undefined;
}

/** 32-bit FNV-1a: cheap and well spread for short keys. */
export function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}
