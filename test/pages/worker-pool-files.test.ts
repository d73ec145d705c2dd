import { afterEach, describe, expect, it } from 'vitest';
import { FINGERPRINT_BYTES, pagesImplementation, scanChangedPages } from '../../src/pages/index.js';
import { PagesWorkerPool, sharedBytes } from '../../src/pages/worker-pool.js';
import { mappedTempFile } from '../helpers/mapped-file.js';

const PAGE = 4096;
const PAGES = 2048; // 8 MiB
const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

/** A file of PAGES pages, every page non-zero but page 7, mapped here; and a writer of one byte of it. */
function mappedFile(): { path: string; mapping: Uint8Array; poke: (offset: number, value: number) => void } {
  const file = mappedTempFile(PAGES * PAGE, cleanups);
  const page = Buffer.alloc(PAGE);
  for (let p = 0; p < PAGES; p++) {
    if (p === 7) continue;
    page.fill(p & 0xff || 1);
    file.write(p * PAGE, page);
  }
  return { path: file.path, mapping: file.mapping, poke: (offset, value) => file.write(offset, Uint8Array.of(value)) };
}

describe('PagesWorkerPool over a shared file mapping', () => {
  it('the threads map the file themselves and scan it in place: the same changes, seen as the file changes', async () => {
    expect(pagesImplementation()).toBe('native'); // CI builds the addon: the mapping is a real MAP_SHARED one
    const pool = await PagesWorkerPool.start({ workers: 2, parallelBytesMin: 0 });
    cleanups.push(() => pool.close());
    const { path, mapping, poke } = mappedFile();
    pool.shareFile(mapping, path);
    pool.shareFile(mapping, path); // twice: a no-op

    const threaded = new BigUint64Array(new SharedArrayBuffer(PAGES * FINGERPRINT_BYTES));
    const here = new BigUint64Array(PAGES);
    const out = (): { changedPages: Uint32Array; zeroFlags: Uint8Array } => ({ changedPages: new Uint32Array(PAGES), zeroFlags: new Uint8Array(PAGES) });
    const seed = 0x1234_5678_9abc_def0n;
    const before = pool.stats().parallelOperations;
    const a = out();
    const b = out();
    expect(await pool.scanChangedPages(mapping, PAGE, threaded, a, { update: true, seed })).toBe(scanChangedPages(mapping, PAGE, here, b, { update: true, seed }));
    expect(Buffer.from(threaded.buffer).equals(Buffer.from(here.buffer))).toBe(true);
    expect(pool.stats().parallelOperations).toBe(before + 1); // ran on the threads, not inline

    // Written through the file (as QEMU writes guest RAM): the threads' own mappings see it.
    poke(5 * PAGE + 100, 0xee);
    poke(1500 * PAGE, 0);
    poke(7 * PAGE + 9, 3); // page 7 was zero
    const c = out();
    const count = await pool.scanChangedPages(mapping, PAGE, threaded, c, { update: true, seed });
    expect([...c.changedPages.subarray(0, count)]).toEqual([5, 7, 1500]);
    expect([...c.zeroFlags.subarray(0, count)]).toEqual([0, 0, 0]);
    // A view of part of the mapping works too (as a RAM block inside a larger file would be).
    const d = out();
    const part = mapping.subarray(1024 * PAGE);
    expect(await pool.scanChangedPages(part, PAGE, threaded.subarray(1024), d, { update: false, seed })).toBe(0);

    pool.unshareFile(mapping);
    await expect(pool.scanChangedPages(mapping, PAGE, threaded, out(), { seed })).rejects.toMatchObject({ code: 'KEMARI_INVALID_ARGUMENT' });
  });

  it('a file unshared while a scan of it waits in the queue fails that scan (KEMARI_CLOSED), and the pool goes on', async () => {
    const pool = await PagesWorkerPool.start({ workers: 2, parallelBytesMin: 0 });
    cleanups.push(() => pool.close());
    const { path, mapping } = mappedFile();
    pool.shareFile(mapping, path);
    const table = new BigUint64Array(new SharedArrayBuffer(PAGES * FINGERPRINT_BYTES));
    const out = (): { changedPages: Uint32Array; zeroFlags: Uint8Array } => ({ changedPages: new Uint32Array(PAGES), zeroFlags: new Uint8Array(PAGES) });
    const big = sharedBytes(64 << 20);
    const first = pool.scanChangedPages(big, PAGE, new BigUint64Array(new SharedArrayBuffer(((64 << 20) / PAGE) * 8)), { changedPages: new Uint32Array((64 << 20) / PAGE), zeroFlags: new Uint8Array((64 << 20) / PAGE) });
    const queued = pool.scanChangedPages(mapping, PAGE, table, out(), { update: true });
    pool.unshareFile(mapping);
    await first;
    await expect(queued).rejects.toMatchObject({ code: 'KEMARI_CLOSED' });
    pool.shareFile(mapping, path);
    expect(await pool.scanChangedPages(mapping, PAGE, table, out(), { update: true })).toBe(PAGES);
    expect(pool.stats().workerCrashes).toBe(0);
  });

  it('a thread respawned without the addon refuses the file: a copy would hide later changes, so its scans fail', async () => {
    const pool = await PagesWorkerPool.start({ workers: 1, parallelBytesMin: 0 });
    cleanups.push(() => pool.close());
    const { path, mapping, poke } = mappedFile();
    pool.shareFile(mapping, path);
    const table = new BigUint64Array(new SharedArrayBuffer(PAGES * FINGERPRINT_BYTES));
    const out = (): { changedPages: Uint32Array; zeroFlags: Uint8Array } => ({ changedPages: new Uint32Array(PAGES), zeroFlags: new Uint8Array(PAGES) });
    expect(await pool.scanChangedPages(mapping, PAGE, table, out(), { update: true })).toBe(PAGES);
    // The thread crashes; its replacement comes up on the TypeScript fallback (its "mapping" would be a snapshot).
    process.env.KEMARI_PAGES_IMPLEMENTATION = 'js';
    try {
      pool.injectFault(0, 'exit');
      await expect(pool.scanChangedPages(mapping, PAGE, table, out(), { update: true })).rejects.toMatchObject({ code: 'KEMARI_WORKER_FAILED' });
      for (const deadline = Date.now() + 10_000; pool.stats().workerRestarts < 1; await new Promise((r) => setTimeout(r, 10))) {
        if (Date.now() > deadline) throw new Error('the thread was not replaced');
      }
      await new Promise((r) => setTimeout(r, 200)); // the replacement is up and has been told of the file
    } finally {
      delete process.env.KEMARI_PAGES_IMPLEMENTATION;
    }
    poke(9 * PAGE, 0x5a); // a change a snapshot taken at the respawn would not see
    await expect(pool.scanChangedPages(mapping, PAGE, table, out(), { update: true })).rejects.toMatchObject({ code: 'KEMARI_WORKER_FAILED' });
  });

  it('a mapping that is not shared, or a pool on the fallback, is refused', async () => {
    const pool = await PagesWorkerPool.start({ workers: 1, parallelBytesMin: 0 });
    cleanups.push(() => pool.close());
    const { mapping } = mappedFile();
    const table = new BigUint64Array(new SharedArrayBuffer(PAGES * FINGERPRINT_BYTES));
    await expect(pool.scanChangedPages(mapping, PAGE, table, { changedPages: new Uint32Array(PAGES), zeroFlags: new Uint8Array(PAGES) })).rejects.toMatchObject({
      code: 'KEMARI_INVALID_ARGUMENT',
    });
    expect(() => pool.shareFile(mapping, '')).toThrow(expect.objectContaining({ code: 'KEMARI_INVALID_ARGUMENT' }));
    // Threads on the TypeScript fallback would scan a stale copy: sharing the file with them is refused.
    process.env.KEMARI_PAGES_IMPLEMENTATION = 'js';
    const fallback = await PagesWorkerPool.start({ workers: 1, parallelBytesMin: 0 }).finally(() => delete process.env.KEMARI_PAGES_IMPLEMENTATION);
    cleanups.push(() => fallback.close());
    expect(fallback.implementation).toBe('js');
    expect(() => fallback.shareFile(mapping, '/dev/null')).toThrow(expect.objectContaining({ code: 'KEMARI_INVALID_ARGUMENT' }));
    // A plain SharedArrayBuffer region is what the pool always took.
    expect(await pool.scanChangedPages(sharedBytes(PAGE), PAGE, new BigUint64Array(new SharedArrayBuffer(8)), { changedPages: new Uint32Array(1), zeroFlags: new Uint8Array(1) })).toBe(1);
  });
});
