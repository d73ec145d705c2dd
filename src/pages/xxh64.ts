/**
 * XXH64 in TypeScript, bit for bit the one of native/xxh64.h: the page fingerprint of the fallback scan.
 *
 * Why XXH64 (rather than a CRC32C pair, or something home-made): it is a published, specified 64-bit hash with
 * reference test vectors, the addon computes it at memory speed (about 10 GB/s a core), and it can be reproduced
 * exactly in JavaScript. A pair of CRC32C was rejected because CRC is linear: two CRCs of the same bytes carry only
 * 32 bits between them, and a 2^-32 miss rate per changed page would be a silent replica divergence every couple of
 * days at a few thousand changed pages a second. With XXH64 an unnoticed change is a 2^-64 event per page, unless
 * the guest crafts collisions on purpose: use a secret random seed per VM against that, or shadow mode, which
 * compares bytes and cannot miss.
 *
 * JavaScript has no 64-bit multiply, so 64-bit values are (hi, lo) pairs of int32 and products are assembled from
 * Math.imul of 16-bit pieces. Every value stays an int32 (`| 0`), never a double above 2^31: V8 keeps int32 in
 * registers and as small integers, where a uint32 above 2^31 stored in a variable outside the function would be
 * boxed on every store (that alone made this 4x slower). The high word of a product comes back through the module
 * variable `hi`, so the hot loop allocates nothing. About 0.4 GB/s, against about 10 for the addon.
 */

const P1_HI = 0x9e3779b1 | 0;
const P1_LO = 0x85ebca87 | 0;
const P2_HI = 0xc2b2ae3d | 0;
const P2_LO = 0x27d4eb4f | 0;
const P3_HI = 0x165667b1 | 0;
const P3_LO = 0x9e3779f9 | 0;
const P4_HI = 0x85ebca77 | 0;
const P4_LO = 0xc2b2ae63 | 0;
const P5_HI = 0x27d4eb2f | 0;
const P5_LO = 0x165667c5 | 0;

/** True on little-endian hosts, where an Int32Array over the data reads XXH64's little-endian words directly. */
export const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** High word of the last 64-bit result (the low word is the return value). */
let hi = 0;

/** Low word of (ah:al) * (bh:bl) mod 2^64; high word in `hi`. All int32. */
function mul(ah: number, al: number, bh: number, bl: number): number {
  const a0 = al & 0xffff;
  const a1 = al >>> 16;
  const b0 = bl & 0xffff;
  const b1 = bl >>> 16;
  // 16 x 16 bit partial products are below 2^32: Math.imul keeps all their bits (as int32 bit patterns).
  const p01 = Math.imul(a0, b1);
  const p10 = Math.imul(a1, b0);
  const t = (Math.imul(a0, b0) >>> 16) + (p01 & 0xffff) + (p10 & 0xffff);
  const high = (((Math.imul(a1, b1) + (p01 >>> 16)) | 0) + (p10 >>> 16) + (t >>> 16)) | 0;
  hi = (high + ((Math.imul(ah, bl) + Math.imul(al, bh)) | 0)) | 0;
  return Math.imul(al, bl);
}

/** (ah:al) + (bh:bl) mod 2^64: low word returned, high word in `hi`. */
function add(ah: number, al: number, bh: number, bl: number): number {
  const lo = (al + bl) | 0;
  hi = (ah + bh + ((lo >>> 0) < (al >>> 0) ? 1 : 0)) | 0;
  return lo;
}

/** XXH64 round: rotl(acc + input * P2, 31) * P1. Low word returned, high word in `hi`. */
function round(accHi: number, accLo: number, inHi: number, inLo: number): number {
  const pl = mul(inHi, inLo, P2_HI, P2_LO);
  const lo = add(hi, pl, accHi, accLo);
  const h = hi;
  return mul((h << 31) | (lo >>> 1), (lo << 31) | (h >>> 1), P1_HI, P1_LO);
}

/** mergeRound(acc, val): (acc ^ round(0, val)) * P1 + P4. Low word returned, high word in `hi`. */
function mergeRound(accHi: number, accLo: number, valHi: number, valLo: number): number {
  const kLo = round(0, 0, valHi, valLo);
  const lo = mul(accHi ^ hi, accLo ^ kLo, P1_HI, P1_LO);
  return add(hi, lo, P4_HI, P4_LO);
}

/**
 * XXH64 of `length` bytes: `words[wordStart + k]` is the little-endian int32 at `bytes[byteStart + 4k]` (a view
 * of the same memory on little-endian hosts, a converted copy otherwise); single tail bytes are read from `bytes`.
 * Writes the hash's low word to `result[0]` and high word to `result[1]`. The allocation-free core of the scan.
 */
export function xxh64Words(
  words: Int32Array,
  wordStart: number,
  bytes: Uint8Array,
  byteStart: number,
  length: number,
  seedHi: number,
  seedLo: number,
  result: Int32Array,
): void {
  let w = wordStart;
  let remaining = length;
  let hHi: number;
  let hLo: number;
  if (length >= 32) {
    let v1Lo = add(seedHi, seedLo, P1_HI, P1_LO);
    v1Lo = add(hi, v1Lo, P2_HI, P2_LO);
    let v1Hi = hi;
    let v2Lo = add(seedHi, seedLo, P2_HI, P2_LO);
    let v2Hi = hi;
    let v3Lo = seedLo | 0;
    let v3Hi = seedHi | 0;
    let v4Lo = add(seedHi, seedLo, ~P1_HI, ~P1_LO); // seed - P1 = seed + ~P1 + 1
    v4Lo = add(hi, v4Lo, 0, 1);
    let v4Hi = hi;
    do {
      v1Lo = round(v1Hi, v1Lo, words[w + 1]!, words[w]!);
      v1Hi = hi;
      v2Lo = round(v2Hi, v2Lo, words[w + 3]!, words[w + 2]!);
      v2Hi = hi;
      v3Lo = round(v3Hi, v3Lo, words[w + 5]!, words[w + 4]!);
      v3Hi = hi;
      v4Lo = round(v4Hi, v4Lo, words[w + 7]!, words[w + 6]!);
      v4Hi = hi;
      w += 8;
      remaining -= 32;
    } while (remaining >= 32);
    // h = rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18)
    hLo = add((v1Hi << 1) | (v1Lo >>> 31), (v1Lo << 1) | (v1Hi >>> 31), (v2Hi << 7) | (v2Lo >>> 25), (v2Lo << 7) | (v2Hi >>> 25));
    hLo = add(hi, hLo, (v3Hi << 12) | (v3Lo >>> 20), (v3Lo << 12) | (v3Hi >>> 20));
    hLo = add(hi, hLo, (v4Hi << 18) | (v4Lo >>> 14), (v4Lo << 18) | (v4Hi >>> 14));
    hHi = hi;
    hLo = mergeRound(hHi, hLo, v1Hi, v1Lo);
    hHi = hi;
    hLo = mergeRound(hHi, hLo, v2Hi, v2Lo);
    hHi = hi;
    hLo = mergeRound(hHi, hLo, v3Hi, v3Lo);
    hHi = hi;
    hLo = mergeRound(hHi, hLo, v4Hi, v4Lo);
    hHi = hi;
  } else {
    hLo = add(seedHi, seedLo, P5_HI, P5_LO);
    hHi = hi;
  }
  // h += length (below 2^53, so its high word is exact)
  hLo = add(hHi, hLo, Math.floor(length / 4294967296) | 0, length | 0);
  hHi = hi;
  while (remaining >= 8) {
    const kLo = round(0, 0, words[w + 1]!, words[w]!);
    const xLo = hLo ^ kLo;
    const xHi = hHi ^ hi;
    // h = rotl(h, 27) * P1 + P4
    hLo = mul((xHi << 27) | (xLo >>> 5), (xLo << 27) | (xHi >>> 5), P1_HI, P1_LO);
    hLo = add(hi, hLo, P4_HI, P4_LO);
    hHi = hi;
    w += 2;
    remaining -= 8;
  }
  if (remaining >= 4) {
    // h ^= u32 * P1; h = rotl(h, 23) * P2 + P3
    const kLo = mul(0, words[w]!, P1_HI, P1_LO);
    const xLo = hLo ^ kLo;
    const xHi = hHi ^ hi;
    hLo = mul((xHi << 23) | (xLo >>> 9), (xLo << 23) | (xHi >>> 9), P2_HI, P2_LO);
    hLo = add(hi, hLo, P3_HI, P3_LO);
    hHi = hi;
    w += 1;
    remaining -= 4;
  }
  let p = byteStart + length - remaining;
  while (remaining > 0) {
    // h ^= byte * P5; h = rotl(h, 11) * P1
    const kLo = mul(0, bytes[p]!, P5_HI, P5_LO);
    const xLo = hLo ^ kLo;
    const xHi = hHi ^ hi;
    hLo = mul((xHi << 11) | (xLo >>> 21), (xLo << 11) | (xHi >>> 21), P1_HI, P1_LO);
    hHi = hi;
    p += 1;
    remaining -= 1;
  }
  // avalanche: h ^= h >> 33; h *= P2; h ^= h >> 29; h *= P3; h ^= h >> 32
  hLo ^= hHi >>> 1;
  hLo = mul(hHi, hLo, P2_HI, P2_LO);
  hHi = hi;
  hLo ^= (hLo >>> 29) | (hHi << 3);
  hHi ^= hHi >>> 29;
  hLo = mul(hHi, hLo, P3_HI, P3_LO);
  hHi = hi;
  result[0] = hLo ^ hHi;
  result[1] = hHi;
}

let scratch = new Int32Array(1024);

/**
 * Little-endian int32 words of `data[offset, offset + length)` for {@link xxh64Words}: a view when the bytes are
 * 4-byte aligned on a little-endian host, otherwise a converted copy in a reused scratch buffer (so the result is
 * only valid until the next call). Returns the array; the word index of the first byte is in `wordStartOut[0]`.
 */
export function wordsOf(data: Uint8Array, offset: number, length: number, wordStartOut: Int32Array): Int32Array {
  const absolute = data.byteOffset + offset;
  if (LITTLE_ENDIAN && absolute % 4 === 0) {
    wordStartOut[0] = absolute / 4;
    return new Int32Array(data.buffer, 0, Math.floor((absolute + length) / 4));
  }
  const count = Math.floor(length / 4);
  if (scratch.length < count) scratch = new Int32Array(count);
  const view = new DataView(data.buffer, data.byteOffset + offset, length);
  for (let k = 0; k < count; k++) scratch[k] = view.getInt32(4 * k, true);
  wordStartOut[0] = 0;
  return scratch;
}

const resultScratch = new Int32Array(2);
const wordStartScratch = new Int32Array(1);

/** XXH64 of `data` with a 64-bit `seed`, as a bigint (the convenient, allocating form). */
export function xxh64Js(data: Uint8Array, seed: bigint): bigint {
  const seedLo = Number(BigInt.asIntN(32, seed));
  const seedHi = Number(BigInt.asIntN(32, seed >> 32n));
  const words = wordsOf(data, 0, data.length, wordStartScratch);
  xxh64Words(words, wordStartScratch[0]!, data, 0, data.length, seedHi, seedLo, resultScratch);
  return (BigInt(resultScratch[1]! >>> 0) << 32n) | BigInt(resultScratch[0]! >>> 0);
}
