/**
 * Closable: the contract of every long-lived object. `close()` stops taking work and drains;
 * `destroy(err)` aborts now. Both are idempotent.
 */
export interface Closable {
  close(): Promise<void>;
  destroy(err?: Error): Promise<void>;
}
