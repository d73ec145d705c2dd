import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import { KemariError } from '../../src/index.js';
import { EventTap } from '../../src/tap/event-tap.js';
import type { ReleasedOutput } from '../../src/tap/event-tap.js';

const bytes = (s: string): Uint8Array => Uint8Array.from(Buffer.from(s));
const settled = async (p: Promise<unknown>): Promise<string> => {
  const result = await Promise.race([p.then(() => 'released', (e: KemariError) => e.code), new Promise((r) => setTimeout(() => r('held'), 20))]);
  return result as string;
};

describe('EventTap', () => {
  it('holds an output until the epoch that produced it is released, then resolves in tap order', async () => {
    const tap = new EventTap();
    const order: string[] = [];
    const a = tap.output('net0', bytes('a')).then(() => order.push('a'));
    const b = tap.output('serial0', bytes('b')).then(() => order.push('b'));
    expect(tap.seal(1).map((e) => e.id)).toEqual([1, 2]);
    const c = tap.output('net0', bytes('c')).then(() => order.push('c'));
    expect(tap.seal(2).map((e) => e.id)).toEqual([3]);
    expect(await settled(a)).toBe('held');
    expect(tap.release(1).map((r) => r.id)).toEqual([1, 2]);
    await Promise.all([a, b]);
    expect(await settled(c)).toBe('held');
    tap.release(2);
    await c;
    expect(order).toEqual(['a', 'b', 'c']);
    expect(tap.heldCount).toBe(0);
    expect(tap.releasedTxn).toBe(2);
  });

  it('an ack for a later epoch releases every earlier epoch too', () => {
    const tap = new EventTap();
    void tap.output('c', bytes('1'));
    tap.seal(4);
    void tap.output('c', bytes('2'));
    tap.seal(5);
    const released: ReleasedOutput[] = [];
    tap.on('release', (r: ReleasedOutput) => released.push(r));
    tap.release(5);
    expect(released.map((r) => [r.txn, r.id])).toEqual([
      [4, 1],
      [5, 2],
    ]);
  });

  it('outputs tapped after the seal wait for the next epoch', async () => {
    const tap = new EventTap();
    tap.seal(1);
    const late = tap.output('c', bytes('late'));
    tap.release(1);
    expect(await settled(late)).toBe('held');
    expect(tap.openCount).toBe(1);
  });

  it('copies the payload: the caller may reuse its buffer', () => {
    const tap = new EventTap();
    const buffer = bytes('abc');
    void tap.output('c', buffer);
    buffer[0] = 0x7a;
    expect(Buffer.from(tap.seal(1)[0]!.payload).toString()).toBe('abc');
  });

  it('refuses beyond heldEventsMax and heldBytesMax with KEMARI_TAP_FULL, and counts what it holds', async () => {
    const tap = new EventTap({ heldEventsMax: 2, heldBytesMax: 10 });
    void tap.output('c', new Uint8Array(4));
    void tap.output('c', new Uint8Array(4));
    await expect(tap.output('c', new Uint8Array(1))).rejects.toMatchObject({ code: 'KEMARI_TAP_FULL' });
    tap.seal(1);
    tap.release(1);
    await expect(tap.output('c', new Uint8Array(11))).rejects.toMatchObject({ code: 'KEMARI_TAP_FULL' });
    void tap.output('c', new Uint8Array(10));
    expect([tap.heldCount, tap.heldBytes]).toEqual([1, 10]);
  });

  it('discard rejects everything held, sealed or not, and every later output; nothing is released', async () => {
    const tap = new EventTap();
    const a = tap.output('c', bytes('a'));
    tap.seal(1);
    const b = tap.output('c', bytes('b'));
    const released: unknown[] = [];
    tap.on('release', (r) => released.push(r));
    tap.discard(new KemariError('KEMARI_CLOSED', 'closed'));
    await expect(a).rejects.toMatchObject({ code: 'KEMARI_CLOSED' });
    await expect(b).rejects.toMatchObject({ code: 'KEMARI_CLOSED' });
    await expect(tap.output('c', bytes('c'))).rejects.toMatchObject({ code: 'KEMARI_CLOSED' });
    expect(tap.release(1)).toEqual([]);
    expect(released).toEqual([]);
    expect(tap.heldCount).toBe(0);
  });

  it('unseal returns the outputs of unacked epochs to the running epoch, in order', () => {
    const tap = new EventTap();
    void tap.output('c', bytes('1'));
    tap.seal(1);
    void tap.output('c', bytes('2'));
    tap.seal(2);
    void tap.output('c', bytes('3'));
    tap.unseal();
    expect(tap.seal(3).map((e) => e.id)).toEqual([1, 2, 3]);
  });

  it('refuses seals out of order and bad arguments', async () => {
    const tap = new EventTap();
    tap.seal(3);
    expect(() => tap.seal(3)).toThrow(expect.objectContaining({ code: 'KEMARI_INVALID_ARGUMENT' }));
    await expect(tap.output('', bytes('x'))).rejects.toMatchObject({ code: 'KEMARI_INVALID_ARGUMENT' });
    await expect(tap.output('x'.repeat(256), bytes('x'))).rejects.toMatchObject({ code: 'KEMARI_INVALID_ARGUMENT' });
  });

  it('the Writable form holds the writer until release (its backpressure gates the stream)', async () => {
    const tap = new EventTap();
    const writable = tap.writable('serial0');
    let epoch = 0;
    tap.on('output', () => {
      // A checkpoint for every output, acked a little later.
      const txn = ++epoch;
      setImmediate(() => {
        tap.seal(txn);
        setImmediate(() => tap.release(txn));
      });
    });
    const released: string[] = [];
    tap.on('release', (r: ReleasedOutput) => released.push(Buffer.from(r.payload).toString()));
    await pipeline(Readable.from(['one', 'two', 'three'].map((s) => Buffer.from(s))), writable);
    expect(released).toEqual(['one', 'two', 'three']);
  });
});

describe('EventTap pass-through (unprotected operation)', () => {
  it('releases held outputs and new ones only while the gate is open; a shut gate holds them until flushed', async () => {
    const tap = new EventTap();
    const first = tap.output('c', bytes('1'));
    tap.seal(1);
    let open = false;
    expect(tap.passThrough(() => open)).toEqual([]);
    const second = tap.output('c', bytes('2'));
    expect(await settled(first)).toBe('held');
    open = true;
    expect(tap.flushPassThrough().map((r) => [r.txn, r.id])).toEqual([
      [0, 1],
      [0, 2],
    ]);
    await Promise.all([first, second]);
    await tap.output('c', bytes('3')); // the gate is open: straight through
    open = false;
    expect(await settled(tap.output('c', bytes('4')))).toBe('held');
  });
});
