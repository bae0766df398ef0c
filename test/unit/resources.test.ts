/** The CLI half of apply: the examples are valid, and people's units become Tide's settings. */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadResources, toItems } from '../../cli/apply.ts';
import { ROOT, tempDir } from '../helpers/tide.ts';

describe('resource files', () => {
  it('takes every example in examples/apply and examples/routes', async () => {
    const loaded = await loadResources([join(ROOT, 'examples', 'apply'), join(ROOT, 'examples', 'routes')]);
    expect(loaded.map((l) => `${l.resource.kind}/${l.resource.metadata.name}`)).toEqual([
      'Secret/echo-keys',
      'Config/echo-settings',
      'Function/echo-app',
      'Route/ab',
      'Route/bluegreen',
      'Route/shop',
      'Route/drill',
      'Rollout/echo-app',
      'Route/resilient',
    ]);
  });

  it('turns memory, CPU, sizes and durations into settings, and says where a unit does not fit', async () => {
    const dir = tempDir('tide-units-');
    const file = join(dir, 'f.yaml');
    writeFileSync(
      file,
      `apiVersion: tide.dev/v1
kind: Function
metadata: { name: units }
spec:
  source: ./f.ts
  resources: { memory: 1Gi, cpu: 0.5, cpuLimit: 1500m }
  maxBody: 512Ki
  timeout: 2m
  scaling: { stableWindow: 90s, scaleToZeroGracePeriod: 0s, queueTimeout: 250ms }
`,
    );
    const items = await toItems(await loadResources([file]), async () => new Uint8Array([1]));
    const deploy = (items[0] as { deploy: { config: Record<string, unknown> } }).deploy;
    expect(deploy.config).toEqual({
      memoryMb: 1024,
      cpuMillis: 500,
      cpuLimitMillis: 1500,
      maxBodyBytes: 512 * 1024,
      timeoutMs: 120_000,
      scaling: { stableWindowMs: 90_000, scaleToZeroGracePeriodMs: 0, queueTimeoutMs: 250 },
    });
    writeFileSync(file, `apiVersion: tide.dev/v1\nkind: Function\nmetadata: { name: units }\nspec:\n  source: ./f.ts\n  resources: { memory: 1500Ki }\n`);
    await expect(toItems(await loadResources([file]), async () => new Uint8Array([1]))).rejects.toThrow(
      /f\.yaml:6:24: \/spec\/resources\/memory: memory must be a whole number of MiB/,
    );
  });
});
