import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Primary } from '../../src/primary/primary.js';
import type { PrimaryCapture } from '../../src/primary/primary.js';
import { PagesWorkerPool } from '../../src/pages/worker-pool.js';
import { Secondary } from '../../src/secondary/secondary.js';
import type { EpochCapture } from '../../src/vm/adapter.js';
import { digestHex } from '../../src/replica/state-digest.js';
import { SimulatedVm } from '../../src/vm/simulated-vm.js';
import { Workload } from '../../src/vm/workload.js';

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

/** Replicates the same seeded guest for 30 steps, with or without delta frames; returns what it cost. */
async function run(delta: boolean, journalDir?: string, pagesPool?: PagesWorkerPool) {
  const secondary = await Secondary.listen({ port: 0, verify: true, sessionId: 'vm-d', ...(journalDir === undefined ? {} : { journalDir }) });
  cleanups.push(() => secondary.close());
  const vm = new SimulatedVm({ memoryBytes: 1 << 20, seed: 3, disks: [{ id: 0, bytes: 1 << 16 }] });
  const digests = new Map<number, string>();
  const primary = await Primary.start({
    vm,
    sessionId: 'vm-d',
    verify: true,
    delta,
    ...(pagesPool === undefined ? {} : { pagesPool }),
    secondary: { host: '127.0.0.1', port: secondary.port },
    onCapture: (c: PrimaryCapture) => digests.set(c.txn, digestHex(c.digest!)),
  });
  cleanups.push(() => primary.close());
  const fullBytes = primary.stats().bytesSent;
  // Few bytes a page change each step: the case deltas are for.
  const workload = new Workload(vm, { seed: 4, pagesPerStep: 16, bytesPerPageWrite: 16, hotPagesFraction: 0.2, outputEvery: 1, output: (c, d) => outputs.push(primary.tap.output(c, d)) });
  const outputs: Array<Promise<void>> = [];
  for (let i = 0; i < 30; i++) {
    workload.step();
    await new Promise((r) => setTimeout(r, 2));
  }
  await Promise.all(outputs);
  return { primary, secondary, digests, incrementalBytes: primary.stats().bytesSent - fullBytes };
}

describe('delta frames end to end', () => {
  it('carry the same epochs (verified by digest at every ack) in fewer bytes', async () => {
    const plain = await run(false);
    const delta = await run(true);
    expect(plain.primary.stats().deltaPages).toBe(0);
    expect(delta.primary.stats().deltaPages).toBeGreaterThan(10);
    expect(delta.primary.stats().deltaSavedBytes).toBeGreaterThan(0);
    expect(delta.primary.state).toBe('protected'); // a wrong delta would have failed verification
    expect(delta.incrementalBytes).toBeLessThan(plain.incrementalBytes / 2);
    expect(delta.primary.stats().pagesImplementation).toMatch(/^(native|js)$/);
    console.log(`incremental bytes: ${plain.incrementalBytes} raw, ${delta.incrementalBytes} with deltas (${(plain.incrementalBytes / delta.incrementalBytes).toFixed(1)}x)`);
  });

  it('with a worker pool, its threads encode the deltas of large epochs, to the same verified states', async () => {
    // Threshold 0: every epoch counts as large here, so each batch of deltas goes to the threads.
    const pool = await PagesWorkerPool.start({ workers: 2, parallelBytesMin: 0 });
    cleanups.push(() => pool.close());
    const threaded = await run(true, undefined, pool);
    const stats = threaded.primary.stats();
    expect(stats.parallelDeltaEpochs).toBeGreaterThan(10);
    expect(stats.deltaPages).toBeGreaterThan(10);
    expect(threaded.primary.state).toBe('protected'); // every ack's digest matched the primary's
    expect(pool.stats().parallelOperations).toBeGreaterThanOrEqual(stats.parallelDeltaEpochs);
  });

  it('hands each committed capture back to the VM, whose next captures reuse its buffer', async () => {
    const secondary = await Secondary.listen({ port: 0, verify: true });
    cleanups.push(() => secondary.close());
    const vm = new SimulatedVm({ memoryBytes: 1 << 20, seed: 5 });
    const released: EpochCapture[] = [];
    const releaseCapture = vm.releaseCapture.bind(vm);
    vm.releaseCapture = (capture: EpochCapture): void => {
      expect(released).not.toContain(capture); // at most once
      released.push(capture);
      releaseCapture(capture);
    };
    const buffersSeen = new Set<ArrayBufferLike>();
    let reusedBuffers = 0;
    const capture = vm.capture.bind(vm);
    vm.capture = (options) => {
      const taken = capture(options);
      const raw = taken.pages.find((p) => p.data.length > 0);
      if (raw !== undefined && !taken.full) {
        if (buffersSeen.has(raw.data.buffer)) reusedBuffers += 1;
        buffersSeen.add(raw.data.buffer);
      }
      return taken;
    };
    const primary = await Primary.start({ vm, verify: true, delta: true, secondary: { host: '127.0.0.1', port: secondary.port } });
    cleanups.push(() => primary.close());
    const outputs: Array<Promise<void>> = [];
    const workload = new Workload(vm, { seed: 6, pagesPerStep: 12, outputEvery: 1, output: (c, d) => outputs.push(primary.tap.output(c, d)) });
    for (let i = 0; i < 25; i++) {
      workload.step();
      await new Promise((r) => setTimeout(r, 2));
    }
    await Promise.all(outputs);
    expect(primary.state).toBe('protected'); // verified at every ack: a buffer reused too early would corrupt an epoch
    expect(released.length).toBeGreaterThan(10);
    expect(released.every((c) => !c.full)).toBe(true);
    expect(reusedBuffers).toBeGreaterThan(5);
  });

  it('a journaled secondary replays delta records on restart to the same epoch', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kemari-delta-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const { primary, secondary, digests } = await run(true, dir);
    expect(primary.stats().deltaPages).toBeGreaterThan(10);
    primary.close();
    const txn = secondary.committedTxn;
    await secondary.close();
    const restarted = await Secondary.listen({ port: 0, journalDir: dir, sessionId: 'vm-d' });
    cleanups.push(() => restarted.close());
    expect(restarted.committedTxn).toBe(txn);
    const { vm } = await restarted.promote();
    expect(digestHex(vm.digest())).toBe(digests.get(txn));
  });

  it('a secondary that declines deltas gets whole pages', async () => {
    const secondary = await Secondary.listen({ port: 0, verify: true, delta: false });
    cleanups.push(() => secondary.close());
    const vm = new SimulatedVm({ memoryBytes: 1 << 18, seed: 1 });
    const primary = await Primary.start({ vm, verify: true, delta: true, secondary: { host: '127.0.0.1', port: secondary.port } });
    cleanups.push(() => primary.close());
    const workload = new Workload(vm, { seed: 2, bytesPerPageWrite: 8, outputEvery: 1, output: (c, d) => outputs.push(primary.tap.output(c, d)) });
    const outputs: Array<Promise<void>> = [];
    for (let i = 0; i < 10; i++) {
      workload.step();
      await new Promise((r) => setTimeout(r, 2));
    }
    await Promise.all(outputs);
    expect(primary.stats().deltaPages).toBe(0);
    expect(primary.state).toBe('protected');
  });
});
