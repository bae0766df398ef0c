import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { bundleFunction } from '../../cli/bundle.ts';
import { FIXTURES, ROOT } from '../helpers/tide.ts';

describe('bundling a function', () => {
  it('bundles a module with its imports into one ES module', async () => {
    const b = await bundleFunction(join(ROOT, 'examples/echo.ts'));
    const code = Buffer.from(b.code).toString('utf8');
    expect(code).toMatch(/export\s*\{[^}]*default/);
    expect(code).not.toMatch(/interface Env/);
  });
  it('reports a syntax error as file:line:column', async () => {
    await expect(bundleFunction(join(FIXTURES, 'bad/syntax-error.ts'))).rejects.toThrow(/syntax-error\.ts:4:3: error: Expected "\)" but found "}"/);
  });
  it('refuses a module without a default export', async () => {
    await expect(bundleFunction(join(FIXTURES, 'bad/no-default.ts'))).rejects.toThrow(/no-default\.ts:1:1: error: no default export/);
  });
  it('says when the file does not exist', async () => {
    await expect(bundleFunction(join(FIXTURES, 'nope.ts'))).rejects.toThrow(/cannot read .*nope\.ts: no such file/);
  });
});
