/**
 * Content-addressed bundle storage under <data-dir>/blobs/sha256/<hex>.mjs. A blob is written
 * once (temp file + rename) and never changed; the same bytes deployed twice are stored once.
 */
import { createHash } from 'node:crypto';
import { mkdir, rename, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

export function sha256(data: Uint8Array | string): string {
  return createHash('sha256').update(data).digest('hex');
}

export class BlobStore {
  readonly dir: string;
  constructor(dataDir: string) {
    this.dir = join(dataDir, 'blobs', 'sha256');
  }

  path(digest: string): string {
    if (!/^[0-9a-f]{64}$/.test(digest)) throw new Error(`not a sha256 digest: ${digest}`);
    return join(this.dir, `${digest}.mjs`);
  }

  async put(data: Uint8Array): Promise<string> {
    const digest = sha256(data);
    const path = this.path(digest);
    if (await this.has(digest)) return digest;
    await mkdir(this.dir, { recursive: true });
    const tmp = `${path}.${process.pid}.${Date.now()}.tmp`;
    await writeFile(tmp, data, { mode: 0o600 });
    await rename(tmp, path);
    return digest;
  }

  async has(digest: string): Promise<boolean> {
    try {
      const st = await stat(this.path(digest));
      return st.isFile();
    } catch {
      return false;
    }
  }
}
