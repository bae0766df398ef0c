/**
 * Informer: keeps a caller up to date with everything under some key prefixes of a versioned
 * store. It lists, then watches from the listed revision; when the store says the history is
 * gone (compacted) it lists again. `onChange` is called (debounced to one call per burst) after
 * every change, and once at start; callers re-read what they need then. Reconcilers and
 * snapshot builders are driven by it.
 */
interface WatchableStore {
  list(prefix: string): Promise<{ revision: number }>;
  watch(prefix: string, afterRevision: number, listener: (events: unknown[]) => void, onError?: (err: Error) => void): { cancel(): void };
}

export class Informer {
  readonly #store: WatchableStore;
  readonly #prefixes: string[];
  readonly #onChange: () => Promise<void> | void;
  readonly #onError: (err: unknown) => void;
  #watches: { cancel(): void }[] = [];
  #running: Promise<void> | undefined;
  #again = false;
  #closed = false;
  #timer: NodeJS.Timeout | undefined;

  constructor(store: WatchableStore, prefixes: string[], onChange: () => Promise<void> | void, onError: (err: unknown) => void, resyncMs = 10_000) {
    this.#store = store;
    this.#prefixes = prefixes;
    this.#onChange = onChange;
    this.#onError = onError;
    if (resyncMs > 0) {
      this.#timer = setInterval(() => this.trigger(), resyncMs);
      this.#timer.unref();
    }
  }

  async start(): Promise<void> {
    for (const w of this.#watches) w.cancel();
    this.#watches = [];
    for (const prefix of this.#prefixes) {
      const { revision } = await this.#store.list(prefix);
      this.#watches.push(
        this.#store.watch(
          prefix,
          revision,
          () => this.trigger(),
          (err) => {
            this.#onError(err);
            if (!this.#closed) void this.start().catch(this.#onError);
          },
        ),
      );
    }
    this.trigger();
    await this.idle();
  }

  /** Asks for another onChange run; coalesces with one already queued. */
  trigger(): void {
    if (this.#closed) return;
    if (this.#running) {
      this.#again = true;
      return;
    }
    this.#running = (async () => {
      do {
        this.#again = false;
        try {
          await this.#onChange();
        } catch (err) {
          this.#onError(err);
        }
      } while (this.#again && !this.#closed);
      this.#running = undefined;
    })();
  }

  /** Resolves when no onChange run is in progress. */
  async idle(): Promise<void> {
    while (this.#running) await this.#running;
  }

  close(): void {
    this.#closed = true;
    clearInterval(this.#timer);
    for (const w of this.#watches) w.cancel();
  }
}
