/**
 * The CLI's view of the control API: where it is (flags, env, or the data directory that
 * `tide up` wrote), its token, and JSON calls that turn API errors into TideErrors.
 */
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { type ErrorCode, TideError } from '../lib/errors.ts';

export interface Target {
  api: string;
  token: string;
  gateway?: string;
}

export interface ConnectOptions {
  api?: string;
  token?: string;
  dataDir?: string;
}

export async function locate(opts: ConnectOptions): Promise<Target> {
  const dataDir = resolve(opts.dataDir ?? process.env.TIDE_DATA_DIR ?? './.tide');
  let api = opts.api ?? process.env.TIDE_API;
  let token = opts.token ?? process.env.TIDE_TOKEN;
  let gateway: string | undefined;
  if (!api) {
    const raw = await readFile(join(dataDir, 'endpoint.json'), 'utf8').catch(() => undefined);
    if (raw === undefined) {
      throw new TideError('ERR_API_UNREACHABLE', `no running Tide found: ${join(dataDir, 'endpoint.json')} does not exist`, {
        hint: 'start one with `tide up` (in this folder), or pass --data-dir DIR, or --api URL and --token TOKEN',
      });
    }
    try {
      const ep = JSON.parse(raw) as { api: string; gateway?: string };
      api = ep.api;
      gateway = ep.gateway;
    } catch {
      throw new TideError('ERR_DATA_DIR', `${join(dataDir, 'endpoint.json')} is damaged (not JSON)`, { hint: 'restart `tide up`; it rewrites the file' });
    }
  }
  if (!token) {
    const raw = await readFile(join(dataDir, 'token'), 'utf8').catch(() => undefined);
    if (raw === undefined) {
      throw new TideError('ERR_UNAUTHORIZED', `no API token: ${join(dataDir, 'token')} does not exist`, {
        hint: 'pass --token, set TIDE_TOKEN, or point --data-dir at the folder `tide up` uses',
      });
    }
    token = raw.trim();
  }
  return { api: api.replace(/\/+$/, ''), token, gateway };
}

export class ApiClient {
  readonly target: Target;
  constructor(target: Target) {
    this.target = target;
  }

  async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const res = await this.raw(method, path, body);
    const text = await res.text();
    let data: unknown;
    try {
      data = text ? JSON.parse(text) : {};
    } catch {
      throw new TideError('ERR_INTERNAL', `the API answered ${res.status} with something that is not JSON`);
    }
    if (!res.ok) {
      const e = (data as { error?: { code?: string; message?: string; hint?: string | null } & Record<string, unknown> }).error ?? {};
      const { code, message, hint, ...details } = e;
      throw new TideError((code ?? 'ERR_INTERNAL') as ErrorCode, message ?? `the API answered ${res.status}`, {
        status: res.status,
        hint: hint ?? undefined,
        details,
      });
    }
    return data as T;
  }

  async raw(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<Response> {
    try {
      return await fetch(`${this.target.api}${path}`, {
        method,
        headers: { authorization: `Bearer ${this.target.token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
      });
    } catch (err) {
      const cause = (err as { cause?: { code?: string; message?: string; errors?: { code?: string }[] } }).cause;
      const code = cause?.code ?? cause?.errors?.[0]?.code ?? cause?.message;
      throw new TideError('ERR_API_UNREACHABLE', `cannot reach the Tide API at ${this.target.api}${code ? ` (${code})` : ''}`, {
        hint: 'is `tide up` running? (its data directory holds endpoint.json)',
      });
    }
  }
}
