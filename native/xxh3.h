// XXH3-64 (Yann Collet's xxHash, XXH3 with 64-bit output and a 64-bit seed), the page fingerprint of kemari's
// changed-page scan.
//
// Why XXH3 over XXH64: XXH64 feeds every 8 bytes through a 64x64-bit multiply and is bound by the multiplier's
// throughput (about 20 GB/s a core on Zen 5, in cache or not). XXH3's long-input loop is 32x32->64 multiplies, adds
// and xors over eight independent 64-bit lanes, which fit two AVX2 registers, so it runs at memory speed: 4 KiB
// pages streamed from DRAM hash at about 36 GB/s (about 50 GB/s in cache). Same 2^-64 miss probability per changed
// page, and a published specification with a reference implementation to test against.
//
// Written from the specification (xxHash doc/xxhash_spec.md); Xxh3(data, bytes, seed) returns exactly what
// XXH3_64bits_withSeed(data, bytes, seed) of xxHash 0.8 returns, for every length and seed. Input is read
// little-endian through memcpy loads, so unaligned input is fine. Inputs over 240 bytes take the long path: an AVX2
// accumulate+scramble on x86-64 CPUs that have it (checked once at run time; the code is compiled with
// __attribute__((target("avx2"))), no -mavx2 needed), the portable scalar loop everywhere else. Xxh3Scalar forces
// the scalar loop (tests compare the two).
#ifndef KEMARI_XXH3_H
#define KEMARI_XXH3_H

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "load_le.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace kemari {
namespace xxh3_detail {

constexpr uint64_t kPrime32_1 = 0x9E3779B1ULL;
constexpr uint64_t kPrime32_2 = 0x85EBCA77ULL;
constexpr uint64_t kPrime32_3 = 0xC2B2AE3DULL;
constexpr uint64_t kPrime64_1 = 0x9E3779B185EBCA87ULL;
constexpr uint64_t kPrime64_2 = 0xC2B2AE3D27D4EB4FULL;
constexpr uint64_t kPrime64_3 = 0x165667B19E3779F9ULL;
constexpr uint64_t kPrime64_4 = 0x85EBCA77C2B2AE63ULL;
constexpr uint64_t kPrime64_5 = 0x27D4EB2F165667C5ULL;
constexpr uint64_t kPrimeMx1 = 0x165667919E3779F9ULL;
constexpr uint64_t kPrimeMx2 = 0x9FB21C651E98DF25ULL;

constexpr size_t kSecretBytes = 192;  // the default secret; a seeded long hash derives one of the same size
constexpr size_t kStripeBytes = 64;   // 8 lanes of 8 bytes
constexpr size_t kStripesPerBlock = (kSecretBytes - kStripeBytes) / 8;  // 16
constexpr size_t kBlockBytes = kStripeBytes * kStripesPerBlock;         // 1024
constexpr size_t kScrambleOffset = kSecretBytes - kStripeBytes;         // 128: secret of the scramble
constexpr size_t kLastStripeOffset = kSecretBytes - kStripeBytes - 7;   // 121: secret of the last stripe
constexpr size_t kMergeOffset = 11;                                     // secret of the final merge
// Software prefetch in the long loops, 6 lines ahead and never past the input's end, for inputs of 2 KiB and more.
// The hardware prefetcher starts over at every 4 KiB page: on a scan of 4 KiB pages out of DRAM this lifts the AVX2
// path from about 19 to about 36 GB/s (Zen 5). Under 2 KiB it measured slower than none (512 B: 11 vs 24 GB/s), and
// a distance of 512 bytes gained nothing.
constexpr uintptr_t kPrefetchBytes = 384;
constexpr size_t kPrefetchMinBytes = 2048;

// The default secret of the specification.
alignas(64) inline constexpr uint8_t kSecret[kSecretBytes] = {
    0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c,
    0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97, 0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f,
    0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff, 0x72, 0x21,
    0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c,
    0x3c, 0x28, 0x52, 0xbb, 0x91, 0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b, 0x1b, 0x53, 0x2e, 0xa3,
    0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46, 0xa9, 0xde, 0xac, 0xd8,
    0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d,
    0x8a, 0x51, 0xe0, 0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64,
    0xea, 0xc5, 0xac, 0x83, 0x34, 0xd3, 0xeb, 0xc3, 0xc5, 0x81, 0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb,
    0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0, 0xda, 0x49, 0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e,
    0x2b, 0x16, 0xbe, 0x58, 0x7d, 0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce,
    0x45, 0xcb, 0x3a, 0x8f, 0x95, 0x16, 0x04, 0x28, 0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b, 0x40, 0x7e,
};

inline uint64_t Read64(const uint8_t* p) { return Load64Le(p); }
inline uint32_t Read32(const uint8_t* p) { return Load32Le(p); }

inline void Write64(uint8_t* p, uint64_t v) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  v = __builtin_bswap64(v);
#endif
  std::memcpy(p, &v, 8);
}

inline uint64_t Rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

/** The full 128-bit product of a and b, its two halves xored together. */
inline uint64_t MulFold(uint64_t a, uint64_t b) {
#if defined(__SIZEOF_INT128__)
  __extension__ typedef unsigned __int128 U128;  // __extension__: no -Wpedantic warning
  const U128 p = static_cast<U128>(a) * b;
  return static_cast<uint64_t>(p) ^ static_cast<uint64_t>(p >> 64);
#else
  const uint64_t a_lo = a & 0xFFFFFFFFULL, a_hi = a >> 32;
  const uint64_t b_lo = b & 0xFFFFFFFFULL, b_hi = b >> 32;
  const uint64_t ll = a_lo * b_lo, lh = a_lo * b_hi, hl = a_hi * b_lo, hh = a_hi * b_hi;
  const uint64_t mid = (ll >> 32) + (lh & 0xFFFFFFFFULL) + (hl & 0xFFFFFFFFULL);
  const uint64_t lo = (mid << 32) | (ll & 0xFFFFFFFFULL);
  const uint64_t hi = hh + (lh >> 32) + (hl >> 32) + (mid >> 32);
  return lo ^ hi;
#endif
}

/** The specification's avalanche(). */
inline uint64_t Avalanche(uint64_t h) {
  h ^= h >> 37;
  h *= kPrimeMx1;
  return h ^ (h >> 32);
}

/** The specification's avalanche_XXH64(). */
inline uint64_t AvalancheXxh64(uint64_t h) {
  h ^= h >> 33;
  h *= kPrime64_2;
  h ^= h >> 29;
  h *= kPrime64_3;
  return h ^ (h >> 32);
}

// ---- 0..16 bytes ----

inline uint64_t Hash0to16(const uint8_t* in, size_t len, uint64_t seed) {
  const uint8_t* const s = kSecret;
  if (len > 8) {
    const uint64_t lo = ((Read64(s + 24) ^ Read64(s + 32)) + seed) ^ Read64(in);
    const uint64_t hi = ((Read64(s + 40) ^ Read64(s + 48)) - seed) ^ Read64(in + len - 8);
    return Avalanche(static_cast<uint64_t>(len) + __builtin_bswap64(lo) + hi + MulFold(lo, hi));
  }
  if (len >= 4) {
    const uint64_t mseed = seed ^ (static_cast<uint64_t>(__builtin_bswap32(static_cast<uint32_t>(seed))) << 32);
    const uint64_t joined = static_cast<uint64_t>(Read32(in + len - 4)) | (static_cast<uint64_t>(Read32(in)) << 32);
    uint64_t v = ((Read64(s + 8) ^ Read64(s + 16)) - mseed) ^ joined;
    v ^= Rotl(v, 49) ^ Rotl(v, 24);
    v *= kPrimeMx2;
    v ^= (v >> 35) + static_cast<uint64_t>(len);
    v *= kPrimeMx2;
    return v ^ (v >> 28);
  }
  if (len > 0) {
    const uint32_t joined = static_cast<uint32_t>(in[len - 1]) | (static_cast<uint32_t>(len) << 8) |
                            (static_cast<uint32_t>(in[0]) << 16) | (static_cast<uint32_t>(in[len >> 1]) << 24);
    const uint64_t v = (static_cast<uint64_t>(Read32(s) ^ Read32(s + 4)) + seed) ^ joined;
    return AvalancheXxh64(v);
  }
  return AvalancheXxh64(seed ^ Read64(s + 56) ^ Read64(s + 64));
}

// ---- 17..240 bytes ----

/** The specification's mixStep: 16 bytes of input against 16 bytes of the default secret. */
inline uint64_t Mix16(const uint8_t* in, const uint8_t* s, uint64_t seed) {
  return MulFold(Read64(in) ^ (Read64(s) + seed), Read64(in + 8) ^ (Read64(s + 8) - seed));
}

inline uint64_t Hash17to128(const uint8_t* in, size_t len, uint64_t seed) {
  uint64_t acc = static_cast<uint64_t>(len) * kPrime64_1;
  // Pairs of 16-byte chunks, one from the front and one from the back, until they cover the input.
  const size_t rounds = ((len - 1) >> 5) + 1;
  for (size_t i = 0; i < rounds; ++i) {
    acc += Mix16(in + 16 * i, kSecret + 32 * i, seed);
    acc += Mix16(in + len - 16 * i - 16, kSecret + 32 * i + 16, seed);
  }
  return Avalanche(acc);
}

inline uint64_t Hash129to240(const uint8_t* in, size_t len, uint64_t seed) {
  uint64_t acc = static_cast<uint64_t>(len) * kPrime64_1;
  for (size_t i = 0; i < 8; ++i) acc += Mix16(in + 16 * i, kSecret + 16 * i, seed);
  acc = Avalanche(acc);
  const size_t chunks = len >> 4;
  for (size_t i = 8; i < chunks; ++i) acc += Mix16(in + 16 * i, kSecret + 16 * (i - 8) + 3, seed);
  acc += Mix16(in + len - 16, kSecret + 119, seed);  // 119 = 136 (minimum secret size) - 17
  return Avalanche(acc);
}

// ---- more than 240 bytes ----

/** The secret of a seeded long hash: the default one read as 24 little-endian words, +seed / -seed alternately. */
inline void DeriveSecret(uint64_t seed, uint8_t* out) {
  for (size_t i = 0; i < kSecretBytes; i += 16) {
    Write64(out + i, Read64(kSecret + i) + seed);
    Write64(out + i + 8, Read64(kSecret + i + 8) - seed);
  }
}

inline void InitAccs(uint64_t* acc) {
  acc[0] = kPrime32_3;
  acc[1] = kPrime64_1;
  acc[2] = kPrime64_2;
  acc[3] = kPrime64_3;
  acc[4] = kPrime64_4;
  acc[5] = kPrime32_2;
  acc[6] = kPrime64_5;
  acc[7] = kPrime32_1;
}

/** Final merge of the eight accumulators, shared by both long paths. */
inline uint64_t MergeAccs(const uint64_t* acc, const uint8_t* secret, size_t len) {
  uint64_t h = static_cast<uint64_t>(len) * kPrime64_1;
  const uint8_t* const s = secret + kMergeOffset;
  for (size_t i = 0; i < 4; ++i) {
    h += MulFold(acc[2 * i] ^ Read64(s + 16 * i), acc[2 * i + 1] ^ Read64(s + 16 * i + 8));
  }
  return Avalanche(h);
}

/**
 * Where the long loops stop prefetching: one past the input's last byte, or 0 (never prefetch) for inputs under
 * kPrefetchMinBytes. A run-time bound rather than a template flag: without the branch, GCC 12 unrolls the AVX2
 * block loop completely and spills the hoisted keys to the stack.
 */
inline uintptr_t PrefetchEnd(const uint8_t* in, size_t len) {
  return len >= kPrefetchMinBytes ? reinterpret_cast<uintptr_t>(in) + len : 0;
}

/**
 * Prefetches the line kPrefetchBytes after `p` if it is before `end`. always_inline: GCC 12 finds this function
 * "const" and, called without inlining from the AVX2 code, deletes the call.
 */
__attribute__((always_inline)) inline void PrefetchAhead(const uint8_t* p, uintptr_t end) {
  const uintptr_t ahead = reinterpret_cast<uintptr_t>(p) + kPrefetchBytes;
  if (ahead < end) __builtin_prefetch(reinterpret_cast<const void*>(ahead));
}

/** One stripe (64 bytes of input) against 64 bytes of secret at `s`, portable. */
inline void AccumulateStripeScalar(uint64_t* acc, const uint8_t* in, const uint8_t* s) {
  for (size_t i = 0; i < 8; ++i) {
    const uint64_t d = Read64(in + 8 * i);
    const uint64_t k = d ^ Read64(s + 8 * i);
    acc[i ^ 1] += d;
    acc[i] += (k & 0xFFFFFFFFULL) * (k >> 32);
  }
}

inline void ScrambleScalar(uint64_t* acc, const uint8_t* s) {
  for (size_t i = 0; i < 8; ++i) {
    uint64_t a = acc[i];
    a ^= a >> 47;
    a ^= Read64(s + 8 * i);
    acc[i] = a * kPrime32_1;
  }
}

/** The accumulators after the whole long-input loop (len > 240), portable. */
inline void AccumulateLongScalar(uint64_t* acc, const uint8_t* in, size_t len, const uint8_t* secret) {
  InitAccs(acc);
  const uintptr_t end = PrefetchEnd(in, len);
  // Full blocks, each followed by a scramble; the last block (full or not) is left for the tail.
  const size_t blocks = (len - 1) / kBlockBytes;
  for (size_t b = 0; b < blocks; ++b) {
    const uint8_t* const block = in + b * kBlockBytes;
    for (size_t n = 0; n < kStripesPerBlock; ++n) {
      PrefetchAhead(block + n * kStripeBytes, end);
      AccumulateStripeScalar(acc, block + n * kStripeBytes, secret + n * 8);
    }
    ScrambleScalar(acc, secret + kScrambleOffset);
  }
  // The last block's stripes except its last one (full or not), then the input's last 64 bytes.
  const uint8_t* const tail = in + blocks * kBlockBytes;
  const size_t stripes = (len - 1 - blocks * kBlockBytes) / kStripeBytes;
  for (size_t n = 0; n < stripes; ++n) {
    PrefetchAhead(tail + n * kStripeBytes, end);
    AccumulateStripeScalar(acc, tail + n * kStripeBytes, secret + n * 8);
  }
  AccumulateStripeScalar(acc, in + len - kStripeBytes, secret + kLastStripeOffset);
}

#if defined(__x86_64__)

#define KEMARI_XXH3_AVX2 __attribute__((target("avx2")))
#define KEMARI_XXH3_AVX2_INLINE __attribute__((target("avx2"), always_inline))

/**
 * Half a stripe: four lanes (32 bytes of input, 32 of secret) into four accumulators. The input lane i is added to
 * accumulator i^1 (the shuffle swaps the two 64-bit lanes of each 128-bit half), and the 32x32->64 product of the
 * keyed lane's halves to accumulator i.
 */
inline KEMARI_XXH3_AVX2_INLINE __m256i AccumulateHalfAvx2(__m256i acc, const uint8_t* in, __m256i key) {
  const __m256i d = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in));
  const __m256i k = _mm256_xor_si256(d, key);
  const __m256i product = _mm256_mul_epu32(k, _mm256_srli_epi64(k, 32));
  const __m256i swapped = _mm256_shuffle_epi32(d, _MM_SHUFFLE(1, 0, 3, 2));
  return _mm256_add_epi64(_mm256_add_epi64(acc, swapped), product);
}

/** Scramble of four accumulators: xorshift 47, xor the secret, then a 64x32-bit multiply by PRIME32_1. */
inline KEMARI_XXH3_AVX2_INLINE __m256i ScrambleHalfAvx2(__m256i acc, __m256i key) {
  const __m256i prime = _mm256_set1_epi64x(static_cast<long long>(kPrime32_1));
  __m256i a = _mm256_xor_si256(acc, _mm256_srli_epi64(acc, 47));
  a = _mm256_xor_si256(a, key);
  const __m256i lo = _mm256_mul_epu32(a, prime);
  const __m256i hi = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), prime);
  return _mm256_add_epi64(lo, _mm256_slli_epi64(hi, 32));
}

inline KEMARI_XXH3_AVX2_INLINE __m256i LoadAvx2(const uint8_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

/** Stripe `n` of the block at `in`, its key computed from the default secret and the seed vector. */
inline KEMARI_XXH3_AVX2_INLINE void AccumulateStripeAvx2(__m256i& a0, __m256i& a1, const uint8_t* in, size_t n,
                                                         __m256i seed_vec, uintptr_t end) {
  const uint8_t* const stripe = in + n * kStripeBytes;
  PrefetchAhead(stripe, end);
  a0 = AccumulateHalfAvx2(a0, stripe, _mm256_add_epi64(LoadAvx2(kSecret + n * 8), seed_vec));
  a1 = AccumulateHalfAvx2(a1, stripe + 32, _mm256_add_epi64(LoadAvx2(kSecret + n * 8 + 32), seed_vec));
}

/**
 * AccumulateLongScalar with the accumulators in two AVX2 registers. The keys of the stripes and the scramble sit at
 * multiples of 8 bytes in the secret, so they are computed in registers from the default secret and the seed (+seed
 * on even words, -seed on odd ones), not loaded from the derived copy just written by DeriveSecret: a 32-byte load
 * over several fresh 8-byte stores cannot be forwarded and would stall. Only the last stripe (offset 121) reads the
 * derived `secret`, long after it was written.
 */
inline KEMARI_XXH3_AVX2 void AccumulateLongAvx2(uint64_t* acc_out, const uint8_t* in, size_t len,
                                                const uint8_t* secret, uint64_t seed) {
  const long long plus = static_cast<long long>(seed), minus = static_cast<long long>(0 - seed);
  const __m256i seed_even = _mm256_set_epi64x(minus, plus, minus, plus);  // for keys starting at an even word
  const __m256i seed_odd = _mm256_set_epi64x(plus, minus, plus, minus);
  __m256i a0 = _mm256_set_epi64x(static_cast<long long>(kPrime64_3), static_cast<long long>(kPrime64_2),
                                 static_cast<long long>(kPrime64_1), static_cast<long long>(kPrime32_3));
  __m256i a1 = _mm256_set_epi64x(static_cast<long long>(kPrime32_1), static_cast<long long>(kPrime64_5),
                                 static_cast<long long>(kPrime32_2), static_cast<long long>(kPrime64_4));
  const uintptr_t end = PrefetchEnd(in, len);
  const __m256i scramble0 = _mm256_add_epi64(LoadAvx2(kSecret + kScrambleOffset), seed_even);
  const __m256i scramble1 = _mm256_add_epi64(LoadAvx2(kSecret + kScrambleOffset + 32), seed_even);
  const size_t blocks = (len - 1) / kBlockBytes;
  // Stripes go in pairs, even then odd, so that each one's seed vector is known without a branch.
  for (size_t b = 0; b < blocks; ++b) {
    const uint8_t* const block = in + b * kBlockBytes;
    for (size_t n = 0; n < kStripesPerBlock; n += 2) {
      AccumulateStripeAvx2(a0, a1, block, n, seed_even, end);
      AccumulateStripeAvx2(a0, a1, block, n + 1, seed_odd, end);
    }
    a0 = ScrambleHalfAvx2(a0, scramble0);
    a1 = ScrambleHalfAvx2(a1, scramble1);
  }
  const uint8_t* const tail = in + blocks * kBlockBytes;
  const size_t stripes = (len - 1 - blocks * kBlockBytes) / kStripeBytes;
  size_t n = 0;
  for (; n + 1 < stripes; n += 2) {
    AccumulateStripeAvx2(a0, a1, tail, n, seed_even, end);
    AccumulateStripeAvx2(a0, a1, tail, n + 1, seed_odd, end);
  }
  if (n < stripes) AccumulateStripeAvx2(a0, a1, tail, n, seed_even, end);
  const uint8_t* const last = in + len - kStripeBytes;
  a0 = AccumulateHalfAvx2(a0, last, LoadAvx2(secret + kLastStripeOffset));
  a1 = AccumulateHalfAvx2(a1, last + 32, LoadAvx2(secret + kLastStripeOffset + 32));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc_out), a0);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc_out + 4), a1);
}

#undef KEMARI_XXH3_AVX2_INLINE
#undef KEMARI_XXH3_AVX2

#endif  // __x86_64__

/** Whether the long path uses AVX2 (decided once per process). */
inline bool HasAvx2() {
#if defined(__x86_64__)
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
#else
  return false;
#endif
}

inline uint64_t HashLong(const uint8_t* in, size_t len, uint64_t seed, bool allow_simd) {
  alignas(64) uint8_t derived[kSecretBytes];
  const uint8_t* secret = kSecret;
  if (seed != 0) {  // with seed 0 the derived secret would equal the default one
    DeriveSecret(seed, derived);
    secret = derived;
  }
  alignas(64) uint64_t acc[8];
#if defined(__x86_64__)
  if (allow_simd && HasAvx2()) {
    AccumulateLongAvx2(acc, in, len, secret, seed);
    return MergeAccs(acc, secret, len);
  }
#else
  (void)allow_simd;
#endif
  AccumulateLongScalar(acc, in, len, secret);
  return MergeAccs(acc, secret, len);
}

inline uint64_t Hash(const uint8_t* in, size_t len, uint64_t seed, bool allow_simd) {
  if (len <= 16) return Hash0to16(in, len, seed);
  if (len <= 128) return Hash17to128(in, len, seed);
  if (len <= 240) return Hash129to240(in, len, seed);
  return HashLong(in, len, seed, allow_simd);
}

}  // namespace xxh3_detail

/** XXH3-64 of `bytes` bytes at `data` with `seed`: XXH3_64bits_withSeed(data, bytes, seed). */
inline uint64_t Xxh3(const uint8_t* data, size_t bytes, uint64_t seed) {
  return xxh3_detail::Hash(data, bytes, seed, true);
}

/** Same result as Xxh3, always through the portable scalar long-input loop (for tests and comparisons). */
inline uint64_t Xxh3Scalar(const uint8_t* data, size_t bytes, uint64_t seed) {
  return xxh3_detail::Hash(data, bytes, seed, false);
}

/** True when Xxh3 hashes inputs over 240 bytes with AVX2 on this CPU. */
inline bool Xxh3UsesAvx2() { return xxh3_detail::HasAvx2(); }

}  // namespace kemari

#endif  // KEMARI_XXH3_H
