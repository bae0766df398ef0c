/**
 * Process config of `tide up`: UpOptions (what a caller may give) → UpConfig (every field
 * filled) with UP_DEFAULTS as the one place the defaults live. examples/up.defaults.json lists
 * the same fields; a test checks the three agree.
 */
import { TideError } from '../errors.ts';

export interface UpConfig {
  /** State, bundles, logs, token. Default "./.tide". */
  dataDir: string;
  /** Address the gateway and API listen on. Default 127.0.0.1. */
  host: string;
  /** Gateway port; 0 picks a free one. Default 8080. */
  port: number;
  /** Control API port; 0 picks a free one. Default 8081. */
  apiPort: number;
  /** Functions answer at NAME.<domain>. Default "localhost". */
  domain: string;
  /** Where access-log lines go: a file path, "-" for stdout, or "off". Default "<dataDir>/access.log". */
  accessLog: string;
  /** How long shutdown waits for in-flight requests, ms. Default 30000. */
  drainMs: number;
  /** Files or folders of functions to deploy once up (name = file name). Default none. */
  deploy: string[];
  /** Log level of Tide's own log (stderr). Default "info". */
  logLevel: 'debug' | 'info' | 'warn' | 'error' | 'silent';
  /** Worker threads kept started for cold starts (each about 10 MiB of memory). Default 2; 0..64. */
  warmThreads: number;
  /** Containers kept started (with no function yet) for cold starts, once the container sandbox was used. Default 1; 0..16. */
  warmContainers: number;
  /** This node's name for the scheduler. Default "" = the host name. */
  nodeName: string;
  /** Memory the scheduler may place on this node, MiB. Default 0 = all of the machine's. */
  nodeMemoryMb: number;
  /** CPU the scheduler may place on this node, millicores. Default 0 = 1000 per core. */
  nodeCpuMillis: number;
  /** Labels for nodeSelector. Default none. */
  nodeLabels: Record<string, string>;
  /** Taints (NoSchedule): only functions that tolerate them run here. "key" or "key=value". Default none. */
  nodeTaints: string[];
  /** Port of the mesh listener (mutual TLS between proxies; functions call each other through it); 0 picks a free one. Default 8082. */
  meshPort: number;
  /** SPIFFE trust domain of every workload identity. Default "tide.local". */
  trustDomain: string;
  /** Lifetime of workload certificates, ms (rotated at half life). Default 86400000 (24 h); 2000 to one year. */
  certTtlMs: number;
  /** Your own CA instead of Tide's: PEM certificate (then its chain to the root) and key (ECDSA P-256). Default "" (Tide makes one). */
  caCert: string;
  caKey: string;
  /** Serve the control API over TLS with a certificate from the CA (the CLI verifies it). Default true. */
  apiTls: boolean;
  /** Trace requests at all (spans, the store of recent traces, OTLP export). Default true. */
  tracing: boolean;
  /**
   * Share of new traces sampled (recorded, stored and exported), 0..1; callers' sampled flags
   * are followed. Default -1: OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG when set, else 1.
   */
  traceSample: number;
  /** Keep traces of failed requests (5xx) in the store even when not sampled. Default true. */
  traceErrors: boolean;
  /** Keep traces of requests that took at least this long even when not sampled, ms; 0 = no. Default 1000. */
  traceSlowMs: number;
}

export type UpOptions = Partial<UpConfig>;

export const UP_DEFAULTS: Readonly<UpConfig> = Object.freeze({
  dataDir: './.tide',
  host: '127.0.0.1',
  port: 8080,
  apiPort: 8081,
  domain: 'localhost',
  accessLog: '',
  drainMs: 30_000,
  deploy: [],
  logLevel: 'info',
  warmThreads: 2,
  warmContainers: 1,
  nodeName: '',
  nodeMemoryMb: 0,
  nodeCpuMillis: 0,
  nodeLabels: {},
  nodeTaints: [],
  meshPort: 8082,
  trustDomain: 'tide.local',
  certTtlMs: 24 * 3600_000,
  caCert: '',
  caKey: '',
  apiTls: true,
  tracing: true,
  traceSample: -1,
  traceErrors: true,
  traceSlowMs: 1000,
});

const LEVELS = ['debug', 'info', 'warn', 'error', 'silent'];

export function resolveUpConfig(options: UpOptions = {}): UpConfig {
  const c: UpConfig = { ...UP_DEFAULTS, ...stripUndefined(options) };
  const port = (name: string, v: number) => {
    if (!Number.isInteger(v) || v < 0 || v > 65535) throw new TideError('ERR_INVALID_ARGUMENT', `${name} must be an integer from 0 to 65535 (got ${v})`);
  };
  port('port', c.port);
  port('apiPort', c.apiPort);
  port('meshPort', c.meshPort);
  const ports = [c.port, c.apiPort, c.meshPort].filter((p) => p !== 0);
  if (new Set(ports).size !== ports.length)
    throw new TideError('ERR_INVALID_ARGUMENT', `port, apiPort and meshPort must differ (got ${c.port}, ${c.apiPort}, ${c.meshPort})`);
  if (!/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(c.trustDomain))
    throw new TideError('ERR_INVALID_ARGUMENT', `trustDomain must be lowercase letters, digits, '-' and '.' (got "${c.trustDomain}")`);
  if (!Number.isInteger(c.certTtlMs) || c.certTtlMs < 2000 || c.certTtlMs > 365 * 24 * 3600_000)
    throw new TideError('ERR_INVALID_ARGUMENT', `certTtl must be from 2s to 8760h (one year; got ${c.certTtlMs} ms)`);
  if (Boolean(c.caCert) !== Boolean(c.caKey))
    throw new TideError('ERR_INVALID_ARGUMENT', 'a CA of your own needs both caCert and caKey (--ca-cert and --ca-key)');
  if (!/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/i.test(c.domain))
    throw new TideError('ERR_INVALID_ARGUMENT', `domain must be a DNS name like "localhost" or "fn.example.test" (got "${c.domain}")`);
  if (!Number.isInteger(c.drainMs) || c.drainMs < 0) throw new TideError('ERR_INVALID_ARGUMENT', `drainMs must be an integer ≥ 0 (got ${c.drainMs})`);
  if (!LEVELS.includes(c.logLevel)) throw new TideError('ERR_INVALID_ARGUMENT', `logLevel must be one of ${LEVELS.join(', ')} (got ${c.logLevel})`);
  if (!Number.isInteger(c.warmContainers) || c.warmContainers < 0 || c.warmContainers > 16)
    throw new TideError('ERR_INVALID_ARGUMENT', `warmContainers must be an integer from 0 to 16 (got ${c.warmContainers})`);
  if (!Number.isInteger(c.warmThreads) || c.warmThreads < 0 || c.warmThreads > 64)
    throw new TideError('ERR_INVALID_ARGUMENT', `warmThreads must be an integer from 0 to 64 (got ${c.warmThreads})`);
  for (const [name, v] of [
    ['nodeMemoryMb', c.nodeMemoryMb],
    ['nodeCpuMillis', c.nodeCpuMillis],
  ] as const) {
    if (!Number.isInteger(v) || v < 0) throw new TideError('ERR_INVALID_ARGUMENT', `${name} must be an integer ≥ 0 (0 = what the machine has; got ${v})`);
  }
  if (c.nodeName !== '' && !/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(c.nodeName))
    throw new TideError('ERR_INVALID_ARGUMENT', `nodeName must be lowercase letters, digits, '-' and '.' (got "${c.nodeName}")`);
  if (c.traceSample !== -1 && !(c.traceSample >= 0 && c.traceSample <= 1))
    throw new TideError('ERR_INVALID_ARGUMENT', `traceSample must be from 0 to 1 (got ${c.traceSample})`);
  if (!Number.isInteger(c.traceSlowMs) || c.traceSlowMs < 0)
    throw new TideError('ERR_INVALID_ARGUMENT', `traceSlowMs must be an integer ≥ 0 (got ${c.traceSlowMs})`);
  if (!c.dataDir) throw new TideError('ERR_INVALID_ARGUMENT', 'dataDir must not be empty');
  return c;
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
