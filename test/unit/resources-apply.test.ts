/** Applying resources over the memory store: a write that races the apply makes it plan again, not fail. */
import { describe, expect, it } from 'vitest';
import { Functions } from '../../control/api/functions.ts';
import { type ApplyItem, Resources } from '../../control/api/resources.ts';
import { keys } from '../../control/api/schema/function.ts';
import { routeKeys } from '../../control/api/schema/route.ts';
import type { BlobStore } from '../../control/blobs.ts';
import { createMemoryStore, type Store, type TxnOp } from '../../control/store/index.ts';

describe('apply', () => {
  it('plans again against what is stored when someone wrote a route in between, and then succeeds', async () => {
    const store = createMemoryStore();
    await store.put(keys.revision('a-00001'), JSON.stringify({ name: 'a-00001' }));
    const route = (tags?: Record<string, string>): ApplyItem => ({
      kind: 'Route',
      name: 'r',
      spec: { rules: [{ split: [{ revision: 'a-00001', weight: 100 }] }], ...(tags ? { tags } : {}) } as never,
    });
    let raced = false;
    // A store whose first route-writing transaction loses a race: someone rewrites the route just before it.
    const txn = async (ops: TxnOp[]) => {
      if (!raced && ops.some((o) => o.key === routeKeys.route('r'))) {
        const kv = await store.get(routeKeys.route('r'));
        if (kv) {
          raced = true;
          await store.put(routeKeys.route('r'), kv.value);
        }
      }
      return store.txn(ops);
    };
    const racing = new Proxy(store, {
      get: (target, key) => {
        if (key === 'txn') return txn;
        const v = Reflect.get(target, key) as unknown;
        return typeof v === 'function' ? v.bind(target) : v;
      },
    }) as Store;
    const resources = new Resources(racing, new Functions(racing, {} as BlobStore, { validate: async () => {} }));
    await resources.apply([route()]);
    const second = await resources.apply([route({ t: 'a-00001' })]);
    expect(raced).toBe(true);
    expect(second.written).toBe(true);
    expect(JSON.parse((await store.get(routeKeys.route('r')))?.value ?? '{}').spec.tags).toEqual({ t: 'a-00001' });
  });
});
