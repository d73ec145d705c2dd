// Little-endian loads of 32 and 64 bits from any address (unaligned is fine: memcpy compiles to a plain move on
// x86-64 and arm64), for the cores that read page bytes as words.
#ifndef KEMARI_LOAD_LE_H
#define KEMARI_LOAD_LE_H

#include <cstdint>
#include <cstring>

namespace kemari {

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

}  // namespace kemari

#endif  // KEMARI_LOAD_LE_H
