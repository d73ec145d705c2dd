/** fast-check arbitraries for every frame type, within the limits the wire accepts. */
import { fc } from '@fast-check/vitest';
import { FrameType, PageKind, PeerState } from '../../src/index.js';
import type { Frame, Page } from '../../src/index.js';

const u32 = fc.integer({ min: 0, max: 0xffff_ffff });
const u53 = fc.oneof(fc.integer({ min: 0, max: 1000 }), fc.maxSafeNat());
const bytes = (maxLength: number, minLength = 0): fc.Arbitrary<Uint8Array> =>
  fc.uint8Array({ minLength, maxLength });
const name = fc.string({ minLength: 1, maxLength: 40, unit: 'grapheme' }).filter((s) => Buffer.byteLength(s) <= 255);
const txnSeq = { txn: u53, seq: u32 };

const pageBytes = fc.constantFrom(512, 1024, 4096);

const pages = pageBytes.chain((pb) =>
  fc
    .uniqueArray(fc.integer({ min: 0, max: 1 << 20 }), { minLength: 1, maxLength: 12 })
    .chain((indices) => {
      const sorted = [...indices].sort((a, b) => a - b);
      return fc.tuple(
        ...sorted.map((index) =>
          fc.oneof(
            bytes(pb, pb).map((data): Page => ({ index, kind: PageKind.RAW, data })),
            fc.constant<Page>({ index, kind: PageKind.ZERO, data: new Uint8Array(0) }),
            bytes(pb - 1, 1).map((data): Page => ({ index, kind: PageKind.DELTA, data })),
          ),
        ),
      );
    })
    .map((list) => ({ pageBytes: pb, pages: list })),
);

const msgpackValue = fc.letrec((tie) => ({
  value: fc.oneof(
    { depthSize: 'small' },
    fc.integer(),
    fc.boolean(),
    fc.string({ maxLength: 20 }),
    fc.constant(null),
    fc.array(tie('value'), { maxLength: 4 }),
    fc.dictionary(fc.string({ minLength: 1, maxLength: 8 }).filter((k) => k !== '__proto__'), tie('value'), { maxKeys: 4 }),
  ),
})).value;

const reason = fc.record({ code: fc.integer({ min: 1, max: 0xffff }), message: fc.string({ maxLength: 60 }) });
const digest = bytes(64);

/** Any valid frame. */
export const arbFrame: fc.Arbitrary<Frame> = fc.oneof(
  fc.record({
    type: fc.constant(FrameType.HELLO),
    ...txnSeq,
    body: fc.record(
      {
        sessionId: name,
        role: fc.constantFrom('primary' as const, 'secondary' as const),
        versionMin: fc.constant(1),
        versionMax: fc.integer({ min: 1, max: 255 }),
        memoryBytes: u53,
        pageBytes: fc.integer({ min: 1, max: 0xffff_ffff }),
        devices: fc.array(name, { maxLength: 5 }),
        disks: fc.array(fc.record({ id: u32, bytes: u53 }), { maxLength: 3 }),
        committedTxn: u53,
        features: fc.array(name, { maxLength: 3 }),
        auth: bytes(64),
      },
      { requiredKeys: ['sessionId', 'role', 'versionMin', 'versionMax', 'memoryBytes', 'pageBytes', 'devices', 'disks', 'committedTxn', 'features'] },
    ),
  }),
  fc.record({ type: fc.constant(FrameType.BEGIN), ...txnSeq, body: fc.record({ full: fc.boolean(), baseTxn: u53, releasedTxn: u53 }) }),
  fc.record({ type: fc.constant(FrameType.PAGES), ...txnSeq, body: pages }),
  fc.record({ type: fc.constant(FrameType.DEVICE), ...txnSeq, body: fc.record({ name, state: msgpackValue }) }),
  fc.record({
    type: fc.constant(FrameType.DISK),
    ...txnSeq,
    body: fc.record({ diskId: u32, offset: fc.integer({ min: 0, max: 1 << 40 }), data: bytes(2048, 1) }),
  }),
  fc.record({
    type: fc.constant(FrameType.EVENT),
    ...txnSeq,
    body: fc.record({ id: u53, channel: name, payload: bytes(300) }),
  }),
  fc.record({
    type: fc.constant(FrameType.COMMIT),
    ...txnSeq,
    body: fc.record({ frameCount: u32, crcDigest: u32, bodyBytes: u53, stateDigest: digest }),
  }),
  fc.record({ type: fc.constant(FrameType.ACK), ...txnSeq, body: fc.record({ stateDigest: digest }) }),
  fc.record({ type: fc.constant(FrameType.NACK), ...txnSeq, body: reason }),
  fc.record({ type: fc.constant(FrameType.ABORT), ...txnSeq, body: reason }),
  fc.record({
    type: fc.constant(FrameType.HEARTBEAT),
    ...txnSeq,
    body: fc.record({
      timeMs: u53,
      committedTxn: u53,
      generation: u53,
      state: fc.constantFrom(...Object.values(PeerState)),
    }),
  }),
  fc.record({
    type: fc.constant(FrameType.FAILOVER),
    ...txnSeq,
    body: fc.record({ committedTxn: u53, generation: u53, reason: fc.string({ maxLength: 60 }) }),
  }),
  fc.record({
    type: fc.constant(FrameType.STAND_DOWN),
    ...txnSeq,
    body: fc.record({ committedTxn: u53, reason: fc.string({ maxLength: 60 }) }),
  }),
) as fc.Arbitrary<Frame>;
