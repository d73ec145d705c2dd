/**
 * Faulting fresh memory in before it is needed, on the calling thread or in the background.
 *
 * Why: first-touch page faults interleaved with a copy make it several times slower (measured on a 256 MiB replica:
 * the first full sync's apply took 1.0 s into fresh memory against 0.23 s up front plus 0.07 s), so a standby
 * touches its replica and staging memory when a session starts. But a guest of many GiB takes seconds to fault in
 * (several on a VM whose faults are slow), and a standby that did it before answering HELLO made the primary give up
 * waiting (connectTimeoutMs). So a large standby answers HELLO at once and faults in its memory in slices between
 * I/O callbacks ({@link BackgroundPrefault}), bounded in bytes and in time, while the full sync already streams in.
 *
 * Why the touch keeps every byte: frames may land in the memory before the background pass reaches it, so a page is
 * faulted in by writing each touched byte back with its own value (one JavaScript thread: nothing writes it in
 * between), never by writing zeros.
 */
import type { TimerHandle, Timers } from '../time/timers.js';

/** The page size the touches step by: every 4 KiB page gets one write. */
const TOUCH_STEP_BYTES = 4096;

/** Bytes faulted in per background slice at most (~10 ms of page faults on a host whose faults are fast). */
export const PREFAULT_SLICE_BYTES = 32 << 20;

/**
 * Time a background slice may take: it stops at the first step past it, so heartbeats and frames interleave even
 * where page faults are slow (measured on a VM host: 32 MiB took 90 ms to fault in, ~11 us a page).
 */
export const PREFAULT_SLICE_MS_MAX = 10;

/** A slice touches this much between looks at the clock. */
const PREFAULT_STEP_BYTES = 1 << 20;

/** Writes one byte of every page of `buffer[fromBytes, toBytes)` back with its own value: the kernel maps the pages. */
export function touchPages(buffer: Uint8Array, fromBytes = 0, toBytes = buffer.byteLength): void {
  for (let i = fromBytes; i < toBytes; i += TOUCH_STEP_BYTES) buffer[i] = buffer[i]!;
}

/**
 * Faults buffers in, at most {@link PREFAULT_SLICE_BYTES} and about {@link PREFAULT_SLICE_MS_MAX} per timer turn;
 * see the module comment.
 */
export class BackgroundPrefault {
  private index = 0;
  private offsetBytes = 0;
  private doneBytesNow = 0;
  private timer: TimerHandle | undefined;
  private stopped = false;
  /** Bytes of every buffer together. */
  readonly totalBytes: number;
  /** The buffers still to touch; dropped once finished or stopped, so the pass never keeps memory alive. */
  private buffers: readonly Uint8Array[];

  constructor(
    buffers: readonly Uint8Array[],
    private readonly timers: Timers,
    private readonly sliceBytes = PREFAULT_SLICE_BYTES,
    private readonly sliceMsMax = PREFAULT_SLICE_MS_MAX,
  ) {
    this.buffers = buffers;
    this.totalBytes = buffers.reduce((n, b) => n + b.byteLength, 0);
  }

  /** Bytes faulted in so far. */
  get doneBytes(): number {
    return this.doneBytesNow;
  }

  /** True once every buffer was touched (or it was stopped). */
  get finished(): boolean {
    return this.stopped || this.index >= this.buffers.length;
  }

  /** Starts the slices: the first one on the next timer turn. */
  start(): this {
    this.schedule();
    return this;
  }

  /** Stops (the memory then faults in on first use, as any memory does). Idempotent. */
  stop(): void {
    this.stopped = true;
    this.buffers = [];
    this.timers.clear(this.timer);
    this.timer = undefined;
  }

  private schedule(): void {
    if (this.finished) {
      this.buffers = [];
      return;
    }
    this.timer = this.timers.setTimeout(() => this.slice(), 0);
  }

  private slice(): void {
    this.timer = undefined;
    const deadlineMs = this.timers.now() + this.sliceMsMax;
    let budget = this.sliceBytes;
    while (!this.finished && budget > 0) {
      const buffer = this.buffers[this.index]!;
      const end = Math.min(buffer.byteLength, this.offsetBytes + Math.min(budget, PREFAULT_STEP_BYTES));
      touchPages(buffer, this.offsetBytes, end);
      budget -= end - this.offsetBytes;
      this.doneBytesNow += end - this.offsetBytes;
      this.offsetBytes = end;
      if (end >= buffer.byteLength) {
        this.index += 1;
        this.offsetBytes = 0;
      }
      if (this.timers.now() >= deadlineMs) break;
    }
    this.schedule();
  }
}
