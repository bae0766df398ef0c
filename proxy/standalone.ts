/** What `tide proxy` needs, loaded only when that command runs. */
export { ProxyMetrics } from './metrics.ts';
export { loadConfig, ProxyServer } from './server.ts';
