/**
 * Streaming frame decoder: a two-state machine (need a header, need a body) over a list of received chunks.
 *
 * - Bytes are consumed as views (`subarray`) of the chunks pushed; a header or body is copied only when it spans
 *   chunks, into a fresh buffer, so frames handed on never share memory the decoder will write again.
 * - The header is verified (magic, version, header CRC, type, flags, txn, body length against `bodyBytesMax`)
 *   as soon as its 32 bytes are in, before a body byte is awaited; so the decoder never holds more than one
 *   partial frame: after `push` returns, `bufferedBytes` < max(HEADER_BYTES, bodyBytesMax).
 * - The body CRC is verified, then the body decoded by type, before the frame is handed on.
 * - A decoder that has seen a bad byte stays failed: every later call throws the same {@link KemariError}. It never
 *   resynchronises on its own; its owner drops the connection.
 *
 * Chunks are borrowed, not copied: the caller must not modify a chunk after pushing it while frames decoded from it
 * are in use (Node's socket 'data' chunks are never reused, so sockets need no care).
 */
import { KemariError } from '../errors.js';
import { crc32c } from './checksum.js';
import { decodeBody } from './frame.js';
import type { DecodedFrame } from './frame.js';
import { HEADER_BYTES, MAGIC, readHeader } from './header.js';
import type { FrameHeader } from './header.js';

/** Options for {@link FrameDecoder}. */
export interface FrameDecoderOptions {
  /**
   * Largest frame body accepted, in bytes; larger declared lengths fail with KEMARI_FRAME_TOO_LARGE before any of
   * the body is buffered. Default 16 MiB.
   */
  bodyBytesMax?: number;
  /**
   * Supplies the memory a body spanning several chunks is copied into (the one copy on the receive path), so a
   * receiver can assemble bodies straight into its staging area instead of a fresh buffer per frame (fresh large
   * buffers cost a page fault per page on first touch). It must return exactly `bodyBytes` bytes that nothing else
   * uses while the frame is alive. Default: a new zero-filled Uint8Array.
   */
  allocateBody?: (bodyBytes: number) => Uint8Array;
}

/** Default limit on one frame body. */
export const DEFAULT_BODY_BYTES_MAX = 16 << 20;

export class FrameDecoder {
  /** The limit this decoder enforces on body lengths. */
  readonly bodyBytesMax: number;
  private readonly chunks: Uint8Array[] = [];
  private buffered = 0;
  private header: FrameHeader | undefined;
  private failure: KemariError | undefined;
  private readonly headerScratch = new Uint8Array(HEADER_BYTES);
  private framesDecoded = 0;
  private readonly allocateBody: (bodyBytes: number) => Uint8Array;

  constructor(options: FrameDecoderOptions = {}) {
    const bodyBytesMax = options.bodyBytesMax ?? DEFAULT_BODY_BYTES_MAX;
    if (!Number.isInteger(bodyBytesMax) || bodyBytesMax < 0 || bodyBytesMax > 0xffff_ffff) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', 'bodyBytesMax must be an integer in [0, 2^32 - 1]', {
        details: { bodyBytesMax },
      });
    }
    this.bodyBytesMax = bodyBytesMax;
    this.allocateBody = options.allocateBody ?? ((bodyBytes) => new Uint8Array(bodyBytes));
  }

  /** Bytes received and not yet handed on as a frame (at most one partial frame). */
  get bufferedBytes(): number {
    return this.buffered;
  }

  /** Frames handed on so far. */
  get frameCount(): number {
    return this.framesDecoded;
  }

  /** The error that failed this decoder, if any. */
  get error(): KemariError | undefined {
    return this.failure;
  }

  /**
   * Feeds received bytes. Calls `onFrame` for each complete, verified frame, in order. Throws the KemariError of
   * the first bad byte after handing on every good frame before it; from then on the decoder is failed.
   */
  push(chunk: Uint8Array, onFrame: (frame: DecodedFrame) => void): void {
    if (this.failure !== undefined) throw this.failure;
    if (chunk.byteLength > 0) {
      this.chunks.push(chunk);
      this.buffered += chunk.byteLength;
    }
    for (;;) {
      const frame = this.next();
      if (frame === undefined) return;
      // An exception from onFrame is the caller's: it propagates, and the decoder stays consistent (the frame was
      // consumed); the rest of the input is decoded on the next push.
      onFrame(frame);
    }
  }

  /** Declares the end of the stream: throws KEMARI_TRUNCATED if a frame was cut short. */
  end(): void {
    if (this.failure !== undefined) throw this.failure;
    if (this.buffered > 0 || this.header !== undefined) {
      const error = new KemariError('KEMARI_TRUNCATED', 'stream ended inside a frame', {
        details: { bufferedBytes: this.buffered, awaitingBodyBytes: this.header?.bodyBytes },
      });
      this.fail(error);
      throw error;
    }
  }

  /** The next complete verified frame, or undefined when more bytes are needed. Fails the decoder on bad input. */
  private next(): DecodedFrame | undefined {
    try {
      if (this.header === undefined) {
        if (this.buffered < HEADER_BYTES) {
          // Refuse a stream that is not kemari as soon as its first 4 bytes are in, not after 32.
          if (this.buffered >= MAGIC.byteLength) this.checkMagic();
          return undefined;
        }
        this.header = readHeader(this.consumeHeader(), this.bodyBytesMax);
      }
      const header = this.header;
      if (this.buffered < header.bodyBytes) return undefined;
      const body = this.consume(header.bodyBytes);
      this.header = undefined;
      return this.verify(header, body);
    } catch (error) {
      // A non-KemariError here is a bug in a body codec: it propagates as it is (so tests see it), and the decoder
      // is failed all the same, since its position in the stream is no longer known.
      this.fail(
        error instanceof KemariError
          ? error
          : new KemariError('KEMARI_BAD_BODY', 'frame body could not be decoded', { cause: error }),
      );
      throw error;
    }
  }

  private verify(header: FrameHeader, body: Uint8Array): DecodedFrame {
    const actual = crc32c(body);
    if (actual !== header.bodyCrc) {
      throw new KemariError('KEMARI_BODY_CHECKSUM', 'frame body checksum mismatch', {
        details: { type: header.type, txn: header.txn, seq: header.seq, expected: header.bodyCrc, actual },
      });
    }
    const frame = {
      type: header.type,
      txn: header.txn,
      seq: header.seq,
      body: decodeBody(header.type, header.flags, body),
      flags: header.flags,
      bodyBytes: header.bodyBytes,
      bodyCrc: header.bodyCrc,
    } as unknown as DecodedFrame;
    this.framesDecoded += 1;
    return frame;
  }

  private checkMagic(): void {
    for (let i = 0, chunk = 0, at = 0; i < MAGIC.byteLength; i++, at++) {
      while (at >= this.chunks[chunk]!.byteLength) {
        chunk += 1;
        at = 0;
      }
      if (this.chunks[chunk]![at] !== MAGIC[i]) {
        // readHeader reports the bad magic with its details; pad what we have to a header's length.
        const probe = new Uint8Array(HEADER_BYTES);
        this.gather(probe, MAGIC.byteLength);
        readHeader(probe, this.bodyBytesMax);
      }
    }
  }

  private fail(error: KemariError): void {
    this.failure = error;
    this.chunks.length = 0;
    this.buffered = 0;
    this.header = undefined;
  }

  /** The next 32 bytes; a view when they lie in one chunk, else gathered into the scratch (parsed at once). */
  private consumeHeader(): Uint8Array {
    const first = this.chunks[0]!;
    if (first.byteLength >= HEADER_BYTES) return this.consume(HEADER_BYTES);
    this.gather(this.headerScratch, HEADER_BYTES);
    return this.headerScratch;
  }

  /** The next `n` bytes: a view when they lie in one chunk, else a fresh copy. */
  private consume(n: number): Uint8Array {
    this.buffered -= n;
    if (n === 0) return new Uint8Array(0);
    const first = this.chunks[0]!;
    if (first.byteLength === n) {
      this.chunks.shift();
      return asUint8Array(first);
    }
    if (first.byteLength > n) {
      this.chunks[0] = first.subarray(n);
      return asUint8Array(first.subarray(0, n));
    }
    this.buffered += n;
    const out = this.allocateBody(n);
    if (out.byteLength !== n) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', `allocateBody returned ${out.byteLength} bytes, not ${n}`);
    }
    this.gather(out, n);
    return out;
  }

  /** Copies the next `n` bytes (spanning chunks) into `out`. */
  private gather(out: Uint8Array, n: number): void {
    let offset = 0;
    while (offset < n) {
      const chunk = this.chunks[0]!;
      const take = Math.min(chunk.byteLength, n - offset);
      out.set(take === chunk.byteLength ? chunk : chunk.subarray(0, take), offset);
      offset += take;
      if (take === chunk.byteLength) this.chunks.shift();
      else this.chunks[0] = chunk.subarray(take);
    }
    this.buffered -= n;
  }
}

/** A plain Uint8Array view of the same bytes (Buffers are narrowed so decoded frames have one shape). */
function asUint8Array(bytes: Uint8Array): Uint8Array {
  return bytes.constructor === Uint8Array ? bytes : new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}
