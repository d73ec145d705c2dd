/**
 * The primary's protocol state machine, sans I/O: it turns epoch captures into ft-transactions (BEGIN, PAGES
 * batches, DEVICE, DISK, EVENT, COMMIT), tracks the transactions in flight (at most `pipelineDepth`), and turns
 * received bytes into events (session established, txn acked, txn refused).
 *
 * The driver's duties:
 *   1. Write `start()`'s HELLO, feed every received chunk to `receive`, and wait for the `session` event.
 *   2. Begin a transaction only when `canBegin`; write its frames in order, honouring the connection's
 *      backpressure. The first transaction of a session must be a full sync.
 *   3. Release the outputs of an epoch only on its `ack` event, never earlier (invariant 2).
 *   4. On `refused` or a lost connection, release nothing more: held outputs stay held.
 */
import { KemariError } from '../errors.js';
import type { EpochCapture } from '../vm/adapter.js';
import type { EncodedFrame } from '../wire/encoder.js';
import { encodeFrame } from '../wire/encoder.js';
import type { DecodedFrame, Frame } from '../wire/frame.js';
import { FrameDecoder } from '../wire/decoder.js';
import { FrameType, PROTOCOL_VERSION } from '../wire/header.js';
import type { OutputEvent } from '../wire/bodies/event.js';
import type { Heartbeat } from '../wire/bodies/heartbeat.js';
import type { Hello } from '../wire/bodies/hello.js';
import type { Page } from '../wire/bodies/pages.js';
import type { Reason } from '../wire/bodies/reason.js';
import type { StandDown } from '../wire/bodies/stand-down.js';
import { TxnDigest } from '../wire/txn-digest.js';

/** Options of a {@link SenderCore}. */
export interface SenderCoreOptions {
  /** The HELLO this side sends (role 'primary'). */
  hello: Hello;
  /** Most transactions in flight (sent, not yet acked). */
  pipelineDepth: number;
  /** Largest frame body to produce (the peer's decoder limit). */
  bodyBytesMax: number;
  /** Most pages in one PAGES frame. */
  pagesPerFrameMax: number;
  /** Largest frame body accepted from the peer. */
  receiveBodyBytesMax?: number;
}

/** A transaction ready to write. */
export interface OutgoingTxn {
  txn: number;
  full: boolean;
  frames: EncodedFrame[];
  /** Bytes on the wire, headers included. */
  wireBytes: number;
  pageCount: number;
  stateDigest: Uint8Array;
}

/** What happened, for the driver. */
export type SenderEvent =
  | { type: 'session'; peer: Hello; features: string[] }
  | { type: 'ack'; txn: number; stateDigest: Uint8Array }
  | { type: 'heartbeat'; heartbeat: Heartbeat }
  /** The secondary confirmed STAND_DOWN: it holds the final epoch and will not promote by itself. */
  | { type: 'stood-down'; standDown: StandDown }
  | { type: 'refused'; error: KemariError };

interface InFlight {
  txn: number;
  stateDigest: Uint8Array;
}

export class SenderCore {
  private readonly decoder: FrameDecoder;
  private state: 'new' | 'hello' | 'ready' | 'closed' = 'new';
  private readonly inFlight: InFlight[] = [];
  private lastTxn = 0;
  private acked = 0;
  private negotiated: string[] = [];

  constructor(private readonly options: SenderCoreOptions) {
    if (!Number.isInteger(options.pipelineDepth) || options.pipelineDepth < 1) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', 'pipelineDepth must be an integer >= 1', { details: { pipelineDepth: options.pipelineDepth } });
    }
    this.decoder = new FrameDecoder({ bodyBytesMax: options.receiveBodyBytesMax ?? 1 << 20 });
  }

  /** True when a transaction may be begun. */
  get canBegin(): boolean {
    return this.state === 'ready' && this.openTxn === undefined && this.inFlight.length < this.options.pipelineDepth;
  }

  /** Transactions sent and not yet acked. */
  get inFlightCount(): number {
    return this.inFlight.length;
  }

  /** The txn the next transaction will carry. */
  get nextTxn(): number {
    return this.lastTxn + 1;
  }

  /** The txn the epoch being captured belongs to: the open transaction's, or the next one's. */
  get captureTxn(): number {
    return this.openTxn?.txn ?? this.lastTxn + 1;
  }

  /** The newest acked txn (0 before the first). */
  get ackedTxn(): number {
    return this.acked;
  }

  /** Features both sides offered. */
  get features(): readonly string[] {
    return this.negotiated;
  }

  /** True once the session ended (refused, closed or lost). */
  get closed(): boolean {
    return this.state === 'closed';
  }

  /** The HELLO to write first. */
  start(): EncodedFrame[] {
    if (this.state !== 'new') throw new KemariError('KEMARI_PROTOCOL', 'start() called twice');
    this.state = 'hello';
    return [encodeFrame({ type: FrameType.HELLO, txn: 0, seq: 0, body: this.options.hello })];
  }

  /** Feeds received bytes. */
  receive(chunk: Uint8Array): SenderEvent[] {
    const events: SenderEvent[] = [];
    if (this.state === 'closed') return events;
    try {
      this.decoder.push(chunk, (frame) => this.onFrame(frame, events));
    } catch (error) {
      if (!(error instanceof KemariError)) throw error;
      this.state = 'closed';
      events.push({ type: 'refused', error });
    }
    return events;
  }

  /** The connection is gone: nothing in flight will be acked on it. */
  connectionLost(): void {
    this.state = 'closed';
  }

  /**
   * Frames one epoch. `events` are the outputs held during the epoch; `releasedTxn` the newest epoch whose outputs
   * were released. Page data are not copied: the frames reference the capture's pages.
   */
  encodeTransaction(capture: EpochCapture, events: readonly OutputEvent[], releasedTxn: number): OutgoingTxn {
    const opening = this.openTransaction(capture.full, releasedTxn);
    const closing = this.closeTransaction(capture, events);
    return { ...closing, frames: [...opening, ...closing.frames], wireBytes: closing.wireBytes };
  }

  /**
   * Opens a transaction whose pages will come in several batches (a full sync pre-copied while the guest runs):
   * returns the BEGIN frame. Add pages with {@link addPages}, close with {@link closeTransaction}. A later batch
   * may repeat a page: the receiver applies batches in order, so the later copy wins.
   */
  openTransaction(full: boolean, releasedTxn: number): EncodedFrame[] {
    if (!this.canBegin) throw new KemariError('KEMARI_PROTOCOL', `cannot begin a transaction (state ${this.state}, ${this.inFlight.length} in flight)`);
    if (this.lastTxn === this.sessionBase && !full && !this.resuming) {
      throw new KemariError('KEMARI_PROTOCOL', 'the first transaction of a session must be a full sync');
    }
    const txn = this.lastTxn + 1;
    this.openTxn = { txn, full, seq: 0, digest: new TxnDigest(), pageCount: 0, wireBytes: 0 };
    this.lastTxn = txn;
    this.inFlight.push({ txn, stateDigest: new Uint8Array(0) });
    return [this.push({ type: FrameType.BEGIN, txn, seq: 0, body: { full, baseTxn: txn - 1, releasedTxn } })];
  }

  /** Adds a batch of pages to the open transaction, as PAGES frames within the peer's frame limit. */
  addPages(pages: readonly Page[]): EncodedFrame[] {
    const open = this.requireOpen();
    const pageBytes = this.options.hello.pageBytes;
    const { bodyBytesMax, pagesPerFrameMax } = this.options;
    // 8-byte prefix plus a 16-byte descriptor and at most one page of data per page.
    const pagesPerFrame = Math.max(1, Math.min(pagesPerFrameMax, Math.floor((bodyBytesMax - 8) / (pageBytes + 16))));
    const frames: EncodedFrame[] = [];
    for (let at = 0; at < pages.length; at += pagesPerFrame) {
      frames.push(this.push({ type: FrameType.PAGES, txn: open.txn, seq: open.seq, body: { pageBytes, pages: pages.slice(at, at + pagesPerFrame) } }));
    }
    open.pageCount += pages.length;
    return frames;
  }

  /** Closes the open transaction with the final capture (its pages, devices, disk writes) and the epoch's events. */
  closeTransaction(capture: EpochCapture, events: readonly OutputEvent[]): OutgoingTxn {
    const open = this.requireOpen();
    const frames = this.addPages(capture.pages);
    const { txn } = open;
    const chunkBytes = this.options.bodyBytesMax - 16;
    for (const device of capture.devices) frames.push(this.push({ type: FrameType.DEVICE, txn, seq: open.seq, body: device }));
    for (const write of capture.diskWrites) {
      // Large writes are split so no frame exceeds the peer's limit.
      for (let off = 0; off < write.data.byteLength; off += chunkBytes) {
        frames.push(this.push({ type: FrameType.DISK, txn, seq: open.seq, body: { diskId: write.diskId, offset: write.offset + off, data: write.data.subarray(off, off + chunkBytes) } }));
      }
    }
    for (const event of events) frames.push(this.push({ type: FrameType.EVENT, txn, seq: open.seq, body: event }));
    const d = open.digest;
    frames.push(
      this.push({ type: FrameType.COMMIT, txn, seq: open.seq, body: { frameCount: d.frameCount, crcDigest: d.crcDigest, bodyBytes: d.bodyBytes, stateDigest: capture.stateDigest } }, false),
    );
    this.inFlight.at(-1)!.stateDigest = capture.stateDigest;
    this.openTxn = undefined;
    return { txn, full: open.full, frames, wireBytes: open.wireBytes, pageCount: open.pageCount, stateDigest: capture.stateDigest };
  }

  private openTxn: { txn: number; full: boolean; seq: number; digest: TxnDigest; pageCount: number; wireBytes: number } | undefined;

  private requireOpen(): NonNullable<SenderCore['openTxn']> {
    if (this.openTxn === undefined) throw new KemariError('KEMARI_PROTOCOL', 'no transaction is open');
    return this.openTxn;
  }

  /** Encodes the next frame of the open transaction and counts it (COMMIT is not part of its own digest). */
  private push(frame: Frame, counted = true): EncodedFrame {
    const open = this.requireOpen();
    const encoded = encodeFrame(frame, { bodyBytesMax: this.options.bodyBytesMax });
    if (counted) open.digest.add(encoded.bodyBytes, encoded.bodyCrc);
    open.seq += 1;
    open.wireBytes += encoded.header.byteLength + encoded.bodyBytes;
    return encoded;
  }

  private sessionBase = 0;
  private resuming = false;

  /**
   * The driver holds every change since the peer's committed epoch (the epochs after it, captured but never
   * committed there, are merged into the next capture): the session may start with an incremental transaction
   * on the peer's replica instead of a full sync. Only after the `session` event, and only when the peer holds
   * an epoch.
   */
  resumeIncremental(): void {
    if (this.state !== 'ready' || this.lastTxn !== this.sessionBase || this.sessionBase === 0) {
      throw new KemariError('KEMARI_PROTOCOL', 'an incremental resume needs a fresh session on a peer that holds an epoch');
    }
    this.resuming = true;
  }

  private onFrame(frame: DecodedFrame, events: SenderEvent[]): void {
    if (this.state === 'closed') return;
    if (frame.type === FrameType.NACK) throw nacked(frame.txn, frame.body);
    if (this.state === 'hello') {
      if (frame.type !== FrameType.HELLO) throw new KemariError('KEMARI_PROTOCOL', `expected HELLO, got frame type ${frame.type}`);
      const peer = frame.body;
      this.checkPeer(peer);
      this.negotiated = this.options.hello.features.filter((f) => peer.features.includes(f));
      this.lastTxn = peer.committedTxn;
      this.acked = peer.committedTxn;
      this.sessionBase = peer.committedTxn;
      this.state = 'ready';
      events.push({ type: 'session', peer, features: this.negotiated });
      return;
    }
    switch (frame.type) {
      case FrameType.ACK: {
        const head = this.inFlight[0];
        if (head === undefined || head.txn !== frame.txn) {
          throw new KemariError('KEMARI_PROTOCOL', `ACK for txn ${frame.txn}; oldest in flight is ${String(head?.txn)}`);
        }
        if (head.stateDigest.byteLength > 0 && !Buffer.from(frame.body.stateDigest).equals(Buffer.from(head.stateDigest))) {
          throw new KemariError('KEMARI_VERIFY_FAILED', `the secondary's state after txn ${frame.txn} differs from the primary's`, {
            details: { txn: frame.txn },
          });
        }
        this.inFlight.shift();
        this.acked = frame.txn;
        events.push({ type: 'ack', txn: frame.txn, stateDigest: frame.body.stateDigest });
        return;
      }
      case FrameType.HEARTBEAT:
        events.push({ type: 'heartbeat', heartbeat: frame.body });
        return;
      case FrameType.STAND_DOWN:
        if (this.inFlight.length > 0 || frame.body.committedTxn !== this.acked) {
          throw new KemariError('KEMARI_PROTOCOL', `STAND_DOWN confirmed at txn ${frame.body.committedTxn}; acked here is ${this.acked} with ${this.inFlight.length} in flight`);
        }
        events.push({ type: 'stood-down', standDown: frame.body });
        return;
      default:
        throw new KemariError('KEMARI_PROTOCOL', `frame type ${frame.type} is not expected from a secondary`);
    }
  }

  private checkPeer(peer: Hello): void {
    const local = this.options.hello;
    const mismatch = (what: string, details: Record<string, unknown>): never => {
      throw new KemariError('KEMARI_HELLO_MISMATCH', `the secondary's HELLO differs: ${what}`, { details });
    };
    if (peer.role !== 'secondary') mismatch('role', { role: peer.role });
    if (peer.sessionId !== local.sessionId) mismatch('sessionId', { local: local.sessionId, peer: peer.sessionId });
    if (PROTOCOL_VERSION < peer.versionMin || PROTOCOL_VERSION > peer.versionMax) mismatch('protocol version', { peer: [peer.versionMin, peer.versionMax] });
    if (peer.memoryBytes !== local.memoryBytes || peer.pageBytes !== local.pageBytes) {
      mismatch('memory geometry', { local: [local.memoryBytes, local.pageBytes], peer: [peer.memoryBytes, peer.pageBytes] });
    }
    if (peer.devices.join('\0') !== local.devices.join('\0')) mismatch('devices', { local: local.devices, peer: peer.devices });
    const disks = (h: Hello): string => h.disks.map((d) => `${d.id}:${d.bytes}`).join(',');
    if (disks(peer) !== disks(local)) mismatch('disks', { local: disks(local), peer: disks(peer) });
  }
}

function nacked(txn: number, reason: Reason): KemariError {
  const code = reason.code === 8 ? 'KEMARI_HELLO_MISMATCH' : reason.code === 10 ? 'KEMARI_BUSY' : 'KEMARI_NACKED';
  return new KemariError(code, `the secondary refused txn ${txn}: ${reason.message}`, { details: { txn, reason: reason.code } });
}
