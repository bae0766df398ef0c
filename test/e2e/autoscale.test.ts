/**
 * Scale to zero and back, end to end through a real `tide up`: the gateway counts demand, the
 * autoscaler decides, the agent starts and drains worker instances, the activator holds
 * requests while no instance is free. Load comes from autocannon on loopback, bounded in time.
 * Functions here use a 6 s stable window, a 500 ms tick and a 1 s grace period so a cycle takes
 * seconds, not minutes.
 */
import autocannon from 'autocannon';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { apiFetch, eventually, FIXTURES, http, startTide, stopTide, type TideProcess, tide } from '../helpers/tide.ts';

let t: TideProcess;
const SLEEPY = `${FIXTURES}/functions/sleepy.ts`;
const FAST = ['--scaling', 'stableWindowMs=6000', '--scaling', 'tickMs=500', '--scale-to-zero-grace', '1s'];

interface InstancesView {
  revision: string;
  desired: number | null;
  ready: number;
  queued: number;
  panic: boolean;
  instances: { id: string; phase: string }[];
  decisions: { seq: number; desired: number; ready: number; panic: boolean; reason: string; observedStable: number; observedPanic: number }[];
}

async function instances(fn: string): Promise<InstancesView> {
  const r = await apiFetch(t, `/v1/functions/${fn}/instances`);
  expect(r.status).toBe(200);
  return (await r.json()) as InstancesView;
}

async function deploy(name: string, ...flags: string[]): Promise<void> {
  const r = await tide(['deploy', SLEEPY, '--name', name, ...flags], { dataDir: t.dataDir });
  expect(r.code, r.stderr).toBe(0);
}

const get = (fn: string, path = '/', timeoutMs = 20_000) => http(t.gatewayPort, `${fn}.localhost`, path, { timeoutMs });

/** autocannon against one function for `seconds`, `connections` at once; bounded in time. */
async function load(fn: string, connections: number, seconds: number, path = '/?ms=50'): Promise<autocannon.Result> {
  return autocannon({
    url: `http://127.0.0.1:${t.gatewayPort}${path}`,
    headers: { host: `${fn}.localhost` },
    connections,
    duration: seconds,
    timeout: 20,
  });
}

beforeAll(async () => {
  t = await startTide();
});

afterAll(async () => {
  await stopTide(t);
});

describe('scale from zero', () => {
  it('a revision deployed at zero serves its first request through the activator, and says why it scaled', async () => {
    await deploy('cold', '--initial-scale', '0', ...FAST);
    const before = await instances('cold');
    expect(before.ready).toBe(0);
    expect(before.instances).toEqual([]);
    const r = await get('cold', '/?ms=0');
    expect(r.status).toBe(200);
    expect(r.text).toBe('slept 0\n');
    // Agents report status a moment after the fact; the request did not wait for it.
    const after = await eventually(async () => {
      const v = await instances('cold');
      return v.ready === 1 ? v : undefined;
    });
    expect(
      after.decisions.some((d) => d.desired === 1 && /waiting in the activator, no instance ready/.test(d.reason)),
      JSON.stringify(after.decisions),
    ).toBe(true);
  });

  it('requests arriving together at zero are all held and all answered, in order, by one cold start', async () => {
    await deploy('burst', '--initial-scale', '0', ...FAST);
    const answers = await Promise.all(Array.from({ length: 20 }, (_, i) => get('burst', `/?ms=${i}`)));
    expect(answers.map((a) => a.status)).toEqual(Array(20).fill(200));
    expect(answers.map((a) => a.text)).toEqual(Array.from({ length: 20 }, (_, i) => `slept ${i}\n`));
  });
});

describe('autoscaling under load', () => {
  it('goes 0 → N under a step load (through panic mode) and N → 0 after the grace period, with no failed request', async () => {
    await deploy('step', '--initial-scale', '0', '--target', '2', ...FAST);
    const seen: number[] = [];
    const sampler = setInterval(() => {
      void instances('step').then(
        (v) => seen.push(v.ready),
        () => {},
      );
    }, 200);
    try {
      const result = await load('step', 12, 4);
      expect(result.errors).toBe(0);
      expect(result.timeouts).toBe(0);
      expect(result.non2xx).toBe(0);
      expect(result.requests.total).toBeGreaterThan(100);
    } finally {
      clearInterval(sampler);
    }
    // 12 in flight / (2 × 0.7) per instance = 9 wanted.
    expect(Math.max(...seen)).toBeGreaterThanOrEqual(5);
    const decisions = (await instances('step')).decisions;
    expect(decisions.some((d) => d.panic)).toBe(true);
    const idle = await eventually(
      async () => {
        const v = await instances('step');
        return v.ready === 0 && v.instances.length === 0 ? v : undefined;
      },
      30_000,
      250,
    );
    expect(idle.decisions.at(-1)?.desired).toBe(0);
    expect(idle.decisions.at(-1)?.panic).toBe(false);
  }, 60_000);

  it('keeps minScale when idle and never goes over maxScale under load', async () => {
    await deploy('bounded', '--min-scale', '1', '--max-scale', '2', '--target', '1', ...FAST);
    const seen: number[] = [];
    const sampler = setInterval(() => {
      void instances('bounded').then(
        (v) => seen.push(v.instances.length),
        () => {},
      );
    }, 100);
    let result: autocannon.Result;
    try {
      result = await load('bounded', 10, 3);
    } finally {
      clearInterval(sampler);
    }
    expect(result.non2xx + result.errors).toBe(0);
    expect(Math.max(...seen)).toBe(2);
    const v = await instances('bounded');
    expect(v.decisions.every((d) => d.desired >= 1 && d.desired <= 2)).toBe(true);
    expect(v.decisions.some((d) => d.reason === 'maxScale 2')).toBe(true);
    await eventually(async () => ((await instances('bounded')).decisions.at(-1)?.reason === 'minScale 1' ? true : undefined), 20_000, 250);
    expect((await instances('bounded')).ready).toBe(1);
  }, 60_000);

  it('answers every request across repeated 0 → N → 0 cycles under load', async () => {
    await deploy('cycles', '--initial-scale', '0', '--target', '2', ...FAST);
    for (let cycle = 0; cycle < 3; cycle++) {
      expect((await instances('cycles')).ready).toBe(0);
      const result = await load('cycles', 8, 2);
      expect({ cycle, errors: result.errors, timeouts: result.timeouts, non2xx: result.non2xx }).toEqual({ cycle, errors: 0, timeouts: 0, non2xx: 0 });
      await eventually(async () => ((await instances('cycles')).instances.length === 0 ? true : undefined), 30_000, 250);
    }
  }, 120_000);
});

describe('the activator queue', () => {
  it('holds at most queueSize requests and answers the rest 503 with retry-after; held ones time out with 503 too', async () => {
    await deploy('queue', '--concurrency', '1', '--target', '1', '--max-scale', '1', '--queue-size', '2', '--queue-timeout', '700ms', ...FAST);
    const busy = get('queue', '/?ms=2500');
    await eventually(async () => ((await instances('queue')).ready === 1 ? true : undefined));
    await new Promise((r) => setTimeout(r, 100));
    const held = [get('queue', '/?ms=0'), get('queue', '/?ms=0')];
    await new Promise((r) => setTimeout(r, 100));
    const over = await get('queue', '/?ms=0');
    expect(over.status).toBe(503);
    expect(over.headers['tide-proxy-error']).toBe('ERR_ACTIVATOR_QUEUE_FULL');
    expect(over.headers['retry-after']).toBe('1');
    const timedOut = await Promise.all(held);
    expect(timedOut.map((r) => [r.status, r.headers['tide-proxy-error']])).toEqual([
      [503, 'ERR_ACTIVATOR_TIMEOUT'],
      [503, 'ERR_ACTIVATOR_TIMEOUT'],
    ]);
    expect(timedOut[0]?.text).toMatch(/found no free instance within 700 ms/);
    expect((await busy).status).toBe(200);
    // Capacity again: a held request is sent as soon as the instance frees up.
    const a = get('queue', '/?ms=300');
    await new Promise((r) => setTimeout(r, 50));
    const b = await get('queue', '/?ms=0');
    expect([(await a).status, b.status], b.text).toEqual([200, 200]);
  }, 30_000);

  it('shows instances and decisions with `tide get instances`', async () => {
    const r = await tide(['get', 'instances', 'cold'], { dataDir: t.dataDir });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^cold cold-00001: \d+ ready, \d+ desired/);
    expect(r.stdout).toMatch(/TIME\s+READY\s+DESIRED\s+STABLE\s+PANIC-WINDOW\s+QUEUED\s+PANIC\s+REASON/);
    const bad = await tide(['get', 'instances', 'nope'], { dataDir: t.dataDir });
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/nope/);
  });
});

describe('probes', () => {
  const HEALTH = `${FIXTURES}/functions/health.ts`;
  /** Deploys the health fixture with one probe that checks every 0.2 s and gives up after `failures`. */
  const deployProbed = (name: string, kind: string, path: string, failures: number, extra: string[] = []) =>
    tide(
      [
        'deploy',
        HEALTH,
        '--name',
        name,
        '--instances',
        '1',
        `--${kind}`,
        path,
        '--probe-option',
        `${kind}.periodSeconds=0.2`,
        '--probe-option',
        `${kind}.failureThreshold=${failures}`,
        ...extra,
      ],
      { dataDir: t.dataDir },
    );
  const status = async (fn: string) => {
    const r = await apiFetch(t, `/v1/functions/${fn}`);
    return (await r.json()) as { restarts: number; lastError: string | null; readyInstances: number };
  };

  it('takes an instance out of service while its readiness probe fails; the activator holds its requests', async () => {
    const r = await deployProbed('ready', 'readiness', '/ready', 1, ['--queue-timeout', '800ms']);
    expect(r.code, r.stderr).toBe(0);
    expect((await get('ready', '/sick')).status).toBe(200);
    await eventually(async () => ((await instances('ready')).instances[0]?.phase === 'unready' ? true : undefined));
    const held = await get('ready', '/');
    expect(held.status).toBe(503);
    expect(held.headers['tide-proxy-error']).toBe('ERR_ACTIVATOR_TIMEOUT');
    expect((await status('ready')).lastError).toMatch(/readiness probe \/ready: HTTP 500/);
  });

  it('restarts an instance whose liveness probe fails, after the kubelet back-off, and says why', async () => {
    const r = await deployProbed('live', 'liveness', '/healthz', 2);
    expect(r.code, r.stderr).toBe(0);
    const before = (await get('live', '/')).text;
    expect((await get('live', '/sick')).status).toBe(200);
    const restarted = await eventually(async () => {
      const s = await status('live');
      return s.restarts === 1 ? s : undefined;
    });
    expect(restarted.lastError).toMatch(/liveness probe \/healthz failed 2 times in a row: HTTP 500; replaced in 10 s/);
    // The replacement comes after 10 s; it is a new instance (its own module state), healthy again.
    const after = await get('live', '/', 20_000);
    expect(after.status).toBe(200);
    expect(after.text).not.toBe(before);
    expect((await get('live', '/healthz')).status).toBe(200);
    const logs = await tide(['logs', 'live'], { dataDir: t.dataDir });
    expect(logs.stdout).toMatch(/instance replaced \(probe\): .*liveness probe/);
  }, 30_000);
});
