/**
 * A small seeded pseudo-random generator for the simulated guest: sfc32 (Chris Doty-Humphrey's Small Fast Counting
 * generator, 128 bits of state) seeded from one 32-bit seed through splitmix32.
 *
 * It exists because tests and demos must be reproducible: the same seed gives the same sequence on every run, Node
 * version and platform (only 32-bit integer arithmetic, no `Math.random`, no floating-point state), so a failing
 * property test or a workload that diverged can be replayed from its seed alone. It is not cryptographic.
 */
import { checkInteger, invalid } from '../wire/validate.js';

const TWO_POW_32 = 0x1_0000_0000;

/** One splitmix32 step: scrambles a 32-bit counter into a well-mixed 32-bit value. */
function splitmix32(x: number): number {
  let z = (x + 0x9e3779b9) >>> 0;
  z = Math.imul(z ^ (z >>> 16), 0x21f0aaad);
  z = Math.imul(z ^ (z >>> 15), 0x735a2d97);
  return (z ^ (z >>> 15)) >>> 0;
}

/** Deterministic sfc32 generator; the whole state is derived from the constructor's seed. */
export class Prng {
  /** The seed this generator was created with. */
  readonly seed: number;
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  /** `seed` is an integer in [0, 2^32 - 1]; otherwise KEMARI_INVALID_ARGUMENT. */
  constructor(seed: number) {
    this.seed = checkInteger('prng.seed', seed, 0, 0xffff_ffff);
    let s = seed;
    s = (s + 0x9e3779b9) >>> 0;
    this.a = splitmix32(s);
    s = (s + 0x9e3779b9) >>> 0;
    this.b = splitmix32(s);
    s = (s + 0x9e3779b9) >>> 0;
    this.c = splitmix32(s);
    this.d = 1; // sfc32's counter
    // Discard the first outputs so nearby seeds do not start with correlated values.
    for (let i = 0; i < 12; i++) this.nextU32();
  }

  /** The next value, an integer in [0, 2^32 - 1]. */
  nextU32(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return t >>> 0;
  }

  /**
   * An unbiased integer in [0, maxExclusive); `maxExclusive` is an integer in [1, 2^32] (else
   * KEMARI_INVALID_ARGUMENT). Rejection sampling, so every value is equally likely.
   */
  nextInt(maxExclusive: number): number {
    if (typeof maxExclusive !== 'number' || !Number.isInteger(maxExclusive) || maxExclusive < 1 || maxExclusive > TWO_POW_32) {
      invalid('prng.maxExclusive', `must be an integer in [1, ${TWO_POW_32}]`, maxExclusive);
    }
    const limit = TWO_POW_32 - (TWO_POW_32 % maxExclusive);
    for (;;) {
      const x = this.nextU32();
      if (x < limit) return x % maxExclusive;
    }
  }

  /** A number in [0, 1) with 32 random bits. */
  nextFloat(): number {
    return this.nextU32() / TWO_POW_32;
  }

  /** Fills `bytes` with the next values, four bytes per value in little-endian order (the tail uses the low bytes). */
  fill(bytes: Uint8Array): Uint8Array {
    const n = bytes.byteLength;
    let i = 0;
    for (; i + 4 <= n; i += 4) {
      const x = this.nextU32();
      bytes[i] = x & 0xff;
      bytes[i + 1] = (x >>> 8) & 0xff;
      bytes[i + 2] = (x >>> 16) & 0xff;
      bytes[i + 3] = x >>> 24;
    }
    if (i < n) {
      let x = this.nextU32();
      for (; i < n; i++, x >>>= 8) bytes[i] = x & 0xff;
    }
    return bytes;
  }
}
