import { describe, expect, it } from 'vitest';
import { FrameDecoder, FrameType, KemariError, ReasonCode, TxnDigest, encodeFrame } from '../../src/index.js';
import type { DecodedFrame } from '../../src/index.js';
import { digestHex } from '../../src/replica/state-digest.js';
import { SenderCore } from '../../src/txn/sender-core.js';
import { STAGED_PAGES_PER_GUEST_PAGE } from '../../src/txn/receiver-core.js';
import { SimulatedVm } from '../../src/vm/simulated-vm.js';
import { ReceiverSide, helloOf, joinFrames, recordStream } from '../helpers/session.js';
import type { RecordedStream } from '../helpers/session.js';

const recorded = recordStream({ memoryBytes: 128 * 1024, epochs: 4, stepsPerEpoch: 2, seed: 5 });

/** The frames of the recorded stream, as raw byte slices. */
function frameSlices(r: RecordedStream): Buffer[] {
  const offsets = r.epochs.flatMap((e) => e.frameOffsets);
  return offsets.map((at, i) => r.stream.subarray(at, offsets[i + 1] ?? r.stream.byteLength));
}

function decodeOne(bytes: Uint8Array): DecodedFrame {
  let frame: DecodedFrame | undefined;
  new FrameDecoder().push(bytes, (f) => (frame = f));
  return frame!;
}

/** Sends the HELLO then `frames`; returns the receiver. */
function run(frames: Uint8Array[], options: ConstructorParameters<typeof ReceiverSide>[0] = {}): ReceiverSide {
  const side = new ReceiverSide(options);
  side.feed(recorded.hello);
  for (const f of frames) side.feed(f);
  return side;
}

/** The NACK the receiver sent last, decoded. */
function lastNack(side: ReceiverSide): { txn: number; code: number } {
  const frame = decodeOne(side.sent.at(-1)!);
  expect(frame.type).toBe(FrameType.NACK);
  if (frame.type !== FrameType.NACK) throw new Error('unreachable');
  return { txn: frame.txn, code: frame.body.code };
}

const frames = frameSlices(recorded);
const firstTxnFrames = recorded.epochs[0]!.frameOffsets.length;

describe('the receiver refuses, NACKs and keeps its epoch', () => {
  it('applies the untouched stream (the cases below differ from it in one way each)', () => {
    const side = run(frames);
    expect(side.applied).toEqual([1, 2, 3, 4]);
    expect(side.errors).toEqual([]);
  });

  it('a transaction larger than txnBytesMax → KEMARI_TXN_TOO_LARGE, nothing applied', () => {
    const side = run(frames, { txnBytesMax: 256 });
    expect(side.errors.map((e) => e.code)).toEqual(['KEMARI_TXN_TOO_LARGE']);
    expect(lastNack(side)).toEqual({ txn: 1, code: ReasonCode.TXN_TOO_LARGE });
    expect(side.applied).toEqual([]);
    expect(side.closed).toBe(true);
  });

  it('more frames than txnFramesMax → KEMARI_TXN_TOO_LARGE', () => {
    const side = run(frames, { txnFramesMax: 3 });
    expect(side.errors.map((e) => e.code)).toEqual(['KEMARI_TXN_TOO_LARGE']);
  });

  it('a repeated transaction → KEMARI_TXN_OUT_OF_ORDER; the first copy stays committed', () => {
    const txn2 = frames.slice(firstTxnFrames, firstTxnFrames + recorded.epochs[1]!.frameOffsets.length);
    const side = run([...frames.slice(0, firstTxnFrames), ...txn2, ...txn2]);
    expect(side.applied).toEqual([1, 2]);
    expect(side.errors.map((e) => e.code)).toEqual(['KEMARI_TXN_OUT_OF_ORDER']);
    expect(lastNack(side).code).toBe(ReasonCode.OUT_OF_ORDER);
    expect(digestHex(side.replica!.digest())).toBe(digestHex(recorded.epochs[1]!.digest));
  });

  it('an old transaction after newer ones → KEMARI_TXN_OUT_OF_ORDER', () => {
    const side = run([...frames, ...frames.slice(0, firstTxnFrames)]);
    expect(side.applied).toEqual([1, 2, 3, 4]);
    expect(side.errors.map((e) => e.code)).toEqual(['KEMARI_TXN_OUT_OF_ORDER']);
  });

  it('a skipped transaction → KEMARI_TXN_OUT_OF_ORDER', () => {
    const e = recorded.epochs;
    const skipStart = firstTxnFrames + e[1]!.frameOffsets.length;
    const side = run([...frames.slice(0, firstTxnFrames), ...frames.slice(skipStart)]);
    expect(side.applied).toEqual([1]);
    expect(side.errors.map((x) => x.code)).toEqual(['KEMARI_TXN_OUT_OF_ORDER']);
  });

  it('an incremental epoch before any full sync → KEMARI_TXN_OUT_OF_ORDER', () => {
    // Renumber txn 2 as txn 1 on base 0: it is well-formed, but not a full sync.
    const txn2 = frames.slice(firstTxnFrames, firstTxnFrames + recorded.epochs[1]!.frameOffsets.length).map(decodeOne);
    const digest = new TxnDigest();
    const renumbered = txn2.map((f) => {
      const frame = { ...f, txn: 1 } as DecodedFrame;
      if (frame.type === FrameType.BEGIN) frame.body = { ...frame.body, baseTxn: 0 };
      if (frame.type === FrameType.COMMIT) {
        frame.body = { ...frame.body, frameCount: digest.frameCount, bodyBytes: digest.bodyBytes, crcDigest: digest.crcDigest };
      }
      const encoded = encodeFrame(frame);
      digest.add(encoded.bodyBytes, encoded.bodyCrc);
      return joinFrames([encoded]);
    });
    const side = new ReceiverSide();
    side.feed(recorded.hello);
    for (const f of renumbered) side.feed(f);
    expect(side.errors.map((x) => x.code)).toEqual(['KEMARI_TXN_OUT_OF_ORDER']);
    expect(side.replica!.hasCommittedEpoch).toBe(false);
  });

  it('a missing frame inside a transaction → KEMARI_TXN_OUT_OF_ORDER (seq gap)', () => {
    const side = run([...frames.slice(0, 2), ...frames.slice(3)]);
    expect(side.errors.map((e) => e.code)).toEqual(['KEMARI_TXN_OUT_OF_ORDER']);
    expect(side.applied).toEqual([]);
  });

  it('a forged frame with the right seq but other contents → KEMARI_TXN_INCOMPLETE at COMMIT, nothing applied', () => {
    const victim = decodeOne(frames[firstTxnFrames + 1]!);
    if (victim.type !== FrameType.PAGES) throw new Error('expected PAGES as the second frame of txn 2');
    const page = victim.body.pages[0]!;
    const forgedData = Uint8Array.from(page.data);
    forgedData[0] = forgedData[0]! ^ 0xff;
    const forged = encodeFrame({ ...victim, body: { ...victim.body, pages: [{ ...page, data: forgedData }, ...victim.body.pages.slice(1)] } });
    const tampered = [...frames];
    tampered[firstTxnFrames + 1] = joinFrames([forged]);
    const side = run(tampered);
    expect(side.applied).toEqual([1]);
    expect(side.errors.map((e) => e.code)).toEqual(['KEMARI_TXN_INCOMPLETE']);
    expect(lastNack(side)).toEqual({ txn: 2, code: ReasonCode.INCOMPLETE });
    expect(digestHex(side.replica!.digest())).toBe(digestHex(recorded.epochs[0]!.digest));
  });

  it('a frame of another transaction inside one → KEMARI_TXN_OUT_OF_ORDER', () => {
    const side = run([frames[0]!, frames[firstTxnFrames + 1]!]);
    expect(side.errors.map((e) => e.code)).toEqual(['KEMARI_TXN_OUT_OF_ORDER']);
  });

  it('a frame outside any transaction → KEMARI_PROTOCOL', () => {
    const side = run([frames[1]!]);
    expect(side.errors.map((e) => e.code)).toEqual(['KEMARI_PROTOCOL']);
  });

  it('a corrupted byte → the decoder code, NACK BAD_FRAME, the staged transaction discarded', () => {
    const corrupt = Buffer.from(frames[1]!);
    corrupt[corrupt.length - 1]! ^= 1;
    const side = run([frames[0]!, corrupt, ...frames.slice(2)]);
    expect(side.errors.map((e) => e.code)).toEqual(['KEMARI_BODY_CHECKSUM']);
    expect(lastNack(side)).toEqual({ txn: 1, code: ReasonCode.BAD_FRAME });
    expect(side.replica!.hasCommittedEpoch).toBe(false);
  });

  it('ABORT discards the staged transaction; the same txn number may follow', () => {
    const abort = joinFrames([encodeFrame({ type: FrameType.ABORT, txn: 1, seq: 0, body: { code: ReasonCode.SENDER_ABORT, message: 'vm stopped' } })]);
    const side = run([...frames.slice(0, 3), abort, ...frames]);
    expect(side.errors).toEqual([]);
    expect(side.applied).toEqual([1, 2, 3, 4]);
  });

  it('a state digest that does not match → KEMARI_VERIFY_FAILED, rolled back to the previous epoch exactly', () => {
    const commitIndex = firstTxnFrames + recorded.epochs[1]!.frameOffsets.length - 1;
    const commit = decodeOne(frames[commitIndex]!);
    if (commit.type !== FrameType.COMMIT) throw new Error('expected COMMIT');
    const wrong = Uint8Array.from(commit.body.stateDigest);
    wrong[0] = wrong[0]! ^ 1;
    const tampered = [...frames];
    tampered[commitIndex] = joinFrames([encodeFrame({ ...commit, body: { ...commit.body, stateDigest: wrong } })]);
    const side = run(tampered);
    expect(side.errors.map((e) => e.code)).toEqual(['KEMARI_VERIFY_FAILED']);
    expect(lastNack(side)).toEqual({ txn: 2, code: ReasonCode.VERIFY_FAILED });
    expect(side.replica!.committedTxn).toBe(1);
    expect(digestHex(side.replica!.digest())).toBe(digestHex(recorded.epochs[0]!.digest));
  });
});

describe('HELLO', () => {
  it('the sender refuses a secondary whose geometry differs → KEMARI_HELLO_MISMATCH', () => {
    const vm = new SimulatedVm({ memoryBytes: 64 * 1024 });
    const sender = new SenderCore({ hello: helloOf(vm), pipelineDepth: 1, bodyBytesMax: 1 << 20, pagesPerFrameMax: 16 });
    sender.start();
    const reply = joinFrames([encodeFrame({ type: FrameType.HELLO, txn: 0, seq: 0, body: { ...helloOf(vm), role: 'secondary', memoryBytes: 128 * 1024 } })]);
    const events = sender.receive(reply);
    expect(events).toHaveLength(1);
    expect(events[0]!.type).toBe('refused');
    expect((events[0] as { error: KemariError }).error.code).toBe('KEMARI_HELLO_MISMATCH');
    expect(sender.closed).toBe(true);
  });

  it('a NACK reaches the sender as a refusal with its reason', () => {
    const vm = new SimulatedVm({ memoryBytes: 64 * 1024 });
    const sender = new SenderCore({ hello: helloOf(vm), pipelineDepth: 1, bodyBytesMax: 1 << 20, pagesPerFrameMax: 16 });
    sender.start();
    const nack = joinFrames([encodeFrame({ type: FrameType.NACK, txn: 0, seq: 0, body: { code: ReasonCode.HELLO_MISMATCH, message: 'no' } })]);
    const events = sender.receive(nack);
    expect((events[0] as { error: KemariError }).error.code).toBe('KEMARI_HELLO_MISMATCH');
  });

  it('the first transaction of a session must be a full sync', () => {
    const vm = new SimulatedVm({ memoryBytes: 64 * 1024 });
    const sender = new SenderCore({ hello: helloOf(vm), pipelineDepth: 1, bodyBytesMax: 1 << 20, pagesPerFrameMax: 16 });
    const side = new ReceiverSide();
    side.feed(joinFrames(sender.start()));
    for (const reply of side.sent.splice(0)) sender.receive(reply);
    vm.pause();
    const capture = vm.capture({ full: false, digest: false });
    expect(() => sender.encodeTransaction(capture, [], 0)).toThrow(expect.objectContaining({ code: 'KEMARI_PROTOCOL' }));
  });
});

describe('STAND_DOWN in the cores', () => {
  const standDown = (committedTxn: number): Buffer => joinFrames([encodeFrame({ type: FrameType.STAND_DOWN, txn: 0, seq: 0, body: { committedTxn, reason: 'guest powered off' } })]);

  it('between transactions the receiver hands it to its driver; inside one it is a protocol error and nothing staged applies', () => {
    const between = run(frames.slice(0, firstTxnFrames));
    expect(between.core.receive(standDown(1))).toEqual([{ type: 'stand-down', standDown: { committedTxn: 1, reason: 'guest powered off' } }]);

    const inside = run([...frames.slice(0, firstTxnFrames), ...frames.slice(firstTxnFrames, firstTxnFrames + 1), standDown(1)]);
    expect(inside.errors.map((e) => e.code)).toEqual(['KEMARI_PROTOCOL']);
    expect(inside.applied).toEqual([1]);
    expect(inside.closed).toBe(true);
  });

  it('the sender takes a confirmation only of the txn it saw acked, with nothing in flight', () => {
    const vm = new SimulatedVm({ memoryBytes: 64 * 1024 });
    const session = (): { sender: SenderCore; side: ReceiverSide } => {
      const sender = new SenderCore({ hello: helloOf(vm), pipelineDepth: 1, bodyBytesMax: 1 << 20, pagesPerFrameMax: 16 });
      const side = new ReceiverSide();
      side.feed(joinFrames(sender.start()));
      for (const reply of side.sent.splice(0)) sender.receive(reply);
      vm.pause();
      const out = sender.encodeTransaction(vm.capture({ full: true, digest: true }), [], 0);
      vm.resume();
      side.feed(joinFrames(out.frames));
      for (const reply of side.sent.splice(0)) sender.receive(reply);
      return { sender, side };
    };
    const confirmed = session().sender.receive(standDown(1));
    expect(confirmed).toEqual([{ type: 'stood-down', standDown: { committedTxn: 1, reason: 'guest powered off' } }]);
    const other = session().sender.receive(standDown(2));
    expect(other.map((e) => e.type)).toEqual(['refused']);
    expect((other[0] as { error: KemariError }).error.code).toBe('KEMARI_PROTOCOL');
  });
});

describe('ack means applied (invariant 3)', () => {
  it('a complete transaction yields an apply action and no ACK; the ACK comes only from applied()', async () => {
    const { ReceiverCore } = await import('../../src/txn/receiver-core.js');
    const core = new ReceiverCore({
      bodyBytesMax: 1 << 20,
      txnBytesMax: 1 << 30,
      txnFramesMax: 1 << 20,
      committedTxn: 0,
      acceptHello: (hello) => ({ ...hello, role: 'secondary' }),
    });
    core.receive(recorded.hello);
    const actions = core.receive(recorded.stream.subarray(0, recorded.epochs[0]!.endOffset));
    expect(actions.map((a) => a.type)).toEqual(['apply']);
    const acks = core.applied(1, new Uint8Array(0));
    expect(acks.map((a) => a.type)).toEqual(['send']);
    const ack = decodeOne(joinFrames([(acks[0] as { frame: Parameters<typeof joinFrames>[0][number] }).frame]));
    expect([ack.type, ack.txn]).toEqual([FrameType.ACK, 1]);
    // Reporting a txn out of order is a driver bug, refused loudly.
    expect(() => core.applied(5, new Uint8Array(0))).toThrow(expect.objectContaining({ code: 'KEMARI_INVALID_ARGUMENT' }));
  });
});

describe('staging bounds', () => {
  it('a transaction listing more pages than the bound (4 per guest page) → KEMARI_TXN_TOO_LARGE (ZERO pages are cheap on the wire, not in memory)', () => {
    const side = new ReceiverSide();
    side.feed(recorded.hello);
    const pageCount = (128 * 1024) / 4096;
    const zeros = (from: number) => Array.from({ length: pageCount }, (_, i) => ({ index: from + i, kind: 1 as const, data: new Uint8Array(0) }));
    const frames = [encodeFrame({ type: FrameType.BEGIN, txn: 1, seq: 0, body: { full: true, baseTxn: 0, releasedTxn: 0 } })];
    for (let seq = 1; seq <= STAGED_PAGES_PER_GUEST_PAGE + 1; seq++) {
      frames.push(encodeFrame({ type: FrameType.PAGES, txn: 1, seq, body: { pageBytes: 4096, pages: zeros(0) } }));
    }
    side.feed(joinFrames(frames.slice(0, STAGED_PAGES_PER_GUEST_PAGE + 1)));
    expect(side.errors).toEqual([]); // up to the bound: fine (a pre-copied full sync repeats pages)
    side.feed(joinFrames(frames.slice(STAGED_PAGES_PER_GUEST_PAGE + 1)));
    expect(side.errors.map((e) => e.code)).toEqual(['KEMARI_TXN_TOO_LARGE']);
  });
});

describe('one page size per transaction', () => {
  it('a PAGES frame changing the page size inside a transaction → KEMARI_BAD_BODY, nothing staged applies', () => {
    const side = new ReceiverSide();
    side.feed(recorded.hello);
    side.feed(
      joinFrames([
        encodeFrame({ type: FrameType.BEGIN, txn: 1, seq: 0, body: { full: true, baseTxn: 0, releasedTxn: 0 } }),
        encodeFrame({ type: FrameType.PAGES, txn: 1, seq: 1, body: { pageBytes: 4096, pages: [{ index: 0, kind: 1, data: new Uint8Array(0) }] } }),
        encodeFrame({ type: FrameType.PAGES, txn: 1, seq: 2, body: { pageBytes: 512, pages: [{ index: 1, kind: 1, data: new Uint8Array(0) }] } }),
      ]),
    );
    expect(side.errors.map((e) => e.code)).toEqual(['KEMARI_BAD_BODY']);
    expect(side.applied).toEqual([]);
  });
});
