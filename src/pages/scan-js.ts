/**
 * The TypeScript fallback of the changed-page scan: same results as native/page_scan.cc, byte for byte.
 *
 * Shadow mode compares pages with Buffer#compare over offsets of one Buffer view of the region and one of the shadow:
 * no view is created per page, and the comparison itself is Node's memcmp, so this is the fastest pure-JavaScript
 * method (bench/pages.bench.ts measures it against a word loop). Zero detection compares a changed page with a
 * zero page the same way. Fingerprint mode hashes each page with the TypeScript XXH3 (xxh3.ts), about 2.7 GB/s:
 * without the addon, shadow mode is the fast one.
 */
import { xxh3Into } from './xxh3.js';

/** True on little-endian hosts: a fingerprint table's uint64 is then (low word, high word) as two int32. */
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

let zeroPage = Buffer.alloc(4096);

function zeroPageOf(pageBytes: number): Buffer {
  if (zeroPage.length < pageBytes) zeroPage = Buffer.alloc(pageBytes);
  return zeroPage;
}

function bufferOf(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Shadow-mode scan; see PagesBackend.scanShadow. */
export function scanShadowJs(
  region: Uint8Array,
  pageBytes: number,
  shadow: Uint8Array,
  changedPages: Uint32Array,
  zeroFlags: Uint8Array,
  update: boolean,
): number {
  const pageCount = region.length / pageBytes;
  const regionBuffer = bufferOf(region);
  const shadowBuffer = bufferOf(shadow);
  const zero = zeroPageOf(pageBytes);
  let count = 0;
  for (let page = 0, at = 0; page < pageCount; page++, at += pageBytes) {
    const end = at + pageBytes;
    if (regionBuffer.compare(shadowBuffer, at, end, at, end) === 0) continue;
    changedPages[count] = page;
    zeroFlags[count] = regionBuffer.compare(zero, 0, pageBytes, at, end) === 0 ? 1 : 0;
    count++;
    if (update) regionBuffer.copy(shadowBuffer, at, at, end);
  }
  return count;
}

const hash = new Int32Array(2);

/** Fingerprint-mode scan; see PagesBackend.scanFingerprints. */
export function scanFingerprintsJs(
  region: Uint8Array,
  pageBytes: number,
  fingerprints: BigUint64Array | Uint32Array,
  seed: bigint,
  changedPages: Uint32Array,
  zeroFlags: Uint8Array,
  update: boolean,
): number {
  const pageCount = region.length / pageBytes;
  const seedLo = Number(BigInt.asIntN(32, seed));
  const seedHi = Number(BigInt.asIntN(32, seed >> 32n));
  // Each fingerprint is a host-order uint64: as two int32, the low word comes first on little-endian hosts.
  const table = new Int32Array(fingerprints.buffer, fingerprints.byteOffset, pageCount * 2);
  const low = LITTLE_ENDIAN ? 0 : 1;
  const high = 1 - low;
  const regionBuffer = bufferOf(region);
  const zero = zeroPageOf(pageBytes);
  let count = 0;
  for (let page = 0, at = 0; page < pageCount; page++, at += pageBytes) {
    xxh3Into(region, at, pageBytes, seedHi, seedLo, hash);
    if (table[2 * page + low] === hash[0] && table[2 * page + high] === hash[1]) continue;
    changedPages[count] = page;
    zeroFlags[count] = regionBuffer.compare(zero, 0, pageBytes, at, at + pageBytes) === 0 ? 1 : 0;
    count++;
    if (update) {
      table[2 * page + low] = hash[0]!;
      table[2 * page + high] = hash[1]!;
    }
  }
  return count;
}
