/**
 * Cluster mode end to end: a real 3-member etcd cluster, 2 control replicas, 3 nodes and a
 * gateway, each a separate process on its own loopback address. Under steady load through the
 * gateway the drill (test/helpers/cluster.ts) kills a node, then the leader control replica,
 * then an etcd member; every request must be answered (clients retry, as the issue allows),
 * instances must move off the dead node, another replica must lead and schedule, and the state
 * must be intact.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Cluster, failoverDrill, get, startCluster } from '../helpers/cluster.ts';
import { eventually, FIXTURES } from '../helpers/tide.ts';

const fixture = join(FIXTURES, 'functions/cluster-hello.ts');
let cluster: Cluster;

beforeAll(async () => {
  cluster = await startCluster({ nodeLease: 2, leaderLease: 2 });
}, 120_000);

afterAll(async () => {
  await cluster?.stop();
}, 60_000);

describe('a cluster on etcd', () => {
  it('keeps answering through the loss of a node, the leader control replica and an etcd member', async () => {
    const r = await failoverDrill(cluster, fixture);
    const lost = r.outcomes.filter((o) => o.status !== 200);
    const retried = r.outcomes.filter((o) => o.attempts > 1).length;
    process.stderr.write(
      `cluster drill: node ${r.nodeRescheduleMs} ms (traffic ${r.nodeTrafficMs} ms), leader ${r.leaderMs} ms (schedules after ${r.leaderScheduleMs} ms), etcd member ${r.etcdMs} ms; ${r.outcomes.length} requests, ${retried} retried, ${lost.length} lost\n`,
    );
    if (lost.length > 0) {
      // What each process said, to tell where the lost requests went.
      for (const p of [cluster.gateway, ...cluster.nodes, ...cluster.controls]) process.stderr.write(`--- ${p.name}\n${p.output().slice(-3000)}\n`);
    }
    expect(lost, JSON.stringify(lost.slice(0, 5))).toEqual([]);
    expect(r.outcomes.length).toBeGreaterThan(200);
    expect(r.newLeader).not.toBe(r.oldLeader);
    // State intact: the same functions, hello on the same revisions, on live nodes only.
    expect(r.functions).toEqual(['hello', 'second']);
    expect(r.after.servingRevision).toBe(r.before.servingRevision);
    expect(r.after.revisions.map((x) => x.name)).toEqual(r.before.revisions.map((x) => x.name));
    const serving = r.after.revisions.find((x) => x.name === r.after.servingRevision);
    expect(Object.keys(serving?.status?.nodes ?? {}).filter((n) => (serving?.status?.nodes?.[n] ?? 0) > 0)).not.toContain(r.victimNode);
    expect(serving?.status?.readyInstances).toBe(2);
    const second = await get(cluster.gateway, 'second.localhost');
    expect(second).toMatchObject({ status: 200, text: 'hello from second.localhost\n' });
  }, 240_000);

  it('reconciles a node that comes back after its lease ran out: its stale instances stop', async () => {
    const describe = async () =>
      (await cluster.api('/v1/functions/second')).body as {
        servingRevision: string;
        revisions: { name: string; status: { nodes?: Record<string, number> } | null }[];
      };
    const nodesOf = async () => {
      const d = await describe();
      return d.revisions.find((x) => x.name === d.servingRevision)?.status?.nodes ?? {};
    };
    const where = await eventually(async () => {
      const n = Object.entries(await nodesOf()).find(([, c]) => c > 0);
      return n?.[0];
    }, 10_000);
    const frozen = cluster.nodes.find((n) => n.name === where && n.alive());
    if (!frozen) throw new Error(`node ${where} is not running`);
    // Frozen past its lease (2 s): control takes it for dead and moves its instance.
    process.kill(frozen.pid, 'SIGSTOP');
    try {
      await eventually(
        async () => {
          const n = await nodesOf();
          return (n[frozen.name] ?? 0) === 0 && Object.values(n).some((c) => c > 0);
        },
        20_000,
        100,
      );
    } finally {
      process.kill(frozen.pid, 'SIGCONT');
    }
    // Back: it registers again, finds the instance is no longer placed on it, and stops it.
    await eventually(async () => {
      const nodes = (await cluster.api('/v1/cluster/info', { join: true })).status === 200 && (await nodesOf());
      return nodes && (nodes[frozen.name] ?? 0) === 0;
    }, 20_000);
    await eventually(async () => frozen.output().includes('node lease lost; registering again'), 20_000);
    // Its reports come back with the new lease: give the agent time to have written them.
    await new Promise((r) => setTimeout(r, 1500));
    await eventually(async () => (await get(cluster.gateway, 'second.localhost')).status === 200, 10_000);
    // Its record is back (it can take new work) and it runs nothing stale.
    const placements = await cluster.api('/v1/functions/second');
    expect(placements.status).toBe(200);
    const d = await describe();
    const instances = d.revisions.flatMap((x) => Object.entries(x.status?.nodes ?? {})).filter(([n, c]) => n === frozen.name && c > 0);
    expect(instances).toEqual([]);
  }, 90_000);

  it('wakes a function scaled to zero: the gateway holds the request and reports demand to the leader, which scales it up', async () => {
    const d = await cluster.cli(['deploy', fixture, '--name', 'cold']);
    expect(d.code, d.stderr).toBe(0);
    await eventually(async () => (await get(cluster.gateway, 'cold.localhost')).status === 200, 10_000);
    // The leader learns a request ended with the gateway's next demand report (every 250 ms):
    // until then it refuses to zero a function with requests in flight (409).
    const zero = await eventually(
      async () => {
        const z = await cluster.api('/v1/functions/cold/zero', { method: 'POST', leader: true });
        return z.status === 409 ? undefined : z;
      },
      5000,
      100,
    );
    expect(zero.status, JSON.stringify(zero.body)).toBe(202);
    const ready = async () => {
      const f = (await cluster.api('/v1/functions/cold')).body as {
        servingRevision: string;
        revisions: { name: string; status: { readyInstances: number } | null }[];
      };
      return f.revisions.find((r) => r.name === f.servingRevision)?.status?.readyInstances ?? 0;
    };
    await eventually(async () => (await ready()) === 0, 15_000, 100);
    const started = Date.now();
    const r = await get(cluster.gateway, 'cold.localhost', 20_000);
    const ms = Date.now() - started;
    process.stderr.write(`cluster cold start through the gateway: ${ms} ms\n`);
    expect(r).toMatchObject({ status: 200, text: 'hello from cold.localhost\n' });
    expect(await ready()).toBeGreaterThan(0);
  }, 60_000);

  it('serves on with its last snapshot while no control replica answers, and catches up when one does', async () => {
    const live = cluster.controls.filter((c) => c.alive());
    expect(live.length).toBeGreaterThan(0);
    for (const c of live) process.kill(c.pid, 'SIGSTOP');
    try {
      // Longer than a node lease: nodes must not drop their instances for want of control.
      const until = Date.now() + 4000;
      let answered = 0;
      while (Date.now() < until) {
        const r = await get(cluster.gateway, 'hello.localhost');
        expect(r.status).toBe(200);
        answered++;
        await new Promise((res) => setTimeout(res, 50));
      }
      expect(answered).toBeGreaterThan(20);
    } finally {
      for (const c of live) process.kill(c.pid, 'SIGCONT');
    }
    // Control is back: a change made now reaches the gateway and the nodes by watch.
    const d = await cluster.cli(['deploy', fixture, '--name', 'after-outage', '--instances', '1']);
    expect(d.code, d.stderr).toBe(0);
    await eventually(async () => (await get(cluster.gateway, 'after-outage.localhost')).status === 200, 15_000);
    // The nodes' leases ran out meanwhile (control renews them): they register again and hello is placed again.
    await eventually(async () => (await get(cluster.gateway, 'hello.localhost')).status === 200, 15_000);
  }, 60_000);
});
