/**
 * GuestMemory's fingerprint scan on a PagesWorkerPool (scanRangeOn), without QEMU: a file stands in for QEMU's
 * shared RAM file, written with positioned writes as QEMU's vCPUs write guest RAM.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { PagesWorkerPool } from '../../src/pages/worker-pool.js';
import { GuestMemory } from '../../src/qemu/guest-memory.js';
import type { SharedBlockSource } from '../../src/qemu/guest-memory.js';
import { mappedTempFile } from '../helpers/mapped-file.js';
import type { MappedFile } from '../helpers/mapped-file.js';

const PAGE = 4096;
const PAGES = 1024; // 4 MiB of "guest RAM"
const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

function guestFile(): MappedFile {
  return mappedTempFile(PAGES * PAGE, cleanups);
}

function fingerprintMemory(mapping: Uint8Array): GuestMemory {
  const source: SharedBlockSource = { readInto: (target, at, position, length) => target.set(mapping.subarray(position, position + length), at) };
  const blocks = [
    { name: 'rom', offsetBytes: 0, lengthBytes: 4 * PAGE, shared: false },
    { name: 'mem', offsetBytes: 4 * PAGE, lengthBytes: PAGES * PAGE, shared: true },
  ];
  return new GuestMemory(blocks, { changeDetection: 'fingerprints', sharedSources: new Map([['mem', source]]) });
}

const changedIndices = (memory: GuestMemory): number[] => memory.takePages(false).pages.map((p) => p.index);

describe('GuestMemory.scanRangeOn', () => {
  it('finds on the threads exactly the pages the calling thread finds', async () => {
    const pool = await PagesWorkerPool.start({ workers: 2, parallelBytesMin: 0 });
    cleanups.push(() => pool.close());
    const { path, mapping, write } = guestFile();
    pool.shareFile(mapping, path);
    const threaded = fingerprintMemory(mapping);
    const here = fingerprintMemory(mapping);
    // As QemuVm.attach does: a first scan takes the fingerprints, then the full capture sends every page.
    await threaded.scanRangeOn(pool, 4 * PAGE, mapping);
    here.scanRange(4 * PAGE, mapping);
    for (const memory of [threaded, here]) memory.takePages(true);
    for (const round of [1, 2, 3]) {
      for (const page of [round, 100 + round, 700, PAGES - 1]) write(page * PAGE + round * 8, Uint8Array.of(round, 0xff, round));
      await threaded.scanRangeOn(pool, 4 * PAGE, mapping);
      here.scanRange(4 * PAGE, mapping);
      const a = changedIndices(threaded);
      expect(a).toEqual(changedIndices(here));
      expect(a).toEqual([round, 100 + round, 700, PAGES - 1].map((p) => p + 4));
    }
    expect(pool.stats().parallelOperations).toBe(4);
  });

  it('a thread that crashes mid-scan loses no change: every page of the range is then sent', async () => {
    const pool = await PagesWorkerPool.start({ workers: 2, parallelBytesMin: 0 });
    cleanups.push(() => pool.close());
    const { path, mapping, write } = guestFile();
    pool.shareFile(mapping, path);
    const memory = fingerprintMemory(mapping);
    memory.scanRange(4 * PAGE, mapping);
    memory.takePages(true);
    write(10 * PAGE, Uint8Array.of(1));
    pool.injectFault(1, 'exit'); // the second half's thread dies when its part arrives: the first half moved on
    await memory.scanRangeOn(pool, 4 * PAGE, mapping);
    const pages = changedIndices(memory);
    expect(pages).toHaveLength(PAGES); // every page of the block, the changed one among them
    expect(pages).toContain(14);
    expect(pool.stats().workerCrashes).toBe(1);
    // The fingerprints were scanned again here: the next scan (on the replaced thread) finds only new changes.
    await new Promise((r) => setTimeout(r, 200));
    write(20 * PAGE, Uint8Array.of(2));
    await memory.scanRangeOn(pool, 4 * PAGE, mapping);
    expect(changedIndices(memory)).toEqual([24]);
  });

  it('a pool that refuses before starting (closed) costs nothing: the range is scanned here, only real changes sent', async () => {
    const pool = await PagesWorkerPool.start({ workers: 1, parallelBytesMin: 0 });
    const { path, mapping, write } = guestFile();
    pool.shareFile(mapping, path);
    const memory = fingerprintMemory(mapping);
    await memory.scanRangeOn(pool, 4 * PAGE, mapping);
    memory.takePages(true);
    await pool.close();
    write(30 * PAGE, Uint8Array.of(9));
    await memory.scanRangeOn(pool, 4 * PAGE, mapping);
    expect(changedIndices(memory)).toEqual([34]);
  });
});
