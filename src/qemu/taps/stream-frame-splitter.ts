/**
 * Framing of QEMU's `-netdev stream` (QEMU 7.2): each Ethernet frame travels as a be32 length followed by the frame.
 *
 * Why a splitter of our own: the length comes from the other end of a socket, so it is checked against
 * `frameBytesMax` before a single body byte is buffered (invariant 5, bounded everything). A length of 0 or above the
 * bound means the stream lost its framing; nothing after it can be trusted, so the splitter refuses to go on.
 * Pure: no I/O, so it is tested at every split point.
 */
import { KemariError } from '../../errors.js';

/** Bytes of the be32 length that precedes every frame. */
export const STREAM_FRAME_HEADER_BYTES = 4;

/**
 * Default bound on one frame: 65 KiB is above the largest Ethernet frame that can carry an IP packet (65,535 bytes
 * plus a 14-byte header and a VLAN tag); `-netdev stream` carries no vnet header, so no larger GSO packets. QEMU's
 * own bound on its side is NET_BUFSIZE (69,632 bytes).
 */
export const NET_FRAME_BYTES_MAX_DEFAULT = 65 * 1024;

/** Largest bound the be32 length can express. */
const FRAME_BYTES_MAX_LIMIT = 0xffff_ffff;

/** The be32 length header for a frame of `frameBytes` bytes (write it, then the frame). */
export function encodeStreamFrameHeader(frameBytes: number): Uint8Array {
  if (!Number.isInteger(frameBytes) || frameBytes < 1 || frameBytes > FRAME_BYTES_MAX_LIMIT) {
    throw new KemariError('KEMARI_INVALID_ARGUMENT', `a stream frame must be 1..${FRAME_BYTES_MAX_LIMIT} bytes`, { details: { frameBytes } });
  }
  const header = new Uint8Array(STREAM_FRAME_HEADER_BYTES);
  new DataView(header.buffer).setUint32(0, frameBytes, false);
  return header;
}

/**
 * Splits a `-netdev stream` byte stream into frames. Each returned frame is a fresh copy: it never pins the
 * socket's (up to 64 KiB) chunk, so what a caller holds is exactly what it counts.
 */
export class StreamFrameSplitter {
  private readonly header = new Uint8Array(STREAM_FRAME_HEADER_BYTES);
  private headerFill = 0;
  private body: Uint8Array | undefined;
  private bodyFill = 0;
  private failure: KemariError | undefined;

  /** @param frameBytesMax Largest frame accepted, in bytes (the be32 length is checked against it before buffering). */
  constructor(readonly frameBytesMax: number = NET_FRAME_BYTES_MAX_DEFAULT) {
    if (!Number.isInteger(frameBytesMax) || frameBytesMax < 1 || frameBytesMax > FRAME_BYTES_MAX_LIMIT) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', `frameBytesMax must be an integer in 1..${FRAME_BYTES_MAX_LIMIT}`, { details: { frameBytesMax } });
    }
  }

  /**
   * Feeds bytes; returns the frames they complete, in order. Throws KEMARI_PROTOCOL (`details.length`) for a length
   * of 0 or above `frameBytesMax`; the splitter then refuses every later push, as the stream has lost its framing.
   */
  push(chunk: Uint8Array): Uint8Array[] {
    if (this.failure !== undefined) throw this.failure;
    const frames: Uint8Array[] = [];
    let at = 0;
    while (at < chunk.byteLength) {
      if (this.body === undefined) {
        const take = Math.min(STREAM_FRAME_HEADER_BYTES - this.headerFill, chunk.byteLength - at);
        this.header.set(chunk.subarray(at, at + take), this.headerFill);
        this.headerFill += take;
        at += take;
        if (this.headerFill < STREAM_FRAME_HEADER_BYTES) break;
        const length = new DataView(this.header.buffer).getUint32(0, false);
        if (length === 0 || length > this.frameBytesMax) {
          this.failure = new KemariError('KEMARI_PROTOCOL', `a stream frame length of ${length} is outside 1..${this.frameBytesMax}: the stream lost its framing`, {
            details: { length, frameBytesMax: this.frameBytesMax },
          });
          throw this.failure;
        }
        this.body = new Uint8Array(length);
        this.bodyFill = 0;
        this.headerFill = 0;
      }
      const take = Math.min(this.body.byteLength - this.bodyFill, chunk.byteLength - at);
      this.body.set(chunk.subarray(at, at + take), this.bodyFill);
      this.bodyFill += take;
      at += take;
      if (this.bodyFill === this.body.byteLength) {
        frames.push(this.body);
        this.body = undefined;
      }
    }
    return frames;
  }

  /** Bytes of an unfinished frame (header included) currently held. */
  get bufferedBytes(): number {
    return this.body === undefined ? this.headerFill : STREAM_FRAME_HEADER_BYTES + this.bodyFill;
  }
}
