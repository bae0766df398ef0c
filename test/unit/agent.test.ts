/**
 * The node agent's reconcile over the memory store, with a driver that only records what it
 * was asked to do: which revisions it starts and stops, and what status it reports.
 */
import { afterEach, describe, expect, it } from 'vitest';
import {
  agentKeys,
  FUNCTION_DEFAULTS,
  type FunctionRecord,
  keys,
  type RevisionRecord,
  type RevisionStatus,
  type ScaleRecord,
} from '../../control/api/schema/function.ts';
import { PROBE_DEFAULTS, type ProbeSpec, type ProbesSpec } from '../../control/api/schema/probe.ts';
import { SCALING_DEFAULTS, type ScalingSpec } from '../../control/autoscaler/config.ts';
import { Scheduler } from '../../control/scheduler/scheduler.ts';
import { createMemoryStore, type Store } from '../../control/store/index.ts';
import { TideError } from '../../lib/errors.ts';
import { silentLogger } from '../../lib/log.ts';
import { NodeAgent } from '../../runtime/agent/agent.ts';
import type { Instance, InstanceSpec, SandboxDriver, SandboxRequest, SandboxResponse } from '../../runtime/sandbox/driver.ts';

class RecordingDriver implements SandboxDriver {
  readonly kind = 'worker' as const;
  started: string[] = [];
  stopped: string[] = [];
  failOn = new Set<string>();
  /** Fail the n-th start call (1-based) only. */
  failCall = 0;
  /** Hold starts of these revisions until released. */
  hold = new Map<string, Promise<void>>();
  /** How long each dispatched request takes, ms. */
  dispatchMs = 0;
  /** The status an instance answers a probe path with. */
  health: (path: string, instance: string) => number = () => 200;
  #calls = 0;
  async start(spec: InstanceSpec): Promise<Instance> {
    const call = ++this.#calls;
    await this.hold.get(spec.revision);
    if (this.failOn.has(spec.revision) || call === this.failCall) throw new TideError('ERR_FUNCTION_INVALID', `cannot load ${spec.revision}`);
    this.started.push(spec.revision);
    const ms = this.dispatchMs;
    const inst = {
      spec,
      inflight: 0,
      dispatch: async (req: SandboxRequest | null, res: SandboxResponse | null) => {
        inst.inflight++;
        await new Promise((r) => setTimeout(r, ms));
        inst.inflight--;
        if (req && res) {
          res.writeHead(this.health(new URL(req.url).pathname, spec.id), []);
          res.end();
        }
      },
    };
    return inst;
  }
  async stop(instance: Instance): Promise<void> {
    this.stopped.push(instance.spec.revision);
  }
  async probe(): Promise<boolean> {
    return true;
  }
}

function revision(fn: string, n: number, instances = 1, scaling: Partial<ScalingSpec> = {}, probes: ProbesSpec = {}): RevisionRecord {
  return {
    name: `${fn}-${String(n).padStart(5, '0')}`,
    namespace: 'default',
    function: fn,
    number: n,
    createdAt: new Date(0).toISOString(),
    digest: 'a'.repeat(64),
    templateHash: String(n),
    source: `${fn}.ts`,
    sandbox: 'worker',
    env: {},
    secrets: {},
    config: { ...FUNCTION_DEFAULTS, scaling: { ...SCALING_DEFAULTS, minScale: instances, maxScale: instances, initialScale: instances, ...scaling }, probes },
  };
}

async function putFunction(store: Store, fn: string, serving: string, latest = serving): Promise<void> {
  const rec: FunctionRecord = {
    name: fn,
    namespace: 'default',
    createdAt: new Date(0).toISOString(),
    servingRevision: serving,
    latestRevision: latest,
    revisionCounter: 9,
  };
  await store.put(keys.function(fn), JSON.stringify(rec));
}

async function status(store: Store, rev: string): Promise<RevisionStatus | undefined> {
  const kv = await store.get(keys.nodeStatus(rev, NODE.name));
  return kv ? (JSON.parse(kv.value) as RevisionStatus) : undefined;
}

const agents: NodeAgent[] = [];
const schedulers = new Map<NodeAgent, Scheduler>();
afterEach(async () => {
  for (const a of agents.splice(0)) {
    schedulers.get(a)?.close();
    await a.close();
  }
  schedulers.clear();
});

const NODE = { name: 'node-a', capacity: { memoryMb: 1_000_000, cpuMillis: 1_000_000 }, labels: {}, taints: [] };

/** Starts the agent (it registers its node) and a scheduler beside it, and waits until both are idle. */
async function begin(agent: NodeAgent): Promise<void> {
  await agent.start();
  await schedulers.get(agent)?.start();
  await new Promise((r) => setImmediate(r));
  await agent.settled();
}

function makeAgent(store: Store, driver: SandboxDriver): NodeAgent {
  const agent = new NodeAgent({
    store,
    driver,
    log: silentLogger,
    keys: agentKeys(),
    node: NODE,
    bundlePath: (d) => `/bundles/${d}.mjs`,
    drainMs: 10,
    restartBackoffMs: 200,
  });
  agents.push(agent);
  schedulers.set(agent, new Scheduler({ store, log: silentLogger }));
  return agent;
}

/** A store holding `revisions` with `fn` serving `serving`, and an agent started over it. */
async function running(revisions: RevisionRecord[], fn: string, serving: string, prepare: (d: RecordingDriver) => void = () => {}) {
  const store = createMemoryStore();
  for (const r of revisions) await store.put(keys.revision(r.name), JSON.stringify(r));
  await putFunction(store, fn, serving);
  const driver = new RecordingDriver();
  prepare(driver);
  const agent = makeAgent(store, driver);
  await begin(agent);
  return { store, driver, agent };
}

describe('node agent reconcile', () => {
  it.each([
    {
      name: 'starts the serving revision with its instance count and reports ready',
      revisions: [revision('a', 1, 3)],
      functions: [['a', 'a-00001']],
      wantStarted: ['a-00001', 'a-00001', 'a-00001'],
      wantStatus: { 'a-00001': { phase: 'ready', readyInstances: 3, desiredInstances: 3 } },
    },
    {
      name: 'runs only serving revisions, not every revision',
      revisions: [revision('a', 1), revision('a', 2)],
      functions: [['a', 'a-00002']],
      wantStarted: ['a-00002'],
      wantStatus: { 'a-00002': { phase: 'ready' } },
    },
    {
      name: 'a function whose serving revision is missing starts nothing',
      revisions: [],
      functions: [['a', 'a-00007']],
      wantStarted: [],
      wantStatus: {},
    },
  ])('$name', async ({ revisions, functions, wantStarted, wantStatus }) => {
    const store = createMemoryStore();
    for (const r of revisions) await store.put(keys.revision(r.name), JSON.stringify(r));
    for (const [fn, serving] of functions) await putFunction(store, fn as string, serving as string);
    const driver = new RecordingDriver();
    const agent = makeAgent(store, driver);
    await begin(agent);
    expect(driver.started).toEqual(wantStarted);
    for (const [rev, want] of Object.entries(wantStatus)) expect(await status(store, rev)).toMatchObject(want);
    expect((await store.list(keys.statuses())).items.length).toBe(Object.keys(wantStatus).length);
  });

  it('switches revisions when the serving pointer moves, draining the old one', async () => {
    const { store, driver, agent } = await running([revision('a', 1), revision('a', 2)], 'a', 'a-00001');
    expect(agent.endpoint('a-00001')).toBeDefined();
    await putFunction(store, 'a', 'a-00002');
    await expect.poll(() => agent.endpoint('a-00002') !== undefined).toBe(true);
    await expect.poll(() => driver.stopped).toEqual(['a-00001']);
    expect(agent.endpoint('a-00001')).toBeUndefined();
    expect(await status(store, 'a-00001')).toBeUndefined();
  });

  it('reports a revision that fails to start as failed, with the reason', async () => {
    const { store, agent } = await running([revision('b', 1)], 'b', 'b-00001', (d) => {
      d.failOn.add('b-00001');
    });
    expect(await status(store, 'b-00001')).toMatchObject({ phase: 'failed', lastError: 'cannot load b-00001' });
    expect(agent.endpoint('b-00001')).toBeUndefined();
  });

  it('removes status left by an earlier run for revisions it no longer runs', async () => {
    const store = createMemoryStore();
    await store.put(keys.status('gone-00001'), JSON.stringify({ revision: 'gone-00001', phase: 'ready' }));
    const agent = makeAgent(store, new RecordingDriver());
    await begin(agent);
    expect(await status(store, 'gone-00001')).toBeUndefined();
  });

  it('stops everything when a function is deleted', async () => {
    const { store, driver } = await running([revision('c', 1)], 'c', 'c-00001');
    await store.txn([
      { type: 'delete', key: keys.function('c') },
      { type: 'delete', key: keys.revision('c-00001') },
    ]);
    await expect.poll(() => driver.stopped).toEqual(['c-00001']);
  });

  it('serves with the instances that started and starts the failed one again after a back-off', async () => {
    const { store, driver, agent } = await running([revision('d', 1, 4)], 'd', 'd-00001', (d) => {
      d.failCall = 3;
    });
    expect(agent.endpoint('d-00001')?.hasCapacity()).toBe(true);
    await expect.poll(() => driver.started.length, { timeout: 3000 }).toBe(4);
    expect(await status(store, 'd-00001')).toMatchObject({ phase: 'ready', lastError: 'cannot load d-00001' });
    await expect.poll(async () => (await status(store, 'd-00001'))?.readyInstances).toBe(4);
  });

  it('keeps serving the previous revision until the new one is ready (no 503 window)', async () => {
    let release = () => {};
    const { store, driver, agent } = await running([revision('e', 1), revision('e', 2)], 'e', 'e-00001', (d) => {
      d.hold.set('e-00002', new Promise<void>((r) => (release = r)));
    });
    await putFunction(store, 'e', 'e-00002');
    await expect.poll(() => driver.hold.size > 0 && agent.endpoint('e-00002') === undefined).toBe(true);
    await new Promise((r) => setTimeout(r, 50));
    expect(agent.endpoint('e-00002', 'e')?.revision).toBe('e-00001');
    expect(driver.stopped).toEqual([]);
    release();
    await expect.poll(() => agent.endpoint('e-00002', 'e')?.revision).toBe('e-00002');
    await expect.poll(() => driver.stopped).toEqual(['e-00001']);
  });

  it('tries a failed revision again after a back-off', async () => {
    const { store, driver, agent } = await running([revision('f', 1)], 'f', 'f-00001', (d) => {
      d.failOn.add('f-00001');
    });
    expect(await status(store, 'f-00001')).toMatchObject({ phase: 'failed' });
    driver.failOn.clear();
    await agent.reconcile(); // too early: back-off is 2 s after the first failure
    await agent.settled();
    expect(agent.endpoint('f-00001')).toBeUndefined();
    await new Promise((r) => setTimeout(r, 2100));
    await agent.reconcile();
    await agent.settled();
    expect(agent.endpoint('f-00001')).toBeDefined();
    expect(await status(store, 'f-00001')).toMatchObject({ phase: 'ready' });
  });

  it('follows the autoscaler: starts instances up to the count written, drains the surplus', async () => {
    const { store, driver, agent } = await running([revision('g', 1, 1, { maxScale: 0, minScale: 0 })], 'g', 'g-00001');
    expect(driver.started).toEqual(['g-00001']);
    await scale(store, 'g-00001', 3);
    await expect.poll(async () => (await status(store, 'g-00001'))?.readyInstances).toBe(3);
    expect((await status(store, 'g-00001'))?.instances?.map((i) => i.phase)).toEqual(['ready', 'ready', 'ready']);
    await scale(store, 'g-00001', 1);
    await expect.poll(() => driver.stopped.length).toBe(2);
    await agent.settled();
    expect(await status(store, 'g-00001')).toMatchObject({ phase: 'ready', readyInstances: 1, desiredInstances: 1 });
  });

  it('stays ready at zero instances, so the activator can wake it', async () => {
    const { store, driver, agent } = await running([revision('h', 1, 1, { minScale: 0, maxScale: 0 })], 'h', 'h-00001');
    await scale(store, 'h-00001', 0);
    await expect.poll(() => driver.stopped).toEqual(['h-00001']);
    await agent.settled();
    const ep = agent.endpoint('h-00001');
    expect(ep?.hasCapacity()).toBe(false);
    expect(await status(store, 'h-00001')).toMatchObject({ phase: 'ready', readyInstances: 0, desiredInstances: 0, instances: [] });
    let woke = false;
    ep?.onCapacity(() => (woke = true));
    await scale(store, 'h-00001', 1);
    await expect.poll(() => woke).toBe(true);
    expect(ep?.hasCapacity()).toBe(true);
  });

  it('with initialScale 0 is ready at once and starts nothing', async () => {
    const { store, driver, agent } = await running([revision('i', 1, 1, { minScale: 0, maxScale: 0, initialScale: 0 })], 'i', 'i-00001');
    expect(driver.started).toEqual([]);
    expect(agent.endpoint('i-00001')).toBeDefined();
    expect(await status(store, 'i-00001')).toMatchObject({ phase: 'ready', readyInstances: 0 });
  });

  it('has no capacity while every instance is at containerConcurrency, and says so when a request ends', async () => {
    const { agent } = await running([revision('j', 1, 1, { containerConcurrency: 1, target: 1 })], 'j', 'j-00001', (d) => {
      d.dispatchMs = 30;
    });
    const ep = agent.endpoint('j-00001');
    if (!ep) throw new Error('no endpoint');
    let notified = 0;
    ep.onCapacity(() => notified++);
    const first = ep.dispatch(null as never, null as never, { requestId: '1', scheme: 'http' });
    expect(ep.hasCapacity()).toBe(false);
    await expect(ep.dispatch(null as never, null as never, { requestId: '2', scheme: 'http' })).rejects.toThrow(/containerConcurrency/);
    await first;
    expect(ep.hasCapacity()).toBe(true);
    expect(notified).toBe(1);
  });
});

const probe = (path: string, over: Partial<ProbeSpec> = {}): ProbeSpec => ({ ...PROBE_DEFAULTS, path, periodSeconds: 0.05, timeoutSeconds: 0.5, ...over });

describe('node agent probes', () => {
  it('sends requests to an instance only while its readiness probe passes', async () => {
    let healthy = false;
    const { store, agent } = await running([revision('p', 1, 1, {}, { readiness: probe('/ready', { failureThreshold: 2 }) })], 'p', 'p-00001', (d) => {
      d.health = (path) => (path === '/ready' && healthy ? 200 : 503);
    });
    expect(agent.endpoint('p-00001')).toBeUndefined(); // started, never ready yet
    expect((await status(store, 'p-00001'))?.instances?.map((i) => i.phase)).toEqual(['starting']);
    healthy = true;
    await expect.poll(() => agent.endpoint('p-00001')?.hasCapacity()).toBe(true);
    healthy = false;
    await expect.poll(() => agent.endpoint('p-00001')?.hasCapacity()).toBe(false);
    await expect.poll(async () => (await status(store, 'p-00001'))?.instances?.map((i) => i.phase)).toEqual(['unready']);
    await expect.poll(async () => (await status(store, 'p-00001'))?.lastError).toMatch(/readiness probe \/ready: HTTP 503/);
    healthy = true;
    await expect.poll(() => agent.endpoint('p-00001')?.hasCapacity()).toBe(true);
  });

  it('restarts an instance whose liveness probe keeps failing, waiting longer each time', async () => {
    let alive = true;
    const { store, driver } = await running([revision('l', 1, 1, {}, { liveness: probe('/healthz', { failureThreshold: 2 }) })], 'l', 'l-00001', (d) => {
      d.health = () => (alive ? 200 : 500);
    });
    expect(driver.started).toHaveLength(1);
    alive = false;
    await expect.poll(() => driver.stopped.length).toBe(1);
    await expect
      .poll(async () => (await status(store, 'l-00001'))?.lastError)
      .toMatch(/liveness probe \/healthz failed 2 times in a row: HTTP 500; replaced in 0.2 s/);
    await expect.poll(() => driver.started.length).toBe(2); // after the 200 ms back-off
    await expect.poll(() => driver.stopped.length).toBe(2);
    await expect.poll(async () => (await status(store, 'l-00001'))?.lastError).toMatch(/replaced in 0.4 s/); // doubled
    alive = true;
    await expect.poll(() => driver.started.length, { timeout: 3000 }).toBe(3);
    await expect.poll(async () => (await status(store, 'l-00001'))?.readyInstances).toBe(1);
    await expect.poll(async () => (await status(store, 'l-00001'))?.restarts).toBe(2);
  });

  it('holds an instance back until its startup probe passes, and restarts it when the probe gives up', async () => {
    let started = false;
    const { store, driver, agent } = await running([revision('s', 1, 1, {}, { startup: probe('/started', { failureThreshold: 3 }) })], 's', 's-00001', (d) => {
      d.health = () => (started ? 200 : 503);
    });
    expect(agent.endpoint('s-00001')).toBeUndefined();
    await expect.poll(() => driver.stopped.length).toBe(1);
    await expect.poll(async () => (await status(store, 's-00001'))?.lastError).toMatch(/startup probe \/started failed 3 times/);
    started = true;
    await expect.poll(() => agent.endpoint('s-00001')?.hasCapacity(), { timeout: 3000 }).toBe(true);
  });
});

async function scale(store: Store, revision: string, desired: number): Promise<void> {
  const rec: ScaleRecord = { revision, desired, reason: 'test', updatedAt: new Date().toISOString() };
  await store.put(keys.scale(revision), JSON.stringify(rec));
}
