import { fc, test } from '@fast-check/vitest';
import { describe, expect, it } from 'vitest';
import { scanChangedPages } from '../../src/pages/index.js';
import type { PagesBackend } from '../../src/pages/backend.js';
import { NATIVE_LABEL, backends, jsBackend, native } from './backends.js';

/** A region, its committed baseline, and the edits made since. */
interface Scenario {
  pageBytes: number;
  baseline: Uint8Array;
  region: Uint8Array;
}

function fillRandom(bytes: Uint8Array, seed: number): void {
  let x = seed | 1;
  for (let i = 0; i < bytes.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    bytes[i] = x & 0xff;
  }
}

const edit = fc.oneof(
  fc.record({ kind: fc.constant('byte' as const), page: fc.nat(), offset: fc.nat(), value: fc.nat(255) }),
  fc.record({ kind: fc.constant('zero' as const), page: fc.nat() }),
  fc.record({ kind: fc.constant('copy' as const), page: fc.nat(), from: fc.nat() }),
);

/** Random geometry and contents (some pages zero), then random edits: byte writes, zeroed pages, copied pages. */
const scenario: fc.Arbitrary<Scenario> = fc
  .record({
    pageBytes: fc.constantFrom(8, 16, 64, 256, 4096),
    pageCount: fc.integer({ min: 0, max: 48 }),
    seed: fc.integer(),
    zeroPages: fc.array(fc.nat(), { maxLength: 10 }),
    edits: fc.array(edit, { maxLength: 30 }),
    offset: fc.nat(7),
  })
  .map(({ pageBytes, pageCount, seed, zeroPages, edits, offset }) => {
    const bytes = pageBytes * pageCount;
    const baseline = new Uint8Array(bytes);
    fillRandom(baseline, seed);
    for (const p of zeroPages) if (pageCount > 0) baseline.fill(0, (p % pageCount) * pageBytes, (p % pageCount + 1) * pageBytes);
    // The region sits at a random byte offset of its buffer, so unaligned views are covered too.
    const region = new Uint8Array(bytes + offset).subarray(offset);
    region.set(baseline);
    for (const e of edits) {
      if (pageCount === 0) break;
      const at = (e.page % pageCount) * pageBytes;
      if (e.kind === 'byte') region[at + (e.offset % pageBytes)] = e.value;
      else if (e.kind === 'zero') region.fill(0, at, at + pageBytes);
      else region.copyWithin(at, (e.from % pageCount) * pageBytes, (e.from % pageCount + 1) * pageBytes);
    }
    return { pageBytes, baseline, region };
  });

/** The oracle: a plain byte loop, independent of both backends. */
function expected(s: Scenario): { changed: number[]; zero: number[] } {
  const changed: number[] = [];
  const zero: number[] = [];
  const pages = s.region.length / s.pageBytes;
  for (let p = 0; p < pages; p++) {
    let differs = false;
    let allZero = true;
    for (let i = p * s.pageBytes; i < (p + 1) * s.pageBytes; i++) {
      if (s.region[i] !== s.baseline[i]) differs = true;
      if (s.region[i] !== 0) allZero = false;
    }
    if (differs) {
      changed.push(p);
      zero.push(allZero ? 1 : 0);
    }
  }
  return { changed, zero };
}

function outputs(pages: number): { changedPages: Uint32Array; zeroFlags: Uint8Array } {
  return { changedPages: new Uint32Array(pages), zeroFlags: new Uint8Array(pages) };
}

/** Fingerprints of the baseline, built the way a caller does: a scan of it against an empty table, with update. */
function fingerprintsOf(backend: PagesBackend, baseline: Uint8Array, pageBytes: number, seed: bigint): BigUint64Array {
  const pages = baseline.length / pageBytes;
  const table = new BigUint64Array(pages);
  const out = outputs(pages);
  backend.scanFingerprints(baseline, pageBytes, table, seed, out.changedPages, out.zeroFlags, true);
  return table;
}

function results(out: { changedPages: Uint32Array; zeroFlags: Uint8Array }, count: number): { changed: number[]; zero: number[] } {
  return { changed: [...out.changedPages.subarray(0, count)], zero: [...out.zeroFlags.subarray(0, count)] };
}

describe('changed-page scan', () => {
  for (const [name, backend] of backends) {
    test.prop([scenario], { numRuns: 150 })(`${name}: shadow mode finds exactly the changed pages and flags zero pages`, (s) => {
      const pages = s.region.length / s.pageBytes;
      const shadow = s.baseline.slice();
      const out = outputs(pages);
      const count = backend.scanShadow(s.region, s.pageBytes, shadow, out.changedPages, out.zeroFlags, false);
      expect(results(out, count)).toEqual(expected(s));
      expect(Buffer.compare(shadow, s.baseline)).toBe(0); // no update asked: the committed copy stays

      const again = backend.scanShadow(s.region, s.pageBytes, shadow, out.changedPages, out.zeroFlags, true);
      expect(results(out, again)).toEqual(expected(s));
      expect(Buffer.compare(shadow, s.region)).toBe(0); // updated: the committed copy advanced
      expect(backend.scanShadow(s.region, s.pageBytes, shadow, out.changedPages, out.zeroFlags, false)).toBe(0);
    });

    test.prop([scenario, fc.bigInt({ min: 0n, max: (1n << 64n) - 1n })], { numRuns: 150 })(
      `${name}: fingerprint mode finds the same pages as shadow mode`,
      (s, seed) => {
        const pages = s.region.length / s.pageBytes;
        const table = fingerprintsOf(backend, s.baseline, s.pageBytes, seed);
        const before = table.slice();
        const out = outputs(pages);
        const count = backend.scanFingerprints(s.region, s.pageBytes, table, seed, out.changedPages, out.zeroFlags, false);
        expect(results(out, count)).toEqual(expected(s));
        expect(table).toEqual(before);

        // The Uint32Array form of the same table (two words a page) behaves the same, and update advances it.
        const words = new Uint32Array(table.buffer.slice(0));
        const again = backend.scanFingerprints(s.region, s.pageBytes, words, seed, out.changedPages, out.zeroFlags, true);
        expect(results(out, again)).toEqual(expected(s));
        expect(new BigUint64Array(words.buffer)).toEqual(fingerprintsOf(backend, s.region, s.pageBytes, seed));
        expect(backend.scanFingerprints(s.region, s.pageBytes, words, seed, out.changedPages, out.zeroFlags, false)).toBe(0);
      },
    );
  }

  it('a fresh fingerprint table of zeros reports every page; a zero shadow reports the non-zero pages', () => {
    const region = new Uint8Array(64 * 4);
    region[64 + 3] = 1;
    const out = outputs(4);
    expect(scanChangedPages(region, 64, new BigUint64Array(4), out)).toBe(4);
    expect(scanChangedPages(region, 64, new Uint8Array(region.length), out)).toBe(1);
    expect([out.changedPages[0], out.zeroFlags[0]]).toEqual([1, 0]);
  });

  it('works on a SharedArrayBuffer region', () => {
    const region = new Uint8Array(new SharedArrayBuffer(4096 * 8));
    const shadow = new Uint8Array(new SharedArrayBuffer(4096 * 8));
    region[4096 * 5 + 100] = 9;
    const out = outputs(8);
    for (const [, backend] of backends) {
      expect(backend.scanShadow(region, 4096, shadow.slice(), out.changedPages, out.zeroFlags, false)).toBe(1);
      expect(out.changedPages[0]).toBe(5);
    }
  });
});

describe('scanChangedPages argument checks', () => {
  const region = new Uint8Array(4096 * 4);
  const out = outputs(4);
  const invalid = expect.objectContaining({ code: 'KEMARI_INVALID_ARGUMENT' });
  it.each([
    ['page size not a power of two', () => scanChangedPages(region, 3000, region.slice(), out)],
    ['page size too small', () => scanChangedPages(region, 4, region.slice(), out)],
    ['region not a multiple of the page size', () => scanChangedPages(region.subarray(1), 4096, region.slice(1), out)],
    ['shadow of another length', () => scanChangedPages(region, 4096, new Uint8Array(4096), out)],
    ['fingerprint table too short', () => scanChangedPages(region, 4096, new BigUint64Array(3), out)],
    ['Uint32Array table with one word a page', () => scanChangedPages(region, 4096, new Uint32Array(4), out)],
    ['wrong reference type', () => scanChangedPages(region, 4096, new Float64Array(4) as unknown as Uint8Array, out)],
    ['changedPages too short', () => scanChangedPages(region, 4096, region.slice(), { changedPages: new Uint32Array(3), zeroFlags: new Uint8Array(4) })],
    ['zeroFlags too short', () => scanChangedPages(region, 4096, region.slice(), { changedPages: new Uint32Array(4), zeroFlags: new Uint8Array(3) })],
    ['shadow overlapping the region', () => scanChangedPages(region.subarray(0, 8192), 4096, region.subarray(4096, 12288), out)],
    ['outputs inside the region', () => scanChangedPages(region, 4096, region.slice(), { changedPages: new Uint32Array(region.buffer, 0, 4), zeroFlags: new Uint8Array(4) })],
    ['seed with a shadow copy', () => scanChangedPages(region, 4096, region.slice(), out, { seed: 1n })],
    ['negative seed', () => scanChangedPages(region, 4096, new BigUint64Array(4), out, { seed: -1n })],
    ['non-boolean update', () => scanChangedPages(region, 4096, region.slice(), out, { update: 1 as unknown as boolean })],
  ])('refuses %s', (_name, call) => {
    expect(call).toThrow(invalid);
  });

  it('accepts an empty region', () => {
    expect(scanChangedPages(new Uint8Array(0), 4096, new Uint8Array(0), outputs(0))).toBe(0);
  });
});

describe.skipIf(native === undefined)(`changed-page scan: native and TypeScript produce identical bytes${NATIVE_LABEL}`, () => {
  test.prop([scenario, fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }), fc.boolean()], { numRuns: 200 })(
    'indices, zero flags and the updated reference',
    (s, seed, update) => {
      const pages = s.region.length / s.pageBytes;
      const run = (backend: PagesBackend) => {
        const shadow = s.baseline.slice();
        const table = fingerprintsOf(jsBackend, s.baseline, s.pageBytes, seed);
        const a = outputs(pages);
        const b = outputs(pages);
        const countShadow = backend.scanShadow(s.region, s.pageBytes, shadow, a.changedPages, a.zeroFlags, update);
        const countPrints = backend.scanFingerprints(s.region, s.pageBytes, table, seed, b.changedPages, b.zeroFlags, update);
        return { countShadow, countPrints, a, b, shadow, table };
      };
      const fromJs = run(jsBackend);
      const fromNative = run(native!);
      // Compared as bytes: vitest's deep equality walks typed arrays element by element, far too slowly here.
      const bytes = (r: ReturnType<typeof run>) =>
        [r.a.changedPages, r.a.zeroFlags, r.b.changedPages, r.b.zeroFlags, r.shadow, r.table].map((v) => Buffer.from(v.buffer, v.byteOffset, v.byteLength));
      expect([fromNative.countShadow, fromNative.countPrints]).toEqual([fromJs.countShadow, fromJs.countPrints]);
      bytes(fromNative).forEach((v, i) => expect(v.equals(bytes(fromJs)[i]!)).toBe(true));
      expect(fingerprintsOf(native!, s.baseline, s.pageBytes, seed)).toEqual(fingerprintsOf(jsBackend, s.baseline, s.pageBytes, seed));
    },
  );
});
