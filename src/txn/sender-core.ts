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
    return this.state === 'ready' && this.inFlight.length < this.options.pipelineDepth;
  }

  /** Transactions sent and not yet acked. */
  get inFlightCount(): number {
    return this.inFlight.length;
  }

  /** The txn the next transaction will carry. */
  get nextTxn(): number {
    return this.lastTxn + 1;
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
    if (!this.canBegin) throw new KemariError('KEMARI_PROTOCOL', `cannot begin a transaction (state ${this.state}, ${this.inFlight.length} in flight)`);
    if (this.lastTxn === this.sessionBase && !capture.full) {
      throw new KemariError('KEMARI_PROTOCOL', 'the first transaction of a session must be a full sync');
    }
    const txn = this.lastTxn + 1;
    const { bodyBytesMax, pagesPerFrameMax } = this.options;
    const frames: EncodedFrame[] = [];
    const digest = new TxnDigest();
    let seq = 0;
    const push = (frame: Frame): void => {
      const encoded = encodeFrame(frame, { bodyBytesMax });
      digest.add(encoded.bodyBytes, encoded.bodyCrc);
      frames.push(encoded);
    };
    push({ type: FrameType.BEGIN, txn, seq: seq++, body: { full: capture.full, baseTxn: this.lastTxn, releasedTxn } });
    const pageBytes = this.options.hello.pageBytes;
    // 8-byte prefix plus a 16-byte descriptor and at most one page of data per page.
    const pagesPerFrame = Math.max(1, Math.min(pagesPerFrameMax, Math.floor((bodyBytesMax - 8) / (pageBytes + 16))));
    for (let at = 0; at < capture.pages.length; at += pagesPerFrame) {
      const batch: Page[] = capture.pages.slice(at, at + pagesPerFrame);
      push({ type: FrameType.PAGES, txn, seq: seq++, body: { pageBytes, pages: batch } });
    }
    for (const device of capture.devices) push({ type: FrameType.DEVICE, txn, seq: seq++, body: device });
    for (const write of capture.diskWrites) {
      // Large writes are split so no frame exceeds the peer's limit.
      const chunkBytes = bodyBytesMax - 16;
      for (let off = 0; off < write.data.byteLength; off += chunkBytes) {
        push({
          type: FrameType.DISK,
          txn,
          seq: seq++,
          body: { diskId: write.diskId, offset: write.offset + off, data: write.data.subarray(off, off + chunkBytes) },
        });
      }
    }
    for (const event of events) push({ type: FrameType.EVENT, txn, seq: seq++, body: event });
    push({
      type: FrameType.COMMIT,
      txn,
      seq,
      body: { frameCount: digest.frameCount, crcDigest: digest.crcDigest, bodyBytes: digest.bodyBytes, stateDigest: capture.stateDigest },
    });
    this.lastTxn = txn;
    this.inFlight.push({ txn, stateDigest: capture.stateDigest });
    let wireBytes = 0;
    for (const f of frames) wireBytes += f.header.byteLength + f.bodyBytes;
    return { txn, full: capture.full, frames, wireBytes, pageCount: capture.pages.length, stateDigest: capture.stateDigest };
  }

  private sessionBase = 0;

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
