/**
 * The worker sandbox driver. Each Instance is a piscina pool of exactly one thread running
 * host.ts with the function's bundle; its requests share that thread. Threads are started
 * generic and kept warm (`warmThreads`); starting an instance hands one its function, so a
 * cold start costs a module load, not a thread start. What it isolates and what it does not
 * is written in docs/worker-sandbox.md.
 *
 * Per request: a MessageChannel, one piscina task. The request body is pulled by the function
 * (backpressure from the function), the response is pushed with a window of acks (backpressure
 * from the client socket). Timeout: at `timeoutMs` the client gets 504 and the function a
 * cancel; a task still running `killGraceMs` later (a loop, a hung await) gets its thread
 * terminated and replaced, and the instance reports it.
 */
import { pathToFileURL } from 'node:url';
import { MessageChannel, type MessagePort } from 'node:worker_threads';
import { Piscina } from 'piscina';
import { TideError } from '../../../lib/errors.ts';
import type { DispatchMeta, Instance, InstanceEvent, InstanceSpec, SandboxDriver, SandboxRequest, SandboxResponse, SandboxUsage } from '../driver.ts';
import { type HostData, type HostMessage, type MainMessage, RESPONSE_WINDOW, type RequestTask, type Task, type TaskResult } from './protocol.ts';

const HOST_URL = new URL('./host.ts', import.meta.url).href;

export interface WorkerDriverOptions {
  /** Called when an instance's thread is replaced (timeout kill, memory limit, crash). */
  onEvent?: (event: InstanceEvent) => void;
  /** How long after a timeout a still-running task may go on before its thread is killed, ms. Default 1000. */
  killGraceMs?: number;
  /** How long loading the module at start may take, ms. Default 10000. */
  startTimeoutMs?: number;
  /**
   * Generic threads kept started and waiting, so a cold start loads the function into a thread
   * that is already up instead of paying for thread start-up (about 25 ms here). Default 2; 0 = none.
   */
  warmThreads?: number;
  /** Heap limit of the warm threads, MiB; a revision with another memoryMb starts a thread of its own. Default 128. */
  warmMemoryMb?: number;
  /** Threads load the OpenTelemetry SDK so functions' own spans are recorded. Default true; false when tracing is off. */
  tracing?: boolean;
}

/**
 * Requests one thread may run at once. The per-instance limit a user sets
 * (scaling.containerConcurrency) is kept by the activator in front of the instance, so every
 * thread can be started the same way, before anyone knows which function it will run.
 */
const TASKS_PER_THREAD = 1000;

/** How long after a warm thread is taken the pool starts its replacement, ms. */
const REFILL_DELAY_MS = 200;

/**
 * One thread's pool, and the workerData its threads start with: empty for a warm thread, given
 * the instance's HostData when it becomes one, so a replacement thread starts as that instance.
 */
interface ThreadPool {
  pool: Piscina<Task, TaskResult>;
  seed: { host?: HostData; tracing: boolean };
}

function startThread(memoryMb: number, tracing: boolean): ThreadPool {
  const seed: { host?: HostData; tracing: boolean } = { tracing };
  const pool = new Piscina<Task, TaskResult>({
    filename: HOST_URL,
    name: 'default',
    minThreads: 1,
    maxThreads: 1,
    idleTimeout: Number.MAX_SAFE_INTEGER,
    concurrentTasksPerWorker: TASKS_PER_THREAD,
    maxQueue: TASKS_PER_THREAD,
    atomics: 'async',
    resourceLimits: { maxOldGenerationSizeMb: memoryMb, maxYoungGenerationSizeMb: Math.min(32, Math.max(4, memoryMb / 8)) },
    env: {},
    // piscina keeps this object and hands it to every thread it starts for the pool.
    workerData: seed,
  });
  return { pool, seed };
}

export class WorkerDriver implements SandboxDriver {
  readonly kind = 'worker' as const;
  readonly #opts: Required<WorkerDriverOptions>;
  /** Started generic threads, oldest first; each resolves once its thread answers. */
  readonly #warm: { thread: ThreadPool; up: Promise<boolean> }[] = [];
  #closed = false;
  #refillTimer: NodeJS.Timeout | undefined;

  constructor(options: WorkerDriverOptions = {}) {
    this.#opts = { onEvent: () => {}, killGraceMs: 1000, startTimeoutMs: 10_000, warmThreads: 2, warmMemoryMb: 128, tracing: true, ...options };
    this.#refill();
  }

  /** Generic threads started and waiting for a function. */
  get warm(): number {
    return this.#warm.length;
  }

  async start(spec: InstanceSpec, signal?: AbortSignal): Promise<Instance> {
    const pool = await this.#takeThread(spec.config.memoryMb);
    const instance = new WorkerInstance(spec, this.#opts, pool);
    try {
      await instance.load(AbortSignal.any([AbortSignal.timeout(this.#opts.startTimeoutMs), ...(signal ? [signal] : [])]));
    } catch (err) {
      await instance.destroy();
      throw err;
    } finally {
      this.#refillSoon();
    }
    return instance;
  }

  /** A warm thread that is up, when one fits; else a new thread. */
  async #takeThread(memoryMb: number): Promise<ThreadPool> {
    if (memoryMb === this.#opts.warmMemoryMb) {
      while (this.#warm.length > 0) {
        const w = this.#warm.shift() as { thread: ThreadPool; up: Promise<boolean> };
        if (await w.up) return w.thread;
        void w.thread.pool.destroy().catch(() => {});
      }
    }
    return startThread(memoryMb, this.#opts.tracing);
  }

  /**
   * Starting a thread costs about 20 ms of CPU; right after a cold start it would share the core
   * with the new instance's first requests, so the pool refills a little later.
   */
  #refillSoon(): void {
    if (this.#refillTimer || this.#closed) return;
    this.#refillTimer = setTimeout(() => {
      this.#refillTimer = undefined;
      this.#refill();
    }, REFILL_DELAY_MS);
    this.#refillTimer.unref();
  }

  #refill(): void {
    while (!this.#closed && this.#warm.length < this.#opts.warmThreads) {
      const thread = startThread(this.#opts.warmMemoryMb, this.#opts.tracing);
      thread.pool.on('error', () => {}); // a warm thread that dies is found out by `up` and dropped
      const up = thread.pool.run({ kind: 'ping' }).then(
        () => true,
        () => false,
      );
      this.#warm.push({ thread, up });
    }
  }

  async stop(instance: Instance, options: { drain?: boolean; drainMs?: number } = {}): Promise<void> {
    if (!(instance instanceof WorkerInstance)) throw new TypeError('not a worker instance');
    if (options.drain === false) return instance.destroy();
    return instance.close(options.drainMs ?? 30_000);
  }

  async probe(instance: Instance): Promise<boolean> {
    if (!(instance instanceof WorkerInstance)) return false;
    return instance.probe();
  }

  /** Stops the warm threads (instances are stopped by whoever started them). */
  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#refillTimer);
    const warm = this.#warm.splice(0);
    await Promise.all(warm.map((w) => w.thread.pool.destroy().catch(() => {})));
  }
}

export class WorkerInstance implements Instance {
  readonly spec: InstanceSpec;
  readonly #pool: Piscina<Task, TaskResult>;
  readonly #seed: { host?: HostData };
  readonly #opts: Required<WorkerDriverOptions>;
  #inflight = 0;
  #closed = false;
  #killedAt = 0;
  #lastEvent: { reason: string; at: number } = { reason: '', at: 0 };

  constructor(spec: InstanceSpec, opts: Required<WorkerDriverOptions>, thread: ThreadPool) {
    this.spec = spec;
    this.#opts = opts;
    this.#pool = thread.pool;
    this.#seed = thread.seed;
    // A thread that dies outside any task (memory blown by waitUntil work, say) is reported too.
    this.#pool.on('error', (err: Error) => this.#replaced(err));
  }

  get inflight(): number {
    return this.#inflight;
  }

  /** The thread's heap in use and its CPU time. */
  async usage(): Promise<SandboxUsage | undefined> {
    const thread = this.#pool.threads[0];
    if (!thread) return undefined;
    try {
      const [heap, cpu] = await Promise.all([thread.getHeapStatistics(), thread.cpuUsage()]);
      return { memoryBytes: heap.used_heap_size + heap.external_memory, cpuSeconds: (cpu.user + cpu.system) / 1e6 };
    } catch {
      return undefined;
    }
  }

  async load(signal: AbortSignal): Promise<void> {
    try {
      const host: HostData = {
        bundleUrl: pathToFileURL(this.spec.bundlePath).href,
        env: this.spec.env,
        function: this.spec.function,
        revision: this.spec.revision,
        instance: this.spec.id,
        waitUntilMs: this.spec.config.timeoutMs,
        meshSocket: this.spec.meshSocket,
      };
      this.#seed.host = host;
      await this.#pool.run({ kind: 'load', host }, { signal });
    } catch (err) {
      throw new TideError('ERR_FUNCTION_INVALID', `instance ${this.spec.id} could not load the function: ${describe(err)}`, {
        cause: err,
        status: 422,
      });
    }
  }

  async probe(): Promise<boolean> {
    // No abort signal: piscina runs an abortable task alone on its thread, behind all others.
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), 5000);
    });
    try {
      return await Promise.race([this.#pool.run({ kind: 'probe' }).then(() => true), timeout]);
    } catch {
      return false;
    } finally {
      clearTimeout(timer);
    }
  }

  dispatch(req: SandboxRequest, res: SandboxResponse, meta: DispatchMeta): Promise<void> {
    if (this.#closed) return Promise.reject(new TideError('ERR_SANDBOX_CLOSED', `instance ${this.spec.id} is stopping`, { status: 503 }));
    this.#inflight++;
    return new Promise<void>((resolve, reject) => {
      new Exchange(this, req, res, meta, resolve, reject).start();
    }).finally(() => {
      this.#inflight--;
    });
  }

  /** @internal used by Exchange */
  run(task: RequestTask): Promise<TaskResult> {
    // Requests carry no abort signal on purpose: piscina gives an abortable task a thread of
    // its own, which would serialize a concurrent instance. Runaway work is stopped by
    // terminating the thread instead (killThread).
    return this.#pool.run(task, task.port ? { transferList: [task.port] } : undefined);
  }

  /**
   * @internal terminates the instance's thread; piscina fails the tasks on it and starts a
   * replacement. Reports `reason` when given (a running task reports through taskFailed).
   */
  killThread(report?: { reason: InstanceEvent['reason']; message: string }): void {
    const thread = this.#pool.threads[0];
    if (!thread) return;
    this.#killedAt = Date.now();
    if (report) this.#emit(report.reason, report.message);
    void thread.terminate();
  }

  /** @internal */
  get killGraceMs(): number {
    return this.#opts.killGraceMs;
  }

  /** @internal a task failed in a way that cost its thread; report it. */
  taskFailed(err: unknown, timedOut: boolean): TideError {
    const code = (err as { code?: string } | undefined)?.code;
    if (timedOut) {
      this.#emit('timeout', `request ran past ${this.spec.config.timeoutMs} ms and did not stop; its thread was replaced`);
      return new TideError('ERR_SANDBOX_TIMEOUT', `the function did not answer within ${this.spec.config.timeoutMs} ms`, { status: 504 });
    }
    if (code === 'ERR_WORKER_OUT_OF_MEMORY') {
      this.#emit('out-of-memory', `exceeded its memory limit of ${this.spec.config.memoryMb} MiB; its thread was replaced`);
      return new TideError('ERR_SANDBOX_OUT_OF_MEMORY', `the function exceeded its memory limit of ${this.spec.config.memoryMb} MiB`, { status: 500 });
    }
    const message = describe(err);
    if (/maximum size|queue is at limit/i.test(message)) {
      return new TideError('ERR_PROXY_QUEUE_FULL', `instance ${this.spec.id} is at capacity`, { status: 503 });
    }
    // Other requests on a thread we terminated, or that died of another request's fault.
    // Ours: terminate() ends a thread with exit code 1 (a function's own process.exit(N) says N).
    if (/Terminating worker thread|worker exited with code: 1$/.test(message) && Date.now() - this.#killedAt < 5000) {
      return new TideError('ERR_SANDBOX_INSTANCE_REPLACED', 'the instance serving this request was replaced', { status: 503 });
    }
    if (this.#closed) return new TideError('ERR_SANDBOX_CLOSED', `instance ${this.spec.id} stopped`, { status: 503 });
    this.#emit('crashed', `thread failed: ${message}`);
    return new TideError('ERR_SANDBOX_INSTANCE_REPLACED', `the function's thread failed: ${message}`, { status: 502 });
  }

  #replaced(err: Error): void {
    const code = (err as { code?: string }).code;
    if (code === 'ERR_WORKER_OUT_OF_MEMORY')
      this.#emit('out-of-memory', `exceeded its memory limit of ${this.spec.config.memoryMb} MiB; its thread was replaced`);
    else this.#emit('crashed', `thread failed: ${err.message}`);
  }

  /**
   * One thread's death fails every task on it with the same error; it is one replacement.
   * Reports of the same reason within a second are taken as that one event.
   */
  #emit(reason: InstanceEvent['reason'], message: string): void {
    const now = Date.now();
    if (this.#lastEvent.reason === reason && now - this.#lastEvent.at < 1000) return;
    this.#lastEvent = { reason, at: now };
    this.#opts.onEvent({ instance: this.spec.id, revision: this.spec.revision, function: this.spec.function, type: 'replaced', reason, message });
  }

  async close(drainMs: number): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const deadline = Date.now() + drainMs;
    while (this.#inflight > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    await this.#pool.close({ force: true }).catch(() => {});
    await this.#pool.destroy().catch(() => {});
  }

  async destroy(): Promise<void> {
    this.#closed = true;
    await this.#pool.destroy().catch(() => {});
  }
}

/** One request's trip through an instance. */
class Exchange {
  readonly #inst: WorkerInstance;
  readonly #req: SandboxRequest;
  readonly #res: SandboxResponse;
  readonly #meta: DispatchMeta;
  readonly #resolve: () => void;
  readonly #reject: (err: Error) => void;
  #port: MessagePort | undefined;
  #body: AsyncIterator<Buffer> | undefined;
  #received = 0;
  #settled = false;
  #taskDone = false;
  #timedOut = false;
  /** The head is out and the body is still coming over the port. */
  #streaming = false;
  #portClosed = false;
  #timer: NodeJS.Timeout | undefined;

  constructor(inst: WorkerInstance, req: SandboxRequest, res: SandboxResponse, meta: DispatchMeta, resolve: () => void, reject: (err: Error) => void) {
    this.#inst = inst;
    this.#req = req;
    this.#res = res;
    this.#meta = meta;
    this.#resolve = resolve;
    this.#reject = reject;
  }

  start(): void {
    const req = this.#req;
    const headers = req.headers;
    let hasId = false;
    for (let i = 0; i < headers.length; i += 2) if ((headers[i] as string).toLowerCase() === 'x-request-id') hasId = true;
    if (!hasId) headers.push('x-request-id', this.#meta.requestId);
    const task: RequestTask = {
      kind: 'request',
      method: req.method,
      url: req.url,
      headers,
      requestId: this.#meta.requestId,
    };
    if (req.body !== null) {
      const { port1, port2 } = new MessageChannel();
      this.#attach(port1);
      task.port = port2;
    }
    this.#res.onClose(() => this.#cancel());
    this.#timer = setTimeout(() => this.#onTimeout(), this.#inst.spec.config.timeoutMs);
    this.#inst.run(task).then(
      (result) => this.#onResult(result),
      (err: unknown) => this.#onTaskFailed(err),
    );
  }

  #attach(port: MessagePort): void {
    this.#port = port;
    port.on('message', (m: HostMessage) => this.#onMessage(m));
    port.once('close', () => {
      this.#portClosed = true;
      // The host's last message (end or abort) arrives before its close; a stream still open
      // now lost its thread (killed or out of memory after its task had answered).
      if (this.#streaming && !this.#settled) {
        this.#res.destroy();
        this.#finish();
      }
    });
  }

  #onResult(result: TaskResult): void {
    this.#taskDone = true;
    if (this.#settled || result.t !== 'response' || result.end) clearTimeout(this.#timer);
    if (this.#settled) {
      // Given up already (client gone, timed out): closing the port cancels the host's stream.
      if (result.t === 'response') result.port?.close();
      return;
    }
    try {
      this.#respond(result);
    } catch (err) {
      this.#broken(err);
    }
  }

  #respond(result: TaskResult): void {
    const res = this.#res;
    switch (result.t) {
      case 'response': {
        if (result.end) {
          const noBody = this.#req.method === 'HEAD' || result.s === 204 || result.s === 304 || result.s < 200;
          // HEAD keeps the function's content-length; other complete bodies get their exact one.
          const headers = this.#req.method === 'HEAD' ? result.h : stripLength(result.h);
          if (!noBody) headers.push('content-length', String(result.b?.byteLength ?? 0));
          res.writeHead(result.s, headers);
          res.end(noBody ? undefined : result.b);
          this.#finish();
          return;
        }
        if (result.port) this.#attach(result.port);
        this.#streaming = true;
        res.writeHead(result.s, result.h);
        if (result.b) res.write(result.b);
        // Port messages may start now: they can no longer overtake the head.
        this.#post({ t: 'ack', n: RESPONSE_WINDOW });
        return;
      }
      case 'error':
        this.#fail(new TideError(result.code, result.message, { status: result.code === 'ERR_FUNCTION_THREW' ? 500 : 502 }));
        return;
      default:
        this.#fail(new TideError('ERR_INTERNAL', 'the function host answered a request with no response', { status: 502 }));
    }
  }

  /** Node refused what the function sent (a header with a control character, say). */
  #broken(err: unknown): void {
    if (this.#settled) return;
    if (!this.#res.headersSent) {
      this.#fail(new TideError('ERR_FUNCTION_BAD_RESPONSE', `the function's response cannot be sent: ${describe(err)}`, { status: 502 }));
    } else {
      this.#res.destroy();
      this.#finish();
    }
    this.#post({ t: 'cancel' });
  }

  #onMessage(m: HostMessage): void {
    if (m.t === 'pull') {
      void this.#pull();
      return;
    }
    if (this.#settled) return;
    const res = this.#res;
    try {
      switch (m.t) {
        case 'data':
          if (res.write(m.c)) this.#post({ t: 'ack', n: 1 });
          else res.onDrain(() => this.#post({ t: 'ack', n: 1 }));
          return;
        case 'end':
          res.end();
          this.#finish();
          return;
        case 'abort':
          res.destroy(new Error(m.message));
          this.#finish();
          return;
      }
    } catch (err) {
      this.#broken(err);
    }
  }

  async #pull(): Promise<void> {
    if (this.#settled) {
      this.#post({ t: 'body-error', message: 'the request is over; its body is no longer available' });
      return;
    }
    this.#body ??= this.#req.body ?? undefined;
    if (!this.#body) {
      this.#post({ t: 'eof' });
      return;
    }
    try {
      const { value, done } = await this.#body.next();
      if (done) {
        this.#post({ t: 'eof' });
        return;
      }
      this.#received += value.length;
      if (this.#received > this.#inst.spec.config.maxBodyBytes) {
        this.#post({ t: 'body-error', message: 'request body too large' });
        this.#fail(
          new TideError('ERR_PAYLOAD_TOO_LARGE', `the request body is over the function's limit of ${this.#inst.spec.config.maxBodyBytes} bytes`, {
            status: 413,
          }),
        );
        return;
      }
      this.#post({ t: 'data', c: value });
    } catch (err) {
      this.#post({ t: 'body-error', message: `reading the request body failed: ${(err as Error).message}` });
    }
  }

  #post(m: MainMessage): void {
    try {
      this.#port?.postMessage(m);
    } catch {
      // The host closed its end; nothing left to tell it.
    }
  }

  /** The client went away: tell the function; the request's deadline still bounds its work. */
  #cancel(): void {
    this.#post({ t: 'cancel' });
    // A function still reading the body must not wait for bytes that will never come.
    this.#post({ t: 'body-error', message: 'the client went away' });
    if (!this.#settled) {
      this.#settled = true;
      this.#detachBody();
      this.#resolve();
    }
  }

  #onTimeout(): void {
    // Nothing of this request is running any more.
    if (this.#taskDone && (!this.#streaming || this.#portClosed)) return;
    this.#timedOut = true;
    this.#post({ t: 'cancel' });
    if (!this.#settled) {
      const err = new TideError('ERR_SANDBOX_TIMEOUT', `the function did not answer within ${this.#inst.spec.config.timeoutMs} ms`, { status: 504 });
      if (this.#res.headersSent) {
        this.#res.destroy(err);
        this.#finish();
      } else {
        this.#fail(err);
      }
    }
    this.#scheduleKill();
  }

  /**
   * Work that ignores its cancel (a loop, a hung await, a stream that never ends) costs its
   * thread: it is terminated and piscina starts a replacement. Other requests on that thread
   * fail with 503 ERR_SANDBOX_INSTANCE_REPLACED.
   */
  #scheduleKill(): void {
    setTimeout(() => {
      if (!this.#taskDone) {
        this.#inst.killThread();
      } else if (this.#streaming && !this.#portClosed) {
        this.#inst.killThread({ reason: 'timeout', message: 'a response stream ran past its timeout and did not stop; its thread was replaced' });
      }
    }, this.#inst.killGraceMs).unref();
  }

  #onTaskFailed(err: unknown): void {
    this.#taskDone = true;
    clearTimeout(this.#timer);
    const failure = this.#inst.taskFailed(err, this.#timedOut);
    if (this.#settled) return;
    if (this.#res.headersSent) {
      this.#res.destroy(failure);
      this.#finish();
    } else {
      this.#fail(failure);
    }
  }

  #finish(): void {
    if (this.#settled) return;
    this.#settled = true;
    clearTimeout(this.#timer);
    this.#release();
    // A body the function did not read to the end is drained so the connection stays usable.
    if (this.#detachBody()) this.#req.discard();
    this.#resolve();
  }

  /** Answers with an error; the deadline timer keeps running while the task does. */
  #fail(err: TideError): void {
    if (this.#settled) return;
    this.#settled = true;
    if (this.#taskDone) clearTimeout(this.#timer);
    this.#release();
    this.#detachBody(); // the error response drains the rest (proxy rescue)
    this.#reject(err);
  }

  /** Stops reading the request body for the function; true when some of it is still unread. */
  #detachBody(): boolean {
    const body = this.#body;
    this.#body = undefined;
    if (body) void body.return?.()?.catch?.(() => {});
    return !this.#req.complete && (body !== undefined || this.#port !== undefined);
  }

  /** Closes our end of the port unless the host may still pull the request body. */
  #release(): void {
    if (this.#port && this.#res.finished) {
      this.#port.close();
    }
  }
}

function stripLength(h: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i + 1 < h.length; i += 2) {
    if ((h[i] as string).toLowerCase() !== 'content-length') out.push(h[i] as string, h[i + 1] as string);
  }
  return out;
}

function describe(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}
