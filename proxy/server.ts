/**
 * `tide proxy -c proxy.yaml`: the proxy on its own, run from a static config file. The file is
 * read, checked against the schema, compiled and only then swapped in; it is watched (and
 * re-read on SIGHUP), and each change is applied the same all-or-nothing way: a file with any
 * problem keeps the running config and logs every problem as file:line:column. New listeners
 * are bound before the swap, so a port that is taken also rejects the whole reload.
 *
 * The admin listener (optional) serves /metrics (Prometheus text), /ready, and /config (the
 * running version, when it was applied, and the last rejected reload's problems).
 */
import { createHash } from 'node:crypto';
import { type FSWatcher, readFileSync, watch } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { basename, dirname, resolve } from 'node:path';
import { type ProxyConfig, ProxyConfigSchema } from '../lib/config/proxy.ts';
import { failAt, parseYaml, validateDocument } from '../lib/config/yaml.ts';
import { parseDuration } from '../lib/duration.ts';
import { TideError } from '../lib/errors.ts';
import type { Logger } from '../lib/log.ts';
import { listen } from '../lib/net.ts';
import type { Tracer } from '../lib/trace/tracer.ts';
import { compileSnapshot, type Problem, type ProxySnapshot } from './config/compile.ts';
import { Listener } from './listener/listener.ts';
import { ProxyMetrics } from './metrics.ts';
import { Overload, type OverloadSettings } from './overload.ts';
import { DataPlane } from './proxy.ts';

export interface ProxyServerOptions {
  file: string;
  log: Logger;
  access?: Logger | undefined;
  /** Watch the file and reload on change (default true). */
  watch?: boolean;
  /** Where reload results go as plain text (default: the logger). */
  report?: ((line: string) => void) | undefined;
  /** Traces requests (a server span per request, exported by the tracer) when set. */
  tracer?: Tracer | undefined;
}

/** Reads, validates and compiles a config file; throws ERR_CONFIG_INVALID with positions. */
export function loadConfig(file: string, version: number, metrics: ProxyMetrics, previous?: ProxySnapshot): ProxySnapshot {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new TideError('ERR_CONFIG_INVALID', `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? err}`, { cause: err });
  }
  const docs = parseYaml(text, file);
  if (docs.length !== 1)
    throw new TideError('ERR_CONFIG_INVALID', `${file}: expected one YAML document with listeners, virtualHosts and clusters (found ${docs.length})`);
  const doc = docs[0] as (typeof docs)[number];
  const config = validateDocument<ProxyConfig>(doc, ProxyConfigSchema);
  try {
    return compileSnapshot(config, version, metrics, previous);
  } catch (err) {
    const problems = err instanceof TideError ? (err.details?.problems as Problem[] | undefined) : undefined;
    if (problems) failAt(doc, problems);
    throw err;
  }
}

/** The config's overload section as the policy takes it (durations in ms and s). */
function overloadSettings(o: ProxyConfig['overload']): OverloadSettings {
  return {
    maxHeapMb: o.maxHeapMb,
    maxEventLoopDelayMs: parseDuration(o.maxEventLoopDelay, 'overload.maxEventLoopDelay', { allowZero: true }),
    maxConnections: o.maxConnections,
    retryAfterS: Math.max(1, Math.ceil(parseDuration(o.retryAfter, 'overload.retryAfter') / 1000)),
  };
}

export class ProxyServer {
  readonly #opts: ProxyServerOptions;
  readonly metrics = new ProxyMetrics();
  readonly proxy: DataPlane;
  readonly #overload = new Overload();
  readonly #listeners = new Map<string, Listener>();
  #admin: Server | undefined;
  #watcher: FSWatcher | undefined;
  #hash = '';
  #version = 0;
  #appliedAt = '';
  #lastError: string | undefined;
  #reloading: Promise<void> = Promise.resolve();
  #debounce: NodeJS.Timeout | undefined;
  #closed = false;
  #force = false;

  constructor(opts: ProxyServerOptions) {
    this.#opts = opts;
    this.proxy = new DataPlane({ metrics: this.metrics, log: opts.log, access: opts.access, tracer: opts.tracer });
    this.proxy.overload = this.#overload;
    this.metrics.overload = this.#overload;
  }

  get version(): number {
    return this.#version;
  }

  /** Bound addresses by listener name (and "admin"). */
  addresses(): Record<string, AddressInfo> {
    const out: Record<string, AddressInfo> = {};
    for (const [name, l] of this.#listeners) out[name] = l.address();
    if (this.#admin) out.admin = this.#admin.address() as AddressInfo;
    return out;
  }

  /** Loads the file and starts listening; throws (and starts nothing) if the file is bad. */
  async start(): Promise<void> {
    const file = resolve(this.#opts.file);
    const text = readFileSync(file, 'utf8');
    const snapshot = loadConfig(file, 1, this.metrics);
    await this.#swap(snapshot);
    this.#hash = hashOf(text);
    const admin = snapshot.config.admin;
    if (admin) {
      this.#admin = createServer((req, res) => this.#serveAdmin(req.url ?? '/', res));
      await listen(this.#admin, admin.port, admin.address);
    }
    if (this.#opts.watch !== false) {
      // Watch the directory: editors and config tools replace files by renaming over them.
      this.#watcher = watch(dirname(file), (_event, name) => {
        if (name === null || name === basename(file)) this.scheduleReload();
      });
      this.#watcher.on('error', () => {});
    }
  }

  /** Reloads soon (changes come in bursts). `force`: even if the file is unchanged (SIGHUP). */
  scheduleReload(force = false): void {
    if (this.#closed) return;
    this.#force ||= force;
    if (this.#debounce) clearTimeout(this.#debounce);
    this.#debounce = setTimeout(() => {
      const forced = this.#force;
      this.#force = false;
      this.#reloading = this.#reloading.then(async () => {
        await this.reload({ force: forced });
      });
    }, 100);
  }

  /** Re-reads the file; applies it whole or not at all. Resolves either way (problems are logged). */
  async reload(options: { force?: boolean } = {}): Promise<{ applied: boolean; error?: string }> {
    if (this.#closed) return { applied: false };
    const file = resolve(this.#opts.file);
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      return this.#reject(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? err}`);
    }
    const hash = hashOf(text);
    // An unchanged file is skipped unless forced (SIGHUP): certificate files it names may have been renewed.
    if (hash === this.#hash && !options.force) return { applied: false };
    let snapshot: ProxySnapshot;
    try {
      snapshot = loadConfig(file, this.#version + 1, this.metrics, this.proxy.snapshot);
    } catch (err) {
      return this.#reject(err instanceof Error ? err.message : String(err));
    }
    try {
      await this.#swap(snapshot);
    } catch (err) {
      // New clusters built for the rejected snapshot are not used by anyone: close them.
      const running = new Set(this.proxy.snapshot?.clusters.values() ?? []);
      for (const c of snapshot.clusters.values()) if (!running.has(c)) void c.destroy();
      return this.#reject(err instanceof Error ? err.message : String(err));
    }
    this.#hash = hash;
    this.metrics.reload('applied');
    this.#lastError = undefined;
    if (this.#opts.report) this.#opts.report(`config version ${snapshot.version} applied from ${file}`);
    else this.#opts.log.info({ version: snapshot.version, file }, 'config applied');
    return { applied: true };
  }

  #reject(message: string): { applied: boolean; error: string } {
    this.metrics.reload('rejected');
    this.#lastError = message;
    const line = `config rejected, still running version ${this.#version}:\n${message}`;
    if (this.#opts.report) this.#opts.report(line);
    else this.#opts.log.error(line);
    return { applied: false, error: message };
  }

  /**
   * Binds new listeners first (failing the swap if one cannot bind), then swaps the snapshot.
   * A listener moving to another address is bound before the old one closes; one rebinding the
   * same address (a TLS or HTTP/2 change) must close first, and is reopened as it was if the
   * new one cannot bind.
   */
  async #swap(snapshot: ProxySnapshot): Promise<void> {
    const started: Listener[] = [];
    const keep = new Map<string, Listener>();
    const closedFirst: Listener[] = [];
    try {
      for (const l of snapshot.listeners) {
        const old = this.#listeners.get(l.config.name);
        if (old?.sameBinding(l)) {
          keep.set(l.config.name, old);
          continue;
        }
        const fresh = new Listener(l, this.proxy, this.metrics);
        if (old?.sameAddress(l)) {
          await old.close(0);
          closedFirst.push(old);
        }
        await fresh.listen();
        started.push(fresh);
        if (this.#closed) throw new TideError('ERR_INVALID_ARGUMENT', 'the proxy is shutting down');
      }
    } catch (err) {
      await Promise.all(started.map((l) => l.close(0)));
      for (const old of closedFirst) {
        const again = new Listener(old.compiled, this.proxy, this.metrics);
        await again.listen().then(
          () => this.#listeners.set(old.name, again),
          (e: unknown) => this.#opts.log.error({ err: e, listener: old.name }, 'could not reopen a listener after a failed reload'),
        );
      }
      throw err;
    }
    this.proxy.apply(snapshot);
    this.#overload.update(overloadSettings(snapshot.config.overload));
    for (const l of snapshot.listeners) keep.get(l.config.name)?.update(l);
    const next = new Map<string, Listener>([...keep, ...started.map((l) => [l.name, l] as const)]);
    for (const [name, l] of this.#listeners) if (next.get(name) !== l && !closedFirst.includes(l)) void l.close();
    this.#listeners.clear();
    for (const [name, l] of next) this.#listeners.set(name, l);
    this.#version = snapshot.version;
    this.#appliedAt = new Date().toISOString();
  }

  #serveAdmin(url: string, res: import('node:http').ServerResponse): void {
    const path = url.split('?')[0];
    if (path === '/metrics') {
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' });
      res.end(this.metrics.render());
    } else if (path === '/ready') {
      res.writeHead(this.#closed ? 503 : 200, { 'content-type': 'text/plain' });
      res.end(this.#closed ? 'draining\n' : 'ready\n');
    } else if (path === '/config') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(
        `${JSON.stringify({ version: this.#version, appliedAt: this.#appliedAt, file: resolve(this.#opts.file), lastError: this.#lastError ?? null })}\n`,
      );
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found: try /metrics, /ready or /config\n');
    }
  }

  /** Stops accepting, drains requests in flight (up to `drainMs`), then closes everything. */
  async close(drainMs = 10_000): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#debounce) clearTimeout(this.#debounce);
    this.#watcher?.close();
    // A reload in progress finishes (or backs out) before the listeners are closed.
    await this.#reloading.catch(() => {});
    await Promise.all([...this.#listeners.values()].map((l) => l.close(drainMs)));
    await this.proxy.close();
    await this.#overload.close();
    if (this.#admin) {
      this.#admin.closeAllConnections();
      await new Promise<void>((r) => this.#admin?.close(() => r()));
    }
  }
}

function hashOf(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}
