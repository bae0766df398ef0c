/**
 * The SandboxDriver seam: `worker` (threads, this package) and `container` (runc) implement it.
 * The node agent starts and stops Instances; the proxy sends requests to them through
 * `dispatch`. Everything above this file is sandbox-agnostic.
 */
import type { FunctionConfig, ImageRef } from '../../control/api/schema/function.ts';

export interface InstanceSpec {
  /** Unique per instance on this node, e.g. hello-00001-a3f9. */
  id: string;
  function: string;
  revision: string;
  namespace: string;
  /** Absolute path of the bundled ES module. */
  bundlePath: string;
  /** Set when the instance runs a container image instead of a bundle. */
  image?: ImageRef;
  /** Env and secrets, as the function's `env` argument sees them. */
  env: Record<string, string>;
  config: FunctionConfig;
  /** The function's way out to the mesh: a Unix socket its `fetch` to NAME.NAMESPACE.svc.tide goes to. */
  meshSocket?: string | undefined;
}

/**
 * A request as a sandbox sees it, whatever listener it came from (the proxy's own HTTP/1.1 and
 * HTTP/2 listeners, or node:http). `sandbox/http.ts` adapts node:http's pair.
 */
export interface SandboxRequest {
  method: string;
  /** The absolute URL the function sees (scheme, the Host the client used, path and query). */
  url: string;
  /** Flat `[name, value, …]`, hop-by-hop headers removed. */
  headers: string[];
  /** The body, read on demand; null when there is none. */
  body: AsyncIterator<Buffer> | null;
  /** True once the whole body has arrived. */
  readonly complete: boolean;
  /** Reads and drops the rest of the body (the function did not want it). */
  discard(): void;
}

/** Where a sandbox writes its answer. */
export interface SandboxResponse {
  readonly headersSent: boolean;
  /** True once the response was ended (or destroyed). */
  readonly finished: boolean;
  /**
   * Sends status and headers (flat). Throws, writing nothing, when a header is not valid HTTP
   * (a name that is not a token, a value with a control character).
   */
  writeHead(status: number, headers: string[]): void;
  /** false: wait for `onDrain`. */
  write(chunk: Uint8Array): boolean;
  onDrain(cb: () => void): void;
  end(chunk?: Uint8Array): void;
  /** Cuts the response off (reset or closed connection). */
  destroy(err?: Error): void;
  /** Called once if the client goes away before the response is finished. */
  onClose(cb: () => void): void;
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
  reason: 'timeout' | 'out-of-memory' | 'crashed' | 'probe';
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
  dispatch(req: SandboxRequest, res: SandboxResponse, meta: DispatchMeta): Promise<void>;
  /** What it uses now: memory (bytes) and CPU time so far (seconds); undefined when it cannot tell. */
  usage?(): Promise<SandboxUsage | undefined>;
}

export interface SandboxUsage {
  /** A worker's JavaScript heap in use; a container's cgroup memory. */
  memoryBytes: number;
  /** CPU time since the sandbox started (a replaced thread or container starts again from 0). */
  cpuSeconds: number;
}

export interface SandboxDriver {
  readonly kind: 'worker' | 'container';
  /** Starts an instance and resolves once it has loaded the function and can serve. */
  start(spec: InstanceSpec, signal?: AbortSignal): Promise<Instance>;
  /** Stops it: with `drain`, after in-flight requests finish (bounded by `drainMs`). */
  stop(instance: Instance, options?: { drain?: boolean; drainMs?: number }): Promise<void>;
  /** True when the instance answers a health check. */
  probe(instance: Instance): Promise<boolean>;
  /** Gets ready to start instances soon (pre-starts sandboxes); called when a revision of this kind is wanted. */
  prepare?(): Promise<void>;
  /** Releases what the driver holds besides instances (pre-started sandboxes). */
  close?(): Promise<void>;
}
