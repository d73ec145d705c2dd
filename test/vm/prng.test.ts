import { describe, expect, it } from 'vitest';
import { Prng } from '../../src/vm/prng.js';
import { codeOf } from './error-of.js';

describe('Prng', () => {
  it('produces a fixed sequence for a seed (same on every run and platform)', () => {
    const p = new Prng(1);
    expect([p.nextU32(), p.nextU32(), p.nextU32(), p.nextU32()]).toEqual([2468550509, 3719962662, 3596881205, 829166893]);
    const q = new Prng(0);
    expect([q.nextU32(), q.nextU32()]).toEqual([189441948, 2745054742]);
    const r = new Prng(0xffff_ffff);
    expect([r.nextU32(), r.nextU32()]).toEqual([3748074583, 1998728902]);
  });

  it('same seed gives the same sequence, nearby seeds give different ones', () => {
    const a = new Prng(42);
    const b = new Prng(42);
    const c = new Prng(43);
    const sa = Array.from({ length: 100 }, () => a.nextU32());
    const sb = Array.from({ length: 100 }, () => b.nextU32());
    const sc = Array.from({ length: 100 }, () => c.nextU32());
    expect(sa).toEqual(sb);
    expect(sa).not.toEqual(sc);
    expect(new Set(sa).size).toBe(100);
    for (const x of sa) expect(Number.isInteger(x) && x >= 0 && x <= 0xffff_ffff).toBe(true);
  });

  it('nextInt stays in range and reaches every value', () => {
    const p = new Prng(7);
    const seen = new Set<number>();
    for (let i = 0; i < 700; i++) {
      const x = p.nextInt(7);
      expect(x >= 0 && x < 7 && Number.isInteger(x)).toBe(true);
      seen.add(x);
    }
    expect(seen.size).toBe(7);
    expect(p.nextInt(1)).toBe(0);
    const big = p.nextInt(2 ** 32);
    expect(big >= 0 && big < 2 ** 32).toBe(true);
  });

  it('nextInt is roughly uniform', () => {
    const p = new Prng(9);
    const counts = new Array<number>(4).fill(0);
    for (let i = 0; i < 4000; i++) counts[p.nextInt(4)]! += 1;
    for (const c of counts) expect(c).toBeGreaterThan(850);
  });

  it('nextFloat is in [0, 1)', () => {
    const p = new Prng(3);
    let sum = 0;
    for (let i = 0; i < 1000; i++) {
      const x = p.nextFloat();
      expect(x >= 0 && x < 1).toBe(true);
      sum += x;
    }
    expect(sum / 1000).toBeGreaterThan(0.4);
    expect(sum / 1000).toBeLessThan(0.6);
  });

  it('fill writes the next values little-endian, including a partial tail', () => {
    const reference = new Prng(11);
    const words = [reference.nextU32(), reference.nextU32()];
    const bytes = new Prng(11).fill(new Uint8Array(7));
    const expected = [0, 1, 2, 3].map((i) => (words[0]! >>> (8 * i)) & 0xff).concat([0, 1, 2].map((i) => (words[1]! >>> (8 * i)) & 0xff));
    expect([...bytes]).toEqual(expected);
    const long = new Prng(11).fill(new Uint8Array(4096));
    expect(long.some((b) => b !== 0)).toBe(true);
    expect(new Prng(11).fill(new Uint8Array(4096))).toEqual(long);
  });

  it('refuses invalid seeds and bounds', () => {
    expect(codeOf(() => new Prng(-1))).toBe('KEMARI_INVALID_ARGUMENT');
    expect(codeOf(() => new Prng(1.5))).toBe('KEMARI_INVALID_ARGUMENT');
    expect(codeOf(() => new Prng(2 ** 32))).toBe('KEMARI_INVALID_ARGUMENT');
    const p = new Prng(1);
    expect(codeOf(() => p.nextInt(0))).toBe('KEMARI_INVALID_ARGUMENT');
    expect(codeOf(() => p.nextInt(2.5))).toBe('KEMARI_INVALID_ARGUMENT');
    expect(codeOf(() => p.nextInt(2 ** 32 + 1))).toBe('KEMARI_INVALID_ARGUMENT');
  });
});
