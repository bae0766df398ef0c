/**
 * Content-addressed bundle storage under <data-dir>/blobs/sha256/<hex>.mjs. A blob is written
 * once (temp file + rename) and never changed; the same bytes deployed twice are stored once.
 */
import { createHash } from 'node:crypto';
import { mkdir, rename, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isTideError, TideError } from '../lib/errors.ts';

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

/** Where bundles live in a cluster's store, so every node can fetch them. */
export const BLOB_PREFIX = '/tide/blobs/';
/** The largest bundle a cluster store takes (etcd refuses requests over 1.5 MiB by default; base64 adds a third). */
export const MAX_CLUSTER_BLOB_BYTES = 1024 * 1024;

/** The part of the Store blobs need. */
interface BlobKeys {
  get(key: string): Promise<{ value: string } | undefined>;
  put(key: string, value: string, options?: { expectModRevision?: number }): Promise<number>;
}

/**
 * Bundles in a cluster: written to the local folder as on one machine, and to the store
 * (base64, once per digest), so that a node on another machine fetches what it runs and checks
 * it against its digest before it writes it to its own folder.
 */
export class ClusterBlobs extends BlobStore {
  readonly #store: BlobKeys;
  readonly #fetching = new Map<string, Promise<string>>();

  constructor(dataDir: string, store: BlobKeys) {
    super(dataDir);
    this.#store = store;
  }

  override async put(data: Uint8Array): Promise<string> {
    if (data.byteLength > MAX_CLUSTER_BLOB_BYTES)
      throw new TideError('ERR_BUNDLE', `the bundle is ${data.byteLength} bytes; a cluster's store takes bundles of up to ${MAX_CLUSTER_BLOB_BYTES} bytes`, {
        status: 413,
        hint: 'leave large dependencies out of the bundle, or ship the function as a container image',
      });
    const digest = await super.put(data);
    if (!(await this.#store.get(BLOB_PREFIX + digest))) {
      await this.#store.put(BLOB_PREFIX + digest, Buffer.from(data).toString('base64'), { expectModRevision: 0 }).catch((err: unknown) => {
        if (!isTideError(err, 'ERR_STORE_CONFLICT')) throw err;
      });
    }
    return digest;
  }

  /** The local file of `digest`, fetched from the store first when this machine does not have it. */
  fetch(digest: string): Promise<string> {
    const path = this.path(digest);
    let p = this.#fetching.get(digest);
    if (p) return p;
    p = (async () => {
      if (await this.has(digest)) return path;
      const kv = await this.#store.get(BLOB_PREFIX + digest);
      if (!kv) throw new TideError('ERR_NOT_FOUND', `bundle ${digest.slice(0, 12)} is not in the cluster store`, { status: 404 });
      const data = Buffer.from(kv.value, 'base64');
      if (sha256(data) !== digest) throw new TideError('ERR_BUNDLE', `bundle ${digest.slice(0, 12)} from the cluster store does not match its digest`);
      await super.put(data);
      return path;
    })().finally(() => this.#fetching.delete(digest));
    this.#fetching.set(digest, p);
    return p;
  }
}
