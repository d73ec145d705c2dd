import { fc, test } from '@fast-check/vitest';
import { describe, expect, it } from 'vitest';
import { FINGERPRINT_BYTES, pageFingerprint } from '../../src/pages/index.js';
import { NATIVE_LABEL, backends, jsBackend, native } from './backends.js';

// XXH3_64bits_withSeed reference values (libxxhash 0.8.1; the empty input's is the one xxHash documents).
const VECTORS: Array<[string, bigint, bigint]> = [
  ['', 0n, 0x2d06800538d394c2n],
  ['', 1n, 0x4dc5b0cc826f6703n],
  ['a', 0n, 0xe6c632b61e964e1fn],
  ['abc', 0n, 0x78af5f94892f3950n],
  ['Nobody inspects the spammish repetition', 0n, 0x6cb00603b5cc47e9n],
];

describe('XXH3 page fingerprints', () => {
  for (const [name, backend] of backends) {
    it.each(VECTORS)(`${name}: matches the reference value for %j, seed %s`, (text, seed, expected) => {
      expect(backend.xxh3(Buffer.from(text), seed)).toBe(expected);
    });
  }

  it('pageFingerprint is XXH3-64 of the page, 8 bytes a page; the seed is a uint64', () => {
    expect(FINGERPRINT_BYTES).toBe(8);
    expect(pageFingerprint(Buffer.from('abc'))).toBe(0x78af5f94892f3950n);
    expect(() => pageFingerprint(Buffer.from('abc'), -1n)).toThrow(expect.objectContaining({ code: 'KEMARI_INVALID_ARGUMENT' }));
    expect(() => pageFingerprint(Buffer.from('abc'), 1n << 64n)).toThrow(expect.objectContaining({ code: 'KEMARI_INVALID_ARGUMENT' }));
  });
});

describe.skipIf(native === undefined)(`XXH3: native and TypeScript agree${NATIVE_LABEL}`, () => {
  const U64 = (1n << 64n) - 1n;
  test.prop([fc.uint8Array({ maxLength: 5000 }), fc.bigInt({ min: 0n, max: U64 }), fc.nat(3)], { numRuns: 400 })(
    'on random lengths (every path: short, mid, long), seeds and alignments',
    (data, seed, shift) => {
      const copy = new Uint8Array(data.length + shift);
      copy.set(data, shift);
      const view = copy.subarray(shift);
      expect(jsBackend.xxh3(view, seed)).toBe(native!.xxh3(view, seed));
    },
  );

  // Words at their extremes drive every product and sum of the accumulate loop to its largest: the TypeScript
  // long path keeps sums in doubles and must stay exact there.
  it.each([0x00, 0xff, 0x80, 0x7f, 0x55, 0xaa])('on pages whose every byte is %i, at the largest and smallest seeds', (byte) => {
    for (const bytes of [241, 1024, 4096, 65536]) {
      const page = new Uint8Array(bytes).fill(byte);
      for (const seed of [0n, 1n, U64, 0xffffffffn, 0xffffffff00000000n]) expect(jsBackend.xxh3(page, seed)).toBe(native!.xxh3(page, seed));
    }
  });

  test.prop([fc.integer({ min: 1, max: 6 }), fc.bigInt({ min: 0n, max: U64 }), fc.uint8Array({ minLength: 8, maxLength: 8 })], { numRuns: 100 })(
    'on pages of one repeated 8-byte word (every lane of every stripe the same), 512 B to 32 KiB',
    (log2Pages, seed, word) => {
      const page = new Uint8Array(512 << (log2Pages - 1));
      for (let i = 0; i < page.length; i += 8) page.set(word, i);
      expect(jsBackend.xxh3(page, seed)).toBe(native!.xxh3(page, seed));
    },
  );
});
