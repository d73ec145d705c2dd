/**
 * The VM state digest: one value that names a whole VM state (memory, devices, disks), computed the same way by
 * the primary (`SimulatedVm.digest()`, and in COMMIT when verification is on) and by the secondary (its replica
 * after applying), so "the replica equals exactly one committed epoch" is a comparison of two digests.
 *
 * SHA-256 over, in order:
 *   "kemari-state-v1", u64 memoryBytes, u32 pageBytes, the CRC32C of every page (u32 LE each),
 *   u32 device count, then per device sorted by name: u32 name length, name, u32 state length, msgpack(state),
 *   u32 disk count, then per disk sorted by id: u32 id, u64 bytes, u32 blockBytes, CRC32C of every block.
 * Per-page and per-block CRCs come from {@link PageCrcTable}s, so the cost is proportional to what changed since
 * the last digest plus 4 bytes a page. CRC32C detects any change of up to 32 bits in a page and random damage with
 * probability 1 - 2^-32 per page; it is a replication check, not a defence against an adversary who can choose
 * page contents (the frames' checksums and the transport's TLS are the defences on the wire).
 */
import { createHash } from 'node:crypto';
import { pack } from '../wire/msgpack.js';

/** What the digest is computed from. */
export interface StateDigestInput {
  memoryBytes: number;
  pageBytes: number;
  /** CRC32C of every page, current. */
  pageCrcs: Uint32Array;
  /** Device states by name. */
  devices: ReadonlyMap<string, unknown>;
  /** Disks with the CRC32C of every block, current. */
  disks: ReadonlyArray<{ id: number; bytes: number; blockBytes: number; blockCrcs: Uint32Array }>;
}

/** Block size of the per-block disk CRC tables that enter the digest (VM and replica use the same). */
export const DISK_DIGEST_BLOCK_BYTES = 4096;

/** Size of a state digest in bytes. */
export const STATE_DIGEST_BYTES = 32;

const TAG = Buffer.from('kemari-state-v1');

function u32(value: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32LE(value >>> 0, 0);
  return b;
}

function u64(value: number): Buffer {
  const b = Buffer.allocUnsafe(8);
  b.writeUInt32LE(value >>> 0, 0);
  b.writeUInt32LE(Math.floor(value / 0x1_0000_0000), 4);
  return b;
}

function crcBytes(crcs: Uint32Array): Uint8Array {
  // Uint32Array memory is little-endian on every platform Node supports for this library (x86-64, arm64).
  return new Uint8Array(crcs.buffer, crcs.byteOffset, crcs.byteLength);
}

/** The digest of a VM state. */
export function computeStateDigest(input: StateDigestInput): Uint8Array {
  const hash = createHash('sha256');
  hash.update(TAG);
  hash.update(u64(input.memoryBytes));
  hash.update(u32(input.pageBytes));
  hash.update(crcBytes(input.pageCrcs));
  const names = [...input.devices.keys()].sort();
  hash.update(u32(names.length));
  for (const name of names) {
    const nameBytes = Buffer.from(name);
    const state = pack('device state', input.devices.get(name));
    hash.update(u32(nameBytes.byteLength));
    hash.update(nameBytes);
    hash.update(u32(state.byteLength));
    hash.update(state);
  }
  const disks = [...input.disks].sort((a, b) => a.id - b.id);
  hash.update(u32(disks.length));
  for (const disk of disks) {
    hash.update(u32(disk.id));
    hash.update(u64(disk.bytes));
    hash.update(u32(disk.blockBytes));
    hash.update(crcBytes(disk.blockCrcs));
  }
  return new Uint8Array(hash.digest());
}

/** Lower-case hex of a digest, for logs and reports. */
export function digestHex(digest: Uint8Array): string {
  return Buffer.from(digest.buffer, digest.byteOffset, digest.byteLength).toString('hex');
}
