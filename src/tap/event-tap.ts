/**
 * The event-tap: the VM's outgoing I/O waits here until the secondary has acked the epoch that produced it
 * (invariant 2, output commit). An output belongs to the epoch that is running when it is tapped; the next
 * capture seals it into that epoch's transaction (its EVENT frames, so the secondary can replay it on failover),
 * and the epoch's ack releases it. Outputs are released in the order they were tapped.
 *
 * Everything is bounded: at most `heldEventsMax` outputs and `heldBytesMax` payload bytes are held at once; an
 * output beyond that is refused with KEMARI_TAP_FULL, never queued without bound. `discard` (quiesce, close)
 * rejects every held output: an output of an uncommitted epoch is never released.
 */
import { EventEmitter } from 'node:events';
import { Writable } from 'node:stream';
import { KemariError } from '../errors.js';
import type { OutputEvent } from '../wire/bodies/event.js';
import { CHANNEL_BYTES_MAX } from '../wire/bodies/event.js';

/** Options of an {@link EventTap}. */
export interface EventTapOptions {
  /** Most outputs held at once. Default 65,536. */
  heldEventsMax?: number;
  /** Most payload bytes held at once. Default 64 MiB. */
  heldBytesMax?: number;
}

/** A released output, as reported by the 'release' event. */
export interface ReleasedOutput {
  /** The epoch that produced it. */
  txn: number;
  id: number;
  channel: string;
  payload: Uint8Array;
}

interface Held {
  event: OutputEvent;
  resolve: () => void;
  reject: (error: KemariError) => void;
}

interface Epoch {
  txn: number;
  held: Held[];
}

/** Events: 'output' (an output was tapped; the checkpoint controller listens), 'release' ({@link ReleasedOutput}). */
export class EventTap extends EventEmitter {
  private readonly heldEventsMax: number;
  private readonly heldBytesMax: number;
  private open: Held[] = [];
  private readonly sealed: Epoch[] = [];
  private nextId = 1;
  private heldEvents = 0;
  private heldBytesNow = 0;
  private releasedThrough = 0;
  private failure: KemariError | undefined;
  private releasedCount = 0;

  constructor(options: EventTapOptions = {}) {
    super();
    this.heldEventsMax = options.heldEventsMax ?? 65_536;
    this.heldBytesMax = options.heldBytesMax ?? 64 << 20;
  }

  /** Outputs held (tapped, not yet released). */
  get heldCount(): number {
    return this.heldEvents;
  }

  /** Payload bytes held. */
  get heldBytes(): number {
    return this.heldBytesNow;
  }

  /** Outputs tapped since the last seal: they belong to the running epoch. */
  get openCount(): number {
    return this.open.length;
  }

  /** The newest epoch whose outputs are all released. */
  get releasedTxn(): number {
    return this.releasedThrough;
  }

  /** Outputs released so far. */
  get released(): number {
    return this.releasedCount;
  }

  /**
   * Holds `data` (copied: the caller may reuse its buffer) on `channel` until the epoch running now is acked.
   * Resolves when released; rejects with KEMARI_TAP_FULL when the tap is full, or with the discard error.
   */
  output(channel: string, data: Uint8Array): Promise<void> {
    if (this.failure !== undefined) return Promise.reject(this.failure);
    if (typeof channel !== 'string' || channel.length === 0 || Buffer.byteLength(channel) > CHANNEL_BYTES_MAX) {
      return Promise.reject(new KemariError('KEMARI_INVALID_ARGUMENT', `channel must be 1..${CHANNEL_BYTES_MAX} bytes`, { details: { channel } }));
    }
    if (!(data instanceof Uint8Array)) {
      return Promise.reject(new KemariError('KEMARI_INVALID_ARGUMENT', 'output data must be a Uint8Array'));
    }
    if (this.heldEvents + 1 > this.heldEventsMax || this.heldBytesNow + data.byteLength > this.heldBytesMax) {
      return Promise.reject(
        new KemariError('KEMARI_TAP_FULL', 'the event-tap is full', {
          details: { heldEvents: this.heldEvents, heldBytes: this.heldBytesNow, heldEventsMax: this.heldEventsMax, heldBytesMax: this.heldBytesMax },
        }),
      );
    }
    return new Promise<void>((resolve, reject) => {
      const event: OutputEvent = { id: this.nextId++, channel, payload: Uint8Array.from(data) };
      const held: Held = { event, resolve, reject };
      this.heldEvents += 1;
      this.heldBytesNow += data.byteLength;
      this.open.push(held);
      if (this.passing) {
        this.flushPassThrough();
        return;
      }
      this.emit('output', event);
    });
  }

  /**
   * A Writable that gates a stream through the tap: each chunk's write callback fires only once the chunk is
   * released, so the stream's own backpressure holds the writer while epochs are unacked.
   */
  writable(channel: string): Writable {
    return new Writable({
      highWaterMark: 64 * 1024,
      write: (chunk: Buffer, _encoding, callback) => {
        this.output(channel, chunk).then(
          () => callback(),
          (error: unknown) => callback(error as Error),
        );
      },
    });
  }

  /**
   * Seals the running epoch as `txn`: the outputs tapped so far belong to it. Returns them, for the
   * transaction's EVENT frames. Epochs must be sealed in increasing txn order.
   */
  seal(txn: number): OutputEvent[] {
    const last = this.sealed.at(-1)?.txn ?? this.releasedThrough;
    if (txn <= last) throw new KemariError('KEMARI_INVALID_ARGUMENT', `seal(${txn}) after epoch ${last}`);
    const held = this.open;
    this.open = [];
    this.sealed.push({ txn, held });
    return held.map((h) => h.event);
  }

  /**
   * Returns the outputs of the sealed, unreleased epochs from `fromTxn` on (default: all of them) to the running
   * epoch: their transaction was lost with its connection and will not be acked, so they go out again, in order,
   * in the next transaction.
   */
  unseal(fromTxn = 0): void {
    const keep = this.sealed.filter((epoch) => epoch.txn < fromTxn);
    const back = this.sealed.filter((epoch) => epoch.txn >= fromTxn).flatMap((epoch) => epoch.held);
    this.sealed.length = 0;
    this.sealed.push(...keep);
    this.open = [...back, ...this.open];
  }

  /**
   * A new session numbers its epochs from `txn` on (a secondary that restarted without its history): with nothing
   * sealed any more, the next epoch sealed may be `txn + 1` even if older numbers were released before.
   */
  rebase(txn: number): void {
    if (this.sealed.length > 0) throw new KemariError('KEMARI_INVALID_ARGUMENT', 'rebase() with sealed epochs: unseal them first');
    this.releasedThrough = txn;
  }

  /** Protected again: outputs are tied to epochs and held until their ack once more (ends {@link passThrough}). */
  endPassThrough(): void {
    this.passing = false;
    this.gate = () => true;
  }

  /** The secondary acked `txn`: releases the outputs of every epoch up to it, in order. */
  release(txn: number): ReleasedOutput[] {
    const out: ReleasedOutput[] = [];
    while (this.sealed.length > 0 && this.sealed[0]!.txn <= txn) {
      const epoch = this.sealed.shift()!;
      for (const h of epoch.held) out.push(this.releaseOne(epoch.txn, h));
    }
    if (txn > this.releasedThrough) this.releasedThrough = txn;
    return out;
  }

  /**
   * Unprotected operation (the primary's `onSecondaryLoss: 'continue'`): from now on outputs are not tied to
   * epochs; each leaves as soon as `gate()` allows (the primary's gate: it holds a valid lease, or has no arbiter).
   * Releases what `gate` allows now, in order; outputs tapped while the gate is shut wait for {@link flushPassThrough}.
   * Released outputs of no acked epoch carry txn 0.
   */
  passThrough(gate: () => boolean = () => true): ReleasedOutput[] {
    this.open = [...this.sealed.flatMap((e) => e.held), ...this.open];
    this.sealed.length = 0;
    this.passing = true;
    this.gate = gate;
    return this.flushPassThrough();
  }

  /** In pass-through: releases the waiting outputs, in order, if the gate is open now. */
  flushPassThrough(): ReleasedOutput[] {
    if (!this.passing || !this.gate() || this.failure !== undefined) return [];
    const waiting = this.open;
    this.open = [];
    return waiting.map((h) => this.releaseOne(0, h));
  }

  private passing = false;
  private gate: () => boolean = () => true;

  private releaseOne(txn: number, h: Held): ReleasedOutput {
    this.heldEvents -= 1;
    this.heldBytesNow -= h.event.payload.byteLength;
    this.releasedCount += 1;
    const released: ReleasedOutput = { txn, ...h.event };
    this.emit('release', released);
    h.resolve();
    return released;
  }

  /** Rejects every held output with `error` and refuses new ones: nothing held will ever be released. */
  discard(error: KemariError): void {
    if (this.failure !== undefined) return;
    this.failure = error;
    const all = [...this.sealed.flatMap((e) => e.held), ...this.open];
    this.sealed.length = 0;
    this.open = [];
    this.heldEvents = 0;
    this.heldBytesNow = 0;
    for (const h of all) h.reject(error);
  }
}
