/**
 * Send buffers for captured pages, reused from epoch to epoch.
 *
 * Why: every epoch copies its dirty pages out of the guest (the guest runs again while they stream). A new buffer
 * per epoch is garbage a few milliseconds later, and at hundreds of epochs a second that garbage is what the
 * process spends its time collecting (external-memory pressure starts a scavenge every few epochs) and what its
 * resident size is made of. The primary hands a capture back once its epoch is committed (VmAdapter.releaseCapture),
 * when nothing refers to its pages any more: the frames that carried them were received by the secondary, so they
 * left this process's socket long before.
 *
 * Bounded: at most `buffersMax` free buffers and `freeBytesMax` free bytes are kept; beyond, a returned buffer is
 * left to the garbage collector. Buffers are SharedArrayBuffers when `shared`, so a PagesWorkerPool can read the
 * pages in place.
 */
import { KemariError } from '../errors.js';
import type { EpochCapture, PrecopyChunk } from './adapter.js';

/** Options of {@link CaptureBuffers}. */
export interface CaptureBuffersOptions {
  /** Free buffers kept for reuse; default 2 (a pipeline of two epochs: each ack frees the buffer the next capture takes). */
  buffersMax?: number;
  /** Free bytes kept for reuse; default 256 MiB. */
  freeBytesMax?: number;
  /**
   * How a new buffer's capacity is rounded up: to the next MiB (default; for sizes that change little from one use
   * to the next), or to the next power of two of at least a MiB (for sizes that vary widely, such as the pages an
   * epoch sends whole: the next one then fits the buffer the last one freed, and no buffer of the size just missed
   * is kept beside it).
   */
  capacity?: 'granule' | 'power-of-two';
}

/** Buffers grow in steps of this many bytes, so an epoch a little larger than the last still reuses a buffer. */
const GRANULE_BYTES = 1 << 20;

export class CaptureBuffers {
  private readonly free: ArrayBufferLike[] = [];
  private freeBytes = 0;
  private readonly lent = new WeakSet<ArrayBufferLike>();
  private readonly sendOf = new WeakMap<EpochCapture | PrecopyChunk, Uint8Array>();
  private readonly buffersMax: number;
  private readonly freeBytesMax: number;
  private readonly powerOfTwo: boolean;
  /** Buffers allocated, and taken from the free list, since creation (for tests and stats). */
  allocated = 0;
  reused = 0;

  constructor(options: CaptureBuffersOptions = {}) {
    this.buffersMax = options.buffersMax ?? 2;
    this.freeBytesMax = options.freeBytesMax ?? 256 << 20;
    this.powerOfTwo = options.capacity === 'power-of-two';
    if (options.capacity !== undefined && options.capacity !== 'granule' && !this.powerOfTwo) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', "capture buffers: capacity must be 'granule' or 'power-of-two'", { details: { capacity: options.capacity } });
    }
    if (!Number.isSafeInteger(this.buffersMax) || this.buffersMax < 0 || !Number.isSafeInteger(this.freeBytesMax) || this.freeBytesMax < 0) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', 'capture buffers: buffersMax and freeBytesMax must be non-negative integers', {
        details: { buffersMax: this.buffersMax, freeBytesMax: this.freeBytesMax },
      });
    }
  }

  /**
   * A view of exactly `bytes` bytes, starting at offset 0 of its buffer (page-aligned views stay page-aligned), of
   * uninitialized content: the smallest free buffer that holds it (of the wanted kind), else a new one.
   */
  take(bytes: number, shared: boolean): Uint8Array {
    let best = -1;
    for (let i = 0; i < this.free.length; i++) {
      const buffer = this.free[i]!;
      if (buffer.byteLength < bytes || buffer instanceof SharedArrayBuffer !== shared) continue;
      if (best < 0 || buffer.byteLength < this.free[best]!.byteLength) best = i;
    }
    let buffer: ArrayBufferLike;
    if (best >= 0) {
      buffer = this.free.splice(best, 1)[0]!;
      this.freeBytes -= buffer.byteLength;
      this.reused += 1;
    } else {
      const capacity = this.powerOfTwo ? Math.max(GRANULE_BYTES, 2 ** Math.ceil(Math.log2(Math.max(1, bytes)))) : Math.ceil(bytes / GRANULE_BYTES) * GRANULE_BYTES;
      // allocUnsafeSlow: a dedicated buffer, not zero-filled (every byte handed out is written by the capture).
      buffer = shared ? new SharedArrayBuffer(capacity) : Buffer.allocUnsafeSlow(capacity).buffer;
      this.allocated += 1;
    }
    this.lent.add(buffer);
    return new Uint8Array(buffer, 0, bytes);
  }

  /**
   * Takes back a buffer handed out by {@link take} (any view of it); the caller must not use it afterwards. A
   * buffer not lent by this pool, or given back twice, is ignored (never handed out twice at once).
   */
  give(view: Uint8Array): void {
    const buffer = view.buffer;
    if (!this.lent.has(buffer)) return;
    this.lent.delete(buffer);
    if (buffer.byteLength > this.freeBytesMax || this.buffersMax === 0) return;
    // Over a bound: drop smaller free buffers for this one (larger buffers serve more epochs), else drop this one.
    while (this.free.length >= this.buffersMax || this.freeBytes + buffer.byteLength > this.freeBytesMax) {
      let smallest = 0;
      for (let i = 1; i < this.free.length; i++) if (this.free[i]!.byteLength < this.free[smallest]!.byteLength) smallest = i;
      if (this.free[smallest]!.byteLength >= buffer.byteLength) return;
      this.freeBytes -= this.free[smallest]!.byteLength;
      this.free.splice(smallest, 1);
    }
    this.free.push(buffer);
    this.freeBytes += buffer.byteLength;
  }

  /** Records that the pages of `owner` (a capture or a pre-copied chunk) live in `send` (from {@link take}), for {@link release}. */
  own(owner: EpochCapture | PrecopyChunk, send: Uint8Array): void {
    if (send.length > 0) this.sendOf.set(owner, send);
  }

  /**
   * Takes back the send buffer of a capture or chunk recorded with {@link own} (VmAdapter.releaseCapture,
   * releasePrecopy); others are ignored.
   */
  release(owner: EpochCapture | PrecopyChunk): void {
    const send = this.sendOf.get(owner);
    if (send === undefined) return;
    this.sendOf.delete(owner);
    this.give(send);
  }

  /**
   * Drops every free buffer (to the garbage collector): for a pool whose use is over for now, such as the
   * pre-copy chunks once a full sync is done, whose buffers would otherwise stay resident until the next one.
   */
  trim(): void {
    this.free.length = 0;
    this.freeBytes = 0;
  }

  /** Free bytes held for reuse. */
  get bytesFree(): number {
    return this.freeBytes;
  }
}
