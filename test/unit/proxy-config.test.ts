import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { isTideError } from '../../lib/errors.ts';
import { ProxyMetrics } from '../../proxy/metrics.ts';
import { loadConfig } from '../../proxy/server.ts';
import { tempDir } from '../helpers/tide.ts';

function load(endpoint: string): string {
  const file = join(tempDir('tide-proxy-config-'), 'proxy.yaml');
  writeFileSync(
    file,
    `listeners:\n  - { name: main, port: 0 }\nvirtualHosts:\n  - name: all\n    domains: ['*']\n    routes: [{ name: r, backends: [{ cluster: c }] }]\nclusters:\n  - name: c\n    endpoints: ['127.0.0.1:9001', '${endpoint}']\n`,
  );
  try {
    const s = loadConfig(file, 1, new ProxyMetrics());
    for (const c of s.clusters.values()) void c.destroy();
    return 'ok';
  } catch (err) {
    expect(isTideError(err, 'ERR_CONFIG_INVALID'), String(err)).toBe(true);
    return (err as Error).message.split('\n')[0]?.replace(/^.*proxy\.yaml:/, '') ?? '';
  }
}

describe('tide proxy config: endpoint addresses', () => {
  it('refuses a host that is neither a name nor an IP, at its field, instead of failing when the cluster starts (found by fuzzing)', () => {
    expect(load('ffff127.0.0.1:9002')).toBe(
      '9:35: /clusters/0/endpoints/1: "ffff127.0.0.1:9002" is not a valid host:port (a DNS name, an IPv4 address or [an IPv6 address], then :port)',
    );
  });

  it('refuses a port out of range', () => {
    expect(load('127.0.0.1:99999')).toBe('9:35: /clusters/0/endpoints/1: the port of "127.0.0.1:99999" must be from 1 to 65535');
    expect(load('127.0.0.1:0')).toMatch(/must be from 1 to 65535/);
  });

  it('takes names, IPv4 and IPv6 addresses', () => {
    expect(load('backend.internal:8080')).toBe('ok');
    expect(load('[::1]:8080')).toBe('ok');
  });

  it('refuses a zero duration where the proxy needs one above zero, at its field (found by fuzzing)', () => {
    const file = join(tempDir('tide-proxy-config-'), 'proxy.yaml');
    writeFileSync(
      file,
      `listeners:\n  - { name: main, port: 0 }\nvirtualHosts:\n  - name: all\n    domains: ['*']\n    routes: [{ name: r, backends: [{ cluster: c }] }]\nclusters:\n  - name: c\n    endpoints: ['127.0.0.1:9001']\n    outlierDetection: { baseEjectionTime: 0s }\n`,
    );
    expect(() => loadConfig(file, 1, new ProxyMetrics())).toThrow(
      /proxy\.yaml:10:43: \/clusters\/0\/outlierDetection\/baseEjectionTime: must be a duration of at least 1ms like 250ms, 15s, 2m \(got "0s"\)/,
    );
  });

  it('refuses durations under 1ms, which would round to 0 (found in review)', () => {
    const file = join(tempDir('tide-proxy-config-'), 'proxy.yaml');
    writeFileSync(
      file,
      `listeners:\n  - { name: main, port: 0 }\nvirtualHosts:\n  - name: all\n    domains: ['*']\n    routes: [{ name: r, backends: [{ cluster: c }] }]\nclusters:\n  - name: c\n    endpoints: ['127.0.0.1:9001']\n    healthCheck: { path: /, interval: 0.4ms, timeout: 0.0001s }\n`,
    );
    expect(() => loadConfig(file, 1, new ProxyMetrics())).toThrow(
      /healthCheck\/interval: must be a duration of at least 1ms[\s\S]*healthCheck\/timeout: must be a duration of at least 1ms/,
    );
  });
});
