import { fc, test } from '@fast-check/vitest';
import { describe, expect, it } from 'vitest';
import { PagesWorkerPool } from '../../src/pages/worker-pool.js';
import { DELTA_CACHE_BYTES_MAX, DELTA_WINDOW_PAGES, DeltaCache } from '../../src/txn/delta-cache.js';
import { decodeDelta } from '../../src/pages/delta.js';
import { PageKind } from '../../src/wire/bodies/pages.js';
import type { Page } from '../../src/wire/bodies/pages.js';

const PAGE = 4096;
const raw = (index: number, fill: (b: Uint8Array) => void): Page => {
  const data = new Uint8Array(PAGE);
  fill(data);
  return { index, kind: PageKind.RAW, data };
};

describe('DeltaCache', () => {
  test.prop([fc.array(fc.array(fc.tuple(fc.integer({ min: 0, max: 40 }), fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: PAGE - 1 })), { maxLength: 30 }), { minLength: 1, maxLength: 8 })])(
    'deferRemember then rememberSent encodes every epoch as the plain encode does (evictions included)',
    (epochs) => {
      // 16 slots for up to 41 pages: the clock evicts. Both caches see the same pages; one copies new ones later.
      const plain = new DeltaCache(PAGE, 16 * PAGE);
      const deferred = new DeltaCache(PAGE, 16 * PAGE);
      const memory = new Map<number, Uint8Array>();
      for (const writes of epochs) {
        for (const [index, value, at] of writes) {
          const page = memory.get(index) ?? new Uint8Array(PAGE).fill(1);
          page[at] = value;
          memory.set(index, page);
        }
        const touched = [...new Set(writes.map(([index]) => index))].sort((a, b) => a - b);
        const pages = (): Page[] => touched.map((index) => ({ index, kind: PageKind.RAW, data: memory.get(index)!.slice() }));
        const a = plain.encode(pages());
        const b = deferred.encode(pages(), { deferRemember: true });
        expect(a.unremembered).toBeUndefined();
        expect(b.pages.map((p) => [p.index, p.kind, Buffer.from(p.data).toString('hex')])).toEqual(a.pages.map((p) => [p.index, p.kind, Buffer.from(p.data).toString('hex')]));
        // Left out: pages sent whole only, and the same epoch's plain encode did copy them in.
        expect((b.unremembered ?? []).every((i) => b.pages[i]!.kind === PageKind.RAW)).toBe(true);
        deferred.rememberSent(b.pages, b.unremembered ?? []);
        expect(deferred.bytes).toBe(plain.bytes);
      }
    },
  );

  it('sends a page whole the first time, as a delta when a little changed, not at all when unchanged', () => {
    const cache = new DeltaCache(PAGE, 1 << 20);
    const v1 = raw(3, (b) => b.fill(7));
    expect(cache.encode([v1]).pages[0]!.kind).toBe(PageKind.RAW);
    const v2 = raw(3, (b) => {
      b.fill(7);
      b[100] = 1;
      b[2000] = 2;
    });
    const second = cache.encode([v2]);
    const delta = second.pages[0]!;
    expect(delta.kind).toBe(PageKind.DELTA);
    expect(delta.data.byteLength).toBeLessThan(PAGE / 16);
    expect(second.deltaPages).toBe(1);
    // What the secondary does with it: applied to its copy (v1) it gives v2.
    const copy = Uint8Array.from(v1.data);
    decodeDelta(copy, delta.data);
    expect(Buffer.from(copy).equals(Buffer.from(v2.data))).toBe(true);
    const third = cache.encode([raw(3, (b) => b.set(v2.data))]);
    expect(third.pages).toEqual([]);
    expect(third.unchangedPages).toBe(1);
  });

  it('sends a page that changed a lot whole, forgets zero pages, and starts over after clear()', () => {
    const cache = new DeltaCache(PAGE, 1 << 20);
    cache.encode([raw(1, (b) => b.fill(1)), raw(2, (b) => b.fill(1))]);
    const next = cache.encode([raw(1, (b) => b.forEach((_, i) => (b[i] = i & 0xff))), { index: 2, kind: PageKind.ZERO, data: new Uint8Array(0) }]);
    expect(next.pages.map((p) => p.kind)).toEqual([PageKind.RAW, PageKind.ZERO]);
    expect(cache.encode([raw(2, (b) => b.fill(1))]).pages[0]!.kind).toBe(PageKind.RAW); // page 2 was forgotten
    cache.clear();
    expect(cache.bytes).toBe(0);
    expect(cache.encode([raw(1, (b) => b.fill(1))]).pages[0]!.kind).toBe(PageKind.RAW);
  });

  it('holds at most cacheBytes of copies, evicting the least recently sent', () => {
    const cache = new DeltaCache(PAGE, 2 * PAGE);
    cache.encode([raw(1, (b) => b.fill(1)), raw(2, (b) => b.fill(2)), raw(3, (b) => b.fill(3))]);
    expect(cache.bytes).toBe(2 * PAGE);
    const again = cache.encode([raw(1, (b) => b.fill(1)), raw(3, (b) => b.fill(3))]);
    expect(again.unchangedPages).toBe(1); // page 3 is cached, page 1 was evicted
    expect(again.pages.map((p) => p.index)).toEqual([1]);
    expect(() => new DeltaCache(PAGE, -1)).toThrow(expect.objectContaining({ code: 'KEMARI_INVALID_ARGUMENT' }));
    // One slab addressed by 32-bit slots: a larger cache is refused up front, not failed at first use.
    expect(() => new DeltaCache(PAGE, DELTA_CACHE_BYTES_MAX + PAGE)).toThrow(expect.objectContaining({ code: 'KEMARI_INVALID_ARGUMENT' }));
  });
});

describe('DeltaCache: what it assumes the secondary holds is what the secondary holds', () => {
  const PAGE_SMALL = 256;
  const PAGES = 24;

  /** The secondary's side: applies each sent page to its copy, as the replica does at commit. */
  function applyTo(copy: Uint8Array, sent: readonly Page[]): void {
    for (const page of sent) {
      const at = copy.subarray(page.index * PAGE_SMALL, (page.index + 1) * PAGE_SMALL);
      if (page.kind === PageKind.RAW) at.set(page.data);
      else if (page.kind === PageKind.ZERO) at.fill(0);
      else decodeDelta(at, page.data);
    }
  }

  /** One epoch's changed pages, copied into one send buffer as a capture does (or one buffer per page when `scattered`). */
  function captureOf(guest: Uint8Array, indices: number[], scattered: boolean, shared: boolean): Page[] {
    const send = shared ? new Uint8Array(new SharedArrayBuffer(indices.length * PAGE_SMALL)) : new Uint8Array(indices.length * PAGE_SMALL);
    return indices.map((index, k) => {
      const source = guest.subarray(index * PAGE_SMALL, (index + 1) * PAGE_SMALL);
      if (source.every((b) => b === 0)) return { index, kind: PageKind.ZERO, data: new Uint8Array(0) };
      // A view at an odd offset takes the one-page path; views of one buffer go in one batched call.
      const data = scattered && k % 2 === 1 ? new Uint8Array(PAGE_SMALL + 1).subarray(1) : send.subarray(k * PAGE_SMALL, (k + 1) * PAGE_SMALL);
      data.set(source);
      return { index, kind: PageKind.RAW, data };
    });
  }

  const epochArb = fc.record({
    pages: fc.uniqueArray(fc.integer({ min: 0, max: PAGES - 1 }), { minLength: 0, maxLength: PAGES }),
    change: fc.constantFrom('few', 'many', 'zero', 'none'),
    seed: fc.integer({ min: 1, max: 2 ** 30 }),
  });

  test.prop([fc.array(epochArb, { minLength: 1, maxLength: 25 }), fc.integer({ min: 0, max: 10 }), fc.boolean()], { numRuns: 120 })(
    'over random epochs, with evictions, the secondary copy of every page equals the guest',
    (epochs, cachePages, scattered) => {
      const cache = new DeltaCache(PAGE_SMALL, cachePages * PAGE_SMALL);
      const guest = new Uint8Array(PAGES * PAGE_SMALL);
      const copy = new Uint8Array(PAGES * PAGE_SMALL);
      // The full sync: every page, whole.
      for (let i = 0; i < guest.length; i++) guest[i] = (i * 31) & 0xff;
      copy.set(guest);
      for (const epoch of epochs) {
        let x = epoch.seed;
        const next = (): number => ((x = (x * 1103515245 + 12345) & 0x7fffffff), x);
        for (const index of epoch.pages) {
          const page = guest.subarray(index * PAGE_SMALL, (index + 1) * PAGE_SMALL);
          if (epoch.change === 'zero') page.fill(0);
          else if (epoch.change === 'many') for (let i = 0; i < PAGE_SMALL; i++) page[i] = next() & 0xff;
          else if (epoch.change === 'few') {
            for (let i = 0; i < 3; i++) {
              const at = next() % PAGE_SMALL;
              page[at] = page[at]! ^ (1 + (next() % 255));
            }
          }
        }
        const sorted = [...epoch.pages].sort((a, b) => a - b);
        const encoded = cache.encode(captureOf(guest, sorted, scattered, false));
        expect(encoded.pages.length + encoded.unchangedPages).toBe(sorted.length);
        applyTo(copy, encoded.pages);
        expect(Buffer.compare(copy, guest)).toBe(0);
        expect(cache.bytes).toBeLessThanOrEqual(cachePages * PAGE_SMALL);
      }
    },
  );

  it('an epoch of more pages than a window is encoded window by window: every delta right, one exact buffer a window', () => {
    const pages = 2 * DELTA_WINDOW_PAGES + 100;
    const cache = new DeltaCache(PAGE_SMALL, pages * PAGE_SMALL);
    const guest = new Uint8Array(pages * PAGE_SMALL);
    for (let i = 0; i < guest.length; i++) guest[i] = (i * 31) & 0xff;
    const copy = Uint8Array.from(guest);
    const all = [...Array(pages).keys()];
    cache.encode(captureOf(guest, all, false, false)); // every page sent whole, and remembered
    for (let epoch = 1; epoch <= 3; epoch++) {
      for (const index of all) {
        const page = guest.subarray(index * PAGE_SMALL, (index + 1) * PAGE_SMALL);
        if (index % 5 === 0) continue; // unchanged
        if (index % 7 === 0) page.forEach((_, i) => (page[i] = (i * epoch * 13 + index) & 0xff)); // many bytes: RAW
        else {
          const at = (index * epoch) % PAGE_SMALL;
          page[at] = page[at]! ^ epoch; // a byte: a small delta
        }
      }
      const encoded = cache.encode(captureOf(guest, all, epoch === 2, false));
      applyTo(copy, encoded.pages);
      expect(Buffer.compare(copy, guest)).toBe(0);
      expect(encoded.deltaPages).toBeGreaterThan(2 * DELTA_WINDOW_PAGES - 100);
      const buffers = new Set(encoded.pages.filter((p) => p.kind === PageKind.DELTA).map((p) => p.data.buffer));
      expect(buffers.size).toBe(3);
      for (const buffer of buffers) expect(buffer.byteLength).toBeLessThan(DELTA_WINDOW_PAGES * 8); // exact copies
    }
    // Bounded: the scratch holds one window's deltas (half a page a page), not the epoch's.
    expect(cache.scratchBytes).toBe(DELTA_WINDOW_PAGES * (PAGE_SMALL / 2));
  });

  it('encodeAsync of more pages than a window, on the threads and on a refusing pool, sends what encode sends', async () => {
    const pool = await PagesWorkerPool.start({ workers: 2, parallelBytesMin: 0 });
    try {
      const pages = 2 * DELTA_WINDOW_PAGES + 188;
      const threaded = new DeltaCache(PAGE_SMALL, pages * PAGE_SMALL, { shared: true });
      const here = new DeltaCache(PAGE_SMALL, pages * PAGE_SMALL);
      const guest = new Uint8Array(pages * PAGE_SMALL);
      for (let i = 0; i < guest.length; i++) guest[i] = (i * 7) & 0xff;
      const all = [...Array(pages).keys()];
      const copy = Uint8Array.from(guest);
      const same = (a: { pages: Page[] }, b: { pages: Page[] }): void =>
        expect(a.pages.map((p) => [p.index, p.kind, Buffer.from(p.data).toString('hex')])).toEqual(b.pages.map((p) => [p.index, p.kind, Buffer.from(p.data).toString('hex')]));
      same(await threaded.encodeAsync(captureOf(guest, all, false, true), pool), here.encode(captureOf(guest, all, false, false)));
      for (let epoch = 1; epoch <= 3; epoch++) {
        if (epoch === 3) await pool.close(); // refused: this thread encodes the batch, window by window
        for (const index of all) {
          const at = index * PAGE_SMALL + ((index + epoch) % PAGE_SMALL);
          if (index % 4 !== 0) guest[at] = guest[at]! ^ epoch;
        }
        const a = await threaded.encodeAsync(captureOf(guest, all, false, true), pool);
        expect(a.parallel).toBe(epoch < 3);
        expect(a.deltaPages).toBeGreaterThan(2 * DELTA_WINDOW_PAGES);
        same(a, here.encode(captureOf(guest, all, false, false)));
        applyTo(copy, a.pages);
        expect(Buffer.compare(copy, guest)).toBe(0);
      }
    } finally {
      await pool.close();
    }
  });

  it('encodeAsync on a worker pool sends exactly what encode sends', async () => {
    const pool = await PagesWorkerPool.start({ workers: 2, parallelBytesMin: 0 });
    try {
      const threaded = new DeltaCache(PAGE_SMALL, 64 * PAGE_SMALL, { shared: true });
      const here = new DeltaCache(PAGE_SMALL, 64 * PAGE_SMALL);
      const guest = new Uint8Array(PAGES * PAGE_SMALL).fill(9);
      const all = [...Array(PAGES).keys()];
      let parallel = 0;
      for (let epoch = 0; epoch < 12; epoch++) {
        for (const index of all) {
          const at = index * PAGE_SMALL + ((epoch * 37 + index) % PAGE_SMALL);
          if ((index + epoch) % 3 !== 0) guest[at] = guest[at]! ^ 0x55;
        }
        if (epoch === 5) guest.subarray(0, 4 * PAGE_SMALL).fill(epoch); // many bytes: RAW again
        const a = await threaded.encodeAsync(captureOf(guest, all, false, true), pool);
        const b = here.encode(captureOf(guest, all, false, false));
        if (a.parallel) parallel += 1;
        expect(a.pages.map((p) => [p.index, p.kind, Buffer.from(p.data).toString('hex')])).toEqual(
          b.pages.map((p) => [p.index, p.kind, Buffer.from(p.data).toString('hex')]),
        );
        expect([a.deltaPages, a.unchangedPages, a.savedBytes]).toEqual([b.deltaPages, b.unchangedPages, b.savedBytes]);
      }
      expect(parallel).toBeGreaterThan(8); // every epoch after the first had a batch for the threads
      // Pages not in SharedArrayBuffers cannot be read by the threads: that batch stays on this thread.
      const local = await threaded.encodeAsync(captureOf(guest, all, false, false), pool);
      expect(local.parallel).toBe(false);
      here.encode(captureOf(guest, all, false, false));
      // A pool that refuses the batch (here: closed) leaves it to this thread, with the same result.
      await pool.close();
      for (const index of all) guest[index * PAGE_SMALL + 3] = guest[index * PAGE_SMALL + 3]! ^ 0x0f;
      const refused = await threaded.encodeAsync(captureOf(guest, all, false, true), pool);
      const expected = here.encode(captureOf(guest, all, false, false));
      expect(refused.parallel).toBe(false);
      expect(refused.deltaPages).toBe(PAGES);
      expect(refused.pages.map((p) => Buffer.from(p.data).toString('hex'))).toEqual(expected.pages.map((p) => Buffer.from(p.data).toString('hex')));
    } finally {
      await pool.close();
    }
  });
});
