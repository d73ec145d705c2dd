import { fc, test } from '@fast-check/vitest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isKemariError } from '../../src/errors.js';
import { encodeDelta, pagesImplementation, scanChangedPages } from '../../src/pages/index.js';
import type { PageReference } from '../../src/pages/index.js';
import { PARALLEL_BYTES_MIN_DEFAULTS, PagesWorkerPool, defaultWorkerCount, sharedBytes } from '../../src/pages/worker-pool.js';

function fillRandom(bytes: Uint8Array, seed: number): void {
  let x = seed | 1;
  for (let i = 0; i < bytes.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    bytes[i] = x & 0xff;
  }
}

/** A copy of `bytes` in a new SharedArrayBuffer, `offset` bytes into it. */
function sharedCopy(bytes: Uint8Array, offset = 0): Uint8Array {
  const copy = sharedBytes(bytes.length + offset).subarray(offset);
  copy.set(bytes);
  return copy;
}

/** Rejects with a KemariError of `code`. */
async function rejectsWith(promise: Promise<unknown>, code: string): Promise<unknown> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(isKemariError(error), String(error)).toBe(true);
  expect((error as { code: string }).code).toBe(code);
  return error;
}

/** Byte equality of two views (vitest's element-wise toEqual is far too slow on hundreds of KiB). */
function expectSameBytes(actual: ArrayBufferView, expected: ArrayBufferView): void {
  const a = Buffer.from(actual.buffer, actual.byteOffset, actual.byteLength);
  const b = Buffer.from(expected.buffer, expected.byteOffset, expected.byteLength);
  if (!a.equals(b)) expect(a).toEqual(b);
}

async function until(condition: () => boolean, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

const edit = fc.oneof(
  fc.record({ kind: fc.constant('byte' as const), page: fc.nat(), offset: fc.nat(), value: fc.nat(255) }),
  fc.record({ kind: fc.constant('zero' as const), page: fc.nat() }),
  fc.record({ kind: fc.constant('copy' as const), page: fc.nat(), from: fc.nat() }),
);

/** A baseline, the region after random edits, and how the scan is asked. */
const scanCase = fc.record({
  pageBytes: fc.constantFrom(8, 64, 512, 4096),
  pageCount: fc.integer({ min: 0, max: 160 }),
  seed: fc.integer(),
  zeroPages: fc.array(fc.nat(), { maxLength: 10 }),
  edits: fc.array(edit, { maxLength: 40 }),
  reference: fc.constantFrom('shadow' as const, 'fingerprints64' as const, 'fingerprints32' as const, 'fresh-fingerprints' as const),
  fingerprintSeed: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }),
  update: fc.boolean(),
  regionOffset: fc.nat(7),
});

describe('PagesWorkerPool', () => {
  let pool: PagesWorkerPool; // every operation on the threads
  let inlinePool: PagesWorkerPool; // every operation on the calling thread

  beforeAll(async () => {
    pool = await PagesWorkerPool.start({ workers: 2, parallelBytesMin: 0 });
    inlinePool = await PagesWorkerPool.start({ workers: 1, parallelBytesMin: Number.POSITIVE_INFINITY });
  });
  afterAll(async () => {
    await pool?.close();
    await inlinePool?.close();
  });

  it('starts threads with the backend this process uses, and defaults from the measured table', async () => {
    expect(pool.implementation).toBe(pagesImplementation());
    expect(pool.workerCount).toBe(2);
    expect(defaultWorkerCount()).toBeGreaterThanOrEqual(1);
    expect(defaultWorkerCount()).toBeLessThanOrEqual(4);
    expect(pool.parallelBytesMin).toEqual({ scanShadow: 0, scanFingerprints: 0, encodeDeltas: 0 });
    const defaults = await PagesWorkerPool.start({ workers: 1, parallelBytesMin: { encodeDeltas: 5 } });
    try {
      expect(defaults.parallelBytesMin).toEqual({ ...PARALLEL_BYTES_MIN_DEFAULTS[defaults.implementation], encodeDeltas: 5 });
    } finally {
      await defaults.close();
    }
  });

  test.prop([scanCase], { numRuns: 150 })('scanChangedPages gives the single-threaded result byte for byte', async (c) => {
    const { pageBytes, pageCount } = c;
    const bytes = pageBytes * pageCount;
    const baseline = new Uint8Array(bytes);
    fillRandom(baseline, c.seed);
    for (const p of c.zeroPages) if (pageCount > 0) baseline.fill(0, (p % pageCount) * pageBytes, ((p % pageCount) + 1) * pageBytes);
    const edited = baseline.slice();
    for (const e of c.edits) {
      if (pageCount === 0) break;
      const at = (e.page % pageCount) * pageBytes;
      if (e.kind === 'byte') edited[at + (e.offset % pageBytes)] = e.value;
      else if (e.kind === 'zero') edited.fill(0, at, at + pageBytes);
      else edited.copyWithin(at, (e.from % pageCount) * pageBytes, ((e.from % pageCount) + 1) * pageBytes);
    }
    const region = sharedCopy(edited, c.regionOffset);

    // Two identical references, one for each side: the shadow is the baseline; fingerprints are built from it.
    const makeReference = (): PageReference => {
      if (c.reference === 'shadow') return sharedCopy(baseline, 3);
      const table = new BigUint64Array(new SharedArrayBuffer(pageCount * 8 + 8), 8, pageCount);
      if (c.reference !== 'fresh-fingerprints') {
        scanChangedPages(baseline, pageBytes, table, { changedPages: new Uint32Array(pageCount), zeroFlags: new Uint8Array(pageCount) }, { update: true, seed: c.fingerprintSeed });
      }
      return c.reference === 'fingerprints32' ? new Uint32Array(table.buffer, table.byteOffset, pageCount * 2) : table;
    };
    const seedOption = c.reference === 'shadow' ? {} : { seed: c.fingerprintSeed };
    const expectedReference = makeReference();
    const actualReference = makeReference();
    // Outputs start with the same garbage: entries past the count must be left alone on both sides.
    const garbage = new Uint8Array(pageCount * 5 + 5);
    fillRandom(garbage, c.seed ^ 0x5a5a);
    const outputs = () => ({ changedPages: new Uint32Array(garbage.buffer.slice(0, pageCount * 4 + 4)), zeroFlags: garbage.slice(pageCount * 4 + 4) });
    const expectedOut = outputs();
    const actualOut = outputs();

    const expectedCount = scanChangedPages(edited, pageBytes, expectedReference, expectedOut, { update: c.update, ...seedOption });
    const actualCount = await pool.scanChangedPages(region, pageBytes, actualReference, actualOut, { update: c.update, ...seedOption });
    expect(actualCount).toBe(expectedCount);
    expectSameBytes(actualOut.changedPages, expectedOut.changedPages);
    expectSameBytes(actualOut.zeroFlags, expectedOut.zeroFlags);
    expectSameBytes(actualReference, expectedReference);
    expectSameBytes(region, edited);
  });

  test.prop(
    [
      fc.record({
        pageBytes: fc.constantFrom(16, 256, 4096),
        pageCount: fc.integer({ min: 0, max: 120 }),
        seed: fc.integer(),
        changesPerPage: fc.integer({ min: 0, max: 80 }),
        budgetFraction: fc.double({ min: 0, max: 1, noNaN: true }),
        // Some pages share one buffer with their bases, some live in buffers of their own.
        layout: fc.constantFrom('one-buffer', 'buffer-per-page'),
      }),
    ],
    { numRuns: 120 },
  )('encodeDeltas gives encodeDelta results byte for byte', async (c) => {
    const { pageBytes, pageCount } = c;
    const budget = Math.round(c.budgetFraction * pageBytes);
    const oldBytes = new Uint8Array(pageBytes * pageCount);
    fillRandom(oldBytes, c.seed);
    const newBytes = oldBytes.slice();
    let x = c.seed | 1;
    for (let p = 0; p < pageCount; p++) {
      const changes = (p * 7) % (c.changesPerPage + 1);
      for (let k = 0; k < changes; k++) {
        x = (Math.imul(x, 1103515245) + 12345) >>> 0;
        const at = p * pageBytes + (x % pageBytes);
        newBytes[at] = newBytes[at]! ^ (1 + ((x >>> 24) % 255));
      }
    }
    const pages: Uint8Array[] = [];
    const bases: Uint8Array[] = [];
    if (c.layout === 'one-buffer') {
      const both = sharedBytes(2 * pageBytes * pageCount);
      both.set(newBytes);
      both.set(oldBytes, pageBytes * pageCount);
      for (let p = 0; p < pageCount; p++) {
        pages.push(both.subarray(p * pageBytes, (p + 1) * pageBytes));
        bases.push(both.subarray((pageCount + p) * pageBytes, (pageCount + p + 1) * pageBytes));
      }
    } else {
      for (let p = 0; p < pageCount; p++) {
        pages.push(sharedCopy(newBytes.subarray(p * pageBytes, (p + 1) * pageBytes)));
        bases.push(sharedCopy(oldBytes.subarray(p * pageBytes, (p + 1) * pageBytes), 1));
      }
    }
    const expectedArea = new Uint8Array(pageCount * budget);
    const expectedLengths = new Int32Array(pageCount).fill(-7);
    for (let p = 0; p < pageCount; p++) {
      expectedLengths[p] = encodeDelta(oldBytes.subarray(p * pageBytes, (p + 1) * pageBytes), newBytes.subarray(p * pageBytes, (p + 1) * pageBytes), expectedArea.subarray(p * budget, (p + 1) * budget), budget);
    }
    const out = { out: sharedBytes(pageCount * budget), lengths: new Int32Array(pageCount).fill(-7) };
    const result = await pool.encodeDeltas(pages, bases, out, budget);
    expectSameBytes(out.lengths, expectedLengths);
    expectSameBytes(out.out, expectedArea);
    const lengths = [...expectedLengths];
    expect(result).toEqual({
      deltaPages: lengths.filter((n) => n > 0).length,
      unchangedPages: lengths.filter((n) => n === 0).length,
      overBudgetPages: lengths.filter((n) => n < 0).length,
      deltaBytes: lengths.filter((n) => n > 0).reduce((a, b) => a + b, 0),
    });
    // The calling-thread path gives the same.
    const inlineOut = { out: sharedBytes(pageCount * budget), lengths: new Int32Array(pageCount) };
    expect(await inlinePool.encodeDeltas(pages, bases, inlineOut, budget)).toEqual(result);
    expectSameBytes(inlineOut.out, expectedArea);
  });

  it('does small operations on the calling thread and large ones on the threads', async () => {
    const thresholds = await PagesWorkerPool.start({ workers: 2, parallelBytesMin: 256 << 10 });
    try {
      const small = sharedBytes(64 << 10);
      const large = sharedBytes(1 << 20);
      large[5000] = 1;
      const out = { changedPages: new Uint32Array(256), zeroFlags: new Uint8Array(256) };
      expect(await thresholds.scanChangedPages(small, 4096, sharedBytes(64 << 10), out)).toBe(0);
      expect(thresholds.stats()).toMatchObject({ inlineOperations: 1, parallelOperations: 0 });
      expect(await thresholds.scanChangedPages(large, 4096, sharedBytes(1 << 20), out)).toBe(1);
      expect(thresholds.stats()).toMatchObject({ inlineOperations: 1, parallelOperations: 1 });
      expect(out.changedPages[0]).toBe(1);
      const pages = [large.subarray(4096, 8192), large.subarray(8192, 12288)];
      const delta = { out: sharedBytes(8192), lengths: new Int32Array(2) };
      await thresholds.encodeDeltas(pages, [small.subarray(0, 4096), small.subarray(4096, 8192)], delta);
      expect(thresholds.stats()).toMatchObject({ inlineOperations: 2, parallelOperations: 1 });
      expect([...delta.lengths]).toEqual([4, 0]); // skip 904 (2 bytes), length 1, one xor byte
    } finally {
      await thresholds.close();
    }
  });

  it('runs operations in the order they were called, inline ones included, and bounds the queue', async () => {
    const bounded = await PagesWorkerPool.start({ workers: 2, parallelBytesMin: 1 << 20, queueDepthMax: 2 });
    try {
      const pageBytes = 4096;
      const region = sharedBytes(4 << 20);
      const shadow = sharedBytes(4 << 20);
      region[3 * pageBytes] = 9;
      const out = () => ({ changedPages: new Uint32Array(1024), zeroFlags: new Uint8Array(1024) });
      const order: string[] = [];
      // A large scan that advances the shadow, then a small one of the same pages that must see it advanced.
      const first = bounded.scanChangedPages(region, pageBytes, shadow, out(), { update: true }).then((n) => order.push(`large ${n}`));
      const second = bounded.scanChangedPages(region.subarray(0, 16 * pageBytes), pageBytes, shadow.subarray(0, 16 * pageBytes), out()).then((n) => order.push(`small ${n}`));
      const third = bounded.scanChangedPages(region, pageBytes, shadow, out()).then((n) => order.push(`large ${n}`));
      await rejectsWith(bounded.scanChangedPages(region, pageBytes, shadow, out()), 'KEMARI_BUSY');
      await Promise.all([first, second, third]);
      expect(order).toEqual(['large 1', 'small 0', 'large 0']);
    } finally {
      await bounded.close();
    }
  });

  it('refuses bad arguments with KEMARI_INVALID_ARGUMENT before any thread sees them', async () => {
    const shared = sharedBytes(8192);
    const out = { changedPages: new Uint32Array(2), zeroFlags: new Uint8Array(2) };
    await rejectsWith(pool.scanChangedPages(new Uint8Array(8192), 4096, shared, out), 'KEMARI_INVALID_ARGUMENT');
    await rejectsWith(pool.scanChangedPages(shared, 4096, new Uint8Array(8192), out), 'KEMARI_INVALID_ARGUMENT');
    await rejectsWith(pool.scanChangedPages(shared, 4096, new BigUint64Array(2), out), 'KEMARI_INVALID_ARGUMENT');
    await rejectsWith(pool.scanChangedPages(shared, 4096, sharedBytes(4096), out), 'KEMARI_INVALID_ARGUMENT');
    await rejectsWith(pool.scanChangedPages(shared, 3000, sharedBytes(8192), out), 'KEMARI_INVALID_ARGUMENT');
    await rejectsWith(pool.scanChangedPages(shared, 4096, shared, out), 'KEMARI_INVALID_ARGUMENT');
    await rejectsWith(pool.scanChangedPages(shared, 4096, sharedBytes(8192), { changedPages: new Uint32Array(1), zeroFlags: new Uint8Array(2) }), 'KEMARI_INVALID_ARGUMENT');
    const page = shared.subarray(0, 4096);
    const base = shared.subarray(4096);
    await rejectsWith(pool.encodeDeltas([page], [base], { out: new Uint8Array(4096), lengths: new Int32Array(1) }), 'KEMARI_INVALID_ARGUMENT');
    await rejectsWith(pool.encodeDeltas([page], [new Uint8Array(4096)], { out: sharedBytes(4096), lengths: new Int32Array(1) }), 'KEMARI_INVALID_ARGUMENT');
    await rejectsWith(pool.encodeDeltas([page], [base, base], { out: sharedBytes(4096), lengths: new Int32Array(1) }), 'KEMARI_INVALID_ARGUMENT');
    await rejectsWith(pool.encodeDeltas([page], [base.subarray(1)], { out: sharedBytes(4096), lengths: new Int32Array(1) }), 'KEMARI_INVALID_ARGUMENT');
    await rejectsWith(pool.encodeDeltas([page], [base], { out: sharedBytes(100), lengths: new Int32Array(1) }), 'KEMARI_INVALID_ARGUMENT');
    await rejectsWith(pool.encodeDeltas([page], [base], { out: shared, lengths: new Int32Array(1) }, 100), 'KEMARI_INVALID_ARGUMENT');
    await rejectsWith(pool.encodeDeltas([page], [base], { out: sharedBytes(4096), lengths: new Int32Array(0) }), 'KEMARI_INVALID_ARGUMENT');
    await expect(PagesWorkerPool.start({ workers: 0 })).rejects.toMatchObject({ code: 'KEMARI_INVALID_ARGUMENT' });
    await expect(PagesWorkerPool.start({ parallelBytesMin: -1 })).rejects.toMatchObject({ code: 'KEMARI_INVALID_ARGUMENT' });
    expect(pool.stats().failure).toBeUndefined();
  });

  it('close() finishes the running operation, rejects the queued ones with KEMARI_CLOSED, and is idempotent', async () => {
    const closing = await PagesWorkerPool.start({ workers: 2, parallelBytesMin: 0 });
    const region = sharedBytes(16 << 20);
    region[12345] = 1;
    const shadow = sharedBytes(16 << 20);
    const out = { changedPages: new Uint32Array(4096), zeroFlags: new Uint8Array(4096) };
    const running = closing.scanChangedPages(region, 4096, shadow, out, { update: true });
    const queued = closing.scanChangedPages(region, 4096, shadow, { changedPages: new Uint32Array(4096), zeroFlags: new Uint8Array(4096) });
    const closed = closing.close();
    expect(closing.close()).toBe(closed);
    await rejectsWith(queued, 'KEMARI_CLOSED');
    expect(await running).toBe(1);
    expect(shadow[12345]).toBe(1); // the running scan advanced the whole reference
    await closed;
    expect(closing.workerCount).toBe(0);
    await rejectsWith(closing.scanChangedPages(region, 4096, shadow, out), 'KEMARI_CLOSED');
    await rejectsWith(closing.encodeDeltas([], [], { out: sharedBytes(0), lengths: new Int32Array(0) }), 'KEMARI_CLOSED');
  });

  for (const mode of ['throw', 'exit'] as const) {
    it(`a thread that crashes (${mode}) fails its operation with KEMARI_WORKER_FAILED and is replaced`, async () => {
      const crashing = await PagesWorkerPool.start({ workers: 2, parallelBytesMin: 0 });
      try {
        const region = sharedBytes(1 << 20);
        const shadow = sharedBytes(1 << 20);
        region[70_000] = 1;
        const out = { changedPages: new Uint32Array(256), zeroFlags: new Uint8Array(256) };
        crashing.injectFault(1, mode);
        const error = await rejectsWith(crashing.scanChangedPages(region, 4096, shadow, out), 'KEMARI_WORKER_FAILED');
        expect((error as { details: { worker: number } }).details.worker).toBe(1);
        expect(crashing.stats().workerCrashes).toBe(1);
        // The survivor keeps serving while the replacement starts, then both do.
        expect(await crashing.scanChangedPages(region, 4096, shadow, out)).toBe(1);
        await until(() => crashing.workerCount === 2);
        expect(crashing.stats()).toMatchObject({ workerRestarts: 1, workers: 2, failure: undefined });
        // The replacement knows the buffers registered before it started.
        expect(await crashing.scanChangedPages(region, 4096, shadow, out, { update: true })).toBe(1);
        expect(await crashing.scanChangedPages(region, 4096, shadow, out)).toBe(0);
      } finally {
        await crashing.close();
      }
    });
  }

  it('queues an operation while every thread is being replaced', async () => {
    const single = await PagesWorkerPool.start({ workers: 1, parallelBytesMin: 0 });
    try {
      const region = sharedBytes(64 << 10);
      const shadow = sharedBytes(64 << 10);
      region[4096] = 2;
      const out = { changedPages: new Uint32Array(16), zeroFlags: new Uint8Array(16) };
      single.injectFault(0, 'exit');
      await rejectsWith(single.scanChangedPages(region, 4096, shadow, out), 'KEMARI_WORKER_FAILED');
      expect(await single.scanChangedPages(region, 4096, shadow, out)).toBe(1);
      expect(single.stats()).toMatchObject({ workerCrashes: 1, workerRestarts: 1, workers: 1 });
    } finally {
      await single.close();
    }
  });

  it('reports a failure, and fails every later operation, when no thread can be restarted', async () => {
    const doomed = await PagesWorkerPool.start({ workers: 1, parallelBytesMin: 0 });
    try {
      // Replacements now run a script that throws at once (the entry is private: set here for this test only).
      (doomed as unknown as { entry: { entry: string; options: object } }).entry = { entry: 'throw new Error("cannot start")', options: { eval: true } };
      const region = sharedBytes(64 << 10);
      const out = { changedPages: new Uint32Array(16), zeroFlags: new Uint8Array(16) };
      doomed.injectFault(0, 'throw');
      await rejectsWith(doomed.scanChangedPages(region, 4096, sharedBytes(64 << 10), out), 'KEMARI_WORKER_FAILED');
      const queued = doomed.scanChangedPages(region, 4096, sharedBytes(64 << 10), out);
      await rejectsWith(queued, 'KEMARI_WORKER_FAILED');
      expect(doomed.stats()).toMatchObject({ workers: 0, workerCrashes: 1, workerRestarts: 1 });
      expect(doomed.stats().failure?.code).toBe('KEMARI_WORKER_FAILED');
      await rejectsWith(doomed.scanChangedPages(region, 4096, sharedBytes(64 << 10), out), 'KEMARI_WORKER_FAILED');
    } finally {
      await doomed.close();
    }
  });
});
