// Changed-page scan over a whole memory region: the core of each checkpoint's capture, without N-API types so it
// can be tested and fuzzed on its own. See native/README.md for the contract.
#ifndef KEMARI_PAGE_SCAN_H
#define KEMARI_PAGE_SCAN_H

#include <cstddef>
#include <cstdint>

namespace kemari {

/** True when the `bytes` bytes at `p` are all zero. */
bool IsZero(const uint8_t* p, size_t bytes);

/**
 * Compares every page of `region` with the same page of `shadow` (same size). For each page that differs, in
 * increasing order, writes its index to `changed_pages[k]` and 1 or 0 to `zero_flags[k]` (all zero or not); when
 * `update` is set, also copies the page into `shadow`. Returns the number of changed pages. The caller guarantees
 * room for `page_count` entries in both outputs.
 */
uint32_t ScanShadow(const uint8_t* region, uint8_t* shadow, size_t page_bytes, size_t page_count,
                    uint32_t* changed_pages, uint8_t* zero_flags, bool update);

/**
 * Like ScanShadow, against 8-byte fingerprints: `fingerprints` holds one XXH3-64(page, seed) per page as a host-order
 * uint64 (alignment not required). A page is changed when its fingerprint differs; with `update` the new
 * fingerprint is stored.
 */
uint32_t ScanFingerprints(const uint8_t* region, uint8_t* fingerprints, size_t page_bytes, size_t page_count,
                          uint64_t seed, uint32_t* changed_pages, uint8_t* zero_flags, bool update);

}  // namespace kemari

#endif  // KEMARI_PAGE_SCAN_H
