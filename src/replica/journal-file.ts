/**
 * The journal file: a header naming the session, the snapshot it follows and its salt, then records
 * (journal-record.ts), one per transaction, in txn order.
 *
 * Header, 32 bytes, then the identity (integers little-endian):
 *
 *     0  magic "KMJH"                       4
 *     4  format version (1)                 4
 *     8  baseTxn: the snapshot txn it follows (0: none); the first record is baseTxn + 1   8
 *    16  salt (random per file) seeding every record header CRC                            4
 *    20  identity bytes                     4
 *    24  CRC32C of the identity             4
 *    28  CRC32C of bytes 0..27              4
 *   identity: msgpack (journal-identity.ts)
 *
 * A new journal file is always written under a temporary name, synced and renamed into place, so its header is
 * whole or absent; only the records at its end can be torn.
 *
 * This file also holds the reading side: {@link scanRecords} walks the records once, checking every header and
 * payload CRC without holding more than one bounded chunk, and decides where the good records end. The rule that
 * tells a torn tail from damage: appends are sequential and each is synced before the next starts, so a crash can
 * leave at most one record cut short, and nothing after it. A bad record with nothing record-like after it is that
 * torn tail and is dropped; a bad record followed anywhere by a valid record header (CRC seeded with this file's
 * salt) is damage to synced data, KEMARI_JOURNAL_CORRUPT, never skipped.
 */
import { KemariError } from '../errors.js';
import type { StagedTxn } from '../txn/staged-txn.js';
import { crc32c } from '../wire/checksum.js';
import type { JournalFile } from './journal-fs.js';
import { decodeIdentity } from './journal-identity.js';
import type { JournalIdentity } from './journal-identity.js';
import { RECORD_HEADER_BYTES, RECORD_MAGIC, decodeRecordPayload, readRecordHeader, writeRecordHeader } from './journal-record.js';
import { readInto } from './journal-snapshot.js';

/** Size of the fixed part of the journal file header. */
export const JOURNAL_HEADER_BYTES = 32;
const MAGIC_U32 = 0x484a4d4b; // "KMJH"
const FORMAT_VERSION = 1;
/** Bytes read at a time when checksumming, searching or copying records. */
const CHUNK_BYTES = 4 << 20;
/** Bytes read at once for a file header (and the identity behind it). */
const HEAD_READ_BYTES = 4096;

/** What a journal file header says. */
export interface JournalHead {
  baseTxn: number;
  salt: number;
  identity: JournalIdentity;
  /** Offset of the first record (header plus identity). */
  recordsOffset: number;
}

/** Where one good record lies. */
export interface RecordLocation {
  txn: number;
  offset: number;
  /** Header plus payload. */
  recordBytes: number;
  /**
   * The transaction's releasedTxn, once known (-1 until the record is decoded): a snapshot at this txn records it,
   * because the replica keeps it as part of its committed state.
   */
  releasedTxn: number;
}

/** The result of {@link scanRecords}. */
export interface RecordScan {
  records: RecordLocation[];
  /** Offset just past the last good record: where the file must end. */
  goodEnd: number;
  /** Bytes after goodEnd (a torn tail), 0 when the file ends cleanly. */
  tornBytes: number;
}

/** The header bytes of a new journal file (write them, then its records). */
export function encodeJournalHead(baseTxn: number, salt: number, identity: Uint8Array): Uint8Array[] {
  const header = new Uint8Array(JOURNAL_HEADER_BYTES);
  const view = new DataView(header.buffer);
  view.setUint32(0, MAGIC_U32, true);
  view.setUint32(4, FORMAT_VERSION, true);
  view.setUint32(8, baseTxn >>> 0, true);
  view.setUint32(12, Math.floor(baseTxn / 0x1_0000_0000), true);
  view.setUint32(16, salt >>> 0, true);
  view.setUint32(20, identity.byteLength, true);
  view.setUint32(24, crc32c(identity), true);
  view.setUint32(28, crc32c(header.subarray(0, 28)), true);
  return [header, identity];
}

/** Reads and checks a journal file header; any flaw is KEMARI_JOURNAL_CORRUPT (headers are never torn). */
export async function readJournalHead(file: JournalFile, path: string, fileBytes: number): Promise<JournalHead> {
  const corrupt = (message: string): never => {
    throw new KemariError('KEMARI_JOURNAL_CORRUPT', `journal ${path}: ${message}`, { details: { file: path, offset: 0 } });
  };
  if (fileBytes < JOURNAL_HEADER_BYTES) corrupt(`file of ${fileBytes} bytes has no header`);
  // One read for the header and (almost always) the identity after it.
  const first = new Uint8Array(Math.min(fileBytes, HEAD_READ_BYTES));
  const firstBytes = await readInto(file, first, 0);
  if (firstBytes < JOURNAL_HEADER_BYTES) corrupt('header cut short');
  const header = first.subarray(0, JOURNAL_HEADER_BYTES);
  const view = new DataView(header.buffer, header.byteOffset, JOURNAL_HEADER_BYTES);
  if (view.getUint32(0, true) !== MAGIC_U32) corrupt('bad magic');
  if (view.getUint32(28, true) !== crc32c(header.subarray(0, 28))) corrupt('header checksum mismatch');
  if (view.getUint32(4, true) !== FORMAT_VERSION) corrupt(`unsupported format version ${view.getUint32(4, true)}`);
  const high = view.getUint32(12, true);
  if (high > 0x1f_ffff) corrupt('baseTxn out of range');
  const identityBytes = view.getUint32(20, true);
  if (JOURNAL_HEADER_BYTES + identityBytes > fileBytes) corrupt('identity runs past the end');
  let identity: Uint8Array;
  if (JOURNAL_HEADER_BYTES + identityBytes <= firstBytes) {
    identity = first.subarray(JOURNAL_HEADER_BYTES, JOURNAL_HEADER_BYTES + identityBytes);
  } else {
    identity = new Uint8Array(identityBytes);
    if ((await readInto(file, identity, JOURNAL_HEADER_BYTES)) !== identityBytes) corrupt('identity cut short');
  }
  if (crc32c(identity) !== view.getUint32(24, true)) corrupt('identity checksum mismatch');
  return {
    baseTxn: high * 0x1_0000_0000 + view.getUint32(8, true),
    salt: view.getUint32(16, true),
    identity: decodeIdentity(identity, path),
    recordsOffset: JOURNAL_HEADER_BYTES + identityBytes,
  };
}

/**
 * Walks the records from `head.recordsOffset` to `fileBytes`, checking each header, its txn (`firstTxn`, then one
 * more each) and its payload CRC. Stops at the first bad record: if a valid record header follows it anywhere,
 * throws KEMARI_JOURNAL_CORRUPT; otherwise reports it as a torn tail. A valid header naming the wrong txn is
 * corruption too (it was written whole). A record larger than `recordBytesMax` is KEMARI_INVALID_ARGUMENT (it was
 * written under a larger limit; open with that limit).
 */
export async function scanRecords(
  file: JournalFile,
  options: { path: string; head: JournalHead; fileBytes: number; firstTxn: number; recordBytesMax: number },
): Promise<RecordScan> {
  const { path, head, fileBytes, recordBytesMax } = options;
  const { salt } = head;
  const records: RecordLocation[] = [];
  // Reads go through one window, so a small record costs one read for its header and payload together.
  const window = new Uint8Array(Math.max(0, Math.min(CHUNK_BYTES, fileBytes - head.recordsOffset)));
  let windowStart = 0;
  let windowBytes = 0;
  const bytesAt = async (position: number, length: number): Promise<Uint8Array | undefined> => {
    if (position < windowStart || position + length > windowStart + windowBytes) {
      windowStart = position;
      windowBytes = await readInto(file, window, position);
    }
    return position + length <= windowStart + windowBytes ? window.subarray(position - windowStart, position - windowStart + length) : undefined;
  };
  let at = head.recordsOffset;
  let expected = options.firstTxn;
  const torn = async (reason: string): Promise<RecordScan> => {
    const later = await findRecordHeader(file, { from: at + 1, fileBytes, salt });
    if (later !== undefined) {
      throw new KemariError('KEMARI_JOURNAL_CORRUPT', `journal ${path}: record of txn ${expected} at offset ${at} is damaged (${reason}) and a record follows at ${later.offset}`, {
        details: { file: path, offset: at, txn: expected, reason, followingOffset: later.offset, followingTxn: later.txn },
      });
    }
    return { records, goodEnd: at, tornBytes: fileBytes - at };
  };
  while (at < fileBytes) {
    const headerBytes = fileBytes - at < RECORD_HEADER_BYTES ? undefined : await bytesAt(at, RECORD_HEADER_BYTES);
    if (headerBytes === undefined) return torn('header cut short');
    const header = readRecordHeader(headerBytes, salt);
    if (header === undefined) return torn('bad record header');
    if (header.txn !== expected) {
      throw new KemariError('KEMARI_JOURNAL_CORRUPT', `journal ${path}: record at offset ${at} holds txn ${header.txn} where ${expected} belongs`, {
        details: { file: path, offset: at, txn: header.txn, expectedTxn: expected },
      });
    }
    const recordBytes = RECORD_HEADER_BYTES + header.payloadBytes;
    if (recordBytes > recordBytesMax) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', `journal ${path}: record of txn ${header.txn} has ${recordBytes} bytes, more than recordBytesMax ${recordBytesMax}; open with a larger limit`, {
        details: { file: path, offset: at, txn: header.txn, recordBytes, recordBytesMax },
      });
    }
    if (at + recordBytes > fileBytes) return torn('payload cut short');
    let crc: number | undefined;
    if (header.payloadBytes <= window.byteLength) {
      const payload = await bytesAt(at + RECORD_HEADER_BYTES, header.payloadBytes);
      crc = payload === undefined ? undefined : crc32c(payload);
    } else {
      crc = await crcOfRange(file, at + RECORD_HEADER_BYTES, header.payloadBytes, window);
      windowBytes = 0;
    }
    if (crc === undefined || crc !== header.payloadCrc) return torn('payload checksum mismatch');
    records.push({ txn: header.txn, offset: at, recordBytes, releasedTxn: -1 });
    at += recordBytes;
    expected += 1;
  }
  return { records, goodEnd: at, tornBytes: 0 };
}

/**
 * Reads the record at `location` into `buffer` (at least `recordBytes` long), checks it again and decodes it. The
 * transaction returned is views into `buffer`: use it before the next read.
 */
export async function readRecord(file: JournalFile, location: RecordLocation, salt: number, buffer: Uint8Array, path: string): Promise<StagedTxn> {
  const where = { file: path, offset: location.offset, txn: location.txn };
  const changed = (): never => {
    throw new KemariError('KEMARI_JOURNAL_CORRUPT', `journal ${path}: record of txn ${location.txn} changed since it was checked`, { details: where });
  };
  const record = buffer.subarray(0, location.recordBytes);
  if ((await readInto(file, record, location.offset)) !== location.recordBytes) changed();
  const header = readRecordHeader(record, salt);
  const payload = record.subarray(RECORD_HEADER_BYTES);
  if (header === undefined || header.txn !== location.txn || header.payloadBytes !== payload.byteLength || crc32c(payload) !== header.payloadCrc) {
    return changed();
  }
  return decodeRecordPayload(header, payload, where);
}

/**
 * Copies the record at `location` of `from` (salted `fromSalt`) to `to` at `toOffset`, re-salting its header for
 * `toSalt`; the payload moves in chunks through `chunk`. Used when a new journal file keeps the records after a
 * snapshot.
 */
export async function copyRecord(
  from: JournalFile,
  location: RecordLocation,
  salts: { from: number; to: number },
  to: JournalFile,
  toOffset: number,
  chunk: Uint8Array,
  path: string,
): Promise<void> {
  const headerBytes = new Uint8Array(RECORD_HEADER_BYTES);
  const header = (await readInto(from, headerBytes, location.offset)) === RECORD_HEADER_BYTES ? readRecordHeader(headerBytes, salts.from) : undefined;
  if (header === undefined || header.txn !== location.txn || RECORD_HEADER_BYTES + header.payloadBytes !== location.recordBytes) {
    throw new KemariError('KEMARI_JOURNAL_CORRUPT', `journal ${path}: record of txn ${location.txn} changed since it was checked`, {
      details: { file: path, offset: location.offset, txn: location.txn },
    });
  }
  await to.writeAll([writeRecordHeader(header, salts.to)], toOffset);
  let crc = 0;
  let whole = true;
  for (let off = 0; off < header.payloadBytes && whole; off += chunk.byteLength) {
    const part = chunk.subarray(0, Math.min(chunk.byteLength, header.payloadBytes - off));
    whole = (await readInto(from, part, location.offset + RECORD_HEADER_BYTES + off)) === part.byteLength;
    crc = crc32c(part, crc);
    await to.writeAll([part], toOffset + RECORD_HEADER_BYTES + off);
  }
  if (!whole || crc !== header.payloadCrc) {
    throw new KemariError('KEMARI_JOURNAL_CORRUPT', `journal ${path}: record of txn ${location.txn} changed while it was copied`, {
      details: { file: path, offset: location.offset, txn: location.txn },
    });
  }
}

/** A chunk buffer for {@link copyRecord}. */
export function copyChunk(): Uint8Array {
  return new Uint8Array(CHUNK_BYTES);
}

/** CRC32C of `bytes` at `position`, read through `chunk`; undefined if the file is shorter. */
async function crcOfRange(file: JournalFile, position: number, bytes: number, chunk: Uint8Array): Promise<number | undefined> {
  let crc = 0;
  for (let off = 0; off < bytes; off += chunk.byteLength) {
    const part = chunk.subarray(0, Math.min(chunk.byteLength, bytes - off));
    if ((await readInto(file, part, position + off)) !== part.byteLength) return undefined;
    crc = crc32c(part, crc);
  }
  return crc;
}

/** The first valid record header (this file's salt) at or after `from`, if any. */
async function findRecordHeader(
  file: JournalFile,
  options: { from: number; fileBytes: number; salt: number },
): Promise<{ offset: number; txn: number } | undefined> {
  const { fileBytes, salt } = options;
  const window = Buffer.alloc(Math.min(CHUNK_BYTES, Math.max(fileBytes - options.from, 0)) + RECORD_MAGIC.byteLength);
  const headerBytes = new Uint8Array(RECORD_HEADER_BYTES);
  const step = window.byteLength - RECORD_MAGIC.byteLength;
  if (step <= 0) return undefined;
  for (let base = options.from; base + RECORD_HEADER_BYTES <= fileBytes; base += step) {
    const n = await readInto(file, window, base);
    const seen = window.subarray(0, n);
    for (let i = seen.indexOf(RECORD_MAGIC); i !== -1 && i < step; i = seen.indexOf(RECORD_MAGIC, i + 1)) {
      const offset = base + i;
      if (offset + RECORD_HEADER_BYTES > fileBytes) return undefined;
      if ((await readInto(file, headerBytes, offset)) !== RECORD_HEADER_BYTES) continue;
      const header = readRecordHeader(headerBytes, salt);
      if (header !== undefined) return { offset, txn: header.txn };
    }
  }
  return undefined;
}
