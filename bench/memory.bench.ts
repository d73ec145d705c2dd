/**
 * Memory: what protecting a guest costs in resident memory beyond the guest itself, on the primary and on the
 * secondary. A 1 GiB SimulatedVm (256 MiB with --quick), every page resident and non-zero, is protected by a Primary
 * (deltas on, 64 MiB delta cache) that finds changed pages in one of three ways:
 *
 *   bitmap        the VM's own dirty tracking (the hypervisor tells kemari which pages changed): no reference;
 *   fingerprints  scanChangedPages against an XXH3 table, 8 bytes a page (a hypervisor that tells nobody, as QEMU
 *                 over its shared memory file): the scan reference the issue asks to keep under 2%;
 *   shadow        scanChangedPages against a shadow copy: a second guest;
 *   fingerprints+gc  fingerprints again, with a full garbage collection after every epoch: a diagnostic row that
 *                 separates memory the primary keeps from per-epoch garbage not yet collected.
 *   fingerprints+semi4  fingerprints again, in a process run with --max-semi-space-size=4: a diagnostic row for V8's
 *                 young generation, which grows to 2 x 16 MiB semi-spaces in any busy Node.js 20 process whatever
 *                 the guest's size (a per-process constant, not a fraction of the guest). 4 MiB is the cap a host
 *                 short of memory may set: 1 MiB saved little more and cost a quarter of the epochs per second, 4 MiB
 *                 about a tenth (paired runs of bench:epochs' delta configuration, run by hand with NODE_OPTIONS).
 *   fingerprints+inplace  fingerprints again, with the primary's captureInPlace: an epoch in flight holds its deltas
 *                 and the pages sent whole, not a copy of every dirty page (and the pause does the delta encoding).
 *
 * The two scanning modes wrap the VM in a {@link ScanningVm}, which takes the changed pages from the scan rather
 * than from the dirty bitmap, and checks each epoch that both agree (so the figures are of a correct primary).
 *
 * Each mode runs in a fresh primary process with a fresh secondary process. Figures, from /proc/self/status
 * (VmRSS, VmHWM; the peak is reset through /proc/self/clear_refs between phases):
 * - baseline: the process with the guest allocated, filled and resident, before the primary exists;
 * - full sync peak: the highest RSS while the primary starts (reference built, pre-copy, first transaction);
 * - steady peak: the highest RSS over the epochs after it (1% of the pages dirty per epoch, 32 bytes each), from a
 *   garbage-collected start (what the full sync left for the collector is not the steady state's);
 * - overhead: peak minus baseline, as a percentage of the guest; and the same less the delta cache's bytes (what
 *   the 64 MiB of page copies account for is the delta feature's, bounded by its own option).
 * - the secondary: peak RSS, beside its replica (the guest) and its staging arena (bounded by txnBytesMax, which
 *   here is the guest plus 64 MiB: a full sync must fit in one transaction).
 *
 *   npx tsx bench/memory.bench.ts           (1 GiB guest, 40 epochs per mode)
 *   npx tsx bench/memory.bench.ts --quick   (256 MiB guest, 15 epochs per mode)
 */
import { fork } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { getHeapSpaceStatistics } from 'node:v8';
import { randomBytes } from 'node:crypto';
import { Primary } from '../src/primary/primary.js';
import type { PrimaryCommit } from '../src/primary/primary.js';
import { FINGERPRINT_BYTES, pageFingerprint, pagesImplementation, scanChangedPages } from '../src/pages/index.js';
import type { PageScanOutput } from '../src/pages/index.js';
import { Secondary } from '../src/secondary/secondary.js';
import type { CaptureOptions, EpochCapture, PrecopyChunk, PrecopyOptions, VmAdapter } from '../src/vm/adapter.js';
import { SimulatedVm } from '../src/vm/simulated-vm.js';
import { Workload } from '../src/vm/workload.js';
import { PageKind } from '../src/wire/bodies/pages.js';
import type { Page } from '../src/wire/bodies/pages.js';

const quick = process.argv.includes('--quick');
const MEMORY_BYTES = quick ? 256 << 20 : 1 << 30;
const PAGE_BYTES = 4096;
const PAGE_COUNT = MEMORY_BYTES / PAGE_BYTES;
const DIRTY_PAGES = Math.round(PAGE_COUNT / 100);
const WARMUP_EPOCHS = 5;
const EPOCHS = quick ? 15 : 40;
const DELTA_CACHE_BYTES = 64 << 20;
const TXN_BYTES_MAX = MEMORY_BYTES + (64 << 20);
const MIB = 1 << 20;

/** The three ways to find changed pages, and fingerprints again with a full GC after every epoch (diagnostic). */
type Mode = 'bitmap' | 'fingerprints' | 'shadow' | 'fingerprints+gc' | 'fingerprints+semi4' | 'fingerprints+inplace';

/** Resident and peak resident bytes of this process (Linux). */
function memoryStatus(): { rss: number; hwm: number } {
  const status = readFileSync('/proc/self/status', 'utf8');
  const field = (name: string): number => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN) * 1024;
  return { rss: field('VmRSS'), hwm: field('VmHWM') };
}

/** Resets VmHWM to the current RSS, so the next reading is the peak of the next phase. */
function resetPeak(): void {
  writeFileSync('/proc/self/clear_refs', '5');
}

/** Committed bytes of V8's young generation (new space), touched or not. */
function youngBytes(): number {
  return getHeapSpaceStatistics().find((space) => space.space_name === 'new_space')?.physical_space_size ?? 0;
}

function collect(): void {
  (globalThis as { gc?: () => void }).gc?.();
}

/**
 * A SimulatedVm whose changed pages come from scanChangedPages against a reference instead of its dirty bitmap:
 * the memory a primary needs for a hypervisor that does not track dirty pages. Every epoch is checked against the
 * bitmap (the scan's pages must be among its dirty pages, with the same zero flags), so the reference is known to
 * be kept right, pre-copy included.
 */
class ScanningVm implements VmAdapter {
  readonly reference: Uint8Array | BigUint64Array;
  private readonly out: PageScanOutput;
  private readonly seed: bigint;
  private readonly zeroFingerprint: bigint;
  private readonly innerOf = new WeakMap<EpochCapture, EpochCapture>();

  constructor(
    readonly inner: SimulatedVm,
    readonly mode: 'fingerprints' | 'shadow',
  ) {
    const pageCount = inner.pageCount;
    this.seed = randomBytes(8).readBigUInt64LE(0); // secret per VM: a guest cannot aim at XXH3 collisions
    this.reference = mode === 'shadow' ? new Uint8Array(inner.memoryBytes) : new BigUint64Array(pageCount);
    this.out = { changedPages: new Uint32Array(pageCount), zeroFlags: new Uint8Array(pageCount) };
    this.zeroFingerprint = pageFingerprint(new Uint8Array(inner.pageBytes), this.seed);
  }

  get memoryBytes(): number {
    return this.inner.memoryBytes;
  }
  get pageBytes(): number {
    return this.inner.pageBytes;
  }
  get deviceNames(): readonly string[] {
    return this.inner.deviceNames;
  }
  get disks(): SimulatedVm['disks'] {
    return this.inner.disks;
  }
  pause(): void {
    this.inner.pause();
  }
  resume(): void {
    this.inner.resume();
  }

  /** Records pages as sent (pre-copy: the guest runs on, so the scan finds later changes). */
  private remember(pages: readonly Page[]): void {
    const pageBytes = this.pageBytes;
    for (const page of pages) {
      if (this.reference instanceof Uint8Array) {
        if (page.kind === PageKind.ZERO) this.reference.fill(0, page.index * pageBytes, (page.index + 1) * pageBytes);
        else this.reference.set(page.data, page.index * pageBytes);
      } else {
        this.reference[page.index] = page.kind === PageKind.ZERO ? this.zeroFingerprint : pageFingerprint(page.data, this.seed);
      }
    }
  }

  precopy(options: PrecopyOptions): PrecopyChunk {
    const chunk = this.inner.precopy(options);
    this.remember(chunk.pages);
    return chunk;
  }

  capture(options: CaptureOptions): EpochCapture {
    const captured = this.inner.capture(options);
    const seedOption = this.mode === 'shadow' ? {} : { seed: this.seed };
    const count = scanChangedPages(this.inner.memory, this.pageBytes, this.reference, this.out, { update: true, ...seedOption });
    if (options.full) return captured;
    // The scan's pages must be among the bitmap's (a dirty page may have been rewritten with the same bytes, which
    // only the scan can tell), with the same zero flags; they are what is sent, as the bitmap capture's copies.
    const { changedPages, zeroFlags } = this.out;
    const pages: Page[] = [];
    let k = 0;
    for (const page of captured.pages) {
      if (k < count && changedPages[k] === page.index) {
        if ((page.kind === PageKind.ZERO) !== (zeroFlags[k] === 1)) throw new Error(`page ${page.index}: the scan and the bitmap capture disagree on zero`);
        pages.push(page);
        k += 1;
      }
    }
    if (k !== count) throw new Error(`the ${this.mode} scan found page ${changedPages[k]} changed, which the dirty bitmap did not mark`);
    const capture = { ...captured, pages };
    this.innerOf.set(capture, captured);
    return capture;
  }

  /**
   * Marks pages dirty again (the primary's in-place captures): in the bitmap, and in the reference too, made to
   * differ from the page now (a shadow byte flipped, a fingerprint's low bit), so the scan reports them.
   */
  markDirty(pageIndices: Uint32Array): void {
    this.inner.markDirty(pageIndices);
    const pageBytes = this.pageBytes;
    for (const index of pageIndices) {
      if (this.reference instanceof Uint8Array) {
        this.reference[index * pageBytes] = this.inner.memory[index * pageBytes]! ^ 0xff;
      } else {
        this.reference[index] = pageFingerprint(this.inner.memory.subarray(index * pageBytes, (index + 1) * pageBytes), this.seed) ^ 1n;
      }
    }
  }

  /** Hands a pre-copied chunk back, so the next chunk reuses its buffer as in the bitmap mode. */
  releasePrecopy(chunk: PrecopyChunk): void {
    this.inner.releasePrecopy(chunk);
  }

  /** Hands the inner VM's capture back, so its send buffer is reused as in the bitmap mode. */
  releaseCapture(capture: EpochCapture): void {
    const inner = this.innerOf.get(capture);
    if (inner !== undefined) this.inner.releaseCapture(inner);
  }
}

/** Fills every page with non-zero bytes through the VM's write API, in 1 MiB writes (no guest-sized temporary). */
function fillGuest(vm: SimulatedVm, seed: number): void {
  const chunk = new Uint8Array(1 << 20);
  const words = new Uint32Array(chunk.buffer);
  let x = seed | 1;
  for (let offset = 0; offset < vm.memoryBytes; offset += chunk.length) {
    for (let i = 0; i < words.length; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      words[i] = x | 1;
    }
    vm.write(offset, chunk.subarray(0, Math.min(chunk.length, vm.memoryBytes - offset)));
  }
  // The workload's counter (page 0) starts at 0: a random u64 there would be beyond 2^53 and never change.
  vm.write(0, new Uint8Array(8));
}

interface PrimaryFigures {
  mode: Mode;
  baselineBytes: number;
  syncPeakBytes: number;
  steadyPeakBytes: number;
  steadyEndBytes: number;
  referenceBytes: number;
  deltaCacheBytes: number;
  /** process.memoryUsage() at the end of the steady phase: V8 heap, and ArrayBuffer memory (guest included). */
  heapUsedBytes: number;
  arrayBuffersBytes: number;
  /**
   * Growth of V8's young generation (new space, committed bytes) from the baseline to the end of the steady phase:
   * the collector sizes it by the process's allocation and survival, up to 2 x 16 MiB on Node 20 whatever the guest.
   */
  youngGrowthBytes: number;
  epochs: number;
  pauseP50Ms: number;
  syncMs: number;
}

interface SecondaryFigures {
  rssBytes: number;
  hwmBytes: number;
  baselineBytes: number;
}

const send = (m: unknown): void => void process.send?.(m);

function forkSelf(args: string[], execArgv: string[] = []): ChildProcess {
  return fork(new URL(import.meta.url), args, { execArgv: [...process.execArgv, '--expose-gc', ...execArgv] });
}

function nextMessage<T>(child: ChildProcess): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onExit = (code: number | null): void => reject(new Error(`child exited with code ${code}`));
    child.once('exit', onExit);
    child.once('message', (m) => {
      child.off('exit', onExit);
      resolve(m as T);
    });
  });
}

async function runSecondary(): Promise<void> {
  collect();
  const baselineBytes = memoryStatus().rss;
  const secondary = await Secondary.listen({ host: '127.0.0.1', port: 0, txnBytesMax: TXN_BYTES_MAX, heartbeat: { intervalMs: 100, missedMax: 100 } });
  send({ port: secondary.port });
  process.on('message', () => {
    collect();
    const { rss, hwm } = memoryStatus();
    send({ rssBytes: rss, hwmBytes: hwm, baselineBytes } satisfies SecondaryFigures);
  });
  process.on('disconnect', () => process.exit(0));
}

async function runPrimary(mode: Mode): Promise<void> {
  const vm = new SimulatedVm({ memoryBytes: MEMORY_BYTES, pageBytes: PAGE_BYTES, seed: 5, disks: [] });
  fillGuest(vm, 5);
  const workload = new Workload(vm, { seed: 13, pagesPerStep: DIRTY_PAGES - 1, bytesPerPageWrite: 32, outputEvery: 0 });
  const secondaryChild = forkSelf(['secondary']);
  const { port } = await nextMessage<{ port: number }>(secondaryChild);
  collect();
  await new Promise((r) => setTimeout(r, 50));
  const baselineBytes = memoryStatus().rss;
  const baselineYoungBytes = youngBytes();
  resetPeak();

  const syncStart = performance.now();
  const adapter: VmAdapter = mode === 'bitmap' ? vm : new ScanningVm(vm, mode === 'shadow' ? 'shadow' : 'fingerprints');
  const primary = await Primary.start({
    vm: adapter,
    secondary: { host: '127.0.0.1', port },
    delta: { cacheBytes: DELTA_CACHE_BYTES },
    pipelineDepth: 1,
    captureInPlace: mode === 'fingerprints+inplace',
    heartbeat: { intervalMs: 100, missedMax: 100 },
    // The secondary answers HELLO once its replica and staging (two guests' worth) are allocated and touched: on a
    // VM whose page faults are slow that alone can take longer than the default 10 s.
    connectTimeoutMs: 120_000,
  });
  const syncMs = performance.now() - syncStart;
  const syncPeakBytes = memoryStatus().hwm;

  const pauses: number[] = [];
  primary.on('commit', (c: PrimaryCommit) => pauses.push(c.pauseMs));
  for (let e = 0; e < WARMUP_EPOCHS; e++) {
    workload.step();
    await primary.tap.output('bench', Uint8Array.of(e));
  }
  // The steady phase starts from a collected heap: what the full sync left for the collector (guest-sized, in
  // pre-copy chunks) is the sync's, not the steady state's, and would otherwise set the steady peak by itself.
  collect();
  await new Promise((r) => setTimeout(r, 50));
  resetPeak();
  pauses.length = 0;
  for (let e = 0; e < EPOCHS; e++) {
    workload.step();
    await primary.tap.output('bench', Uint8Array.of(e));
    if (mode === 'fingerprints+gc') collect();
  }
  const { rss: steadyEndBytes, hwm: steadyPeakBytes } = memoryStatus();
  const usage = process.memoryUsage();
  // The delta cache is private to the primary; its byte count is read here only to separate it from the rest.
  const deltaCacheBytes = (primary as unknown as { deltaCache?: { bytes: number } }).deltaCache?.bytes ?? 0;
  const referenceBytes = adapter instanceof ScanningVm ? adapter.reference.byteLength : 0;
  pauses.sort((a, b) => a - b);
  const figures: PrimaryFigures = {
    mode,
    baselineBytes,
    syncPeakBytes,
    steadyPeakBytes,
    steadyEndBytes,
    referenceBytes,
    deltaCacheBytes,
    heapUsedBytes: usage.heapUsed,
    arrayBuffersBytes: usage.arrayBuffers,
    youngGrowthBytes: youngBytes() - baselineYoungBytes,
    epochs: primary.stats().epochs,
    pauseP50Ms: pauses[pauses.length >> 1] ?? NaN,
    syncMs,
  };
  secondaryChild.send('report');
  const secondaryFigures = await nextMessage<SecondaryFigures>(secondaryChild);
  send({ primary: figures, secondary: secondaryFigures });
  primary.close();
  secondaryChild.disconnect();
  process.on('disconnect', () => process.exit(0));
}

const pct = (bytes: number): string => `${((100 * bytes) / MEMORY_BYTES).toFixed(2)}%`;
const mib = (bytes: number): string => `${(bytes / MIB).toFixed(1)}`;

async function main(): Promise<void> {
  const started = performance.now();
  console.log(
    `memory benchmark (${quick ? 'quick' : 'full'} run): ${MEMORY_BYTES / MIB} MiB SimulatedVm, every page resident; deltas on (cache ${DELTA_CACHE_BYTES / MIB} MiB); ` +
      `${DIRTY_PAGES} pages (1%) dirty per epoch, ${EPOCHS} epochs measured; pages ${pagesImplementation()}; node ${process.version}; load average ${loadavg()[0]!.toFixed(2)}`,
  );
  const results: Array<{ primary: PrimaryFigures; secondary: SecondaryFigures }> = [];
  for (const mode of ['bitmap', 'fingerprints', 'shadow', 'fingerprints+gc', 'fingerprints+semi4', 'fingerprints+inplace'] as const) {
    const child = forkSelf(['primary', mode, ...(quick ? ['--quick'] : [])], mode === 'fingerprints+semi4' ? ['--max-semi-space-size=4'] : []);
    results.push(await nextMessage(child));
    child.disconnect();
  }
  console.log('primary (MiB; overhead = peak RSS - baseline RSS, the baseline holding the resident guest):');
  console.log(
    `${'mode'.padEnd(20)} ${'reference'.padStart(10)} ${'baseline'.padStart(9)} ${'sync peak'.padStart(10)} ${'overhead'.padStart(9)} ${'% guest'.padStart(8)} ` +
      `${'steady peak'.padStart(12)} ${'overhead'.padStart(9)} ${'% guest'.padStart(8)} ${'delta cache'.padStart(12)} ${'beyond cache'.padStart(13)} ${'% guest'.padStart(8)} ${'pause p50'.padStart(10)}`,
  );
  const bitmap = results.find((r) => r.primary.mode === 'bitmap')!.primary;
  for (const { primary: p } of results) {
    const syncOver = p.syncPeakBytes - p.baselineBytes;
    const steadyOver = p.steadyPeakBytes - p.baselineBytes;
    const beyond = steadyOver - p.deltaCacheBytes;
    console.log(
      `${p.mode.padEnd(20)} ${mib(p.referenceBytes).padStart(10)} ${mib(p.baselineBytes).padStart(9)} ${mib(p.syncPeakBytes).padStart(10)} ${mib(syncOver).padStart(9)} ${pct(syncOver).padStart(8)} ` +
        `${mib(p.steadyPeakBytes).padStart(12)} ${mib(steadyOver).padStart(9)} ${pct(steadyOver).padStart(8)} ${mib(p.deltaCacheBytes).padStart(12)} ${mib(beyond).padStart(13)} ${pct(beyond).padStart(8)} ` +
        `${(p.pauseP50Ms.toFixed(1) + ' ms').padStart(10)}`,
    );
  }
  console.log('  what the scanning modes add to the bitmap mode (steady peak overhead, less the delta cache), and where memory is at the end:');
  for (const { primary: p } of results) {
    const added = p.steadyPeakBytes - p.baselineBytes - p.deltaCacheBytes - (bitmap.steadyPeakBytes - bitmap.baselineBytes - bitmap.deltaCacheBytes);
    console.log(
      `  ${p.mode.padEnd(20)} ${p.mode === 'bitmap' ? '-'.padStart(9) : mib(added).padStart(9)} MiB ${p.mode === 'bitmap' ? '' : `(${pct(added)} of the guest)`}; ` +
        `V8 heap used ${mib(p.heapUsedBytes)} MiB, young generation committed ${p.youngGrowthBytes >= 0 ? '+' : ''}${mib(p.youngGrowthBytes)} MiB, ArrayBuffers ${mib(p.arrayBuffersBytes)} MiB (guest ${mib(MEMORY_BYTES)}, reference ${mib(p.referenceBytes)}, delta cache ${mib(p.deltaCacheBytes)})`,
    );
  }
  const beyondCache = (mode: Mode): number => {
    const p = results.find((r) => r.primary.mode === mode)!.primary;
    return p.steadyPeakBytes - p.baselineBytes - p.deltaCacheBytes;
  };
  const fingerprints = results.find((r) => r.primary.mode === 'fingerprints')!.primary;
  const beyond = beyondCache('fingerprints');
  console.log(
    `goal <= 2% of the guest beyond the delta cache with fingerprints (steady state): ${(100 * beyond) / MEMORY_BYTES <= 2 ? 'met' : 'NOT MET'} (${pct(beyond)}; ` +
      `the table itself is ${pct(fingerprints.referenceBytes)}, ${FINGERPRINT_BYTES} bytes a page, plus 5 bytes a page of scan output; ` +
      `the epoch in flight (its send buffer, reused from epoch to epoch) ${pct(DIRTY_PAGES * PAGE_BYTES)}; ` +
      `fingerprints add ${pct(beyond - beyondCache('bitmap'))} to the bitmap mode; with a GC after every epoch ${pct(beyondCache('fingerprints+gc'))}; ` +
      `with V8's young generation capped at 4 MiB semi-spaces ${pct(beyondCache('fingerprints+semi4'))}, so capping the young generation saved ${mib(beyond - beyondCache('fingerprints+semi4'))} MiB (a capped one, up to 2 x 4 MiB, remains); ` +
      `with captureInPlace ${pct(beyondCache('fingerprints+inplace'))})`,
  );
  // The same peak in parts: what grows with the guest, what grows with the epoch, and V8's young generation, which
  // grows with the process's allocation whatever the guest's size (up to 2 x 16 MiB semi-spaces on Node 20): its
  // share is what capping it saved, measured (V8's own committed figure counts pages never touched).
  const young = beyond - beyondCache('fingerprints+semi4');
  const perGuest = fingerprints.referenceBytes + 5 * PAGE_COUNT + 4 * PAGE_COUNT; // table, scan output, delta index
  const perEpoch = DIRTY_PAGES * PAGE_BYTES;
  console.log(
    `  fingerprints, in parts: per guest page (table, scan output, delta cache index) ${pct(perGuest)}; per epoch (the send buffer of 1% dirty) ${pct(perEpoch)}; ` +
      `V8's young generation (what capping it at 4 MiB semi-spaces saved) ${pct(young)}; the rest (delta scratch, V8's old generation and code, the allocator's free memory) ` +
      `${pct(beyond - perGuest - perEpoch - young)}`,
  );
  console.log(`secondary (txnBytesMax ${mib(TXN_BYTES_MAX)} MiB, default staging = min(txnBytesMax, guest + disks + 2 MiB) = ${mib(Math.min(TXN_BYTES_MAX, MEMORY_BYTES + 2 * MIB))} MiB):`);
  for (const { primary: p, secondary: s } of results) {
    const staging = Math.min(TXN_BYTES_MAX, MEMORY_BYTES + 2 * MIB);
    const other = s.hwmBytes - s.baselineBytes - MEMORY_BYTES - staging;
    console.log(
      `  with the ${p.mode.padEnd(20)} primary: peak RSS ${mib(s.hwmBytes)} MiB, now ${mib(s.rssBytes)} MiB = baseline ${mib(s.baselineBytes)} + replica ${mib(MEMORY_BYTES)} ` +
        `+ staging ${mib(staging)} + ${mib(other)} other (${pct(other)} of the guest); staging <= txnBytesMax: ${staging <= TXN_BYTES_MAX ? 'yes' : 'NO'}`,
    );
  }
  console.log(`total ${((performance.now() - started) / 1000).toFixed(1)} s`);
  process.exit(0);
}

const role = process.argv[2];
if (role === 'secondary') await runSecondary();
else if (role === 'primary') await runPrimary(process.argv[3] as Mode);
else await main();
