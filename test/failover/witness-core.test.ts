import { fc, test } from '@fast-check/vitest';
import { describe, expect, it } from 'vitest';
import { WitnessCore } from '../../src/failover/witness-core.js';
import type { Lease } from '../../src/failover/arbiter.js';

describe('WitnessCore', () => {
  it('grants to one holder at a time, renews the holder, and hands over only after expiry with a new generation', () => {
    const w = new WitnessCore();
    const a = w.acquire('vm', 'primary', 100, 0)!;
    expect(a.generation).toBe(1);
    expect(w.acquire('vm', 'secondary', 100, 50)).toBeUndefined();
    expect(w.renew(a, 90)).toEqual(a);
    expect(w.acquire('vm', 'secondary', 100, 150)).toBeUndefined(); // renewed at 90: runs until 190
    const b = w.acquire('vm', 'secondary', 100, 190)!;
    expect(b.generation).toBe(2);
    expect(w.renew(a, 191)).toBeUndefined(); // the old holder finds its lease superseded
    expect(w.acquire('vm', 'primary', 100, 191)).toBeUndefined();
  });

  it('a released lease can be taken at once; the generation still grows', () => {
    const w = new WitnessCore();
    const a = w.acquire('vm', 'primary', 10_000, 0)!;
    w.release(a, 5);
    const b = w.acquire('vm', 'secondary', 10_000, 6)!;
    expect(b.generation).toBe(2);
    w.release(a, 7); // a stale release does nothing
    expect(w.acquire('vm', 'primary', 10_000, 8)).toBeUndefined();
  });

  it('survives a restart from its snapshot without reusing a generation', () => {
    const w = new WitnessCore();
    w.acquire('vm', 'primary', 100, 0);
    const restarted = new WitnessCore(undefined, w.snapshot());
    expect(restarted.acquire('vm', 'secondary', 100, 500)!.generation).toBe(2);
  });

  it('bounds sessions, names and ttl', () => {
    const w = new WitnessCore({ sessionsMax: 1, ttlMsMax: 1000, nameBytesMax: 8 });
    w.acquire('a', 'h', 10, 0);
    expect(() => w.acquire('b', 'h', 10, 0)).toThrow(expect.objectContaining({ code: 'KEMARI_INVALID_ARGUMENT' }));
    expect(() => w.acquire('a', 'h', 1001, 0)).toThrow(expect.objectContaining({ code: 'KEMARI_INVALID_ARGUMENT' }));
    expect(() => w.acquire('a', 'x'.repeat(9), 10, 0)).toThrow(expect.objectContaining({ code: 'KEMARI_INVALID_ARGUMENT' }));
  });

  const op = fc.oneof(
    fc.record({ kind: fc.constant('acquire' as const), who: fc.constantFrom('p', 's', 'x'), dt: fc.integer({ min: 0, max: 60 }) }),
    fc.record({ kind: fc.constant('renew' as const), who: fc.constantFrom('p', 's', 'x'), dt: fc.integer({ min: 0, max: 60 }) }),
    fc.record({ kind: fc.constant('release' as const), who: fc.constantFrom('p', 's', 'x'), dt: fc.integer({ min: 0, max: 60 }) }),
  );

  test.prop([fc.array(op, { maxLength: 200 })], { numRuns: 300 })('never two holders with unexpired leases; generations never repeat', (ops) => {
    const w = new WitnessCore();
    const held = new Map<string, Lease>();
    const granted = new Map<number, string>();
    let now = 0;
    for (const o of ops) {
      now += o.dt;
      if (o.kind === 'acquire') {
        const lease = w.acquire('vm', o.who, 50, now);
        if (lease !== undefined) {
          held.set(o.who, lease);
          const before = granted.get(lease.generation);
          expect(before === undefined || before === o.who).toBe(true);
          granted.set(lease.generation, o.who);
          // Every other holder's lease is now expired or superseded: renewing it must fail.
          for (const [who, other] of held) if (who !== o.who) expect(w.renew(other, now)).toBeUndefined();
        }
      } else if (o.kind === 'renew') {
        const lease = held.get(o.who);
        if (lease !== undefined && w.renew(lease, now) === undefined) held.delete(o.who);
      } else {
        const lease = held.get(o.who);
        if (lease !== undefined) {
          w.release(lease, now);
          held.delete(o.who);
        }
      }
    }
  });
});
