import { afterEach, describe, expect, it } from 'vitest';
import type { Arbiter, Lease } from '../../src/failover/arbiter.js';
import { Primary } from '../../src/primary/primary.js';
import { Secondary } from '../../src/secondary/secondary.js';
import { SimulatedVm } from '../../src/vm/simulated-vm.js';
import { decodeHello, encodeHello } from '../../src/wire/bodies/hello.js';
import { primaryHello } from '../../src/txn/hello-for.js';

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

/** An arbiter that always grants, at a fixed generation: stands in for "this primary believes it holds generation N". */
function fixedGeneration(generation: number): Arbiter {
  const lease = (sessionId: string, holder: string, ttlMs: number): Lease => ({ sessionId, holder, generation, ttlMs });
  return {
    acquire: async (sessionId, holder, ttlMs) => lease(sessionId, holder, ttlMs),
    renew: async (l) => ({ ...l }),
    release: async () => {},
    close: async () => {},
  };
}

describe('lease generations in HELLO', () => {
  it('round-trip on the wire, and stay absent without an arbiter', () => {
    const hello = primaryHello(new SimulatedVm({ memoryBytes: 1 << 16 }), 's', []);
    expect(decodeHello(Buffer.concat(encodeHello({ ...hello, generation: 7 }))).generation).toBe(7);
    expect(decodeHello(Buffer.concat(encodeHello(hello))).generation).toBeUndefined();
  });

  it('a secondary that served generation 2 refuses a primary of generation 1 (a superseded writer)', async () => {
    const secondary = await Secondary.listen({ port: 0, sessionId: 'vm-gen', autoPromote: false });
    cleanups.push(() => secondary.close());
    const start = (generation: number) =>
      Primary.start({
        vm: new SimulatedVm({ memoryBytes: 1 << 18, seed: generation }),
        sessionId: 'vm-gen',
        secondary: { host: '127.0.0.1', port: secondary.port },
        arbiter: fixedGeneration(generation),
        reconnectDelayMs: 0,
      });
    const newer = await start(2);
    const committed = secondary.committedTxn;
    newer.close();
    await new Promise((r) => setTimeout(r, 50));
    await expect(start(1)).rejects.toMatchObject({ code: 'KEMARI_HELLO_MISMATCH' });
    expect(secondary.committedTxn).toBe(committed); // the superseded writer changed nothing
    expect(secondary.stats().lastError?.message).toContain('superseded');
    // The same or a newer generation is served.
    const again = await start(3);
    cleanups.push(() => again.close());
    expect(again.state).toBe('protected');
  });
});
