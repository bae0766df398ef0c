/**
 * Unpacks an image's layers (lib/oci.ts read them) into a root filesystem folder, cached by
 * the chain id of its layers: instances of the same image, and images built from the same
 * layers, share one unpacked copy. Whiteouts are applied as the layers go on: `.wh.NAME`
 * removes NAME from the layers below, `.wh..wh..opq` empties its folder of what the layers
 * below put there. Files are owned by the container's root (host uid 100000); device files,
 * paths outside the folder and writes through symbolic links are refused by the unpacker.
 */
import { randomBytes } from 'node:crypto';
import { readdirSync, rmSync } from 'node:fs';
import { chmod, chown, mkdir, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join, normalize } from 'node:path';
import { TideError } from '../../../lib/errors.ts';
import { chainId, type ImageInfo } from '../../../lib/oci.ts';
import { ID_BASE } from './spec.ts';

/** Where unpacked images are kept (reachable by the container's root, which is not host root). */
export const IMAGE_CACHE = '/var/lib/tide/images';

const unpacking = new Map<string, Promise<string>>();

/** The root filesystem folder of `image`, unpacking it once. */
export function imageRootfs(image: ImageInfo, cacheDir = IMAGE_CACHE): Promise<string> {
  if (image.kind === 'rootfs') return Promise.resolve(image.rootfs as string);
  if (image.layers.length === 0) throw new TideError('ERR_IMAGE_INVALID', `image ${image.source} has no layers`, { status: 422 });
  const chain = chainId(image.layers.map((l) => l.digest));
  const key = `${cacheDir}\n${chain}`;
  let p = unpacking.get(key);
  if (!p) {
    p = unpack(image, cacheDir, chain).finally(() => unpacking.delete(key));
    unpacking.set(key, p);
  }
  return p;
}

async function unpack(image: ImageInfo, cacheDir: string, chain: string): Promise<string> {
  const target = join(cacheDir, chain.replace(/^sha256:/, ''));
  const rootfs = join(target, 'rootfs');
  if (await stat(join(target, 'complete')).catch(() => undefined)) return rootfs;
  await mkdir(cacheDir, { recursive: true, mode: 0o711 });
  await chmod(dirname(cacheDir), 0o711).catch(() => {});
  await chmod(cacheDir, 0o711);
  const temp = `${target}.tmp-${randomBytes(4).toString('hex')}`;
  const root = join(temp, 'rootfs');
  await mkdir(root, { recursive: true, mode: 0o755 });
  try {
    const { x } = await import('tar');
    for (const layer of image.layers) {
      const written = new Set<string>();
      await x({
        file: layer.path,
        cwd: root,
        uid: ID_BASE,
        gid: ID_BASE,
        preserveOwner: false,
        strict: false,
        filter: (path: string) => {
          const p = normalize(path)
            .replace(/^(\.\/)+/, '')
            .replace(/\/$/, '');
          const base = p.slice(p.lastIndexOf('/') + 1);
          const dir = p.includes('/') ? p.slice(0, p.lastIndexOf('/')) : '';
          if (base === '.wh..wh..opq') {
            // Opaque: what the layers below put in this folder is gone; this layer's own stays.
            let names: string[] = [];
            try {
              names = readdirSync(join(root, dir));
            } catch {
              names = [];
            }
            for (const n of names) if (!written.has(dir === '' ? n : `${dir}/${n}`)) rmSync(join(root, dir, n), { recursive: true, force: true });
            return false;
          }
          if (base.startsWith('.wh.')) {
            rmSync(join(root, dir, base.slice(4)), { recursive: true, force: true });
            return false;
          }
          written.add(p);
          return true;
        },
      });
    }
    // The mount points Tide uses, made now: the container's root may not create them later.
    for (const d of ['proc', 'dev', 'sys', 'tmp', 'run/tide', 'tide/lib']) await mkdir(join(root, d), { recursive: true });
    for (const f of ['tide/node', 'tide/inside.ts']) await writeFile(join(root, f), '', { flag: 'a' });
    await chown(root, ID_BASE, ID_BASE);
    await writeFile(join(temp, 'complete'), `${chain}\n${image.source}\n`);
    await rename(temp, target).catch(async (err: NodeJS.ErrnoException) => {
      // Unpacked at the same time by another process: keep theirs.
      if (err.code !== 'ENOTEMPTY' && err.code !== 'EEXIST') throw err;
      await rm(temp, { recursive: true, force: true });
    });
  } catch (err) {
    await rm(temp, { recursive: true, force: true });
    throw err instanceof TideError
      ? err
      : new TideError('ERR_IMAGE_INVALID', `unpacking ${image.source} failed: ${(err as Error).message}`, { status: 422, cause: err });
  }
  return rootfs;
}

/** Unpacked images in the cache (for tests and clean-up tools). */
export async function cachedImages(cacheDir = IMAGE_CACHE): Promise<string[]> {
  return (await readdir(cacheDir).catch(() => [] as string[])).filter((d) => !d.includes('.tmp-'));
}
