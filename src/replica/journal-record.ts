/**
 * One journal record: a whole verified transaction, re-encoded as the kemari frames it arrived as.
 *
 * Record = 40-byte header, then the payload. All integers little-endian.
 *
 * | offset | bytes | field                                                                        |
 * |-------:|------:|------------------------------------------------------------------------------|
 * |      0 |     4 | magic "KMJR"                                                                 |
 * |      4 |     4 | payload bytes                                                                |
 * |      8 |     8 | txn                                                                          |
 * |     16 |     8 | bodyBytes of the transaction as received (StagedTxn.bodyBytes)               |
 * |     24 |     4 | pageBytes of the transaction (StagedTxn.pageBytes; 0 when it has no pages)   |
 * |     28 |     4 | CRC32C of the payload                                                        |
 * |     32 |     4 | reserved, zero                                                               |
 * |     36 |     4 | CRC32C of bytes 0..35, seeded with the journal file's salt                   |
 *
 * Payload: the frames BEGIN (seq 0), PAGES…, DEVICE…, DISK…, EVENT…, COMMIT, each a 32-byte frame header plus
 * body exactly as on the wire ({@link encodeFrame}), with the record's txn. Why frames: the body codecs, their
 * validation and their tests already exist, and FrameDecoder re-checks every frame's own CRCs on recovery. PAGES
 * frames are cut wherever the page index does not increase (StagedTxn keeps the pages in arrival order, where a
 * later frame may repeat an index and wins), so the page list round-trips exactly, ZERO and DELTA pages included.
 * COMMIT carries the state digest and, as on the wire, the frame count, body bytes and CRC digest of the frames
 * before it, which recovery checks.
 *
 * Why the header CRC is seeded with a per-file random salt: recovery tells a torn tail from damage in the middle
 * by searching for a valid record after the damage; the salt makes sure that bytes which merely look like a record
 * (an old journal's record inside guest memory, say) are never taken for one.
 */
import { KemariError } from '../errors.js';
import { beginStagedTxn, commitMatches, stageFrame } from '../txn/staged-txn.js';
import type { StagedTxn } from '../txn/staged-txn.js';
import { crc32c, crc32cOfParts } from '../wire/checksum.js';
import { FrameDecoder } from '../wire/decoder.js';
import { encodeFrame } from '../wire/encoder.js';
import type { Frame } from '../wire/frame.js';
import { FrameType } from '../wire/header.js';
import type { Page } from '../wire/bodies/pages.js';
import { TxnDigest } from '../wire/txn-digest.js';
import { getU53, setU53 } from '../wire/bytes.js';

/** Size of a record header. */
export const RECORD_HEADER_BYTES = 40;

/** "KMJR" read as a little-endian u32. */
const RECORD_MAGIC_U32 = 0x524a4d4b;

/** The magic that opens every record, for searching. */
export const RECORD_MAGIC = Uint8Array.of(0x4b, 0x4d, 0x4a, 0x52);

/** Largest PAGES frame body the journal writes (a bound on decode-time views, not a limit on transactions). */
const PAGES_FRAME_BODY_BYTES = 16 << 20;

/** The fields of a verified record header. */
export interface RecordHeader {
  payloadBytes: number;
  txn: number;
  bodyBytes: number;
  pageBytes: number;
  payloadCrc: number;
}

/** A record ready to write: its header and the payload as parts (views into the transaction, not copies). */
export interface EncodedRecord {
  header: Uint8Array;
  payload: Uint8Array[];
  /** Header plus payload. */
  recordBytes: number;
}

/** Writes a record header (with its salted CRC). */
export function writeRecordHeader(fields: RecordHeader, salt: number): Uint8Array {
  const out = new Uint8Array(RECORD_HEADER_BYTES);
  const view = new DataView(out.buffer);
  view.setUint32(0, RECORD_MAGIC_U32, true);
  view.setUint32(4, fields.payloadBytes, true);
  setU53(view, 8, fields.txn);
  setU53(view, 16, fields.bodyBytes);
  view.setUint32(24, fields.pageBytes, true);
  view.setUint32(28, fields.payloadCrc, true);
  view.setUint32(32, 0, true);
  view.setUint32(36, crc32c(out.subarray(0, 36), salt), true);
  return out;
}

/**
 * Parses a record header; undefined when it is not a valid header of this file (magic, salted CRC, reserved
 * field, u64 ranges). `bytes` must hold at least RECORD_HEADER_BYTES.
 */
export function readRecordHeader(bytes: Uint8Array, salt: number): RecordHeader | undefined {
  const view = new DataView(bytes.buffer, bytes.byteOffset, RECORD_HEADER_BYTES);
  if (view.getUint32(0, true) !== RECORD_MAGIC_U32) return undefined;
  if (view.getUint32(36, true) !== crc32c(bytes.subarray(0, 36), salt)) return undefined;
  if (view.getUint32(32, true) !== 0) return undefined;
  const txn = getU53(view, 8);
  const bodyBytes = getU53(view, 16);
  if (txn === undefined || bodyBytes === undefined) return undefined;
  return { payloadBytes: view.getUint32(4, true), txn, bodyBytes, pageBytes: view.getUint32(24, true), payloadCrc: view.getUint32(28, true) };
}

/**
 * Encodes `staged` as a record of a file salted with `salt`. Throws KEMARI_INVALID_ARGUMENT when the transaction
 * holds values the frame codecs refuse, or when the record would exceed `recordBytesMax`.
 */
export function encodeRecord(staged: StagedTxn, salt: number, recordBytesMax: number): EncodedRecord {
  const { txn } = staged;
  const payload: Uint8Array[] = [];
  const digest = new TxnDigest();
  let payloadBytes = 0;
  let seq = 0;
  const push = (frame: Frame): void => {
    const encoded = encodeFrame(frame);
    digest.add(encoded.bodyBytes, encoded.bodyCrc);
    payload.push(encoded.header, ...encoded.body);
    payloadBytes += encoded.header.byteLength + encoded.bodyBytes;
    if (RECORD_HEADER_BYTES + payloadBytes > recordBytesMax) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', `txn ${txn} needs a journal record larger than recordBytesMax ${recordBytesMax}`, {
        details: { txn, recordBytesMax, bodyBytes: staged.bodyBytes },
      });
    }
  };
  push({ type: FrameType.BEGIN, txn, seq: seq++, body: { full: staged.full, baseTxn: staged.baseTxn, releasedTxn: staged.releasedTxn } });
  for (const batch of pageBatches(staged.pages, staged.pageBytes)) push({ type: FrameType.PAGES, txn, seq: seq++, body: { pageBytes: staged.pageBytes, pages: batch } });
  for (const device of staged.devices) push({ type: FrameType.DEVICE, txn, seq: seq++, body: device });
  for (const write of staged.diskWrites) push({ type: FrameType.DISK, txn, seq: seq++, body: write });
  for (const event of staged.events) push({ type: FrameType.EVENT, txn, seq: seq++, body: event });
  push({
    type: FrameType.COMMIT,
    txn,
    seq,
    body: { frameCount: digest.frameCount, crcDigest: digest.crcDigest, bodyBytes: digest.bodyBytes, stateDigest: staged.stateDigest },
  });
  const header = writeRecordHeader(
    { payloadBytes, txn, bodyBytes: staged.bodyBytes, pageBytes: staged.pageBytes, payloadCrc: crc32cOfParts(payload) },
    salt,
  );
  return { header, payload, recordBytes: RECORD_HEADER_BYTES + payloadBytes };
}

/** Pages cut into PAGES batches: at every non-increasing index (order is kept) and at the frame size bound. */
function* pageBatches(pages: readonly Page[], pageBytes: number): Generator<Page[]> {
  const perFrame = Math.max(1, Math.floor((PAGES_FRAME_BODY_BYTES - 8) / (Math.max(pageBytes, 1) + 16)));
  let batch: Page[] = [];
  let previous = -1;
  for (const page of pages) {
    if (batch.length > 0 && (page.index <= previous || batch.length >= perFrame)) {
      yield batch;
      batch = [];
    }
    batch.push(page);
    previous = page.index;
  }
  if (batch.length > 0) yield batch;
}

/**
 * Rebuilds the transaction from a record's payload (whose CRC the caller has checked). Everything returned is a
 * view into `payload`. Any inconsistency is KEMARI_JOURNAL_CORRUPT: the bytes passed their CRC, so they were
 * written like this.
 */
export function decodeRecordPayload(header: RecordHeader, payload: Uint8Array, where: Record<string, unknown> = {}): StagedTxn {
  const corrupt = (message: string, cause?: unknown): never => {
    throw new KemariError('KEMARI_JOURNAL_CORRUPT', `journal record of txn ${header.txn}: ${message}`, {
      ...(cause === undefined ? {} : { cause }),
      details: { ...where, txn: header.txn },
    });
  };
  const staged: StagedTxn = { ...beginStagedTxn(header.txn, { full: false, baseTxn: 0, releasedTxn: 0 }, header.pageBytes), bodyBytes: header.bodyBytes };
  const digest = new TxnDigest();
  let seq = 0;
  let committed = false;
  const decoder = new FrameDecoder({ bodyBytesMax: Math.min(payload.byteLength, 0xffff_ffff) });
  try {
    decoder.push(payload, (frame) => {
      if (committed) corrupt('frames after COMMIT');
      if (frame.txn !== header.txn) corrupt(`frame of txn ${frame.txn}`);
      if (frame.seq !== seq) corrupt(`frame seq ${frame.seq} where ${seq} was expected`);
      if ((seq === 0) !== (frame.type === FrameType.BEGIN)) corrupt('BEGIN is not the first frame');
      seq += 1;
      if (frame.type !== FrameType.COMMIT) digest.add(frame.bodyBytes, frame.bodyCrc);
      switch (frame.type) {
        case FrameType.BEGIN:
          staged.full = frame.body.full;
          staged.baseTxn = frame.body.baseTxn;
          staged.releasedTxn = frame.body.releasedTxn;
          return;
        case FrameType.PAGES:
        case FrameType.DEVICE:
        case FrameType.DISK:
        case FrameType.EVENT:
          stageFrame(staged, frame); // a page size other than the record's is KEMARI_BAD_BODY, reported as corrupt
          return;
        case FrameType.COMMIT: {
          const c = frame.body;
          if (!commitMatches(c, digest)) {
            corrupt('COMMIT does not match the frames before it');
          }
          staged.stateDigest = c.stateDigest;
          committed = true;
          return;
        }
        default:
          corrupt(`unexpected frame type ${frame.type}`);
      }
    });
    decoder.end();
  } catch (error) {
    if (error instanceof KemariError && error.code === 'KEMARI_JOURNAL_CORRUPT') throw error;
    corrupt('frames do not decode', error);
  }
  if (!committed) corrupt('no COMMIT');
  return staged;
}

