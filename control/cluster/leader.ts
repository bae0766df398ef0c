/**
 * Leader election among control replicas, on the Store's leases (etcd's, in a cluster): the
 * leader is whoever holds /tide/cluster/leader, a key attached to its lease and created only
 * when absent (compare-and-swap on "no key"). The holder keeps its lease alive every ttl/3;
 * the others watch the key and campaign again as soon as it is deleted — when the leader stops
 * (it revokes its lease) or dies (its lease expires after the TTL).
 *
 * A leader that cannot renew its lease in time (it lost the store) steps down on its own clock
 * before the lease can have expired in the store, so two replicas never both believe they lead
 * for longer than a clock drift; work it does as leader goes through compare-and-swap anyway.
 */
import { errorMessage, isTideError } from '../../lib/errors.ts';
import type { Logger } from '../../lib/log.ts';
import type { Store, Watch } from '../store/index.ts';

export const LEADER_KEY = '/tide/cluster/leader';

export interface LeaderRecord {
  /** The replica's id. */
  id: string;
  /** Its control API URL (for members and followers that want the leader). */
  api: string;
  since: string;
}

export interface ElectionOptions {
  store: Store;
  id: string;
  api: string;
  /** Lease TTL, seconds: how long a dead leader keeps the role. Default 5. */
  ttlSeconds?: number;
  log: Logger;
  /** Became leader: start the leader's work. */
  onElected: () => void | Promise<void>;
  /** Stopped being leader: stop it. */
  onDeposed: () => void | Promise<void>;
}

export class LeaderElection {
  readonly #opts: ElectionOptions;
  readonly #ttl: number;
  #lease: string | undefined;
  #leading = false;
  #leader: LeaderRecord | undefined;
  #watch: Watch | undefined;
  #timer: NodeJS.Timeout | undefined;
  #renewedAt = 0;
  #closed = false;
  #campaigning = false;

  constructor(opts: ElectionOptions) {
    this.#opts = opts;
    this.#ttl = opts.ttlSeconds ?? 5;
  }

  get leading(): boolean {
    return this.#leading;
  }

  /** The leader as last seen. */
  get leader(): LeaderRecord | undefined {
    return this.#leader;
  }

  async start(): Promise<void> {
    await this.#observe();
    await this.#campaign();
    // The renew/campaign loop: every ttl/3.
    this.#timer = setInterval(() => void this.#tick(), Math.max(200, (this.#ttl * 1000) / 3));
  }

  async #observe(): Promise<void> {
    const s = this.#opts.store;
    const { items, revision } = await s.list(LEADER_KEY);
    this.#leader = items[0] ? parse(items[0].value) : undefined;
    this.#watch?.cancel();
    this.#watch = s.watch(
      LEADER_KEY,
      revision,
      (events) => {
        const last = events[events.length - 1];
        if (!last) return;
        this.#leader = last.type === 'put' && last.value ? parse(last.value) : undefined;
        if (last.type === 'delete') void this.#campaign();
      },
      (err) => {
        if (this.#closed) return;
        this.#opts.log.warn({ err: errorMessage(err) }, 'leader watch failed; watching again');
        setTimeout(() => void this.#observe().catch(() => {}), 500).unref();
      },
    );
  }

  async #tick(): Promise<void> {
    if (this.#closed) return;
    if (!this.#leading) {
      await this.#campaign();
      return;
    }
    const lease = this.#lease as string;
    try {
      const alive = await this.#opts.store.keepAlive(lease);
      if (!alive) {
        await this.#stepDown('its lease expired');
        return;
      }
      this.#renewedAt = Date.now();
    } catch (err) {
      // Not renewed: step down before the store can have let the lease go (ttl - 1 tick).
      if (Date.now() - this.#renewedAt > (this.#ttl * 1000 * 2) / 3) await this.#stepDown(`it cannot renew its lease: ${errorMessage(err)}`);
    }
  }

  async #campaign(): Promise<void> {
    if (this.#closed || this.#leading || this.#campaigning) return;
    this.#campaigning = true;
    const s = this.#opts.store;
    try {
      const lease = await s.grantLease(this.#ttl);
      const record: LeaderRecord = { id: this.#opts.id, api: this.#opts.api, since: new Date().toISOString() };
      try {
        await s.put(LEADER_KEY, JSON.stringify(record), { expectModRevision: 0, lease });
      } catch (err) {
        await s.revokeLease(lease).catch(() => {});
        if (isTideError(err, 'ERR_STORE_CONFLICT')) return;
        throw err;
      }
      if (this.#closed) {
        await s.revokeLease(lease).catch(() => {});
        return;
      }
      this.#lease = lease;
      this.#renewedAt = Date.now();
      this.#leading = true;
      this.#leader = record;
      this.#opts.log.info({ id: this.#opts.id }, 'elected leader');
      await this.#opts.onElected();
    } catch (err) {
      if (!this.#closed) this.#opts.log.warn({ err: errorMessage(err) }, 'leader election attempt failed');
    } finally {
      this.#campaigning = false;
    }
  }

  async #stepDown(why: string): Promise<void> {
    if (!this.#leading) return;
    this.#leading = false;
    this.#opts.log.warn({ id: this.#opts.id, why }, 'no longer leader');
    const lease = this.#lease;
    this.#lease = undefined;
    await this.#opts.onDeposed();
    if (lease) await this.#opts.store.revokeLease(lease).catch(() => {});
  }

  /** Stops campaigning; a leader hands over at once (its lease is revoked, so its key goes). */
  async close(): Promise<void> {
    if (this.#closed) return;
    clearInterval(this.#timer);
    if (this.#leading) {
      this.#leading = false;
      await this.#opts.onDeposed();
      if (this.#lease) await this.#opts.store.revokeLease(this.#lease).catch(() => {});
    }
    this.#closed = true;
    this.#watch?.cancel();
  }
}

function parse(value: string): LeaderRecord | undefined {
  try {
    return JSON.parse(value) as LeaderRecord;
  } catch {
    return undefined;
  }
}
