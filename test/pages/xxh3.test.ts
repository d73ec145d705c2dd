import { readFileSync } from 'node:fs';
import { fc, test } from '@fast-check/vitest';
import { describe, expect, it } from 'vitest';
import { xxh3Into, xxh3Js } from '../../src/pages/xxh3.js';

/**
 * Reference values from libxxhash (XXH3_64bits_withSeed through python3-xxhash), written by scripts/xxh3-vectors.py.
 * A vector [offset, length, seed, hash] is the hash of bytes [offset, offset + length) of a buffer holding the
 * generator's bytes 0 .. offset + length - 1; seed and hash are 16 hex digits.
 */
interface Fixture {
  generator: string;
  vectors: Array<[number, number, string, string]>;
}
const fixture = JSON.parse(readFileSync(new URL('../fixtures/xxh3-vectors.json', import.meta.url), 'utf8')) as Fixture;

/** The script's input bytes: byte i is the top byte of the 32-bit product i * 2654435761. */
function generated(count: number): Uint8Array {
  const bytes = new Uint8Array(count);
  for (let i = 0; i < count; i++) bytes[i] = Math.imul(i, 2654435761) >>> 24;
  return bytes;
}

const SOURCE = generated(Math.max(...fixture.vectors.map(([offset, length]) => offset + length)));
const U64 = (1n << 64n) - 1n;
const SEEDS = [0n, 1n, 0x9e3779b185ebca87n, U64, 0x9abcdef000000001n];
const LONG_LENGTHS = [511, 512, 513, 1023, 1024, 1025, 2048, 4095, 4096, 4097, 8192, 16384, 65536];

/** The hash of the fixture for (offset, length, seed), as a bigint. */
function expected(offset: number, length: number, seed: bigint): bigint {
  const seedHex = seed.toString(16).padStart(16, '0');
  const vector = fixture.vectors.find(([o, n, s]) => o === offset && n === length && s === seedHex);
  if (vector === undefined) throw new Error(`no vector for offset ${offset}, length ${length}, seed ${seedHex}`);
  return BigInt(`0x${vector[3]}`);
}

const out = new Int32Array(2);

/** xxh3Into of data[offset, offset + length) with a bigint seed, as a bigint. */
function into(data: Uint8Array, offset: number, length: number, seed: bigint): bigint {
  out.fill(0x5a5a5a5a); // a stale result must not pass for a new one
  xxh3Into(data, offset, length, Number(BigInt.asIntN(32, seed >> 32n)), Number(BigInt.asIntN(32, seed)), out);
  return (BigInt(out[1]! >>> 0) << 32n) | BigInt(out[0]! >>> 0);
}

/** Bytes from a 32-bit xorshift seeded with `seed` (the property tests' inputs). */
function xorshiftBytes(count: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(count);
  let x = seed | 1;
  for (let i = 0; i < count; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    bytes[i] = x >>> 24;
  }
  return bytes;
}

describe('XXH3-64 reference vectors', () => {
  it('the fixture covers every length to 300, the long lengths, five seeds and odd offsets', () => {
    expect(fixture.generator).toBe('byte i = Math.imul(i, 2654435761) >>> 24');
    const keys = new Set(fixture.vectors.map(([o, n, s]) => `${o}/${n}/${s}`));
    for (const seed of SEEDS) {
      const seedHex = seed.toString(16).padStart(16, '0');
      for (let n = 0; n <= 300; n++) expect(keys.has(`0/${n}/${seedHex}`), `length ${n} seed ${seedHex}`).toBe(true);
      for (const n of LONG_LENGTHS) expect(keys.has(`0/${n}/${seedHex}`), `length ${n} seed ${seedHex}`).toBe(true);
    }
    for (const offset of [1, 3]) {
      const lengths = fixture.vectors.filter(([o]) => o === offset).map(([, n]) => n);
      expect(Math.min(...lengths)).toBe(0);
      expect(Math.max(...lengths)).toBeGreaterThan(4096);
    }
    // The published XXH3_64bits of the empty input, and the generator's first bytes.
    expect(expected(0, 0, 0n)).toBe(0x2d06800538d394c2n);
    expect([...SOURCE.subarray(0, 6)]).toEqual([0, 158, 60, 218, 120, 23]);
  });

  const groups = new Map<string, Fixture['vectors']>();
  for (const vector of fixture.vectors) {
    const key = `offset ${vector[0]}, seed 0x${vector[2]}`;
    groups.set(key, [...(groups.get(key) ?? []), vector]);
  }

  it.each([...groups.keys()])('xxh3Js and xxh3Into match libxxhash: %s', (key) => {
    const mismatches: string[] = [];
    for (const [offset, length, seedHex, hashHex] of groups.get(key)!) {
      const seed = BigInt(`0x${seedHex}`);
      const want = BigInt(`0x${hashHex}`);
      // A fresh buffer each time: offset 0 is 4-byte aligned in it, offsets 1 and 3 are not.
      const buffer = SOURCE.slice(0, offset + length);
      const js = xxh3Js(buffer.subarray(offset), seed);
      const hot = into(buffer, offset, length, seed);
      if (js !== want || hot !== want) {
        mismatches.push(`length ${length}: want ${hashHex}, xxh3Js ${js.toString(16)}, xxh3Into ${hot.toString(16)}`);
      }
    }
    expect(mismatches).toEqual([]);
  });
});

describe('XXH3-64 alignment', () => {
  const lengths = fc.oneof(
    fc.integer({ min: 0, max: 300 }),
    fc.integer({ min: 241, max: 5000 }),
    fc.constantFrom(1024, 1025, 2048, 4096, 8192),
  );

  test.prop([lengths, fc.integer(), fc.bigInt({ min: 0n, max: U64 }), fc.nat(7), fc.nat(7)], { numRuns: 300 })(
    'xxh3Into gives the same hash wherever the bytes sit in a buffer',
    (length, contentSeed, seed, viewStart, offset) => {
      const data = xorshiftBytes(length, contentSeed);
      const reference = into(data, 0, length, seed); // offset 0 of a fresh buffer: aligned
      expect(xxh3Js(data, seed)).toBe(reference);
      // The same bytes at byte viewStart + offset of a larger buffer, with other bytes on both sides.
      const buffer = xorshiftBytes(viewStart + offset + length + 11, ~contentSeed);
      buffer.set(data, viewStart + offset);
      const view = buffer.subarray(viewStart, viewStart + offset + length + 5);
      expect(into(view, offset, length, seed)).toBe(reference);
      expect(xxh3Js(buffer.subarray(viewStart + offset, viewStart + offset + length), seed)).toBe(reference);
    },
  );

  it('hashes pages of a resizable buffer after it grew, and of a shared buffer', () => {
    type Resizable = ArrayBuffer & { resize(bytes: number): void };
    const ResizableBuffer = ArrayBuffer as unknown as new (bytes: number, options: { maxByteLength: number }) => Resizable;
    const resizable = new ResizableBuffer(8192, { maxByteLength: 65536 });
    const bytes = new Uint8Array(resizable); // length-tracking
    bytes.set(SOURCE.subarray(0, 4096));
    expect(into(bytes, 0, 4096, 1n)).toBe(expected(0, 4096, 1n));
    resizable.resize(65536);
    bytes.set(SOURCE.subarray(0, 4097), 60000);
    expect(into(bytes, 60000, 4097, 1n)).toBe(xxh3Js(SOURCE.slice(0, 4097), 1n));
    expect(into(bytes, 60000, 4097, 1n)).toBe(expected(0, 4097, 1n));

    const shared = new Uint8Array(new SharedArrayBuffer(8192));
    shared.set(SOURCE.subarray(0, 4097), 3);
    expect(into(shared, 3, 4097, U64)).toBe(expected(0, 4097, U64));
  });
});

describe('XXH3-64 seeds', () => {
  it('a seed change, of either word, replaces the cached secret', () => {
    // 1 -> 0x9abcdef000000001 changes only the high word; 0 -> 1 only the low word.
    const order = [0n, 1n, 0x9abcdef000000001n, 1n, 0n, U64, 0x9e3779b185ebca87n, U64, 0x9abcdef000000001n, 0n];
    for (const length of [241, 4096, 4097]) {
      for (const seed of order) {
        expect(into(SOURCE, 0, length, seed), `length ${length} seed ${seed.toString(16)}`).toBe(expected(0, length, seed));
        expect(xxh3Js(SOURCE.subarray(0, length), seed), `length ${length} seed ${seed.toString(16)}`).toBe(
          expected(0, length, seed),
        );
      }
    }
  });

  test.prop([fc.array(fc.tuple(fc.constantFrom(0, 100, 241, 512, 1025, 4096), fc.constantFrom(...SEEDS)), { minLength: 2, maxLength: 12 })], {
    numRuns: 100,
  })('results do not depend on the previous calls', (calls) => {
    for (const [length, seed] of calls) expect(into(SOURCE, 0, length, seed)).toBe(expected(0, length, seed));
  });

  it('xxh3Js takes the seed mod 2^64', () => {
    const data = SOURCE.subarray(0, 1024);
    expect(xxh3Js(data, -1n)).toBe(expected(0, 1024, U64));
    expect(xxh3Js(data, (1n << 64n) + 1n)).toBe(expected(0, 1024, 1n));
  });
});

describe('xxh3Into arguments', () => {
  it('refuses a range outside the data, or not of whole bytes', () => {
    const data = SOURCE.subarray(0, 300);
    expect(() => xxh3Into(data, -1, 10, 0, 0, out)).toThrow(RangeError);
    expect(() => xxh3Into(data, 0, -1, 0, 0, out)).toThrow(RangeError);
    expect(() => xxh3Into(data, 290, 11, 0, 0, out)).toThrow(RangeError);
    expect(() => xxh3Into(data, 1, 300, 0, 0, out)).toThrow(RangeError);
    expect(() => xxh3Into(data, 0.5, 10, 0, 0, out)).toThrow(RangeError);
    expect(() => xxh3Into(data, 0, 250.5, 0, 0, out)).toThrow(RangeError);
    expect(() => xxh3Into(data, 0, Number.NaN, 0, 0, out)).toThrow(RangeError);
    // The last byte exactly, and the empty range at the end, are inside.
    expect(into(data, 290, 10, 0n)).toBe(xxh3Js(data.subarray(290), 0n));
    expect(into(data, 300, 0, 0n)).toBe(expected(0, 0, 0n));
  });
});
