/** Small socket helpers shared by the listeners of every plane. */
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';

/** Listens and resolves with the bound address, or rejects with the listen error (EADDRINUSE…). */
export function listen(server: Server, port: number, host: string): Promise<AddressInfo> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve(server.address() as AddressInfo);
    });
  });
}

/**
 * Reads and drops the rest of a request body nobody will read (refused, or only partly read by
 * a function), so the connection stays usable and the client reads its response instead of a
 * reset (closing a socket with unread input makes the kernel send RST). Past `maxBytes` or
 * `maxMs` the connection is closed instead.
 */
export function discardRequestBody(req: import('node:http').IncomingMessage, maxBytes = 64 * 1024 * 1024, maxMs = 10_000): void {
  if (req.complete || req.destroyed) return;
  let seen = 0;
  const timer = setTimeout(() => req.socket.destroy(), maxMs);
  timer.unref();
  const done = () => clearTimeout(timer);
  req.on('data', (chunk: Buffer) => {
    seen += chunk.length;
    if (seen > maxBytes) req.socket.destroy();
  });
  req.once('end', done);
  req.once('close', done);
  req.resume();
}
