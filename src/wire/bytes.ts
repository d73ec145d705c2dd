/**
 * Bounds-checked little-endian field access for frame bodies.
 *
 * Every body decoder reads through {@link BodyReader}, so a short or lying body becomes KEMARI_BAD_BODY at the
 * field that does not fit instead of a RangeError, an out-of-bounds view or a silently wrong number.
 */
import { KemariError } from '../errors.js';

const TWO_POW_32 = 0x1_0000_0000;
const UTF8_DECODER = new TextDecoder('utf-8', { fatal: true });
const UTF8_ENCODER = new TextEncoder();

/** Sequential reader over one frame body. Views it returns share memory with the body (no copies). */
export class BodyReader {
  private readonly view: DataView;
  private offset = 0;

  constructor(
    readonly body: Uint8Array,
    private readonly what: string,
  ) {
    this.view = new DataView(body.buffer, body.byteOffset, body.byteLength);
  }

  /** Bytes not yet read. */
  get remaining(): number {
    return this.body.byteLength - this.offset;
  }

  /** Throws KEMARI_BAD_BODY saying what is wrong with this body. */
  fail(message: string, details: Record<string, unknown> = {}): never {
    throw new KemariError('KEMARI_BAD_BODY', `${this.what}: ${message}`, { details: { ...details, offset: this.offset } });
  }

  private need(bytes: number): number {
    if (bytes > this.remaining) this.fail(`needs ${bytes} more bytes, has ${this.remaining}`);
    const at = this.offset;
    this.offset += bytes;
    return at;
  }

  u8(): number {
    return this.view.getUint8(this.need(1));
  }

  u16(): number {
    return this.view.getUint16(this.need(2), true);
  }

  u32(): number {
    return this.view.getUint32(this.need(4), true);
  }

  /** A u64 that must fit a JavaScript safe integer (<= 2^53 - 1). */
  u64(): number {
    const at = this.need(8);
    const high = this.view.getUint32(at + 4, true);
    if (high > 0x1f_ffff) this.fail('u64 field exceeds 2^53 - 1');
    return high * TWO_POW_32 + this.view.getUint32(at, true);
  }

  /** Reads a reserved field of `bytes` bytes and insists it is zero. */
  reserved(bytes: number): void {
    const at = this.need(bytes);
    for (let i = at; i < at + bytes; i++) {
      if (this.body[i] !== 0) {
        throw new KemariError('KEMARI_RESERVED_NONZERO', `${this.what}: reserved field is not zero`, {
          details: { offset: at },
        });
      }
    }
  }

  /** A view of the next `bytes` bytes. */
  bytes(bytes: number): Uint8Array {
    const at = this.need(bytes);
    return this.body.subarray(at, at + bytes);
  }

  /** A view of everything left. */
  rest(): Uint8Array {
    return this.bytes(this.remaining);
  }

  /** Strict UTF-8 of the next `bytes` bytes. */
  utf8(bytes: number): string {
    const raw = this.bytes(bytes);
    try {
      return UTF8_DECODER.decode(raw);
    } catch (cause) {
      return this.fail('invalid UTF-8', { cause: String(cause) });
    }
  }

  /** Insists the whole body was consumed: trailing bytes are an error, not padding. */
  end(): void {
    if (this.remaining !== 0) this.fail(`${this.remaining} trailing bytes`);
  }
}

/** Writer for the fixed-size part of a body. Variable data (pages, disk data) is passed on as views, not copied. */
export class BodyWriter {
  readonly bytes: Uint8Array;
  private readonly view: DataView;
  private offset = 0;

  constructor(byteLength: number) {
    this.bytes = new Uint8Array(byteLength);
    this.view = new DataView(this.bytes.buffer);
  }

  u8(value: number): this {
    this.view.setUint8(this.offset, value);
    this.offset += 1;
    return this;
  }

  u16(value: number): this {
    this.view.setUint16(this.offset, value, true);
    this.offset += 2;
    return this;
  }

  u32(value: number): this {
    this.view.setUint32(this.offset, value, true);
    this.offset += 4;
    return this;
  }

  u64(value: number): this {
    this.view.setUint32(this.offset, value >>> 0, true);
    this.view.setUint32(this.offset + 4, Math.floor(value / TWO_POW_32), true);
    this.offset += 8;
    return this;
  }

  zeros(bytes: number): this {
    this.offset += bytes;
    return this;
  }

  raw(data: Uint8Array): this {
    this.bytes.set(data, this.offset);
    this.offset += data.byteLength;
    return this;
  }
}

/** UTF-8 bytes of a string. */
export function utf8Bytes(text: string): Uint8Array {
  return UTF8_ENCODER.encode(text);
}

/** Writes `value` (a safe integer) as a little-endian u64 at `at`. */
export function setU53(view: DataView, at: number, value: number): void {
  view.setUint32(at, value >>> 0, true);
  view.setUint32(at + 4, Math.floor(value / TWO_POW_32), true);
}

/** Reads a little-endian u64 at `at`; undefined when it exceeds 2^53 - 1. */
export function getU53(view: DataView, at: number): number | undefined {
  const high = view.getUint32(at + 4, true);
  if (high > 0x1f_ffff) return undefined;
  return high * TWO_POW_32 + view.getUint32(at, true);
}
