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
