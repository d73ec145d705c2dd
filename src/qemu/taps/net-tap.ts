/**
 * The network tap: a QEMU NIC whose transmitted frames leave only through the event-tap (invariant 2, output commit).
 *
 * QEMU 7.2 connects its `-netdev stream` backend to a unix socket we listen on
 * (`-netdev stream,id=n0,server=off,addr.type=unix,addr.path=PATH -device e1000,netdev=n0,romfile=`;
 * {@link NetTap.qemuArgs} builds them); frames travel as a be32 length plus the Ethernet frame. Each frame the guest
 * sends is one output on one channel (default 'net0'), held by the sink (`primary.tap.output`) until its epoch is
 * acked, then handed to the outside in order: to a callback, or to a peer connected to a second unix socket
 * (`outsidePath`) that speaks the same framing (another QEMU's `-netdev stream`, a switch, a bridge process).
 * Frames from the outside (the peer, or {@link NetTap.inject}) go straight to QEMU: input needs no output commit.
 *
 * Bounds: a frame above `frameBytesMax` (or of length 0) from QEMU breaks the stream's framing: the tap closes with
 * KEMARI_PROTOCOL (nothing after it can be trusted). The same from the outside peer closes only that peer. When the
 * tap is full the tap stops reading from QEMU (QEMU queues, the e1000 stalls its transmit ring), never drops; while
 * no outside peer is connected, released frames wait (bounded: reading from QEMU pauses when they reach the bounds).
 * Frames for a guest whose QEMU is away or whose socket is backed up beyond `toGuestBufferedBytesMax` are dropped,
 * as a full NIC queue would drop them (counted in `framesToGuestDropped`).
 *
 * Events: 'connect' / 'disconnect' (QEMU), 'peerConnect' / 'peerDisconnect' (the outside peer), 'pause' and
 * 'resume' (reading from QEMU), 'close' (KemariError or undefined), 'error' (KemariError; emitted only when listened
 * to, always kept in `stats().lastError`; a bad outside peer is reported here without closing the tap).
 */
import { EventEmitter } from 'node:events';
import { isAbsolute } from 'node:path';
import { KemariError } from '../../errors.js';
import type { Connection } from '../../transport/connection.js';
import { listenUnix } from '../../transport/unix.js';
import type { Listener } from '../../transport/tcp.js';
import { OutputPipeline } from './output-pipeline.js';
import type { OutputPipelineStats, OutputSink } from './output-pipeline.js';
import type { PendingReplay } from './replay.js';
import { NET_FRAME_BYTES_MAX_DEFAULT, StreamFrameSplitter, encodeStreamFrameHeader } from './stream-frame-splitter.js';

/** Default channel of a network tap. */
export const NET_CHANNEL_DEFAULT = 'net0';
/** Default {@link NetTapOptions.toGuestBufferedBytesMax}: 1 MiB queued towards QEMU. */
export const TO_GUEST_BUFFERED_BYTES_MAX_DEFAULT = 1 << 20;

/** Options of {@link NetTap.listen}. Give exactly one of `onFrame` and `outsidePath`. */
export interface NetTapOptions {
  /** Absolute path of the unix socket QEMU's `-netdev stream,server=off` connects to. */
  path: string;
  /** Holds each frame until its epoch is acked: `primary.tap.output` (bind it, or pass an arrow). */
  sink: OutputSink;
  /** The outside as a callback: receives each released frame, in order. */
  onFrame?: (frame: Uint8Array) => void;
  /** The outside as a peer: a second unix socket listened on, speaking the be32-length framing both ways. */
  outsidePath?: string;
  /** The tap channel. Default {@link NET_CHANNEL_DEFAULT}. */
  channel?: string;
  /** Largest frame accepted from either side. Default {@link NET_FRAME_BYTES_MAX_DEFAULT} (65 KiB). */
  frameBytesMax?: number;
  /** Outputs held or awaiting delivery at which reading from QEMU pauses. Default 1024. */
  outputsInFlightMax?: number;
  /** Bytes held or awaiting delivery at which reading from QEMU pauses. Default 16 MiB. */
  inFlightBytesMax?: number;
  /** Retry delay after KEMARI_TAP_FULL. Default 10 ms. */
  retryDelayMs?: number;
  /** Bytes queued towards QEMU beyond which frames for the guest are dropped. Default 1 MiB. */
  toGuestBufferedBytesMax?: number;
  /** On a new primary: the promotion's pending outputs; this channel's frames go out before any new one. */
  replay?: PendingReplay;
}

/** Counters of a {@link NetTap}. */
export interface NetTapStats extends OutputPipelineStats {
  /** QEMU is connected now. */
  connected: boolean;
  /** An outside peer is connected now. */
  peerConnected: boolean;
  /** Frames read from QEMU. */
  framesFromGuest: number;
  /** Frames written to QEMU (from the peer or {@link NetTap.inject}). */
  framesToGuest: number;
  /** Frames for the guest dropped (QEMU away or backed up). */
  framesToGuestDropped: number;
  /** Connections refused (QEMU or peer) because one was open. */
  connectionsRefused: number;
  /** The last error, fatal or not. */
  lastError: KemariError | undefined;
}

/** Events of a {@link NetTap}. */
export interface NetTapEvents {
  connect: [];
  disconnect: [KemariError | undefined];
  peerConnect: [];
  peerDisconnect: [KemariError | undefined];
  pause: [];
  resume: [];
  close: [KemariError | undefined];
  error: [KemariError];
}

/** What {@link NetTap.qemuArgs} puts on the NIC. */
export interface NetTapQemuArgsOptions {
  /** The netdev id. Default 'n0'. */
  id?: string;
  /** The NIC model. Default 'e1000'. */
  model?: string;
  /** The NIC's MAC address, e.g. '52:54:00:12:34:56'. Default: QEMU's choice. */
  mac?: string;
}

/** A listening network tap. Create it with {@link NetTap.listen}, before starting QEMU. */
export class NetTap extends EventEmitter<NetTapEvents> {
  /** The socket path QEMU connects to. */
  readonly path: string;
  /** The outside peer's socket path, if the outside is a peer. */
  readonly outsidePath: string | undefined;
  /** The tap channel of every frame. */
  readonly channel: string;
  /** Largest frame accepted from either side. */
  readonly frameBytesMax: number;
  /** Resolves once the tap is closed, with the fatal error if there was one; never rejects. */
  readonly closed: Promise<KemariError | undefined>;
  private resolveClosed!: (error: KemariError | undefined) => void;
  private readonly pipeline: OutputPipeline;
  private readonly onFrame: ((frame: Uint8Array) => void) | undefined;
  private readonly toGuestBufferedBytesMax: number;
  private listener: Listener | undefined;
  private outsideListener: Listener | undefined;
  private qemu: Connection | undefined;
  private qemuSplitter: StreamFrameSplitter | undefined;
  private reading = false;
  private peer: Connection | undefined;
  private peerSplitter: StreamFrameSplitter | undefined;
  private peerNeedsDrain = false;
  private peerReading = false;
  private closing: Promise<void> | undefined;
  private readonly counters = { framesFromGuest: 0, framesToGuest: 0, framesToGuestDropped: 0, connectionsRefused: 0 };
  private lastError: KemariError | undefined;

  /**
   * Listens on `path` (and `outsidePath`); stale socket files are replaced, live listeners are not
   * (KEMARI_LISTEN_FAILED). Rejects with KEMARI_INVALID_ARGUMENT for relative paths, both or neither of `onFrame`
   * and `outsidePath`, or bad bounds.
   */
  static async listen(options: NetTapOptions): Promise<NetTap> {
    for (const [name, value] of [
      ['path', options?.path],
      ['outsidePath', options?.outsidePath],
    ] as const) {
      if (name === 'outsidePath' && value === undefined) continue;
      if (typeof value !== 'string' || !isAbsolute(value)) {
        throw new KemariError('KEMARI_INVALID_ARGUMENT', `${name} must be absolute (QEMU resolves paths against its own cwd)`, { details: { [name]: value } });
      }
    }
    if ((options.onFrame === undefined) === (options.outsidePath === undefined)) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', 'give exactly one outside: onFrame or outsidePath');
    }
    if (options.onFrame !== undefined && typeof options.onFrame !== 'function') {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', 'onFrame must be a function');
    }
    const tap = new NetTap(options);
    try {
      tap.listener = await listenUnix({ path: options.path }, (connection) => tap.onQemuConnection(connection));
      if (options.outsidePath !== undefined) {
        tap.outsideListener = await listenUnix({ path: options.outsidePath }, (connection) => tap.onPeerConnection(connection));
      }
    } catch (error) {
      tap.pipeline.close();
      await tap.listener?.close();
      throw error;
    }
    if (tap.closing === undefined) tap.pipeline.flush();
    return tap;
  }

  private constructor(options: NetTapOptions) {
    super();
    this.path = options.path;
    this.outsidePath = options.outsidePath;
    this.channel = options.channel ?? NET_CHANNEL_DEFAULT;
    this.onFrame = options.onFrame;
    this.frameBytesMax = options.frameBytesMax ?? NET_FRAME_BYTES_MAX_DEFAULT;
    // Validates frameBytesMax once, with the splitter's own message.
    new StreamFrameSplitter(this.frameBytesMax);
    this.toGuestBufferedBytesMax = options.toGuestBufferedBytesMax ?? TO_GUEST_BUFFERED_BYTES_MAX_DEFAULT;
    if (!Number.isSafeInteger(this.toGuestBufferedBytesMax) || this.toGuestBufferedBytesMax < 1) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', 'toGuestBufferedBytesMax must be a positive integer', {
        details: { toGuestBufferedBytesMax: this.toGuestBufferedBytesMax },
      });
    }
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
    const onFrame = this.onFrame;
    this.pipeline = new OutputPipeline({
      channel: this.channel,
      sink: options.sink,
      coalesce: false,
      outputBytesMax: this.frameBytesMax,
      outsideReady: onFrame !== undefined ? () => true : () => this.peer !== undefined && !this.peerNeedsDrain,
      deliver: onFrame !== undefined ? (frame) => onFrame(frame) : (frame) => this.writeToPeer(frame),
      // Bytes of frames read and not yet accepted: one read (up to 64 KiB) of frames at most, then reading pauses.
      waitingBytesMax: this.frameBytesMax,
      ...(options.outputsInFlightMax === undefined ? {} : { outputsInFlightMax: options.outputsInFlightMax }),
      ...(options.inFlightBytesMax === undefined ? {} : { inFlightBytesMax: options.inFlightBytesMax }),
      ...(options.retryDelayMs === undefined ? {} : { retryDelayMs: options.retryDelayMs }),
      replay: options.replay?.take(this.channel) ?? [],
      onFlow: (paused) => this.onFlow(paused),
      onError: (error) => this.fail(error),
    });
  }

  /**
   * Call with the VM stopped, before its epoch is sealed (the primary's `settleOutputs`): resolves once what the
   * guest wrote before the stop has been read and handed to the event-tap, so it belongs to that epoch.
   */
  settle(timeoutMs?: number): Promise<void> {
    return this.pipeline.settle(timeoutMs);
  }

  /**
   * The QEMU arguments that attach a NIC to this tap: `-netdev stream,...,server=off -device <model>,netdev=<id>`.
   * `romfile=` skips the option ROM (about 2 s of boot under TCG).
   */
  qemuArgs(options: NetTapQemuArgsOptions = {}): string[] {
    const id = options.id ?? 'n0';
    const device = `${options.model ?? 'e1000'},netdev=${id},romfile=${options.mac === undefined ? '' : `,mac=${options.mac}`}`;
    return ['-netdev', `stream,id=${id},server=off,addr.type=unix,addr.path=${this.path.replaceAll(',', ',,')}`, '-device', device];
  }

  /** QEMU is connected now. */
  get connected(): boolean {
    return this.qemu !== undefined;
  }

  /** Counters and the state of the bounds. */
  stats(): NetTapStats {
    return { ...this.pipeline.stats, ...this.counters, connected: this.connected, peerConnected: this.peer !== undefined, lastError: this.lastError };
  }

  /**
   * Sends one Ethernet frame to the guest, straight through (input needs no output commit). Returns false when it
   * was dropped: no QEMU connected, or more than `toGuestBufferedBytesMax` already queued towards it. Throws
   * KEMARI_INVALID_ARGUMENT for an empty frame or one above `frameBytesMax`.
   */
  inject(frame: Uint8Array): boolean {
    if (!(frame instanceof Uint8Array) || frame.byteLength === 0 || frame.byteLength > this.frameBytesMax) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', `a frame must be a Uint8Array of 1..${this.frameBytesMax} bytes`, {
        details: { bytes: (frame as Uint8Array | undefined)?.byteLength },
      });
    }
    return this.toGuest(frame) !== 'dropped';
  }

  /** Stops listening and closes QEMU's and the peer's connections. Frames still held are not delivered. Idempotent. */
  close(): Promise<void> {
    return this.shutdown(undefined);
  }

  private shutdown(error: KemariError | undefined): Promise<void> {
    if (this.closing !== undefined) return this.closing;
    this.pipeline.close();
    const reason = error ?? new KemariError('KEMARI_CONNECTION_CLOSED', `the net tap on ${this.path} was closed`, { details: { path: this.path } });
    const qemu = this.qemu;
    const peer = this.peer;
    this.qemu = undefined;
    this.peer = undefined;
    qemu?.close(reason);
    peer?.close(reason);
    this.closing = Promise.all([this.listener?.close(), this.outsideListener?.close()]).then(() => {
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

  private onQemuConnection(connection: Connection): void {
    if (this.refuseSecond(connection, this.qemu, 'a QEMU')) return;
    this.qemu = connection;
    this.qemuSplitter = new StreamFrameSplitter(this.frameBytesMax);
    connection.on('close', (error) => {
      if (this.qemu !== connection) return;
      this.qemu = undefined;
      this.reading = false;
      // Frames for a guest that is away are dropped, not held: let the peer go on.
      this.setPeerReading(true);
      this.emit('disconnect', error);
    });
    connection.on('drain', () => this.setPeerReading(true));
    this.setReading(!this.pipeline.paused);
    this.setPeerReading(true);
    this.emit('connect');
  }

  private readonly onQemuData = (chunk: Uint8Array): void => {
    let frames: Uint8Array[];
    try {
      frames = (this.qemuSplitter as StreamFrameSplitter).push(chunk);
    } catch (error) {
      this.fail(error as KemariError);
      return;
    }
    for (const frame of frames) {
      this.counters.framesFromGuest += 1;
      this.pipeline.push(frame);
    }
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

  private onPeerConnection(connection: Connection): void {
    if (this.refuseSecond(connection, this.peer, 'an outside peer')) return;
    this.peer = connection;
    this.peerSplitter = new StreamFrameSplitter(this.frameBytesMax);
    this.peerNeedsDrain = false;
    this.peerReading = false;
    connection.on('close', (error) => {
      if (this.peer !== connection) return;
      this.peer = undefined;
      this.peerReading = false;
      this.emit('peerDisconnect', error);
    });
    connection.on('drain', () => {
      if (this.peer !== connection) return;
      this.peerNeedsDrain = false;
      this.pipeline.flush();
    });
    this.setPeerReading(true);
    this.emit('peerConnect');
    this.pipeline.flush();
  }

  private readonly onPeerData = (chunk: Uint8Array): void => {
    const peer = this.peer;
    if (peer === undefined) return;
    let frames: Uint8Array[];
    try {
      frames = (this.peerSplitter as StreamFrameSplitter).push(chunk);
    } catch (error) {
      // An outside peer that lost its framing is cut off; the guest's side is unaffected.
      this.report(error as KemariError);
      peer.close(error as KemariError);
      return;
    }
    // Backpressure from QEMU holds the peer back (until QEMU's 'drain') instead of dropping its frames.
    for (const frame of frames) if (this.toGuest(frame) === 'backed-up') this.setPeerReading(false);
  };

  private setPeerReading(on: boolean): void {
    const peer = this.peer;
    if (peer === undefined || on === this.peerReading) return;
    this.peerReading = on;
    if (on) peer.on('data', this.onPeerData);
    else peer.off('data', this.onPeerData);
  }

  /** Writes one frame to QEMU: 'backed-up' when QEMU's socket is above its high-water mark (wait for 'drain'). */
  private toGuest(frame: Uint8Array): 'sent' | 'backed-up' | 'dropped' {
    const qemu = this.qemu;
    if (qemu === undefined || qemu.bufferedBytes > this.toGuestBufferedBytesMax) {
      this.counters.framesToGuestDropped += 1;
      return 'dropped';
    }
    this.counters.framesToGuest += 1;
    return qemu.write([encodeStreamFrameHeader(frame.byteLength), frame]) ? 'sent' : 'backed-up';
  }

  private writeToPeer(frame: Uint8Array): void {
    const peer = this.peer as Connection;
    if (!peer.write([encodeStreamFrameHeader(frame.byteLength), frame])) this.peerNeedsDrain = true;
  }

  private refuseSecond(connection: Connection, current: Connection | undefined, what: string): boolean {
    if (this.closing !== undefined) {
      connection.close(new KemariError('KEMARI_CONNECTION_CLOSED', `the net tap on ${this.path} is closed`, { details: { path: this.path } }));
      return true;
    }
    if (current === undefined) return false;
    this.counters.connectionsRefused += 1;
    connection.close(new KemariError('KEMARI_PROTOCOL', `the net tap on ${this.path} already has ${what} connected`, { details: { path: this.path } }));
    return true;
  }
}
