/** The fault-injecting pair: exact cuts at every offset, seeded splits and delays, close semantics. */
import { describe, expect, it } from 'vitest';
import { KemariError, isKemariError } from '../../src/errors.js';
import type { Connection } from '../../src/transport/connection.js';
import { faultyPair } from '../../src/transport/faulty.js';
import type { FaultyPairOptions } from '../../src/transport/faulty.js';
import { collect } from '../helpers/collect.js';


function bytesOf(chunks: readonly Uint8Array[]): number[] {
  return chunks.flatMap((chunk) => [...chunk]);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A small "replication stream": frames of varying sizes (a 4-byte header part and a body part each). */
const FRAMES: Uint8Array[][] = Array.from({ length: 12 }, (_, i) => [
  Uint8Array.of(0x4b, i, 0, 0),
  Uint8Array.from({ length: (i * 7) % 23 }, (_, j) => (i * 31 + j) & 0xff),
]);
const STREAM = FRAMES.flat().flatMap((part) => [...part]);
const BOUNDARIES = FRAMES.reduce<number[]>((acc, frame) => [...acc, (acc.at(-1) ?? 0) + frame[0]!.length + frame[1]!.length], [0]);

/** Writes the frames from `from`, a few per turn, as a sender would. */
async function send(from: Connection): Promise<void> {
  for (let i = 0; i < FRAMES.length; i++) {
    from.write(FRAMES[i]!);
    if (i % 3 === 2) await new Promise((resolve) => setImmediate(resolve));
  }
}

/** Cuts at `cutAfterBytes` and checks that exactly that prefix arrived, then both ends closed once with CONNECTION_CLOSED. */
async function checkCut(options: FaultyPairOptions & { cutAfterBytes: number }): Promise<void> {
  const [a, b] = faultyPair(options);
  const atB = collect(b);
  const atA = collect(a);
  await send(a);
  const [errorAtA, errorAtB] = await Promise.all([atA.closed, atB.closed]);
  expect(bytesOf(atB.chunks), `cut at ${options.cutAfterBytes}`).toEqual(STREAM.slice(0, options.cutAfterBytes));
  expect(atB.chunks.every((chunk) => chunk.length > 0)).toBe(true);
  for (const error of [errorAtA, errorAtB]) {
    expect(isKemariError(error, 'KEMARI_CONNECTION_CLOSED')).toBe(true);
    expect(error?.details).toMatchObject({ cutAfterBytes: options.cutAfterBytes, cutDirection: 'a-to-b' });
  }
  expect(a.closed && b.closed).toBe(true);
  expect(a.write([Uint8Array.of(1)])).toBe(false);
  expect(b.write([Uint8Array.of(1)])).toBe(false);
  // Nothing more arrives, and nobody closes twice.
  await new Promise((resolve) => setImmediate(resolve));
  await new Promise((resolve) => setImmediate(resolve));
  expect(bytesOf(atB.chunks)).toHaveLength(options.cutAfterBytes);
  expect(atA.closes).toHaveLength(1);
  expect(atB.closes).toHaveLength(1);
}

describe('faultyPair', () => {
  it('without faults behaves like a memory pair', async () => {
    const [a, b] = faultyPair();
    const atB = collect(b);
    const atA = collect(a);
    await send(a);
    b.write([Uint8Array.of(7, 8)]);
    a.close();
    expect(await atB.closed).toBeUndefined();
    expect(await atA.closed).toBeUndefined();
    expect(bytesOf(atB.chunks)).toEqual(STREAM);
    expect(bytesOf(atA.chunks)).toEqual([7, 8]);
    expect(atB.chunks).toHaveLength(FRAMES.length);
  });

  it('cuts after exactly N bytes for N = 0, 1 and every frame boundary', async () => {
    expect(BOUNDARIES.at(-1)).toBe(STREAM.length);
    for (const cutAfterBytes of new Set([0, 1, ...BOUNDARIES])) await checkCut({ cutAfterBytes });
  });

  it('cuts after exactly N bytes at every offset of the stream, with random splits', async () => {
    for (let cutAfterBytes = 0; cutAfterBytes <= STREAM.length; cutAfterBytes++) {
      await checkCut({ cutAfterBytes, chunkBytesMax: 5, seed: cutAfterBytes });
    }
  });

  it('cuts exactly with random delays too', async () => {
    for (const cutAfterBytes of [0, 1, 17, BOUNDARIES[5]!, STREAM.length - 1, STREAM.length]) {
      await checkCut({ cutAfterBytes, chunkBytesMax: 9, delayMsMax: 2, seed: 42 + cutAfterBytes });
    }
  });

  it('does not cut when fewer bytes are sent; a graceful close then works', async () => {
    const [a, b] = faultyPair({ cutAfterBytes: STREAM.length + 1, chunkBytesMax: 4 });
    const atB = collect(b);
    await send(a);
    await sleep(10);
    expect(bytesOf(atB.chunks)).toEqual(STREAM);
    expect(atB.closes).toEqual([]);
    a.close();
    expect(await atB.closed).toBeUndefined();
  });

  it('counts only the cut direction: the other way flows freely until the cut', async () => {
    const [a, b] = faultyPair({ cutAfterBytes: 3, cutDirection: 'b-to-a' });
    const atA = collect(a);
    const atB = collect(b);
    a.write([new Uint8Array(100).fill(1)]);
    await sleep(5);
    expect(bytesOf(atB.chunks)).toHaveLength(100);
    expect(atA.closes).toEqual([]);
    b.write([Uint8Array.of(1, 2), Uint8Array.of(3, 4, 5)]);
    const error = await atA.closed;
    expect(isKemariError(error, 'KEMARI_CONNECTION_CLOSED')).toBe(true);
    expect(bytesOf(atA.chunks)).toEqual([1, 2, 3]);
    expect(isKemariError(await atB.closed, 'KEMARI_CONNECTION_CLOSED')).toBe(true);
  });

  it('splits deterministically from the seed, into pieces of at most chunkBytesMax', async () => {
    const sizes = async (seed: number): Promise<number[]> => {
      const [a, b] = faultyPair({ chunkBytesMax: 6, seed });
      const atB = collect(b);
      await send(a);
      a.close();
      await atB.closed;
      expect(bytesOf(atB.chunks)).toEqual(STREAM);
      return atB.chunks.map((chunk) => chunk.length);
    };
    const first = await sizes(7);
    expect(await sizes(7)).toEqual(first);
    expect(await sizes(8)).not.toEqual(first);
    expect(Math.max(...first)).toBeLessThanOrEqual(6);
    expect(first.length).toBeGreaterThan(FRAMES.length);
  });

  it('keeps order under random delays, and close() waits for delayed pieces', async () => {
    const [a, b] = faultyPair({ chunkBytesMax: 3, delayMsMax: 3, seed: 5 });
    const atB = collect(b);
    const atA = collect(a);
    await send(a);
    a.close();
    expect(await atB.closed).toBeUndefined();
    expect(await atA.closed).toBeUndefined();
    expect(bytesOf(atB.chunks)).toEqual(STREAM);
  });

  it('close(error) stops deliveries at once, even of delayed pieces', async () => {
    const [a, b] = faultyPair({ chunkBytesMax: 2, delayMsMax: 5, seed: 3 });
    const atB = collect(b);
    const atA = collect(a);
    await send(a);
    await sleep(1);
    const error = new KemariError('KEMARI_PROTOCOL', 'abort');
    a.close(error);
    const delivered = bytesOf(atB.chunks).length;
    expect(await atA.closed).toBe(error);
    expect(isKemariError(await atB.closed, 'KEMARI_CONNECTION_CLOSED')).toBe(true);
    await sleep(20);
    expect(bytesOf(atB.chunks)).toHaveLength(delivered);
    expect(delivered).toBeLessThan(STREAM.length);
    expect(atA.closes).toHaveLength(1);
    expect(atB.closes).toHaveLength(1);
  });

  it('holds deliveries until the receiver listens, like the memory pair', async () => {
    const [a, b] = faultyPair({ chunkBytesMax: 3, cutAfterBytes: 5 });
    a.write([Uint8Array.of(1, 2, 3, 4, 5, 6, 7)]);
    await sleep(5);
    const atB = collect(b);
    await atB.closed;
    expect(bytesOf(atB.chunks)).toEqual([1, 2, 3, 4, 5]);
  });

  it('rejects invalid options', () => {
    const bad: FaultyPairOptions[] = [
      { cutAfterBytes: -1 },
      { cutAfterBytes: 1.5 },
      { chunkBytesMax: 0 },
      { delayMsMax: -1 },
      { seed: Number.NaN },
      { cutDirection: 'sideways' as 'a-to-b' },
      { highWaterMarkBytes: -5 },
    ];
    for (const options of bad) {
      expect(() => faultyPair(options), JSON.stringify(options)).toThrow(expect.objectContaining({ code: 'KEMARI_INVALID_ARGUMENT' }));
    }
  });
});
