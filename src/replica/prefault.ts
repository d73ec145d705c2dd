/**
 * Faulting fresh memory in before it is needed, on the calling thread or in the background.
 *
 * Why: first-touch page faults interleaved with a copy make it several times slower (measured on a 256 MiB replica:
 * the first full sync's apply took 1.0 s into fresh memory against 0.23 s up front plus 0.07 s), so a standby
 * touches its replica and staging memory when a session starts. But a guest of many GiB takes seconds to fault in
 * (several on a VM whose faults are slow), and a standby that did it before answering HELLO made the primary give up
 * waiting (connectTimeoutMs). So a large standby answers HELLO at once and faults in its memory in slices between
 * I/O callbacks ({@link BackgroundPrefault}), while the full sync already streams in.
 *
 * Why the touch keeps every byte: frames may land in the memory before the background pass reaches it, so a page is
 * faulted in by writing each touched byte back with its own value (one JavaScript thread: nothing writes it in
 * between), never by writing zeros.
 */
import type { TimerHandle, Timers } from '../time/timers.js';

/** The page size the touches step by: every 4 KiB page gets one write. */
const TOUCH_STEP_BYTES = 4096;

/** Bytes faulted in per background slice (~10-100 ms of page faults, so heartbeats and frames interleave). */
export const PREFAULT_SLICE_BYTES = 32 << 20;

/** Writes one byte of every page of `buffer[fromBytes, toBytes)` back with its own value: the kernel maps the pages. */
export function touchPages(buffer: Uint8Array, fromBytes = 0, toBytes = buffer.byteLength): void {
  for (let i = fromBytes; i < toBytes; i += TOUCH_STEP_BYTES) buffer[i] = buffer[i]!;
}

/** Faults buffers in, {@link PREFAULT_SLICE_BYTES} per timer turn; see the module comment. */
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
    let budget = this.sliceBytes;
    while (!this.finished && budget > 0) {
      const buffer = this.buffers[this.index]!;
      const end = Math.min(buffer.byteLength, this.offsetBytes + budget);
      touchPages(buffer, this.offsetBytes, end);
      budget -= end - this.offsetBytes;
      this.doneBytesNow += end - this.offsetBytes;
      this.offsetBytes = end;
      if (end >= buffer.byteLength) {
        this.index += 1;
        this.offsetBytes = 0;
      }
    }
    this.schedule();
  }
}
