// XOR-delta encode and decode; see page_delta.h for the wire form and the encoder's rules.
#include "page_delta.h"

#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "load_le.h"

namespace kemari {

namespace {

constexpr uint64_t kOnes = 0x0101010101010101ULL;
constexpr uint64_t kHighs = 0x8080808080808080ULL;

// First index >= pos where the pages differ, or n. Eight bytes at a time: the lowest set byte of old ^ new, read
// little-endian, is the first differing byte.
inline size_t NextDifferent(const uint8_t* a, const uint8_t* b, size_t pos, size_t n) {
  // Most of a page is unchanged: skip it 32 bytes a step (one branch for four words), then find the byte.
  while (n - pos >= 32) {
    const uint64_t x = (Load64Le(a + pos) ^ Load64Le(b + pos)) | (Load64Le(a + pos + 8) ^ Load64Le(b + pos + 8)) |
                       (Load64Le(a + pos + 16) ^ Load64Le(b + pos + 16)) | (Load64Le(a + pos + 24) ^ Load64Le(b + pos + 24));
    if (x != 0) break;
    pos += 32;
  }
  while (n - pos >= 8) {
    const uint64_t x = Load64Le(a + pos) ^ Load64Le(b + pos);
    if (x != 0) return pos + (static_cast<size_t>(__builtin_ctzll(x)) >> 3);
    pos += 8;
  }
  while (pos < n && a[pos] == b[pos]) pos++;
  return pos;
}

// First index >= pos where the pages are equal, or n. The classic "has a zero byte" test; its lowest set bit is
// exact (only bits above the first zero byte can be false positives).
inline size_t NextEqual(const uint8_t* a, const uint8_t* b, size_t pos, size_t n) {
  while (n - pos >= 8) {
    const uint64_t x = Load64Le(a + pos) ^ Load64Le(b + pos);
    const uint64_t zero_bytes = (x - kOnes) & ~x & kHighs;
    if (zero_bytes != 0) return pos + (static_cast<size_t>(__builtin_ctzll(zero_bytes)) >> 3);
    pos += 8;
  }
  while (pos < n && a[pos] != b[pos]) pos++;
  return pos;
}

// dst = a ^ b for `n` bytes, eight at a time; dst may be a (in place), but must not otherwise overlap.
inline void XorBytes(uint8_t* dst, const uint8_t* a, const uint8_t* b, size_t n) {
  size_t i = 0;
  for (; n - i >= 8; i += 8) {
    uint64_t x, y;
    std::memcpy(&x, a + i, 8);
    std::memcpy(&y, b + i, 8);
    x ^= y;
    std::memcpy(dst + i, &x, 8);
  }
  for (; i < n; i++) dst[i] = a[i] ^ b[i];
}

inline size_t VarintBytes(size_t v) { return v < (1u << 7) ? 1 : v < (1u << 14) ? 2 : v < (1u << 21) ? 3 : 4; }

inline size_t PutVarint(uint8_t* out, size_t v) {
  size_t i = 0;
  while (v >= 0x80) {
    out[i++] = static_cast<uint8_t>(v | 0x80);
    v >>= 7;
  }
  out[i++] = static_cast<uint8_t>(v);
  return i;
}

// Reads a varint at *at. Returns kDeltaOk and the value, or an error reason; *at is advanced only on success.
inline int64_t GetVarint(const uint8_t* d, size_t n, size_t* at, size_t* value) {
  size_t v = 0;
  size_t i = *at;
  for (size_t k = 0;; k++) {
    if (i >= n) return kDeltaTruncated;
    if (k == kDeltaVarintBytesMax) return kDeltaBadVarint;
    const uint8_t byte = d[i++];
    v |= static_cast<size_t>(byte & 0x7f) << (7 * k);
    if ((byte & 0x80) == 0) {
      if (byte == 0 && k > 0) return kDeltaBadVarint;  // not minimal
      break;
    }
  }
  *at = i;
  *value = v;
  return kDeltaOk;
}

inline int64_t Fail(int64_t reason, size_t offset) { return reason + 8 * static_cast<int64_t>(offset); }

// Walks the runs; when `out` is not null, applies them. Every bound is checked in both modes.
int64_t Walk(const uint8_t* delta, size_t delta_bytes, size_t page_bytes, uint8_t* out) {
  size_t at = 0;
  size_t pos = 0;
  while (at < delta_bytes) {
    size_t start = at;
    size_t skip;
    int64_t r = GetVarint(delta, delta_bytes, &at, &skip);
    if (r != kDeltaOk) return Fail(r, start);
    if (skip > page_bytes - pos) return Fail(kDeltaPastPageEnd, start);
    pos += skip;
    start = at;
    size_t length;
    r = GetVarint(delta, delta_bytes, &at, &length);
    if (r != kDeltaOk) return Fail(r, start);
    if (length == 0) return Fail(kDeltaEmptyLiteral, start);
    if (length > page_bytes - pos) return Fail(kDeltaPastPageEnd, start);
    if (length > delta_bytes - at) return Fail(kDeltaTruncated, at);
    if (out != nullptr) XorBytes(out + pos, out + pos, delta + at, length);
    at += length;
    pos += length;
  }
  return kDeltaOk;
}

}  // namespace

namespace {

// Writes the run [start, end) after a skip from `pos` at out + *o, and copies its new bytes to `update` when not
// null; false (nothing written) when the delta would reach `budget_bytes`. Both encoders write their runs here.
inline bool WriteRun(const uint8_t* old_page, const uint8_t* new_page, size_t pos, size_t start, size_t end, uint8_t* out,
                     size_t budget_bytes, uint8_t* update, size_t* o) {
  const size_t skip = start - pos;
  const size_t length = end - start;
  const size_t need = VarintBytes(skip) + VarintBytes(length) + length;
  if (need >= budget_bytes - *o) return false;  // *o < budget_bytes always holds here
  *o += PutVarint(out + *o, skip);
  *o += PutVarint(out + *o, length);
  XorBytes(out + *o, old_page + start, new_page + start, length);
  // memmove, not memcpy: the binding does not refuse a base overlapping its page (the TypeScript wrapper does).
  if (update != nullptr) std::memmove(update + start, new_page + start, length);
  *o += length;
  return true;
}

// The byte-by-byte encoder (pages the mask encoder does not take, and machines without SSE2). EncodeDelta, and when
// `update` is not null, each run's new bytes copied to update[start, end) as soon as the run is written: a page with
// a few changed words dirties a few cache lines of its base instead of all of them (the base is cold; a whole-page
// copy costs a write-back of 4 KiB). Later runs only read at and after the end of earlier
// ones, and the copies are named by the encoder's own positions (never read back from `out`), so every write stays
// within update[0, page_bytes) whatever the buffers alias. On -1 some runs may have been copied: the caller copies
// the whole page then.
int64_t EncodeDeltaScalar(const uint8_t* old_page, const uint8_t* new_page, size_t page_bytes, uint8_t* out,
                          size_t budget_bytes, uint8_t* update) {
  const size_t n = page_bytes;
  size_t pos = 0;
  size_t o = 0;
  for (;;) {
    const size_t start = NextDifferent(old_page, new_page, pos, n);
    if (start == n) break;
    size_t end = start;
    for (;;) {
      end = NextEqual(old_page, new_page, end, n);
      if (end == n) break;
      size_t gap;
      if (n - end >= 8) {
        // Equal bytes at `end`, counted from the XOR word: its lowest non-zero byte is the first differing one.
        const uint64_t x = Load64Le(old_page + end) ^ Load64Le(new_page + end);
        gap = x == 0 ? 8 : static_cast<size_t>(__builtin_ctzll(x)) >> 3;
      } else {
        gap = 0;
        while (gap < kDeltaGapBytesMin && end + gap < n && old_page[end + gap] == new_page[end + gap]) gap++;
      }
      if (gap >= kDeltaGapBytesMin || end + gap == n) break;
      end += gap;
    }
    if (!WriteRun(old_page, new_page, pos, start, end, out, budget_bytes, update, &o)) return -1;
    pos = end;
  }
  if (o >= budget_bytes) return -1;
  return static_cast<int64_t>(o);
}

#if defined(__SSE2__)
// Pages up to this size (and a multiple of 64 bytes) are encoded from a bit mask of their differing bytes.
constexpr size_t kMaskPageBytesMax = 64 * 1024;
constexpr size_t kMaskWordsMax = kMaskPageBytesMax / 64;

// diff[w] bit i: byte 64 * w + i differs. Sixteen bytes a comparison.
inline void BuildDiffMask(const uint8_t* a, const uint8_t* b, size_t words, uint64_t* diff) {
  for (size_t w = 0; w < words; w++) {
    uint64_t equal = 0;
    for (int k = 0; k < 4; k++) {
      const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(a + 64 * w + 16 * k));
      const __m128i y = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 64 * w + 16 * k));
      equal |= static_cast<uint64_t>(static_cast<uint32_t>(_mm_movemask_epi8(_mm_cmpeq_epi8(x, y)))) << (16 * k);
    }
    diff[w] = ~equal;
  }
}

// EncodeDeltaScalar's runs, found in a bit mask instead of byte by byte: the mask of differing bytes is built in one
// pass (the page's bytes are read once, sixteen at a time), then each run costs two bit scans. A run starts at the
// next differing byte and ends at the first byte from which three bytes are equal, bytes past the page counting as
// equal: exactly the scalar rule (a gap of fewer than three equal bytes followed by a differing byte is carried, the
// page end ends a run). The runs are found from the mask taken before any of them is written, and the bytes each run
// carries are read when it is written, at and after the end of the runs before it, as in the scalar encoder: the
// same output whenever `update` is null, `old_page` itself, or disjoint from both pages (the batch's cases). A base
// that partly overlaps its page, which only the raw binding would pass (the TypeScript wrapper refuses it), can give
// other bytes than the scalar encoder's, both meaningless; every write stays within out and update[0, page_bytes).
int64_t EncodeDeltaMask(const uint8_t* old_page, const uint8_t* new_page, size_t page_bytes, uint8_t* out,
                        size_t budget_bytes, uint8_t* update) {
  const size_t n = page_bytes;
  const size_t words = n / 64;
  uint64_t diff[kMaskWordsMax];
  BuildDiffMask(old_page, new_page, words, diff);
  // Bytes i, i + 1 and i + 2 equal: bit i of the result, for word w (words past the page are all equal).
  const auto three_equal = [&](size_t w) -> uint64_t {
    const uint64_t z = w < words ? ~diff[w] : ~0ULL;
    const uint64_t next = w + 1 < words ? ~diff[w + 1] : ~0ULL;
    return z & ((z >> 1) | (next << 63)) & ((z >> 2) | (next << 62));
  };
  size_t pos = 0;
  size_t o = 0;
  for (;;) {
    size_t w = pos >> 6;
    if (w >= words) break;
    uint64_t m = diff[w] & (~0ULL << (pos & 63));
    while (m == 0 && ++w < words) m = diff[w];
    if (m == 0) break;
    const size_t start = (w << 6) + static_cast<size_t>(__builtin_ctzll(m));
    // The byte at start differs, so the scan finds a later byte; past the page every bit is set, so it ends.
    m = three_equal(w) & (~0ULL << (start & 63));
    while (m == 0) m = three_equal(++w);
    size_t end = (w << 6) + static_cast<size_t>(__builtin_ctzll(m));
    if (end > n) end = n;
    if (!WriteRun(old_page, new_page, pos, start, end, out, budget_bytes, update, &o)) return -1;
    pos = end;
  }
  if (o >= budget_bytes) return -1;
  return static_cast<int64_t>(o);
}
#endif

// EncodeDelta, and when `update` is not null, each run's new bytes copied to update[start, end) as soon as the run
// is written (see EncodeDeltaScalar). The mask encoder where SSE2 is (every x86-64), for pages it can hold.
int64_t EncodeDeltaUpdating(const uint8_t* old_page, const uint8_t* new_page, size_t page_bytes, uint8_t* out,
                            size_t budget_bytes, uint8_t* update) {
#if defined(__SSE2__)
  if (page_bytes <= kMaskPageBytesMax && page_bytes % 64 == 0) {
    return EncodeDeltaMask(old_page, new_page, page_bytes, out, budget_bytes, update);
  }
#endif
  return EncodeDeltaScalar(old_page, new_page, page_bytes, out, budget_bytes, update);
}

}  // namespace

int64_t EncodeDelta(const uint8_t* old_page, const uint8_t* new_page, size_t page_bytes, uint8_t* out,
                    size_t budget_bytes) {
  return EncodeDeltaUpdating(old_page, new_page, page_bytes, out, budget_bytes, nullptr);
}

int64_t EncodeDeltaBatch(const uint8_t* pages, size_t page_slots, const uint32_t* page_indices, uint8_t* bases,
                         size_t base_slots, const uint32_t* base_indices, size_t count, size_t page_bytes,
                         size_t budget_bytes, uint8_t* out, int32_t* lengths, bool update_bases) {
  size_t cursor = 0;
  for (size_t k = 0; k < count; k++) {
    // Read each index once into a local: the check and the use must see the same value (SharedArrayBuffer).
    const size_t page_index = page_indices[k];
    const size_t base_index = base_indices[k];
    if (page_index >= page_slots || base_index >= base_slots) return -1 - static_cast<int64_t>(k);
    const uint8_t* page = pages + page_index * page_bytes;
    uint8_t* base = bases + base_index * page_bytes;
    // The bases are scattered over the cache slab and were last touched epochs ago: the hardware prefetcher stops
    // at every 4 KiB boundary, so ask for the next pair of pages now, while this one is compared. A prefetch is a
    // hint (never a fault), and only in-bounds addresses are named.
    if (k + 1 < count) {
      const size_t next_page = page_indices[k + 1];
      const size_t next_base = base_indices[k + 1];
      if (next_page < page_slots && next_base < base_slots) {
        for (size_t line = 0; line < page_bytes; line += 64) {
          __builtin_prefetch(bases + next_base * page_bytes + line, 0);
          __builtin_prefetch(pages + next_page * page_bytes + line, 0);
        }
      }
    }
    // Updating the base run by run as they are found: every differing byte lies in a run, so after a delta the base
    // equals the page; a page over budget (-1) is copied whole.
    const int64_t n = EncodeDeltaUpdating(base, page, page_bytes, out + cursor, budget_bytes, update_bases ? base : nullptr);
    lengths[k] = static_cast<int32_t>(n);  // n < budget_bytes <= kDeltaPageBytesMax: fits
    if (update_bases && n < 0) std::memmove(base, page, page_bytes);
    if (n > 0) cursor += static_cast<size_t>(n);
  }
  return static_cast<int64_t>(cursor);
}

int64_t ValidateDelta(const uint8_t* delta, size_t delta_bytes, size_t page_bytes) {
  return Walk(delta, delta_bytes, page_bytes, nullptr);
}

int64_t DecodeDelta(const uint8_t* old_page, const uint8_t* delta, size_t delta_bytes, uint8_t* out,
                    size_t page_bytes) {
  const int64_t r = Walk(delta, delta_bytes, page_bytes, nullptr);
  if (r != kDeltaOk) return r;
  if (out != old_page) std::memmove(out, old_page, page_bytes);
  return Walk(delta, delta_bytes, page_bytes, out);
}

}  // namespace kemari
