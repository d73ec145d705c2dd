import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Primary } from '../../src/primary/primary.js';
import { Secondary } from '../../src/secondary/secondary.js';
import { realTimers } from '../../src/time/timers.js';
import type { Timers } from '../../src/time/timers.js';
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

  it('with a journal, the HELLO replica becomes the journal\'s: no second guest allocated or faulted in, the background pass goes on', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kemari-large-journal-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    // Timers whose zero-delay callbacks (the background pass's slices) wait until released: the pass is surely
    // unfinished when the journal's replica takes over.
    const held: Array<() => void> = [];
    const timers: Timers = { ...realTimers, setTimeout: (callback, delayMs) => (delayMs === 0 ? (held.push(callback), {}) : realTimers.setTimeout(callback, delayMs)) };
    const secondary = await Secondary.listen({ port: 0, verify: true, journalDir: dir, journalFsync: false, timers });
    cleanups.push(() => secondary.close());
    const vm = new SimulatedVm({ memoryBytes: 96 << 20, seed: 4 });
    type Inside = { replicaNow?: { memory: Uint8Array }; prefault?: { totalBytes: number; buffers: readonly Uint8Array[] } };
    const inside = secondary as unknown as Inside;
    let helloMemory: Uint8Array | undefined;
    let helloPassBytes = 0;
    const primary = await Primary.start({
      vm,
      verify: true,
      secondary: { host: '127.0.0.1', port: secondary.port },
      onProgress: () => {
        helloMemory ??= inside.replicaNow?.memory;
        helloPassBytes ||= inside.prefault?.totalBytes ?? 0;
      },
    });
    cleanups.push(() => primary.close());
    expect(primary.state).toBe('protected');
    expect(helloPassBytes).toBeGreaterThan(2 * (96 << 20)); // at HELLO: replica and staging
    // The journal took the HELLO replica as its own (a fresh directory): the same memory serves and is journaled,
    // and the background pass, still held back here, goes on over it.
    // (Identity compared as booleans: a failing match of two 96 MiB arrays would take vitest minutes to print.)
    expect(helloMemory !== undefined).toBe(true);
    expect(inside.replicaNow!.memory === helloMemory).toBe(true);
    expect((inside.prefault?.buffers ?? []).includes(helloMemory!)).toBe(true);
    expect(inside.prefault!.totalBytes).toBe(helloPassBytes);
    expect(secondary.committedTxn).toBe(1);
    // Released, the pass runs to its end (and then holds nothing).
    while (held.length > 0) for (const slice of held.splice(0)) slice();
    expect((inside.prefault?.buffers ?? []).length).toBe(0);
  }, 60_000);
});
