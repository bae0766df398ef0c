export { createMemoryStore } from './memory.ts';
export { createSqliteStore } from './sqlite.ts';
export type { KeyValue, Store, TxnOp, Watch, WatchEvent, WatchListener } from './store.ts';
