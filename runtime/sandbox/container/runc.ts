/**
 * runc, the OCI reference runtime, driven through its command line. Tide keeps its containers
 * under a root of its own (`--root`), so everything listed there is Tide's: that is how
 * orphans of an earlier run are found.
 */
import { execFile, spawn } from 'node:child_process';
import { access, constants } from 'node:fs/promises';
import { TideError } from '../../../lib/errors.ts';

export interface ContainerState {
  id: string;
  pid: number;
  status: 'creating' | 'created' | 'running' | 'paused' | 'stopped';
  bundle: string;
}

const CANDIDATES = ['/usr/sbin/runc', '/usr/bin/runc', '/usr/local/sbin/runc', '/usr/local/bin/runc'];

/** The runc binary, or a clear error saying how to get it. */
export async function findRunc(): Promise<string> {
  for (const path of CANDIDATES) {
    if (
      await access(path, constants.X_OK).then(
        () => true,
        () => false,
      )
    )
      return path;
  }
  throw new TideError('ERR_SANDBOX_UNAVAILABLE', 'the container sandbox needs runc, which is not installed', {
    hint: 'install it with `apt-get install runc` (Debian/Ubuntu), or deploy with the worker sandbox',
  });
}

export class Runc {
  readonly bin: string;
  readonly root: string;

  constructor(bin: string, root: string) {
    this.bin = bin;
    this.root = root;
  }

  /** Runs `runc --root ROOT ARGS…`; rejects with runc's own message on failure. */
  exec(args: string[], timeoutMs = 15_000): Promise<string> {
    return new Promise((resolve, reject) => {
      execFile(this.bin, ['--root', this.root, ...args], { timeout: timeoutMs, maxBuffer: 4 * 1024 * 1024 }, (err, stdout, stderr) => {
        if (err) {
          const message = (stderr || err.message).trim().split('\n').slice(-3).join(' ');
          reject(new TideError('ERR_SANDBOX_START', `runc ${args[0]} failed: ${message}`, { status: 502, cause: err }));
          return;
        }
        resolve(stdout);
      });
    });
  }

  /**
   * Creates a container from `bundle` (its config.json and rootfs). The container's standard
   * output and error are the two file descriptors given (runc passes its own through).
   */
  create(id: string, bundle: string, pidFile: string, stdout: number, stderr: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const child = spawn(this.bin, ['--root', this.root, 'create', '--bundle', bundle, '--pid-file', pidFile, id], {
        stdio: ['ignore', stdout, stderr],
      });
      const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
      child.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      child.once('exit', (code, signal) => {
        clearTimeout(timer);
        if (code === 0) resolve();
        else reject(new TideError('ERR_SANDBOX_START', `runc create ${id} failed (${signal ?? `exit ${code}`}); see the instance's log`, { status: 502 }));
      });
    });
  }

  async start(id: string): Promise<void> {
    await this.exec(['start', id]);
  }

  async kill(id: string, signal: 'TERM' | 'KILL'): Promise<void> {
    await this.exec(['kill', id, signal]).catch(() => {});
  }

  async delete(id: string): Promise<void> {
    await this.exec(['delete', '--force', id]).catch(() => {});
  }

  async state(id: string): Promise<ContainerState | undefined> {
    try {
      return JSON.parse(await this.exec(['state', id])) as ContainerState;
    } catch {
      return undefined;
    }
  }

  async list(): Promise<ContainerState[]> {
    try {
      const out = await this.exec(['list', '--format', 'json']);
      return (JSON.parse(out || 'null') as ContainerState[] | null) ?? [];
    } catch {
      return [];
    }
  }
}
