/**
 * Benchmark `failover`: how long a cluster takes to get over the loss of a node, of the leader
 * control replica and of an etcd member, under load through the gateway. Each round starts a
 * fresh cluster on loopback (3 etcd members, 2 control replicas, 3 nodes, a gateway; node and
 * leader leases of 2 s) and runs the drill of the cluster e2e test (test/helpers/cluster.ts).
 *
 * Series (medians over ROUNDS, default 3):
 *  - node_reschedule_ms: node killed → its instances ready on the other nodes (lease expiry,
 *    scheduling, cold start, status reports);
 *  - node_traffic_ms: node killed → the last request that had to be retried or waited over 1 s;
 *  - leader_ms: leader replica killed → another replica leads (lease expiry + election);
 *  - leader_schedule_ms: leader killed → a new revision deployed through the survivor answers;
 *  - etcd_ms: etcd member killed → the next API write succeeded;
 *  - lost: requests without an answer after the client's retries (must be 0).
 * The floor of node_reschedule_ms and leader_ms is the lease TTL (2 s) plus a third of it.
 */
import { join } from 'node:path';
import { failoverDrill, startCluster } from '../../test/helpers/cluster.ts';
import { median, ROOT, writeReport } from '../lib/harness.ts';

export async function run(opts: { jsonFile?: string }): Promise<void> {
  const rounds = Number(process.env.ROUNDS ?? 3);
  const fixture = join(ROOT, 'test/fixtures/functions/cluster-hello.ts');
  const runs: Record<string, number>[] = [];
  for (let i = 1; i <= rounds; i++) {
    const cluster = await startCluster({ nodeLease: 2, leaderLease: 2 });
    try {
      const r = await failoverDrill(cluster, fixture);
      const row = {
        node_reschedule_ms: r.nodeRescheduleMs,
        node_traffic_ms: r.nodeTrafficMs,
        leader_ms: r.leaderMs,
        leader_schedule_ms: r.leaderScheduleMs,
        etcd_ms: r.etcdMs,
        requests: r.outcomes.length,
        retried: r.outcomes.filter((o) => o.attempts > 1).length,
        lost: r.outcomes.filter((o) => o.status !== 200).length,
      };
      runs.push(row);
      process.stdout.write(`round ${i}/${rounds}: ${JSON.stringify(row)}\n`);
    } finally {
      await cluster.stop();
    }
  }
  const keys = Object.keys(runs[0] ?? {});
  const medians = Object.fromEntries(keys.map((k) => [k, median(runs.map((r) => r[k] as number))]));
  process.stdout.write(`\nfailover, median of ${rounds} rounds (node and leader leases 2 s):\n`);
  for (const k of keys) process.stdout.write(`  ${k.padEnd(20)} ${String(medians[k]).padStart(8)}   runs: ${runs.map((r) => r[k]).join(', ')}\n`);
  writeReport(opts.jsonFile, { bench: 'failover', rounds, medians, runs });
}
