import { describe, expect, it } from 'vitest';
import { detachPages } from '../../src/primary/detach-pages.js';
import { PageKind } from '../../src/wire/bodies/pages.js';
import type { Page } from '../../src/wire/bodies/pages.js';

const PAGE = 4096;

function guest(pages: number): Uint8Array {
  const memory = new Uint8Array(pages * PAGE);
  for (let i = 0; i < memory.length; i++) memory[i] = (i * 31 + (i >> 12)) & 0xff;
  return memory;
}

const view = (memory: Uint8Array, index: number): Page => ({ index, kind: PageKind.RAW, data: memory.subarray(index * PAGE, (index + 1) * PAGE) });

describe('detachPages: the whole pages of an in-place capture copied out of guest memory', () => {
  it('copies every RAW view into one send buffer, in page order; DELTA and ZERO pages pass through as they are', () => {
    const memory = guest(16);
    const delta: Page = { index: 5, kind: PageKind.DELTA, data: Uint8Array.of(0, 1, 9) };
    const zero: Page = { index: 6, kind: PageKind.ZERO, data: new Uint8Array(0) };
    const pages = [view(memory, 2), view(memory, 3), delta, zero, view(memory, 11)];
    const taken: number[] = [];
    const { pages: out, send } = detachPages(pages, PAGE, (bytes) => (taken.push(bytes), new Uint8Array(bytes)));
    expect(taken).toEqual([3 * PAGE]);
    expect(send.byteLength).toBe(3 * PAGE);
    expect(out.map((p) => [p.index, p.kind])).toEqual(pages.map((p) => [p.index, p.kind]));
    expect(out[2]).toBe(delta);
    expect(out[3]).toBe(zero);
    for (const [i, index] of [[0, 2], [1, 3], [4, 11]] as const) {
      expect(out[i]!.data.buffer).toBe(send.buffer);
      expect(out[i]!.data).toEqual(memory.subarray(index * PAGE, (index + 1) * PAGE));
    }
    // Copies: the guest writing afterwards changes nothing sent.
    memory.fill(0);
    expect(out[4]!.data).toEqual(guest(16).subarray(11 * PAGE, 12 * PAGE));
  });

  it('copies views that are not page-aligned views of one buffer one by one, to the same result', () => {
    const a = guest(4);
    const b = guest(4).map((x) => x ^ 0xff);
    const odd = new Uint8Array(PAGE + 8).subarray(8);
    odd.set(a.subarray(PAGE, 2 * PAGE));
    const pages = [view(a, 0), { index: 1, kind: PageKind.RAW, data: odd }, view(b, 2)];
    const { pages: out, send } = detachPages(pages, PAGE, (bytes) => new Uint8Array(bytes));
    expect(send.byteLength).toBe(3 * PAGE);
    expect(out.map((p) => p.data)).toEqual([a.subarray(0, PAGE), a.subarray(PAGE, 2 * PAGE), b.subarray(2 * PAGE, 3 * PAGE)]);
    expect(out.every((p) => p.data.buffer === send.buffer)).toBe(true);
  });

  it('takes no buffer when no page is whole', () => {
    let asked = false;
    const pages: Page[] = [{ index: 1, kind: PageKind.ZERO, data: new Uint8Array(0) }];
    const { pages: out, send } = detachPages(pages, PAGE, (bytes) => ((asked = true), new Uint8Array(bytes)));
    expect(asked).toBe(false);
    expect(send.byteLength).toBe(0);
    expect(out).toEqual(pages);
  });
});
