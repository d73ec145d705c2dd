/**
 * A {@link memoryPair} with injected faults, for crash-point tests: cut the link after exactly N bytes have been
 * delivered in one direction, and deliver bytes in random splits and after random delays drawn from a seeded PRNG
 * (so a failing run can be replayed from its seed).
 *
 * Shipped in `src` (not `test`) so that tests of code built on kemari can use it too.
 */
import { EventEmitter } from 'node:events';
import { KemariError } from '../errors.js';
import type { Connection, ConnectionEvents } from './connection.js';
import { memoryPair } from './memory.js';

/** Which way bytes flow: from the first end of the pair to the second, or back. */
export type PairDirection = 'a-to-b' | 'b-to-a';

/** Options for {@link faultyPair}. Without any, it behaves like {@link memoryPair}. */
export interface FaultyPairOptions {
  /**
   * Cut the link once exactly this many bytes have been delivered in `cutDirection`: those bytes arrive (split as
   * they happen to be), not one more, and both ends then emit 'close' with KEMARI_CONNECTION_CLOSED
   * (`details.cutAfterBytes`, `details.cutDirection`). The cut happens right after the 'data' event that delivers
   * the last allowed byte; with 0, when the first bytes in that direction are about to be delivered (none are).
   * If fewer bytes are ever sent, there is no cut. Default: never cut.
   */
  cutAfterBytes?: number;
  /** The direction whose delivered bytes `cutAfterBytes` counts. Default "a-to-b". */
  cutDirection?: PairDirection;
  /** Seed of the PRNG behind splits and delays (each direction has its own stream). Default 1. */
  seed?: number;
  /** Split each delivered batch into pieces of random size from 1 to this many bytes. Default: no splitting. */
  chunkBytesMax?: number;
  /** Hold each delivered piece back for a random 0 to this many milliseconds (order is kept). Default 0. */
  delayMsMax?: number;
  /** High-water mark of the underlying {@link memoryPair} (delayed pieces do not count against it). Default 1 MiB. */
  highWaterMarkBytes?: number;
}

/**
 * Creates two connected in-memory ends with the faults of `options`. Apart from the faults it keeps
 * {@link memoryPair}'s contract: delivered chunks are copies, in order, asynchronous; an end receives nothing until
 * it has a 'data' listener; `close()` delivers what was written (splits and delays included) before both ends emit
 * 'close' with `undefined`; `close(error)` closes both at once; 'close' is emitted exactly once per end.
 *
 * Throws KEMARI_INVALID_ARGUMENT for invalid options.
 */
export function faultyPair(options: FaultyPairOptions = {}): [Connection, Connection] {
  const cutAfterBytes = options.cutAfterBytes;
  const cutDirection = options.cutDirection ?? 'a-to-b';
  const seed = options.seed ?? 1;
  const chunkBytesMax = options.chunkBytesMax;
  const delayMsMax = options.delayMsMax ?? 0;
  if (cutAfterBytes !== undefined && !(Number.isSafeInteger(cutAfterBytes) && cutAfterBytes >= 0)) {
    throw invalid('cutAfterBytes must be a non-negative safe integer', { cutAfterBytes });
  }
  if (cutDirection !== 'a-to-b' && cutDirection !== 'b-to-a') {
    throw invalid('cutDirection must be "a-to-b" or "b-to-a"', { cutDirection });
  }
  if (!Number.isSafeInteger(seed)) throw invalid('seed must be a safe integer', { seed });
  if (chunkBytesMax !== undefined && !(Number.isSafeInteger(chunkBytesMax) && chunkBytesMax >= 1)) {
    throw invalid('chunkBytesMax must be a positive safe integer', { chunkBytesMax });
  }
  if (!(Number.isSafeInteger(delayMsMax) && delayMsMax >= 0 && delayMsMax < 2 ** 31)) {
    throw invalid('delayMsMax must be a non-negative integer number of milliseconds', { delayMsMax });
  }
  const [innerA, innerB] = memoryPair(
    options.highWaterMarkBytes === undefined ? {} : { highWaterMarkBytes: options.highWaterMarkBytes },
  );
  const link: Link = { ends: [], cut: false, aborted: false };
  const fault = (direction: PairDirection, streamSeed: number): IncomingFaults => ({
    limitBytes: direction === cutDirection ? cutAfterBytes : undefined,
    cutError: new KemariError('KEMARI_CONNECTION_CLOSED', `the faulty pair was cut after ${cutAfterBytes} bytes ${cutDirection}`, {
      details: { peer: 'memory', cutAfterBytes, cutDirection },
    }),
    random: mulberry32(streamSeed),
    chunkBytesMax,
    delayMsMax,
  });
  // Each end applies the faults of the direction it receives.
  const a = new FaultyEnd(innerA, link, fault('b-to-a', (seed ^ 0x9e3779b9) >>> 0));
  const b = new FaultyEnd(innerB, link, fault('a-to-b', seed >>> 0));
  link.ends.push(a, b);
  return [a, b];
}

/** What the two ends share: each other, and whether the link was cut. */
interface Link {
  ends: FaultyEnd[];
  /** The cut happened. */
  cut: boolean;
  /** An end was closed with an error: deliver nothing more, the close events are on their way. */
  aborted: boolean;
}

/** The faults applied to the bytes one end receives. */
interface IncomingFaults {
  /** Deliver at most this many bytes, then cut. */
  limitBytes: number | undefined;
  cutError: KemariError;
  random: () => number;
  chunkBytesMax: number | undefined;
  delayMsMax: number;
}

/** One end: writes go straight to the inner memory end; what the inner end receives is queued, split, delayed, cut. */
class FaultyEnd implements Connection {
  readonly peer = 'memory';
  private readonly inner: Connection;
  private readonly link: Link;
  private readonly faults: IncomingFaults;
  private readonly events = new EventEmitter();
  /** Pieces received from the inner end and not yet delivered. */
  private queue: Uint8Array[] = [];
  private deliveredBytes = 0;
  private finished = false;
  /** The inner pair closed cleanly: deliver the queue, then close. */
  private innerEnded = false;
  private pumping = false;
  private timer: NodeJS.Timeout | undefined;
  private pumpScheduled = false;

  constructor(inner: Connection, link: Link, faults: IncomingFaults) {
    this.inner = inner;
    this.link = link;
    this.faults = faults;
    inner.on('data', this.onInnerData);
    inner.on('drain', () => {
      if (!this.finished) this.events.emit('drain');
    });
    inner.on('close', this.onInnerClose);
  }

  get bufferedBytes(): number {
    return this.inner.bufferedBytes;
  }

  get closed(): boolean {
    return this.finished || this.link.cut || this.inner.closed;
  }

  write(chunks: readonly Uint8Array[]): boolean {
    if (this.closed) return false;
    return this.inner.write(chunks);
  }

  close(error?: KemariError): void {
    if (this.finished || this.link.cut) return;
    if (error !== undefined) this.link.aborted = true;
    this.inner.close(error);
  }

  on<E extends keyof ConnectionEvents>(event: E, listener: ConnectionEvents[E]): this {
    this.events.on(event, listener);
    if (event === 'data' && this.queue.length > 0) this.schedulePump();
    return this;
  }

  off<E extends keyof ConnectionEvents>(event: E, listener: ConnectionEvents[E]): this {
    this.events.off(event, listener);
    return this;
  }

  private readonly onInnerData = (chunk: Uint8Array): void => {
    if (this.finished) return;
    const { chunkBytesMax, random } = this.faults;
    if (chunkBytesMax === undefined || chunk.length <= 1) {
      this.queue.push(chunk);
    } else {
      for (let offset = 0; offset < chunk.length; ) {
        const pieceBytes = Math.min(chunk.length - offset, 1 + Math.floor(random() * chunkBytesMax));
        this.queue.push(chunk.subarray(offset, offset + pieceBytes));
        offset += pieceBytes;
      }
    }
    this.pump();
  };

  private readonly onInnerClose = (error: KemariError | undefined): void => {
    if (this.finished || this.link.cut) return;
    if (error !== undefined) {
      this.finish(error);
      return;
    }
    this.innerEnded = true;
    this.pump();
  };

  private schedulePump(): void {
    if (this.pumpScheduled) return;
    this.pumpScheduled = true;
    setImmediate(() => {
      this.pumpScheduled = false;
      this.pump();
    });
  }

  /** Delivers queued pieces while someone listens (or the pair is closing), honouring delays and the cut. */
  private pump(): void {
    if (this.pumping || this.timer !== undefined) return;
    this.pumping = true;
    try {
      while (!this.finished && this.queue.length > 0) {
        if (!this.canDeliver()) return;
        if (this.faults.delayMsMax > 0) {
          const delayMs = Math.floor(this.faults.random() * (this.faults.delayMsMax + 1));
          this.timer = setTimeout(() => {
            this.timer = undefined;
            if (this.finished || !this.canDeliver()) return;
            if (this.deliverOne()) this.pump();
          }, delayMs);
          return;
        }
        if (!this.deliverOne()) return;
      }
      if (!this.finished && this.innerEnded && this.queue.length === 0) this.finish(undefined);
    } finally {
      this.pumping = false;
    }
  }

  /** Not aborted, and someone listens (or the pair is closing cleanly, when pieces go out even to nobody). */
  private canDeliver(): boolean {
    return !this.link.aborted && (this.innerEnded || this.events.listenerCount('data') > 0);
  }

  /** Delivers the head piece (or its allowed prefix); false when that cut the link. */
  private deliverOne(): boolean {
    const head = this.queue[0];
    if (head === undefined) return true;
    const limitBytes = this.faults.limitBytes;
    let piece = head;
    if (limitBytes !== undefined) {
      const allowedBytes = limitBytes - this.deliveredBytes;
      if (allowedBytes <= 0) {
        this.cut();
        return false;
      }
      if (piece.length > allowedBytes) piece = piece.subarray(0, allowedBytes);
    }
    this.queue.shift();
    this.deliveredBytes += piece.length;
    this.events.emit('data', piece);
    if (limitBytes !== undefined && this.deliveredBytes >= limitBytes) {
      this.cut();
      return false;
    }
    return true;
  }

  /** Closes both ends with the cut error, at once; nothing more is delivered either way. */
  private cut(): void {
    if (this.link.cut) return;
    this.link.cut = true;
    const error = this.faults.cutError;
    for (const end of this.link.ends) end.finish(error);
    for (const end of this.link.ends) end.inner.close(error);
  }

  private finish(error: KemariError | undefined): void {
    if (this.finished) return;
    this.finished = true;
    this.queue = [];
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    this.events.emit('close', error);
  }
}

/** A tiny seeded PRNG (mulberry32): uniform floats in [0, 1), the same sequence for the same seed. */
function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}

function invalid(message: string, details: Record<string, unknown>): KemariError {
  return new KemariError('KEMARI_INVALID_ARGUMENT', message, { details });
}
