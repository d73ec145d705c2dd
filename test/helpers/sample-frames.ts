/** One representative frame of every type, deterministic, for golden fixtures and split tests. */
import { FrameType, PageKind, PeerState, ReasonCode } from '../../src/index.js';
import type { Frame } from '../../src/index.js';

function pattern(bytes: number, seed: number): Uint8Array {
  const out = new Uint8Array(bytes);
  for (let i = 0; i < bytes; i++) out[i] = (i * 31 + seed * 7 + (i >> 8)) & 0xff;
  return out;
}

const memory = pattern(4 * 4096, 1);

/** Keyed by fixture name; order is stable. */
export const SAMPLE_FRAMES: Record<string, Frame> = {
  hello: {
    type: FrameType.HELLO,
    txn: 0,
    seq: 0,
    body: {
      sessionId: 'vm-42',
      role: 'primary',
      versionMin: 1,
      versionMax: 1,
      memoryBytes: 64 << 20,
      pageBytes: 4096,
      devices: ['cpu0', 'nic0', 'disk-ctl'],
      disks: [{ id: 0, bytes: 8 << 20 }],
      committedTxn: 0,
      features: ['verify'],
    },
  },
  begin: { type: FrameType.BEGIN, txn: 7, seq: 0, body: { full: false, baseTxn: 6, releasedTxn: 5 } },
  pages: {
    type: FrameType.PAGES,
    txn: 7,
    seq: 1,
    body: {
      pageBytes: 4096,
      pages: [
        { index: 0, kind: PageKind.RAW, data: memory.subarray(0, 4096) },
        { index: 1, kind: PageKind.RAW, data: memory.subarray(4096, 8192) },
        { index: 5, kind: PageKind.ZERO, data: new Uint8Array(0) },
        { index: 9, kind: PageKind.RAW, data: memory.subarray(3 * 4096, 4 * 4096) },
      ],
    },
  },
  'pages-delta': {
    type: FrameType.PAGES,
    txn: 7,
    seq: 2,
    body: {
      pageBytes: 4096,
      pages: [
        { index: 12, kind: PageKind.DELTA, data: Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8) },
        { index: 13, kind: PageKind.ZERO, data: new Uint8Array(0) },
      ],
    },
  },
  device: {
    type: FrameType.DEVICE,
    txn: 7,
    seq: 3,
    body: { name: 'cpu0', state: { rip: 4096, rflags: 2, ticks: 1234, regs: [1, 2, 3, 4] } },
  },
  disk: { type: FrameType.DISK, txn: 7, seq: 4, body: { diskId: 0, offset: 512 * 9, data: pattern(512, 3) } },
  event: {
    type: FrameType.EVENT,
    txn: 7,
    seq: 5,
    body: { id: 99, channel: 'net0', payload: Uint8Array.from(Buffer.from('hello, world\n')) },
  },
  commit: {
    type: FrameType.COMMIT,
    txn: 7,
    seq: 6,
    body: { frameCount: 6, crcDigest: 0xdeadbeef, bodyBytes: 17000, stateDigest: pattern(32, 9) },
  },
  ack: { type: FrameType.ACK, txn: 7, seq: 0, body: { stateDigest: pattern(32, 9) } },
  nack: { type: FrameType.NACK, txn: 8, seq: 0, body: { code: ReasonCode.VERIFY_FAILED, message: 'digest mismatch' } },
  abort: { type: FrameType.ABORT, txn: 9, seq: 3, body: { code: ReasonCode.SENDER_ABORT, message: 'vm stopped' } },
  heartbeat: {
    type: FrameType.HEARTBEAT,
    txn: 0,
    seq: 0,
    body: { timeMs: 1_700_000_000_000, committedTxn: 7, generation: 3, state: PeerState.PROTECTED },
  },
  failover: {
    type: FrameType.FAILOVER,
    txn: 0,
    seq: 0,
    body: { committedTxn: 7, generation: 3, reason: 'GUEST_PANICKED' },
  },
  'stand-down': {
    type: FrameType.STAND_DOWN,
    txn: 0,
    seq: 0,
    body: { committedTxn: 7, reason: 'SHUTDOWN (guest-shutdown)' },
  },
};
