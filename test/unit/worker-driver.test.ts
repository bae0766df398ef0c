import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FUNCTION_DEFAULTS } from '../../control/api/schema/function.ts';
import type { InstanceSpec } from '../../runtime/sandbox/driver.ts';
import { WorkerDriver } from '../../runtime/sandbox/worker/driver.ts';
import { sandboxDriverContract } from '../contract/sandbox-driver.ts';

import { tempDir } from '../helpers/tide.ts';

sandboxDriverContract('worker', () => new WorkerDriver());

describe('worker driver warm threads', () => {
  const drivers: WorkerDriver[] = [];
  afterEach(async () => {
    for (const d of drivers.splice(0)) await d.close();
  });

  function bundle(): string {
    const file = join(tempDir('tide-warm-'), 'fn.mjs');
    writeFileSync(file, 'export default { fetch: (r, env) => new Response(env.WHO) };');
    return file;
  }

  function spec(id: string, memoryMb = FUNCTION_DEFAULTS.memoryMb): InstanceSpec {
    return {
      id,
      function: 'warm',
      revision: 'warm-00001',
      namespace: 'default',
      bundlePath: bundle(),
      env: { WHO: id },
      config: { ...FUNCTION_DEFAULTS, memoryMb },
    };
  }

  it('hands a started thread to a new instance and starts another in its place', async () => {
    const driver = new WorkerDriver({ warmThreads: 1 });
    drivers.push(driver);
    expect(driver.warm).toBe(1);
    const inst = await driver.start(spec('w1'));
    expect(driver.warm).toBe(0); // taken, not a thread of its own
    await expect.poll(() => driver.warm).toBe(1);
    await driver.stop(inst, { drain: false });
  });

  it('starts a thread of its own for another memory limit, leaving the warm one', async () => {
    const driver = new WorkerDriver({ warmThreads: 1 });
    drivers.push(driver);
    const inst = await driver.start(spec('w2', 64));
    expect(driver.warm).toBe(1);
    await driver.stop(inst, { drain: false });
  });

  it('keeps no thread when warmThreads is 0, and still starts instances', async () => {
    const driver = new WorkerDriver({ warmThreads: 0 });
    drivers.push(driver);
    const inst = await driver.start(spec('w3'));
    expect(driver.warm).toBe(0);
    expect(inst.spec.id).toBe('w3');
    await driver.stop(inst, { drain: false });
  });
});
