export { createEtcdStore, type EtcdStore, type EtcdStoreOptions, parseEtcdUrl } from './etcd.ts';
export type { LocalStoreOptions } from './local.ts';
export { createMemoryStore } from './memory.ts';
export { createSqliteStore } from './sqlite.ts';
export type { KeyValue, PutOptions, Store, TxnOp, Watch, WatchEvent, WatchListener } from './store.ts';
