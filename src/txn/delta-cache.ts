/**
 * The primary's memory of what the secondary holds for recently sent pages, so a page that changed a little goes
 * out as a delta against it (the idea of QEMU's XBZRLE; the delta form is native/README.md's) instead of whole.
 *
 * Why it is correct: the secondary applies epochs in order, so when epoch N arrives its copy of page p is p as last
 * sent, in the newest epoch before N that carried p, which is what this cache holds (updated as each epoch is
 * encoded, before the next). Anything that breaks that chain (a lost connection, a refused or never-sent epoch, a
 * full sync) must {@link DeltaCache.clear} the cache: the next epochs then go out whole until it fills again.
 *
 * Why a slab: the copies live in one buffer of `cacheBytesMax` (allocated at first use, resident only as slots
 * fill), found through a page-to-slot map, so one epoch is encoded by one batched call (encodeDeltaBatch: every
 * delta, and the cache update, in a single pass over the pages while they are in the CPU cache) instead of one
 * call, one map reordering and one allocation per page. Eviction is the clock algorithm (a page sent recently
 * survives a sweep), which approximates least-recently-sent without reordering anything on a hit.
 *
 * Large epochs: {@link DeltaCache.encodeAsync} hands a batch of at least the pool's `encodeDeltas` threshold to a
 * {@link PagesWorkerPool}, whose threads read the pages and the slab in place (both SharedArrayBuffers: the cache
 * is created `shared`, the VM's capture buffers must be too, else the batch stays on the calling thread); should the
 * pool fail the batch (a crashed thread, a closed pool), the calling thread encodes it.
 *
 * Bounded: at most `cacheBytesMax` of page copies, plus a scratch reused from epoch to epoch: one window of
 * {@link DELTA_WINDOW_PAGES} pages' deltas (half a page a page) on the calling thread; the largest batch handed to
 * a pool's threads, which write each page's delta at its own place.
 */
import { KemariError } from '../errors.js';
import { encodeDelta, encodeDeltaBatch } from '../pages/delta.js';
import type { PagesWorkerPool } from '../pages/worker-pool.js';
import { PageKind } from '../wire/bodies/pages.js';
import type { Page } from '../wire/bodies/pages.js';

/** What {@link DeltaCache.encode} did. */
export interface DeltaEncoding {
  /** The pages to send: DELTA where that was smaller, RAW or ZERO otherwise; unchanged pages dropped. */
  pages: Page[];
  deltaPages: number;
  /** Pages found identical to the secondary's copy (not sent at all). */
  unchangedPages: number;
  /** Bytes of page data saved against sending every page raw. */
  savedBytes: number;
  /** Whether the deltas were computed by a worker pool's threads. */
  parallel: boolean;
  /**
   * With `deferRemember`: the positions in `pages` of the pages sent whole that are not in the cache yet; pass them,
   * with the pages as they will be sent, to {@link DeltaCache.rememberSent} before the next encode.
   */
  unremembered?: number[];
}

/** Options of {@link DeltaCache.encode}. */
export interface DeltaEncodeOptions {
  /**
   * Leave the copying of pages sent whole (new to the cache) to {@link DeltaCache.rememberSent}: so an in-place
   * capture copies them into the cache from its own copies, once the guest runs again, not during the pause.
   */
  deferRemember?: boolean;
}

/** Options of a {@link DeltaCache}. */
export interface DeltaCacheOptions {
  /** Keep the copies in a SharedArrayBuffer, so a {@link PagesWorkerPool} can encode against them in place. */
  shared?: boolean;
}

/** The largest cache: one slab, addressed by 32-bit slot numbers times the page size within a typed array. */
export const DELTA_CACHE_BYTES_MAX = 2 ** 31;

const NO_SLOT = -1;

/** Pages at or above this index (a guest beyond 4 TiB of 4 KiB pages) are always sent whole: the index table stays bounded. */
const PAGE_INDEX_CACHED_MAX = 2 ** 30;

/** One epoch's pages sorted out: which have a copy here (the batch), and which pass through or are new. */
interface Plan {
  /** Per page of the epoch: its position in the batch, or -1 (passes through or is remembered after the batch). */
  batchOf: Int32Array;
  /** The batch: the page views and their slots. */
  views: Uint8Array[];
  slots: Int32Array;
}

/**
 * Pages encoded on the calling thread per window: the scratch holds one window's deltas (half a page a page, so
 * 512 KiB), not a whole epoch's, however large the epoch.
 */
export const DELTA_WINDOW_PAGES = 256;

const EMPTY: Uint8Array = new Uint8Array(0);

/** An encoded batch: each page's delta length (0 unchanged, -1 too large), and the packed deltas window by window. */
interface Encoded {
  lengths: Int32Array;
  /** Window w holds the deltas of batch pages [w * windowPages, (w + 1) * windowPages), packed in batch order. */
  deltas: Uint8Array[];
  windowPages: number;
}

export class DeltaCache {
  /** Page index to slot (NO_SLOT when not held), grown to the highest page index seen: 4 bytes a guest page. */
  private slotOf: Int32Array = new Int32Array(0);
  private readonly slotsMax: number;
  private readonly shared: boolean;
  private slab: Uint8Array | undefined;
  /** Slot to page index (NO_SLOT when free), and the clock's referenced bits. */
  private pageOfSlot: Int32Array | undefined;
  private referenced: Uint8Array | undefined;
  private hand = 0;
  /** Slots handed out since the last clear (below slotsMax: the next never-used slot). */
  private slotsTaken = 0;
  private slotsUsed = 0;
  /** Reused from epoch to epoch: the batch's deltas and lengths. */
  private scratch: Uint8Array = new Uint8Array(0);
  private lengths: Int32Array = new Int32Array(0);
  /**
   * Reused from epoch to epoch, so an epoch's bookkeeping is not garbage: the plan's tables (4 bytes a page each, of
   * the largest epoch encoded, at most the guest's pages) and one window's page and base slot numbers.
   */
  private planBatchOf: Int32Array = new Int32Array(0);
  private planSlots: Int32Array = new Int32Array(0);
  private readonly windowPageIndices = new Uint32Array(DELTA_WINDOW_PAGES);
  private readonly windowBaseIndices = new Uint32Array(DELTA_WINDOW_PAGES);

  constructor(
    readonly pageBytes: number,
    readonly cacheBytesMax: number,
    options: DeltaCacheOptions = {},
  ) {
    if (!Number.isSafeInteger(cacheBytesMax) || cacheBytesMax < 0 || cacheBytesMax > DELTA_CACHE_BYTES_MAX) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', `delta cacheBytes must be an integer in [0, ${DELTA_CACHE_BYTES_MAX}]`, {
        details: { cacheBytes: cacheBytesMax },
      });
    }
    this.slotsMax = Math.floor(cacheBytesMax / pageBytes);
    this.shared = options.shared === true;
  }

  /** Bytes of page copies held. */
  get bytes(): number {
    return this.slotsUsed * this.pageBytes;
  }

  /**
   * Bytes of the scratch the deltas are encoded into, reused from epoch to epoch: one window on the calling thread
   * (DELTA_WINDOW_PAGES half pages), or the largest batch handed to a pool's threads.
   */
  get scratchBytes(): number {
    return this.scratch.byteLength;
  }

  /** Forgets everything: the secondary's copies can no longer be assumed. The slab is kept for reuse. */
  clear(): void {
    this.slotOf.fill(NO_SLOT);
    this.pageOfSlot?.fill(NO_SLOT);
    this.referenced?.fill(0);
    this.hand = 0;
    this.slotsTaken = 0;
    this.slotsUsed = 0;
  }

  /**
   * Encodes the pages of one incremental epoch (sorted, as captured) on the calling thread and remembers each as
   * sent. A delta is used only when it is under half a page. The returned DELTA pages are views of new buffers, one
   * per window of {@link DELTA_WINDOW_PAGES} pages.
   */
  encode(pages: readonly Page[], options: DeltaEncodeOptions = {}): DeltaEncoding {
    const plan = this.plan(pages);
    return this.finish(pages, plan, this.encodeBatch(plan), false, options.deferRemember === true);
  }

  /**
   * Remembers the pages an encode with `deferRemember` left out: `pages[i]` for each of `positions` (the encoding's
   * `unremembered`), which must hold what was encoded then. Nothing else may touch the cache in between.
   */
  rememberSent(pages: readonly Page[], positions: readonly number[]): void {
    for (const i of positions) {
      const page = pages[i]!;
      this.remember(page.index, page.data);
    }
  }

  /**
   * As {@link encode}, with a batch of at least `pool.parallelBytesMin.encodeDeltas` bytes of pages encoded by the
   * pool's threads (when the cache is `shared` and every page of the batch is a view of a SharedArrayBuffer; else
   * here, as encode does). The pages must stay unchanged until it settles; one encode at a time.
   */
  async encodeAsync(pages: readonly Page[], pool: PagesWorkerPool | undefined): Promise<DeltaEncoding> {
    const plan = this.plan(pages);
    const n = plan.views.length;
    if (pool === undefined || !this.shared || n < 2 || n * this.pageBytes < pool.parallelBytesMin.encodeDeltas || !plan.views.every(isShared)) {
      return this.finish(pages, plan, this.encodeBatch(plan), false);
    }
    const budget = this.budgetBytes;
    this.reserve(n);
    const slab = this.slab!;
    const bases = Array.from(plan.slots, (slot) => slab.subarray(slot * this.pageBytes, (slot + 1) * this.pageBytes));
    const out = this.scratch.subarray(0, n * budget);
    const lengths = this.lengths.subarray(0, n);
    try {
      await pool.encodeDeltas(plan.views, bases, { out, lengths }, budget);
    } catch {
      // A crashed thread, a full queue, a closed or failed pool: the pool rejects only once no thread touches the
      // scratch any more, and the threads never write the copies, so this thread encodes the batch instead.
      return this.finish(pages, plan, this.encodeBatch(plan), false);
    }
    // The threads wrote delta k at k * budget: pack them (in place, moving left), and update the copies.
    let total = 0;
    for (let k = 0; k < n; k++) {
      const length = lengths[k]!;
      if (length !== 0) bases[k]!.set(plan.views[k]!);
      if (length > 0) {
        out.copyWithin(total, k * budget, k * budget + length);
        total += length;
      }
    }
    // One window of the whole batch: the deltas leave in frames that outlive this call, an exact copy of them.
    return this.finish(pages, plan, { lengths, deltas: [total === 0 ? EMPTY : out.slice(0, total)], windowPages: n }, true);
  }

  /** Half a page: a delta must be smaller to be worth sending instead of the page. */
  private get budgetBytes(): number {
    return this.pageBytes >> 1;
  }

  /** Sorts the epoch's pages: those with a copy here go to the batch (and are marked recently sent). */
  private plan(pages: readonly Page[]): Plan {
    const n = pages.length;
    if (this.planBatchOf.length < n) {
      this.planBatchOf = new Int32Array(n);
      this.planSlots = new Int32Array(n);
    }
    const batchOf = this.planBatchOf.subarray(0, n);
    const slots = this.planSlots;
    let count = 0;
    for (let i = 0; i < n; i++) {
      const page = pages[i]!;
      batchOf[i] = -1;
      if (page.kind !== PageKind.RAW) {
        this.forget(page.index);
        continue;
      }
      const slot = page.index < this.slotOf.length ? this.slotOf[page.index]! : NO_SLOT;
      if (slot === NO_SLOT) continue;
      this.referenced![slot] = 1;
      batchOf[i] = count;
      slots[count++] = slot;
    }
    const views = new Array<Uint8Array>(count);
    for (let i = 0; i < n; i++) {
      const k = batchOf[i]!;
      if (k >= 0) views[k] = pages[i]!.data;
    }
    return { batchOf, views, slots: slots.subarray(0, count) };
  }

  /**
   * Encodes the batch on this thread, window by window of {@link DELTA_WINDOW_PAGES} pages (so the scratch stays
   * small whatever the epoch), each window's deltas copied out exactly: one encodeDeltaBatch call per run of pages
   * that are page-aligned views of one buffer (a capture's send buffer: usually the whole window), one encodeDelta
   * call for any other page.
   */
  private encodeBatch(plan: Plan): Encoded {
    const n = plan.views.length;
    const pageBytes = this.pageBytes;
    const budget = this.budgetBytes;
    const windowPages = Math.min(n, DELTA_WINDOW_PAGES);
    this.reserve(windowPages, n);
    const slab = this.slab!;
    const lengths = this.lengths.subarray(0, n);
    const pageIndices = this.windowPageIndices;
    const baseIndices = this.windowBaseIndices;
    const deltas: Uint8Array[] = [];
    for (let from = 0; from < n; from += DELTA_WINDOW_PAGES) {
      const end = Math.min(n, from + DELTA_WINDOW_PAGES);
      let total = 0;
      for (let k = from; k < end; ) {
        const view = plan.views[k]!;
        if (view.byteOffset % pageBytes !== 0 || view.length !== pageBytes) {
          const base = slab.subarray(plan.slots[k]! * pageBytes, (plan.slots[k]! + 1) * pageBytes);
          const length = encodeDelta(base, view, this.scratch.subarray(total, total + budget), budget);
          lengths[k] = length;
          if (length !== 0) base.set(view);
          if (length > 0) total += length;
          k += 1;
          continue;
        }
        const buffer = view.buffer;
        let j = k;
        for (; j < end; j++) {
          const v = plan.views[j]!;
          if (v.buffer !== buffer || v.byteOffset % pageBytes !== 0 || v.length !== pageBytes) break;
          pageIndices[j - k] = v.byteOffset / pageBytes;
          baseIndices[j - k] = plan.slots[j]!;
        }
        const region = new Uint8Array(buffer, 0, Math.floor(buffer.byteLength / pageBytes) * pageBytes);
        const count = j - k;
        total += encodeDeltaBatch(region, pageIndices, slab, baseIndices, pageBytes, this.scratch.subarray(total, total + count * budget), lengths.subarray(k, j), {
          count,
          budgetBytes: budget,
          updateBases: true,
        });
        k = j;
      }
      // The deltas leave in frames that outlive this call: an exact copy of the window's packed scratch.
      deltas.push(total === 0 ? EMPTY : this.scratch.slice(0, total));
    }
    return { lengths, deltas, windowPages: DELTA_WINDOW_PAGES };
  }

  /** The pages to send, in the epoch's order, with the deltas of `encoded`; new pages remembered. */
  private finish(pages: readonly Page[], plan: Plan, encoded: Encoded, parallel: boolean, deferRemember = false): DeltaEncoding {
    const pageBytes = this.pageBytes;
    const { lengths, deltas, windowPages } = encoded;
    const sent: Page[] = [];
    let deltaPages = 0;
    let unchangedPages = 0;
    let savedBytes = 0;
    let window = -1;
    let windowDeltas = EMPTY;
    let at = 0;
    const unremembered: number[] = [];
    for (let i = 0; i < pages.length; i++) {
      const page = pages[i]!;
      const k = plan.batchOf[i]!;
      if (k < 0) {
        if (page.kind === PageKind.RAW) {
          if (deferRemember) unremembered.push(sent.length);
          else this.remember(page.index, page.data);
        }
        sent.push(page);
        continue;
      }
      // Batch order is page order: the windows come one after the other.
      if (Math.floor(k / windowPages) !== window) {
        window = Math.floor(k / windowPages);
        windowDeltas = deltas[window]!;
        at = 0;
      }
      const length = lengths[k]!;
      if (length === 0) {
        unchangedPages += 1;
        savedBytes += pageBytes;
      } else if (length > 0) {
        sent.push({ index: page.index, kind: PageKind.DELTA, data: windowDeltas.subarray(at, at + length) });
        at += length;
        deltaPages += 1;
        savedBytes += pageBytes - length;
      } else {
        sent.push(page);
      }
    }
    return { pages: sent, deltaPages, unchangedPages, savedBytes, parallel, ...(deferRemember ? { unremembered } : {}) };
  }

  /** Makes the slab exist, the scratch hold the deltas of `n` pages and the lengths `lengthsCount` (default `n`). */
  private reserve(n: number, lengthsCount = n): void {
    if (this.slab === undefined && this.slotsMax > 0) {
      const bytes = this.slotsMax * this.pageBytes;
      this.slab = this.shared ? new Uint8Array(new SharedArrayBuffer(bytes)) : new Uint8Array(bytes);
      this.pageOfSlot = new Int32Array(this.slotsMax).fill(NO_SLOT);
      this.referenced = new Uint8Array(this.slotsMax);
    }
    const scratchBytes = n * this.budgetBytes;
    if (this.scratch.length < scratchBytes) this.scratch = this.shared ? new Uint8Array(new SharedArrayBuffer(scratchBytes)) : new Uint8Array(scratchBytes);
    if (this.lengths.length < lengthsCount) this.lengths = this.shared ? new Int32Array(new SharedArrayBuffer(4 * lengthsCount)) : new Int32Array(lengthsCount);
  }

  private forget(index: number): void {
    const slot = index < this.slotOf.length ? this.slotOf[index]! : NO_SLOT;
    if (slot === NO_SLOT) return;
    this.slotOf[index] = NO_SLOT;
    this.pageOfSlot![slot] = NO_SLOT;
    this.referenced![slot] = 0;
    this.slotsUsed -= 1;
  }

  /** Copies a page sent whole into a slot: a never-used one, else the first the clock finds not recently sent. */
  private remember(index: number, data: Uint8Array): void {
    if (this.slotsMax === 0 || data.length !== this.pageBytes || index >= PAGE_INDEX_CACHED_MAX) return;
    this.reserve(0);
    const pageOfSlot = this.pageOfSlot!;
    const referenced = this.referenced!;
    let slot: number;
    if (this.slotsTaken < this.slotsMax) {
      slot = this.slotsTaken++;
    } else {
      for (;;) {
        const candidate = this.hand;
        this.hand = (this.hand + 1) % this.slotsMax;
        if (pageOfSlot[candidate] === NO_SLOT || referenced[candidate] === 0) {
          slot = candidate;
          break;
        }
        referenced[candidate] = 0;
      }
      const evicted = pageOfSlot[slot]!;
      if (evicted !== NO_SLOT) {
        this.slotOf[evicted] = NO_SLOT;
        this.slotsUsed -= 1;
      }
    }
    pageOfSlot[slot] = index;
    referenced[slot] = 1;
    if (index >= this.slotOf.length) {
      const grown = new Int32Array(Math.max(index + 1, 2 * this.slotOf.length, 1024)).fill(NO_SLOT);
      grown.set(this.slotOf);
      this.slotOf = grown;
    }
    this.slotOf[index] = slot;
    this.slotsUsed += 1;
    this.slab!.set(data, slot * this.pageBytes);
  }
}

function isShared(view: Uint8Array): boolean {
  return view.buffer instanceof SharedArrayBuffer;
}
