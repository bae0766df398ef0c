/** The scheduler's placement: filter, score, bind; pending reasons; and the reconciler over a store. */
import { describe, expect, it, vi } from 'vitest';
import { FUNCTION_DEFAULTS, keys, type PlacementRecord } from '../../control/api/schema/function.ts';
import { SCALING_DEFAULTS } from '../../control/autoscaler/config.ts';
import { checkPlacement, type NodeInfo, type Placement, place, type Workload } from '../../control/scheduler/placement.ts';
import { Scheduler } from '../../control/scheduler/scheduler.ts';
import { createMemoryStore } from '../../control/store/index.ts';
import { silentLogger } from '../../lib/log.ts';

const node = (name: string, memoryMb = 1024, over: Partial<NodeInfo> = {}): NodeInfo => ({
  name,
  capacity: { memoryMb, cpuMillis: 4000 },
  labels: {},
  taints: [],
  ...over,
});

const work = (revision: string, desired: number, over: Partial<Workload> = {}): Workload => ({
  revision,
  function: revision.replace(/-\d+$/, ''),
  desired,
  requests: { memoryMb: 128, cpuMillis: 100 },
  nodeSelector: {},
  tolerations: [],
  affinity: [],
  antiAffinity: [],
  ...over,
});

const none = new Map<string, Placement>();

describe('placement', () => {
  it('spreads the replicas of a revision over the nodes', () => {
    const p = place([node('a'), node('b'), node('c')], [work('f-00001', 3)], none).get('f-00001');
    expect(p).toEqual({ revision: 'f-00001', nodes: { a: 1, b: 1, c: 1 }, pending: 0 });
  });

  it('prefers the least allocated node', () => {
    const current = new Map([['big-00001', { revision: 'big-00001', nodes: { a: 4 }, pending: 0 }]]);
    const next = place([node('a'), node('b')], [work('big-00001', 4), work('f-00001', 1)], current);
    expect(next.get('f-00001')?.nodes).toEqual({ b: 1 });
    expect(next.get('big-00001')?.nodes).toEqual({ a: 4 }); // placed instances stay
  });

  it('keeps to nodeSelector and taints, and says why no node fits, as kubectl does', () => {
    const nodes = [node('a', 1024, { labels: { disk: 'ssd' } }), node('b', 1024, { taints: [{ key: 'gpu', effect: 'NoSchedule' }] }), node('c', 100)];
    expect(place(nodes, [work('s-00001', 1, { nodeSelector: { disk: 'ssd' } })], none).get('s-00001')?.nodes).toEqual({ a: 1 });
    expect(place(nodes, [work('g-00001', 1, { tolerations: [{ key: 'gpu', operator: 'Exists' }], nodeSelector: {} })], none).get('g-00001')?.nodes).toEqual({
      a: 1,
    });
    const stuck = place(nodes, [work('x-00001', 1, { nodeSelector: { disk: 'nvme' } })], none).get('x-00001');
    expect(stuck).toMatchObject({ nodes: {}, pending: 1, reason: "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector." });
    const full = place([node('b', 1024, { taints: [{ key: 'gpu', value: 'a100', effect: 'NoSchedule' }] }), node('c', 100)], [work('y-00001', 2)], none).get(
      'y-00001',
    );
    expect(full?.reason).toBe('0/2 nodes are available: 1 Insufficient memory, 1 node(s) had untolerated taint {gpu: a100}.');
  });

  it('places what fits and leaves the rest pending', () => {
    const p = place([node('a', 300)], [work('f-00001', 3)], none).get('f-00001');
    expect(p).toEqual({ revision: 'f-00001', nodes: { a: 2 }, pending: 1, reason: '0/1 nodes are available: 1 Insufficient memory.' });
  });

  it('scales down from the node with most replicas, and re-places instances of a node that is gone', () => {
    const current = new Map([['f-00001', { revision: 'f-00001', nodes: { a: 3, b: 1, gone: 2 }, pending: 0 }]]);
    const down = place([node('a'), node('b')], [work('f-00001', 2)], current).get('f-00001');
    expect(down?.nodes).toEqual({ a: 1, b: 1 });
    const moved = place([node('a'), node('b')], [work('f-00001', 6)], current).get('f-00001');
    expect(moved?.nodes).toEqual({ a: 3, b: 3 });
  });

  it('follows affinity and anti-affinity to other functions', () => {
    const current = new Map([['db-00001', { revision: 'db-00001', nodes: { a: 1 }, pending: 0 }]]);
    const nodes = [node('a'), node('b')];
    const db = work('db-00001', 1);
    expect(place(nodes, [db, work('api-00001', 1, { affinity: ['db'] })], current).get('api-00001')?.nodes).toEqual({ a: 1 });
    expect(place(nodes, [db, work('noisy-00001', 1, { antiAffinity: ['db'] })], current).get('noisy-00001')?.nodes).toEqual({ b: 1 });
  });

  it('checks placement settings and names what is wrong', () => {
    expect(checkPlacement({ nodeSelector: { zone: 'a' }, tolerations: [{ key: 'gpu' }] })).toMatchObject({
      nodeSelector: { zone: 'a' },
      tolerations: [{ key: 'gpu' }],
    });
    expect(() => checkPlacement({ nodeSelector: { zone: 5 } })).toThrow('placement.nodeSelector.zone must be a label value');
    expect(() => checkPlacement({ tolerations: [{ key: 'a', operator: 'Maybe' }] })).toThrow('placement.tolerations[0].operator must be Equal or Exists');
    expect(() => checkPlacement({ near: [] })).toThrow(/unknown placement setting "placement.near"/);
  });
});

describe('scheduler reconciler', () => {
  it('writes placements for serving revisions from the wanted counts, and removes them when the function goes', async () => {
    const store = createMemoryStore();
    const rev = {
      name: 'f-00001',
      namespace: 'default',
      function: 'f',
      number: 1,
      createdAt: '',
      digest: 'd',
      templateHash: 'h',
      source: 'f.ts',
      sandbox: 'worker',
      env: {},
      secrets: {},
      config: { ...FUNCTION_DEFAULTS, scaling: { ...SCALING_DEFAULTS, initialScale: 2 } },
    };
    await store.put(keys.revision(rev.name), JSON.stringify(rev));
    await store.put(
      keys.function('f'),
      JSON.stringify({ name: 'f', namespace: 'default', createdAt: '', servingRevision: rev.name, latestRevision: rev.name, revisionCounter: 1 }),
    );
    await store.put(keys.node('a'), JSON.stringify({ ...node('a', 200), registeredAt: '' }));
    const scheduler = new Scheduler({ store, log: silentLogger });
    await scheduler.start();
    const placement = async () => {
      const kv = await store.get(keys.placement('f-00001'));
      return kv ? (JSON.parse(kv.value) as PlacementRecord) : undefined;
    };
    expect(await placement()).toMatchObject({ nodes: { a: 1 }, pending: 1, reason: '0/1 nodes are available: 1 Insufficient memory.' });
    await store.put(keys.node('b'), JSON.stringify({ ...node('b', 200), registeredAt: '' }));
    await vi.waitFor(async () => expect(await placement()).toMatchObject({ nodes: { a: 1, b: 1 }, pending: 0 }));
    await store.put(keys.scale('f-00001'), JSON.stringify({ revision: 'f-00001', desired: 0, reason: '', updatedAt: '' }));
    await vi.waitFor(async () => expect((await placement())?.nodes).toEqual({}));
    await store.delete(keys.function('f'));
    await vi.waitFor(async () => expect(await placement()).toBeUndefined());
    scheduler.close();
  });
});
