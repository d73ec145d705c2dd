#include "page_gather.h"

#include <cstring>

namespace kemari {

int64_t GatherPages(const uint8_t* memory, size_t page_slots, const uint32_t* indices, size_t count, size_t page_bytes,
                    uint8_t* out) {
  for (size_t k = 0; k < count;) {
    // Read each index once into a local: the check and the use must see the same value (SharedArrayBuffer).
    const size_t first = indices[k];
    if (first >= page_slots) return -1 - static_cast<int64_t>(k);
    size_t run = 1;
    while (k + run < count && first + run < page_slots && indices[k + run] == first + run) run++;
    if (k + run < count) {
      const size_t next = indices[k + run];
      if (next < page_slots) {
        for (size_t line = 0; line < page_bytes; line += 64) __builtin_prefetch(memory + next * page_bytes + line, 0);
      }
    }
    std::memcpy(out + k * page_bytes, memory + first * page_bytes, run * page_bytes);
    k += run;
  }
  return static_cast<int64_t>(count);
}

}  // namespace kemari
