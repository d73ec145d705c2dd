import { fc, test } from '@fast-check/vitest';
import { describe, expect } from 'vitest';
import { FrameDecoder, encodeFrame, encodeFrameToBytes } from '../../src/index.js';
import type { DecodedFrame } from '../../src/index.js';
import { arbFrame } from '../helpers/arbitraries.js';
import { stripWireFacts } from '../helpers/decode.js';

/** Normalises msgpack byte strings (Buffer on decode) so they compare equal to the Uint8Arrays sent. */
function normalise(value: unknown): unknown {
  return JSON.parse(JSON.stringify(value, (_k, v: unknown) => (v instanceof Uint8Array ? { bytes: Buffer.from(v).toString('hex') } : v)));
}

describe('property: round trips', () => {
  test.prop([fc.array(arbFrame, { minLength: 1, maxLength: 25 }), fc.array(fc.nat(), { maxLength: 40 })], { numRuns: 300 })(
    'random frame sequences decode to themselves under random chunking',
    (frames, rawCuts) => {
      const encoded = frames.map((f) => encodeFrameToBytes(f));
      const total = encoded.reduce((n, b) => n + b.byteLength, 0);
      const stream = Buffer.concat(encoded);
      const cuts = [...new Set(rawCuts.map((c) => c % (total + 1)))].sort((a, b) => a - b);
      const decoder = new FrameDecoder();
      const out: DecodedFrame[] = [];
      let at = 0;
      for (const cut of [...cuts, total]) {
        decoder.push(stream.subarray(at, cut), (f) => out.push(f));
        at = cut;
        // Never more than one partial frame held.
        expect(decoder.bufferedBytes).toBeLessThan(Math.max(...encoded.map((b) => b.byteLength)));
      }
      decoder.end();
      expect(normalise(out.map(stripWireFacts))).toEqual(normalise(frames));
      // The wire facts are the encoder's.
      out.forEach((f, i) => {
        const e = encodeFrame(frames[i]!);
        expect([f.bodyBytes, f.bodyCrc]).toEqual([e.bodyBytes, e.bodyCrc]);
      });
    },
  );
});
