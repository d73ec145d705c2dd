/**
 * The snapshot file: a replica's whole committed state at one txn, so the journal only has to keep the
 * transactions after it.
 *
 * Layout (integers little-endian):
 *
 *   header, 32 bytes
 *     0  magic "KMSN"            4
 *     4  format version (1)      4
 *     8  txn                     8
 *    16  meta bytes              4
 *    20  CRC32C of meta          4
 *    24  reserved, zero          4
 *    28  CRC32C of bytes 0..27   4
 *   meta: msgpack map { identity, txn, releasedTxn, stateDigest, devices: [[name, state]…], events: [[txn, id,
 *         channel, payload]…] } (identity as in journal-identity.ts; releasedTxn is that of the transaction that
 *         committed txn; events are the pending replay events)
 *   data: guest memory (memoryBytes), then each disk whole, in the geometry's disk order
 *   trailer, 32 bytes
 *     0  magic "KMSE"            4
 *     4  CRC32C of data          4
 *     8  data bytes              8
 *    16  txn                     8
 *    24  reserved, zero          4
 *    28  CRC32C of bytes 0..27   4
 *
 * The file is only ever written under a temporary name and renamed into place after an fsync, so a reader sees
 * a whole file or the previous one; the checks (sizes, CRCs, the trailer, and the restored replica's state
 * digest against the one recorded at writing) catch a file damaged at rest, which is KEMARI_JOURNAL_CORRUPT.
 * Memory and disks are written from the replica's own buffers and read back in bounded chunks: neither side holds
 * a second copy of the VM.
 */
import { KemariError } from '../errors.js';
import type { DeviceState } from '../wire/bodies/device.js';
import { crc32c } from '../wire/checksum.js';
import { isRecord, pack, unpack } from '../wire/msgpack.js';
import type { JournalFile } from './journal-fs.js';
import { identityValue, parseIdentity } from './journal-identity.js';
import type { JournalIdentity } from './journal-identity.js';
import type { Replica, ReplayEvent, ReplicaGeometry } from './replica.js';
import { restoreReplica } from './replica-restore.js';
import { digestHex } from './state-digest.js';
import { getU53, setU53 } from '../wire/bytes.js';

/** Size of the snapshot header and of its trailer. */
export const SNAPSHOT_HEADER_BYTES = 32;
const TRAILER_BYTES = 32;
const HEADER_MAGIC_U32 = 0x4e534d4b; // "KMSN"
const TRAILER_MAGIC_U32 = 0x45534d4b; // "KMSE"
const FORMAT_VERSION = 1;

/** Bytes moved per read or write of memory and disk data. */
export const SNAPSHOT_CHUNK_BYTES = 4 << 20;

/** What the snapshot's header, meta and trailer say (everything but the data). */
export interface SnapshotHead {
  txn: number;
  releasedTxn: number;
  identity: JournalIdentity;
  stateDigest: Uint8Array;
  devices: DeviceState[];
  pendingEvents: ReplayEvent[];
  dataOffset: number;
  dataBytes: number;
  dataCrc: number;
}

/**
 * Writes a snapshot of `replica`'s committed state to `file` (new and empty) and resolves to its size.
 * `releasedTxn` is that of the transaction that committed the replica's txn. The replica must not be applied to
 * meanwhile: if its committed txn moved, KEMARI_INVALID_ARGUMENT (the file is then worthless and the caller
 * discards it). Does not sync.
 */
export async function writeSnapshot(file: JournalFile, replica: Replica, identity: JournalIdentity, releasedTxn: number): Promise<{ txn: number; fileBytes: number }> {
  const txn = replica.committedTxn;
  const stateDigest = replica.digest();
  const view = replica.snapshot();
  const meta = pack('snapshot meta', {
    identity: identityValue(identity),
    txn,
    releasedTxn,
    stateDigest,
    devices: [...view.devices].map(([name, state]) => [name, state]),
    events: replica.pendingEvents.map((e) => [e.txn, e.id, e.channel, e.payload]),
  });
  const header = new Uint8Array(SNAPSHOT_HEADER_BYTES);
  const hv = new DataView(header.buffer);
  hv.setUint32(0, HEADER_MAGIC_U32, true);
  hv.setUint32(4, FORMAT_VERSION, true);
  setU53(hv, 8, txn);
  hv.setUint32(16, meta.byteLength, true);
  hv.setUint32(20, crc32c(meta), true);
  hv.setUint32(28, crc32c(header.subarray(0, 28)), true);
  await file.writeAll([header, meta], 0);
  let at = SNAPSHOT_HEADER_BYTES + meta.byteLength;
  let dataCrc = 0;
  let dataBytes = 0;
  const regions: Uint8Array[] = [view.memory];
  for (const { id } of replica.geometry.disks) regions.push(view.disks.find((d) => d.id === id)!.data);
  for (const region of regions) {
    for (let off = 0; off < region.byteLength; off += SNAPSHOT_CHUNK_BYTES) {
      const chunk = region.subarray(off, off + SNAPSHOT_CHUNK_BYTES);
      dataCrc = crc32c(chunk, dataCrc);
      await file.writeAll([chunk], at);
      at += chunk.byteLength;
      dataBytes += chunk.byteLength;
    }
  }
  const trailer = new Uint8Array(TRAILER_BYTES);
  const tv = new DataView(trailer.buffer);
  tv.setUint32(0, TRAILER_MAGIC_U32, true);
  tv.setUint32(4, dataCrc, true);
  setU53(tv, 8, dataBytes);
  setU53(tv, 16, txn);
  tv.setUint32(28, crc32c(trailer.subarray(0, 28)), true);
  await file.writeAll([trailer], at);
  if (replica.committedTxn !== txn) {
    throw new KemariError('KEMARI_INVALID_ARGUMENT', `the replica moved from txn ${txn} to ${replica.committedTxn} while its snapshot was written`, {
      details: { txn, committedTxn: replica.committedTxn },
    });
  }
  return { txn, fileBytes: at + TRAILER_BYTES };
}

/** Reads and checks everything but the data: header, meta, trailer and the file's length. */
export async function readSnapshotHead(file: JournalFile, path: string): Promise<SnapshotHead> {
  const corrupt = (message: string, details: Record<string, unknown> = {}, cause?: unknown): never => {
    throw new KemariError('KEMARI_JOURNAL_CORRUPT', `snapshot ${path}: ${message}`, { ...(cause === undefined ? {} : { cause }), details: { file: path, ...details } });
  };
  const fileBytes = await file.sizeBytes();
  if (fileBytes < SNAPSHOT_HEADER_BYTES + TRAILER_BYTES) corrupt('shorter than header and trailer', { fileBytes });
  const header = await readExactly(file, SNAPSHOT_HEADER_BYTES, 0);
  const hv = new DataView(header.buffer);
  if (hv.getUint32(0, true) !== HEADER_MAGIC_U32) corrupt('bad magic');
  if (hv.getUint32(28, true) !== crc32c(header.subarray(0, 28))) corrupt('header checksum mismatch');
  if (hv.getUint32(4, true) !== FORMAT_VERSION) corrupt(`unsupported format version ${hv.getUint32(4, true)}`);
  const txn = getU53(hv, 8) ?? corrupt('txn out of range');
  const metaBytes = hv.getUint32(16, true);
  if (SNAPSHOT_HEADER_BYTES + metaBytes + TRAILER_BYTES > fileBytes) corrupt('meta runs past the end', { metaBytes, fileBytes });
  const metaBuffer = await readExactly(file, metaBytes, SNAPSHOT_HEADER_BYTES);
  if (crc32c(metaBuffer) !== hv.getUint32(20, true)) corrupt('meta checksum mismatch');
  const trailer = await readExactly(file, TRAILER_BYTES, fileBytes - TRAILER_BYTES);
  const tv = new DataView(trailer.buffer);
  if (tv.getUint32(0, true) !== TRAILER_MAGIC_U32 || tv.getUint32(28, true) !== crc32c(trailer.subarray(0, 28))) corrupt('bad trailer');
  const dataBytes = getU53(tv, 8) ?? corrupt('data bytes out of range');
  if (getU53(tv, 16) !== txn) corrupt('trailer names another txn');
  const dataOffset = SNAPSHOT_HEADER_BYTES + metaBytes;
  if (dataOffset + dataBytes + TRAILER_BYTES !== fileBytes) corrupt('length does not add up', { fileBytes, metaBytes, dataBytes });
  let meta: unknown;
  try {
    meta = unpack('snapshot meta', metaBuffer);
  } catch (cause) {
    corrupt('meta is not msgpack', {}, cause);
  }
  if (!isRecord(meta) || meta.txn !== txn) return corrupt('meta does not match the header');
  const releasedTxn = Number.isSafeInteger(meta.releasedTxn) && (meta.releasedTxn as number) >= 0 ? (meta.releasedTxn as number) : corrupt('meta lacks releasedTxn');
  const identity = parseIdentity(meta.identity, path);
  const stateDigest = meta.stateDigest instanceof Uint8Array ? Uint8Array.from(meta.stateDigest) : corrupt('meta lacks the state digest');
  const devices = Array.isArray(meta.devices) ? meta.devices : corrupt('meta lacks devices');
  const events = Array.isArray(meta.events) ? meta.events : corrupt('meta lacks events');
  return {
    txn,
    releasedTxn,
    identity,
    stateDigest,
    devices: devices.map((d: unknown): DeviceState =>
      Array.isArray(d) && d.length === 2 && typeof d[0] === 'string' ? { name: d[0], state: d[1] } : corrupt('malformed device'),
    ),
    pendingEvents: events.map((e: unknown): ReplayEvent =>
      Array.isArray(e) && e.length === 4 && Number.isSafeInteger(e[0]) && Number.isSafeInteger(e[1]) && typeof e[2] === 'string' && e[3] instanceof Uint8Array
        ? { txn: e[0] as number, id: e[1] as number, channel: e[2], payload: Uint8Array.from(e[3]) }
        : corrupt('malformed event'),
    ),
    dataOffset,
    dataBytes,
    dataCrc: tv.getUint32(4, true),
  };
}

/**
 * Builds the replica the snapshot describes: data read in chunks into the replica, then checked against the
 * data CRC and the state digest recorded at writing. `head.identity` must already match `geometry`.
 */
export async function loadSnapshot(file: JournalFile, head: SnapshotHead, path: string, newReplica: (geometry: ReplicaGeometry) => Replica): Promise<Replica> {
  const { geometry } = head.identity;
  const corrupt = (message: string, details: Record<string, unknown> = {}, cause?: unknown): never => {
    throw new KemariError('KEMARI_JOURNAL_CORRUPT', `snapshot ${path}: ${message}`, { ...(cause === undefined ? {} : { cause }), details: { file: path, txn: head.txn, ...details } });
  };
  const expectedBytes = geometry.memoryBytes + geometry.disks.reduce((sum, d) => sum + d.bytes, 0);
  if (head.dataBytes !== expectedBytes) corrupt('data size does not match the geometry', { dataBytes: head.dataBytes, expectedBytes });
  if (head.txn < 1) corrupt('snapshot of no epoch');
  // Whole pages, so every memory chunk is whole pages too (memoryBytes is a multiple of pageBytes).
  const { pageBytes } = geometry;
  const chunkBytes = Math.min(pageBytes * Math.max(1, Math.floor(SNAPSHOT_CHUNK_BYTES / pageBytes)), Math.ceil(Math.max(expectedBytes, 1) / pageBytes) * pageBytes);
  const chunk = new Uint8Array(chunkBytes);
  let dataCrc = 0;
  let at = head.dataOffset;
  let replica: Replica;
  try {
    const state = { txn: head.txn, releasedTxn: head.releasedTxn, devices: head.devices, pendingEvents: head.pendingEvents };
    replica = await restoreReplica(geometry, state, async (sink) => {
      const pour = async (bytes: number, put: (offset: number, data: Uint8Array) => void): Promise<void> => {
        for (let off = 0; off < bytes; off += chunk.byteLength) {
          const n = Math.min(chunk.byteLength, bytes - off);
          const data = chunk.subarray(0, n);
          if ((await readInto(file, data, at)) !== n) corrupt('data cut short', { offset: at });
          dataCrc = crc32c(data, dataCrc);
          put(off, data);
          at += n;
        }
      };
      await pour(geometry.memoryBytes, (offset, data) => sink.memory(offset, data));
      for (const disk of geometry.disks) await pour(disk.bytes, (offset, data) => sink.disk(disk.id, offset, data));
    }, newReplica);
  } catch (error) {
    if (error instanceof KemariError && error.code !== 'KEMARI_JOURNAL_CORRUPT' && error.code !== 'KEMARI_JOURNAL_IO') {
      // The replica refused the snapshot's own contents (a device it does not know, say).
      return corrupt('contents do not fit the replica', {}, error);
    }
    throw error;
  }
  if (dataCrc !== head.dataCrc) corrupt('data checksum mismatch', { expected: head.dataCrc, actual: dataCrc });
  const digest = replica.digest();
  if (!Buffer.from(digest).equals(Buffer.from(head.stateDigest))) {
    corrupt('restored state digest differs from the recorded one', { expected: digestHex(head.stateDigest), actual: digestHex(digest) });
  }
  return replica;
}

/** Reads exactly `bytes` at `position` into a new buffer; fewer bytes on disk is KEMARI_JOURNAL_CORRUPT. */
async function readExactly(file: JournalFile, bytes: number, position: number): Promise<Uint8Array> {
  const out = new Uint8Array(bytes);
  const n = await readInto(file, out, position);
  if (n !== bytes) throw new KemariError('KEMARI_JOURNAL_CORRUPT', `snapshot cut short at ${position + n}`, { details: { position, bytes, read: n } });
  return out;
}

/** Fills `out` from `position` on; resolves to the bytes read (fewer only at end of file). */
export async function readInto(file: JournalFile, out: Uint8Array, position: number): Promise<number> {
  let done = 0;
  while (done < out.byteLength) {
    const n = await file.read(out, done, out.byteLength - done, position + done);
    if (n === 0) break;
    done += n;
  }
  return done;
}

