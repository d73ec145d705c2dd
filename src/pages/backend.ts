/**
 * The raw contract shared by the native addon (native/addon.cc) and the TypeScript fallback (js-backend.ts).
 *
 * Why one interface with the addon's exact signatures: the public functions (scan.ts, delta.ts, fingerprint.ts,
 * mmap.ts) validate their arguments once and then call whichever backend loaded, and the tests run the same random
 * inputs through both backends and compare every output byte. Backends assume validated arguments; the native one
 * re-checks bounds anyway (it must never touch memory out of bounds), the TypeScript one cannot go out of bounds.
 *
 * Error values of the delta functions: 0 for success, otherwise `reason + 8 * offsetBytes` (see delta-format.ts),
 * a number rather than an exception so that both backends report the same fault at the same offset.
 */
export interface PagesBackend {
  /**
   * Compares each page of `region` with `shadow`; writes the changed page indices and their zero flags in
   * increasing page order; copies changed pages into `shadow` when `update`. Returns the changed count.
   */
  scanShadow(region: Uint8Array, pageBytes: number, shadow: Uint8Array, changedPages: Uint32Array, zeroFlags: Uint8Array, update: boolean): number;
  /** Same against 8-byte XXH3 fingerprints (host-order uint64 per page); stores new ones when `update`. */
  scanFingerprints(
    region: Uint8Array,
    pageBytes: number,
    fingerprints: BigUint64Array | Uint32Array,
    seed: bigint,
    changedPages: Uint32Array,
    zeroFlags: Uint8Array,
    update: boolean,
  ): number;
  /** XXH3-64 of `data` with `seed` (XXH3_64bits_withSeed). */
  xxh3(data: Uint8Array, seed: bigint): bigint;
  /** Encoded length (< budgetBytes), or -1 when the delta would need budgetBytes or more. */
  encodeDelta(oldPage: Uint8Array, newPage: Uint8Array, out: Uint8Array, budgetBytes: number): number;
  /**
   * Encodes `count` pages in one call: page k is pages[pageIndices[k]*pageBytes, +pageBytes), its base is
   * bases[baseIndices[k]*pageBytes, +pageBytes). Deltas are packed one after another into `out` from offset 0:
   * lengths[k] = the delta length (> 0, written at the running cursor, which then advances), 0 (page equals its base,
   * nothing written), or -1 (delta would need budgetBytes or more; nothing kept, cursor unchanged).
   * When updateBases, every page whose length is not 0 is then copied over its base (the base becomes the page).
   * Returns the total bytes written to out (the final cursor).
   *
   * Each page's result is exactly encodeDelta(base, page, out.subarray(cursor), budgetBytes): same bytes, same -1
   * rule. Pages are processed in order k = 0..count-1, so with updateBases a later k sharing a base slot sees the
   * updated base. Needs budgetBytes in [1, pageBytes] and out.length >= count * (budgetBytes - 1) (the worst case);
   * bytes of `out` after the returned cursor may be garbage.
   */
  encodeDeltaBatch(
    pages: Uint8Array,
    pageIndices: Uint32Array,
    bases: Uint8Array,
    baseIndices: Uint32Array,
    count: number,
    pageBytes: number,
    budgetBytes: number,
    out: Uint8Array,
    lengths: Int32Array,
    updateBases: boolean,
  ): number;
  /**
   * Copies page indices[k] of `memory` to out[k * pageBytes, (k + 1) * pageBytes) for k < count (an epoch's capture
   * into its send buffer). Returns count.
   */
  gatherPages(memory: Uint8Array, pageBytes: number, indices: Uint32Array, count: number, out: Uint8Array): number;
  /** 0, or the error value; on error `out` is untouched. */
  decodeDelta(oldPage: Uint8Array, delta: Uint8Array, out: Uint8Array): number;
  /** 0, or the error value. */
  validateDelta(delta: Uint8Array, pageBytes: number): number;
  /** The first `bytes` bytes of the file: a read-only MAP_SHARED mapping (native) or a copy (fallback). */
  mmapFile(path: string, bytes: number): ArrayBuffer;
  /** Detaches and releases a buffer returned by mmapFile; false when it is not one (or already released). */
  unmap(buffer: ArrayBuffer): boolean;
}

/** The addon's extra fields, beyond the backend contract. */
export interface NativePagesBinding extends PagesBackend {
  /** Whether the addon was compiled with SSE4.2 enabled (x86-64 builds). */
  readonly sse42: boolean;
  /** Bumped whenever the binding's signatures change, so a stale build/ is refused rather than misused. */
  readonly abiVersion: number;
}

/** The abiVersion this TypeScript expects from native/addon.cc. */
export const NATIVE_ABI_VERSION = 4;
