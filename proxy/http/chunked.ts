/**
 * A streaming, strict decoder for chunked request bodies (RFC 9112 §7.1). Sizes are hex digits
 * only (at most 15 digits and 2^44, so they stay exact integers), extensions are tokens and quoted strings with no
 * control characters, every chunk ends in CRLF, and the trailer section is read and dropped
 * (its total size bounded). Anything else is a 400: a proxy that reads a chunk boundary
 * differently from its upstream is a request-smuggling hole.
 */
import { TideError } from '../../lib/errors.ts';

const S_SIZE = 0;
const S_EXT = 1;
const S_SIZE_LF = 2;
const S_DATA = 3;
const S_DATA_CR = 4;
const S_DATA_LF = 5;
const S_TRAILER = 6;
const S_TRAILER_LF = 7;
const S_DONE = 8;

const MAX_LINE = 4096;
const MAX_TRAILERS = 16 * 1024;

function bad(message: string): TideError {
  return new TideError('ERR_BAD_REQUEST', `bad chunked body: ${message}`, { status: 400 });
}

function hexValue(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  if (c >= 97 && c <= 102) return c - 87;
  if (c >= 65 && c <= 70) return c - 55;
  return -1;
}

export class ChunkedDecoder {
  #state = S_SIZE;
  #size = 0;
  #digits = 0;
  #line = 0;
  #trailerBytes = 0;
  #trailerLineEmpty = true;
  #quoted = false;
  #escaped = false;

  get done(): boolean {
    return this.#state === S_DONE;
  }

  /**
   * Decodes from `buf`, handing each piece of body data to `onData` (views into `buf`). Returns
   * how many bytes it consumed: less than `buf.length` only once the body is complete.
   */
  feed(buf: Buffer, onData: (chunk: Buffer) => void): number {
    let i = 0;
    const n = buf.length;
    while (i < n) {
      const c = buf[i] as number;
      switch (this.#state) {
        case S_SIZE: {
          const h = hexValue(c);
          if (h >= 0) {
            if (++this.#digits > 15) throw bad('the chunk size is too long');
            if (this.#size > 0xfffffffffff) throw bad('the chunk size is too large');
            this.#size = this.#size * 16 + h;
          } else if (this.#digits === 0) {
            throw bad('a chunk size must start with a hex digit');
          } else if (c === 59 /* ; */) {
            this.#state = S_EXT;
            this.#line = 0;
          } else if (c === 13) {
            this.#state = S_SIZE_LF;
          } else {
            throw bad(`unexpected byte 0x${c.toString(16)} in a chunk size`);
          }
          i++;
          break;
        }
        case S_EXT: {
          if (this.#escaped) this.#escaped = false;
          else if (c === 92 /* \ */ && this.#quoted) this.#escaped = true;
          else if (c === 34 /* " */) this.#quoted = !this.#quoted;
          if (c === 13 && !this.#quoted) this.#state = S_SIZE_LF;
          else if ((c < 32 && c !== 9) || c === 127) throw bad('a chunk extension has a control character');
          if (++this.#line > MAX_LINE) throw bad('a chunk extension is too long');
          i++;
          break;
        }
        case S_SIZE_LF: {
          if (c !== 10) throw bad('a chunk size line must end in CRLF');
          i++;
          this.#digits = 0;
          if (this.#size === 0) {
            this.#state = S_TRAILER;
            this.#trailerLineEmpty = true;
          } else {
            this.#state = S_DATA;
          }
          break;
        }
        case S_DATA: {
          const take = Math.min(this.#size, n - i);
          onData(buf.subarray(i, i + take));
          this.#size -= take;
          i += take;
          if (this.#size === 0) this.#state = S_DATA_CR;
          break;
        }
        case S_DATA_CR:
          if (c !== 13) throw bad('chunk data is longer than its size');
          this.#state = S_DATA_LF;
          i++;
          break;
        case S_DATA_LF:
          if (c !== 10) throw bad('chunk data must end in CRLF');
          this.#state = S_SIZE;
          i++;
          break;
        case S_TRAILER: {
          if (++this.#trailerBytes > MAX_TRAILERS) throw bad('the trailer section is too large');
          if (c === 13) this.#state = S_TRAILER_LF;
          else if ((c < 32 && c !== 9) || c === 127) throw bad('a trailer field has a control character');
          else this.#trailerLineEmpty = false;
          i++;
          break;
        }
        case S_TRAILER_LF: {
          if (c !== 10) throw bad('a trailer line must end in CRLF');
          i++;
          if (this.#trailerLineEmpty) {
            this.#state = S_DONE;
            return i;
          }
          this.#trailerLineEmpty = true;
          this.#state = S_TRAILER;
          break;
        }
        default:
          return i;
      }
    }
    return i;
  }
}
