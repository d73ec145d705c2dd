/**
 * A pool of worker threads running the page functions (the changed-page scan, XOR-delta encoding) on memory held in
 * SharedArrayBuffers, so one epoch's scan or delta batch uses every core instead of one, and the calling thread's
 * event loop stays free (heartbeats, acks, the event-tap) while the work runs.
 *
 * Why shared memory: a guest region is hundreds of MiB; copying it to a thread would cost more than scanning it.
 * The region, its reference (shadow copy or fingerprint table), the pages and bases of a delta batch and the delta
 * output area are views of SharedArrayBuffers; each buffer is registered with the threads once, and a job then
 * names its memory as (buffer id, byte offset) pairs: only offsets and lengths cross postMessage, never page bytes.
 * Results are written by the threads into a shared scratch area and merged, in page order, on the calling thread.
 *
 * Same results as the single-threaded calls, byte for byte (the tests compare them on random inputs): the scan is
 * split by page ranges, each thread scans its range with the backend it loaded (the addon when it loads there, else
 * the TypeScript fallback; {@link PagesWorkerPool.implementation} says which), and the ranges are concatenated in
 * order; delta batches are split by pages, each delta landing in its own slot of the output area.
 *
 * Why a threshold: handing work to threads costs a message round trip (tens of microseconds), so a small region or
 * a short batch is faster on the calling thread; below {@link ParallelBytesMin} the pool does the work itself
 * (in queue order, so operations never overtake each other). The defaults were measured on a 2-core machine (see
 * {@link PARALLEL_BYTES_MIN_DEFAULTS}); measureParallelBytesMin (worker-calibrate.ts) measures them on another.
 *
 * Failure model: one operation runs at a time, others wait in a bounded queue (KEMARI_BUSY beyond it). A thread
 * that crashes (an uncaught exception, an exit) fails the operation it was part of with KEMARI_WORKER_FAILED,
 * only after every other part of it has stopped touching the caller's memory, and is replaced; a replacement that
 * cannot start leaves the pool with fewer threads, and with none the pool fails every operation, saying why.
 * {@link PagesWorkerPool.close} lets the running operation finish (a half-updated reference would silently break
 * the next epoch), rejects the queued ones with KEMARI_CLOSED, and ends the threads.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { WorkerOptions } from 'node:worker_threads';
import { ERROR_CODES, KemariError } from '../errors.js';
import type { ErrorCode } from '../errors.js';
import { checkInteger, invalid } from '../wire/validate.js';
import { checkDisjoint, checkScanPageBytes, checkU64, checkUint8Array, overlaps } from './check.js';
import { DELTA_PAGE_BYTES_MAX } from './delta-format.js';
import { activeBackend, pagesImplementation } from './implementation.js';
import type { PagesImplementation } from './implementation.js';
import type { PageReference, PageScanOptions, PageScanOutput } from './scan.js';
import type { FromWorker, ScanReferenceKind, SharedRef, ToWorker } from './worker-protocol.js';

/** The operations the pool runs, each with its own threshold. */
export type PagesPoolOperation = 'scanShadow' | 'scanFingerprints' | 'encodeDeltas';

/**
 * Bytes of pages an operation must cover before the pool hands it to its threads (region bytes for a scan, pages
 * times page size for a delta batch); below, the calling thread does it. Per operation because their costs per
 * byte differ by an order of magnitude (a native scan runs at memory bandwidth, the TypeScript XXH3 at a few GB/s).
 */
export type ParallelBytesMin = Record<PagesPoolOperation, number>;

/**
 * Default thresholds by backend, measured by measureParallelBytesMin (worker-calibrate.ts) with 2 threads on the
 * 2-vCPU x86-64 machine this was developed on (AMD EPYC under KVM, shared with other work, so figures varied from
 * run to run): the smallest size from which the threads won by 10% at every larger size measured, 64 KiB to
 * 256 MiB. Measured speedups: native fingerprints 1.6-1.8x from 4 MiB on; native deltas 1.2-1.4x from 16 MiB on;
 * the native shadow scan never won (it runs at memcpy speed, and a second core on the same memory adds no
 * bandwidth: Infinity); the TypeScript fallback won 1.1-1.5x on scans from 16 MiB and never on deltas (Infinity).
 * Other machines differ: measure, and pass the result as `parallelBytesMin`.
 */
export const PARALLEL_BYTES_MIN_DEFAULTS: Readonly<Record<PagesImplementation, Readonly<ParallelBytesMin>>> = Object.freeze({
  native: Object.freeze({ scanShadow: Number.POSITIVE_INFINITY, scanFingerprints: 4 << 20, encodeDeltas: 16 << 20 }),
  js: Object.freeze({ scanShadow: 16 << 20, scanFingerprints: 16 << 20, encodeDeltas: Number.POSITIVE_INFINITY }),
});

/** Most operations waiting behind the running one, by default. */
export const QUEUE_DEPTH_MAX_DEFAULT = 16;

/** Threads a pool starts by default: min(4, availableParallelism()). */
export function defaultWorkerCount(): number {
  return Math.max(1, Math.min(4, availableParallelism()));
}

/** Options of {@link PagesWorkerPool.start}. */
export interface PagesWorkerPoolOptions {
  /** Worker threads, in [1, 64]; default {@link defaultWorkerCount}. */
  workers?: number;
  /**
   * Thresholds below which the calling thread does the work: one number for every operation, or some of them (the
   * others keep their default from {@link PARALLEL_BYTES_MIN_DEFAULTS} for the backend in use). 0 always uses the
   * threads; Infinity never does.
   */
  parallelBytesMin?: number | Partial<ParallelBytesMin>;
  /** Most operations that may wait behind the running one; beyond, KEMARI_BUSY. Default {@link QUEUE_DEPTH_MAX_DEFAULT}. */
  queueDepthMax?: number;
}

/** Where {@link PagesWorkerPool.encodeDeltas} writes a batch. */
export interface DeltaBatchOutput {
  /**
   * The delta of page k goes to bytes [k * budgetBytes, k * budgetBytes + lengths[k]); must be a view of a
   * SharedArrayBuffer (the threads write it) at least pages.length * budgetBytes long.
   */
  out: Uint8Array;
  /** Receives, for page k, the delta length (0: the page equals its base), or -1 when over budget (send it raw). */
  lengths: Int32Array;
}

/** What one delta batch produced. */
export interface DeltaBatchResult {
  /** Pages with a non-empty delta under budget. */
  deltaPages: number;
  /** Pages equal to their base (empty delta). */
  unchangedPages: number;
  /** Pages whose delta would not fit the budget (length -1). */
  overBudgetPages: number;
  /** Sum of the delta lengths. */
  deltaBytes: number;
}

/** Counters of a pool since it started. */
export interface PagesWorkerPoolStats {
  /** Threads running now (fewer than asked only after a replacement failed to start). */
  workers: number;
  /** The backend the threads loaded. */
  implementation: PagesImplementation;
  /** Operations handed to the threads, and done on the calling thread below the threshold. */
  parallelOperations: number;
  inlineOperations: number;
  /** Operations waiting behind the running one. */
  queued: number;
  /** Threads that crashed (uncaught exception or exit), and replacements started. */
  workerCrashes: number;
  workerRestarts: number;
  /** Why the pool can no longer run operations (no thread left), or undefined. */
  failure: KemariError | undefined;
}

/** A zeroed Uint8Array of `bytes` in a new SharedArrayBuffer: memory the pool's threads can work on in place. */
export function sharedBytes(bytes: number): Uint8Array {
  checkInteger('bytes', bytes, 0, Number.MAX_SAFE_INTEGER);
  return new Uint8Array(new SharedArrayBuffer(bytes));
}

function isShared(view: ArrayBufferView): boolean {
  return view.buffer instanceof SharedArrayBuffer;
}

function checkShared(field: string, view: ArrayBufferView): void {
  if (!isShared(view)) invalid(field, 'must be a view of a SharedArrayBuffer (the worker threads read and write it in place)');
}

/** How to start a thread: the compiled worker-thread.js next to this file, or the TypeScript source through tsx. */
function workerEntry(): { entry: string | URL; options: WorkerOptions } {
  const self = import.meta.url;
  if (!self.endsWith('.ts')) return { entry: new URL('./worker-thread.js', self), options: {} };
  // Running from source (tests, benchmarks under tsx): a worker does not inherit tsx's loader, so it registers
  // tsx's ESM hooks first and then imports the TypeScript entry.
  const require = createRequire(self);
  const manifestPath = require.resolve('tsx/package.json');
  const manifest = JSON.parse(readFileSync(manifestPath, 'utf8')) as { exports: Record<string, { import?: { default?: string } } | string> };
  const api = manifest.exports['./esm/api'];
  const target = typeof api === 'object' ? api.import?.default : undefined;
  if (target === undefined) throw new Error('tsx has no ./esm/api export to load the page worker from source');
  const tsxApi = pathToFileURL(join(dirname(manifestPath), target)).href;
  const source = new URL('./worker-thread.ts', self).href;
  const code = `import(${JSON.stringify(tsxApi)}).then((tsx) => { tsx.register(); return import(${JSON.stringify(source)}); });`;
  return { entry: code, options: { eval: true, execArgv: [] } };
}

function resolveThresholds(implementation: PagesImplementation, option: PagesWorkerPoolOptions['parallelBytesMin']): ParallelBytesMin {
  const defaults = PARALLEL_BYTES_MIN_DEFAULTS[implementation];
  const check = (field: string, value: unknown): number => {
    if (typeof value !== 'number' || Number.isNaN(value) || value < 0) invalid(field, 'must be a number >= 0 (Infinity: never use the threads)', value);
    return value;
  };
  if (option === undefined) return { ...defaults };
  if (typeof option === 'number') {
    const all = check('parallelBytesMin', option);
    return { scanShadow: all, scanFingerprints: all, encodeDeltas: all };
  }
  if (typeof option !== 'object' || option === null) invalid('parallelBytesMin', 'must be a number or an object of numbers', option);
  const result = { ...defaults };
  for (const key of ['scanShadow', 'scanFingerprints', 'encodeDeltas'] as const) {
    if (option[key] !== undefined) result[key] = check(`parallelBytesMin.${key}`, option[key]);
  }
  return result;
}

/** A thread that reported ready, and what happened to it since (until the pool attaches its own listeners). */
interface Spawned {
  worker: Worker;
  implementation: PagesImplementation;
  nativeLoadError: string | undefined;
  /** Stops watching: returns its exit code if it exited meanwhile (other threads may take longer to start). */
  detach(): { exitCode: number | undefined; error: unknown };
}

/** One thread and what it is doing. */
interface Slot {
  readonly index: number;
  worker: Worker | undefined;
  ready: boolean;
  /** Operation id and part it is running, or undefined. */
  busy: { op: number; part: number } | undefined;
  /** The uncaught error the thread reported before it exited. */
  lastError: unknown;
  /** True once a replacement failed to start: the slot stays empty. */
  dead: boolean;
}

/** A queued or running operation. */
interface Operation {
  readonly id: number;
  /** True when it runs on the threads (it then waits for a ready thread). */
  readonly needsWorkers: boolean;
  /** Runs it: inline (settles before returning) or by dispatching parts. */
  readonly run: () => void;
  readonly reject: (error: unknown) => void;
}

/** A dispatched operation: its parts, their values, how it merges. */
interface Running {
  readonly id: number;
  readonly values: number[];
  pending: number;
  failure: unknown;
  readonly finish: (values: number[]) => void;
  readonly reject: (error: unknown) => void;
}

/** Growable shared scratch areas of the pool (one operation runs at a time, so one set suffices). */
interface Scratch {
  changedPages: Uint32Array;
  zeroFlags: Uint8Array;
  descriptors: Float64Array;
  lengths: Int32Array;
}

function grow(capacity: number, needed: number): number {
  let next = Math.max(1024, capacity);
  while (next < needed) next *= 2;
  return next;
}

/** The pool; see the module comment. Start it with {@link PagesWorkerPool.start}. */
export class PagesWorkerPool {
  /** The thresholds in force, per operation, in bytes of pages. */
  readonly parallelBytesMin: Readonly<ParallelBytesMin>;
  /** The queue bound. */
  readonly queueDepthMax: number;

  private readonly slots: Slot[];
  private readonly queue: Operation[] = [];
  private active: Operation | undefined;
  private running: Running | undefined;
  private nextOp = 1;
  private closing = false;
  private closed: Promise<void> | undefined;
  private failure: KemariError | undefined;
  private readonly counters = { parallelOperations: 0, inlineOperations: 0, workerCrashes: 0, workerRestarts: 0 };
  private readonly entry: { entry: string | URL; options: WorkerOptions };

  private nextBufferId = 1;
  private readonly bufferIds = new WeakMap<SharedArrayBuffer, number>();
  private readonly liveBuffers = new Map<number, WeakRef<SharedArrayBuffer>>();
  private readonly finalizer = new FinalizationRegistry<number>((id) => {
    this.liveBuffers.delete(id);
    this.broadcast({ type: 'forget', id });
  });
  /** Shared file mappings (shareFile): the main thread's mapping buffer to its id, and what the threads map. */
  private readonly fileIds = new WeakMap<ArrayBufferLike, number>();
  private readonly files = new Map<number, { path: string; bytes: number }>();
  private scratch: Scratch = {
    changedPages: new Uint32Array(new SharedArrayBuffer(4096)),
    zeroFlags: new Uint8Array(new SharedArrayBuffer(1024)),
    descriptors: new Float64Array(new SharedArrayBuffer(1024 * 32)),
    lengths: new Int32Array(new SharedArrayBuffer(4096)),
  };

  private constructor(
    /** The backend the threads loaded: `'native'` when the addon loaded in them, `'js'` for the fallback. */
    readonly implementation: PagesImplementation,
    /** Why the threads did not load the addon (undefined when they did): for the log line reporting `'js'`. */
    readonly nativeLoadError: string | undefined,
    spawned: Spawned[],
    entry: { entry: string | URL; options: WorkerOptions },
    options: PagesWorkerPoolOptions,
  ) {
    this.entry = entry;
    this.parallelBytesMin = Object.freeze(resolveThresholds(implementation, options.parallelBytesMin));
    this.queueDepthMax = checkInteger('queueDepthMax', options.queueDepthMax ?? QUEUE_DEPTH_MAX_DEFAULT, 0, 1 << 20);
    this.slots = spawned.map(({ worker }, index) => ({ index, worker, ready: true, busy: undefined, lastError: undefined, dead: false }));
    for (const slot of this.slots) this.attach(slot, spawned[slot.index]!);
  }

  /**
   * Starts `workers` threads and waits until each has loaded its page backend. Rejects with
   * KEMARI_INVALID_ARGUMENT for bad options, and KEMARI_WORKER_FAILED when a thread cannot start (the others
   * are ended).
   */
  static async start(options: PagesWorkerPoolOptions = {}): Promise<PagesWorkerPool> {
    if (typeof options !== 'object' || options === null) invalid('options', 'must be an object', options);
    const count = checkInteger('workers', options.workers ?? defaultWorkerCount(), 1, 64);
    resolveThresholds(pagesImplementation(), options.parallelBytesMin);
    checkInteger('queueDepthMax', options.queueDepthMax ?? QUEUE_DEPTH_MAX_DEFAULT, 0, 1 << 20);
    let entry: { entry: string | URL; options: WorkerOptions };
    try {
      entry = workerEntry();
    } catch (cause) {
      throw new KemariError('KEMARI_WORKER_FAILED', 'cannot locate the page worker thread entry', { cause });
    }
    const started = await Promise.allSettled(Array.from({ length: count }, (_, index) => PagesWorkerPool.spawn(entry, index)));
    const failed = started.find((s) => s.status === 'rejected');
    if (failed !== undefined) {
      await Promise.all(started.map((s) => (s.status === 'fulfilled' ? s.value.worker.terminate() : undefined)));
      throw failed.reason;
    }
    const ready = started.map((s) => (s as PromiseFulfilledResult<Spawned>).value);
    const first = ready[0]!;
    return new PagesWorkerPool(first.implementation, first.nativeLoadError, ready, entry, options);
  }

  /** Starts one thread; resolves when it reports its backend, rejects with KEMARI_WORKER_FAILED if it dies first. */
  private static spawn(entry: { entry: string | URL; options: WorkerOptions }, index: number): Promise<Spawned> {
    return new Promise((resolve, reject) => {
      let worker: Worker;
      try {
        worker = new Worker(entry.entry, entry.options);
      } catch (cause) {
        reject(new KemariError('KEMARI_WORKER_FAILED', `page worker ${index} could not be created`, { cause, details: { worker: index } }));
        return;
      }
      let ready = false;
      let lastError: unknown;
      let exitCode: number | undefined;
      const onError = (error: unknown): void => {
        lastError = error;
      };
      const onExit = (code: number): void => {
        exitCode = code;
        if (ready) return;
        detach();
        reject(
          new KemariError('KEMARI_WORKER_FAILED', `page worker ${index} exited (code ${code}) before it was ready`, {
            cause: lastError,
            details: { worker: index, exitCode: code },
          }),
        );
      };
      const onMessage = (message: FromWorker): void => {
        if (message.type !== 'ready') return;
        ready = true;
        worker.off('message', onMessage);
        worker.unref();
        resolve({ worker, implementation: message.implementation, nativeLoadError: message.nativeLoadError, detach });
      };
      const detach = (): { exitCode: number | undefined; error: unknown } => {
        worker.off('error', onError);
        worker.off('exit', onExit);
        worker.off('message', onMessage);
        return { exitCode, error: lastError };
      };
      worker.on('error', onError);
      worker.on('exit', onExit);
      worker.on('message', onMessage);
    });
  }

  /** Threads running now. */
  get workerCount(): number {
    return this.slots.filter((s) => s.ready).length;
  }

  /** True once {@link close} was called: every later operation is refused with KEMARI_CLOSED, for good. */
  get isClosed(): boolean {
    return this.closing;
  }

  /** Counters since the pool started (a copy). */
  stats(): PagesWorkerPoolStats {
    return {
      workers: this.workerCount,
      implementation: this.implementation,
      ...this.counters,
      queued: this.queue.length,
      failure: this.failure,
    };
  }

  /**
   * {@link scanChangedPages} split by page ranges over the threads: same arguments, same result and same writes to
   * `out` and `reference`, byte for byte. `region` must be a view of a SharedArrayBuffer or of a file mapping
   * shared with {@link shareFile}, `reference` a view of a SharedArrayBuffer (`out` may be any memory). Keep all three untouched until the promise settles. Should it reject after threads began (a
   * crash), a reference scanned with `update: true` is partly advanced: treat every page as changed (full sync).
   */
  scanChangedPages(region: Uint8Array, pageBytes: number, reference: PageReference, out: PageScanOutput, options: PageScanOptions = {}): Promise<number> {
    let kind: ScanReferenceKind;
    let pageCount: number;
    let update: boolean;
    let seed: bigint;
    try {
      ({ kind, pageCount, update, seed } = checkScan(region, pageBytes, reference, out, options, this.readable(region)));
    } catch (error) {
      return Promise.reject(error);
    }
    const threshold = kind === 'shadow' ? this.parallelBytesMin.scanShadow : this.parallelBytesMin.scanFingerprints;
    if (region.length < threshold || pageCount < 2) {
      return this.enqueue(() => {
        this.counters.inlineOperations += 1;
        return kind === 'shadow'
          ? activeBackend.scanShadow(region, pageBytes, reference as Uint8Array, out.changedPages, out.zeroFlags, update)
          : activeBackend.scanFingerprints(region, pageBytes, reference as BigUint64Array | Uint32Array, seed, out.changedPages, out.zeroFlags, update);
      });
    }
    return this.enqueueParallel((id, workers) => {
      const scratch = this.scratchForScan(pageCount);
      const parts = Math.min(workers.length, pageCount);
      const regionRef = this.ref(region);
      const referenceRef = this.ref(reference);
      const changedRef = this.ref(scratch.changedPages);
      const zeroRef = this.ref(scratch.zeroFlags);
      const firstPages: number[] = [];
      for (let part = 0; part < parts; part++) {
        const firstPage = Math.floor((pageCount * part) / parts);
        const endPage = Math.floor((pageCount * (part + 1)) / parts);
        firstPages.push(firstPage);
        this.post(workers[part]!, id, part, {
          type: 'scan',
          op: id,
          part,
          kind,
          pageBytes,
          firstPage,
          pageCount: endPage - firstPage,
          update,
          seed,
          region: regionRef,
          reference: referenceRef,
          changedPages: changedRef,
          zeroFlags: zeroRef,
        });
      }
      return (counts: number[]): number => {
        let at = 0;
        for (let part = 0; part < parts; part++) {
          const first = firstPages[part]!;
          const count = counts[part]!;
          out.changedPages.set(scratch.changedPages.subarray(first, first + count), at);
          out.zeroFlags.set(scratch.zeroFlags.subarray(first, first + count), at);
          at += count;
        }
        return at;
      };
    }, pageCount);
  }

  /**
   * Encodes a batch of XOR deltas: page k ({@link pages}[k]) against its base (`bases[k]`, the page as the
   * secondary has it), exactly as `encodeDelta(bases[k], pages[k], out.out.subarray(k * b, (k + 1) * b), b)` with
   * b = `budgetBytes` (default: the page size). Pages and bases must be views of SharedArrayBuffers, all of one
   * length; `out.out` too, and must not share memory with any of them. Keep them untouched until it settles.
   */
  encodeDeltas(pages: readonly Uint8Array[], bases: readonly Uint8Array[], out: DeltaBatchOutput, budgetBytes?: number): Promise<DeltaBatchResult> {
    let pageBytes: number;
    let budget: number;
    try {
      ({ pageBytes, budget } = checkBatch(pages, bases, out, budgetBytes));
    } catch (error) {
      return Promise.reject(error);
    }
    const n = pages.length;
    const summarize = (): DeltaBatchResult => {
      const result: DeltaBatchResult = { deltaPages: 0, unchangedPages: 0, overBudgetPages: 0, deltaBytes: 0 };
      for (let k = 0; k < n; k++) {
        const length = out.lengths[k]!;
        if (length < 0) result.overBudgetPages += 1;
        else if (length === 0) result.unchangedPages += 1;
        else {
          result.deltaPages += 1;
          result.deltaBytes += length;
        }
      }
      return result;
    };
    if (n * pageBytes < this.parallelBytesMin.encodeDeltas || n < 2) {
      return this.enqueue(() => {
        this.counters.inlineOperations += 1;
        for (let k = 0; k < n; k++) {
          const slot = out.out.subarray(k * budget, (k + 1) * budget);
          out.lengths[k] = activeBackend.encodeDelta(bases[k]!, pages[k]!, slot, budget);
        }
        return summarize();
      });
    }
    return this.enqueueParallel((id, workers) => {
      const scratch = this.scratchForBatch(n);
      const descriptors = scratch.descriptors;
      for (let k = 0; k < n; k++) {
        const page = pages[k]!;
        const base = bases[k]!;
        descriptors[4 * k] = this.bufferId(page.buffer as SharedArrayBuffer);
        descriptors[4 * k + 1] = page.byteOffset;
        descriptors[4 * k + 2] = this.bufferId(base.buffer as SharedArrayBuffer);
        descriptors[4 * k + 3] = base.byteOffset;
      }
      const parts = Math.min(workers.length, n);
      const descriptorsRef = this.ref(descriptors);
      const outRef = this.ref(out.out);
      const lengthsRef = this.ref(scratch.lengths);
      for (let part = 0; part < parts; part++) {
        const first = Math.floor((n * part) / parts);
        const end = Math.floor((n * (part + 1)) / parts);
        this.post(workers[part]!, id, part, {
          type: 'encode',
          op: id,
          part,
          pageBytes,
          budgetBytes: budget,
          first,
          count: end - first,
          descriptors: descriptorsRef,
          out: outRef,
          lengths: lengthsRef,
        });
      }
      return (): DeltaBatchResult => {
        out.lengths.set(scratch.lengths.subarray(0, n));
        return summarize();
      };
    }, n);
  }

  /**
   * Stops the pool: rejects the queued operations with KEMARI_CLOSED, lets the running one finish (its threads
   * write the caller's memory; stopping them halfway would leave a reference half advanced), then ends the threads.
   * Later calls reject with KEMARI_CLOSED. Idempotent: every call returns the same promise.
   */
  close(): Promise<void> {
    if (this.closed !== undefined) return this.closed;
    this.closing = true;
    const error = new KemariError('KEMARI_CLOSED', 'the page worker pool was closed');
    for (const op of this.queue.splice(0)) op.reject(error);
    this.closed = (async () => {
      while (this.active !== undefined) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
      await Promise.all(
        this.slots.map(async (slot) => {
          const worker = slot.worker;
          slot.worker = undefined;
          slot.ready = false;
          if (worker !== undefined) await worker.terminate();
        }),
      );
    })();
    return this.closed;
  }

  /**
   * For tests only: makes thread `workerIndex` crash (an uncaught exception, or an exit) when its next part
   * arrives, so a crash can be provoked at a known point.
   * @internal
   */
  injectFault(workerIndex: number, mode: 'throw' | 'exit'): void {
    const slot = this.slots[workerIndex];
    slot?.worker?.postMessage({ type: 'fault', mode } satisfies ToWorker);
  }

  private readonly idleWaiters: Array<() => void> = [];

  /** Queues an operation run on the calling thread when its turn comes. */
  private enqueue<T>(compute: () => T): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const op: Operation = {
        id: this.nextOp++,
        needsWorkers: false,
        run: () => {
          try {
            resolve(compute());
          } catch (error) {
            reject(error);
          }
          this.finished();
        },
        reject,
      };
      this.submit(op);
    });
  }

  /**
   * Queues an operation run by the threads: `dispatch` posts its parts to the ready threads it is given (at most
   * `partsMax` of them) and returns how to merge their values.
   */
  private enqueueParallel<T>(dispatch: (id: number, workers: Slot[]) => (values: number[]) => T, partsMax: number): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const id = this.nextOp++;
      const op: Operation = {
        id,
        needsWorkers: true,
        run: () => {
          const workers = this.slots.filter((s) => s.ready && s.worker !== undefined).slice(0, partsMax);
          this.counters.parallelOperations += 1;
          let merge: ((values: number[]) => T) | undefined;
          const running: Running = {
            id,
            values: [],
            pending: 0,
            failure: undefined,
            finish: (values) => {
              try {
                resolve(merge!(values));
              } catch (error) {
                reject(error);
              }
            },
            reject,
          };
          this.running = running;
          try {
            merge = dispatch(id, workers);
          } catch (error) {
            running.failure ??= error;
          }
          for (const slot of workers) if (slot.busy !== undefined) slot.worker?.ref();
          this.settleIfDone();
        },
        reject,
      };
      this.submit(op);
    });
  }

  private submit(op: Operation): void {
    if (this.closing) {
      op.reject(new KemariError('KEMARI_CLOSED', 'the page worker pool was closed'));
      return;
    }
    if (this.failure !== undefined) {
      op.reject(this.failure);
      return;
    }
    if (this.active !== undefined || this.queue.length > 0 || (op.needsWorkers && this.workerCount === 0)) {
      if (this.queue.length >= this.queueDepthMax) {
        op.reject(
          new KemariError('KEMARI_BUSY', `the page worker pool already has ${this.queue.length} operations waiting (queueDepthMax ${this.queueDepthMax})`, {
            details: { queued: this.queue.length, queueDepthMax: this.queueDepthMax },
          }),
        );
        return;
      }
      this.queue.push(op);
      return;
    }
    this.start(op);
  }

  private start(op: Operation): void {
    this.active = op;
    op.run();
  }

  /** The running operation settled: start the next one, or wake close(). */
  private finished(): void {
    this.active = undefined;
    this.running = undefined;
    this.pump();
  }

  private pump(): void {
    if (this.active !== undefined) return;
    if (this.failure !== undefined) {
      for (const op of this.queue.splice(0)) op.reject(this.failure);
    }
    if (this.queue.length > 0 && !this.closing) {
      // Parallel operations need a thread: wait for a replacement when none is ready.
      if (this.queue[0]!.needsWorkers && this.workerCount === 0) return;
      this.start(this.queue.shift()!);
      return;
    }
    for (const wake of this.idleWaiters.splice(0)) wake();
  }

  /** Posts one part to `slot`, counting it as pending. */
  private post(slot: Slot, op: number, part: number, message: ToWorker): void {
    slot.busy = { op, part };
    this.running!.pending += 1;
    slot.worker!.postMessage(message);
  }

  private settleIfDone(): void {
    const running = this.running;
    if (running === undefined || running.pending > 0) return;
    for (const slot of this.slots) slot.worker?.unref();
    if (running.failure !== undefined) running.reject(running.failure);
    else running.finish(running.values);
    this.finished();
  }

  /** Takes over a started thread: its replies, and its exit (one that happened while others started included). */
  private attach(slot: Slot, spawned: Spawned): void {
    const worker = spawned.worker;
    const early = spawned.detach();
    worker.on('message', (message: FromWorker) => {
      if (message.type === 'ready') return;
      const running = this.running;
      if (running === undefined || running.id !== message.op || slot.busy === undefined) return;
      slot.busy = undefined;
      running.pending -= 1;
      if (message.type === 'done') running.values[message.part] = message.value;
      else {
        // A backend refusing validated arguments; keep a KemariError's code when the thread threw one.
        const code: ErrorCode = message.code !== undefined && message.code in ERROR_CODES ? (message.code as ErrorCode) : 'KEMARI_INVALID_ARGUMENT';
        running.failure ??= new KemariError(code, `page worker ${slot.index} failed its part: ${message.message}`, {
          details: { worker: slot.index, code: message.code },
        });
      }
      this.settleIfDone();
    });
    worker.on('error', (error) => {
      slot.lastError = error;
    });
    worker.on('exit', (exitCode) => this.exited(slot, worker, exitCode));
    if (early.exitCode !== undefined) {
      const exitCode = early.exitCode;
      slot.lastError = early.error;
      queueMicrotask(() => this.exited(slot, worker, exitCode));
    }
  }

  /** A thread ended: fails the part it ran (once the others stopped) and replaces it, unless the pool is closing. */
  private exited(slot: Slot, worker: Worker, exitCode: number): void {
    if (slot.worker !== worker) return;
    slot.worker = undefined;
    slot.ready = false;
    if (this.closing && slot.busy === undefined) return;
    this.counters.workerCrashes += 1;
    const crash = new KemariError('KEMARI_WORKER_FAILED', `page worker ${slot.index} exited (code ${exitCode})${this.closing ? ' while closing' : ''}`, {
      cause: slot.lastError,
      details: { worker: slot.index, exitCode },
    });
    slot.lastError = undefined;
    const running = this.running;
    const busy = slot.busy;
    slot.busy = undefined;
    if (busy !== undefined && running !== undefined && running.id === busy.op) {
      running.pending -= 1;
      running.failure ??= crash;
      this.settleIfDone();
    }
    if (!this.closing) this.respawn(slot, crash);
  }

  /** Replaces a crashed thread; when the replacement cannot start, the slot stays empty (and with none, the pool fails). */
  private respawn(slot: Slot, crash: KemariError): void {
    this.counters.workerRestarts += 1;
    PagesWorkerPool.spawn(this.entry, slot.index).then(
      (spawned) => {
        const worker = spawned.worker;
        if (this.closing) {
          spawned.detach();
          void worker.terminate();
          return;
        }
        slot.worker = worker;
        this.attach(slot, spawned);
        for (const [id, ref] of this.liveBuffers) {
          const buffer = ref.deref();
          if (buffer !== undefined) worker.postMessage({ type: 'buffer', id, buffer } satisfies ToWorker);
        }
        for (const [id, file] of this.files) worker.postMessage({ type: 'file', id, ...file } satisfies ToWorker);
        slot.ready = true;
        this.pump();
      },
      (error: unknown) => {
        slot.dead = true;
        if (this.slots.every((s) => s.dead)) {
          this.failure = new KemariError('KEMARI_WORKER_FAILED', 'every page worker crashed and none could be restarted', {
            cause: error,
            details: { crash: crash.message },
          });
          this.pump();
        }
      },
    );
  }

  private broadcast(message: ToWorker): void {
    for (const slot of this.slots) slot.worker?.postMessage(message);
  }

  /** The id of `buffer`, registering it with every thread the first time. */
  private bufferId(buffer: SharedArrayBuffer): number {
    let id = this.bufferIds.get(buffer);
    if (id !== undefined) return id;
    if (!(buffer instanceof SharedArrayBuffer)) {
      // Validated when the operation was queued: a file mapping unshared (or unmapped) since. Never registered.
      throw new KemariError('KEMARI_CLOSED', 'the memory of this operation is no longer shared with the threads (a file mapping was unshared)');
    }
    id = this.nextBufferId++;
    this.bufferIds.set(buffer, id);
    this.liveBuffers.set(id, new WeakRef(buffer));
    this.finalizer.register(buffer, id);
    this.broadcast({ type: 'buffer', id, buffer });
    return id;
  }

  private ref(view: ArrayBufferView): SharedRef {
    const fileId = this.fileIds.get(view.buffer);
    return [fileId ?? this.bufferId(view.buffer as SharedArrayBuffer), view.byteOffset];
  }

  /**
   * Lets the threads scan `mapping`, a mapping of the file at `path` made by mmapFile (QEMU's shared memory-backend
   * file, whose guest RAM is not a SharedArrayBuffer): each thread maps the same file itself, read-only and shared,
   * so it sees the very pages the main thread sees, and a scan of the mapping (or of a view of it) then runs on the
   * threads in place. Needs the threads on the addon (`implementation === 'native'`): the TypeScript fallback's
   * "mapping" is a copy, which would not see the guest's changes (KEMARI_INVALID_ARGUMENT then). Sharing a mapping
   * twice is a no-op; {@link unshareFile} ends it (the threads unmap their copies).
   */
  shareFile(mapping: Uint8Array, path: string): void {
    checkUint8Array('mapping', mapping);
    if (typeof path !== 'string' || path.length === 0) invalid('path', 'must be a non-empty string', path);
    if (this.implementation !== 'native') {
      invalid('mapping', "the pool's threads run the TypeScript fallback, whose file mapping is a copy: scan it on the calling thread");
    }
    if (this.closing) throw new KemariError('KEMARI_CLOSED', 'the page worker pool is closed');
    const buffer = mapping.buffer;
    if (this.fileIds.has(buffer)) return;
    const id = this.nextBufferId++;
    this.fileIds.set(buffer, id);
    const file = { path, bytes: buffer.byteLength };
    this.files.set(id, file);
    this.broadcast({ type: 'file', id, ...file });
  }

  /** Ends {@link shareFile} for `mapping`'s buffer: the threads unmap their mappings. Unknown mappings are ignored. */
  unshareFile(mapping: Uint8Array): void {
    const id = this.fileIds.get(mapping.buffer);
    if (id === undefined) return;
    this.fileIds.delete(mapping.buffer);
    this.files.delete(id);
    this.broadcast({ type: 'forget', id });
  }

  /** True when the threads can read `view` in place: a SharedArrayBuffer, or a shared file mapping. */
  private readable(view: ArrayBufferView): boolean {
    return isShared(view) || this.fileIds.has(view.buffer);
  }

  private scratchForScan(pageCount: number): Scratch {
    const s = this.scratch;
    if (s.changedPages.length < pageCount) s.changedPages = new Uint32Array(new SharedArrayBuffer(grow(s.changedPages.length, pageCount) * 4));
    if (s.zeroFlags.length < pageCount) s.zeroFlags = new Uint8Array(new SharedArrayBuffer(grow(s.zeroFlags.length, pageCount)));
    return s;
  }

  private scratchForBatch(n: number): Scratch {
    const s = this.scratch;
    if (s.descriptors.length < 4 * n) s.descriptors = new Float64Array(new SharedArrayBuffer(grow(s.descriptors.length, 4 * n) * 8));
    if (s.lengths.length < n) s.lengths = new Int32Array(new SharedArrayBuffer(grow(s.lengths.length, n) * 4));
    return s;
  }
}

/** scanChangedPages' checks (same messages), plus: region and reference in shared memory. */
function checkScan(
  region: Uint8Array,
  pageBytes: number,
  reference: PageReference,
  out: PageScanOutput,
  options: PageScanOptions,
  regionReadable: boolean,
): { kind: ScanReferenceKind; pageCount: number; update: boolean; seed: bigint } {
  checkUint8Array('region', region);
  checkScanPageBytes('pageBytes', pageBytes);
  if (region.length % pageBytes !== 0) invalid('region', `length must be a multiple of pageBytes (${pageBytes})`, region.length);
  const pageCount = region.length / pageBytes;
  if (typeof out !== 'object' || out === null) invalid('out', 'must be { changedPages, zeroFlags }', out);
  const { changedPages, zeroFlags } = out;
  if (!(changedPages instanceof Uint32Array) || changedPages.length < pageCount) {
    invalid('out.changedPages', `must be a Uint32Array with room for ${pageCount} pages`, changedPages?.length);
  }
  if (!(zeroFlags instanceof Uint8Array) || zeroFlags.length < pageCount) {
    invalid('out.zeroFlags', `must be a Uint8Array with room for ${pageCount} pages`, zeroFlags?.length);
  }
  if (typeof options !== 'object' || options === null) invalid('options', 'must be an object', options);
  const update = options.update ?? false;
  if (typeof update !== 'boolean') invalid('options.update', 'must be a boolean', update);
  const seed = options.seed ?? 0n;
  for (const [name, view] of [['reference', reference], ['out.changedPages', changedPages], ['out.zeroFlags', zeroFlags]] as const) {
    if (ArrayBuffer.isView(view)) checkDisjoint(name, view, 'region', region);
  }
  if (!regionReadable) invalid('region', 'must be a view of a SharedArrayBuffer or of a file mapping shared with shareFile (the worker threads read it in place)');
  let kind: ScanReferenceKind;
  if (reference instanceof Uint8Array) {
    if (reference.length !== region.length) invalid('reference', `a shadow copy must be as long as region (${region.length})`, reference.length);
    if (options.seed !== undefined) invalid('options.seed', 'applies to fingerprint references only');
    kind = 'shadow';
  } else if (reference instanceof BigUint64Array || reference instanceof Uint32Array) {
    const words = reference instanceof BigUint64Array ? 1 : 2;
    if (reference.length !== pageCount * words) {
      invalid('reference', `a fingerprint table must hold ${pageCount * words} elements (8 bytes a page)`, reference.length);
    }
    checkU64('options.seed', seed);
    kind = words === 1 ? 'fingerprints64' : 'fingerprints32';
  } else {
    return invalid('reference', 'must be a Uint8Array (shadow copy), a BigUint64Array or a Uint32Array (fingerprints)');
  }
  checkShared('reference', reference);
  checkDisjoint('out.changedPages', changedPages, 'reference', reference);
  checkDisjoint('out.zeroFlags', zeroFlags, 'reference', reference);
  checkDisjoint('out.zeroFlags', zeroFlags, 'out.changedPages', changedPages);
  return { kind, pageCount, update, seed };
}

/** encodeDelta's checks for every page of a batch, plus shared memory and room in the output area. */
function checkBatch(
  pages: readonly Uint8Array[],
  bases: readonly Uint8Array[],
  out: DeltaBatchOutput,
  budgetBytes: number | undefined,
): { pageBytes: number; budget: number } {
  if (!Array.isArray(pages)) invalid('pages', 'must be an array of Uint8Array');
  if (!Array.isArray(bases) || bases.length !== pages.length) invalid('bases', `must be an array as long as pages (${pages.length})`, (bases as unknown[] | undefined)?.length);
  if (typeof out !== 'object' || out === null) invalid('out', 'must be { out, lengths }', out);
  const area = checkUint8Array('out.out', out.out);
  checkShared('out.out', area);
  if (!(out.lengths instanceof Int32Array) || out.lengths.length < pages.length) {
    invalid('out.lengths', `must be an Int32Array with room for ${pages.length} pages`, (out.lengths as Int32Array | undefined)?.length);
  }
  checkDisjoint('out.lengths', out.lengths, 'out.out', area);
  const pageBytes = pages.length === 0 ? 1 : checkUint8Array('pages[0]', pages[0]).length;
  if (pageBytes < 1 || pageBytes > DELTA_PAGE_BYTES_MAX) invalid('pages[0]', `length must be in [1, ${DELTA_PAGE_BYTES_MAX}]`, pageBytes);
  const budget = checkInteger('budgetBytes', budgetBytes ?? pageBytes, 0, DELTA_PAGE_BYTES_MAX);
  if (area.length < pages.length * budget) invalid('out.out', `must hold pages.length * budgetBytes (${pages.length * budget}) bytes`, area.length);
  const used = area.subarray(0, pages.length * budget);
  for (let k = 0; k < pages.length; k++) {
    const page = checkUint8Array(`pages[${k}]`, pages[k]);
    const base = checkUint8Array(`bases[${k}]`, bases[k]);
    if (page.length !== pageBytes) invalid(`pages[${k}]`, `length must equal pages[0]'s (${pageBytes})`, page.length);
    if (base.length !== pageBytes) invalid(`bases[${k}]`, `length must equal pages[0]'s (${pageBytes})`, base.length);
    checkShared(`pages[${k}]`, page);
    checkShared(`bases[${k}]`, base);
    if (overlaps(used, page)) invalid('out.out', `must not share memory with pages[${k}]`);
    if (overlaps(used, base)) invalid('out.out', `must not share memory with bases[${k}]`);
    if (overlaps(out.lengths, page) || overlaps(out.lengths, base)) invalid('out.lengths', `must not share memory with pages[${k}] or bases[${k}]`);
  }
  return { pageBytes, budget };
}
