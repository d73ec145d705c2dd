import { fc, test } from '@fast-check/vitest';
import { describe, expect, it } from 'vitest';
import { decodeDelta, encodeDelta, encodeDeltaBatch, pagesImplementation } from '../../src/pages/index.js';
import type { PagesBackend } from '../../src/pages/backend.js';
import { nativeLoadError } from '../../src/pages/native-binding.js';
import { backends, jsBackend, native } from './backends.js';

/**
 * The native comparisons do not skip when the addon is missing: they fail, naming why it did not load (a batch
 * encoder that silently ran only on the fallback would hide exactly the code this file is about).
 */
function requireNative(): PagesBackend {
  if (native === undefined) throw new Error(`kemari_pages addon not loaded (build it with npm run build:native): ${String(nativeLoadError)}`);
  return native;
}

function fillPseudoRandom(bytes: Uint8Array, seed: number): void {
  let x = seed | 1;
  for (let i = 0; i < bytes.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    bytes[i] = x;
  }
}

type ChangeKind = 'none' | 'few' | 'many' | 'all';

interface BatchCase {
  pageBytes: number;
  /** Page slots, with a partial page after them (which no index may name). */
  pages: Uint8Array;
  bases: Uint8Array;
  /** Longer than count: the entries after count are junk a backend must not read. */
  pageIndices: Uint32Array;
  baseIndices: Uint32Array;
  count: number;
  budgetBytes: number;
  updateBases: boolean;
}

const change = fc.record({ at: fc.nat(), length: fc.integer({ min: 1, max: 40 }), value: fc.nat(255) });

/**
 * Base slots of pseudo-random bytes; page slots each made from one base slot with no, a few, many or all bytes
 * changed; a sequence of (page, base) pairs that mostly pairs a page with the base it was made from, sometimes with
 * another (repeated base slots included), and a random budget. Views start at odd offsets of larger buffers.
 */
const batchCase: fc.Arbitrary<BatchCase> = fc
  .record({
    pageBytes: fc.oneof(
      { arbitrary: fc.integer({ min: 64, max: 4096 }), weight: 4 },
      { arbitrary: fc.constant(4096), weight: 2 },
      { arbitrary: fc.integer({ min: 1, max: 63 }), weight: 1 },
    ),
    baseSlots: fc.integer({ min: 1, max: 5 }),
    seed: fc.integer(),
    slots: fc.array(
      fc.record({ from: fc.nat(), kind: fc.constantFrom<ChangeKind>('none', 'few', 'many', 'all'), changes: fc.array(change, { maxLength: 30 }) }),
      { minLength: 1, maxLength: 5 },
    ),
    order: fc.array(fc.record({ page: fc.nat(), base: fc.nat(), own: fc.boolean() }), { maxLength: 14 }),
    junk: fc.array(fc.nat(), { maxLength: 3 }),
    budget: fc.nat(),
    tail: fc.nat(),
    updateBases: fc.boolean(),
  })
  .map(({ pageBytes, baseSlots, seed, slots, order, junk, budget, tail, updateBases }) => {
    const basesBuffer = new Uint8Array(baseSlots * pageBytes + 8);
    fillPseudoRandom(basesBuffer, seed);
    const bases = basesBuffer.subarray(3, 3 + baseSlots * pageBytes);
    const pagesBuffer = new Uint8Array(slots.length * pageBytes + pageBytes + 8);
    const pages = pagesBuffer.subarray(5, 5 + slots.length * pageBytes + (tail % pageBytes));
    const from = slots.map((s) => s.from % baseSlots);
    slots.forEach((slot, s) => {
      const page = pages.subarray(s * pageBytes, (s + 1) * pageBytes);
      page.set(bases.subarray(from[s]! * pageBytes, (from[s]! + 1) * pageBytes));
      if (slot.kind === 'few') {
        for (const c of slot.changes.slice(0, 3)) page[c.at % pageBytes]! ^= 1 + (c.value % 255);
      } else if (slot.kind === 'many') {
        for (const c of slot.changes) page.fill(c.value, c.at % pageBytes, (c.at % pageBytes) + c.length);
      } else if (slot.kind === 'all') {
        for (let i = 0; i < pageBytes; i++) page[i]! ^= 1 + ((i + seed) & 0x7f);
      }
    });
    const count = order.length;
    const pageIndices = new Uint32Array(count + junk.length);
    const baseIndices = new Uint32Array(count + junk.length);
    order.forEach((o, k) => {
      pageIndices[k] = o.page % slots.length;
      baseIndices[k] = o.own ? from[pageIndices[k]!]! : o.base % baseSlots;
    });
    junk.forEach((j, i) => {
      pageIndices[count + i] = 0xffff_ffff - j;
      baseIndices[count + i] = 0x8000_0000 + j;
    });
    const budgetBytes = 1 + (budget % pageBytes);
    return { pageBytes, pages, bases, pageIndices, baseIndices, count, budgetBytes, updateBases };
  });

interface BatchResult {
  total: number;
  out: Uint8Array;
  lengths: number[];
  bases: Uint8Array;
}

/** One batch call on copies of the outputs; `out` exactly as large as the worst case needs, prefilled with 0xee. */
function runBatch(backend: PagesBackend, c: BatchCase): BatchResult {
  const bases = c.bases.slice();
  const out = new Uint8Array(c.count * (c.budgetBytes - 1)).fill(0xee);
  const lengths = new Int32Array(c.count + 2).fill(0x5a5a5a5a);
  const total = backend.encodeDeltaBatch(c.pages, c.pageIndices, bases, c.baseIndices, c.count, c.pageBytes, c.budgetBytes, out, lengths, c.updateBases);
  expect(lengths[c.count]).toBe(0x5a5a5a5a); // nothing past count
  return { total, out, lengths: Array.from(lengths.subarray(0, c.count)), bases };
}

interface Expected {
  total: number;
  /** Per page: the delta (length > 0), or the single-page result 0 or -1, and the base it was encoded against. */
  results: Array<{ length: number; delta: Uint8Array; oldBase: Uint8Array; page: Uint8Array }>;
  bases: Uint8Array;
}

/** What the batch must give: the single-page encodeDelta, page after page, updating bases as specified. */
function expectedOf(backend: PagesBackend, c: BatchCase): Expected {
  const bases = c.bases.slice();
  const results: Expected['results'] = [];
  let total = 0;
  for (let k = 0; k < c.count; k++) {
    const page = c.pages.subarray(c.pageIndices[k]! * c.pageBytes, (c.pageIndices[k]! + 1) * c.pageBytes);
    const base = bases.subarray(c.baseIndices[k]! * c.pageBytes, (c.baseIndices[k]! + 1) * c.pageBytes);
    const scratch = new Uint8Array(Math.max(0, c.budgetBytes - 1));
    const length = backend.encodeDelta(base, page, scratch, c.budgetBytes);
    results.push({ length, delta: scratch.slice(0, Math.max(0, length)), oldBase: base.slice(), page });
    if (length > 0) total += length;
    if (c.updateBases && length !== 0) base.set(page);
  }
  return { total, results, bases };
}

function expectMatches(got: BatchResult, want: Expected): void {
  expect(got.total).toBe(want.total);
  expect(got.lengths).toEqual(want.results.map((r) => r.length));
  let at = 0;
  for (const r of want.results) {
    if (r.length <= 0) continue;
    expect(Buffer.compare(got.out.subarray(at, at + r.length), r.delta)).toBe(0);
    at += r.length;
  }
  expect(Buffer.compare(got.bases, want.bases)).toBe(0);
}

describe('encodeDeltaBatch: every page exactly as the single-page encodeDelta', () => {
  for (const [name, backend] of backends) {
    test.prop([batchCase], { numRuns: 300 })(`${name}: packed deltas, lengths, total and updated bases`, (c) => {
      expectMatches(runBatch(backend, c), expectedOf(backend, c));
    });
  }

  test.prop([batchCase], { numRuns: 200 })('each packed delta decodes against the base it was encoded against into its page', (c) => {
    const bases = c.bases.slice();
    const want = expectedOf(jsBackend, c); // only for the old bases; the batch result is what is checked
    const out = new Uint8Array(c.count * (c.budgetBytes - 1));
    const lengths = new Int32Array(c.count);
    const total = encodeDeltaBatch(c.pages, c.pageIndices, bases, c.baseIndices, c.pageBytes, out, lengths, {
      count: c.count,
      budgetBytes: c.budgetBytes,
      updateBases: c.updateBases,
    });
    let at = 0;
    for (let k = 0; k < c.count; k++) {
      const { oldBase, page } = want.results[k]!;
      const length = lengths[k]!;
      if (length === -1) continue;
      expect(length).toBeGreaterThanOrEqual(0);
      expect(length).toBeLessThan(c.budgetBytes);
      const decoded = oldBase.slice();
      decodeDelta(decoded, out.subarray(at, at + length));
      expect(Buffer.compare(decoded, page)).toBe(0);
      at += length;
    }
    expect(total).toBe(at);
  });
});

describe(`encodeDeltaBatch: native and TypeScript produce identical results (pages implementation: ${pagesImplementation()})`, () => {
  it('the kemari_pages addon is loaded (these comparisons fail rather than skip without it)', () => {
    expect(native, String(nativeLoadError)).toBeDefined();
    expect(pagesImplementation()).toBe('native');
  });

  test.prop([batchCase], { numRuns: 500 })('return value, out bytes [0, total), lengths and bases afterwards', (c) => {
    const nativeBackend = requireNative();
    const fromNative = runBatch(nativeBackend, c);
    const fromJs = runBatch(jsBackend, c);
    expect(fromNative.total).toBe(fromJs.total);
    expect(fromNative.lengths).toEqual(fromJs.lengths);
    expect(Buffer.compare(fromNative.out.subarray(0, fromNative.total), fromJs.out.subarray(0, fromJs.total))).toBe(0);
    expect(Buffer.compare(fromNative.bases, fromJs.bases)).toBe(0);
    expectMatches(fromNative, expectedOf(nativeBackend, c));
  });

  it('pages sharing a base slot with updateBases: each later page is encoded against the page before it', () => {
    const pageBytes = 256;
    const pages = new Uint8Array(3 * pageBytes);
    for (let s = 0; s < 3; s++) pages.fill(s + 1, s * pageBytes, s * pageBytes + 10 * (s + 1));
    const pageIndices = Uint32Array.of(0, 1, 2, 2);
    const baseIndices = Uint32Array.of(0, 0, 0, 0);
    const results = [jsBackend, requireNative()].map((backend) => {
      const bases = new Uint8Array(pageBytes);
      const out = new Uint8Array(4 * (pageBytes - 1));
      const lengths = new Int32Array(4);
      const total = backend.encodeDeltaBatch(pages, pageIndices, bases, baseIndices, 4, pageBytes, pageBytes, out, lengths, true);
      return { total, lengths: Array.from(lengths), delta: Array.from(out.subarray(0, total)), bases: Array.from(bases) };
    });
    // page 0: bytes 0..9 = 1 against zeros; page 1: 0..19 = 2 against page 0; page 2: 0..29 = 3 against page 1;
    // page 2 again: equal to the updated base, so 0 and nothing written.
    expect(results[0]!.lengths).toEqual([12, 22, 32, 0]);
    expect(results[0]!.bases).toEqual(Array.from(pages.subarray(2 * pageBytes)));
    expect(results[1]).toEqual(results[0]);
  });

  it('the addon refuses, as TypeError/RangeError, what would take it out of bounds when called without the wrapper', () => {
    const n = requireNative();
    const pages = new Uint8Array(4 * 64);
    const bases = new Uint8Array(4 * 64);
    const idx = Uint32Array.of(0, 1, 2, 3);
    const out = new Uint8Array(4 * 63);
    const lengths = new Int32Array(4);
    const call = (over: Partial<{ pages: unknown; pageIndices: unknown; bases: unknown; baseIndices: unknown; count: unknown; pageBytes: unknown; budget: unknown; out: unknown; lengths: unknown }>) =>
      () =>
        (n.encodeDeltaBatch as (...args: unknown[]) => number)(
          'pages' in over ? over.pages : pages,
          'pageIndices' in over ? over.pageIndices : idx,
          'bases' in over ? over.bases : bases,
          'baseIndices' in over ? over.baseIndices : idx,
          'count' in over ? over.count : 4,
          'pageBytes' in over ? over.pageBytes : 64,
          'budget' in over ? over.budget : 64,
          'out' in over ? over.out : out,
          'lengths' in over ? over.lengths : lengths,
          false,
        );
    expect(call({})()).toBe(0);
    expect(call({ pageIndices: Uint32Array.of(0, 1, 2, 4) })).toThrow(RangeError);
    expect(call({ baseIndices: Uint32Array.of(0xffff_ffff, 0, 0, 0) })).toThrow(RangeError);
    expect(call({ pages: pages.subarray(0, 3 * 64 + 63) })).toThrow(RangeError); // page 3 would be partial
    expect(call({ count: 5 })).toThrow(RangeError);
    expect(call({ lengths: new Int32Array(3) })).toThrow(RangeError);
    expect(call({ lengths: new Uint32Array(4) })).toThrow(RangeError);
    expect(call({ pageIndices: new Int32Array(4) })).toThrow(RangeError);
    expect(call({ out: out.subarray(1) })).toThrow(RangeError);
    expect(call({ budget: 65 })).toThrow(RangeError);
    expect(call({ budget: 0 })).toThrow(RangeError);
    expect(call({ pageBytes: 0 })).toThrow(RangeError);
    expect(call({ count: -1 })).toThrow(RangeError);
    expect(call({ pages: [1, 2] })).toThrow(TypeError);
    expect(call({ bases: new Uint16Array(128) })).toThrow(TypeError);
    expect(call({ count: '4' })).toThrow(TypeError);
  });

  it('the addon stays in bounds and ends when, called without the wrapper, out overlaps the bases being updated', () => {
    // The deltas are written into the bases while the bases are updated: were the updates taken by reading the
    // deltas back, the bytes a base update writes would be read as the next run's header (here a skip of 2^28, or
    // a varint that never ends), taking the copy out of bounds or the loop forever.
    const n = requireNative();
    const pageBytes = 4096;
    for (const header of [[0xff, 0xff, 0xff, 0x7f, 0x10], [0x80, 0x80, 0x80, 0x80, 0x80]]) {
      const page = new Uint8Array(pageBytes);
      page.fill(0xff, 200, 500);
      page.set(header, 404);
      page.fill(1, 1000, 1010);
      const bases = new Uint8Array(2 * pageBytes);
      const out = bases.subarray(100, 100 + pageBytes);
      const lengths = new Int32Array(1);
      const total = (n.encodeDeltaBatch as (...args: unknown[]) => number)(page, Uint32Array.of(0), bases, Uint32Array.of(0), 1, pageBytes, pageBytes, out, lengths, true);
      expect(total).toBe(lengths[0]);
      expect(total).toBeGreaterThan(0);
      expect(total).toBeLessThan(pageBytes);
    }
  });
});

describe('encodeDeltaBatch: arguments', () => {
  const pageBytes = 64;
  const setup = () => {
    const pages = new Uint8Array(4 * pageBytes);
    fillPseudoRandom(pages, 9);
    const bases = new Uint8Array(4 * pageBytes);
    return { pages, bases, idx: Uint32Array.of(3, 2, 1, 0), out: new Uint8Array(4 * (pageBytes - 1)), lengths: new Int32Array(4) };
  };
  const invalid = (field: string) => expect.objectContaining({ code: 'KEMARI_INVALID_ARGUMENT', details: expect.objectContaining({ field }) });

  it('defaults: count = pageIndices.length, budgetBytes = pageBytes, bases not updated', () => {
    const { pages, bases, idx, out, lengths } = setup();
    const total = encodeDeltaBatch(pages, idx, bases, idx, pageBytes, out, lengths);
    expect(Array.from(lengths)).toEqual([-1, -1, -1, -1]); // random against zeros: over the page budget
    expect(total).toBe(0);
    expect(bases.every((b) => b === 0)).toBe(true);
    const one = new Uint8Array(pageBytes - 1);
    const page3 = pages.subarray(3 * pageBytes);
    page3.fill(0, 5); // 5 changed bytes now
    expect(encodeDeltaBatch(pages, idx, bases, idx, pageBytes, out, lengths)).toBe(encodeDelta(bases.subarray(3 * pageBytes), page3, one));
    expect(Buffer.compare(out.subarray(0, lengths[0]!), one.subarray(0, lengths[0]!))).toBe(0);
    expect(encodeDeltaBatch(pages, idx, bases, idx, pageBytes, new Uint8Array(0), new Int32Array(0), { count: 0 })).toBe(0);
  });

  it('refuses each bad argument with KEMARI_INVALID_ARGUMENT, before writing anything', () => {
    const { pages, bases, idx, out, lengths } = setup();
    const shared = new Uint8Array(16 * pageBytes);
    const cases: Array<[string, () => unknown]> = [
      ['pageIndices[2]', () => encodeDeltaBatch(pages, Uint32Array.of(0, 1, 4, 0), bases, idx, pageBytes, out, lengths)],
      ['baseIndices[0]', () => encodeDeltaBatch(pages, idx, bases, Uint32Array.of(0xffff_ffff, 0, 0, 0), pageBytes, out, lengths)],
      ['pageIndices[0]', () => encodeDeltaBatch(pages.subarray(1), idx, bases, idx, pageBytes, out, lengths)], // slot 3 is partial
      ['pageIndices', () => encodeDeltaBatch(pages, idx, bases, idx, pageBytes, out, lengths, { count: 5 })],
      ['pageIndices', () => encodeDeltaBatch(pages, Array.from(idx) as unknown as Uint32Array, bases, idx, pageBytes, out, lengths)],
      ['baseIndices', () => encodeDeltaBatch(pages, idx, bases, idx.subarray(0, 3), pageBytes, out, lengths)],
      ['baseIndices', () => encodeDeltaBatch(pages, idx, bases, new Int32Array(4) as unknown as Uint32Array, pageBytes, out, lengths)],
      ['lengths', () => encodeDeltaBatch(pages, idx, bases, idx, pageBytes, out, lengths.subarray(0, 3))],
      ['lengths', () => encodeDeltaBatch(pages, idx, bases, idx, pageBytes, out, new Uint32Array(4) as unknown as Int32Array)],
      ['out', () => encodeDeltaBatch(pages, idx, bases, idx, pageBytes, out.subarray(1), lengths)],
      ['out', () => encodeDeltaBatch(pages, idx, bases, idx, pageBytes, new Uint8Array(4 * 15 - 1), lengths, { budgetBytes: 16 })],
      ['out', () => encodeDeltaBatch(shared.subarray(0, 4 * pageBytes), idx, bases, idx, pageBytes, shared.subarray(4 * pageBytes - 1), lengths)],
      ['out', () => encodeDeltaBatch(pages, idx, shared.subarray(0, 4 * pageBytes), idx, pageBytes, shared.subarray(4 * pageBytes - 8), lengths)],
      ['out', () => encodeDeltaBatch(pages, idx, bases, idx, pageBytes, new Uint8Array(idx.buffer), lengths, { budgetBytes: 2 })],
      ['out', () => encodeDeltaBatch(pages, idx, bases, idx, pageBytes, pages, lengths)],
      ['lengths', () => encodeDeltaBatch(pages, idx, bases, idx, pageBytes, out, new Int32Array(bases.buffer, 0, 4))],
      ['lengths', () => encodeDeltaBatch(pages, idx, bases, idx, pageBytes, out, new Int32Array(idx.buffer))],
      ['bases', () => encodeDeltaBatch(shared.subarray(0, 4 * pageBytes), idx, shared.subarray(2 * pageBytes, 6 * pageBytes), idx, pageBytes, out, lengths, { updateBases: true })],
      ['bases', () => encodeDeltaBatch(pages, new Uint32Array(bases.buffer, 0, 4), bases, idx, pageBytes, out, lengths, { updateBases: true })],
      ['options.budgetBytes', () => encodeDeltaBatch(pages, idx, bases, idx, pageBytes, out, lengths, { budgetBytes: 0 })],
      ['options.budgetBytes', () => encodeDeltaBatch(pages, idx, bases, idx, pageBytes, out, lengths, { budgetBytes: pageBytes + 1 })],
      ['options.budgetBytes', () => encodeDeltaBatch(pages, idx, bases, idx, pageBytes, out, lengths, { budgetBytes: 2.5 })],
      ['options.count', () => encodeDeltaBatch(pages, idx, bases, idx, pageBytes, out, lengths, { count: -1 })],
      ['options.count', () => encodeDeltaBatch(pages, idx, bases, idx, pageBytes, out, lengths, { count: 1.5 })],
      ['options.updateBases', () => encodeDeltaBatch(pages, idx, bases, idx, pageBytes, out, lengths, { updateBases: 1 as unknown as boolean })],
      ['options', () => encodeDeltaBatch(pages, idx, bases, idx, pageBytes, out, lengths, null as unknown as undefined)],
      ['pageBytes', () => encodeDeltaBatch(pages, idx, bases, idx, 0, out, lengths)],
      ['pageBytes', () => encodeDeltaBatch(pages, idx, bases, idx, (1 << 24) + 1, out, lengths)],
      ['pages', () => encodeDeltaBatch([] as unknown as Uint8Array, idx, bases, idx, pageBytes, out, lengths)],
      ['bases', () => encodeDeltaBatch(pages, idx, new Uint16Array(128) as unknown as Uint8Array, idx, pageBytes, out, lengths)],
    ];
    for (const [field, call] of cases) {
      out.fill(0xee);
      lengths.fill(7);
      expect(call, field).toThrow(invalid(field));
      expect(out.every((b) => b === 0xee)).toBe(true);
      expect(lengths.every((l) => l === 7)).toBe(true);
    }
    // Pages may overlap bases when the bases are only read, and the two index arrays may be one array.
    expect(encodeDeltaBatch(shared.subarray(0, 4 * pageBytes), idx, shared.subarray(2 * pageBytes, 6 * pageBytes), idx, pageBytes, out, lengths)).toBeGreaterThanOrEqual(0);
  });
});
