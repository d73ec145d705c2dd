/**
 * The page fingerprint of the scan's fingerprint mode, for callers that keep or check fingerprints themselves (a
 * secondary verifying a page it applied, a table built from a snapshot). XXH64; why this hash: xxh64.ts.
 */
import { checkU64, checkUint8Array } from './check.js';
import { activeBackend } from './implementation.js';

/** Bytes of one page fingerprint in a fingerprint table. */
export const FINGERPRINT_BYTES = 8;

/** XXH64 of `page` with `seed`: the value scanChangedPages stores for that page. */
export function pageFingerprint(page: Uint8Array, seed = 0n): bigint {
  checkUint8Array('page', page);
  checkU64('seed', seed);
  return activeBackend.xxh64(page, seed);
}
