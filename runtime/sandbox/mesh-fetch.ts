/**
 * Inside a sandbox: `fetch("http://NAME.NAMESPACE.svc.tide/…")` goes to the mesh. This wraps
 * the global fetch so that requests to mesh hosts are sent over the Unix socket Tide gave the
 * instance (its function's way out: the egress proxy there calls the destination over mutual
 * TLS under the function's identity); every other URL goes to the real fetch unchanged.
 *
 * A mesh call continues the caller's trace: when the request carries no traceparent of its
 * own, `inject` adds the current one (the function's span, or its own span that is active).
 *
 * It imports only Node's own modules, so a container can load it as it is.
 */
import { Agent, request as httpRequest, type IncomingMessage } from 'node:http';
import { Readable } from 'node:stream';

const MESH_SUFFIX = '.svc.tide';
const HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'proxy-connection', 'te', 'trailer']);
const NULL_BODY = new Set([101, 103, 204, 205, 304]);

/** True for http://NAME.NAMESPACE.svc.tide[:port]/… */
function isMesh(url: string): boolean {
  // Cheap test first: most fetches are not mesh calls.
  if (!url.includes(MESH_SUFFIX)) return false;
  try {
    const host = new URL(url).hostname.toLowerCase().replace(/\.$/, '');
    return host.endsWith(MESH_SUFFIX) && host.slice(0, -MESH_SUFFIX.length).split('.').length === 2;
  } catch {
    return false;
  }
}

/** Writes trace headers (traceparent, tracestate) for the code running now into `carrier`. */
export type TraceInjector = (carrier: Record<string, string>) => void;

/** Replaces globalThis.fetch; `socket()` says where the mesh is (read per call: a warm thread learns it later). */
export function installMeshFetch(socket: () => string | undefined, inject?: TraceInjector): void {
  const original = globalThis.fetch;
  const agent = new Agent({ keepAlive: true, maxSockets: 256 });
  const meshFetch = (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
    const url = typeof input === 'string' ? input : input instanceof URL ? input.href : input.url;
    if (!isMesh(url)) return original(input, init);
    const path = socket();
    if (!path) return original(input, init);
    return viaMesh(new Request(input, init), path, agent, inject);
  };
  globalThis.fetch = meshFetch as typeof fetch;
}

function viaMesh(request: Request, socketPath: string, agent: Agent, inject: TraceInjector | undefined): Promise<Response> {
  const url = new URL(request.url);
  if (url.protocol !== 'http:')
    return Promise.reject(new TypeError(`mesh calls use http://${url.host}/ (the mesh encrypts them with mutual TLS); got ${url.protocol}//`));
  const headers: string[] = ['host', url.host];
  for (const [k, v] of request.headers) if (!HOP.has(k) && k !== 'host') headers.push(k, v);
  if (inject && !request.headers.has('traceparent')) {
    const carrier: Record<string, string> = {};
    inject(carrier);
    for (const k in carrier) if (!request.headers.has(k)) headers.push(k, carrier[k] as string);
  }
  return new Promise<Response>((resolve, reject) => {
    const signal = request.signal;
    if (signal.aborted) {
      reject(signal.reason);
      return;
    }
    const req = httpRequest({ socketPath, agent, method: request.method, path: `${url.pathname}${url.search}`, headers, signal });
    req.once('response', (res: IncomingMessage) => {
      const out = new Headers();
      for (let i = 0; i + 1 < res.rawHeaders.length; i += 2) {
        const name = (res.rawHeaders[i] as string).toLowerCase();
        if (!HOP.has(name)) out.append(name, res.rawHeaders[i + 1] as string);
      }
      const status = res.statusCode ?? 502;
      const empty = NULL_BODY.has(status) || request.method === 'HEAD';
      if (empty) res.resume();
      const response = new Response(empty ? null : (Readable.toWeb(res) as ReadableStream<Uint8Array>), {
        status,
        statusText: res.statusMessage ?? '',
        headers: out,
      });
      Object.defineProperty(response, 'url', { value: request.url });
      resolve(response);
    });
    req.once('error', (err) => reject(signal.aborted ? signal.reason : new TypeError('fetch failed', { cause: err })));
    if (request.body) {
      Readable.fromWeb(request.body as import('node:stream/web').ReadableStream<Uint8Array>)
        .once('error', (err) => req.destroy(err))
        .pipe(req);
    } else {
      req.end();
    }
  });
}
