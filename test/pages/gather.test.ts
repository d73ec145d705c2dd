import { fc, test } from '@fast-check/vitest';
import { describe, expect, it } from 'vitest';
import { gatherPages } from '../../src/pages/gather.js';
import { nativeLoadError } from '../../src/pages/native-binding.js';
import { jsBackend, native } from './backends.js';

/** Memory of `pages` pages of `pageBytes`, each byte a function of its position (so a wrong page shows). */
function memoryOf(pages: number, pageBytes: number, seed: number): Uint8Array {
  const memory = new Uint8Array(pages * pageBytes);
  for (let i = 0; i < memory.length; i++) memory[i] = (i * 131 + seed) & 0xff;
  return memory;
}

const gatherCase = fc
  .record({ pageBytes: fc.constantFrom(1, 8, 512, 4096), pages: fc.integer({ min: 1, max: 96 }), seed: fc.nat(255) })
  .chain((c) =>
    fc.record({
      c: fc.constant(c),
      // Sorted runs as captures take them, and arbitrary orders (repeats included) as a direct caller may pass.
      indices: fc.oneof(fc.uniqueArray(fc.nat(c.pages - 1), { maxLength: c.pages }).map((a) => a.sort((x, y) => x - y)), fc.array(fc.nat(c.pages - 1), { maxLength: 64 })),
    }),
  );

describe('gatherPages', () => {
  test.prop([gatherCase], { numRuns: 300 })('native and TypeScript copy the same pages, each where the reference copy puts it', ({ c, indices }) => {
    expect(native, String(nativeLoadError)).toBeDefined(); // CI builds the addon: the comparison must run
    const memory = memoryOf(c.pages, c.pageBytes, c.seed);
    const idx = Uint32Array.from(indices);
    const expected = new Uint8Array(idx.length * c.pageBytes);
    idx.forEach((page, k) => expected.set(memory.subarray(page * c.pageBytes, (page + 1) * c.pageBytes), k * c.pageBytes));
    for (const backend of [native!, jsBackend]) {
      const out = new Uint8Array(idx.length * c.pageBytes + 3).fill(0xee);
      expect(backend.gatherPages(memory, c.pageBytes, idx, idx.length, out)).toBe(idx.length);
      expect(Buffer.compare(out.subarray(0, expected.length), expected)).toBe(0);
      expect([...out.subarray(expected.length)]).toEqual([0xee, 0xee, 0xee]); // nothing written past count pages
    }
  });

  it('refuses an index past the memory, a short out, an out inside the memory, and a bad count', () => {
    const memory = memoryOf(4, 64, 1);
    const out = new Uint8Array(4 * 64);
    const code = { code: 'KEMARI_INVALID_ARGUMENT' };
    expect(() => gatherPages(memory, 64, Uint32Array.of(0, 4), out)).toThrow(expect.objectContaining(code));
    expect(() => gatherPages(memory, 64, Uint32Array.of(0, 1), new Uint8Array(127))).toThrow(expect.objectContaining(code));
    expect(() => gatherPages(memory, 64, Uint32Array.of(0), memory.subarray(128))).toThrow(expect.objectContaining(code));
    expect(() => gatherPages(memory, 64, Uint32Array.of(0), out, 2)).toThrow(expect.objectContaining(code));
    expect(gatherPages(memory, 64, Uint32Array.of(3, 0), out, 1)).toBe(1); // count below indices.length: only the first
    expect(Buffer.compare(out.subarray(0, 64), memory.subarray(192, 256))).toBe(0);
    // The addon's own checks hold without the wrapper, too.
    expect(() => native!.gatherPages(memory, 64, Uint32Array.of(9), 1, out)).toThrow(RangeError);
  });
});
