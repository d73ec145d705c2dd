/**
 * The serial tap: a QEMU serial port whose output leaves only through the event-tap (invariant 2, output commit).
 *
 * QEMU connects to a unix socket we listen on (`-chardev socket,id=s0,path=PATH,server=off -serial chardev:s0`;
 * {@link SerialTap.qemuArgs} builds them), so the listener must exist before QEMU starts. Bytes the guest writes
 * are guest output: coalesced per turn of the event loop into outputs on one channel (default 'serial0'), held by
 * the sink (`primary.tap.output`) until their epoch is acked, then written to the outside (a Writable such as
 * process.stdout or a socket, or a callback), in order. Bytes from the outside (`input`) go straight to QEMU: input
 * needs no output commit, as the standby's guest would simply not have seen it yet.
 *
 * When the tap is full the tap stops reading from QEMU; QEMU's UART then keeps its transmit register busy, the
 * guest waits for it, and nothing is lost (see {@link OutputPipeline}). One QEMU at a time: a second connection
 * is refused while one is open; after QEMU disconnects, the next one may connect and its output follows in order.
 *
 * Events: 'connect' (QEMU connected), 'disconnect' (KemariError or undefined), 'pause' and 'resume' (reading from
 * QEMU stopped by backpressure, and started again), 'close' (KemariError or undefined: the tap ended; after a fatal
 * error it carries the error), 'error' (KemariError; emitted only when listened to, always kept in
 * `stats().lastError`).
 */
import { EventEmitter } from 'node:events';
import { isAbsolute } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { KemariError } from '../../errors.js';
import type { Connection } from '../../transport/connection.js';
import { listenUnix } from '../../transport/unix.js';
import type { Listener } from '../../transport/tcp.js';
import { OutputPipeline } from './output-pipeline.js';
import type { OutputPipelineStats, OutputSink } from './output-pipeline.js';
import type { PendingReplay } from './replay.js';

/** Default channel of a serial tap. */
export const SERIAL_CHANNEL_DEFAULT = 'serial0';

/** Options of {@link SerialTap.listen}. */
export interface SerialTapOptions {
  /** Absolute path of the unix socket to listen on (QEMU's `-chardev socket,path=...,server=off`). */
  path: string;
  /** Holds each output until its epoch is acked: `primary.tap.output` (bind it, or pass an arrow). */
  sink: OutputSink;
  /** The outside: where released bytes go, in order. A Writable's backpressure ('drain') is honoured. */
  output: Writable | ((data: Uint8Array) => void);
  /** Bytes for the guest's serial input, written straight through to QEMU (paused while QEMU is away or slow). */
  input?: Readable;
  /** The tap channel. Default {@link SERIAL_CHANNEL_DEFAULT}. */
  channel?: string;
  /** Most bytes coalesced into one output. Default 64 KiB. Keep it below the tap's `heldBytesMax`. */
  outputBytesMax?: number;
  /** Bytes read and not yet accepted by the sink at which reading pauses. Default `outputBytesMax`. */
  waitingBytesMax?: number;
  /** Outputs held or awaiting delivery at which reading pauses. Default 1024. */
  outputsInFlightMax?: number;
  /** Retry delay after KEMARI_TAP_FULL. Default 10 ms. */
  retryDelayMs?: number;
  /** On a new primary: the promotion's pending outputs; this channel's are written out before any new output. */
  replay?: PendingReplay;
}

/** Counters of a {@link SerialTap}. */
export interface SerialTapStats extends OutputPipelineStats {
  /** QEMU is connected now. */
  connected: boolean;
  /** QEMU connections accepted. */
  connections: number;
  /** Connections refused because one was open. */
  connectionsRefused: number;
  /** Bytes written to QEMU from `input`. */
  bytesToGuest: number;
  /** The last error, fatal or not. */
  lastError: KemariError | undefined;
}

/** Events of a {@link SerialTap}. */
export interface SerialTapEvents {
  connect: [];
  disconnect: [KemariError | undefined];
  pause: [];
  resume: [];
  close: [KemariError | undefined];
  error: [KemariError];
}

/** A listening serial tap. Create it with {@link SerialTap.listen}, before starting QEMU. */
export class SerialTap extends EventEmitter<SerialTapEvents> {
  /** The socket path QEMU connects to. */
  readonly path: string;
  /** The tap channel of every output. */
  readonly channel: string;
  /** Resolves once the tap is closed, with the fatal error if there was one; never rejects. */
  readonly closed: Promise<KemariError | undefined>;
  private resolveClosed!: (error: KemariError | undefined) => void;
  private readonly pipeline: OutputPipeline;
  private readonly output: Writable | ((data: Uint8Array) => void);
  private readonly input: Readable | undefined;
  private listener: Listener | undefined;
  private qemu: Connection | undefined;
  private reading = false;
  private closing: Promise<void> | undefined;
  private readonly counters = { connections: 0, connectionsRefused: 0, bytesToGuest: 0 };
  private lastError: KemariError | undefined;

  /**
   * Listens on `options.path` (a stale socket file is replaced, a live listener is not: KEMARI_LISTEN_FAILED) and
   * writes this channel's replayed outputs to the outside at once. Rejects with KEMARI_INVALID_ARGUMENT for a
   * relative path, a missing sink or output, or bad bounds.
   */
  static async listen(options: SerialTapOptions): Promise<SerialTap> {
    if (typeof options?.path !== 'string' || !isAbsolute(options.path)) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', 'path must be absolute (QEMU resolves paths against its own cwd)', { details: { path: options?.path } });
    }
    const output = options.output as unknown;
    if (typeof output !== 'function' && (typeof output !== 'object' || output === null || typeof (output as Writable).write !== 'function')) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', 'output must be a Writable or a function');
    }
    const tap = new SerialTap(options);
    try {
      tap.listener = await listenUnix({ path: options.path }, (connection) => tap.onConnection(connection));
    } catch (error) {
      tap.pipeline.close();
      tap.detachOutside();
      throw error;
    }
    if (tap.closing === undefined) tap.pipeline.flush();
    return tap;
  }

  private constructor(options: SerialTapOptions) {
    super();
    this.path = options.path;
    this.channel = options.channel ?? SERIAL_CHANNEL_DEFAULT;
    this.output = options.output;
    this.input = options.input;
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
    const output = this.output;
    this.pipeline = new OutputPipeline({
      channel: this.channel,
      sink: options.sink,
      coalesce: true,
      outsideReady: typeof output === 'function' ? () => true : () => !output.writableNeedDrain,
      deliver: typeof output === 'function' ? (data) => output(data) : (data) => void output.write(data),
      ...(options.outputBytesMax === undefined ? {} : { outputBytesMax: options.outputBytesMax }),
      ...(options.waitingBytesMax === undefined ? {} : { waitingBytesMax: options.waitingBytesMax }),
      ...(options.outputsInFlightMax === undefined ? {} : { outputsInFlightMax: options.outputsInFlightMax }),
      ...(options.retryDelayMs === undefined ? {} : { retryDelayMs: options.retryDelayMs }),
      replay: options.replay?.take(this.channel) ?? [],
      onFlow: (paused) => this.onFlow(paused),
      onError: (error) => this.fail(error),
    });
    if (typeof output !== 'function') {
      output.on('drain', this.onOutsideDrain);
      output.on('error', this.onOutsideError);
      output.on('close', this.onOutsideClose);
    }
    if (this.input !== undefined) {
      this.input.on('data', this.onInput);
      this.input.on('error', this.onInputError);
      this.input.pause();
    }
  }

  /**
   * Call with the VM stopped, before its epoch is sealed (the primary's `settleOutputs`): resolves once what the
   * guest wrote before the stop has been read and handed to the event-tap, so it belongs to that epoch.
   */
  settle(timeoutMs?: number): Promise<void> {
    return this.pipeline.settle(timeoutMs);
  }

  /** The QEMU arguments that connect COM1 to this tap: `-chardev socket,...,server=off -serial chardev:<id>`. */
  qemuArgs(id = 's0'): string[] {
    return ['-chardev', `socket,id=${id},path=${this.path.replaceAll(',', ',,')},server=off`, '-serial', `chardev:${id}`];
  }

  /** QEMU is connected now. */
  get connected(): boolean {
    return this.qemu !== undefined;
  }

  /** Counters and the state of the bounds. */
  stats(): SerialTapStats {
    return { ...this.pipeline.stats, ...this.counters, connected: this.connected, lastError: this.lastError };
  }

  /**
   * Stops listening and closes the QEMU connection (QEMU's UART then drops its output, as with an unplugged
   * cable). Outputs still held in the event-tap are not written out any more. Idempotent.
   */
  close(): Promise<void> {
    return this.shutdown(undefined);
  }

  private shutdown(error: KemariError | undefined): Promise<void> {
    if (this.closing !== undefined) return this.closing;
    this.pipeline.close();
    this.detachOutside();
    const qemu = this.qemu;
    this.qemu = undefined;
    qemu?.close(error ?? new KemariError('KEMARI_CONNECTION_CLOSED', `the serial tap on ${this.path} was closed`, { details: { path: this.path } }));
    this.closing = (this.listener?.close() ?? Promise.resolve()).then(() => {
      this.emit('close', error);
      this.resolveClosed(error);
    });
    return this.closing;
  }

  private fail(error: KemariError): void {
    this.report(error);
    void this.shutdown(error);
  }

  private report(error: KemariError): void {
    this.lastError = error;
    if (this.listenerCount('error') > 0) this.emit('error', error);
  }

  private onConnection(connection: Connection): void {
    if (this.closing !== undefined) {
      connection.close(new KemariError('KEMARI_CONNECTION_CLOSED', `the serial tap on ${this.path} is closed`, { details: { path: this.path } }));
      return;
    }
    if (this.qemu !== undefined) {
      this.counters.connectionsRefused += 1;
      connection.close(new KemariError('KEMARI_PROTOCOL', `the serial tap on ${this.path} already has a QEMU connected`, { details: { path: this.path } }));
      return;
    }
    this.counters.connections += 1;
    this.qemu = connection;
    connection.on('close', (error) => {
      if (this.qemu !== connection) return;
      this.qemu = undefined;
      this.reading = false;
      this.input?.pause();
      this.emit('disconnect', error);
    });
    connection.on('drain', () => {
      if (this.qemu === connection) this.input?.resume();
    });
    this.setReading(!this.pipeline.paused);
    this.input?.resume();
    this.emit('connect');
  }

  private readonly onQemuData = (chunk: Uint8Array): void => {
    this.pipeline.push(chunk);
  };

  private setReading(on: boolean): void {
    const qemu = this.qemu;
    if (qemu === undefined || on === this.reading) return;
    this.reading = on;
    if (on) qemu.on('data', this.onQemuData);
    else qemu.off('data', this.onQemuData);
  }

  private onFlow(paused: boolean): void {
    this.setReading(!paused);
    this.emit(paused ? 'pause' : 'resume');
  }

  private readonly onInput = (chunk: Uint8Array | string): void => {
    const qemu = this.qemu;
    if (qemu === undefined) {
      // Paused while no QEMU is connected; a chunk already on its way is lost with the link, as on a real line.
      this.input?.pause();
      return;
    }
    const data = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
    this.counters.bytesToGuest += data.byteLength;
    if (!qemu.write([data])) this.input?.pause();
  };

  private readonly onInputError = (cause: Error): void => {
    this.report(new KemariError('KEMARI_CONNECTION_CLOSED', `the serial input stream failed: ${cause.message}`, { cause, details: { path: this.path } }));
  };

  private readonly onOutsideDrain = (): void => {
    this.pipeline.flush();
  };

  private readonly onOutsideError = (cause: Error): void => {
    this.fail(new KemariError('KEMARI_CONNECTION_CLOSED', `the serial output stream failed: ${cause.message}`, { cause, details: { path: this.path } }));
  };

  private readonly onOutsideClose = (): void => {
    this.fail(new KemariError('KEMARI_CONNECTION_CLOSED', 'the serial output stream closed: released output has nowhere to go', { details: { path: this.path } }));
  };

  private detachOutside(): void {
    const output = this.output;
    if (typeof output !== 'function') {
      output.off('drain', this.onOutsideDrain);
      output.off('error', this.onOutsideError);
      output.off('close', this.onOutsideClose);
    }
    if (this.input !== undefined) {
      this.input.off('data', this.onInput);
      this.input.off('error', this.onInputError);
      this.input.pause();
    }
  }
}
