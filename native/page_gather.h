// Gathering scattered guest pages into one contiguous send buffer: the copy an epoch's capture makes while the VM
// is paused. Without N-API types so it can be tested on its own.
#ifndef KEMARI_PAGE_GATHER_H
#define KEMARI_PAGE_GATHER_H

#include <cstddef>
#include <cstdint>

namespace kemari {

/**
 * Copies page indices[k] of `memory` (page_slots pages of page_bytes) to out + k * page_bytes, for k < count, and
 * prefetches page k + 1 while page k is copied: the pages of an epoch are scattered over the guest and mostly cold,
 * and the hardware prefetcher stops at every 4 KiB boundary. Runs of consecutive indices are copied as one block.
 * Returns count, or -1 - k when indices[k] is out of range (pages before k are copied).
 */
int64_t GatherPages(const uint8_t* memory, size_t page_slots, const uint32_t* indices, size_t count, size_t page_bytes,
                    uint8_t* out);

}  // namespace kemari

#endif  // KEMARI_PAGE_GATHER_H
