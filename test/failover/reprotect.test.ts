/** After a failover the promoted VM is protected again, to a fresh secondary, under the adopted lease. */
import { afterEach, describe, expect, it } from 'vitest';
import { Primary } from '../../src/primary/primary.js';
import type { PrimaryCapture } from '../../src/primary/primary.js';
import { Secondary } from '../../src/secondary/secondary.js';
import type { Promotion } from '../../src/secondary/secondary.js';
import { WitnessArbiter } from '../../src/failover/witness-arbiter.js';
import { WitnessServer } from '../../src/failover/witness-server.js';
import { digestHex } from '../../src/replica/state-digest.js';
import { SimulatedVm } from '../../src/vm/simulated-vm.js';
import { Workload } from '../../src/vm/workload.js';

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

async function run(vm: SimulatedVm, primary: Primary, steps: number, seed: number): Promise<void> {
  const outputs: Array<Promise<void>> = [];
  const workload = new Workload(vm, { seed, outputEvery: 2, output: (c, d) => outputs.push(primary.tap.output(c, d)) });
  for (let i = 0; i < steps; i++) {
    workload.step();
    await new Promise((r) => setImmediate(r));
  }
  await Promise.all(outputs);
}

describe('re-protection', () => {
  it('fail over from A to B, then protect B to a fresh C: C holds B’s epochs, and the lease moves with the writer', async () => {
    const witness = await WitnessServer.listen();
    cleanups.push(() => witness.close());
    const arbiter = async () => {
      const a = await WitnessArbiter.connect({ port: witness.port });
      cleanups.push(() => a.close());
      return a;
    };
    const b = await Secondary.listen({ port: 0, sessionId: 'vm-r', arbiter: await arbiter(), leaseTtlMs: 500, verify: true });
    cleanups.push(() => b.close());
    const vmA = new SimulatedVm({ memoryBytes: 1 << 20, seed: 61 });
    const a = await Primary.start({ vm: vmA, sessionId: 'vm-r', secondary: { host: '127.0.0.1', port: b.port }, arbiter: await arbiter(), leaseTtlMs: 500, verify: true });
    cleanups.push(() => a.close());
    await run(vmA, a, 20, 1);

    const promoted = new Promise<Promotion>((r) => b.once('promoted', r));
    await a.reportFault({ source: 'test', severity: 'fatal', detail: 'host failing' });
    const promotion = await promoted;
    expect(promotion.lease?.generation).toBe(2);

    // B's VM, protected again: a fresh secondary C, the lease adopted, a full sync while the guest runs on.
    const c = await Secondary.listen({ port: 0, sessionId: 'vm-r', verify: true });
    cleanups.push(() => c.close());
    const vmB = promotion.vm;
    const b2 = await Primary.start({
      vm: vmB,
      sessionId: 'vm-r',
      secondary: { host: '127.0.0.1', port: c.port },
      arbiter: await arbiter(),
      lease: promotion.lease!,
      leaseTtlMs: 500,
      verify: true,
    });
    cleanups.push(() => b2.close());
    const digests = new Map<number, string>();
    b2.on('capture', (cap: PrimaryCapture) => digests.set(cap.txn, digestHex(cap.digest!)));
    await run(vmB, b2, 20, 2);
    expect(b2.state).toBe('protected');
    expect(c.committedTxn).toBeGreaterThan(1);
    b2.close();
    const { vm: resumed, txn } = await c.promote();
    expect(digestHex(resumed.digest())).toBe(digests.get(txn));
    // The old primary stays quiesced: its lease is gone for good.
    expect(a.state).toBe('quiesced');
  });
});
