// XXH64 (Yann Collet's xxHash, 64-bit variant), the page fingerprint of kemari's scan.
//
// Why XXH64: it is a published, specified 64-bit hash with reference test vectors, it runs at several GB/s a core
// (four independent 64-bit multiply lanes; memory bandwidth, not the hash, limits a 256 MiB scan), and it can be
// reproduced bit for bit in plain JavaScript (src/pages/xxh64.ts) for the fallback. A pair of CRC32C was rejected:
// CRC is linear, so two CRCs of the same bytes with different seeds carry only 32 bits between them, and a 2^-32
// miss rate per changed page is a silent replica divergence every couple of days at a few thousand pages a second.
//
// This is the scalar reference algorithm (xxhash.h, XXH64), reading input little-endian; unaligned input is fine
// (loads go through memcpy, which compiles to plain moves on x86-64 and arm64).
#ifndef KEMARI_XXH64_H
#define KEMARI_XXH64_H

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace kemari {

constexpr uint64_t kXxhPrime1 = 0x9E3779B185EBCA87ULL;
constexpr uint64_t kXxhPrime2 = 0xC2B2AE3D27D4EB4FULL;
constexpr uint64_t kXxhPrime3 = 0x165667B19E3779F9ULL;
constexpr uint64_t kXxhPrime4 = 0x85EBCA77C2B2AE63ULL;
constexpr uint64_t kXxhPrime5 = 0x27D4EB2F165667C5ULL;

inline uint64_t Load64Le(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  v = __builtin_bswap64(v);
#endif
  return v;
}

inline uint32_t Load32Le(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  v = __builtin_bswap32(v);
#endif
  return v;
}

inline uint64_t Rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

inline uint64_t XxhRound(uint64_t acc, uint64_t input) {
  acc += input * kXxhPrime2;
  acc = Rotl64(acc, 31);
  return acc * kXxhPrime1;
}

inline uint64_t XxhMergeRound(uint64_t acc, uint64_t val) {
  acc ^= XxhRound(0, val);
  return acc * kXxhPrime1 + kXxhPrime4;
}

/** XXH64 of `len` bytes at `p` with `seed`. */
inline uint64_t Xxh64(const uint8_t* p, size_t len, uint64_t seed) {
  const uint8_t* const end = p + len;
  uint64_t h;
  if (len >= 32) {
    const uint8_t* const limit = end - 32;
    uint64_t v1 = seed + kXxhPrime1 + kXxhPrime2;
    uint64_t v2 = seed + kXxhPrime2;
    uint64_t v3 = seed;
    uint64_t v4 = seed - kXxhPrime1;
    do {
      v1 = XxhRound(v1, Load64Le(p));
      v2 = XxhRound(v2, Load64Le(p + 8));
      v3 = XxhRound(v3, Load64Le(p + 16));
      v4 = XxhRound(v4, Load64Le(p + 24));
      p += 32;
    } while (p <= limit);
    h = Rotl64(v1, 1) + Rotl64(v2, 7) + Rotl64(v3, 12) + Rotl64(v4, 18);
    h = XxhMergeRound(h, v1);
    h = XxhMergeRound(h, v2);
    h = XxhMergeRound(h, v3);
    h = XxhMergeRound(h, v4);
  } else {
    h = seed + kXxhPrime5;
  }
  h += static_cast<uint64_t>(len);
  while (end - p >= 8) {
    h ^= XxhRound(0, Load64Le(p));
    h = Rotl64(h, 27) * kXxhPrime1 + kXxhPrime4;
    p += 8;
  }
  if (end - p >= 4) {
    h ^= static_cast<uint64_t>(Load32Le(p)) * kXxhPrime1;
    h = Rotl64(h, 23) * kXxhPrime2 + kXxhPrime3;
    p += 4;
  }
  while (p < end) {
    h ^= static_cast<uint64_t>(*p) * kXxhPrime5;
    h = Rotl64(h, 11) * kXxhPrime1;
    p += 1;
  }
  h ^= h >> 33;
  h *= kXxhPrime2;
  h ^= h >> 29;
  h *= kXxhPrime3;
  h ^= h >> 32;
  return h;
}

}  // namespace kemari

#endif  // KEMARI_XXH64_H
