/**
 * The upstream behind every proxy in the `proxy` benchmark: a plain node:http server answering
 * every request with the 13-byte body `hello, world\n` (content-length, keep-alive on). It is
 * the same for all targets, so the proxies differ only in what they add.
 * Usage: node bench/lib/hello-upstream.ts PORT
 */
import { createServer } from 'node:http';

const HELLO_BODY = 'hello, world\n';

const portArg = process.argv[2];
if (!portArg) throw new Error('usage: hello-upstream.ts PORT');

const body = Buffer.from(HELLO_BODY);
const server = createServer((req, res) => {
  req.resume();
  res.writeHead(200, { 'content-type': 'text/plain', 'content-length': body.length });
  res.end(body);
});
server.keepAliveTimeout = 65_000;
server.listen(Number(portArg), '127.0.0.1', () => process.stdout.write('ready\n'));
