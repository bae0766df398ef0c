/**
 * Runs an instance's startup, readiness and liveness probes (control/api/schema/probe.ts) and
 * tells the agent what they conclude: started, ready or not, or dead (restart it). A probe is a
 * GET sent straight to the instance, so it tests the function and not the gateway, and is not
 * counted as load.
 */
import type { ProbeKind, ProbeSpec, ProbesSpec } from '../../control/api/schema/probe.ts';
import type { Instance, SandboxRequest, SandboxResponse } from '../sandbox/driver.ts';

export interface ProbeOutcome {
  ok: boolean;
  /** What happened, for the status and the log: "HTTP 503", "no answer within 1 s", … */
  detail: string;
}

/** One GET of `spec.path` on `instance`; a status from 200 to 399 within the timeout is a success. */
export function probeOnce(instance: Instance, spec: ProbeSpec, kind: ProbeKind): Promise<ProbeOutcome> {
  return new Promise((resolve) => {
    let status = 0;
    let settled = false;
    let cancel: (() => void) | undefined;
    const done = (outcome: ProbeOutcome) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(outcome);
    };
    const timer = setTimeout(() => {
      cancel?.();
      done({ ok: false, detail: `no answer within ${spec.timeoutSeconds} s` });
    }, spec.timeoutSeconds * 1000);
    const req: SandboxRequest = {
      method: 'GET',
      url: `http://localhost${spec.path}`,
      headers: ['host', 'localhost', 'user-agent', `tide-probe (${kind})`],
      body: null,
      complete: true,
      discard() {},
    };
    let finished = false;
    const res: SandboxResponse = {
      get headersSent() {
        return status !== 0;
      },
      get finished() {
        return finished;
      },
      writeHead(s: number) {
        status = s;
      },
      write: () => true,
      onDrain() {},
      end() {
        finished = true;
        done(status >= 200 && status < 400 ? { ok: true, detail: `HTTP ${status}` } : { ok: false, detail: `HTTP ${status}` });
      },
      destroy(err?: Error) {
        finished = true;
        done({ ok: false, detail: err?.message ?? 'the response was cut off' });
      },
      onClose(cb: () => void) {
        cancel = cb;
      },
    };
    instance.dispatch(req, res, { requestId: `probe-${kind}`, scheme: 'http' }).then(
      () => done({ ok: status >= 200 && status < 400, detail: status ? `HTTP ${status}` : 'no response' }),
      (err: unknown) => done({ ok: false, detail: err instanceof Error ? err.message : String(err) }),
    );
  });
}

export interface ProberEvents {
  /** The startup probe succeeded (or there is none): readiness and liveness begin. */
  started(): void;
  /** Readiness changed (with a readiness probe; without one an instance is ready once started). */
  readiness(ready: boolean, detail: string): void;
  /** The startup or liveness probe failed `failureThreshold` times in a row: restart it. */
  dead(reason: string): void;
}

/** The probes of one instance, each on its own timer, until `stop`. */
export class Prober {
  readonly #instance: Instance;
  readonly #specs: ProbesSpec;
  readonly #on: ProberEvents;
  readonly #timers = new Set<NodeJS.Timeout>();
  #stopped = false;

  constructor(instance: Instance, specs: ProbesSpec, on: ProberEvents) {
    this.#instance = instance;
    this.#specs = specs;
    this.#on = on;
  }

  start(): void {
    const startup = this.#specs.startup;
    if (!startup) {
      this.#started();
      return;
    }
    let failures = 0;
    this.#loop('startup', startup, (o) => {
      if (o.ok) {
        this.#started();
        return false;
      }
      failures++;
      if (failures >= startup.failureThreshold) {
        this.#on.dead(`startup probe ${startup.path} failed ${failures} times: ${o.detail}`);
        return false;
      }
      return true;
    });
  }

  #started(): void {
    this.#on.started();
    const readiness = this.#specs.readiness;
    if (readiness) {
      let ready = false;
      let streak = 0;
      this.#loop('readiness', readiness, (o) => {
        // Not ready until successThreshold successes; then ready until failureThreshold failures.
        streak = o.ok === ready ? 0 : streak + 1;
        if (streak >= (ready ? readiness.failureThreshold : readiness.successThreshold)) {
          ready = o.ok;
          streak = 0;
          this.#on.readiness(ready, `readiness probe ${readiness.path}: ${o.detail}`);
        }
        return true;
      });
    } else {
      this.#on.readiness(true, 'no readiness probe');
    }
    const liveness = this.#specs.liveness;
    if (liveness) {
      let failures = 0;
      this.#loop('liveness', liveness, (o) => {
        failures = o.ok ? 0 : failures + 1;
        if (failures >= liveness.failureThreshold) {
          this.#on.dead(`liveness probe ${liveness.path} failed ${failures} times in a row: ${o.detail}`);
          return false;
        }
        return true;
      });
    }
  }

  /** Probes after the initial delay, then every period while `next` returns true. */
  #loop(kind: ProbeKind, spec: ProbeSpec, next: (o: ProbeOutcome) => boolean): void {
    const schedule = (ms: number) => {
      const t = setTimeout(async () => {
        this.#timers.delete(t);
        if (this.#stopped) return;
        const o = await probeOnce(this.#instance, spec, kind);
        if (this.#stopped) return;
        if (next(o)) schedule(spec.periodSeconds * 1000);
      }, ms);
      t.unref();
      this.#timers.add(t);
    };
    schedule(spec.initialDelaySeconds * 1000);
  }

  stop(): void {
    this.#stopped = true;
    for (const t of this.#timers) clearTimeout(t);
    this.#timers.clear();
  }
}
