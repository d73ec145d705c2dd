import { describe, expect, it } from 'vitest';
import { StagingArena } from '../../src/txn/staging-arena.js';

describe('StagingArena', () => {
  it('hands out disjoint memory until reset, then reuses it; what does not fit is allocated fresh', () => {
    const arena = new StagingArena(100);
    const a = arena.allocate(60);
    const b = arena.allocate(40);
    a.fill(1);
    b.fill(2);
    expect(a.every((x) => x === 1) && b.every((x) => x === 2)).toBe(true);
    expect(a.buffer).toBe(b.buffer);
    const c = arena.allocate(1);
    expect(c.buffer).not.toBe(a.buffer);
    expect(arena.overflowedBytes).toBe(1);
    arena.reset();
    const d = arena.allocate(10);
    expect(d.buffer).toBe(a.buffer);
    expect(d.byteOffset).toBe(a.byteOffset);
  });
});
