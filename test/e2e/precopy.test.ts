import { afterEach, describe, expect, it } from 'vitest';
import { Primary } from '../../src/primary/primary.js';
import type { PrimaryCapture, PrimaryCommit } from '../../src/primary/primary.js';
import { Secondary } from '../../src/secondary/secondary.js';
import { digestHex } from '../../src/replica/state-digest.js';
import { SimulatedVm } from '../../src/vm/simulated-vm.js';
import { Workload } from '../../src/vm/workload.js';

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

/** Starts protection while a guest keeps running; returns how many guest steps ran during the full sync. */
async function syncWhileRunning(precopyRoundsMax: number) {
  const secondary = await Secondary.listen({ port: 0, verify: true, bodyBytesMax: 1 << 20 });
  cleanups.push(() => secondary.close());
  const vm = new SimulatedVm({ memoryBytes: 16 << 20, seed: 71 });
  vm.write(0, new Uint8Array(16 << 20).fill(7)); // no zero pages: the sync has something to move
  const workload = new Workload(vm, { seed: 4, pagesPerStep: 32, outputEvery: 0 });
  let running = true;
  let steps = 0;
  const guest = (async () => {
    while (running) {
      if (workload.step()) steps++;
      await new Promise((r) => setImmediate(r));
    }
  })();
  const digests = new Map<number, string>();
  const commits: PrimaryCommit[] = [];
  const stepsBefore = steps;
  const primaryPromise = Primary.start({
    vm,
    secondary: { host: '127.0.0.1', port: secondary.port },
    verify: true,
    precopyRoundsMax,
    pagesPerFrameMax: 64,
    bodyBytesMax: 1 << 20,
  });
  const primary = await primaryPromise;
  cleanups.push(() => primary.close());
  const stepsDuring = steps - stepsBefore;
  primary.on('capture', (c: PrimaryCapture) => digests.set(c.txn, digestHex(c.digest!)));
  primary.on('commit', (c: PrimaryCommit) => commits.push(c));
  await primary.tap.output('serial0', Buffer.from('after the full sync\n')); // one more epoch, verified too
  running = false;
  await guest;
  return { secondary, primary, stepsDuring, digests };
}

describe('full sync with pre-copy', () => {
  it('the guest keeps running during the full sync, and the replica is still exactly one verified epoch', async () => {
    const { secondary, primary, stepsDuring, digests } = await syncWhileRunning(4);
    expect(stepsDuring).toBeGreaterThan(0);
    expect(primary.state).toBe('protected');
    // verify is on: the secondary checked every epoch's digest, including the pre-copied full sync.
    expect(secondary.stats().lastError).toBeUndefined();
    primary.close();
    const { vm, txn } = await secondary.promote();
    expect(digestHex(vm.digest())).toBe(digests.get(txn));
    console.log(`pre-copy: ${stepsDuring} guest steps ran during the full sync of 16 MiB; longest pause ${primary.stats().pauseMs.max.toFixed(2)} ms`);
  }, 20_000);

  it('without pre-copy the full sync is one capture (the guest waits for it)', async () => {
    const { primary } = await syncWhileRunning(0);
    expect(primary.state).toBe('protected');
    console.log(`no pre-copy: full-sync pause ${primary.stats().pauseMs.max.toFixed(2)} ms`);
  }, 20_000);
});
