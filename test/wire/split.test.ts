import { describe, expect, it } from 'vitest';
import { FrameDecoder, FrameType, HEADER_BYTES, PageKind, encodeFrameToBytes } from '../../src/index.js';
import type { DecodedFrame, Frame } from '../../src/index.js';
import { decodeChunked, stripWireFacts } from '../helpers/decode.js';
import { SAMPLE_FRAMES } from '../helpers/sample-frames.js';

describe('streaming decode of every frame type', () => {
  describe.each(Object.entries(SAMPLE_FRAMES))('%s', (_name, frame) => {
    const bytes = encodeFrameToBytes(frame);

    it('decodes when fed one byte at a time', () => {
      const decoder = new FrameDecoder();
      const frames: DecodedFrame[] = [];
      for (let i = 0; i < bytes.byteLength; i++) {
        decoder.push(bytes.subarray(i, i + 1), (f) => frames.push(f));
        // Until the last byte nothing is handed on, and the decoder holds exactly what it was given.
        if (i < bytes.byteLength - 1) {
          expect(frames).toHaveLength(0);
          expect(decoder.bufferedBytes).toBe(i + 1 - (i + 1 >= HEADER_BYTES ? HEADER_BYTES : 0));
        }
      }
      decoder.end();
      expect(frames.map(stripWireFacts)).toEqual([frame]);
    });

    it('decodes when split at every offset', () => {
      // Large frames are cut at every offset of the header and around every 509th byte of the body.
      const step = bytes.byteLength > 1024 ? 509 : 1;
      for (let cut = 0; cut <= bytes.byteLength; cut += cut < HEADER_BYTES + 2 ? 1 : step) {
        expect(decodeChunked(bytes, [cut]).map(stripWireFacts)).toEqual([frame]);
      }
    });
  });
});

describe('many frames in one buffer', () => {
  it('decodes 10,000 frames pushed as a single buffer, in order', () => {
    const page = new Uint8Array(512).fill(7);
    const frames: Frame[] = [];
    for (let i = 0; i < 10_000; i++) {
      if (i % 3 === 0) frames.push({ type: FrameType.BEGIN, txn: i + 1, seq: 0, body: { full: false, baseTxn: i, releasedTxn: i } });
      else if (i % 3 === 1)
        frames.push({ type: FrameType.PAGES, txn: i, seq: 1, body: { pageBytes: 512, pages: [{ index: i, kind: PageKind.RAW, data: page }] } });
      else frames.push({ type: FrameType.EVENT, txn: i, seq: 2, body: { id: i, channel: 'serial0', payload: Uint8Array.of(i & 0xff) } });
    }
    const encoded = frames.map((f) => encodeFrameToBytes(f));
    const all = new Uint8Array(encoded.reduce((n, b) => n + b.byteLength, 0));
    let at = 0;
    for (const b of encoded) {
      all.set(b, at);
      at += b.byteLength;
    }
    const decoder = new FrameDecoder();
    const out: DecodedFrame[] = [];
    decoder.push(all, (f) => out.push(f));
    decoder.end();
    expect(out).toHaveLength(10_000);
    expect(decoder.bufferedBytes).toBe(0);
    // Re-encoding what was decoded gives back the exact stream (cheaper than deep equality of 10,000 objects).
    expect(Buffer.concat(out.map((f) => encodeFrameToBytes(stripWireFacts(f)))).equals(all)).toBe(true);
    expect(out.map((f) => f.txn)).toEqual(frames.map((f) => f.txn));
  });
});
