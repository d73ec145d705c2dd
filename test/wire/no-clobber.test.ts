import { describe, expect, it } from 'vitest';
import { FrameDecoder, FrameType, PageKind, encodeFrameToBytes } from '../../src/index.js';
import type { DecodedFrame, PagesFrame } from '../../src/index.js';

function pagesFrame(txn: number, fill: number): PagesFrame {
  const data = new Uint8Array(4096 * 3).fill(fill);
  return {
    type: FrameType.PAGES,
    txn,
    seq: 1,
    body: {
      pageBytes: 4096,
      pages: [0, 1, 2].map((i) => ({ index: i, kind: PageKind.RAW, data: data.subarray(i * 4096, (i + 1) * 4096) })),
    },
  };
}

describe('no-clobber: decoded frames keep their bytes', () => {
  it('frames assembled across chunks are not overwritten by later input', () => {
    // Feed through one reused scratch-sized window pattern: many frames, each spanning several small chunks.
    const decoder = new FrameDecoder();
    const kept: DecodedFrame[] = [];
    for (let n = 0; n < 50; n++) {
      const bytes = encodeFrameToBytes(pagesFrame(n + 1, n));
      for (let at = 0; at < bytes.byteLength; at += 1000) {
        decoder.push(Uint8Array.from(bytes.subarray(at, at + 1000)), (f) => kept.push(f));
      }
    }
    expect(kept).toHaveLength(50);
    kept.forEach((frame, n) => {
      if (frame.type !== FrameType.PAGES) throw new Error('expected PAGES');
      for (const page of frame.body.pages) expect(page.data.every((b) => b === n)).toBe(true);
    });
  });

  it('headers spanning chunks are parsed from a scratch that frames never alias', () => {
    const decoder = new FrameDecoder();
    const kept: DecodedFrame[] = [];
    const frames = [1, 2, 3, 4].map((n) => encodeFrameToBytes(pagesFrame(n, 0x10 * n)));
    // Cut every header in the middle so each one goes through the scratch.
    for (const bytes of frames) {
      decoder.push(bytes.subarray(0, 17), (f) => kept.push(f));
      decoder.push(bytes.subarray(17), (f) => kept.push(f));
    }
    expect(kept.map((f) => f.txn)).toEqual([1, 2, 3, 4]);
    kept.forEach((frame, i) => {
      if (frame.type !== FrameType.PAGES) throw new Error('expected PAGES');
      expect(frame.body.pages[2]!.data[4095]).toBe(0x10 * (i + 1));
    });
  });

  it('a frame inside one chunk is a view of that chunk (zero copy), and only of its own bytes', () => {
    const bytes = encodeFrameToBytes(pagesFrame(1, 0xab));
    const decoder = new FrameDecoder();
    let frame: DecodedFrame | undefined;
    decoder.push(bytes, (f) => (frame = f));
    if (frame?.type !== FrameType.PAGES) throw new Error('expected PAGES');
    const data = frame.body.pages[0]!.data;
    expect(data.buffer).toBe(bytes.buffer);
    expect(data.byteLength).toBe(4096);
  });
});

describe('allocateBody', () => {
  it('assembles spanning bodies into the memory the caller supplies, and refuses a wrong size', () => {
    const staging = new Uint8Array(1 << 16);
    const bytes = encodeFrameToBytes(pagesFrame(1, 0x5a));
    const decoder = new FrameDecoder({ allocateBody: (n) => staging.subarray(100, 100 + n) });
    let frame: DecodedFrame | undefined;
    decoder.push(bytes.subarray(0, 5000), (f) => (frame = f));
    decoder.push(bytes.subarray(5000), (f) => (frame = f));
    if (frame?.type !== FrameType.PAGES) throw new Error('expected PAGES');
    expect(frame.body.pages[0]!.data.buffer).toBe(staging.buffer);
    expect(frame.body.pages[2]!.data.every((b) => b === 0x5a)).toBe(true);

    const liar = new FrameDecoder({ allocateBody: (n) => new Uint8Array(n - 1) });
    liar.push(bytes.subarray(0, 5000), () => {});
    expect(() => liar.push(bytes.subarray(5000), () => {})).toThrow(expect.objectContaining({ code: 'KEMARI_INVALID_ARGUMENT' }));
  });
});
