/**
 * The fixed 32-byte frame header. All multi-byte fields are little-endian.
 *
 * | offset | bytes | field                                                        |
 * |-------:|------:|--------------------------------------------------------------|
 * |      0 |     4 | magic "KMRI"                                                 |
 * |      4 |     1 | protocol version                                             |
 * |      5 |     1 | frame type ({@link FrameType})                               |
 * |      6 |     2 | flags (per type; bits a type does not define must be zero)   |
 * |      8 |     8 | txn: epoch number, strictly increasing per session (<= 2^53-1) |
 * |     16 |     4 | seq: frame index inside the transaction                      |
 * |     20 |     4 | body length in bytes                                         |
 * |     24 |     4 | CRC32C of the body                                           |
 * |     28 |     4 | CRC32C of header bytes 0..27                                 |
 *
 * The header has its own checksum so the body length can be trusted, and checked against the configured maximum,
 * before a single body byte is buffered. The checks run in this order, and a test pins it: magic, version, header
 * CRC, type, flags, txn range, body length.
 */
import { KemariError } from '../errors.js';
import { crc32c } from './checksum.js';

/** Size of every frame header in bytes. */
export const HEADER_BYTES = 32;

/** The magic that opens every frame: ASCII "KMRI". */
export const MAGIC = Uint8Array.of(0x4b, 0x4d, 0x52, 0x49);
/** The magic read as a little-endian u32, for a one-load comparison. */
export const MAGIC_U32 = 0x49524d4b;

/** The protocol version this build writes and reads. */
export const PROTOCOL_VERSION = 1;

/** Byte offsets of the header fields; a test pins them so the layout cannot drift silently. */
export const HeaderOffset = {
  MAGIC: 0,
  VERSION: 4,
  TYPE: 5,
  FLAGS: 6,
  TXN: 8,
  SEQ: 16,
  BODY_BYTES: 20,
  BODY_CRC: 24,
  HEADER_CRC: 28,
} as const;

/** Frame types. 0 is never valid, so an all-zero buffer is not mistaken for a frame. */
export const FrameType = {
  /** Session handshake: identity, role, versions, VM geometry and inventory, last committed txn. */
  HELLO: 1,
  /** Opens a transaction (seq 0): full or incremental, and the txn it builds on. */
  BEGIN: 2,
  /** A batch of pages (raw, zero or delta-encoded). Many pages a frame, never one frame a page. */
  PAGES: 3,
  /** The state of one device, msgpack-encoded. */
  DEVICE: 4,
  /** One disk write of the epoch: disk id, byte offset, data. */
  DISK: 5,
  /** One held output event of the epoch: id, channel, payload. */
  EVENT: 6,
  /** Closes a transaction: frame count, body bytes, digest of body CRCs, optional VM state digest. */
  COMMIT: 7,
  /** Receiver to sender: the txn is applied (or durably journaled). */
  ACK: 8,
  /** Receiver to sender: the txn was refused, with a reason. */
  NACK: 9,
  /** Sender to receiver: discard the txn in progress, with a reason. */
  ABORT: 10,
  /** Liveness: sender's clock, last committed txn, lease generation, state. */
  HEARTBEAT: 11,
  /** A quiesced primary hands over to the secondary. */
  FAILOVER: 12,
  /** The guest stopped on its own: protection ends, the standby must not resume it (and confirms with the same frame). */
  STAND_DOWN: 13,
} as const;

/** A frame type number. */
export type FrameType = (typeof FrameType)[keyof typeof FrameType];

/** The name of each frame type, for messages and logs. */
export const FRAME_TYPE_NAMES: Readonly<Record<FrameType, keyof typeof FrameType>> = Object.freeze(
  Object.fromEntries(Object.entries(FrameType).map(([name, value]) => [value, name])) as Record<
    FrameType,
    keyof typeof FrameType
  >,
);

/** Flag bits. Each type defines its own; any other bit set is rejected with KEMARI_RESERVED_NONZERO. */
export const FrameFlag = {
  /** PAGES: at least one page in the frame is delta-encoded (the receiver must have negotiated deltas). */
  PAGES_DELTA: 0x0001,
} as const;

/** The flag bits each type may set. */
export const FLAGS_ALLOWED: Readonly<Record<FrameType, number>> = Object.freeze({
  [FrameType.HELLO]: 0,
  [FrameType.BEGIN]: 0,
  [FrameType.PAGES]: FrameFlag.PAGES_DELTA,
  [FrameType.DEVICE]: 0,
  [FrameType.DISK]: 0,
  [FrameType.EVENT]: 0,
  [FrameType.COMMIT]: 0,
  [FrameType.ACK]: 0,
  [FrameType.NACK]: 0,
  [FrameType.ABORT]: 0,
  [FrameType.HEARTBEAT]: 0,
  [FrameType.FAILOVER]: 0,
  [FrameType.STAND_DOWN]: 0,
});

/** Largest body length the header can express. */
export const BODY_BYTES_LIMIT = 0xffff_ffff;

/** The decoded fields of a verified header. */
export interface FrameHeader {
  version: number;
  type: FrameType;
  flags: number;
  txn: number;
  seq: number;
  bodyBytes: number;
  bodyCrc: number;
}

/** True when `type` is a known frame type. */
export function isFrameType(type: number): type is FrameType {
  return type >= FrameType.HELLO && type <= FrameType.STAND_DOWN;
}

/** Writes a complete header (with both checksums) into `out` at offset 0. `out` must hold HEADER_BYTES. */
export function writeHeader(out: Uint8Array, header: FrameHeader): void {
  const view = new DataView(out.buffer, out.byteOffset, HEADER_BYTES);
  out.set(MAGIC, HeaderOffset.MAGIC);
  view.setUint8(HeaderOffset.VERSION, header.version);
  view.setUint8(HeaderOffset.TYPE, header.type);
  view.setUint16(HeaderOffset.FLAGS, header.flags, true);
  view.setUint32(HeaderOffset.TXN, header.txn >>> 0, true);
  view.setUint32(HeaderOffset.TXN + 4, Math.floor(header.txn / 0x1_0000_0000), true);
  view.setUint32(HeaderOffset.SEQ, header.seq, true);
  view.setUint32(HeaderOffset.BODY_BYTES, header.bodyBytes, true);
  view.setUint32(HeaderOffset.BODY_CRC, header.bodyCrc, true);
  view.setUint32(HeaderOffset.HEADER_CRC, crc32c(out.subarray(0, HeaderOffset.HEADER_CRC)), true);
}

/**
 * Parses and verifies a header held in `bytes` (exactly HEADER_BYTES, contiguous). Throws {@link KemariError} on
 * the first check that fails; `bodyBytesMax` is enforced here, before the caller buffers any body.
 */
export function readHeader(bytes: Uint8Array, bodyBytesMax: number): FrameHeader {
  const view = new DataView(bytes.buffer, bytes.byteOffset, HEADER_BYTES);
  if (view.getUint32(HeaderOffset.MAGIC, true) !== MAGIC_U32) {
    throw new KemariError('KEMARI_BAD_MAGIC', 'frame does not start with magic "KMRI"', {
      details: { magic: Array.from(bytes.subarray(0, 4)) },
    });
  }
  const version = view.getUint8(HeaderOffset.VERSION);
  if (version !== PROTOCOL_VERSION) {
    throw new KemariError('KEMARI_UNSUPPORTED_VERSION', `protocol version ${version} is not supported`, {
      details: { version, supported: [PROTOCOL_VERSION] },
    });
  }
  const headerCrc = view.getUint32(HeaderOffset.HEADER_CRC, true);
  const actualHeaderCrc = crc32c(bytes.subarray(0, HeaderOffset.HEADER_CRC));
  if (headerCrc !== actualHeaderCrc) {
    throw new KemariError('KEMARI_HEADER_CHECKSUM', 'frame header checksum mismatch', {
      details: { expected: headerCrc, actual: actualHeaderCrc },
    });
  }
  const type = view.getUint8(HeaderOffset.TYPE);
  if (!isFrameType(type)) {
    throw new KemariError('KEMARI_UNKNOWN_TYPE', `unknown frame type ${type}`, { details: { type } });
  }
  const flags = view.getUint16(HeaderOffset.FLAGS, true);
  if ((flags & ~FLAGS_ALLOWED[type]) !== 0) {
    throw new KemariError('KEMARI_RESERVED_NONZERO', `reserved flag bits set on ${FRAME_TYPE_NAMES[type]}`, {
      details: { type, flags },
    });
  }
  const txnHigh = view.getUint32(HeaderOffset.TXN + 4, true);
  if (txnHigh > 0x1f_ffff) {
    throw new KemariError('KEMARI_BAD_HEADER', 'txn exceeds 2^53 - 1', { details: { txnHigh } });
  }
  const txn = txnHigh * 0x1_0000_0000 + view.getUint32(HeaderOffset.TXN, true);
  const bodyBytes = view.getUint32(HeaderOffset.BODY_BYTES, true);
  if (bodyBytes > bodyBytesMax) {
    throw new KemariError('KEMARI_FRAME_TOO_LARGE', `frame body of ${bodyBytes} bytes exceeds bodyBytesMax ${bodyBytesMax}`, {
      details: { bodyBytes, bodyBytesMax, type },
    });
  }
  return {
    version,
    type,
    flags,
    txn,
    seq: view.getUint32(HeaderOffset.SEQ, true),
    bodyBytes,
    bodyCrc: view.getUint32(HeaderOffset.BODY_CRC, true),
  };
}
