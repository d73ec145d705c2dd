import { fc, test } from '@fast-check/vitest';
import { describe, expect } from 'vitest';
import { FrameDecoder, HEADER_BYTES, KemariError, MAGIC, crc32c, encodeFrameToBytes } from '../../src/index.js';
import type { DecodedFrame } from '../../src/index.js';
import { arbFrame } from '../helpers/arbitraries.js';
import { stripWireFacts } from '../helpers/decode.js';
import { rawFrame } from '../helpers/raw-frame.js';

const BODY_BYTES_MAX = 64 * 1024;

/**
 * Feeds `stream` in the given chunks. Returns the frames handed on and the error, after checking the decoder's
 * promises at every step: only KemariError is thrown, and never more than one header plus bodyBytesMax is held.
 */
function feed(stream: Uint8Array, cuts: number[]): { frames: DecodedFrame[]; error: unknown } {
  const decoder = new FrameDecoder({ bodyBytesMax: BODY_BYTES_MAX });
  const frames: DecodedFrame[] = [];
  let at = 0;
  let error: unknown;
  try {
    for (const cut of [...cuts.map((c) => c % (stream.byteLength + 1)).sort((a, b) => a - b), stream.byteLength]) {
      if (cut < at) continue;
      decoder.push(stream.subarray(at, cut), (f) => frames.push(f));
      at = cut;
      expect(decoder.bufferedBytes).toBeLessThanOrEqual(HEADER_BYTES + BODY_BYTES_MAX);
    }
    decoder.end();
  } catch (e) {
    error = e;
  }
  if (error !== undefined && !(error instanceof KemariError)) throw error;
  return { frames, error };
}

/** The decoded frame re-encoded: its body must check out against the CRC it was handed on with. */
function reencode(frame: DecodedFrame): Uint8Array {
  const bytes = encodeFrameToBytes(stripWireFacts(frame));
  expect(crc32c(bytes.subarray(HEADER_BYTES))).toBe(frame.bodyCrc);
  return bytes;
}

const cuts = fc.array(fc.nat(), { maxLength: 12 });

describe('fuzz: the decoder under hostile input', () => {
  test.prop([fc.uint8Array({ maxLength: 4096 }), cuts], { numRuns: 1000 })('random bytes', (stream, c) => {
    const { frames } = feed(stream, c);
    expect(frames).toHaveLength(0);
  });

  test.prop([fc.uint8Array({ minLength: 28, maxLength: 600 }), cuts], { numRuns: 1000 })(
    'random bytes behind a valid magic and version',
    (rest, c) => {
      const stream = Uint8Array.from([...MAGIC, 1, ...rest]);
      feed(stream, c);
    },
  );

  test.prop(
    [fc.integer({ min: 1, max: 12 }), fc.uint8Array({ maxLength: 700 }), fc.constantFrom(0, 1), cuts],
    { numRuns: 3000 },
  )('random bodies under valid checksums reach every body decoder and fail only with codes', (type, body, flags, c) => {
    const { frames, error } = feed(rawFrame({ type, body, flags: type === 3 ? flags : 0 }), c);
    // Either the body decoded (then it re-encodes to a body with the same CRC) or it was refused with a code.
    if (error === undefined) {
      expect(frames).toHaveLength(1);
      if (type !== 1 && type !== 4) expect(Buffer.from(reencode(frames[0]!).subarray(HEADER_BYTES)).equals(Buffer.from(body))).toBe(true);
    } else expect(frames).toHaveLength(0);
  });

  const mutation = fc.oneof(
    fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
    fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), byte: fc.integer({ min: 0, max: 255 }) }),
    fc.record({ kind: fc.constant('delete' as const), at: fc.nat(), length: fc.integer({ min: 1, max: 40 }) }),
    fc.record({ kind: fc.constant('duplicate' as const), at: fc.nat(), length: fc.integer({ min: 1, max: 200 }) }),
    fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
  );

  test.prop([fc.array(arbFrame, { minLength: 1, maxLength: 8 }), fc.array(mutation, { minLength: 1, maxLength: 4 }), cuts], {
    numRuns: 1000,
  })('mutated valid streams never hand on a frame that was not sent', (frames, mutations, c) => {
    const encoded = frames.map((f) => encodeFrameToBytes(f, { bodyBytesMax: BODY_BYTES_MAX }));
    const sent = new Set(encoded.map((b) => Buffer.from(b).toString('hex')));
    let stream = Buffer.concat(encoded);
    for (const m of mutations) {
      const at = m.at % Math.max(1, stream.byteLength);
      if (m.kind === 'flip') {
        stream = Buffer.from(stream);
        if (stream.byteLength > 0) stream[at]! ^= 1 << m.bit;
      } else if (m.kind === 'insert') stream = Buffer.concat([stream.subarray(0, at), Buffer.of(m.byte), stream.subarray(at)]);
      else if (m.kind === 'delete') stream = Buffer.concat([stream.subarray(0, at), stream.subarray(at + m.length)]);
      else if (m.kind === 'duplicate') stream = Buffer.concat([stream.subarray(0, at + m.length), stream.subarray(at)]);
      else stream = stream.subarray(0, at);
    }
    const { frames: out } = feed(stream, c);
    for (const frame of out) expect(sent.has(Buffer.from(reencode(frame)).toString('hex'))).toBe(true);
  });
});
