/**
 * The peers of the `proxy` benchmark and their tools: finds wrk, nginx and haproxy (installing
 * the Debian packages when one is missing and we are root), writes each proxy's config into a
 * temp dir, and reads their versions. Every config points at the one loopback upstream.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { accessSync, constants, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export const TOOLS = ['wrk', 'nginx', 'haproxy'] as const;
export type Tool = (typeof TOOLS)[number];
const DEBIAN_PACKAGE: Record<Tool, string> = { wrk: 'wrk', nginx: 'nginx-light', haproxy: 'haproxy' };
const SBIN = ['/usr/local/sbin', '/usr/sbin', '/sbin'];

function isExecutable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

/** A binary on PATH, or in the sbin dirs that a non-root PATH often lacks. */
export function findBinary(name: string): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(':').filter(Boolean), ...SBIN];
  return dirs.map((d) => join(d, name)).find(isExecutable);
}

function aptInstall(packages: string[]): void {
  const opts = { stdio: ['ignore', 2, 2] as ['ignore', number, number], env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } };
  const install = () => execFileSync('apt-get', ['install', '-y', '--no-install-recommends', ...packages], opts);
  process.stderr.write(`installing ${packages.join(' ')} (apt-get)…\n`);
  try {
    install();
  } catch {
    execFileSync('apt-get', ['update'], opts);
    install();
  }
}

/** Paths of wrk, nginx and haproxy; installs the missing ones with apt-get when root, else throws naming the packages. */
export function ensureTools(): Record<Tool, string> {
  const missing = TOOLS.filter((t) => !findBinary(t));
  if (missing.length > 0) {
    const packages = missing.map((t) => DEBIAN_PACKAGE[t]);
    const how = `apt-get install -y ${packages.join(' ')}`;
    if (process.getuid?.() !== 0) throw new Error(`missing ${missing.join(', ')}: install the Debian package(s) as root (${how}) and run again`);
    if (!findBinary('apt-get')) throw new Error(`missing ${missing.join(', ')} and no apt-get: install ${packages.join(', ')} (Debian names) and run again`);
    aptInstall(packages);
  }
  const paths = Object.fromEntries(TOOLS.map((t) => [t, findBinary(t)]));
  const still = TOOLS.filter((t) => !paths[t]);
  if (still.length > 0) throw new Error(`still missing ${still.join(', ')} after apt-get install`);
  return paths as Record<Tool, string>;
}

function versionOf(bin: string, args: string[], re: RegExp): string {
  const r = spawnSync(bin, args, { encoding: 'utf8' });
  return re.exec(`${r.stdout ?? ''}${r.stderr ?? ''}`)?.[1] ?? 'unknown';
}

export function toolVersions(tools: Record<Tool, string>): Record<Tool, string> {
  return {
    nginx: versionOf(tools.nginx, ['-v'], /nginx\/(\S+)/),
    haproxy: versionOf(tools.haproxy, ['-v'], /version (\S+)/),
    wrk: versionOf(tools.wrk, ['-v'], /^wrk (\S+)/m),
  };
}

export interface ProxyPorts {
  port: number;
  upstreamPort: number;
}

/** nginx in one process (master_process off, so the PID is the one doing the work); every path under `dir`. */
export function writeNginxConf(dir: string, { port, upstreamPort }: ProxyPorts, connections: number): string {
  const file = join(dir, 'nginx.conf');
  const temp = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((t) => `  ${t}_temp_path ${join(dir, t)};`).join('\n');
  writeFileSync(
    file,
    `daemon off;
master_process off;
worker_processes 1;
pid ${join(dir, 'nginx.pid')};
error_log ${join(dir, 'error.log')} warn;
events { worker_connections ${Math.max(1024, connections * 2 + 128)}; }
http {
  access_log off;
${temp}
  upstream hello {
    server 127.0.0.1:${upstreamPort};
    keepalive 64;
  }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://hello;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
`,
  );
  return file;
}

/** haproxy with one thread, HTTP mode, keep-alive both sides and server connections reused; no logging. */
export function writeHaproxyCfg(dir: string, { port, upstreamPort }: ProxyPorts, connections: number): string {
  const file = join(dir, 'haproxy.cfg');
  writeFileSync(
    file,
    `global
  nbthread 1
  maxconn ${Math.max(4096, connections * 4)}

defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 60s
  timeout server 60s

frontend main
  bind 127.0.0.1:${port}
  default_backend hello

backend hello
  server hello 127.0.0.1:${upstreamPort}
`,
  );
  return file;
}

/** `tide proxy` config: one listener, a catch-all route to the one-endpoint cluster, 2 retry attempts. */
export function writeTideProxyYaml(dir: string, { port, upstreamPort }: ProxyPorts, adminPort: number): string {
  const file = join(dir, 'tide-proxy.yaml');
  writeFileSync(
    file,
    `listeners:
  - name: main
    address: 127.0.0.1
    port: ${port}
admin:
  address: 127.0.0.1
  port: ${adminPort}
virtualHosts:
  - name: hello
    domains: ['*']
    routes:
      - name: all
        match: { path: { prefix: / } }
        backends: [{ cluster: hello }]
        retries: { attempts: 2 }
clusters:
  - name: hello
    endpoints: ['127.0.0.1:${upstreamPort}']
`,
  );
  return file;
}
