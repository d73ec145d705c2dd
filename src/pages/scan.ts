/**
 * The changed-page scan: in one call over a whole memory region, which pages changed since the committed epoch,
 * which of those are all zero, and (when asked) the reference advanced to the new contents.
 *
 * Why one call for the region (not one per page): a 256 MiB region is 65,536 pages of 4 KiB, and a crossing into
 * the addon per page would cost more than comparing the page. Why caller-supplied outputs: the scan runs every
 * epoch, many times a second, and allocates nothing.
 *
 * Two kinds of reference, chosen by its type:
 * - shadow copy (a Uint8Array as long as the region): exact, reads twice the region's bytes, costs a second copy
 *   of guest memory; its pages are also the base of XOR deltas (delta.ts), since they are what the secondary has.
 * - fingerprints (a BigUint64Array of one XXH3 per page, or a Uint32Array of two words per page, in host byte
 *   order): 8 bytes a page instead of a copy, reads the region once; a change is missed with probability 2^-64 per
 *   page, unless a guest crafts XXH3 collisions on purpose (pass a secret random `seed` per VM against that). A
 *   fresh table of zeros reports every page on the first scan: the first epoch sends all of memory anyway.
 *
 * The caller's duties (the committed copy must describe exactly what the secondary holds):
 * 1. Scan with `update: true` only when the pages found will be committed as they are now; otherwise scan with
 *    `update: false`, and advance the reference when the epoch is acked (copy the pages that were sent into the
 *    shadow, or rescan the same contents with `update: true`).
 * 2. Keep the region unchanged during the scan (pause the guest, or scan a snapshot): a page written mid-scan may be
 *    reported with contents the reference does not describe.
 */
import { invalid } from '../wire/validate.js';
import { checkDisjoint, checkScanPageBytes, checkU64, checkUint8Array } from './check.js';
import { activeBackend } from './implementation.js';

/** The reference the scan compares with: a shadow copy (Uint8Array) or fingerprints (8 bytes a page). */
export type PageReference = Uint8Array | BigUint64Array | Uint32Array;

/** Where the scan writes its results; both arrays need room for every page of the region. */
export interface PageScanOutput {
  /** Receives the indices of the changed pages, increasing, in its first `count` entries. */
  changedPages: Uint32Array;
  /** Receives 1 at position k when page changedPages[k] is now all zero (sent as ZERO, no data), else 0. */
  zeroFlags: Uint8Array;
}

/** Options of {@link scanChangedPages}. */
export interface PageScanOptions {
  /** Store the changed pages (shadow) or their new fingerprints in the reference. Default false. */
  update?: boolean;
  /** XXH3 seed of fingerprint references; must be the one the table was built with. Default 0n. */
  seed?: bigint;
}

/**
 * Finds the pages of `region` that differ from `reference`; returns how many, having written their indices and
 * zero flags to `out` (see the module comment for the two kinds of reference and the caller's duties). `region`'s
 * length must be a multiple of `pageBytes` (a power of two, 8 bytes to 16 MiB).
 */
export function scanChangedPages(
  region: Uint8Array,
  pageBytes: number,
  reference: PageReference,
  out: PageScanOutput,
  options: PageScanOptions = {},
): number {
  checkUint8Array('region', region);
  checkScanPageBytes('pageBytes', pageBytes);
  if (region.length % pageBytes !== 0) invalid('region', `length must be a multiple of pageBytes (${pageBytes})`, region.length);
  const pageCount = region.length / pageBytes;
  if (typeof out !== 'object' || out === null) invalid('out', 'must be { changedPages, zeroFlags }', out);
  const { changedPages, zeroFlags } = out;
  if (!(changedPages instanceof Uint32Array) || changedPages.length < pageCount) {
    invalid('out.changedPages', `must be a Uint32Array with room for ${pageCount} pages`, changedPages?.length);
  }
  if (!(zeroFlags instanceof Uint8Array) || zeroFlags.length < pageCount) {
    invalid('out.zeroFlags', `must be a Uint8Array with room for ${pageCount} pages`, zeroFlags?.length);
  }
  const update = options.update ?? false;
  if (typeof update !== 'boolean') invalid('options.update', 'must be a boolean', update);
  const seed = options.seed ?? 0n;
  for (const [name, view] of [['reference', reference], ['out.changedPages', changedPages], ['out.zeroFlags', zeroFlags]] as const) {
    checkDisjoint(name, view, 'region', region);
  }
  checkDisjoint('out.changedPages', changedPages, 'reference', reference);
  checkDisjoint('out.zeroFlags', zeroFlags, 'reference', reference);
  checkDisjoint('out.zeroFlags', zeroFlags, 'out.changedPages', changedPages);
  if (reference instanceof Uint8Array) {
    if (reference.length !== region.length) invalid('reference', `a shadow copy must be as long as region (${region.length})`, reference.length);
    if (options.seed !== undefined) invalid('options.seed', 'applies to fingerprint references only');
    return activeBackend.scanShadow(region, pageBytes, reference, changedPages, zeroFlags, update);
  }
  if (reference instanceof BigUint64Array || reference instanceof Uint32Array) {
    const words = reference instanceof BigUint64Array ? 1 : 2;
    if (reference.length !== pageCount * words) {
      invalid('reference', `a fingerprint table must hold ${pageCount * words} elements (8 bytes a page)`, reference.length);
    }
    checkU64('options.seed', seed);
    return activeBackend.scanFingerprints(region, pageBytes, reference, seed, changedPages, zeroFlags, update);
  }
  return invalid('reference', 'must be a Uint8Array (shadow copy), a BigUint64Array or a Uint32Array (fingerprints)');
}
