/**
 * Reads a container image without unpacking it: an OCI image layout (a folder with
 * `oci-layout` and `index.json`, or a tar of one, as `skopeo copy … oci-archive:` or
 * `podman save --format oci-archive` make), a `docker save` tar (manifest.json), or a plain
 * root filesystem folder. Gives its digest, its layers in order and its run config
 * (entrypoint, cmd, env, working dir, exposed port). Unpacking is the container driver's.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { TideError } from './errors.ts';

export interface ImageRunConfig {
  entrypoint: string[];
  cmd: string[];
  env: string[];
  workingDir: string;
  /** The first exposed TCP port, or 0. */
  port: number;
}

export interface ImageLayer {
  digest: string;
  /** The layer tar (gzip or not: the unpacker tells by its bytes). */
  path: string;
}

export interface ImageInfo {
  kind: 'oci' | 'docker' | 'rootfs';
  /** Where it was read from (absolute). */
  source: string;
  /** sha256:… of the manifest, or of the folder's path for a plain root filesystem. */
  digest: string;
  layers: ImageLayer[];
  /** For kind rootfs: the folder itself. */
  rootfs?: string;
  config: ImageRunConfig;
}

function bad(source: string, message: string): TideError {
  return new TideError('ERR_IMAGE_INVALID', `image ${source}: ${message}`, { status: 422 });
}

interface OciDescriptor {
  mediaType?: string;
  digest: string;
  platform?: { os?: string; architecture?: string };
}

async function json<T>(source: string, path: string): Promise<T> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as T;
  } catch (err) {
    throw bad(source, `cannot read ${path}: ${(err as Error).message}`);
  }
}

function blob(dir: string, digest: string, source: string): string {
  const m = /^sha256:([a-f0-9]{64})$/.exec(digest);
  if (!m) throw bad(source, `unsupported digest ${JSON.stringify(digest)} (sha256 only)`);
  return join(dir, 'blobs', 'sha256', m[1] as string);
}

function runConfig(raw: { config?: Record<string, unknown> } | undefined): ImageRunConfig {
  const c = (raw?.config ?? {}) as {
    Entrypoint?: string[] | null;
    Cmd?: string[] | null;
    Env?: string[] | null;
    WorkingDir?: string;
    ExposedPorts?: Record<string, unknown>;
  };
  const port = Object.keys(c.ExposedPorts ?? {})
    .map((p) => /^(\d+)(\/tcp)?$/.exec(p)?.[1])
    .filter((p): p is string => p !== undefined)
    .map(Number)[0];
  return { entrypoint: c.Entrypoint ?? [], cmd: c.Cmd ?? [], env: c.Env ?? [], workingDir: c.WorkingDir || '/', port: port ?? 0 };
}

/** Reads the image at `source`; a tar is first unpacked into a temporary folder (returned for clean-up). */
export async function readImage(sourceIn: string): Promise<ImageInfo & { temp?: string }> {
  const source = resolve(sourceIn);
  const st = await stat(source).catch(() => undefined);
  if (!st) throw bad(source, 'no such file or folder');
  if (st.isFile()) {
    const { x } = await import('tar');
    const temp = await mkdtemp(join(tmpdir(), 'tide-image-'));
    try {
      await x({ file: source, cwd: temp, strict: true });
    } catch (err) {
      throw bad(source, `not a readable tar: ${(err as Error).message}`);
    }
    const info = await readImage(temp);
    return { ...info, source, temp };
  }
  if (!st.isDirectory()) throw bad(source, 'neither a file nor a folder');
  const has = async (f: string) => (await stat(join(source, f)).catch(() => undefined)) !== undefined;
  if (await has('oci-layout')) return readOci(source);
  if (await has('manifest.json')) return readDocker(source);
  // A plain root filesystem: its path is its identity.
  return {
    kind: 'rootfs',
    source,
    digest: `sha256:${createHash('sha256').update(source).digest('hex')}`,
    layers: [],
    rootfs: source,
    config: { entrypoint: [], cmd: [], env: [], workingDir: '/', port: 0 },
  };
}

async function readOci(dir: string): Promise<ImageInfo> {
  const index = await json<{ manifests?: OciDescriptor[] }>(dir, join(dir, 'index.json'));
  let desc = index.manifests?.[0];
  if (!desc) throw bad(dir, 'index.json lists no manifest');
  // An index of several platforms: the one for this machine.
  if (desc.mediaType?.includes('image.index') || desc.mediaType?.includes('manifest.list')) {
    const nested = await json<{ manifests?: OciDescriptor[] }>(dir, blob(dir, desc.digest, dir));
    const arch = process.arch === 'x64' ? 'amd64' : process.arch;
    desc = nested.manifests?.find((m) => m.platform?.os === 'linux' && m.platform.architecture === arch) ?? nested.manifests?.[0];
    if (!desc) throw bad(dir, 'the image index lists no manifest');
  }
  const manifest = await json<{ config?: OciDescriptor; layers?: OciDescriptor[] }>(dir, blob(dir, desc.digest, dir));
  if (!manifest.config) throw bad(dir, `manifest ${desc.digest} has no config`);
  const config = await json<{ config?: Record<string, unknown> }>(dir, blob(dir, manifest.config.digest, dir));
  const layers = (manifest.layers ?? []).map((l) => ({ digest: l.digest, path: blob(dir, l.digest, dir) }));
  for (const l of layers) if (!(await stat(l.path).catch(() => undefined))) throw bad(dir, `layer ${l.digest} is missing`);
  return { kind: 'oci', source: dir, digest: desc.digest, layers, config: runConfig(config) };
}

async function readDocker(dir: string): Promise<ImageInfo> {
  const list = await json<{ Config?: string; Layers?: string[] }[]>(dir, join(dir, 'manifest.json'));
  const m = list[0];
  if (!m?.Config) throw bad(dir, 'manifest.json lists no image');
  const configPath = join(dir, m.Config);
  const configText = await readFile(configPath, 'utf8').catch(() => {
    throw bad(dir, `cannot read ${m.Config}`);
  });
  const layers = (m.Layers ?? []).map((p) => {
    const path = join(dir, p);
    return { digest: '', path };
  });
  for (const l of layers) {
    const data = await readFile(l.path).catch(() => {
      throw bad(dir, `layer ${l.path} is missing`);
    });
    l.digest = `sha256:${createHash('sha256').update(data).digest('hex')}`;
  }
  return {
    kind: 'docker',
    source: dir,
    digest: `sha256:${createHash('sha256').update(configText).digest('hex')}`,
    layers,
    config: runConfig(JSON.parse(configText) as { config?: Record<string, unknown> }),
  };
}

/** The chain id of layers (as OCI defines it): one digest for a stack of layers. */
export function chainId(layers: string[]): string {
  let chain = '';
  for (const d of layers) chain = chain === '' ? d : `sha256:${createHash('sha256').update(`${chain} ${d}`).digest('hex')}`;
  return chain;
}
