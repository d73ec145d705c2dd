import { fc, test } from '@fast-check/vitest';
import { describe, expect, it } from 'vitest';
import { FINGERPRINT_BYTES, pageFingerprint } from '../../src/pages/index.js';
import { NATIVE_LABEL, backends, jsBackend, native } from './backends.js';

// Reference values of XXH64 (xxhash.h, and python-xxhash's documentation for the sentence).
const VECTORS: Array<[string, bigint, bigint]> = [
  ['', 0n, 0xef46db3751d8e999n],
  ['a', 0n, 0xd24ec4f1a98c6e5bn],
  ['abc', 0n, 0x44bc2cf5ad770999n],
  ['Nobody inspects the spammish repetition', 0n, 0xfbcea83c8a378bf1n],
];

describe('XXH64 fingerprints', () => {
  for (const [name, backend] of backends) {
    it.each(VECTORS)(`${name}: matches the reference value for %j`, (text, seed, expected) => {
      expect(backend.xxh64(Buffer.from(text), seed)).toBe(expected);
    });
  }

  it('pageFingerprint is XXH64 of the page, 8 bytes a page', () => {
    expect(FINGERPRINT_BYTES).toBe(8);
    expect(pageFingerprint(Buffer.from('abc'))).toBe(0x44bc2cf5ad770999n);
    expect(() => pageFingerprint(Buffer.from('abc'), -1n)).toThrow(expect.objectContaining({ code: 'KEMARI_INVALID_ARGUMENT' }));
    expect(() => pageFingerprint(Buffer.from('abc'), 1n << 64n)).toThrow(expect.objectContaining({ code: 'KEMARI_INVALID_ARGUMENT' }));
  });

  it('the TypeScript XXH64 reads unaligned data like aligned data', () => {
    const data = Uint8Array.from({ length: 300 }, (_, i) => (i * 37) & 0xff);
    for (let shift = 1; shift < 4; shift++) {
      const copy = new Uint8Array(data.length + shift);
      copy.set(data, shift);
      expect(jsBackend.xxh64(copy.subarray(shift), 7n)).toBe(jsBackend.xxh64(data, 7n));
    }
  });
});

describe.skipIf(native === undefined)(`XXH64: native and TypeScript agree${NATIVE_LABEL}`, () => {
  test.prop(
    [fc.uint8Array({ maxLength: 600 }), fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), fc.nat(3)],
    { numRuns: 500 },
  )('on random lengths, seeds and alignments', (data, seed, shift) => {
    const copy = new Uint8Array(data.length + shift);
    copy.set(data, shift);
    const view = copy.subarray(shift);
    expect(jsBackend.xxh64(view, seed)).toBe(native!.xxh64(view, seed));
  });
});
