/**
 * Measures where a {@link PagesWorkerPool} starts to beat the calling thread, per operation, on this machine.
 *
 * Why measured rather than computed: the crossing point depends on things no formula here knows — how many cores
 * are really free (a 2-vCPU guest whose host is busy gives no speedup at all), whether memory bandwidth or the
 * CPU bounds the operation (a native shadow scan runs at memcpy speed on one core), and what a message round trip
 * to a thread costs. {@link PARALLEL_BYTES_MIN_DEFAULTS} came from this function; a deployment on other hardware
 * can run it once and pass the result as `parallelBytesMin`.
 *
 * Synthetic data, as bench/pages.bench.ts uses: a random region with 1% of its pages changed a little, and pages
 * with 32 changed 8-byte words for deltas. Median of rounds, inline pool against threads pool, same backend.
 */
import { checkInteger, invalid } from '../wire/validate.js';
import { PagesWorkerPool, sharedBytes } from './worker-pool.js';
import type { ParallelBytesMin, PagesPoolOperation } from './worker-pool.js';

/** One measured size of one operation. */
export interface CalibrationRow {
  operation: PagesPoolOperation;
  /** Bytes of pages covered. */
  bytes: number;
  /** Median milliseconds on the calling thread, and through the threads. */
  inlineMs: number;
  poolMs: number;
}

/** Options of {@link measureParallelBytesMin}. */
export interface CalibrationOptions {
  /** Threads of the measured pool; default the pool's default. */
  workers?: number;
  /** Sizes to try, increasing, multiples of 4 KiB; default 64 KiB to 64 MiB by factors of 4. */
  sizesBytes?: number[];
  /** Time spent per size and side, at least 5 rounds; default 400 ms. */
  budgetMs?: number;
  /** Speedup the threads must show to count as a win (noise margin); default 1.1. */
  winFactor?: number;
}

const PAGE_BYTES = 4096;

function fillRandom(bytes: Uint8Array, seed: number): void {
  const words = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >>> 2);
  let x = seed | 1;
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x;
  }
}

async function medianMs(fn: () => Promise<unknown>, budgetMs: number): Promise<number> {
  for (let i = 0; i < 2; i++) await fn();
  const samples: number[] = [];
  const end = performance.now() + budgetMs;
  while (samples.length < 5 || (performance.now() < end && samples.length < 1000)) {
    const start = performance.now();
    await fn();
    samples.push(performance.now() - start);
  }
  samples.sort((a, b) => a - b);
  return samples[samples.length >> 1]!;
}

/**
 * Times each operation at each size on the calling thread and through `workers` threads; returns the rows and,
 * per operation, the smallest size from which the threads won (by `winFactor`) at every larger size measured, or
 * Infinity when they never did. Allocates about 3x the largest size of shared memory while it runs.
 */
export async function measureParallelBytesMin(options: CalibrationOptions = {}): Promise<{ thresholds: ParallelBytesMin; rows: CalibrationRow[] }> {
  const sizes = options.sizesBytes ?? [64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20];
  if (!Array.isArray(sizes) || sizes.length === 0) invalid('sizesBytes', 'must be a non-empty array');
  sizes.forEach((size, i) => {
    checkInteger(`sizesBytes[${i}]`, size, PAGE_BYTES, 2 ** 40);
    if (size % PAGE_BYTES !== 0 || (i > 0 && size <= sizes[i - 1]!)) invalid(`sizesBytes[${i}]`, 'must be an increasing multiple of 4096', size);
  });
  const budgetMs = options.budgetMs ?? 400;
  const winFactor = options.winFactor ?? 1.1;
  const workersOption = options.workers === undefined ? {} : { workers: options.workers };
  const inline = await PagesWorkerPool.start({ ...workersOption, parallelBytesMin: Number.POSITIVE_INFINITY });
  const pooled = await PagesWorkerPool.start({ ...workersOption, parallelBytesMin: 0 });
  const rows: CalibrationRow[] = [];
  try {
    const maxBytes = sizes[sizes.length - 1]!;
    const maxPages = maxBytes / PAGE_BYTES;
    const region = sharedBytes(maxBytes);
    fillRandom(region, 1);
    const shadow = sharedBytes(maxBytes);
    shadow.set(region);
    for (let page = 0; page < maxPages; page += 100) region[page * PAGE_BYTES + 5]! ^= 1;
    const fingerprints = new BigUint64Array(new SharedArrayBuffer(maxPages * 8));
    const out = { changedPages: new Uint32Array(maxPages), zeroFlags: new Uint8Array(maxPages) };
    await pooled.scanChangedPages(shadow, PAGE_BYTES, fingerprints, out, { update: true });
    for (const operation of ['scanShadow', 'scanFingerprints'] as const) {
      for (const bytes of sizes) {
        const r = region.subarray(0, bytes);
        const reference = operation === 'scanShadow' ? shadow.subarray(0, bytes) : fingerprints.subarray(0, bytes / PAGE_BYTES);
        const inlineMs = await medianMs(() => inline.scanChangedPages(r, PAGE_BYTES, reference, out), budgetMs);
        const poolMs = await medianMs(() => pooled.scanChangedPages(r, PAGE_BYTES, reference, out), budgetMs);
        rows.push({ operation, bytes, inlineMs, poolMs });
      }
    }
    // Deltas: new pages are the shadow's with 32 changed words each, against the shadow as base.
    const pageCount = Math.min(maxPages, 16384);
    const newPages = sharedBytes(pageCount * PAGE_BYTES);
    newPages.set(shadow.subarray(0, pageCount * PAGE_BYTES));
    let x = 12345;
    for (let p = 0; p < pageCount; p++) {
      for (let w = 0; w < 32; w++) {
        x = (Math.imul(x, 1103515245) + 12345) >>> 0;
        const at = p * PAGE_BYTES + ((x >>> 8) % (PAGE_BYTES / 8)) * 8;
        for (let k = 0; k < 8; k++) newPages[at + k] = newPages[at + k]! ^ (1 + ((x >>> k) % 255));
      }
    }
    const pages: Uint8Array[] = [];
    const bases: Uint8Array[] = [];
    for (let p = 0; p < pageCount; p++) {
      pages.push(newPages.subarray(p * PAGE_BYTES, (p + 1) * PAGE_BYTES));
      bases.push(shadow.subarray(p * PAGE_BYTES, (p + 1) * PAGE_BYTES));
    }
    const deltaOut = { out: sharedBytes(pageCount * (PAGE_BYTES / 2)), lengths: new Int32Array(pageCount) };
    for (const bytes of sizes) {
      const n = bytes / PAGE_BYTES;
      if (n > pageCount) break;
      const p = pages.slice(0, n);
      const b = bases.slice(0, n);
      const inlineMs = await medianMs(() => inline.encodeDeltas(p, b, deltaOut, PAGE_BYTES / 2), budgetMs);
      const poolMs = await medianMs(() => pooled.encodeDeltas(p, b, deltaOut, PAGE_BYTES / 2), budgetMs);
      rows.push({ operation: 'encodeDeltas', bytes, inlineMs, poolMs });
    }
  } finally {
    await Promise.all([inline.close(), pooled.close()]);
  }
  const thresholds = { scanShadow: Number.POSITIVE_INFINITY, scanFingerprints: Number.POSITIVE_INFINITY, encodeDeltas: Number.POSITIVE_INFINITY };
  for (const operation of ['scanShadow', 'scanFingerprints', 'encodeDeltas'] as const) {
    const measured = rows.filter((r) => r.operation === operation);
    for (let i = measured.length - 1; i >= 0 && measured[i]!.inlineMs >= winFactor * measured[i]!.poolMs; i--) thresholds[operation] = measured[i]!.bytes;
  }
  return { thresholds, rows };
}
