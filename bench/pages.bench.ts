/**
 * Page benchmarks: the changed-page scan over a 256 MiB region with 1% of its pages dirty, XOR-delta encode and
 * decode of pages with 32 changed 8-byte words, and mmap against reading the file of a 256 MiB QEMU memory backend.
 * Every throughput is printed beside memcpy (Buffer.copy) of the same bytes, measured in the same run: ratios are
 * what to compare across machines.
 *
 *   npx tsx bench/pages.bench.ts           full run (about a minute)
 *   npx tsx bench/pages.bench.ts --quick   fewer rounds, smaller delta set (CI smoke check)
 *
 * Operations on 256 MiB take tens of milliseconds, so this times rounds directly (median of N after a warm-up)
 * rather than through benchmark.js, whose minimum sample counts would make a run take minutes.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  encodeDelta,
  encodeDeltaBatch,
  mmapFile,
  mmapImplementation,
  pagesImplementation,
  pagesNativeLoadError,
  scanChangedPages,
  unmap,
} from '../src/pages/index.js';
import type { PagesBackend } from '../src/pages/backend.js';
import { jsBackend } from '../src/pages/js-backend.js';
import { nativeBinding } from '../src/pages/native-binding.js';

const quick = process.argv.includes('--quick');
const ROUNDS = quick ? 3 : 11;
const PAGE_BYTES = 4096;
const REGION_BYTES = 256 << 20;
const PAGES = REGION_BYTES / PAGE_BYTES;
const DIRTY_PAGES = Math.round(PAGES / 100);

let sink = 0;

/** Median seconds of `rounds` runs of `fn`, after one warm-up run. */
function time(fn: () => void, rounds = ROUNDS): number {
  fn();
  const samples: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const start = process.hrtime.bigint();
    fn();
    samples.push(Number(process.hrtime.bigint() - start) / 1e9);
  }
  samples.sort((a, b) => a - b);
  return samples[Math.floor(samples.length / 2)]!;
}

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

interface Row {
  name: string;
  seconds: number;
  bytes: number;
}
const rows: Row[] = [];
function row(name: string, seconds: number, bytes: number): void {
  rows.push({ name, seconds, bytes });
  const memcpy = rows[0]!;
  const gbps = bytes / seconds / 1e9;
  const ratio = gbps / (memcpy.bytes / memcpy.seconds / 1e9);
  console.log(`${name.padEnd(58)} ${gbps.toFixed(2).padStart(7)} ${ratio.toFixed(2).padStart(9)} ${(seconds * 1e3).toFixed(2).padStart(9)}`);
}

const nativeInfo = nativeBinding === undefined ? `not loaded (${String(pagesNativeLoadError())})` : `loaded, sse4.2 ${nativeBinding.sse42 ? 'on' : 'off'}`;
console.log(`pages implementation: ${pagesImplementation()} (kemari_pages addon ${nativeInfo}); mmap: ${mmapImplementation()}`);
console.log(`node ${process.version}; ${quick ? 'quick' : 'full'} run, median of ${ROUNDS} rounds`);
console.log(`${'benchmark'.padEnd(58)} ${'GB/s'.padStart(7)} ${'x memcpy'.padStart(9)} ${'ms'.padStart(9)}`);

// --- 1. Changed-page scan, 256 MiB, 1% dirty ---------------------------------------------------------------------
const region = Buffer.alloc(REGION_BYTES);
fillRandom(region, 1);
const shadow = Buffer.from(region);
const copyTarget = Buffer.alloc(REGION_BYTES);
// Dirty 1% of the pages, spread over the region, a few words each; every 10th of them zeroed.
for (let k = 0; k < DIRTY_PAGES; k++) {
  const page = Math.floor((k * PAGES) / DIRTY_PAGES) + (k % 7);
  const at = page * PAGE_BYTES;
  if (k % 10 === 0) region.fill(0, at, at + PAGE_BYTES);
  else for (let w = 0; w < 4; w++) region[at + ((k * 97 + w * 1031) % PAGE_BYTES)]! ^= 0x5a;
}
const out = { changedPages: new Uint32Array(PAGES), zeroFlags: new Uint8Array(PAGES) };
const fingerprints = new BigUint64Array(PAGES);

row('memcpy (Buffer.copy) 256 MiB', time(() => void region.copy(copyTarget)), REGION_BYTES);

function scanRows(label: string, backend: PagesBackend, withFingerprints: boolean): void {
  backend.scanFingerprints(shadow, PAGE_BYTES, fingerprints, 0n, out.changedPages, out.zeroFlags, true); // baseline
  let found = 0;
  const shadowSeconds = time(() => {
    found = backend.scanShadow(region, PAGE_BYTES, shadow, out.changedPages, out.zeroFlags, false);
  });
  row(`scan 256 MiB, 1% dirty: ${label} shadow (memcmp a page)`, shadowSeconds, REGION_BYTES);
  if (found !== DIRTY_PAGES) throw new Error(`shadow scan found ${found} pages, expected ${DIRTY_PAGES}`);
  if (!withFingerprints) return;
  const printSeconds = time(() => {
    found = backend.scanFingerprints(region, PAGE_BYTES, fingerprints, 0n, out.changedPages, out.zeroFlags, false);
  }, backend === jsBackend ? Math.min(ROUNDS, 3) : ROUNDS);
  row(`scan 256 MiB, 1% dirty: ${label === 'native' ? label : 'JS'} fingerprints (XXH3)`, printSeconds, REGION_BYTES);
  if (found !== DIRTY_PAGES) throw new Error(`fingerprint scan found ${found} pages, expected ${DIRTY_PAGES}`);
}

if (nativeBinding !== undefined) scanRows('native', nativeBinding, true);
scanRows('JS Buffer#compare', jsBackend, true);

// The other pure-JavaScript candidate: compare pages as Int32Array words in a loop.
{
  const a = new Int32Array(region.buffer, region.byteOffset, REGION_BYTES / 4);
  const b = new Int32Array(shadow.buffer, shadow.byteOffset, REGION_BYTES / 4);
  const wordsPerPage = PAGE_BYTES / 4;
  let found = 0;
  const seconds = time(() => {
    found = 0;
    for (let page = 0; page < PAGES; page++) {
      for (let w = page * wordsPerPage, end = w + wordsPerPage; w < end; w++) {
        if (a[w] !== b[w]) {
          out.changedPages[found++] = page;
          break;
        }
      }
    }
  }, Math.min(ROUNDS, 5));
  row('scan 256 MiB, 1% dirty: JS Int32Array word loop (no zero flags)', seconds, REGION_BYTES);
  sink += found;
}
{
  const gbps = (prefix: string): number => {
    const r = rows.find((x) => x.name.includes(prefix));
    return r === undefined ? NaN : r.bytes / r.seconds / 1e9;
  };
  const bestJs = Math.max(gbps('JS Buffer#compare shadow'), gbps('JS Int32Array'));
  if (nativeBinding !== undefined) {
    console.log(
      `  native shadow scan: ${(gbps('native shadow') / bestJs).toFixed(1)}x the best pure-JS scan; native fingerprints: ` +
        `${(gbps('native fingerprints') / gbps('JS fingerprints')).toFixed(1)}x the TypeScript XXH3 scan, ` +
        `${(gbps('native fingerprints') / bestJs).toFixed(1)}x the best pure-JS scan`,
    );
    const bestNative = Math.max(gbps('native shadow'), gbps('native fingerprints'));
    const toJs = bestNative / bestJs;
    const toMemcpy = bestNative / gbps('memcpy');
    console.log(
      `  goal: native >= 1.5x the best pure-JS scan and >= 0.7x memcpy: ${toJs >= 1.5 && toMemcpy >= 0.7 ? 'met' : 'NOT MET'} ` +
        `(the faster native mode: ${toJs.toFixed(2)}x the best JS, ${toMemcpy.toFixed(2)}x memcpy)`,
    );
  }
}
// The public entry point (validation + dispatch) costs nothing measurable on top of its backend.
row(
  `scan 256 MiB, 1% dirty: scanChangedPages (${pagesImplementation()}), shadow`,
  time(() => void (sink += scanChangedPages(region, PAGE_BYTES, shadow, out))),
  REGION_BYTES,
);

// --- 2. XOR deltas: 32 changed 8-byte words a page ------------------------------------------------------------------
const DELTA_PAGES = quick ? 2048 : 8192;
const oldPages = Buffer.alloc(DELTA_PAGES * PAGE_BYTES);
fillRandom(oldPages, 2);
const newPages = Buffer.from(oldPages);
{
  let x = 12345;
  for (let p = 0; p < DELTA_PAGES; p++) {
    for (let w = 0; w < 32; w++) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      const at = p * PAGE_BYTES + ((x >>> 8) % (PAGE_BYTES / 8)) * 8;
      for (let k = 0; k < 8; k++) newPages[at + k] = oldPages[at + k]! ^ (1 + ((x >>> k) % 255)); // every byte changes
    }
  }
}
const arena = new Uint8Array(DELTA_PAGES * PAGE_BYTES);
const offsets = new Int32Array(DELTA_PAGES + 1);
const DELTA_BYTES = DELTA_PAGES * PAGE_BYTES;
const identity = Uint32Array.from({ length: DELTA_PAGES }, (_, p) => p); // page p against base p, as the loop does
const batchLengths = new Int32Array(DELTA_PAGES);

function deltaRows(label: string, backend: PagesBackend): void {
  let encodedBytes = 0;
  let raw = 0;
  const encodeSeconds = time(() => {
    let at = 0;
    raw = 0;
    for (let p = 0; p < DELTA_PAGES; p++) {
      const start = p * PAGE_BYTES;
      const oldPage = oldPages.subarray(start, start + PAGE_BYTES);
      const newPage = newPages.subarray(start, start + PAGE_BYTES);
      const length = backend.encodeDelta(oldPage, newPage, arena.subarray(at, at + PAGE_BYTES), PAGE_BYTES);
      offsets[p] = at;
      if (length < 0) raw++;
      else at += length;
    }
    offsets[DELTA_PAGES] = at;
    encodedBytes = at;
  });
  row(`delta encode, 32 changed words/page: ${label}`, encodeSeconds, DELTA_BYTES);
  // The same pages, budget and packing in one encodeDeltaBatch call (bases not updated, so every round is the same
  // work); it must give the same bytes, which it writes over the arena the loop above filled.
  let batchBytes = 0;
  const batchSeconds = time(() => {
    batchBytes = backend.encodeDeltaBatch(newPages, identity, oldPages, identity, DELTA_PAGES, PAGE_BYTES, PAGE_BYTES, arena, batchLengths, false);
  });
  row(`delta encode batch, 32 changed words/page: ${label}`, batchSeconds, DELTA_BYTES);
  for (let p = 0; p < DELTA_PAGES; p++) {
    // The loop kept offsets only: a page over budget (-1) or unchanged (0) advanced it by 0.
    if (Math.max(0, batchLengths[p]!) !== offsets[p + 1]! - offsets[p]!) throw new Error(`batch length of page ${p} differs from the loop's`);
  }
  if (batchBytes !== encodedBytes) throw new Error(`batch encoded ${batchBytes} bytes, the per-page loop ${encodedBytes}`);
  console.log(`  ${label} batch encode: ${(encodeSeconds / batchSeconds).toFixed(2)}x the per-page loop (batch/single GB/s)`);
  const work = Buffer.from(oldPages);
  const decodeSeconds = time(() => {
    for (let p = 0; p < DELTA_PAGES; p++) {
      const start = p * PAGE_BYTES;
      const page = work.subarray(start, start + PAGE_BYTES);
      // In place, as the secondary applies them; applying twice flips back, which changes nothing to the timing.
      sink += backend.decodeDelta(page, arena.subarray(offsets[p]!, offsets[p + 1]!), page);
    }
  });
  row(`delta decode in place, 32 changed words/page: ${label}`, decodeSeconds, DELTA_BYTES);
  const ratio = DELTA_BYTES / encodedBytes;
  console.log(
    `  ${label} deltas: ${(encodedBytes / DELTA_PAGES).toFixed(1)} bytes/page on average, ${ratio.toFixed(1)}x smaller than raw ` +
      `(${((1 - encodedBytes / DELTA_BYTES) * 100).toFixed(1)}% saved), ${raw} pages over budget; goal >= 4x` +
      `${ratio >= 4 ? ' met' : ' NOT MET'}, encode >= 1 GB/s ${DELTA_BYTES / encodeSeconds / 1e9 >= 1 ? 'met' : 'NOT MET'}`,
  );
}

if (nativeBinding !== undefined) deltaRows('native', nativeBinding);
deltaRows('JS', jsBackend);
row(
  `delta encode via encodeDelta (${pagesImplementation()}), validation included`,
  time(() => {
    for (let p = 0, at = 0; p < DELTA_PAGES; p++) {
      const start = p * PAGE_BYTES;
      at += Math.max(0, encodeDelta(oldPages.subarray(start, start + PAGE_BYTES), newPages.subarray(start, start + PAGE_BYTES), arena.subarray(at, at + PAGE_BYTES)));
    }
  }),
  DELTA_BYTES,
);

{
  const viaBatchSeconds = time(() => {
    sink += encodeDeltaBatch(newPages, identity, oldPages, identity, PAGE_BYTES, arena, batchLengths);
  });
  row(`delta encodeDeltaBatch (${pagesImplementation()}), validation included`, viaBatchSeconds, DELTA_BYTES);
  const single = rows.find((r) => r.name.startsWith('delta encode via encodeDelta ('))!;
  console.log(`  public API, ${pagesImplementation()}: encodeDeltaBatch is ${(single.seconds / viaBatchSeconds).toFixed(2)}x encodeDelta per page (batch/single GB/s)`);
}

// --- 3. mmap vs reading the file: a 256 MiB memory-backend file, mapped or read, then scanned ---------------------
const dir = mkdtempSync(join(tmpdir(), 'kemari-bench-'));
try {
  const path = join(dir, 'pc.ram');
  writeFileSync(path, region);
  readFileSync(path); // warm the page cache: both sides read from memory
  const scanFile = (bytes: Uint8Array): number => scanChangedPages(bytes, PAGE_BYTES, shadow, out);
  if (mmapImplementation() === 'native') {
    row(
      'mmap 256 MiB file + scan (shadow), then unmap',
      time(() => {
        const buffer = mmapFile(path, REGION_BYTES);
        sink += scanFile(new Uint8Array(buffer));
        unmap(buffer);
      }),
      REGION_BYTES,
    );
    const mapped = new Uint8Array(mmapFile(path, REGION_BYTES));
    scanFile(mapped); // fault the pages in once
    row('scan (shadow) of an already mapped 256 MiB file', time(() => void (sink += scanFile(mapped))), REGION_BYTES);
    unmap(mapped.buffer as ArrayBuffer);
  }
  row(
    'read 256 MiB file (fallback copy) + scan (shadow)',
    time(() => {
      const buffer = jsBackend.mmapFile(path, REGION_BYTES);
      sink += scanFile(new Uint8Array(buffer));
      jsBackend.unmap(buffer);
    }, Math.min(ROUNDS, 5)),
    REGION_BYTES,
  );
} finally {
  rmSync(dir, { recursive: true, force: true });
}

if (sink === 0.5) console.log(sink); // keep results observable
