/**
 * The road a guest's output takes from a QEMU socket to the outside world: through the event-tap (held until its
 * epoch is acked, invariant 2), then out, in the order the guest produced it.
 *
 * Why a pipeline between the socket and the tap, rather than calling `tap.output` per chunk:
 * - **Order.** An output refused with KEMARI_TAP_FULL must not be overtaken by a later, smaller one the tap would
 *   still accept. A refusal is only seen when the sink's promise rejects, so at most one output is *unconfirmed* at a
 *   time: the next one is handed to the sink only after a turn of the event loop has passed without a refusal (an
 *   `EventTap` refuses with an already-rejected promise, so its refusals are always seen in time).
 * - **Backpressure, not loss.** A refusal puts the output back at the head of the queue and pauses reading from
 *   QEMU (`onFlow(true)`); QEMU's device then waits (the serial port keeps its transmit register full, the NIC its
 *   queue), so the guest slows down and nothing is dropped. It retries after `retryDelayMs`, or as soon as one of
 *   its own outputs is released.
 * - **Fewer, larger outputs.** Every output costs an EVENT frame and a hold; a byte stream (serial) is coalesced:
 *   everything read until the next turn of the event loop, up to `outputBytesMax`, becomes one output.
 * - **Bounds.** Bytes read and not yet accepted (`waitingBytesMax`), outputs and bytes held or awaiting delivery
 *   (`outputsInFlightMax`, `inFlightBytesMax`): reaching any of them pauses reading (invariant 5).
 *
 * Released outputs are delivered in order while the outside is ready (`outsideReady()`); the driver calls
 * {@link OutputPipeline.flush} when it becomes ready again (a Writable's 'drain', a peer connecting).
 */
import { KemariError, isKemariError } from '../../errors.js';
import { realTimers } from '../../time/timers.js';
import { CHANNEL_BYTES_MAX } from '../../wire/bodies/event.js';
import type { TimerHandle, Timers } from '../../time/timers.js';

/**
 * Where outputs are held until released: `primary.tap.output` in production. Resolves once the output is released;
 * rejects with KEMARI_TAP_FULL when it is refused (before the call returns to the event loop, as
 * `EventTap.output` does), or with the reason the tap discards it (KEMARI_CLOSED, KEMARI_QUIESCED, ...).
 */
export type OutputSink = (channel: string, data: Uint8Array) => Promise<void>;

/** Default {@link OutputPipelineOptions.outputBytesMax}: 64 KiB keeps EVENT frames small and outputs few. */
export const OUTPUT_BYTES_MAX_DEFAULT = 64 * 1024;
/** Default {@link OutputPipelineOptions.outputsInFlightMax}. */
export const OUTPUTS_IN_FLIGHT_MAX_DEFAULT = 1024;
/** Default {@link OutputPipelineOptions.inFlightBytesMax}: 16 MiB. */
export const IN_FLIGHT_BYTES_MAX_DEFAULT = 16 << 20;
/** Default {@link OutputPipelineOptions.retryDelayMs} after a KEMARI_TAP_FULL refusal. */
export const TAP_FULL_RETRY_DELAY_MS_DEFAULT = 10;

/** Options of an {@link OutputPipeline}. */
export interface OutputPipelineOptions {
  /** The tap channel every output goes to ('serial0', 'net0'). */
  channel: string;
  /** Holds each output until released. */
  sink: OutputSink;
  /** True when the outside can take a released output now. */
  outsideReady: () => boolean;
  /** Hands one released output to the outside (called only while `outsideReady()`). */
  deliver: (data: Uint8Array) => void;
  /** Merge queued bytes into one output (a byte stream); false keeps each pushed unit (a frame) whole. */
  coalesce: boolean;
  /** Largest output (with `coalesce`) or largest unit accepted by `push`. Default {@link OUTPUT_BYTES_MAX_DEFAULT}. */
  outputBytesMax?: number;
  /** Bytes read and not yet accepted by the sink at which reading pauses. Default `outputBytesMax`. */
  waitingBytesMax?: number;
  /** Outputs held or awaiting delivery at which reading pauses. Default {@link OUTPUTS_IN_FLIGHT_MAX_DEFAULT}. */
  outputsInFlightMax?: number;
  /** Bytes held or awaiting delivery at which reading pauses. Default {@link IN_FLIGHT_BYTES_MAX_DEFAULT}. */
  inFlightBytesMax?: number;
  /** Wait after a KEMARI_TAP_FULL refusal before trying again. Default {@link TAP_FULL_RETRY_DELAY_MS_DEFAULT}. */
  retryDelayMs?: number;
  /** Already released outputs to deliver before any new one (a promotion's replay). */
  replay?: readonly Uint8Array[];
  /** Told when reading from QEMU must pause (true) or may resume (false). */
  onFlow: (paused: boolean) => void;
  /** Told once about a fatal error (the sink discarded an output, `deliver` threw); the pipeline is closed then. */
  onError: (error: KemariError) => void;
  /** Timer for the retry. Default {@link realTimers}. */
  timers?: Timers;
  /** Runs a callback after the current turn of the event loop. Default `setImmediate`. */
  defer?: (callback: () => void) => void;
}

/** Counters of an {@link OutputPipeline}. */
export interface OutputPipelineStats {
  /** Bytes pushed (read from QEMU). */
  bytesIn: number;
  /** Outputs the sink released. */
  outputsReleased: number;
  /** Outputs handed to the outside (replayed ones included). */
  outputsDelivered: number;
  /** Bytes handed to the outside (replayed ones included). */
  bytesDelivered: number;
  /** Replayed outputs delivered. */
  replayed: number;
  /** KEMARI_TAP_FULL refusals (each was retried, never dropped). */
  refusals: number;
  /** Times reading was paused. */
  pauses: number;
  /** Reading is paused now. */
  paused: boolean;
  /** Bytes read and not yet accepted. */
  waitingBytes: number;
  /** Outputs held or awaiting delivery. */
  outputsInFlight: number;
  /** Bytes held or awaiting delivery. */
  inFlightBytes: number;
}

interface Entry {
  data: Uint8Array;
  released: boolean;
  replay: boolean;
}

/** Ordered, bounded, backpressured passage of one channel's outputs through the event-tap to the outside. */
export class OutputPipeline {
  private readonly options: OutputPipelineOptions;
  private readonly outputBytesMax: number;
  private readonly waitingBytesMax: number;
  private readonly outputsInFlightMax: number;
  private readonly inFlightBytesMax: number;
  private readonly retryDelayMs: number;
  private readonly timers: Timers;
  private readonly defer: (callback: () => void) => void;
  private waiting: Uint8Array[] = [];
  private waitingBytesNow = 0;
  private inFlight: Entry[] = [];
  private inFlightBytesNow = 0;
  /** The output handed to the sink whose refusal could still come; nothing is submitted after it until confirmed. */
  private probing: Entry | undefined;
  /** The tap refused; waiting for a release or the retry timer. */
  private refused = false;
  private retryTimer: TimerHandle | undefined;
  private pumpScheduled = false;
  private pausedNow = false;
  private closedNow = false;
  private readonly counters = { bytesIn: 0, outputsReleased: 0, outputsDelivered: 0, bytesDelivered: 0, replayed: 0, refusals: 0, pauses: 0 };

  constructor(options: OutputPipelineOptions) {
    this.options = options;
    if (typeof options.sink !== 'function') throw new KemariError('KEMARI_INVALID_ARGUMENT', 'sink must be a function (channel, data) => Promise<void>');
    // Checked here, not at the first output: a channel the tap refuses would otherwise fail the pipeline later.
    if (typeof options.channel !== 'string' || options.channel.length === 0 || Buffer.byteLength(options.channel) > CHANNEL_BYTES_MAX) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', `channel must be 1..${CHANNEL_BYTES_MAX} bytes`, { details: { channel: options.channel } });
    }
    this.outputBytesMax = positiveInteger('outputBytesMax', options.outputBytesMax ?? OUTPUT_BYTES_MAX_DEFAULT);
    this.waitingBytesMax = positiveInteger('waitingBytesMax', options.waitingBytesMax ?? this.outputBytesMax);
    this.outputsInFlightMax = positiveInteger('outputsInFlightMax', options.outputsInFlightMax ?? OUTPUTS_IN_FLIGHT_MAX_DEFAULT);
    this.inFlightBytesMax = positiveInteger('inFlightBytesMax', options.inFlightBytesMax ?? IN_FLIGHT_BYTES_MAX_DEFAULT);
    this.retryDelayMs = positiveInteger('retryDelayMs', options.retryDelayMs ?? TAP_FULL_RETRY_DELAY_MS_DEFAULT);
    this.timers = options.timers ?? realTimers;
    this.defer = options.defer ?? ((callback) => setImmediate(callback));
    for (const data of options.replay ?? []) {
      this.inFlight.push({ data, released: true, replay: true });
      this.inFlightBytesNow += data.byteLength;
    }
  }

  /** Counters, and the state of the bounds. */
  get stats(): OutputPipelineStats {
    return {
      ...this.counters,
      paused: this.pausedNow,
      waitingBytes: this.waitingBytesNow,
      outputsInFlight: this.inFlight.length,
      inFlightBytes: this.inFlightBytesNow,
    };
  }

  /** True while reading from QEMU should stay paused. */
  get paused(): boolean {
    return this.pausedNow;
  }

  /** True once closed (by {@link OutputPipeline.close} or a fatal error). */
  get closed(): boolean {
    return this.closedNow;
  }

  /**
   * Queues bytes the guest produced (a chunk of a byte stream, or one whole frame). Never refuses: the caller reads
   * at most one more chunk after `onFlow(true)`, which bounds what waits here. Throws KEMARI_INVALID_ARGUMENT for a
   * unit above `outputBytesMax` without `coalesce`.
   */
  push(data: Uint8Array): void {
    if (this.closedNow || data.byteLength === 0) return;
    if (!this.options.coalesce && data.byteLength > this.outputBytesMax) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', `an output of ${data.byteLength} bytes exceeds outputBytesMax ${this.outputBytesMax}`, {
        details: { bytes: data.byteLength, outputBytesMax: this.outputBytesMax },
      });
    }
    this.waiting.push(data);
    this.waitingBytesNow += data.byteLength;
    this.counters.bytesIn += data.byteLength;
    // Deferred: everything read in this turn of the event loop joins one output.
    if (!this.pumpScheduled && this.probing === undefined) {
      this.pumpScheduled = true;
      this.defer(() => {
        this.pumpScheduled = false;
        this.pump();
      });
    }
    this.updateFlow();
  }

  /**
   * Resolves once what the guest wrote before it stopped has been handed to the sink: the epoch being captured
   * must seal it, or a failover to that epoch would lose it (the guest believes it sent it). Waits turns of the
   * event loop until one brings no new bytes and nothing waits or is being offered, at most `timeoutMs`. Output the
   * tap refuses (full) stays queued: that much may then belong to a later epoch.
   */
  async settle(timeoutMs = 20): Promise<void> {
    const deadlineMs = performance.now() + timeoutMs;
    let seen = -1;
    while (!this.closedNow && performance.now() < deadlineMs) {
      await new Promise<void>((resolve) => setImmediate(resolve));
      const quiet = this.counters.bytesIn === seen && this.probing === undefined && !this.pumpScheduled;
      // Waiting output the tap cannot take now (refused, or the in-flight bound reached) waits for a later epoch.
      const blocked = this.refused || this.inFlight.length >= this.outputsInFlightMax || this.inFlightBytesNow >= this.inFlightBytesMax;
      if (quiet && (this.waiting.length === 0 || blocked)) return;
      seen = this.counters.bytesIn;
    }
  }

  /** Delivers released outputs while the outside is ready; call it when the outside becomes ready again. */
  flush(): void {
    if (this.closedNow) return;
    this.deliverReady();
    this.pump();
  }

  /**
   * Stops: nothing more is handed to the sink or delivered. Outputs still held in the tap stay there (the tap
   * releases or discards them); outputs released and not yet delivered are dropped. Idempotent.
   */
  close(): void {
    if (this.closedNow) return;
    this.closedNow = true;
    this.timers.clear(this.retryTimer);
    this.retryTimer = undefined;
    this.waiting = [];
    this.waitingBytesNow = 0;
    this.inFlight = [];
    this.inFlightBytesNow = 0;
    this.probing = undefined;
  }

  /**
   * Hands the next output to the sink, if nothing forbids it now. After a refusal only the retry (`retry`) may
   * submit, and reading stays paused until that retry is confirmed: no flapping of the socket on every attempt.
   */
  private pump(retry = false): void {
    if (this.closedNow || this.probing !== undefined || (this.refused && !retry) || this.waiting.length === 0) {
      this.updateFlow();
      return;
    }
    const next = this.options.coalesce ? Math.min(this.waitingBytesNow, this.outputBytesMax) : (this.waiting[0] as Uint8Array).byteLength;
    const roomy = this.inFlight.length < this.outputsInFlightMax && (this.inFlight.length === 0 || this.inFlightBytesNow + next <= this.inFlightBytesMax);
    if (!roomy) {
      if (retry) this.armRetry();
      this.updateFlow();
      return;
    }
    const entry: Entry = { data: this.takeWaiting(next), released: false, replay: false };
    this.inFlight.push(entry);
    this.inFlightBytesNow += entry.data.byteLength;
    this.probing = entry;
    let held: Promise<void>;
    try {
      held = Promise.resolve(this.options.sink(this.options.channel, entry.data));
    } catch (error) {
      held = Promise.reject(error);
    }
    held.then(
      () => this.onReleased(entry),
      (error: unknown) => this.onRejected(entry, error),
    );
    this.defer(() => {
      if (this.probing !== entry) return;
      // Not refused within a turn: accepted. A successful retry ends the refusal.
      this.probing = undefined;
      this.refused = false;
      this.pump();
    });
    this.updateFlow();
  }

  /** Removes `bytes` from the head of the waiting queue (merging chunks when coalescing). */
  private takeWaiting(bytes: number): Uint8Array {
    const head = this.waiting[0] as Uint8Array;
    this.waitingBytesNow -= bytes;
    if (head.byteLength === bytes) {
      this.waiting.shift();
      return head;
    }
    if (head.byteLength > bytes) {
      this.waiting[0] = head.subarray(bytes);
      return head.subarray(0, bytes);
    }
    const out = new Uint8Array(bytes);
    let filled = 0;
    while (filled < bytes) {
      const chunk = this.waiting[0] as Uint8Array;
      const take = Math.min(chunk.byteLength, bytes - filled);
      out.set(chunk.subarray(0, take), filled);
      filled += take;
      if (take === chunk.byteLength) this.waiting.shift();
      else this.waiting[0] = chunk.subarray(take);
    }
    return out;
  }

  private onReleased(entry: Entry): void {
    if (this.closedNow) return;
    entry.released = true;
    this.counters.outputsReleased += 1;
    if (this.probing === entry) this.probing = undefined;
    if (this.refused) {
      // One of ours left the tap: there is room again.
      this.refused = false;
      this.timers.clear(this.retryTimer);
      this.retryTimer = undefined;
    }
    this.deliverReady();
    this.pump();
  }

  private onRejected(entry: Entry, error: unknown): void {
    if (this.closedNow) return;
    // A refusal of the newest output can be retried without reordering: nothing was handed to the sink after it.
    if (isKemariError(error, 'KEMARI_TAP_FULL') && this.inFlight.at(-1) === entry) {
      this.inFlight.pop();
      this.inFlightBytesNow -= entry.data.byteLength;
      this.waiting.unshift(entry.data);
      this.waitingBytesNow += entry.data.byteLength;
      if (this.probing === entry) this.probing = undefined;
      this.counters.refusals += 1;
      this.refused = true;
      this.armRetry();
      this.updateFlow();
      return;
    }
    const fatal = isKemariError(error, 'KEMARI_TAP_FULL')
      ? new KemariError('KEMARI_PROTOCOL', `the sink refused an output of channel ${this.options.channel} after accepting a later one: its order is lost`, {
          cause: error,
          details: { channel: this.options.channel },
        })
      : error instanceof KemariError
        ? error
        : new KemariError('KEMARI_INVALID_ARGUMENT', `the sink of channel ${this.options.channel} failed: ${String(error)}`, { cause: error, details: { channel: this.options.channel } });
    this.fail(fatal);
  }

  private armRetry(): void {
    this.timers.clear(this.retryTimer);
    this.retryTimer = this.timers.setTimeout(() => {
      this.retryTimer = undefined;
      this.pump(true);
    }, this.retryDelayMs);
  }

  private deliverReady(): void {
    while (!this.closedNow && this.inFlight.length > 0 && (this.inFlight[0] as Entry).released && this.options.outsideReady()) {
      const entry = this.inFlight.shift() as Entry;
      this.inFlightBytesNow -= entry.data.byteLength;
      this.counters.outputsDelivered += 1;
      this.counters.bytesDelivered += entry.data.byteLength;
      if (entry.replay) this.counters.replayed += 1;
      try {
        this.options.deliver(entry.data);
      } catch (error) {
        this.fail(
          error instanceof KemariError
            ? error
            : new KemariError('KEMARI_CONNECTION_CLOSED', `delivering channel ${this.options.channel} to the outside failed: ${String(error)}`, {
                cause: error,
                details: { channel: this.options.channel },
              }),
        );
      }
    }
  }

  private updateFlow(): void {
    if (this.closedNow) return;
    const pause =
      this.refused ||
      this.waitingBytesNow >= this.waitingBytesMax ||
      this.inFlight.length >= this.outputsInFlightMax ||
      this.inFlightBytesNow >= this.inFlightBytesMax;
    if (pause === this.pausedNow) return;
    this.pausedNow = pause;
    if (pause) this.counters.pauses += 1;
    this.options.onFlow(pause);
  }

  private fail(error: KemariError): void {
    if (this.closedNow) return;
    this.close();
    this.options.onError(error);
  }
}

function positiveInteger(name: string, value: number): number {
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new KemariError('KEMARI_INVALID_ARGUMENT', `${name} must be a positive integer`, { details: { [name]: value } });
  }
  return value;
}
