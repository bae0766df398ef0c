/**
 * The container sandbox driver: each Instance is a runc container running Tide's program
 * (inside.ts) on the host's Node, reached over a Unix socket. What the container may see and
 * use is in spec.ts; docs/container-sandbox.md says what is isolated and what is not.
 *
 * Files under /run/tide/<hash of the data dir> (not in the data dir: the container's root is
 * host uid 100000, and it must be able to reach what is mounted; every folder on the way is
 * traversable, every file readable only by whom it is for): `runc/` (runc's state root:
 * everything there is Tide's), `rootfs/` (an empty skeleton of mount points, shared and
 * read-only), `bin/` (Node and inside.ts, when their own paths are not reachable), and one
 * folder per container: config.json, `fn/` (the bundle and its env, readable only by the
 * container), `sock/` (the socket), stdout.log and stderr.log (tailed into the function's logs,
 * capped in size).
 *
 * Pre-started containers: `warmContainers` generic containers are kept running with no
 * function (TIDE_WAIT=1). A cold start with the default resources copies the bundle into one
 * and asks it to load: no runc, no Node start on the request's path.
 *
 * A container that dies (OOM kill, crash) is replaced by a new one for the same instance and
 * reported (`out-of-memory` is OOMKilled); in-flight requests fail with 5xx.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import {
  access,
  chmod,
  chown,
  constants,
  copyFile,
  lstat,
  mkdir,
  open,
  readFile,
  realpath,
  rename,
  rm,
  stat,
  symlink,
  truncate,
  writeFile,
} from 'node:fs/promises';
import { Agent, request as httpRequest } from 'node:http';
import { basename, dirname, join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { FUNCTION_DEFAULTS, type ImageRef } from '../../../control/api/schema/function.ts';
import { isTideError, TideError } from '../../../lib/errors.ts';
import { readImage } from '../../../lib/oci.ts';
import { CTL, HOP_BY_HOP } from '../../../proxy/http/grammar.ts';
import { H1Pool, type PoolController, type PoolHandler } from '../../../proxy/upstream/h1pool.ts';
import type { DispatchMeta, Instance, InstanceEvent, InstanceSpec, SandboxDriver, SandboxRequest, SandboxResponse, SandboxUsage } from '../driver.ts';
import { IMAGE_CACHE, imageRootfs } from './image.ts';
import { findRunc, Runc } from './runc.ts';
import { containerSpec, ID_BASE } from './spec.ts';

const INSIDE = new URL('./inside.ts', import.meta.url).pathname;
const MESH_FETCH = new URL('../mesh-fetch.ts', import.meta.url).pathname;

export interface LogRecord {
  instance: string;
  revision: string;
  function: string;
  level: 'info' | 'error';
  message: string;
}

export interface ContainerDriverOptions {
  /** The data directory this driver's containers belong to (their files go under `containersRoot`). */
  dataDir: string;
  /** Default /run/tide. */
  containersRoot?: string;
  onEvent?: (event: InstanceEvent) => void;
  /** Each line the function prints. */
  onLog?: (line: LogRecord) => void;
  /** The Node binary mounted into containers. Default: the one running Tide. */
  nodeBinary?: string;
  /** Pre-started generic containers kept for cold starts. Default 1. */
  warmContainers?: number;
  /** How long a container may take to answer its first health check, ms. Default 10000. */
  startTimeoutMs?: number;
  /** After a request's timeout, how long before an unresponsive container is replaced, ms. Default 1000. */
  killGraceMs?: number;
  /** Processes a container may have. Default 256. */
  pidsLimit?: number;
  /** Size of a container's /tmp, MiB. Default 64. */
  tmpMb?: number;
  /** Bytes of stdout or stderr kept before the file is cut (after being read). Default 1 MiB. */
  maxLogBytes?: number;
  /**
   * Opens the function's way out to the mesh at `socketPath` (in the container's own socket
   * folder, seen inside as /run/tide/mesh.sock); resolves with its closer. Default: no mesh.
   */
  mesh?: (namespace: string, fn: string, socketPath: string) => Promise<() => Promise<void>>;
}

type Required2 = Required<Omit<ContainerDriverOptions, 'onEvent' | 'onLog' | 'containersRoot' | 'mesh'>> &
  Pick<ContainerDriverOptions, 'onEvent' | 'onLog' | 'mesh'>;

/** The resources warm containers are made with (a function's defaults). */
const WARM_RESOURCES = { memoryMb: FUNCTION_DEFAULTS.memoryMb, cpuMillis: FUNCTION_DEFAULTS.cpuMillis, cpuLimitMillis: FUNCTION_DEFAULTS.cpuLimitMillis };

type Resources = typeof WARM_RESOURCES;

export class ContainerDriver implements SandboxDriver {
  readonly kind = 'container' as const;
  readonly #opts: Required2;
  readonly #dir: string;
  #runc: Runc | undefined;
  #node = '';
  #inside = '';
  #meshFetch = '';
  #lib = { dir: '', loader: '' };
  #ready: Promise<void> | undefined;
  readonly #warm: Container[] = [];
  #warming = 0;
  #closed = false;

  constructor(options: ContainerDriverOptions) {
    this.#opts = {
      nodeBinary: process.execPath,
      warmContainers: 1,
      startTimeoutMs: 10_000,
      killGraceMs: 1000,
      pidsLimit: 256,
      tmpMb: 64,
      maxLogBytes: 1024 * 1024,
      ...options,
    };
    const hash = createHash('sha256').update(resolve(options.dataDir)).digest('hex').slice(0, 10);
    this.#dir = join(options.containersRoot ?? '/run/tide', hash);
  }

  /** Finds runc, prepares the folders, removes what an earlier run left, starts the warm containers. */
  init(): Promise<void> {
    this.#ready ??= (async () => {
      this.#runc = new Runc(await findRunc(), join(this.#dir, 'runc'));
      await mkdir(join(this.#dir, 'runc'), { recursive: true, mode: 0o700 });
      await chmod(dirname(this.#dir), 0o711);
      await chmod(this.#dir, 0o711);
      this.#node = await reachable(this.#opts.nodeBinary, join(this.#dir, 'bin', 'node'));
      // The host's dynamic loader and its libraries, for Node inside images that have their own.
      const loader = await realpath('/lib64/ld-linux-x86-64.so.2').catch(() => realpath('/lib/ld-linux-aarch64.so.1'));
      this.#lib = { dir: dirname(loader), loader: basename(loader) };
      this.#inside = await reachable(INSIDE, join(this.#dir, 'bin', 'inside.ts'), true);
      this.#meshFetch = await reachable(MESH_FETCH, join(this.#dir, 'bin', 'mesh-fetch.ts'), true);
      const rootfs = join(this.#dir, 'rootfs');
      for (const d of ['usr', 'lib64', 'proc', 'dev', 'sys', 'tmp', 'etc', 'fn', 'run/tide', 'tide']) await mkdir(join(rootfs, d), { recursive: true });
      for (const f of ['tide/node', 'tide/inside.ts', 'tide/mesh-fetch.ts', 'etc/hosts', 'etc/resolv.conf'])
        await writeFile(join(rootfs, f), '', { flag: 'a' });
      await symlinks(rootfs);
      await this.cleanOrphans();
      this.#refill();
    })();
    return this.#ready;
  }

  prepare(): Promise<void> {
    return this.init();
  }

  /** Runs init (so orphans are removed and warm containers start) only if an earlier run used containers. */
  async cleanupIfUsed(): Promise<void> {
    const used = await stat(join(this.#dir, 'runc')).then(
      () => true,
      () => false,
    );
    if (used) await this.init();
  }

  /** Deletes every container under Tide's runc root and its folder (left by a crash or kill -9). */
  async cleanOrphans(): Promise<string[]> {
    const runc = this.#runc as Runc;
    const found = await runc.list();
    const live = new Set([...this.#warm.map((c) => c.id), ...Container.live.keys()]);
    const orphans = found.filter((c) => !live.has(c.id));
    for (const c of orphans) {
      await runc.delete(c.id);
      await rm(join(this.#dir, c.id), { recursive: true, force: true });
    }
    return orphans.map((c) => c.id);
  }

  async start(spec: InstanceSpec, signal?: AbortSignal): Promise<Instance> {
    await this.init();
    const instance = new ContainerInstance(spec, this);
    try {
      await instance.boot(signal);
    } catch (err) {
      await instance.destroy();
      throw err;
    }
    return instance;
  }

  async stop(instance: Instance, options: { drain?: boolean; drainMs?: number } = {}): Promise<void> {
    if (!(instance instanceof ContainerInstance)) throw new TypeError('not a container instance');
    if (options.drain === false) return instance.destroy();
    return instance.close(options.drainMs ?? 30_000);
  }

  async probe(instance: Instance): Promise<boolean> {
    return instance instanceof ContainerInstance && (await instance.healthy());
  }

  /** Removes the warm containers; when no container of this driver is left, its folder too. */
  async close(): Promise<void> {
    this.#closed = true;
    await Promise.all(this.#warm.splice(0).map((c) => c.remove()));
    if (this.#runc && Container.live.size === 0 && (await this.#runc.list()).length === 0) {
      await rm(this.#dir, { recursive: true, force: true });
    }
  }

  /** @internal a container for `spec`: a warm one when the resources match, else a new one. */
  async container(spec: InstanceSpec, signal?: AbortSignal): Promise<Container> {
    const fits =
      spec.config.memoryMb === WARM_RESOURCES.memoryMb &&
      spec.config.cpuMillis === WARM_RESOURCES.cpuMillis &&
      spec.config.cpuLimitMillis === WARM_RESOURCES.cpuLimitMillis;
    const warm = fits && !spec.image ? this.#warm.shift() : undefined;
    const c = warm ?? new Container(this, `${spec.id}-${randomBytes(2).toString('hex')}`, spec.config, false);
    try {
      if (warm) {
        setTimeout(() => this.#refill(), 200).unref();
        await warm.assign(spec, signal);
      } else {
        await c.create(spec, signal);
      }
    } catch (err) {
      await c.remove();
      throw err;
    }
    return c;
  }

  #refill(): void {
    while (!this.#closed && this.#warm.length + this.#warming < this.#opts.warmContainers) {
      this.#warming++;
      const c = new Container(this, `warm-${randomBytes(4).toString('hex')}`, WARM_RESOURCES, true);
      c.create(undefined).then(
        () => {
          this.#warming--;
          if (this.#closed) void c.remove();
          else this.#warm.push(c);
        },
        () => {
          this.#warming--;
          void c.remove();
        },
      );
    }
  }

  /** @internal */
  get opts(): Required2 {
    return this.#opts;
  }

  /** @internal */
  get dir(): string {
    return this.#dir;
  }

  /** @internal the Node binary and inside.ts as containers can reach them, and the host's loader. */
  get binaries(): { node: string; inside: string; meshFetch: string; libDir: string; loader: string } {
    return { node: this.#node, inside: this.#inside, meshFetch: this.#meshFetch, libDir: this.#lib.dir, loader: this.#lib.loader };
  }

  /** @internal */
  get runc(): Runc {
    return this.#runc as Runc;
  }
}

/** One runc container and its folder. */
export class Container {
  /** Containers this process runs, by id (for orphan cleanup and tests). */
  static readonly live = new Map<string, Container>();
  readonly id: string;
  readonly dir: string;
  readonly socket: string;
  readonly #driver: ContainerDriver;
  readonly #resources: Resources;
  readonly #generic: boolean;
  readonly agent = new Agent({ keepAlive: true, maxSockets: Number.POSITIVE_INFINITY });
  /** The request path: Tide's own HTTP/1.1 pool over the container's socket. */
  readonly pool: H1Pool;
  pid = 0;
  #tailer: NodeJS.Timeout | undefined;
  #read = { stdout: 0, stderr: 0 };
  #owner: InstanceSpec | undefined;
  #removed = false;
  #closeMesh: (() => Promise<void>) | undefined;

  constructor(driver: ContainerDriver, id: string, resources: Resources, generic: boolean) {
    this.#driver = driver;
    this.id = id;
    this.dir = join(driver.dir, id);
    this.socket = join(this.dir, 'sock', 'tide.sock');
    this.#resources = resources;
    this.#generic = generic;
    this.pool = new H1Pool('localhost', 0, { connections: 1024, connectTimeoutMs: 5000, socketPath: this.socket, idleMs: 60_000 });
    if (this.socket.length > 100) {
      throw new TideError('ERR_SANDBOX_START', `the socket path ${this.socket} is too long for a Unix socket (${this.socket.length} > 100)`, {
        hint: 'use a shorter --data-dir',
      });
    }
  }

  /** Writes the folder and config, then `runc create` + `runc start`; resolves when it answers its health check. */
  async create(spec: InstanceSpec | undefined, signal?: AbortSignal): Promise<void> {
    const o = this.#driver.opts;
    Container.live.set(this.id, this);
    await mkdir(join(this.dir, 'fn'), { recursive: true, mode: 0o700 });
    await mkdir(join(this.dir, 'sock'), { recursive: true, mode: 0o700 });
    await chown(join(this.dir, 'sock'), ID_BASE, ID_BASE);
    await chmod(this.dir, 0o711);
    if (spec && !spec.image) await this.#writeFunction(spec);
    if (spec) await this.#openMesh(spec);
    const bins = this.#driver.binaries;
    const base = {
      memoryMb: this.#resources.memoryMb,
      cpuMillis: this.#resources.cpuMillis,
      cpuLimitMillis: this.#resources.cpuLimitMillis,
      pidsLimit: o.pidsLimit,
      tmpMb: o.tmpMb,
      cgroupsPath: `/tide/${this.id}`,
      idBase: ID_BASE,
      hostname: spec ? spec.function : 'tide',
    };
    const sock = { source: join(this.dir, 'sock'), destination: '/run/tide', readonly: false };
    const image = spec?.image;
    const config = image
      ? containerSpec({
          ...base,
          rootfs: await rootfsOf(image),
          // Tide's forwarder runs on the host's Node through the host's loader; the image's process on its own libraries.
          args: [`/tide/lib/${bins.loader}`, '--library-path', '/tide/lib', '/tide/node', '--max-old-space-size=48', '/tide/inside.ts'],
          env: [
            ...(image.env.some((e) => e.startsWith('PATH=')) ? [] : ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin']),
            ...image.env,
            ...Object.entries(spec.env).map(([k, v]) => `${k}=${v}`),
            `PORT=${image.port}`,
            'TIDE_MODE=forward',
            'TIDE_SOCKET=/run/tide/tide.sock',
            // The mesh, for the image's own process: HTTP over this socket, Host NAME.NAMESPACE.svc.tide.
            'TIDE_MESH_SOCKET=/run/tide/mesh.sock',
            `TIDE_COMMAND=${JSON.stringify(image.command)}`,
            `TIDE_WORKDIR=${image.workingDir}`,
            `TIDE_CONCURRENCY=${spec.config.scaling.containerConcurrency}`,
          ],
          cwd: '/',
          binds: [
            { source: bins.node, destination: '/tide/node', readonly: true, file: true },
            { source: bins.inside, destination: '/tide/inside.ts', readonly: true, file: true },
            { source: bins.libDir, destination: '/tide/lib', readonly: true },
            sock,
          ],
        })
      : containerSpec({
          ...base,
          rootfs: join(this.#driver.dir, 'rootfs'),
          // The cgroup limit is the whole container's; Node's heap gets half, the rest is Node itself and its buffers.
          args: [
            '/tide/node',
            `--max-old-space-size=${Math.max(16, Math.floor(this.#resources.memoryMb * 0.5))}`,
            '--max-semi-space-size=4',
            '/tide/inside.ts',
          ],
          env: ['PATH=/usr/local/bin:/usr/bin:/bin', 'HOME=/tmp', 'NODE_ENV=production', 'TIDE_SOCKET=/run/tide/tide.sock', ...(spec ? [] : ['TIDE_WAIT=1'])],
          cwd: '/tmp',
          binds: [
            { source: '/usr', destination: '/usr', readonly: true },
            { source: '/lib64', destination: '/lib64', readonly: true },
            { source: bins.node, destination: '/tide/node', readonly: true, file: true },
            { source: bins.inside, destination: '/tide/inside.ts', readonly: true, file: true },
            { source: bins.meshFetch, destination: '/tide/mesh-fetch.ts', readonly: true, file: true },
            { source: join(this.dir, 'fn'), destination: '/fn', readonly: true },
            sock,
          ],
        });
    await writeFile(join(this.dir, 'config.json'), JSON.stringify(config));
    const out = await open(join(this.dir, 'stdout.log'), 'a', 0o600);
    const err = await open(join(this.dir, 'stderr.log'), 'a', 0o600);
    try {
      await this.#driver.runc.create(this.id, this.dir, join(this.dir, 'pid'), out.fd, err.fd);
    } catch (e) {
      // runc says why on the container's stderr; the folder goes away with the failure, so say it here.
      const why = (await readFile(join(this.dir, 'stderr.log'), 'utf8').catch(() => ''))
        .trim()
        .split('\n')
        .slice(-2)
        .join(' | ')
        .replace(/^.*?msg="/, '')
        .replace(/"$/, '');
      throw new TideError('ERR_SANDBOX_START', `runc create ${this.id} failed${why ? `: ${why}` : ''}`, { status: 502, cause: e });
    } finally {
      await out.close();
      await err.close();
    }
    this.pid = Number((await readFile(join(this.dir, 'pid'), 'utf8')).trim());
    await this.#driver.runc.start(this.id);
    this.#owner = spec;
    this.#tailer = setInterval(() => void this.#tail(), 250);
    this.#tailer.unref();
    await this.#waitHealthy(signal);
  }

  /** Gives a pre-started container its function and has it load it. */
  async assign(spec: InstanceSpec, signal?: AbortSignal): Promise<void> {
    await this.#writeFunction(spec);
    await this.#openMesh(spec);
    this.#owner = spec;
    const r = await this.call('POST', '/.tide/load', signal);
    if (r.status !== 200) throw new TideError('ERR_FUNCTION_INVALID', r.body.trim() || `loading failed (${r.status})`, { status: 422 });
  }

  /** The function's way out to the mesh, at /run/tide/mesh.sock inside. */
  async #openMesh(spec: InstanceSpec): Promise<void> {
    const mesh = this.#driver.opts.mesh;
    if (!mesh || this.#closeMesh) return;
    this.#closeMesh = await mesh(spec.namespace, spec.function, join(this.dir, 'sock', 'mesh.sock'));
  }

  async #writeFunction(spec: InstanceSpec): Promise<void> {
    const fn = join(this.dir, 'fn');
    await copyFile(spec.bundlePath, join(fn, 'bundle.mjs'));
    await writeFile(join(fn, 'env.json'), JSON.stringify(spec.env), { mode: 0o400 });
    for (const f of ['bundle.mjs', 'env.json']) {
      await chown(join(fn, f), ID_BASE, ID_BASE);
      await chmod(join(fn, f), 0o400);
    }
    await chown(fn, ID_BASE, ID_BASE);
  }

  async #waitHealthy(signal?: AbortSignal): Promise<void> {
    const deadline = Date.now() + this.#driver.opts.startTimeoutMs;
    let last = '';
    while (Date.now() < deadline) {
      signal?.throwIfAborted();
      if (!this.alive()) break;
      try {
        const r = await this.call('GET', '/.tide/health');
        // A pre-started container has no function yet: answering at all is ready.
        if (r.status === 200 || this.#generic) return;
        last = r.body.trim();
      } catch (err) {
        last = (err as Error).message;
      }
      await new Promise((r) => setTimeout(r, 2));
    }
    await this.#tail();
    const log = (await readFile(join(this.dir, 'stderr.log'), 'utf8').catch(() => '')).trim().split('\n').slice(-3).join(' | ');
    throw new TideError('ERR_FUNCTION_INVALID', `container ${this.id} did not become ready: ${log || last || 'it exited'}`, { status: 422 });
  }

  /** A small request to Tide's program inside (health, load). */
  call(method: string, path: string, signal?: AbortSignal): Promise<{ status: number; body: string }> {
    return new Promise((resolve, reject) => {
      const req = httpRequest({ socketPath: this.socket, method, path, agent: this.agent, headers: { host: 'tide' }, signal }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => {
          body += d;
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        res.on('error', reject);
      });
      req.on('error', reject);
      req.end();
    });
  }

  /**
   * True while the container's first process runs. A dead one may stay a zombie (its parent is
   * whatever reaps orphans here, not Tide), so the state in /proc counts, not just the pid.
   */
  alive(): boolean {
    if (this.pid <= 0) return false;
    try {
      const stat = readFileSync(`/proc/${this.pid}/stat`, 'latin1');
      const state = stat.charAt(stat.lastIndexOf(')') + 2);
      return state !== 'Z' && state !== 'X' && state !== 'x';
    } catch {
      return false;
    }
  }

  /** True when the container's memory cgroup recorded an OOM kill. */
  async oomKilled(): Promise<boolean> {
    for (const file of [`/sys/fs/cgroup/memory/tide/${this.id}/memory.oom_control`, `/sys/fs/cgroup/tide/${this.id}/memory.events`]) {
      const text = await readFile(file, 'utf8').catch(() => '');
      const m = /oom_kill (\d+)/.exec(text);
      if (m && Number(m[1]) > 0) return true;
    }
    return false;
  }

  /** Moves new lines of stdout/stderr into the function's logs; cuts a file that grew past the cap. */
  async #tail(): Promise<void> {
    const owner = this.#owner;
    for (const stream of ['stdout', 'stderr'] as const) {
      const file = join(this.dir, `${stream}.log`);
      const size = await stat(file).then(
        (s) => s.size,
        () => 0,
      );
      if (size < this.#read[stream]) this.#read[stream] = 0;
      if (size === this.#read[stream]) continue;
      const fh = await open(file, 'r').catch(() => undefined);
      if (!fh) continue;
      try {
        const len = Math.min(size - this.#read[stream], 1024 * 1024);
        const buf = Buffer.alloc(len);
        await fh.read(buf, 0, len, this.#read[stream]);
        const text = buf.toString('utf8');
        const end = text.lastIndexOf('\n');
        if (end === -1 && len < 64 * 1024) continue;
        const complete = end === -1 ? text : text.slice(0, end);
        this.#read[stream] += Buffer.byteLength(end === -1 ? text : text.slice(0, end + 1));
        if (owner) {
          for (const message of complete.split('\n')) {
            if (message === '') continue;
            this.#driver.opts.onLog?.({
              instance: owner.id,
              revision: owner.revision,
              function: owner.function,
              level: stream === 'stdout' ? 'info' : 'error',
              message,
            });
          }
        }
      } finally {
        await fh.close();
      }
      if (this.#read[stream] >= this.#driver.opts.maxLogBytes) {
        await truncate(file, 0).catch(() => {});
        this.#read[stream] = 0;
      }
    }
  }

  /** SIGTERM, wait up to `graceMs`, SIGKILL; then runc delete and the folder. */
  async remove(graceMs = 0): Promise<void> {
    if (this.#removed) return;
    this.#removed = true;
    clearInterval(this.#tailer);
    const runc = this.#driver.runc;
    if (graceMs > 0 && this.alive()) {
      await runc.kill(this.id, 'TERM');
      const deadline = Date.now() + graceMs;
      while (this.alive() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    }
    await this.#tail().catch(() => {});
    await runc.kill(this.id, 'KILL');
    await runc.delete(this.id);
    this.agent.destroy();
    await this.pool.destroy();
    await this.#closeMesh?.().catch(() => {});
    await rm(this.dir, { recursive: true, force: true });
    Container.live.delete(this.id);
  }
}

/** An instance: its current container (replaced when it dies) and the requests it serves. */
export class ContainerInstance implements Instance {
  readonly spec: InstanceSpec;
  readonly #driver: ContainerDriver;
  #container: Container | undefined;
  #inflight = 0;
  #closed = false;
  #watch: NodeJS.Timeout | undefined;
  #replacing: Promise<void> | undefined;
  readonly #exchanges = new Set<ContainerExchange>();

  constructor(spec: InstanceSpec, driver: ContainerDriver) {
    this.spec = spec;
    this.#driver = driver;
  }

  get inflight(): number {
    return this.#inflight;
  }

  /** The container now serving (tests look inside it). */
  get container(): Container | undefined {
    return this.#container;
  }

  /** The container's cgroup: memory in use and CPU time (cgroup v1 controllers, else v2). */
  async usage(): Promise<SandboxUsage | undefined> {
    const c = this.#container;
    if (!c) return undefined;
    const read = (f: string) =>
      readFile(f, 'utf8').then(
        (t) => t.trim(),
        () => undefined,
      );
    const v1mem = await read(`/sys/fs/cgroup/memory/tide/${c.id}/memory.usage_in_bytes`);
    const v1cpu = await read(`/sys/fs/cgroup/cpuacct/tide/${c.id}/cpuacct.usage`);
    if (v1mem !== undefined && v1cpu !== undefined) return { memoryBytes: Number(v1mem), cpuSeconds: Number(v1cpu) / 1e9 };
    const v2mem = await read(`/sys/fs/cgroup/tide/${c.id}/memory.current`);
    const v2cpu = await read(`/sys/fs/cgroup/tide/${c.id}/cpu.stat`);
    const usec = v2cpu && /usage_usec (\d+)/.exec(v2cpu)?.[1];
    if (v2mem !== undefined && usec) return { memoryBytes: Number(v2mem), cpuSeconds: Number(usec) / 1e6 };
    return undefined;
  }

  async boot(signal?: AbortSignal): Promise<void> {
    this.#container = await this.#driver.container(this.spec, signal);
    this.#watch = setInterval(() => this.#check(), 100);
    this.#watch.unref();
  }

  async healthy(): Promise<boolean> {
    const c = this.#container;
    if (!c?.alive()) return false;
    return c.call('GET', '/.tide/health').then(
      (r) => r.status === 200,
      () => false,
    );
  }

  /** Notices a container that died, reports why and starts another. */
  #check(): void {
    const c = this.#container;
    if (this.#closed || !c || this.#replacing || c.alive()) return;
    this.#replacing = (async () => {
      const oom = await c.oomKilled();
      const reason: InstanceEvent['reason'] = oom ? 'out-of-memory' : 'crashed';
      const message = oom
        ? `OOMKilled: the container went over its memory limit of ${this.spec.config.memoryMb} MiB; replaced`
        : 'the container exited; replaced';
      this.#emit(reason, message);
      const error = new TideError(oom ? 'ERR_SANDBOX_OUT_OF_MEMORY' : 'ERR_SANDBOX_INSTANCE_REPLACED', message, { status: oom ? 500 : 503 });
      for (const x of this.#exchanges) x.fail(error);
      await c.remove();
      if (this.#closed) return;
      try {
        this.#container = await this.#driver.container(this.spec);
      } catch {
        this.#container = undefined;
      }
    })().finally(() => {
      this.#replacing = undefined;
    });
  }

  #emit(reason: InstanceEvent['reason'], message: string): void {
    this.#driver.opts.onEvent?.({ instance: this.spec.id, revision: this.spec.revision, function: this.spec.function, type: 'replaced', reason, message });
  }

  dispatch(req: SandboxRequest, res: SandboxResponse, meta: DispatchMeta): Promise<void> {
    if (this.#closed) return Promise.reject(new TideError('ERR_SANDBOX_CLOSED', `instance ${this.spec.id} is stopping`, { status: 503 }));
    this.#inflight++;
    const c = this.#container;
    // While its container is being replaced, a request waits for the new one instead of failing.
    // (Whether it is alive is checked every 100 ms and on a refused connection, not per request.)
    const ready = c && !this.#replacing ? Promise.resolve(c) : this.#ready();
    return ready
      .then((container) => new Promise<void>((resolve, reject) => this.#exchange(container, req, res, meta, resolve, reject, true)))
      .finally(() => {
        this.#inflight--;
      });
  }

  /** The container once it is up, replacing a dead one first. */
  async #ready(): Promise<Container> {
    for (let i = 0; i < 2; i++) {
      const c = this.#container;
      if (this.#closed) break;
      if (c && !this.#replacing && c.alive()) return c;
      this.#check();
      await this.#replacing;
    }
    throw new TideError('ERR_SANDBOX_INSTANCE_REPLACED', `instance ${this.spec.id} has no running container`, { status: 503 });
  }

  #exchange(
    c: Container,
    req: SandboxRequest,
    res: SandboxResponse,
    meta: DispatchMeta,
    resolve: () => void,
    reject: (e: Error) => void,
    mayRetry: boolean,
  ): void {
    const url = new URL(req.url);
    const headers: string[] = [];
    let hasId = false;
    for (let i = 0; i + 1 < req.headers.length; i += 2) {
      const name = req.headers[i] as string;
      const lower = name.toLowerCase();
      if (HOP_BY_HOP.has(lower) || lower === 'tide-scheme' || lower === 'content-length') continue;
      if (lower === 'x-request-id') hasId = true;
      headers.push(name, req.headers[i + 1] as string);
    }
    if (!hasId) headers.push('x-request-id', meta.requestId);
    headers.push('tide-scheme', meta.scheme);
    const timeoutMs = this.spec.config.timeoutMs;
    const exchange = new ContainerExchange(req, res, resolve, reject);
    // A container that died just now refused the connection: nothing was sent, so a request
    // without a body goes again to its replacement.
    if (mayRetry && req.body === null) {
      exchange.retry = () => {
        this.#ready().then(
          (next) => this.#exchange(next, req, res, meta, resolve, reject, false),
          (err: Error) => reject(err),
        );
      };
    }
    const timer = setTimeout(() => {
      exchange.fail(new TideError('ERR_SANDBOX_TIMEOUT', `the function did not answer within ${timeoutMs} ms`, { status: 504 }));
      // A container that no longer answers at all (a loop) is replaced.
      setTimeout(() => {
        void this.healthy().then((ok) => {
          if (!ok && this.#container === c && !this.#closed) {
            this.#emit('timeout', `the container stopped answering after a request ran past ${timeoutMs} ms; replaced`);
            process.kill(c.pid, 'SIGKILL');
          }
        });
      }, this.#driver.opts.killGraceMs).unref();
    }, timeoutMs);
    exchange.onDone = () => {
      clearTimeout(timer);
      this.#exchanges.delete(exchange);
    };
    this.#exchanges.add(exchange);
    res.onClose(() => exchange.cancel());
    const body = req.body === null ? null : Readable.from(iterate(req.body), { objectMode: false });
    c.pool.dispatch({ method: req.method, path: `${url.pathname}${url.search}`, headers, body, contentLength: -1 }, exchange);
  }

  /** Stops taking requests, lets in-flight ones finish (up to drainMs), then stops the container. */
  async close(drainMs: number): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#watch);
    const deadline = Date.now() + drainMs;
    while (this.#inflight > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    await this.#replacing;
    await this.#container?.remove(Math.max(100, deadline - Date.now()));
  }

  async destroy(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#watch);
    await this.#replacing;
    await this.#container?.remove(0);
  }
}

/** The unpacked root filesystem of an image: from the cache when its layers are there already. */
async function rootfsOf(image: ImageRef): Promise<string> {
  if (image.kind === 'rootfs') return image.source;
  const cached = join(IMAGE_CACHE, image.chain.replace(/^sha256:/, ''));
  if (image.chain !== '' && (await stat(join(cached, 'complete')).catch(() => undefined))) return join(cached, 'rootfs');
  const info = await readImage(image.source);
  try {
    if (info.digest !== image.digest) {
      throw new TideError('ERR_IMAGE_INVALID', `image ${image.source} changed since it was deployed (${info.digest}, deployed ${image.digest})`, {
        status: 422,
      });
    }
    return await imageRootfs(info);
  } finally {
    if (info.temp) await rm(info.temp, { recursive: true, force: true });
  }
}

/**
 * `file` itself when the container's root (an unprivileged uid on the host) can reach it
 * through every folder on its path, else a copy at `copy` (made once, kept while unchanged).
 */
async function reachable(file: string, copy: string, always = false): Promise<string> {
  let ok = !always;
  for (let d = dirname(file); ok; d = dirname(d)) {
    ok = ((await stat(d)).mode & 0o001) !== 0;
    if (d === dirname(d)) break;
  }
  if (ok && ((await stat(file)).mode & 0o004) !== 0) return file;
  const [src, dst] = await Promise.all([stat(file), stat(copy).catch(() => undefined)]);
  if (!dst || dst.size !== src.size || dst.mtimeMs < src.mtimeMs) {
    await mkdir(dirname(copy), { recursive: true, mode: 0o711 });
    await copyFile(file, `${copy}.tmp`);
    await chmod(`${copy}.tmp`, 0o555);
    await rename(`${copy}.tmp`, copy);
  }
  await access(copy, constants.R_OK);
  return copy;
}

/** The merged-/usr symlinks a Debian root has (bin → usr/bin, lib → usr/lib, sbin → usr/sbin). */
async function symlinks(rootfs: string): Promise<void> {
  for (const [name, target] of [
    ['bin', 'usr/bin'],
    ['lib', 'usr/lib'],
    ['sbin', 'usr/sbin'],
  ] as const) {
    const exists = await lstat(join(rootfs, name)).then(
      () => true,
      () => false,
    );
    if (!exists) await symlink(target, join(rootfs, name));
  }
}

async function* iterate(it: AsyncIterator<Buffer>): AsyncGenerator<Buffer> {
  for (;;) {
    const { value, done } = await it.next();
    if (done) return;
    yield value;
  }
}

/** One request's answer from a container, in the pool's handler terms, written to the sandbox response. */
class ContainerExchange implements PoolHandler {
  readonly #req: SandboxRequest;
  readonly #res: SandboxResponse;
  readonly #resolve: () => void;
  readonly #reject: (e: Error) => void;
  #controller: PoolController | undefined;
  #settled = false;
  /** A function error: its body is the message. */
  #error: { code: string; status: number; text: string } | undefined;
  onDone: () => void = () => {};
  /** Set when the request may go again (to a replacement container) after a refused connection. */
  retry: (() => void) | undefined;

  constructor(req: SandboxRequest, res: SandboxResponse, resolve: () => void, reject: (e: Error) => void) {
    this.#req = req;
    this.#res = res;
    this.#resolve = resolve;
    this.#reject = reject;
  }

  onRequestStart(controller: PoolController): void {
    this.#controller = controller;
    if (this.#settled) controller.abort(new Error('cancelled'));
  }

  onResponseStart(controller: PoolController, status: number): void {
    if (this.#settled) return;
    // The pool hands over the raw header list (it parses only what framing needs).
    const raw = controller.rawHeaders ?? [];
    const flat: string[] = [];
    for (let i = 0; i + 1 < raw.length; i += 2) {
      const name = raw[i] as string;
      const lower = name.toLowerCase();
      if (lower === 'tide-function-error') {
        this.#error = { code: raw[i + 1] as string, status, text: '' };
        return;
      }
      if (HOP_BY_HOP.has(lower) || CTL.test(raw[i + 1] as string)) continue;
      flat.push(name, raw[i + 1] as string);
    }
    try {
      this.#res.writeHead(status, flat);
    } catch (err) {
      controller.abort(err as Error);
      this.fail(new TideError('ERR_FUNCTION_BAD_RESPONSE', `the function's response cannot be sent: ${(err as Error).message}`, { status: 502 }));
    }
  }

  onResponseData(controller: PoolController, chunk: Buffer): void {
    if (this.#settled) return;
    if (this.#error) {
      this.#error.text += chunk.toString('utf8');
      return;
    }
    if (!this.#res.write(chunk)) {
      controller.pause();
      this.#res.onDrain(() => controller.resume());
    }
  }

  onResponseEnd(): void {
    if (this.#settled) return;
    const e = this.#error;
    if (e) {
      const code = e.code === 'ERR_FUNCTION_THREW' || e.code === 'ERR_FUNCTION_BAD_RESPONSE' ? e.code : 'ERR_INTERNAL';
      this.fail(new TideError(code, e.text.trim(), { status: e.status }));
      return;
    }
    this.#settled = true;
    this.#res.end();
    this.onDone();
    this.#resolve();
  }

  onResponseError(_controller: PoolController, err: Error): void {
    if (this.retry && !this.#settled && isTideError(err, 'ERR_PROXY_CONNECT')) {
      const again = this.retry;
      this.retry = undefined;
      this.#settled = true;
      this.onDone();
      again();
      return;
    }
    this.fail(
      err instanceof TideError && err.code.startsWith('ERR_SANDBOX')
        ? err
        : new TideError('ERR_SANDBOX_INSTANCE_REPLACED', `the function's container failed: ${err.message}`, { status: 502, cause: err }),
    );
  }

  /** Ends the exchange with `err`: rejected before the head went out, the response cut after. */
  fail(err: TideError): void {
    if (this.#settled) return;
    this.#settled = true;
    this.#controller?.abort(err);
    this.onDone();
    if (this.#res.headersSent) {
      this.#res.destroy(err);
      this.#resolve();
    } else {
      this.#req.discard();
      this.#reject(err);
    }
  }

  /** The client went away. */
  cancel(): void {
    if (this.#settled) return;
    this.#settled = true;
    this.#controller?.abort(new Error('the client went away'));
    this.onDone();
    this.#resolve();
  }
}
