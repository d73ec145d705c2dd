import { fc, test } from '@fast-check/vitest';
import { describe, expect, it } from 'vitest';
import { DeltaFault, decodeDelta, encodeDelta, validateDelta } from '../../src/pages/index.js';
import type { PagesBackend } from '../../src/pages/backend.js';
import { NATIVE_LABEL, backends, jsBackend, native } from './backends.js';

/** Room for any delta of a page of n bytes (each run: at least 1 xor byte and at least 3 skipped bytes). */
const roomFor = (n: number): number => 3 * n + 16;

const pageChange = fc.oneof(
  fc.record({ kind: fc.constant('byte' as const), at: fc.nat(), value: fc.nat(255) }),
  fc.record({ kind: fc.constant('word' as const), at: fc.nat(), value: fc.uint8Array({ minLength: 8, maxLength: 8 }) }),
  fc.record({ kind: fc.constant('fill' as const), at: fc.nat(), length: fc.nat(300), value: fc.nat(255) }),
);

/** An old page and a new one made from it by random byte, word and run changes (or none). */
const pagePair = fc
  .record({
    // 65536 is the largest page the addon encodes from a bit mask (x86-64), 131072 takes its byte-by-byte encoder.
    pageBytes: fc.oneof(fc.integer({ min: 1, max: 600 }), fc.constantFrom(4096, 8192, 65536, 131072)),
    seed: fc.uint8Array({ minLength: 1, maxLength: 64 }),
    changes: fc.array(pageChange, { maxLength: 40 }),
  })
  .map(({ pageBytes, seed, changes }) => {
    const oldPage = new Uint8Array(pageBytes);
    for (let i = 0; i < pageBytes; i++) oldPage[i] = seed[i % seed.length]! ^ (i * 7);
    const newPage = oldPage.slice();
    for (const c of changes) {
      const at = c.at % pageBytes;
      if (c.kind === 'byte') newPage[at] = c.value;
      else if (c.kind === 'word') newPage.set(c.value.subarray(0, pageBytes - at), at);
      else newPage.fill(c.value, at, at + c.length);
    }
    return { oldPage, newPage };
  });

function encodeAll(backend: PagesBackend, oldPage: Uint8Array, newPage: Uint8Array): Uint8Array {
  const out = new Uint8Array(roomFor(oldPage.length));
  const length = backend.encodeDelta(oldPage, newPage, out, out.length + 1);
  expect(length).toBeGreaterThanOrEqual(0);
  return out.subarray(0, length);
}

describe('XOR delta round trip', () => {
  for (const [name, backend] of backends) {
    test.prop([pagePair], { numRuns: 300 })(`${name}: decode(encode(old, new)) is new, in place and into another page`, ({ oldPage, newPage }) => {
      const delta = encodeAll(backend, oldPage, newPage);
      expect(backend.validateDelta(delta, oldPage.length)).toBe(0);
      const into = new Uint8Array(oldPage.length);
      expect(backend.decodeDelta(oldPage, delta, into)).toBe(0);
      expect(Buffer.compare(into, newPage)).toBe(0);
      const inPlace = oldPage.slice();
      expect(backend.decodeDelta(inPlace, delta, inPlace)).toBe(0);
      expect(Buffer.compare(inPlace, newPage)).toBe(0);
    });

    test.prop([pagePair, fc.nat()], { numRuns: 300 })(`${name}: a budget gives the delta when it is smaller, -1 when not`, ({ oldPage, newPage }, b) => {
      const full = encodeAll(backend, oldPage, newPage);
      const budget = b % (full.length + 3);
      const out = new Uint8Array(roomFor(oldPage.length));
      const length = backend.encodeDelta(oldPage, newPage, out, budget);
      if (full.length < budget) {
        expect(length).toBe(full.length);
        expect(Buffer.compare(out.subarray(0, length), full)).toBe(0);
      } else {
        expect(length).toBe(-1);
      }
    });
  }

  it('the public functions round trip, and refuse deltas not smaller than the page by default', () => {
    const oldPage = new Uint8Array(4096).fill(7);
    const newPage = oldPage.slice();
    newPage.set([1, 2, 3, 4, 5, 6, 7, 8], 1000);
    const out = new Uint8Array(4096);
    const length = encodeDelta(oldPage, newPage, out);
    expect(length).toBe(2 + 1 + 8); // skip 1000 (2 bytes), length 8 (1 byte), 8 xor bytes; the 7 stays 7: still one run
    const page = oldPage.slice();
    decodeDelta(page, out.subarray(0, length));
    expect(Buffer.compare(page, newPage)).toBe(0);
    expect(validateDelta(out.subarray(0, length), 4096)).toBeUndefined();

    const noise = Uint8Array.from({ length: 4096 }, (_, i) => (i * 131 + 1) & 0xff ^ 7);
    expect(encodeDelta(oldPage, noise, out)).toBe(-1);
    expect(encodeDelta(oldPage, oldPage.slice(), out)).toBe(0); // no change: the empty delta
    expect(encodeDelta(oldPage, oldPage.slice(), out, 0)).toBe(-1); // nothing is smaller than 0
  });

  it('32 changed 8-byte words per 4 KiB page encode at least 4x smaller than the raw page', () => {
    const oldPage = Uint8Array.from({ length: 4096 }, (_, i) => (i * 2654435761) >>> 24);
    let total = 0;
    for (let round = 0; round < 50; round++) {
      const newPage = oldPage.slice();
      for (let w = 0; w < 32; w++) {
        const word = ((w * 131 + round * 17) % 512) * 8;
        for (let k = 0; k < 8; k++) newPage[word + k] = (oldPage[word + k]! + 1 + ((w + k + round) % 200)) & 0xff;
      }
      for (const [, backend] of backends) {
        const delta = encodeAll(backend, oldPage, newPage);
        total += delta.length;
        expect(delta.length * 4).toBeLessThanOrEqual(4096);
      }
    }
    expect(total / (50 * backends.length)).toBeLessThan(4096 / 4);
  });
});

describe('malformed deltas are rejected safely', () => {
  // page of 64 bytes; [name, delta, reason, offset]
  const CASES: Array<[string, number[], DeltaFault, number]> = [
    ['a varint cut off', [0x80], DeltaFault.TRUNCATED, 0],
    ['a run without its length', [0x05], DeltaFault.TRUNCATED, 1],
    ['a length varint cut off', [0x05, 0x81], DeltaFault.TRUNCATED, 1],
    ['xor bytes cut off', [0x00, 0x02, 0xaa], DeltaFault.TRUNCATED, 2],
    ['a second run cut off', [0x00, 0x01, 0xff, 0x03], DeltaFault.TRUNCATED, 4],
    ['a five-byte varint', [0x80, 0x80, 0x80, 0x80, 0x01, 0x01, 0x01], DeltaFault.BAD_VARINT, 0],
    ['a non-minimal varint', [0x80, 0x00, 0x01, 0x01], DeltaFault.BAD_VARINT, 0],
    ['a non-minimal length', [0x00, 0x81, 0x00, 0x01], DeltaFault.BAD_VARINT, 1],
    ['a skip past the page', [0x41, 0x01, 0xff], DeltaFault.PAST_PAGE_END, 0],
    ['a huge skip', [0xff, 0xff, 0xff, 0x7f, 0x01, 0x01], DeltaFault.PAST_PAGE_END, 0],
    ['a length past the page', [0x3f, 0x02, 0x01, 0x02], DeltaFault.PAST_PAGE_END, 1],
    ['an overlong run in a second run', [0x00, 0x01, 0xff, 0x10, 0xc1, 0x01], DeltaFault.PAST_PAGE_END, 4],
    ['a skip past the page after a run', [0x00, 0x01, 0xff, 0x40, 0x01, 0x01], DeltaFault.PAST_PAGE_END, 3],
    ['an empty literal', [0x00, 0x00], DeltaFault.EMPTY_LITERAL, 1],
    ['an empty literal after a valid run', [0x00, 0x01, 0x11, 0x05, 0x00], DeltaFault.EMPTY_LITERAL, 4],
  ];

  for (const [name, backend] of backends) {
    it.each(CASES)(`${name}: %s`, (_case, bytes, reason, offset) => {
      const delta = Uint8Array.from(bytes);
      const page = Uint8Array.from({ length: 64 }, (_, i) => i);
      const out = new Uint8Array(64).fill(0xee);
      expect(backend.validateDelta(delta, 64)).toBe(reason + 8 * offset);
      expect(backend.decodeDelta(page, delta, out)).toBe(reason + 8 * offset);
      expect(out.every((b) => b === 0xee)).toBe(true); // untouched
      expect(backend.decodeDelta(page, delta, page)).toBe(reason + 8 * offset);
      expect(page.every((b, i) => b === i)).toBe(true); // in place: untouched too
    });
  }

  it.each(CASES)('decodeDelta throws KEMARI_BAD_BODY for %s; validateDelta returns it', (_case, bytes, reason, offset) => {
    const page = new Uint8Array(64);
    const delta = Uint8Array.from(bytes);
    const names = { 1: 'truncated', 2: 'bad-varint', 3: 'past-page-end', 4: 'empty-literal' } as const;
    const shape = expect.objectContaining({ code: 'KEMARI_BAD_BODY', details: expect.objectContaining({ reason: names[reason], offsetBytes: offset }) });
    expect(() => decodeDelta(page, delta)).toThrow(shape);
    expect(validateDelta(delta, 64)).toEqual(shape);
    expect(page.every((b) => b === 0)).toBe(true);
  });

  for (const [name, backend] of backends) {
    test.prop([fc.uint8Array({ maxLength: 40 }), fc.integer({ min: 1, max: 80 })], { numRuns: 2000 })(
      `${name}: random bytes either decode or fail cleanly, never touching out on failure`,
      (delta, pageBytes) => {
        const page = Uint8Array.from({ length: pageBytes }, (_, i) => i & 0xff);
        const out = new Uint8Array(pageBytes).fill(0xee);
        const fault = backend.decodeDelta(page, delta, out);
        expect(backend.validateDelta(delta, pageBytes)).toBe(fault);
        if (fault !== 0) expect(out.every((b) => b === 0xee)).toBe(true);
      },
    );
  }

  it('refuses bad arguments with KEMARI_INVALID_ARGUMENT', () => {
    const invalid = expect.objectContaining({ code: 'KEMARI_INVALID_ARGUMENT' });
    const page = new Uint8Array(64);
    expect(() => encodeDelta(page, new Uint8Array(32), new Uint8Array(64))).toThrow(invalid);
    expect(() => encodeDelta(new Uint8Array(0), new Uint8Array(0), new Uint8Array(64))).toThrow(invalid);
    expect(() => encodeDelta(page, page.slice(), new Uint8Array(10), 12)).toThrow(invalid);
    expect(() => encodeDelta(page, page.slice(), page.subarray(0, 8))).toThrow(invalid);
    expect(() => decodeDelta(page, new Uint8Array(0), new Uint8Array(63))).toThrow(invalid);
    const shared = new Uint8Array(128);
    expect(() => decodeDelta(page, shared.subarray(0, 2), shared.subarray(0, 64))).toThrow(invalid);
    expect(() => validateDelta(new Uint8Array(0), 0)).toThrow(invalid);
  });
});

describe.skipIf(native === undefined)(`XOR delta: native and TypeScript produce identical bytes${NATIVE_LABEL}`, () => {
  test.prop([pagePair, fc.nat()], { numRuns: 500 })('encodings, within any budget', ({ oldPage, newPage }, b) => {
    const budget = b % (oldPage.length + 2);
    const outJs = new Uint8Array(roomFor(oldPage.length));
    const outNative = new Uint8Array(roomFor(oldPage.length));
    const lengthJs = jsBackend.encodeDelta(oldPage, newPage, outJs, budget);
    const lengthNative = native!.encodeDelta(oldPage, newPage, outNative, budget);
    expect(lengthNative).toBe(lengthJs);
    if (lengthJs >= 0) expect(Buffer.compare(outNative.subarray(0, lengthJs), outJs.subarray(0, lengthJs))).toBe(0);
  });

  test.prop(
    [fc.uint8Array({ maxLength: 48 }), fc.integer({ min: 1, max: 64 })],
    { numRuns: 3000 },
  )('the same verdict, fault offset and result on random deltas', (delta, pageBytes) => {
    const page = Uint8Array.from({ length: pageBytes }, (_, i) => (i * 5) & 0xff);
    const outJs = new Uint8Array(pageBytes);
    const outNative = new Uint8Array(pageBytes);
    expect(native!.decodeDelta(page, delta, outNative)).toBe(jsBackend.decodeDelta(page, delta, outJs));
    expect(Buffer.compare(outNative, outJs)).toBe(0);
  });
});
