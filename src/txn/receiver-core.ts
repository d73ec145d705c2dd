/**
 * The secondary's protocol state machine, sans I/O: bytes in, actions out.
 *
 * It stages each transaction as its frames arrive (bounded by `txnBytesMax` and `txnFramesMax`), checks the
 * COMMIT against what was staged (frame count, body bytes, CRC digest), and hands the whole transaction on as an
 * `apply` action. It acks only when the driver reports the transaction applied ({@link ReceiverCore.applied}):
 * never on receipt (invariant 3). Anything wrong (a bad frame, a txn out of order, an oversize transaction, a
 * failed verification) discards the staged transaction whole, sends a NACK with the reason, and closes: the
 * replica stays at its last committed epoch.
 *
 * The driver's duties, in order, for each batch of actions:
 *   1. `send`: write the frame to the connection.
 *   2. `apply`: apply the transaction to the replica (and journal it, when durable); then call `applied(txn,
 *      digest)` and carry out the actions it returns (the ACK), or `applyFailed(txn, error)` on failure.
 *   3. `close`: close the connection (after the frames sent before it).
 */
import { KemariError } from '../errors.js';
import { FrameDecoder } from '../wire/decoder.js';
import type { EncodedFrame } from '../wire/encoder.js';
import { encodeFrame } from '../wire/encoder.js';
import type { DecodedFrame } from '../wire/frame.js';
import { FrameType } from '../wire/header.js';
import type { Heartbeat } from '../wire/bodies/heartbeat.js';
import type { Failover } from '../wire/bodies/failover.js';
import type { StandDown } from '../wire/bodies/stand-down.js';
import type { Hello } from '../wire/bodies/hello.js';
import { ReasonCode } from '../wire/bodies/reason.js';
import { TxnDigest } from '../wire/txn-digest.js';
import { beginStagedTxn, commitMatches, stageFrame } from './staged-txn.js';
import type { StagedTxn } from './staged-txn.js';
import type { BodyAllocator } from './staging-arena.js';

/** Options of a {@link ReceiverCore}. */
export interface ReceiverCoreOptions {
  /** Largest frame body accepted. */
  bodyBytesMax: number;
  /** Largest transaction (sum of its frames' bodies) staged before COMMIT. */
  txnBytesMax: number;
  /** Most frames in one transaction. */
  txnFramesMax: number;
  /**
   * Most committed transactions handed on to apply and not yet applied (a pipelining primary streams the next
   * while the previous is applied). Default 8.
   */
  pendingAppliesMax?: number;
  /**
   * Staging memory for frame bodies that span received chunks (see StagingArena). It is reset when a transaction
   * begins with nothing awaiting apply, so the driver must not keep views of staged data after `applied`.
   */
  arena?: BodyAllocator;
  /** The last committed txn of the replica: the next transaction must be this plus one. */
  committedTxn: number;
  /**
   * Decides on the primary's HELLO: returns the reply HELLO, or throws a KemariError (KEMARI_HELLO_MISMATCH,
   * KEMARI_BUSY) to refuse the session.
   */
  acceptHello(hello: Hello): Hello;
}

/** What the driver must do. */
export type ReceiverAction =
  | { type: 'send'; frame: EncodedFrame }
  | { type: 'session'; hello: Hello }
  | { type: 'apply'; txn: StagedTxn }
  | { type: 'aborted'; txn: number; reason: string }
  | { type: 'heartbeat'; heartbeat: Heartbeat }
  | { type: 'failover'; failover: Failover }
  /** The primary stands down (its guest stopped on its own); the driver confirms once it holds that epoch. */
  | { type: 'stand-down'; standDown: StandDown }
  | { type: 'close'; error: KemariError | undefined };

interface Staging {
  txn: StagedTxn;
  digest: TxnDigest;
  nextSeq: number;
}

const NACK_REASON: Partial<Record<string, number>> = {
  KEMARI_TXN_TOO_LARGE: ReasonCode.TXN_TOO_LARGE,
  KEMARI_TXN_OUT_OF_ORDER: ReasonCode.OUT_OF_ORDER,
  KEMARI_TXN_INCOMPLETE: ReasonCode.INCOMPLETE,
  KEMARI_VERIFY_FAILED: ReasonCode.VERIFY_FAILED,
  KEMARI_HELLO_MISMATCH: ReasonCode.HELLO_MISMATCH,
  KEMARI_BUSY: ReasonCode.BUSY,
};

export class ReceiverCore {
  private readonly decoder: FrameDecoder;
  private state: 'hello' | 'ready' | 'closed' = 'hello';
  private staging: Staging | undefined;
  /** Highest txn handed on to apply (applied or being applied). */
  private lastTxn: number;
  private appliedTxn: number;
  /** Txns handed on to apply, in order, not yet reported applied. */
  private readonly awaitingApply: number[] = [];
  private actions: ReceiverAction[] = [];
  /** Most pages one transaction may stage: the guest's page count (a full sync lists each page once). */
  private pagesMax = 0;

  constructor(private readonly options: ReceiverCoreOptions) {
    const arena = options.arena;
    this.decoder = new FrameDecoder({
      bodyBytesMax: options.bodyBytesMax,
      ...(arena === undefined ? {} : { allocateBody: (bytes: number) => arena.allocate(bytes) }),
    });
    this.lastTxn = options.committedTxn;
    this.appliedTxn = options.committedTxn;
  }

  /** The txn of the transaction being staged, if any. */
  get stagingTxn(): number | undefined {
    return this.staging?.txn.txn;
  }

  /** Bytes of the transaction being staged. */
  get stagedBytes(): number {
    return this.staging?.digest.bodyBytes ?? 0;
  }

  /** True once closed; every later call returns no action. */
  get closed(): boolean {
    return this.state === 'closed';
  }

  /** Feeds received bytes. */
  receive(chunk: Uint8Array): ReceiverAction[] {
    if (this.state === 'closed') return [];
    try {
      this.decoder.push(chunk, (frame) => this.onFrame(frame));
    } catch (error) {
      if (!(error instanceof KemariError)) throw error;
      this.refuse(error, this.staging?.txn.txn ?? 0);
    }
    return this.take();
  }

  /** The connection was lost: whatever was staged is discarded whole. */
  connectionLost(): ReceiverAction[] {
    if (this.state !== 'closed') {
      this.staging = undefined;
      this.state = 'closed';
    }
    return this.take();
  }

  /** The driver applied `txn`; returns the ACK to send. */
  applied(txn: number, stateDigest: Uint8Array): ReceiverAction[] {
    if (this.state === 'closed') return [];
    if (txn !== this.awaitingApply[0]) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', `applied(${txn}) but ${String(this.awaitingApply[0])} is next to apply`);
    }
    this.awaitingApply.shift();
    this.appliedTxn = txn;
    this.actions.push({ type: 'send', frame: encodeFrame({ type: FrameType.ACK, txn, seq: 0, body: { stateDigest } }) });
    return this.take();
  }

  /** The driver could not apply `txn` (verification failed, journal error): NACK and close. */
  applyFailed(txn: number, error: KemariError): ReceiverAction[] {
    if (this.state === 'closed') return [];
    this.awaitingApply.length = 0;
    this.lastTxn = this.appliedTxn;
    this.refuse(error, txn);
    return this.take();
  }

  /** Ends the session from this side with a NACK carrying `error` (e.g. on shutdown or promotion). */
  shutdown(error: KemariError): ReceiverAction[] {
    if (this.state === 'closed') return [];
    this.refuse(error, this.staging?.txn.txn ?? 0);
    return this.take();
  }

  private take(): ReceiverAction[] {
    const out = this.actions;
    this.actions = [];
    return out;
  }

  private refuse(error: KemariError, txn: number): void {
    if (this.state === 'closed') return;
    this.staging = undefined;
    const code = NACK_REASON[error.code] ?? ReasonCode.BAD_FRAME;
    this.actions.push({
      type: 'send',
      frame: encodeFrame({ type: FrameType.NACK, txn, seq: 0, body: { code, message: truncate(error.message) } }),
    });
    this.actions.push({ type: 'close', error });
    this.state = 'closed';
  }

  private onFrame(frame: DecodedFrame): void {
    if (this.state === 'closed') return;
    if (this.state === 'hello') {
      if (frame.type !== FrameType.HELLO) throw protocol(`expected HELLO, got frame type ${frame.type}`);
      if (frame.body.role !== 'primary') throw new KemariError('KEMARI_HELLO_MISMATCH', 'the peer does not speak as a primary');
      let reply: Hello;
      try {
        reply = this.options.acceptHello(frame.body);
      } catch (error) {
        // Whatever accepting the session failed on (a replica too large to allocate, say) is a refusal of the
        // session, never an exception out of the connection's callback.
        throw error instanceof KemariError ? error : new KemariError('KEMARI_HELLO_MISMATCH', 'the session cannot be accepted', { cause: error });
      }
      this.pagesMax = STAGED_PAGES_PER_GUEST_PAGE * Math.ceil(reply.memoryBytes / reply.pageBytes);
      // The session continues from the epoch the reply names (it may have moved since this core was made).
      this.lastTxn = reply.committedTxn;
      this.appliedTxn = reply.committedTxn;
      this.actions.push({ type: 'send', frame: encodeFrame({ type: FrameType.HELLO, txn: 0, seq: 0, body: reply }) });
      this.actions.push({ type: 'session', hello: frame.body });
      this.state = 'ready';
      return;
    }
    switch (frame.type) {
      case FrameType.BEGIN:
        return this.begin(frame);
      case FrameType.PAGES:
      case FrameType.DEVICE:
      case FrameType.DISK:
      case FrameType.EVENT:
        return this.stage(frame);
      case FrameType.COMMIT:
        return this.commit(frame);
      case FrameType.ABORT: {
        const staging = this.staging;
        if (staging === undefined || staging.txn.txn !== frame.txn) throw protocol(`ABORT for txn ${frame.txn} that is not being staged`);
        this.staging = undefined;
        this.lastTxn = staging.txn.txn - 1;
        this.actions.push({ type: 'aborted', txn: frame.txn, reason: frame.body.message });
        return;
      }
      case FrameType.HEARTBEAT:
        this.actions.push({ type: 'heartbeat', heartbeat: frame.body });
        return;
      case FrameType.FAILOVER:
        this.actions.push({ type: 'failover', failover: frame.body });
        return;
      case FrameType.STAND_DOWN:
        // Sent only once every epoch is acked: a transaction still being staged means the primary is confused.
        if (this.staging !== undefined) throw protocol(`STAND_DOWN while txn ${this.staging.txn.txn} is being staged`);
        this.actions.push({ type: 'stand-down', standDown: frame.body });
        return;
      default:
        throw protocol(`frame type ${frame.type} is not expected from a primary`);
    }
  }

  private begin(frame: DecodedFrame & { type: typeof FrameType.BEGIN }): void {
    if (this.staging !== undefined) throw outOfOrder(`BEGIN of txn ${frame.txn} while txn ${this.staging.txn.txn} is staged`, frame.txn);
    if (frame.seq !== 0) throw outOfOrder(`BEGIN with seq ${frame.seq}`, frame.txn);
    if (frame.txn !== this.lastTxn + 1 || frame.body.baseTxn !== this.lastTxn) {
      throw outOfOrder(`txn ${frame.txn} on base ${frame.body.baseTxn}; expected txn ${this.lastTxn + 1} on base ${this.lastTxn}`, frame.txn);
    }
    const digest = new TxnDigest();
    digest.add(frame.bodyBytes, frame.bodyCrc);
    this.checkBounds(digest, frame.txn);
    // Nothing staged is alive (every committed transaction was applied): its memory can be reused.
    if (this.awaitingApply.length === 0) this.options.arena?.reset();
    this.staging = {
      txn: beginStagedTxn(frame.txn, frame.body),
      digest,
      nextSeq: 1,
    };
  }

  private stage(frame: DecodedFrame): void {
    const staging = this.inTxn(frame);
    staging.digest.add(frame.bodyBytes, frame.bodyCrc);
    this.checkBounds(staging.digest, frame.txn);
    // Each staged page is an object: bound them by the guest's page count, not only by bytes (a ZERO page is 16
    // bytes on the wire and much more in memory). A pre-copied full sync repeats pages, within this factor.
    if (frame.type === FrameType.PAGES && staging.txn.pages.length + frame.body.pages.length > this.pagesMax) {
      throw new KemariError('KEMARI_TXN_TOO_LARGE', `txn ${frame.txn} lists more pages than the guest has (${this.pagesMax})`, {
        details: { txn: frame.txn, pagesMax: this.pagesMax },
      });
    }
    stageFrame(staging.txn, frame);
  }

  private commit(frame: DecodedFrame & { type: typeof FrameType.COMMIT }): void {
    const staging = this.inTxn(frame);
    const { digest } = staging;
    const c = frame.body;
    if (!commitMatches(c, digest)) {
      throw new KemariError('KEMARI_TXN_INCOMPLETE', `COMMIT of txn ${frame.txn} does not match what was staged`, {
        details: {
          txn: frame.txn,
          frames: [c.frameCount, digest.frameCount],
          bodyBytes: [c.bodyBytes, digest.bodyBytes],
          crcDigest: [c.crcDigest, digest.crcDigest],
        },
      });
    }
    if (this.awaitingApply.length >= (this.options.pendingAppliesMax ?? 8)) {
      throw protocol(`txn ${frame.txn} committed while ${this.awaitingApply.length} transactions await apply`);
    }
    staging.txn.stateDigest = c.stateDigest;
    staging.txn.bodyBytes = digest.bodyBytes;
    this.staging = undefined;
    this.lastTxn = frame.txn;
    this.awaitingApply.push(frame.txn);
    this.actions.push({ type: 'apply', txn: staging.txn });
  }

  private inTxn(frame: DecodedFrame): Staging {
    const staging = this.staging;
    if (staging === undefined) throw protocol(`frame type ${frame.type} of txn ${frame.txn} outside a transaction`);
    if (frame.txn !== staging.txn.txn) throw outOfOrder(`frame of txn ${frame.txn} inside txn ${staging.txn.txn}`, frame.txn);
    if (frame.seq !== staging.nextSeq) throw outOfOrder(`seq ${frame.seq} where ${staging.nextSeq} was expected`, frame.txn);
    staging.nextSeq += 1;
    return staging;
  }

  private checkBounds(digest: TxnDigest, txn: number): void {
    if (digest.bodyBytes > this.options.txnBytesMax || digest.frameCount > this.options.txnFramesMax) {
      throw new KemariError('KEMARI_TXN_TOO_LARGE', `txn ${txn} exceeds txnBytesMax ${this.options.txnBytesMax} or txnFramesMax ${this.options.txnFramesMax}`, {
        details: { txn, bodyBytes: digest.bodyBytes, frames: digest.frameCount },
      });
    }
  }
}

/**
 * Most pages one transaction may stage, per page of guest memory: a pre-copied full sync sends every page once,
 * then again the pages dirtied during each round; the sender keeps the total within this.
 */
export const STAGED_PAGES_PER_GUEST_PAGE = 4;

function protocol(message: string): KemariError {
  return new KemariError('KEMARI_PROTOCOL', message);
}

function outOfOrder(message: string, txn: number): KemariError {
  return new KemariError('KEMARI_TXN_OUT_OF_ORDER', message, { details: { txn } });
}


function truncate(message: string): string {
  return Buffer.byteLength(message) <= 1000 ? message : message.slice(0, 900) + '…';
}
