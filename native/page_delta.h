// XOR-delta of a page against its previous version, with zero-run compression (the idea of QEMU's XBZRLE; the
// wire form is kemari's own). Without N-API types so it can be tested and fuzzed on its own.
//
// Wire form (also in native/README.md and src/pages/delta-format.ts):
//
//   delta   := run*
//   run     := skip:varint  length:varint  xor[length]
//   varint  := unsigned LEB128: 7 bits a byte, least significant group first, high bit = "more bytes follow";
//              at most 4 bytes, minimal (no trailing 0x80 0x00 padding: a last byte of 0 is only allowed alone)
//
// Decoding starts at page offset 0. Each run skips `skip` bytes (unchanged: XOR zero), then XORs the `length`
// bytes of `xor` onto the page. Bytes after the last run are unchanged. An empty delta means "no change".
// Rules (a delta breaking one is malformed and is rejected before anything is written):
//   - skip + length of every run stay inside the page (offset + skip <= page, offset + skip + length <= page);
//   - length >= 1 (a run that changes nothing is malformed);
//   - the delta ends exactly after the last run's xor bytes (no partial varint or short xor bytes).
//
// The encoder is deterministic (the TypeScript fallback reproduces it byte for byte): a literal starts at the first
// differing byte and extends over differing bytes and over gaps of fewer than kDeltaGapBytesMin equal bytes that
// are followed by a differing byte; a gap of kDeltaGapBytesMin or more equal bytes (or the page end) ends it. Why 3:
// a new run costs at least two header bytes, so splitting at a gap of 3 saves at least one byte.
#ifndef KEMARI_PAGE_DELTA_H
#define KEMARI_PAGE_DELTA_H

#include <cstddef>
#include <cstdint>

namespace kemari {

constexpr size_t kDeltaGapBytesMin = 3;
constexpr size_t kDeltaVarintBytesMax = 4;
/** Largest page a delta can describe: every length must fit a 4-byte varint (2^28 - 1). */
constexpr size_t kDeltaPageBytesMax = 1u << 24;

/** Why a delta is malformed; the error value is reason + 8 * (offset in the delta where the problem starts). */
enum DeltaReason : int64_t {
  kDeltaOk = 0,
  kDeltaTruncated = 1,     // ends inside a varint, before a run's length, or inside a run's xor bytes
  kDeltaBadVarint = 2,     // a varint longer than 4 bytes or not minimal
  kDeltaPastPageEnd = 3,   // a skip or a length runs past the end of the page
  kDeltaEmptyLiteral = 4,  // a run with length 0
};

/**
 * Encodes `new_page` against `old_page` (both `page_bytes`) into `out`. Returns the encoded length, which is
 * < `budget_bytes`, or -1 when the delta would need `budget_bytes` or more (the caller then sends the raw page).
 * Writes at most budget_bytes - 1 bytes of `out`.
 */
int64_t EncodeDelta(const uint8_t* old_page, const uint8_t* new_page, size_t page_bytes, uint8_t* out,
                    size_t budget_bytes);

/**
 * Encodes `count` pages in one call, each exactly as EncodeDelta would, packing the deltas one after another into
 * `out` from offset 0. Page k is `pages + page_indices[k] * page_bytes`, its base `bases + base_indices[k] *
 * page_bytes`. lengths[k] receives the delta length (> 0: written at the running cursor, which then advances), 0 (the
 * page equals its base: nothing written) or -1 (the delta would need budget_bytes or more: the cursor stays, the
 * bytes after it are garbage). With `update_bases`, every page whose length is not 0 is then copied over its base, so
 * that a later k with the same base slot sees the updated base (pages are processed in order k = 0, 1, ...).
 *
 * Why a batch: one call per epoch instead of one per page removes the per-page binding overhead, and with
 * `update_bases` the copy of the page the secondary will hold is made in the same pass, while the page is in cache.
 *
 * Bounds: every index is read once and checked against `page_slots` / `base_slots` (the whole pages in `pages` and
 * `bases`) right before use, so indices in memory another thread changes cannot lead out of bounds either. The
 * caller guarantees 1 <= budget_bytes, that `out` holds count * (budget_bytes - 1) bytes (each page writes at most
 * budget_bytes - 1 bytes at a cursor that advanced at most that much per earlier page), and `lengths` count entries.
 *
 * Returns the bytes written to `out` (the final cursor), or -1 - k when page_indices[k] or base_indices[k] is out of
 * range: pages before k are done, page k and later are untouched (lengths[k..] not written).
 */
int64_t EncodeDeltaBatch(const uint8_t* pages, size_t page_slots, const uint32_t* page_indices, uint8_t* bases,
                         size_t base_slots, const uint32_t* base_indices, size_t count, size_t page_bytes,
                         size_t budget_bytes, uint8_t* out, int32_t* lengths, bool update_bases);

/**
 * Validates `delta` for a page of `page_bytes` without writing anything. Returns kDeltaOk or the error value
 * (reason + 8 * offset).
 */
int64_t ValidateDelta(const uint8_t* delta, size_t delta_bytes, size_t page_bytes);

/**
 * Applies `delta` to `old_page`, writing the new page to `out` (which may be `old_page` itself, or overlap it).
 * Validates first, so a malformed delta returns its error value with `out` untouched; returns kDeltaOk on success.
 * The apply pass checks bounds again, so even a delta modified concurrently (SharedArrayBuffer) cannot cause an
 * out-of-bounds access; in that case only it may return an error after writing part of `out`.
 */
int64_t DecodeDelta(const uint8_t* old_page, const uint8_t* delta, size_t delta_bytes, uint8_t* out,
                    size_t page_bytes);

}  // namespace kemari

#endif  // KEMARI_PAGE_DELTA_H
