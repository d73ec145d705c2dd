import { describe, expect, it } from 'vitest';
import { DeltaCache } from '../../src/txn/delta-cache.js';
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
  });
});
