/**
 * SharedMemoryFile hands its scans to a PagesWorkerPool only while the pool can do them: a pool whose scans keep
 * failing after they began (each failure sends the whole RAM block) is dropped after two in a row, and a pool closed
 * before the file was shared with it costs nothing. Without QEMU: a file stands in for QEMU's shared RAM file.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { PagesWorkerPool } from '../../src/pages/worker-pool.js';
import { GuestMemory } from '../../src/qemu/guest-memory.js';
import type { GuestRamBlock } from '../../src/qemu/guest-memory.js';
import { SharedMemoryFile } from '../../src/qemu/shared-memory-file.js';
import { mappedTempFile } from '../helpers/mapped-file.js';

const PAGE = 4096;
const PAGES = 1024; // 4 MiB of "guest RAM"
const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

const BLOCK: GuestRamBlock = { name: 'mem', offsetBytes: 4 * PAGE, lengthBytes: PAGES * PAGE, shared: true };

/** The file (every page non-zero), opened as QemuVm opens it, with `pool`; a fingerprints GuestMemory over it. */
async function setUp(pool: PagesWorkerPool): Promise<{ file: SharedMemoryFile; memory: GuestMemory; write: (page: number, value: number) => void }> {
  const { path, write } = mappedTempFile(PAGES * PAGE, cleanups);
  for (let page = 0; page < PAGES; page++) write(page * PAGE, Uint8Array.of(page & 0xff || 1));
  const file = await SharedMemoryFile.open(path, PAGES * PAGE);
  cleanups.push(() => file.close());
  file.usePool(pool);
  const memory = new GuestMemory([{ name: 'rom', offsetBytes: 0, lengthBytes: 4 * PAGE, shared: false }, BLOCK], {
    changeDetection: 'fingerprints',
    sharedSources: new Map([['mem', file]]),
  });
  // As QemuVm.attach does: a first scan takes the fingerprints, then the full capture sends every page.
  await file.scanInto(memory, BLOCK);
  memory.takePages(true);
  return { file, memory, write: (page, value) => write(page * PAGE + 8, Uint8Array.of(value)) };
}

const changed = (memory: GuestMemory): number[] => memory.takePages(false).pages.map((p) => p.index);

async function replaced(pool: PagesWorkerPool, restarts: number): Promise<void> {
  for (const deadline = Date.now() + 10_000; pool.stats().workerRestarts < restarts; await new Promise((r) => setTimeout(r, 10))) {
    if (Date.now() > deadline) throw new Error('the thread was not replaced');
  }
  await new Promise((r) => setTimeout(r, 200)); // the replacement is up and has been told of the file
}

describe('SharedMemoryFile with a pages pool', () => {
  it('drops a pool that fails two scans in a row: the whole block is sent twice, then only real changes', async () => {
    const pool = await PagesWorkerPool.start({ workers: 1, parallelBytesMin: 0 });
    cleanups.push(() => pool.close());
    const { file, memory, write } = await setUp(pool);
    expect(pool.stats().parallelOperations).toBe(1); // the first scan ran on the thread

    // The thread crashes mid-scan, and its replacement comes up on the TypeScript fallback, which refuses the file
    // (its "mapping" would be a stale copy): every pooled scan of the file now fails after it began.
    process.env.KEMARI_PAGES_IMPLEMENTATION = 'js';
    try {
      pool.injectFault(0, 'exit');
      write(10, 0xa1);
      await file.scanInto(memory, BLOCK);
      expect(changed(memory)).toHaveLength(PAGES); // every page of the block, the changed one among them
      await replaced(pool, 1);
    } finally {
      delete process.env.KEMARI_PAGES_IMPLEMENTATION;
    }
    expect(file.poolFailures).toBe(1);
    expect(file.poolDropped).toBe(false); // one failure may be a crash: the pool gets another chance

    write(20, 0xa2);
    await file.scanInto(memory, BLOCK);
    expect(changed(memory)).toHaveLength(PAGES);
    expect(file.poolFailures).toBe(2);
    expect(file.poolDropped).toBe(true);

    // From now on the file is scanned here: only the pages that changed.
    const operations = pool.stats().parallelOperations + pool.stats().inlineOperations;
    write(30, 0xa3);
    await file.scanInto(memory, BLOCK);
    expect(changed(memory)).toEqual([34]);
    write(31, 0xa4);
    await file.scanInto(memory, BLOCK);
    expect(changed(memory)).toEqual([35]);
    expect(pool.stats().parallelOperations + pool.stats().inlineOperations).toBe(operations);
    expect(file.poolFailures).toBe(2);
  });

  it('keeps a pool whose failure is followed by a successful scan (a crashed thread, replaced)', async () => {
    const pool = await PagesWorkerPool.start({ workers: 1, parallelBytesMin: 0 });
    cleanups.push(() => pool.close());
    const { file, memory, write } = await setUp(pool);
    for (const round of [1, 2]) {
      pool.injectFault(0, 'exit');
      write(40 + round, round);
      await file.scanInto(memory, BLOCK);
      expect(changed(memory)).toHaveLength(PAGES);
      await replaced(pool, round);
      write(50 + round, round);
      await file.scanInto(memory, BLOCK); // on the replaced thread, which maps the file itself
      expect(changed(memory)).toEqual([54 + round]);
    }
    expect(file.poolFailures).toBe(2);
    expect(file.poolDropped).toBe(false);
    expect(pool.stats().parallelOperations).toBe(5); // every scan went to the thread, the two that failed included
  });

  it('a pool closed before the file was shared with it costs nothing: the scan runs here', async () => {
    const pool = await PagesWorkerPool.start({ workers: 1, parallelBytesMin: 0 });
    await pool.close();
    const { file, memory, write } = await setUp(pool); // its first scan already met the closed pool
    expect(file.poolDropped).toBe(true);
    write(60, 7);
    await file.scanInto(memory, BLOCK);
    expect(changed(memory)).toEqual([64]);
    expect(file.poolFailures).toBe(0);
  });

  it('a pool closed after the file was shared with it is dropped at the next scan, which runs here', async () => {
    const pool = await PagesWorkerPool.start({ workers: 1, parallelBytesMin: 0 });
    const { file, memory, write } = await setUp(pool);
    expect(file.poolDropped).toBe(false);
    await pool.close();
    write(70, 8);
    await file.scanInto(memory, BLOCK);
    expect(changed(memory)).toEqual([74]);
    expect(file.poolDropped).toBe(true);
    expect(file.poolFailures).toBe(0);
  });
});
