/** The in-memory pair: copies, order, asynchrony, backpressure and close semantics. */
import { describe, expect, it } from 'vitest';
import { KemariError, isKemariError } from '../../src/errors.js';
import type { Connection } from '../../src/transport/connection.js';
import { memoryPair } from '../../src/transport/memory.js';
import { collect } from '../helpers/collect.js';


function turn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function concat(chunks: readonly Uint8Array[]): number[] {
  return chunks.flatMap((chunk) => [...chunk]);
}

describe('memoryPair', () => {
  it('delivers each batch as one new array that never aliases the written buffers', async () => {
    const [a, b] = memoryPair();
    const got = collect(b);
    const backing = new Uint8Array([1, 2, 3, 4, 5, 6]);
    const header = backing.subarray(0, 2);
    const body = backing.subarray(2);
    expect(a.write([header, body])).toBe(true);
    // The writer reuses its buffer at once: what arrives must be what was written.
    backing.fill(0xee);
    await turn();
    expect(got.chunks).toHaveLength(1);
    const [chunk] = got.chunks as [Uint8Array];
    expect([...chunk]).toEqual([1, 2, 3, 4, 5, 6]);
    expect(chunk.buffer).not.toBe(backing.buffer);
    // And the receiver's copy is its own: writing into it changes nothing on the writer's side.
    chunk.fill(7);
    expect([...backing]).toEqual([0xee, 0xee, 0xee, 0xee, 0xee, 0xee]);
  });

  it('copies a single-chunk batch too', async () => {
    const [a, b] = memoryPair();
    const got = collect(b);
    const only = Uint8Array.of(1, 2, 3);
    a.write([only]);
    only[0] = 99;
    await turn();
    expect(got.chunks[0]).not.toBe(only);
    expect([...(got.chunks[0] as Uint8Array)]).toEqual([1, 2, 3]);
  });

  it('delivers asynchronously, in order, one chunk per batch, both ways', async () => {
    const [a, b] = memoryPair();
    const atB = collect(b);
    const atA = collect(a);
    for (let i = 0; i < 1000; i++) {
      a.write([Uint8Array.of(i & 0xff, i >> 8), new Uint8Array(i % 5).fill(i & 0xff)]);
      b.write([Uint8Array.of(i & 0xff)]);
    }
    a.write([]);
    a.write([new Uint8Array(0)]);
    expect(atB.chunks).toHaveLength(0);
    await turn();
    await turn();
    expect(atB.chunks).toHaveLength(1000);
    atB.chunks.forEach((chunk, i) => {
      expect(chunk.length).toBe(2 + (i % 5));
      expect(chunk[0]! | (chunk[1]! << 8)).toBe(i);
    });
    expect(concat(atA.chunks)).toEqual(Array.from({ length: 1000 }, (_, i) => i & 0xff));
  });

  it('applies backpressure above highWaterMarkBytes and emits drain once delivered', async () => {
    const [a, b] = memoryPair({ highWaterMarkBytes: 1000 });
    b.on('data', () => {});
    let drains = 0;
    a.on('drain', () => drains++);
    expect(a.write([new Uint8Array(600)])).toBe(true);
    expect(a.write([new Uint8Array(400)])).toBe(true);
    expect(a.bufferedBytes).toBe(1000);
    expect(a.write([new Uint8Array(1)])).toBe(false);
    expect(a.bufferedBytes).toBe(1001);
    await turn();
    expect(a.bufferedBytes).toBe(0);
    expect(drains).toBe(1);
    // No drain without a preceding false.
    expect(a.write([new Uint8Array(10)])).toBe(true);
    await turn();
    expect(drains).toBe(1);
  });

  it('holds batches (counting them as buffered) until the receiver listens', async () => {
    const [a, b] = memoryPair({ highWaterMarkBytes: 10 });
    let drained = false;
    a.on('drain', () => (drained = true));
    expect(a.write([Uint8Array.of(1, 2, 3)])).toBe(true);
    expect(a.write([new Uint8Array(8).fill(4)])).toBe(false);
    await sleep(10);
    expect(a.bufferedBytes).toBe(11);
    expect(drained).toBe(false);
    const got = collect(b);
    await turn();
    expect(concat(got.chunks)).toEqual([1, 2, 3, 4, 4, 4, 4, 4, 4, 4, 4]);
    expect(drained).toBe(true);
  });

  it('close() delivers everything written in both directions, then both ends close once with undefined', async () => {
    const [a, b] = memoryPair();
    const atB = collect(b);
    const atA = collect(a);
    a.write([Uint8Array.of(1)]);
    b.write([Uint8Array.of(9)]);
    a.write([Uint8Array.of(2, 3)]);
    a.close();
    expect(a.closed).toBe(true);
    expect(b.closed).toBe(true);
    expect(a.write([Uint8Array.of(4)])).toBe(false);
    expect(b.write([Uint8Array.of(8)])).toBe(false);
    a.close();
    b.close();
    expect(await atB.closed).toBeUndefined();
    expect(await atA.closed).toBeUndefined();
    expect(concat(atB.chunks)).toEqual([1, 2, 3]);
    expect(concat(atA.chunks)).toEqual([9]);
    a.close(new KemariError('KEMARI_PROTOCOL', 'late'));
    await sleep(5);
    expect(atA.closes).toEqual([undefined]);
    expect(atB.closes).toEqual([undefined]);
  });

  it('close() delivers pending data even to an end that never listened, and still closes', async () => {
    const [a, b] = memoryPair();
    const bClosed = new Promise((resolve) => b.on('close', resolve));
    a.write([Uint8Array.of(1)]);
    a.close();
    expect(await bClosed).toBeUndefined();
    expect(a.bufferedBytes).toBe(0);
  });

  it('close(error) drops undelivered data and closes both at once: the error here, CONNECTION_CLOSED there', async () => {
    const [a, b] = memoryPair();
    const atB = collect(b);
    const atA = collect(a);
    a.write([Uint8Array.of(1, 2, 3)]);
    const error = new KemariError('KEMARI_PROTOCOL', 'abort');
    a.close(error);
    a.close(error);
    b.close();
    expect(a.bufferedBytes).toBe(0);
    expect(await atA.closed).toBe(error);
    const atBError = await atB.closed;
    expect(isKemariError(atBError, 'KEMARI_CONNECTION_CLOSED')).toBe(true);
    expect(atBError?.cause).toBe(error);
    expect(atB.chunks).toEqual([]);
    await sleep(5);
    expect(atA.closes).toHaveLength(1);
    expect(atB.closes).toHaveLength(1);
  });

  it('stops delivering when a data listener aborts in the middle of a turn', async () => {
    const [a, b] = memoryPair();
    const seen: number[] = [];
    const closed = new Promise((resolve) => b.on('close', resolve));
    b.on('data', (chunk) => {
      seen.push(chunk[0]!);
      if (chunk[0] === 2) b.close(new KemariError('KEMARI_PROTOCOL', 'bad frame'));
    });
    for (let i = 1; i <= 5; i++) a.write([Uint8Array.of(i)]);
    await closed;
    expect(seen).toEqual([1, 2]);
  });

  it('lets an echo ping-pong run without starving timers', async () => {
    const [a, b] = memoryPair();
    let rounds = 0;
    b.on('data', (chunk) => b.write([chunk]));
    a.on('data', (chunk) => {
      rounds++;
      a.write([chunk]);
    });
    a.write([Uint8Array.of(1)]);
    // Reaching the end of this sleep at all shows the echo does not monopolise the event loop.
    await sleep(30);
    a.close(new KemariError('KEMARI_PROTOCOL', 'stop'));
    expect(rounds).toBeGreaterThan(1);
  });

  it('rejects an invalid high-water mark', () => {
    expect(() => memoryPair({ highWaterMarkBytes: -1 })).toThrow(expect.objectContaining({ code: 'KEMARI_INVALID_ARGUMENT' }));
    expect(() => memoryPair({ highWaterMarkBytes: 1.5 })).toThrow(expect.objectContaining({ code: 'KEMARI_INVALID_ARGUMENT' }));
  });

  it('names its peer "memory"', () => {
    const [a, b] = memoryPair();
    expect(a.peer).toBe('memory');
    expect(b.peer).toBe('memory');
    expect(a.closed).toBe(false);
  });
});
