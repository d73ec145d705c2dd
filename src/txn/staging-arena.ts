/**
 * Receive-side staging memory, allocated and faulted in once per session and reused for every transaction.
 *
 * A transaction must be held whole before it is applied (atomic epochs), so a standby needs staging memory as
 * large as its largest transaction, a full sync, anyway. Taking it from fresh allocations costs a page fault per
 * page on first touch, on the critical path of every transaction (measured: assembly of a 256 MiB full sync ran
 * at 0.46 GB/s into fresh buffers). The arena is a bump allocator over one pre-faulted buffer: `allocate` hands out
 * the next bytes, `reset` starts over once nothing staged is alive (every staged transaction applied). A request
 * that does not fit gets a fresh buffer, so the arena bounds nothing by itself: `txnBytesMax` does.
 */
import { touchPages } from '../replica/prefault.js';

/** What the receiver needs of staging memory: bodies to fill, and a point at which all of them are dead. */
export interface BodyAllocator {
  allocate(bytes: number): Uint8Array;
  reset(): void;
}

export class StagingArena implements BodyAllocator {
  private readonly buffer: Uint8Array;
  private used = 0;
  private overflowBytes = 0;

  /** `prefault: false` leaves faulting the memory in to the caller ({@link memory}, e.g. a BackgroundPrefault). */
  constructor(
    readonly capacityBytes: number,
    options: { prefault?: boolean } = {},
  ) {
    this.buffer = new Uint8Array(capacityBytes);
    if (options.prefault !== false) touchPages(this.buffer);
  }

  /** The arena's memory (for a caller that faults it in itself). */
  get memory(): Uint8Array {
    return this.buffer;
  }

  /** `bytes` bytes nothing else uses until the next reset. */
  allocate(bytes: number): Uint8Array {
    if (this.used + bytes <= this.buffer.byteLength) {
      const out = this.buffer.subarray(this.used, this.used + bytes);
      this.used += bytes;
      return out;
    }
    this.overflowBytes += bytes;
    return new Uint8Array(bytes);
  }

  /** Everything allocated so far is dead: start over. */
  reset(): void {
    this.used = 0;
  }

  /** Bytes handed out since the last reset. */
  get usedBytes(): number {
    return this.used;
  }

  /** Bytes that did not fit and were allocated fresh (since creation). */
  get overflowedBytes(): number {
    return this.overflowBytes;
  }
}
