/**
 * Fuzzing `tide proxy` over real sockets: mutated request byte streams (from the HTTP corpus)
 * are written to the proxy's listener, each on a fresh connection that is then half-closed,
 * in front of a node:http upstream (llhttp, the parser most Node servers run). For every input:
 *  - the proxy answers with well-formed HTTP/1.1 responses or closes, within a deadline;
 *  - nothing reaches the upstream that its parser refuses (a desync is how smuggling starts);
 *  - the upstream never gets more requests than the input holds request lines;
 * and after the run the proxy still serves a plain GET.
 */
import { connect } from 'node:net';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type RunningProxy, simpleConfig, startProxy, startUpstream, type Upstream } from '../helpers/proxy.ts';
import { eventually } from '../helpers/tide.ts';
import { budget, corpus } from './budget.ts';
import { mutated } from './mutate.ts';

let upstream: Upstream;
let proxy: RunningProxy;
let upstreamRefused = 0;
let lastRefused = '';

beforeAll(async () => {
  upstream = await startUpstream('fuzz');
  upstream.server.on('clientError', (err: Error & { code?: string; rawPacket?: Buffer }, socket) => {
    socket.destroy();
    // Only the parser's refusals of framing count. Not: a request cut short (the client left
    // mid-body, so the proxy closed: HPE_INVALID_EOF_STATE), a socket error (EPIPE,
    // ECONNRESET), or an extension method llhttp does not know (HPE_INVALID_METHOD: Tide
    // forwards any token, as RFC 9110 says; such an upstream refuses the whole request, it
    // cannot read it as something else).
    if (!err.code?.startsWith('HPE_') || err.code === 'HPE_INVALID_EOF_STATE' || err.code === 'HPE_INVALID_METHOD') return;
    upstreamRefused++;
    lastRefused = `${err.code ?? ''} ${err.message} ${JSON.stringify(err.rawPacket?.toString('latin1') ?? '')}`;
  });
  proxy = await startProxy(
    simpleConfig([upstream.address]).replace('    port: 0\n', '    port: 0\n    limits: { headersTimeout: 2s, bodyTimeout: 2s, idleTimeout: 2s }\n'),
  );
});

afterAll(async () => {
  await proxy?.close();
  await upstream?.close();
});

/**
 * Writes `bytes`, half-closes (unless `halfClose` is false), and collects the answer until the
 * proxy closes (or `ms` pass). Like Envoy, the proxy takes a client's FIN before its answer as
 * the client leaving: a half-closed exchange may get no answer, only a close.
 */
function exchange(port: number, bytes: Buffer, ms: number, halfClose = true): Promise<{ data: Buffer; closed: boolean }> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const s = connect({ host: '127.0.0.1', port });
    const done = (closed: boolean) => {
      clearTimeout(timer);
      s.destroy();
      resolve({ data: Buffer.concat(chunks), closed });
    };
    const timer = setTimeout(() => done(false), ms);
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('error', () => {});
    s.on('close', () => done(true));
    s.on('connect', () => (halfClose ? s.end(bytes) : s.write(bytes)));
  });
}

const STATUS_LINE = /^HTTP\/1\.1 [1-5]\d\d [^\r\n]*\r\n/;

describe('fuzz: tide proxy over sockets', () => {
  it('answers or closes every mutated request, and passes nothing on that the upstream would refuse', async () => {
    const inputs = corpus('http');
    let runs = 0;
    await fc.assert(
      fc.asyncProperty(mutated(inputs), async (input) => {
        runs++;
        const before = upstream.seen.length;
        const refusedBefore = upstreamRefused;
        const r = await exchange(proxy.port, Buffer.from(input, 'latin1'), 5000);
        // A refusal by the upstream's parser shows on its side a moment later.
        await new Promise((resolve) => setImmediate(resolve));
        const where = JSON.stringify(input);
        expect(r.closed, `the proxy kept the connection open 5 s after the client half-closed: ${where}`).toBe(true);
        if (r.data.length > 0)
          expect(
            STATUS_LINE.test(r.data.toString('latin1')),
            `not an HTTP response for ${where}: ${JSON.stringify(r.data.toString('latin1').slice(0, 80))}`,
          ).toBe(true);
        expect(upstreamRefused - refusedBefore, `the upstream's parser refused what the proxy sent for ${where}: ${lastRefused}`).toBe(0);
        const lines = (input.match(/[!#$%&'*+.^_`|~0-9A-Za-z-]+ \S+ HTTP\/1\.\d\r\n/g) ?? []).length;
        expect(upstream.seen.length - before, `more requests reached the upstream than ${where} holds`).toBeLessThanOrEqual(lines);
      }),
      budget(200_000),
    );
    expect(runs).toBeGreaterThan(0);
    console.info(`fuzz sockets: ${runs} mutated inputs`);
    // Nothing leaked: every connection and every request it took is gone again.
    await eventually(() => proxy.server.metrics.connections === 0 && proxy.server.proxy.inflight === 0, 10_000);
    // Still serving.
    const ok = await exchange(proxy.port, Buffer.from('GET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n', 'latin1'), 5000, false);
    expect(ok.data.toString('latin1')).toMatch(/^HTTP\/1\.1 200 /);
  });
});
