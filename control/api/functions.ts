/**
 * Functions: deploy, list, describe, roll back and delete, as transactions on the Store.
 * A deploy stores the bundle by digest, has it checked by a BundleValidator (the node agent's
 * sandbox loads it and looks for `export default { fetch }`), then writes the revision and the
 * function's serving pointer in one compare-and-swap transaction. Any failure before that
 * transaction leaves the Store untouched. It never sits on the request path.
 */

import { rm } from 'node:fs/promises';
import { type Clock, systemClock } from '../../lib/clock.ts';
import { isTideError, TideError } from '../../lib/errors.ts';
import { chainId, readImage } from '../../lib/oci.ts';
import { type BlobStore, sha256 } from '../blobs.ts';
import type { KeyValue, Store, TxnOp } from '../store/index.ts';
import {
  DEFAULT_NAMESPACE,
  type FunctionConfig,
  type FunctionRecord,
  type ImageRef,
  keys,
  mergeStatuses,
  parseRevision,
  type RevisionRecord,
  type RevisionStatus,
  resolveFunctionConfig,
  revisionName,
  type SandboxKind,
  validateFunctionName,
  validateSandbox,
  validateVariables,
} from './schema/function.ts';
import { type RolloutRecord, rolloutKeys } from './schema/rollout.ts';
import { type RouteRecord, routeKeys } from './schema/route.ts';

/** Loads a stored bundle in a throwaway sandbox; throws ERR_FUNCTION_INVALID with the reason. */
export interface BundleValidator {
  validate(bundlePath: string, env: Record<string, string>): Promise<void>;
}

export interface DeployInput {
  name: string;
  /** The bundled module; not with `image`. */
  bundle?: Uint8Array;
  /** A container image on this node instead of a bundle (sandbox container). */
  image?: { path: string; command?: string[]; port?: number };
  source: string;
  env?: Record<string, string>;
  secrets?: Record<string, string>;
  config?: Partial<FunctionConfig>;
  /** Default worker. */
  sandbox?: SandboxKind;
  /** `tide apply` marks what it writes (see FunctionRecord.managedBy). */
  managedBy?: 'apply';
  /** Why, in the deployer's words; kept on the revision it creates. */
  changeCause?: string;
}

export interface DeployResult {
  function: FunctionRecord;
  revision: RevisionRecord;
  /** False when an identical revision existed and was reused. */
  created: boolean;
  /** Store revision of the write (the one before it when nothing was written). */
  storeRevision: number;
}

const CAS_ATTEMPTS = 5;

/** A deploy checked and readied (see Functions.prepare), not yet written. */
export interface PreparedDeploy {
  name: string;
  env: Record<string, string>;
  secrets: Record<string, string>;
  config: FunctionConfig;
  sandbox: SandboxKind;
  image: ImageRef | undefined;
  digest: string;
  templateHash: string;
  source: string;
  managedBy: 'apply' | undefined;
  changeCause: string | undefined;
}

/** Reads the image (not unpacking it) and settles what runs: the given command and port, else the image's. */
async function imageRef(input: { path: string; command?: string[]; port?: number }): Promise<ImageRef> {
  if (typeof input.path !== 'string' || !input.path.startsWith('/')) {
    throw new TideError('ERR_INVALID_ARGUMENT', `image must be an absolute path on the node (got ${JSON.stringify(input.path)})`, { status: 400 });
  }
  if (input.command !== undefined && (!Array.isArray(input.command) || input.command.some((c) => typeof c !== 'string') || input.command.length === 0)) {
    throw new TideError('ERR_INVALID_ARGUMENT', 'command must be a non-empty list of strings', { status: 400 });
  }
  if (input.port !== undefined && (!Number.isInteger(input.port) || input.port < 1 || input.port > 65535)) {
    throw new TideError('ERR_INVALID_ARGUMENT', `port must be an integer from 1 to 65535 (got ${JSON.stringify(input.port)})`, { status: 400 });
  }
  const info = await readImage(input.path);
  if (info.temp) await rm(info.temp, { recursive: true, force: true });
  const command = input.command ?? [...info.config.entrypoint, ...info.config.cmd];
  if (command.length === 0) {
    throw new TideError('ERR_IMAGE_INVALID', `image ${input.path} has no entrypoint or cmd: give one with --command`, { status: 422 });
  }
  return {
    source: info.source,
    kind: info.kind,
    digest: info.digest,
    chain: info.layers.length > 0 ? chainId(info.layers.map((l) => l.digest)) : '',
    command,
    env: info.config.env,
    workingDir: info.config.workingDir,
    port: input.port ?? (info.config.port || 8080),
  };
}

export class Functions {
  readonly #store: Store;
  readonly #blobs: BlobStore;
  readonly #validator: BundleValidator;
  readonly #clock: Clock;

  constructor(store: Store, blobs: BlobStore, validator: BundleValidator, clock: Clock = systemClock) {
    this.#store = store;
    this.#blobs = blobs;
    this.#validator = validator;
    this.#clock = clock;
  }

  async deploy(input: DeployInput): Promise<DeployResult> {
    const prepared = await this.prepare(input);
    for (let attempt = 1; ; attempt++) {
      const plan = await this.plan(prepared);
      try {
        if (plan.ops.length === 0) return { ...plan.result, storeRevision: plan.storeRevision };
        const storeRevision = await this.#store.txn(plan.ops);
        return { ...plan.result, storeRevision };
      } catch (err) {
        if (isTideError(err, 'ERR_STORE_CONFLICT') && attempt < CAS_ATTEMPTS) continue;
        throw err;
      }
    }
  }

  /**
   * Checks a deploy and readies what does not depend on the store's state: the bundle is
   * stored by digest and loaded once in a throwaway sandbox (or the image read). Writes no key.
   */
  async prepare(input: DeployInput): Promise<PreparedDeploy> {
    const name = validateFunctionName(input.name);
    const { env, secrets } = validateVariables(input.env, input.secrets);
    const config = resolveFunctionConfig(input.config);
    const sandbox = validateSandbox(input.sandbox ?? (input.image ? 'container' : undefined));
    let digest: string;
    let image: ImageRef | undefined;
    if (input.image) {
      if (input.bundle) throw new TideError('ERR_BAD_REQUEST', 'give a bundle or an image, not both', { status: 400 });
      if (sandbox !== 'container') throw new TideError('ERR_INVALID_ARGUMENT', 'an image runs in the container sandbox only', { status: 400 });
      image = await imageRef(input.image);
      digest = image.digest;
    } else {
      if (!(input.bundle instanceof Uint8Array) || input.bundle.length === 0) {
        throw new TideError('ERR_BAD_REQUEST', 'the bundle is empty', { status: 400 });
      }
      digest = await this.#blobs.put(input.bundle);
      await this.#validator.validate(this.#blobs.path(digest), { ...env, ...secrets });
    }
    const templateHash = sha256(JSON.stringify({ digest, env, secrets, config, sandbox, image }));
    if (input.changeCause !== undefined && (typeof input.changeCause !== 'string' || input.changeCause.length > 500)) {
      throw new TideError('ERR_INVALID_ARGUMENT', 'changeCause must be text of at most 500 characters', { status: 400 });
    }
    return {
      name,
      env,
      secrets,
      config,
      sandbox,
      image,
      digest,
      templateHash,
      source: input.source,
      managedBy: input.managedBy,
      changeCause: input.changeCause,
    };
  }

  /**
   * What a prepared deploy writes given the store now: nothing (an identical latest revision
   * that serves), a serving-pointer move back to it, or a new revision and the pointer, each
   * with a compare-and-swap on the function record.
   */
  async plan(p: PreparedDeploy): Promise<{ ops: TxnOp[]; result: Omit<DeployResult, 'storeRevision'>; storeRevision: number }> {
    const current = await this.#store.get(keys.function(p.name));
    const fn = current ? parse<FunctionRecord>(current) : undefined;
    const latest = fn ? await this.getRevision(fn.latestRevision) : undefined;
    const expect = current?.modRevision ?? 0;
    const mark = (f: FunctionRecord): FunctionRecord => {
      const { managedBy: _, ...rest } = f;
      return p.managedBy ? { ...rest, managedBy: p.managedBy } : rest;
    };
    if (fn && latest && latest.templateHash === p.templateHash) {
      if (fn.servingRevision !== latest.name || fn.managedBy !== p.managedBy) {
        const updated = mark({ ...fn, servingRevision: latest.name });
        return {
          ops: [{ type: 'put', key: keys.function(p.name), value: JSON.stringify(updated), expectModRevision: expect }],
          result: { function: updated, revision: latest, created: false },
          storeRevision: expect,
        };
      }
      return { ops: [], result: { function: fn, revision: latest, created: false }, storeRevision: expect };
    }
    const number = (fn?.revisionCounter ?? 0) + 1;
    const now = new Date(this.#clock.now()).toISOString();
    // With a Rollout, a new revision is the rollout's to bring in: the stable one keeps serving.
    const governed = fn !== undefined && (await this.#rolloutFor(p.name));
    const revision: RevisionRecord = {
      name: revisionName(p.name, number),
      namespace: DEFAULT_NAMESPACE,
      function: p.name,
      number,
      createdAt: now,
      digest: p.digest,
      templateHash: p.templateHash,
      source: p.source,
      ...(p.changeCause ? { changeCause: p.changeCause } : {}),
      sandbox: p.sandbox,
      ...(p.image ? { image: p.image } : {}),
      env: p.env,
      secrets: p.secrets,
      config: p.config,
    };
    const updated: FunctionRecord = mark({
      name: p.name,
      namespace: DEFAULT_NAMESPACE,
      createdAt: fn?.createdAt ?? now,
      servingRevision: governed && fn ? fn.servingRevision : revision.name,
      latestRevision: revision.name,
      revisionCounter: number,
    });
    return {
      ops: [
        { type: 'put', key: keys.revision(revision.name), value: JSON.stringify(revision), expectModRevision: 0 },
        { type: 'put', key: keys.function(p.name), value: JSON.stringify(updated), expectModRevision: expect },
      ],
      result: { function: updated, revision, created: true },
      storeRevision: expect,
    };
  }

  async #rolloutFor(fn: string): Promise<boolean> {
    const { items } = await this.#store.list(rolloutKeys.rollouts());
    return items.some((kv) => {
      const r = JSON.parse(kv.value) as RolloutRecord;
      return (r.spec.function ?? r.name) === fn;
    });
  }

  /** Stored Routes. */
  async routes(): Promise<RouteRecord[]> {
    const { items } = await this.#store.list(routeKeys.routes());
    return items.map((kv) => JSON.parse(kv.value) as RouteRecord);
  }

  async list(): Promise<FunctionRecord[]> {
    const { items } = await this.#store.list(keys.functions());
    return items.map((kv) => parse<FunctionRecord>(kv));
  }

  async get(name: string): Promise<FunctionRecord> {
    validateFunctionName(name);
    const kv = await this.#store.get(keys.function(name));
    if (!kv) throw notFound(name);
    return parse<FunctionRecord>(kv);
  }

  async getRevision(name: string): Promise<RevisionRecord | undefined> {
    const kv = await this.#store.get(keys.revision(name));
    return kv ? parseRevision(kv.value) : undefined;
  }

  /** Revisions of one function (or all), oldest first. */
  async revisions(fn?: string): Promise<RevisionRecord[]> {
    const { items } = await this.#store.list(keys.revisions());
    const all = items.map((kv) => parseRevision(kv.value));
    return all
      .filter((r) => fn === undefined || r.function === fn)
      .sort((a, b) => (a.function === b.function ? a.number - b.number : a.function < b.function ? -1 : 1));
  }

  async statuses(): Promise<Map<string, RevisionStatus>> {
    const { items } = await this.#store.list(keys.statuses());
    return mergeStatuses(items.map((kv) => parse<RevisionStatus>(kv)));
  }

  /**
   * Points the function back at an older revision: `to`, or the newest one older than the one
   * serving now. Returns the previous and new serving revisions.
   */
  async rollback(name: string, to?: string): Promise<{ from: string; to: string; function: FunctionRecord; storeRevision: number }> {
    for (let attempt = 1; ; attempt++) {
      const kv = await this.#store.get(keys.function(validateFunctionName(name)));
      if (!kv) throw notFound(name);
      const fn = parse<FunctionRecord>(kv);
      const revisions = await this.revisions(name);
      let target: RevisionRecord | undefined;
      if (to !== undefined) {
        target = revisions.find((r) => r.name === to || String(r.number) === to);
        if (!target) {
          throw new TideError('ERR_NOT_FOUND', `function ${name} has no revision ${to}`, {
            status: 404,
            hint: `its revisions: ${revisions.map((r) => r.name).join(', ')}`,
          });
        }
      } else {
        const serving = revisions.find((r) => r.name === fn.servingRevision);
        target = revisions.filter((r) => r.number < (serving?.number ?? 0)).at(-1);
        if (!target) {
          throw new TideError('ERR_BAD_REQUEST', `function ${name} has no revision older than ${fn.servingRevision}`, {
            status: 409,
            hint: 'use --to REVISION to pick one',
          });
        }
      }
      const updated = { ...fn, servingRevision: target.name };
      try {
        const storeRevision = await this.#store.put(keys.function(name), JSON.stringify(updated), { expectModRevision: kv.modRevision });
        return { from: fn.servingRevision, to: target.name, function: updated, storeRevision };
      } catch (err) {
        if (isTideError(err, 'ERR_STORE_CONFLICT') && attempt < CAS_ATTEMPTS) continue;
        throw err;
      }
    }
  }

  /** Deletes the function and all its revisions in one transaction. */
  async delete(name: string): Promise<{ revisions: string[] }> {
    const { ops, revisions } = await this.deleteOps(name);
    await this.#store.txn(ops);
    return { revisions };
  }

  /** What deleting a function writes: its record (compare-and-swap) and every revision. */
  async deleteOps(name: string): Promise<{ ops: TxnOp[]; revisions: string[] }> {
    const kv = await this.#store.get(keys.function(validateFunctionName(name)));
    if (!kv) throw notFound(name);
    const revisions = await this.revisions(name);
    return {
      ops: [
        { type: 'delete', key: keys.function(name), expectModRevision: kv.modRevision },
        ...revisions.map((r) => ({ type: 'delete' as const, key: keys.revision(r.name) })),
      ],
      revisions: revisions.map((r) => r.name),
    };
  }

  /**
   * Resolves once the node agent reports the revision ready; throws if it reports failure or
   * `timeoutMs` passes first.
   */
  async waitReady(revision: string, timeoutMs: number): Promise<RevisionStatus> {
    // One record per node that runs it: ready once any node serves it.
    const key = `${keys.status(revision)}/`;
    const first = await this.#store.list(key);
    const check = (kv: KeyValue): RevisionStatus | undefined => {
      if (!kv.key.startsWith(key)) return undefined;
      const status = parse<RevisionStatus>(kv);
      if (status.phase === 'failed') {
        throw new TideError('ERR_FUNCTION_INVALID', `revision ${revision} failed to start: ${status.lastError ?? 'unknown error'}`, { status: 422 });
      }
      if (status.phase === 'pending') {
        throw new TideError('ERR_UNSCHEDULABLE', `revision ${revision} is ${status.pending ?? 'Pending'}`, {
          status: 409,
          hint: 'it stays deployed and starts when a node has room; the last ready revision keeps serving. Free resources, lower memoryMb/cpuMillis, or add nodes',
        });
      }
      return status.phase === 'ready' ? status : undefined;
    };
    for (const kv of first.items) {
      const now = check(kv);
      if (now) return now;
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        watch.cancel();
        reject(new TideError('ERR_DEPLOY_TIMEOUT', `revision ${revision} was not ready within ${timeoutMs} ms`, { status: 504 }));
      }, timeoutMs);
      const watch = this.#store.watch(
        key,
        first.revision,
        (events) => {
          for (const e of events) {
            if (e.type !== 'put' || e.value === undefined) continue;
            try {
              const ready = check({ key: e.key, value: e.value, createRevision: 0, modRevision: e.revision, version: 0 });
              if (ready) {
                clearTimeout(timer);
                watch.cancel();
                resolve(ready);
                return;
              }
            } catch (err) {
              clearTimeout(timer);
              watch.cancel();
              reject(err);
              return;
            }
          }
        },
        (err) => {
          clearTimeout(timer);
          reject(err);
        },
      );
    });
  }
}

function parse<T>(kv: KeyValue): T {
  return JSON.parse(kv.value) as T;
}

function notFound(name: string): TideError {
  return new TideError('ERR_NOT_FOUND', `function ${name} not found`, { status: 404, hint: 'list functions with `tide get functions`' });
}
