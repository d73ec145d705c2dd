/**
 * The page fingerprint of the scan's fingerprint mode, for callers that keep or check fingerprints themselves (a
 * secondary verifying a page it applied, a table built from a snapshot). XXH3-64; why this hash: xxh3.ts and
 * native/README.md.
 */
import { checkU64, checkUint8Array } from './check.js';
import { activeBackend } from './implementation.js';

/** Bytes of one page fingerprint in a fingerprint table. */
export const FINGERPRINT_BYTES = 8;

/** XXH3-64 of `page` with `seed` (xxHash's XXH3_64bits_withSeed): the value scanChangedPages stores for that page. */
export function pageFingerprint(page: Uint8Array, seed = 0n): bigint {
  checkUint8Array('page', page);
  checkU64('seed', seed);
  return activeBackend.xxh3(page, seed);
}
