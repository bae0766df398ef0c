/**
 * Builds container images for tests without a Docker engine: a statically linked server
 * (test/fixtures/image/server.c, compiled with gcc) in an OCI image layout of two layers. The
 * second layer changes a file, deletes one with a whiteout and makes a folder opaque, so the
 * server's answer shows whether the layers were applied right.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { c as tarCreate } from 'tar';
import { FIXTURES, tempDir } from './tide.ts';

function sha(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

async function layer(dir: string, files: Record<string, string | Buffer>, modes: Record<string, number> = {}): Promise<Buffer> {
  const root = tempDir('tide-layer-');
  for (const [path, content] of Object.entries(files)) {
    mkdirSync(join(root, path, '..'), { recursive: true });
    writeFileSync(join(root, path), content, { mode: modes[path] ?? 0o644 });
  }
  const out = join(dir, `layer-${Math.random().toString(36).slice(2)}.tar.gz`);
  await tarCreate({ gzip: true, file: out, cwd: root, portable: true }, Object.keys(files));
  return readFileSync(out);
}

/** An OCI image layout folder; returns its path. */
export async function buildImage(): Promise<string> {
  const work = tempDir('tide-image-build-');
  const server = join(work, 'server');
  execFileSync('gcc', ['-static', '-O2', '-o', server, join(FIXTURES, 'image', 'server.c')], { stdio: 'pipe' });
  const layout = join(work, 'layout');
  mkdirSync(join(layout, 'blobs', 'sha256'), { recursive: true });
  const put = (data: Buffer | string) => {
    const digest = sha(data);
    writeFileSync(join(layout, 'blobs', 'sha256', digest), data);
    return { digest: `sha256:${digest}`, size: Buffer.byteLength(data) };
  };
  const l1 = put(
    await layer(
      work,
      { 'bin/server': readFileSync(server), 'app/message.txt': 'layer one\n', 'app/old.txt': 'old\n', 'etc/junk/a.txt': 'a\n' },
      { 'bin/server': 0o755 },
    ),
  );
  const l2 = put(await layer(work, { 'app/message.txt': 'layer two\n', 'app/.wh.old.txt': '', 'etc/junk/.wh..wh..opq': '', 'etc/junk/b.txt': 'b\n' }));
  const config = put(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      config: { Entrypoint: ['/bin/server'], Env: ['PATH=/bin', 'FROM_IMAGE=yes'], WorkingDir: '/app', ExposedPorts: { '9000/tcp': {} } },
      rootfs: { type: 'layers', diff_ids: [] },
    }),
  );
  const manifest = put(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
      layers: [l1, l2].map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', ...l })),
    }),
  );
  writeFileSync(join(layout, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  writeFileSync(
    join(layout, 'index.json'),
    JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...manifest }] }),
  );
  return layout;
}

/** The same layout as a tar (as `skopeo copy … oci-archive:` writes). */
export async function imageTar(layout: string): Promise<string> {
  const out = join(tempDir('tide-image-tar-'), 'image.tar');
  await tarCreate({ file: `${out}.part`, cwd: layout, portable: true }, ['oci-layout', 'index.json', 'blobs']);
  renameSync(`${out}.part`, out);
  return out;
}
