import { afterEach, describe, expect, it } from 'vitest';
import { Primary } from '../../src/primary/primary.js';
import { Secondary } from '../../src/secondary/secondary.js';
import { SimulatedVm } from '../../src/vm/simulated-vm.js';
import { Workload } from '../../src/vm/workload.js';

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

describe('a guest larger than one prefault slice', () => {
  it('the secondary answers HELLO before its memory is faulted in, and the full sync racing the background pass arrives intact', async () => {
    const secondary = await Secondary.listen({ port: 0, verify: true });
    cleanups.push(() => secondary.close());
    // 160 MiB of guest: replica and staging are 320 MiB, ten background slices.
    const vm = new SimulatedVm({ memoryBytes: 160 << 20, seed: 9 });
    const workload = new Workload(vm, { seed: 3, pagesPerStep: 4096, bytesPerPageWrite: 4096 });
    workload.run(8); // pages all over the guest hold data, so a zeroed page would show in the digest
    let faultedAtHello: number | undefined;
    const prefaultOf = (): { doneBytes: number; totalBytes: number } | undefined =>
      (secondary as unknown as { prefault?: { doneBytes: number; totalBytes: number } }).prefault;
    const primary = await Primary.start({
      vm,
      verify: true,
      secondary: { host: '127.0.0.1', port: secondary.port },
      onProgress: () => {
        faultedAtHello ??= prefaultOf()?.doneBytes ?? -1;
      },
    });
    cleanups.push(() => primary.close());
    // HELLO was answered (the sync began) with most of the memory still to fault in.
    expect(faultedAtHello).toBeDefined();
    expect(faultedAtHello!).toBeLessThan(prefaultOf()!.totalBytes);
    // The full sync was verified: the replica's digest equals the guest's, so no page landed and was then zeroed.
    expect(primary.state).toBe('protected');
    workload.run(2);
    await primary.tap.output('check', Uint8Array.of(1));
    expect(secondary.committedTxn).toBeGreaterThan(1);
  }, 60_000);
});
