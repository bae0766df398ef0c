/**
 * The scheduler through a real `tide up` on a node that offers 300 MiB: what fits runs, what
 * does not is Pending with kubectl's reason, and the deploy says so.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eventually, FIXTURES, http, startTide, stopTide, type TideProcess, tide } from '../helpers/tide.ts';

let t: TideProcess;
const SLEEPY = `${FIXTURES}/functions/sleepy.ts`;

beforeAll(async () => {
  t = await startTide({ args: ['--node-name', 'small', '--node-memory', '300', '--node-label', 'disk=ssd', '--node-taint', 'dedicated=tide'] });
});

afterAll(async () => {
  await stopTide(t);
});

describe('scheduling on one node', () => {
  it('runs the instances that fit, and shows the rest as Pending with the reason', async () => {
    const r = await tide(['deploy', SLEEPY, '--name', 'three', '--instances', '3', '--memory', '128', '--toleration', 'dedicated=tide'], {
      dataDir: t.dataDir,
    });
    expect(r.code, r.stderr).toBe(0);
    const d = await eventually(async () => {
      const out = await tide(['describe', 'three'], { dataDir: t.dataDir });
      return /2\/3 instances/.test(out.stdout) ? out : undefined;
    });
    expect(d.stdout).toMatch(/Scheduling:\s+Pending: 1 instance: 0\/1 nodes are available: 1 Insufficient memory\./);
    expect((await http(t.gatewayPort, 'three.localhost', '/')).status).toBe(200);
  });

  it('refuses a deploy no node can take, names why, and keeps serving what ran before', async () => {
    const big = await tide(['deploy', SLEEPY, '--name', 'big', '--memory', '512', '--toleration', 'dedicated'], { dataDir: t.dataDir });
    expect(big.code).toBe(1);
    expect(big.stderr).toMatch(/revision big-00001 is Pending: 1 instance: 0\/1 nodes are available: 1 Insufficient memory\./);
    expect(big.stderr).toMatch(/hint: it stays deployed and starts when a node has room/);
  });

  it('keeps functions off a node whose taint they do not tolerate, or whose labels they do not select', async () => {
    const untolerated = await tide(['deploy', SLEEPY, '--name', 'plain', '--memory', '32'], { dataDir: t.dataDir });
    expect(untolerated.code).toBe(1);
    expect(untolerated.stderr).toMatch(/0\/1 nodes are available: 1 node\(s\) had untolerated taint \{dedicated: tide\}\./);
    const selected = await tide(['deploy', SLEEPY, '--name', 'picky', '--memory', '32', '--toleration', 'dedicated', '--node-selector', 'disk=hdd'], {
      dataDir: t.dataDir,
    });
    expect(selected.code).toBe(1);
    expect(selected.stderr).toMatch(/1 node\(s\) didn't match Pod's node affinity\/selector/);
    const ok = await tide(['deploy', SLEEPY, '--name', 'fits', '--memory', '32', '--toleration', 'dedicated', '--node-selector', 'disk=ssd'], {
      dataDir: t.dataDir,
    });
    expect(ok.code, ok.stderr).toBe(0);
  });
});
