/**
 * Function logs: what functions print with console.*, and what the node agent has to say about
 * their instances (replaced after a timeout, over memory, …), as JSON lines per function under
 * <data-dir>/logs/<function>.log. Worker threads publish on a BroadcastChannel; this sink
 * appends and fans out to followers (`tide logs -f`).
 */
import { createWriteStream, type WriteStream } from 'node:fs';
import { mkdir, open } from 'node:fs/promises';
import { join } from 'node:path';
import type { LogLine, LogSource } from '../../control/api/server.ts';
import { LOG_CHANNEL } from '../sandbox/worker/protocol.ts';

const TAIL_READ_BYTES = 4 * 1024 * 1024;

export class FunctionLogs implements LogSource {
  readonly #dir: string;
  readonly #streams = new Map<string, WriteStream>();
  readonly #followers = new Map<string, Set<(line: LogLine) => void>>();
  readonly #channel: BroadcastChannel;
  #ready: Promise<void>;

  constructor(dir: string) {
    this.#dir = dir;
    this.#ready = mkdir(dir, { recursive: true }).then(() => undefined);
    this.#channel = new BroadcastChannel(LOG_CHANNEL);
    this.#channel.onmessage = (ev) => this.append((ev as MessageEvent<LogLine>).data);
    (this.#channel as unknown as { unref(): void }).unref();
  }

  append(line: LogLine): void {
    if (!line || typeof line.function !== 'string' || !/^[a-z0-9-]+$/.test(line.function)) return;
    let stream = this.#streams.get(line.function);
    if (!stream) {
      stream = createWriteStream(join(this.#dir, `${line.function}.log`), { flags: 'a', mode: 0o600 });
      stream.on('error', () => {});
      this.#streams.set(line.function, stream);
    }
    stream.write(`${JSON.stringify(line)}\n`);
    for (const f of this.#followers.get(line.function) ?? []) f(line);
  }

  async tail(fn: string, lines: number): Promise<LogLine[]> {
    await this.#ready;
    if (lines <= 0) return [];
    await this.#flush(fn);
    let text = '';
    try {
      const file = await open(join(this.#dir, `${fn}.log`), 'r');
      try {
        const { size } = await file.stat();
        const start = Math.max(0, size - TAIL_READ_BYTES);
        const buf = Buffer.alloc(size - start);
        await file.read(buf, 0, buf.length, start);
        text = buf.toString('utf8');
        if (start > 0) text = text.slice(text.indexOf('\n') + 1);
      } finally {
        await file.close();
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    const out: LogLine[] = [];
    for (const raw of text.split('\n').slice(-lines - 1)) {
      if (!raw) continue;
      try {
        out.push(JSON.parse(raw) as LogLine);
      } catch {
        // A torn last line after a crash is skipped.
      }
    }
    return out.slice(-lines);
  }

  follow(fn: string, listener: (line: LogLine) => void): () => void {
    let set = this.#followers.get(fn);
    if (!set) {
      set = new Set();
      this.#followers.set(fn, set);
    }
    set.add(listener);
    return () => {
      set.delete(listener);
    };
  }

  async #flush(fn: string): Promise<void> {
    const stream = this.#streams.get(fn);
    if (stream && stream.writableLength > 0) await new Promise<void>((r) => stream.write('', () => r()));
  }

  async close(): Promise<void> {
    this.#channel.close();
    await Promise.all([...this.#streams.values()].map((s) => new Promise<void>((r) => s.end(() => r()))));
    this.#streams.clear();
  }
}
