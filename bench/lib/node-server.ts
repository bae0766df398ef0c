/**
 * The baseline peer: a plain node:http server calling the same fetch handler in-process (no
 * sandbox, no gateway), with the least adapter code that turns node's request into a Web
 * Request and the Response back. Usage: node bench/lib/node-server.ts HANDLER_FILE PORT
 */
import { createServer } from 'node:http';
import { pathToFileURL } from 'node:url';

const [file, portArg] = process.argv.slice(2);
if (!file || !portArg) throw new Error('usage: node-server.ts HANDLER_FILE PORT');
const handler = ((await import(pathToFileURL(file).href)) as { default: { fetch(r: Request, env: object, ctx: object): Response | Promise<Response> } })
  .default;
const ctx = { waitUntil() {}, passThroughOnException() {} };

const server = createServer(async (req, res) => {
  const hasBody = req.method !== 'GET' && req.method !== 'HEAD';
  const request = new Request(`http://${req.headers.host}${req.url}`, {
    method: req.method,
    headers: req.headers as Record<string, string>,
    body: hasBody ? (req as unknown as ReadableStream) : null,
    duplex: 'half',
  } as RequestInit);
  const response = await handler.fetch(request, {}, ctx);
  const body = Buffer.from(await response.arrayBuffer());
  const headers: Record<string, string> = Object.fromEntries(response.headers);
  headers['content-length'] = String(body.length);
  res.writeHead(response.status, headers);
  res.end(body);
});
server.keepAliveTimeout = 5000;
server.listen(Number(portArg), '127.0.0.1', () => process.stdout.write('ready\n'));
