/**
 * An OTLP/HTTP receiver for benchmarks: accepts POST /v1/traces, counts requests and bytes,
 * answers 200 (protobuf: an empty ExportTraceServiceResponse). GET /count returns the counts.
 * Usage: node otlp-sink.ts PORT
 */
import { createServer } from 'node:http';

const port = Number(process.argv[2]);
let requests = 0;
let bytes = 0;
createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/count') {
    res.end(JSON.stringify({ requests, bytes }));
    return;
  }
  req.on('data', (c: Buffer) => {
    bytes += c.length;
  });
  req.on('end', () => {
    requests++;
    res.writeHead(200, { 'content-type': 'application/x-protobuf' });
    res.end();
  });
}).listen(port, '127.0.0.1', () => process.stdout.write('ready\n'));
