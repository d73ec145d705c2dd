import { describe, expect, it } from 'vitest';
import { CaptureBuffers } from '../../src/vm/capture-buffers.js';

describe('CaptureBuffers', () => {
  it('hands a buffer back out once given back, the smallest that fits, of the kind asked for', () => {
    const pool = new CaptureBuffers();
    const a = pool.take(3 << 20, false);
    const b = pool.take(1000, false);
    expect(a.length).toBe(3 << 20);
    expect(a.byteOffset).toBe(0);
    expect(a.buffer).not.toBe(b.buffer);
    pool.give(a);
    pool.give(b);
    const c = pool.take(500, false);
    expect(c.buffer).toBe(b.buffer); // the smallest free buffer that holds 500 bytes
    expect(c.length).toBe(500);
    const shared = pool.take(500, true);
    expect(shared.buffer).toBeInstanceOf(SharedArrayBuffer); // the free plain buffer is not of the kind asked for
    expect(pool.take(2 << 20, false).buffer).toBe(a.buffer);
    expect(pool.allocated).toBe(3);
    expect(pool.reused).toBe(2);
  });

  it("capacity 'power-of-two': a buffer of the next power of two (a MiB at least), so a somewhat larger need reuses it", () => {
    const pool = new CaptureBuffers({ capacity: 'power-of-two' });
    const a = pool.take(5 << 20, false);
    expect(a.length).toBe(5 << 20);
    expect(a.buffer.byteLength).toBe(8 << 20);
    expect(pool.take(1000, false).buffer.byteLength).toBe(1 << 20);
    pool.give(a);
    expect(pool.take(7 << 20, false).buffer).toBe(a.buffer); // the default granule would have needed a new one
    expect(new CaptureBuffers().take(5 << 20, false).buffer.byteLength).toBe(5 << 20);
    expect(() => new CaptureBuffers({ capacity: 'huge' as never })).toThrow(expect.objectContaining({ code: 'KEMARI_INVALID_ARGUMENT' }));
  });

  it('ignores a buffer it did not lend, or given back twice: never lends one buffer twice at once', () => {
    const pool = new CaptureBuffers();
    pool.give(new Uint8Array(4096));
    expect(pool.bytesFree).toBe(0);
    const a = pool.take(4096, false);
    pool.give(a);
    pool.give(a);
    const b = pool.take(4096, false);
    const c = pool.take(4096, false);
    expect(b.buffer).toBe(a.buffer);
    expect(c.buffer).not.toBe(a.buffer);
  });

  it('keeps at most buffersMax free buffers and freeBytesMax free bytes, preferring the larger', () => {
    const pool = new CaptureBuffers({ buffersMax: 2, freeBytesMax: 4 << 20 });
    const views = [1, 2, 3].map((mib) => pool.take(mib << 20, false));
    for (const v of views) pool.give(v);
    expect(pool.bytesFree).toBe(3 << 20); // the 3 MiB buffer, for which the smaller two made room
    expect(pool.bytesFree).toBeLessThanOrEqual(4 << 20);
    const big = pool.take(5 << 20, false);
    pool.give(big); // larger than freeBytesMax on its own: left to the garbage collector
    expect(pool.bytesFree).toBeLessThanOrEqual(4 << 20);
    expect(() => new CaptureBuffers({ buffersMax: -1 })).toThrow(expect.objectContaining({ code: 'KEMARI_INVALID_ARGUMENT' }));
  });
});
