/**
 * The SandboxDriver seam: `worker` (threads, this package) and `container` (runc) implement it.
 * The node agent starts and stops Instances; the proxy sends requests to them through
 * `dispatch`. Everything above this file is sandbox-agnostic.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { FunctionConfig } from '../../control/api/schema/function.ts';

export interface InstanceSpec {
  /** Unique per instance on this node, e.g. hello-00001-a3f9. */
  id: string;
  function: string;
  revision: string;
  namespace: string;
  /** Absolute path of the bundled ES module. */
  bundlePath: string;
  /** Env and secrets, as the function's `env` argument sees them. */
  env: Record<string, string>;
  config: FunctionConfig;
}

export interface DispatchMeta {
  requestId: string;
  /** Scheme the client used, for the URL the function sees. */
  scheme: 'http' | 'https';
}

/** Something that happened to an instance that the agent should record and report. */
export interface InstanceEvent {
  instance: string;
  revision: string;
  function: string;
  type: 'replaced';
  reason: 'timeout' | 'out-of-memory' | 'crashed';
  message: string;
}

export interface Instance {
  readonly spec: InstanceSpec;
  /** Requests in flight on this instance now. */
  readonly inflight: number;
  /**
   * Serves one request: reads `req`, writes `res`. Resolves when the response is complete.
   * Rejects with a TideError, without having written anything, when it could not answer
   * (the proxy's rescue turns that into a status); once headers are out, errors end the
   * connection instead.
   */
  dispatch(req: IncomingMessage, res: ServerResponse, meta: DispatchMeta): Promise<void>;
}

export interface SandboxDriver {
  readonly kind: 'worker' | 'container';
  /** Starts an instance and resolves once it has loaded the function and can serve. */
  start(spec: InstanceSpec, signal?: AbortSignal): Promise<Instance>;
  /** Stops it: with `drain`, after in-flight requests finish (bounded by `drainMs`). */
  stop(instance: Instance, options?: { drain?: boolean; drainMs?: number }): Promise<void>;
  /** True when the instance answers a health check. */
  probe(instance: Instance): Promise<boolean>;
}
