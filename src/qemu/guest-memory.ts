/**
 * The guest memory of a QEMU VM as kemari sees it: every RAM block of the migration stream (`pc.ram`, `pc.bios`,
 * the ACPI ROMs, ...) laid end to end, in stream order, as one linear space of 4 KiB pages, plus what each page was
 * at the last capture: a shadow copy, or (shared blocks in fingerprints mode) a fingerprint.
 *
 * Why a linear space: kemari's wire, replica and digest know one memory of `memoryBytes`; the block list (names,
 * offsets, lengths) travels with the device state, so the secondary can cut the space back into blocks and re-emit
 * a stream QEMU loads.
 *
 * Why a shadow copy: QEMU tells nobody which pages changed (every `migrate` resends all of RAM, and no QMP command
 * lists dirty pages), so changes are found by comparing each page that arrives with its last captured contents. A
 * byte comparison (memcmp) rather than a fingerprint: it cannot miss a change, and it is about as fast as hashing.
 * Each page keeps a "changed since the last capture" mark; the invariant is that every unmarked page of the
 * reference (shadow page or fingerprint) equals what the last capture described, so a capture that failed halfway
 * loses nothing (the pages it updated stay marked). The memory also keeps the per-page CRC table of the state digest.
 *
 * Fingerprints mode (`changeDetection: 'fingerprints'`): a shared block (QEMU's RAM in a shared file, which the
 * stream does not carry) has no shadow at all, only one XXH3 a page with a random per-VM seed (0.2% of the block),
 * and its bytes are read from the file itself (a {@link SharedBlockSource}) by captures, reads and the digest,
 * which the VM's being stopped makes the last scan's bytes. The shadow then holds only the blocks the stream
 * carries (ROMs, BIOS: a few MiB), packed end to end, so the primary does not need a second guest's worth of RAM,
 * and guests beyond the 4 GiB a Buffer can hold become possible.
 */
import { randomBytes } from 'node:crypto';
import { KemariError } from '../errors.js';
import { scanChangedPages } from '../pages/scan.js';
import type { PagesWorkerPool } from '../pages/worker-pool.js';
import { copyPages } from '../vm/copy-pages.js';
import { markPages } from '../vm/mark-pages.js';
import type { SendBufferAllocator } from '../vm/copy-pages.js';
import { PageKind } from '../wire/bodies/pages.js';
import type { Page } from '../wire/bodies/pages.js';
import { PageCrcTable } from '../vm/page-crc-table.js';
import { PAGE_BYTES } from './migration/format.js';
import type { RamBlockInfo, RamPage } from './migration/records.js';
import { SHARED_MEMORY_CHANGE_DETECTIONS } from './qemu-machine.js';
import type { SharedMemoryChangeDetection } from './qemu-machine.js';

/** A RAM block placed in the linear space. */
export interface GuestRamBlock {
  /** The block's idstr in the migration stream. */
  name: string;
  /** Where the block starts in the linear space (a multiple of the page size). */
  offsetBytes: number;
  /** The block's length (a multiple of the page size). */
  lengthBytes: number;
  /** The block's memory region address, carried by streams under `x-ignore-shared`. */
  memoryRegionAddr?: number;
  /** True when the block lives in a shared memory file and is not carried by the stream (`x-ignore-shared`). */
  shared: boolean;
}

/**
 * Where the bytes of a shared block kept outside the shadow (fingerprints mode) are read: QEMU's shared RAM file
 * (SharedMemoryFile). Synchronous, because captures copy pages synchronously while the VM is stopped.
 */
export interface SharedBlockSource {
  /** Copies `length` bytes at `positionBytes` of the block into `target` at `targetOffset`. */
  readInto(target: Uint8Array, targetOffset: number, positionBytes: number, length: number): void;
  /**
   * Optional: a view of `length` bytes at `positionBytes` of the block itself (a mapping), valid while the VM is
   * stopped; undefined when there is none. What lets captures of a block kept outside the shadow be in place.
   */
  view?(positionBytes: number, length: number): Uint8Array | undefined;
}

/** Options of a {@link GuestMemory}. */
export interface GuestMemoryOptions {
  /** How changes of the shared blocks are found (see SharedMemoryChangeDetection). Default `'shadow'`. */
  changeDetection?: SharedMemoryChangeDetection;
  /** The bytes of each shared block, by block name: required for every shared block in fingerprints mode. */
  sharedSources?: ReadonlyMap<string, SharedBlockSource>;
}

/** A block with where its reference lives. */
interface Placement {
  block: GuestRamBlock;
  /** The block's first page in the linear space, and the page after its last. */
  firstPage: number;
  endPage: number;
  /** Where the block starts in the shadow, or -1 when the shadow does not hold it (fingerprints mode). */
  shadowOffsetBytes: number;
  /** One fingerprint a page of the block, when the shadow does not hold it. */
  fingerprints: BigUint64Array | undefined;
  /** The block's bytes, when the shadow does not hold it. */
  source: SharedBlockSource | undefined;
}

const ZERO_PAGE = Buffer.alloc(PAGE_BYTES);
const EMPTY = new Uint8Array(0);
const newSendBuffer: SendBufferAllocator = (bytes) => new Uint8Array(Buffer.allocUnsafeSlow(bytes).buffer, 0, bytes);

/** Places `blocks` end to end, in order, marking the ones named in `sharedNames`. */
export function layoutBlocks(blocks: readonly RamBlockInfo[], sharedNames: ReadonlySet<string> = new Set()): GuestRamBlock[] {
  let offsetBytes = 0;
  return blocks.map((block) => {
    const placed: GuestRamBlock = { name: block.name, offsetBytes, lengthBytes: block.lengthBytes, shared: sharedNames.has(block.name) };
    if (block.memoryRegionAddr !== undefined) placed.memoryRegionAddr = block.memoryRegionAddr;
    offsetBytes += block.lengthBytes;
    return placed;
  });
}

/**
 * How {@link GuestMemory.scanRangeOn} went: `'threads'`, the pool scanned the range; `'here'`, the calling thread
 * did (the pool refused before starting, or the range keeps no fingerprints); `'closed'`, the calling thread did
 * because the pool is closed (for good); `'failed'`, the pool failed after its threads began, so every page of the
 * range was marked changed and the range scanned again here.
 */
export type PooledScanOutcome = 'threads' | 'here' | 'closed' | 'failed';

/** The linear guest memory with its shadow copy (or fingerprints) and change marks; see the module comment. */
export class GuestMemory {
  /** The blocks, in stream order. */
  readonly blocks: readonly GuestRamBlock[];
  /** Sum of the block lengths. */
  readonly memoryBytes: number;
  /** Pages in the linear space. */
  readonly pageCount: number;
  /** How changes of the shared blocks are found. */
  readonly changeDetection: SharedMemoryChangeDetection;
  /**
   * The shadow: the blocks it holds as last received, packed end to end (every block, at its linear offset, in
   * shadow mode). Changed only through this class.
   */
  private readonly shadow: Buffer;
  private readonly placements: Placement[];
  private readonly byName: Map<string, Placement>;
  /** True when the shadow holds every block at its linear offset (no block kept outside it). */
  private readonly shadowIsLinear: boolean;
  /** The XXH3 seed of the fingerprints: secret and random per VM, so a guest cannot aim at collisions. */
  private readonly seed: bigint;
  private readonly changed: Uint8Array;
  /**
   * 1 when the page is known to be all zero (never 1 for a page that is not). Most pages of a guest are zero and
   * every stream resends them as fill records: this answers those without touching the page (measured: a compare
   * per zero page was half the cost of a 256 MiB checkpoint), and captures and {@link load} go by it for every page
   * before reading any (a page of the shadow never written then stays unmapped). Set by every record, range, scan
   * and load that reports the page; it starts at 1 for pages of the shadow (zero) and at 0 for pages outside it,
   * which only costs such a zero page being read (fingerprints mode: sent as RAW) until a scan reports it.
   */
  private readonly knownZero: Uint8Array;
  private changedList: number[] = [];
  private allChanged = true;
  private readonly crcTable: PageCrcTable;
  /** One page read from a source, for the CRC table. */
  private readonly pageScratch = Buffer.allocUnsafeSlow(PAGE_BYTES);
  private scanOut: { changedPages: Uint32Array; zeroFlags: Uint8Array } | undefined;

  /**
   * A zeroed memory (as a fresh QEMU's) with every page marked changed. KEMARI_INVALID_ARGUMENT for blocks not
   * placed end to end in whole pages, an unknown `changeDetection`, or a shared block without a source in
   * fingerprints mode.
   */
  constructor(blocks: readonly GuestRamBlock[], options: GuestMemoryOptions = {}) {
    let expected = 0;
    for (const block of blocks) {
      if (block.offsetBytes !== expected || !Number.isSafeInteger(block.lengthBytes) || block.lengthBytes <= 0 || block.lengthBytes % PAGE_BYTES !== 0) {
        throw new KemariError('KEMARI_INVALID_ARGUMENT', `RAM block ${JSON.stringify(block.name)} is not placed right after the previous one in whole pages`, {
          details: { block: block.name, offsetBytes: block.offsetBytes, lengthBytes: block.lengthBytes, expectedOffsetBytes: expected },
        });
      }
      expected += block.lengthBytes;
    }
    if (expected === 0) throw new KemariError('KEMARI_INVALID_ARGUMENT', 'guest memory needs at least one RAM block');
    const changeDetection = options.changeDetection ?? 'shadow';
    if (!SHARED_MEMORY_CHANGE_DETECTIONS.includes(changeDetection)) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', `changeDetection must be one of ${SHARED_MEMORY_CHANGE_DETECTIONS.join(', ')}`, {
        details: { field: 'changeDetection', changeDetection },
      });
    }
    this.changeDetection = changeDetection;
    this.blocks = blocks.map((block) => ({ ...block }));
    this.memoryBytes = expected;
    this.pageCount = expected / PAGE_BYTES;
    this.changed = new Uint8Array(this.pageCount);
    this.knownZero = new Uint8Array(this.pageCount).fill(1);
    let shadowBytes = 0;
    this.placements = this.blocks.map((block) => {
      const firstPage = block.offsetBytes / PAGE_BYTES;
      const endPage = firstPage + block.lengthBytes / PAGE_BYTES;
      if (changeDetection === 'fingerprints' && block.shared) {
        const source = options.sharedSources?.get(block.name);
        if (source === undefined) {
          throw new KemariError('KEMARI_INVALID_ARGUMENT', `fingerprints mode needs the bytes of the shared RAM block ${JSON.stringify(block.name)}`, {
            details: { block: block.name },
          });
        }
        this.knownZero.fill(0, firstPage, endPage);
        // In a SharedArrayBuffer: a PagesWorkerPool's threads update it in place (scanRangeOn).
        const fingerprints = new BigUint64Array(new SharedArrayBuffer((endPage - firstPage) * 8));
        return { block, firstPage, endPage, shadowOffsetBytes: -1, fingerprints, source };
      }
      const placement = { block, firstPage, endPage, shadowOffsetBytes: shadowBytes, fingerprints: undefined, source: undefined };
      shadowBytes += block.lengthBytes;
      return placement;
    });
    this.byName = new Map(this.placements.map((placement) => [placement.block.name, placement]));
    if (this.byName.size !== this.blocks.length) throw new KemariError('KEMARI_INVALID_ARGUMENT', 'RAM block names must be unique');
    this.shadowIsLinear = shadowBytes === expected;
    this.shadow = Buffer.alloc(shadowBytes);
    this.seed = randomBytes(8).readBigUInt64LE(0);
    this.crcTable = this.shadowIsLinear
      ? new PageCrcTable(this.shadow, PAGE_BYTES)
      : new PageCrcTable({ pageCount: this.pageCount, page: (index) => this.pageBytesAt(index) }, PAGE_BYTES);
  }

  /** The block named `name`, or undefined. */
  block(name: string): GuestRamBlock | undefined {
    return this.byName.get(name)?.block;
  }

  /** Bytes of the shadow held: the whole memory in shadow mode, the blocks the stream carries in fingerprints mode. */
  get shadowBytes(): number {
    return this.shadow.byteLength;
  }

  /** Bytes of the fingerprint tables of the blocks kept outside the shadow (8 a page; 0 in shadow mode). */
  get fingerprintBytes(): number {
    let bytes = 0;
    for (const placement of this.placements) bytes += placement.fingerprints?.byteLength ?? 0;
    return bytes;
  }

  /**
   * True when `blocks` (a stream's RAM setup record) lists exactly this memory's blocks, in order, with the same
   * lengths: anything else (a hot-plugged DIMM, another machine) cannot be described by the same linear space.
   */
  sameLayout(blocks: readonly RamBlockInfo[]): boolean {
    return blocks.length === this.blocks.length && blocks.every((block, i) => block.name === this.blocks[i]?.name && block.lengthBytes === this.blocks[i]?.lengthBytes);
  }

  /**
   * Applies one page record of a migration stream: compared with the shadow, copied and marked when different. A
   * page of a block kept outside the shadow is KEMARI_MIGRATION_FORMAT (under `x-ignore-shared` QEMU sends none).
   */
  receivePage(page: RamPage): void {
    const placement = this.byName.get(page.block);
    if (placement === undefined || page.offset < 0 || page.offset % PAGE_BYTES !== 0 || page.offset + PAGE_BYTES > placement.block.lengthBytes) {
      throw new KemariError('KEMARI_MIGRATION_FORMAT', `page ${page.offset} of RAM block ${JSON.stringify(page.block)} is outside the guest memory`, {
        details: { block: page.block, offset: page.offset },
      });
    }
    if (placement.shadowOffsetBytes < 0) {
      throw new KemariError('KEMARI_MIGRATION_FORMAT', `the stream carries page ${page.offset} of the shared RAM block ${JSON.stringify(page.block)}`, {
        details: { block: page.block, offset: page.offset },
      });
    }
    const at = placement.shadowOffsetBytes + page.offset;
    const index = placement.firstPage + page.offset / PAGE_BYTES;
    const shadow = this.shadow;
    if ('fill' in page) {
      if (page.fill === 0) {
        if (this.knownZero[index] === 1) return;
        this.knownZero[index] = 1;
        if (ZERO_PAGE.compare(shadow, at, at + PAGE_BYTES) === 0) return;
      } else if (shadow.subarray(at, at + PAGE_BYTES).every((b) => b === page.fill)) {
        return;
      } else {
        this.knownZero[index] = 0;
      }
      shadow.fill(page.fill, at, at + PAGE_BYTES);
    } else {
      // QEMU sends zero pages as fill records, so a data page is (almost always) not zero.
      this.knownZero[index] = 0;
      if (shadow.compare(page.data, 0, PAGE_BYTES, at, at + PAGE_BYTES) === 0) return;
      shadow.set(page.data, at);
    }
    this.mark(index);
  }

  /**
   * Compares `bytes` (page aligned, whole pages) with the shadow at linear offset `offsetBytes` and takes the pages
   * that differ: how shared-memory blocks, read from their file, are checked. The range must be held by the shadow
   * (for a block kept outside it, use {@link scanRange}).
   */
  receiveRange(offsetBytes: number, bytes: Uint8Array): void {
    this.checkRange(offsetBytes, bytes.byteLength);
    const start = this.shadowOffsetOf(offsetBytes, bytes.byteLength);
    const shadow = this.shadow;
    for (let at = 0; at < bytes.byteLength; at += PAGE_BYTES) {
      const to = start + at;
      if (shadow.compare(bytes, at, at + PAGE_BYTES, to, to + PAGE_BYTES) === 0) continue;
      shadow.set(bytes.subarray(at, at + PAGE_BYTES), to);
      const page = (offsetBytes + at) / PAGE_BYTES;
      this.knownZero[page] = 0;
      this.mark(page);
    }
  }

  /**
   * Like {@link receiveRange}, in one call of the page scanner (the native addon when it is loaded): the pages of
   * `region` that differ from their reference at linear offset `offsetBytes` are marked, and the reference takes
   * their new contents (shadow) or fingerprints (a block kept outside the shadow; the range must then lie within
   * that block). `region` may be a mapping of QEMU's shared RAM file, compared in place.
   */
  scanRange(offsetBytes: number, region: Uint8Array): void {
    this.checkRange(offsetBytes, region.byteLength);
    if (region.byteLength === 0) return;
    const first = offsetBytes / PAGE_BYTES;
    const placement = this.placementOfPage(first);
    if (placement.fingerprints !== undefined) {
      const fingerprints = this.fingerprintsOf(placement, offsetBytes, region.byteLength);
      const out = this.scanOutput(region.byteLength / PAGE_BYTES);
      this.markScanned(first, out, scanChangedPages(region, PAGE_BYTES, fingerprints, out, { update: true, seed: this.seed }));
      return;
    }
    this.scanRangeShadow(offsetBytes, region);
  }

  /**
   * {@link scanRange} of a range of a block kept outside the shadow (fingerprints mode) on `pool`'s threads: the
   * fingerprinting of a large guest (XXH3 of every page) is split over the cores and their memory bandwidth,
   * shortening the pause it is part of. `region` must be readable by the threads (a mapping shared with pool.shareFile). Should the
   * pool fail an operation after its threads began (a thread crashed, a part failed), some fingerprints may have
   * moved on without their pages being marked: every page of the range is then marked changed (the next capture
   * sends them all) and the range is scanned again here. A pool that refuses before starting (closed, busy, every
   * thread lost) costs nothing: the range is scanned here. Other ranges take {@link scanRange}. Says how it went,
   * so a caller can stop handing scans to a pool that keeps failing them.
   */
  async scanRangeOn(pool: PagesWorkerPool, offsetBytes: number, region: Uint8Array): Promise<PooledScanOutcome> {
    this.checkRange(offsetBytes, region.byteLength);
    if (region.byteLength === 0) return 'here';
    const first = offsetBytes / PAGE_BYTES;
    const placement = this.placementOfPage(first);
    if (placement.fingerprints === undefined) {
      this.scanRange(offsetBytes, region);
      return 'here';
    }
    const fingerprints = this.fingerprintsOf(placement, offsetBytes, region.byteLength);
    const pageCount = region.byteLength / PAGE_BYTES;
    const out = this.scanOutput(pageCount);
    if (pool.stats().failure !== undefined) {
      // A pool that lost every thread refuses before touching anything: scan here, as without a pool.
      this.scanRange(offsetBytes, region);
      return 'here';
    }
    let count: number;
    try {
      count = await pool.scanChangedPages(region, PAGE_BYTES, fingerprints, out, { update: true, seed: this.seed });
    } catch (error) {
      // Refused before any thread began (closed, queue full, already failed): nothing moved on; scan here.
      const untouched = error instanceof KemariError && (error.code === 'KEMARI_CLOSED' || error.code === 'KEMARI_BUSY' || error === pool.stats().failure);
      if (!untouched) {
        // A thread crashed or a part failed after others had updated their fingerprints: those pages are no longer
        // known to have changed, so every page of the range is sent with the next capture.
        for (let page = first; page < first + pageCount; page++) {
          this.knownZero[page] = 0;
          this.mark(page);
        }
      }
      this.scanRange(offsetBytes, region);
      if (error instanceof KemariError && error.code === 'KEMARI_CLOSED' && pool.isClosed) return 'closed';
      return untouched ? 'here' : 'failed';
    }
    this.markScanned(first, out, count);
    return 'threads';
  }

  /** The fingerprints of the pages of a range inside a block kept outside the shadow. */
  private fingerprintsOf(placement: Placement, offsetBytes: number, bytes: number): BigUint64Array {
    const first = offsetBytes / PAGE_BYTES;
    const pageCount = bytes / PAGE_BYTES;
    if (first + pageCount > placement.endPage) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', `a scanned range must lie within the shared RAM block ${JSON.stringify(placement.block.name)}`, {
        details: { offsetBytes, bytes, block: placement.block.name },
      });
    }
    const from = first - placement.firstPage;
    return placement.fingerprints!.subarray(from, from + pageCount);
  }

  /** Marks the pages a scan found changed, at once: their reference already moved on. */
  private markScanned(first: number, out: { changedPages: Uint32Array; zeroFlags: Uint8Array }, count: number): void {
    for (let k = 0; k < count; k++) {
      const page = first + out.changedPages[k]!;
      this.knownZero[page] = out.zeroFlags[k]!;
      this.mark(page);
    }
  }

  /** {@link scanRange} of a range the shadow holds. */
  private scanRangeShadow(offsetBytes: number, region: Uint8Array): void {
    const out = this.scanOutput(region.byteLength / PAGE_BYTES);
    const start = this.shadowOffsetOf(offsetBytes, region.byteLength);
    this.markScanned(offsetBytes / PAGE_BYTES, out, scanChangedPages(region, PAGE_BYTES, this.shadow.subarray(start, start + region.byteLength), out, { update: true }));
  }

  /**
   * Takes `memory` (a restored snapshot: what the QEMU holds) as the last captured state and marks every page
   * changed. Blocks in the shadow are copied into it; for a block kept outside it only the fingerprints (and zero
   * marks) are computed from `memory`: its bytes are already in QEMU's file, which may be running on from them, so
   * nothing is written there.
   */
  load(memory: Uint8Array): void {
    if (memory.byteLength !== this.memoryBytes) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', `memory of ${memory.byteLength} bytes does not fit the ${this.memoryBytes} of the RAM blocks`, {
        details: { bytes: memory.byteLength, memoryBytes: this.memoryBytes },
      });
    }
    for (const { block, shadowOffsetBytes, fingerprints, firstPage, endPage } of this.placements) {
      if (fingerprints === undefined) {
        // Page by page, reading the shadow only where it may hold something: a page known to be zero there is
        // written only if the memory's is not, so a fresh shadow stays unmapped where the memory is zero (faulting it
        // in just to compare it, as a whole-block copy or compare would, was most of a 256 MiB load).
        const shadow = this.shadow;
        const knownZero = this.knownZero;
        for (let page = firstPage, from = block.offsetBytes, to = shadowOffsetBytes; page < endPage; page++, from += PAGE_BYTES, to += PAGE_BYTES) {
          const zero = ZERO_PAGE.compare(memory, from, from + PAGE_BYTES) === 0;
          if (knownZero[page] === 1 ? zero : shadow.compare(memory, from, from + PAGE_BYTES, to, to + PAGE_BYTES) === 0) {
            knownZero[page] = zero ? 1 : 0;
            continue;
          }
          shadow.set(memory.subarray(from, from + PAGE_BYTES), to);
          knownZero[page] = zero ? 1 : 0;
        }
      } else {
        // A scan with update stores every page's fingerprint (a page it does not report already has it).
        const bytes = memory.subarray(block.offsetBytes, block.offsetBytes + block.lengthBytes);
        scanChangedPages(bytes, PAGE_BYTES, fingerprints, this.scanOutput(fingerprints.length), { update: true, seed: this.seed });
        for (let page = firstPage, at = block.offsetBytes; page < endPage; page++, at += PAGE_BYTES) {
          this.knownZero[page] = ZERO_PAGE.compare(memory, at, at + PAGE_BYTES) === 0 ? 1 : 0;
        }
      }
    }
    this.crcTable.markRange(0, this.memoryBytes);
    this.markAllChanged();
  }

  /** Marks every page changed: the next {@link takePages} returns them all. */
  markAllChanged(): void {
    this.allChanged = true;
  }

  /**
   * Marks pages changed whatever they hold (VmAdapter.markDirty): the next {@link takePages} returns them too. An
   * index outside the memory is KEMARI_INVALID_ARGUMENT, and then no page is marked.
   */
  markChanged(pageIndices: Uint32Array): void {
    markPages(this.changed, this.changedList, pageIndices);
  }

  /**
   * Whether {@link takePages} can give views instead of copies: when every block is in the shadow, or (fingerprints
   * mode) kept in a source that can be viewed in place (a mapped file).
   */
  get takesInPlace(): boolean {
    return this.placements.every((p) => p.source === undefined || p.source.view?.(0, 0) !== undefined);
  }

  /** Pages marked changed since the last {@link takePages} (all of them after {@link markAllChanged}). */
  get changedPageCount(): number {
    return this.allChanged ? this.pageCount : this.changedList.length;
  }

  /**
   * Copies of the changed pages (every page when `all`), sorted by index, in one send buffer (from `allocate`, by
   * default a new one), and that buffer; all-zero pages are ZERO with empty data. Pages of a block kept outside the
   * shadow are read from its source (the VM must be stopped since the last scan). Clears the change marks, once
   * every page is copied: a copy that fails leaves them all marked. With `inPlace` (and {@link takesInPlace}) the
   * RAW pages are views instead, no buffer: of the shadow (valid until the next stream or {@link load} changes it),
   * or of a mapped block (valid while the VM stays stopped).
   */
  takePages(all: boolean, allocate?: SendBufferAllocator, inPlace = false): { pages: Page[]; send: Uint8Array } {
    let indices: Uint32Array;
    if (all || this.allChanged) {
      indices = new Uint32Array(this.pageCount);
      for (let i = 0; i < indices.length; i++) indices[i] = i;
    } else {
      indices = Uint32Array.from(this.changedList).sort();
    }
    let taken: { pages: Page[]; send: Uint8Array };
    if (inPlace && this.takesInPlace) {
      taken = { pages: this.pageViews(indices), send: EMPTY };
    } else if (this.shadowIsLinear) {
      const shadow = this.shadow;
      // A page known to be zero is not read: the shadow's never-written pages then stay unmapped (a full capture of a
      // mostly zero guest otherwise faults in every one of them, just to compare it with zeros).
      const knownZero = this.knownZero;
      taken = copyPages(shadow, PAGE_BYTES, indices, (index) => knownZero[index] === 1 || ZERO_PAGE.compare(shadow, index * PAGE_BYTES, (index + 1) * PAGE_BYTES) === 0, allocate);
    } else {
      taken = this.copySplit(indices, allocate ?? newSendBuffer);
    }
    if (this.changedList.length * 8 > this.pageCount) this.changed.fill(0);
    else for (const page of this.changedList) this.changed[page] = 0;
    this.changedList = [];
    this.allChanged = false;
    return taken;
  }

  /**
   * A copy of `length` bytes at linear offset `offset`: the shadow's, and for blocks kept outside it the source's
   * (the last scan's bytes while the VM is stopped since, the running guest's otherwise).
   */
  read(offset: number, length: number): Uint8Array {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.memoryBytes) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', 'read range outside the guest memory', { details: { offset, length, memoryBytes: this.memoryBytes } });
    }
    const bytes = new Uint8Array(length);
    for (const placement of this.placements) {
      const { block } = placement;
      const from = Math.max(offset, block.offsetBytes);
      const to = Math.min(offset + length, block.offsetBytes + block.lengthBytes);
      if (from >= to) continue;
      const within = from - block.offsetBytes;
      if (placement.source !== undefined) placement.source.readInto(bytes, from - offset, within, to - from);
      else bytes.set(this.shadow.subarray(placement.shadowOffsetBytes + within, placement.shadowOffsetBytes + within + (to - from)), from - offset);
    }
    return bytes;
  }

  /**
   * The CRC32C of every page, current (what the state digest hashes): pages changed since the last call are hashed
   * from the shadow, or from the source for blocks kept outside it (so the VM must be stopped since the last scan
   * for the table to describe the last capture).
   */
  pageCrcs(): Uint32Array {
    return this.crcTable.refresh();
  }

  private mark(page: number): void {
    this.crcTable.markPage(page);
    if (this.changed[page] === 0) {
      this.changed[page] = 1;
      this.changedList.push(page);
    }
  }

  /** Scan outputs with room for `pageCount` pages, kept across scans. */
  private scanOutput(pageCount: number): { changedPages: Uint32Array; zeroFlags: Uint8Array } {
    if (this.scanOut === undefined || this.scanOut.changedPages.length < pageCount) {
      this.scanOut = { changedPages: new Uint32Array(pageCount), zeroFlags: new Uint8Array(pageCount) };
    }
    return this.scanOut;
  }

  private checkRange(offsetBytes: number, bytes: number): void {
    if (!Number.isSafeInteger(offsetBytes) || offsetBytes < 0 || offsetBytes % PAGE_BYTES !== 0 || bytes % PAGE_BYTES !== 0 || offsetBytes + bytes > this.memoryBytes) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', 'a memory range must be whole pages inside the guest memory', {
        details: { offsetBytes, bytes, memoryBytes: this.memoryBytes },
      });
    }
  }

  /** The placement of the block holding linear page `page` (which must be inside the memory). */
  private placementOfPage(page: number): Placement {
    const placements = this.placements;
    let low = 0;
    let high = placements.length - 1;
    while (low < high) {
      const middle = (low + high + 1) >> 1;
      if (placements[middle]!.firstPage <= page) low = middle;
      else high = middle - 1;
    }
    return placements[low]!;
  }

  /**
   * Where the linear range [offsetBytes, offsetBytes + bytes) starts in the shadow; KEMARI_INVALID_ARGUMENT when a
   * block it touches is kept outside the shadow (the blocks the shadow holds are packed in order, so a range over
   * held blocks only is contiguous there too).
   */
  private shadowOffsetOf(offsetBytes: number, bytes: number): number {
    if (this.shadowIsLinear) return offsetBytes;
    const firstPage = offsetBytes / PAGE_BYTES;
    const endPage = firstPage + Math.max(1, bytes / PAGE_BYTES);
    const first = this.placementOfPage(firstPage);
    for (let i = this.placements.indexOf(first); i < this.placements.length && this.placements[i]!.firstPage < endPage; i++) {
      if (this.placements[i]!.shadowOffsetBytes < 0) {
        throw new KemariError('KEMARI_INVALID_ARGUMENT', `the shared RAM block ${JSON.stringify(this.placements[i]!.block.name)} has no shadow: scan it with its fingerprints`, {
          details: { offsetBytes, bytes, block: this.placements[i]!.block.name },
        });
      }
    }
    return first.shadowOffsetBytes + (offsetBytes - first.block.offsetBytes);
  }

  /** The bytes of linear page `index` for the CRC table: a view of the shadow, or the page read from its source. */
  private pageBytesAt(index: number): Uint8Array {
    const placement = this.placementOfPage(index);
    const within = (index - placement.firstPage) * PAGE_BYTES;
    if (placement.source === undefined) return this.shadow.subarray(placement.shadowOffsetBytes + within, placement.shadowOffsetBytes + within + PAGE_BYTES);
    placement.source.readInto(this.pageScratch, 0, within, PAGE_BYTES);
    return this.pageScratch;
  }

  /** The pages at `indices` as views of the shadow or of their block's source (see {@link takePages}). */
  private pageViews(indices: Uint32Array): Page[] {
    const { placements, shadow } = this;
    const pages: Page[] = new Array(indices.length);
    for (let i = 0, p = 0; i < indices.length; i++) {
      const index = indices[i]!;
      while (index >= placements[p]!.endPage) p += 1;
      const placement = placements[p]!;
      const within = (index - placement.firstPage) * PAGE_BYTES;
      let data: Uint8Array | undefined;
      if (placement.source !== undefined) {
        // Zero as the scans found it, as copySplit goes by.
        if (this.knownZero[index] !== 1) data = placement.source.view!(within, PAGE_BYTES);
        if (data === undefined && this.knownZero[index] !== 1) {
          throw new KemariError('KEMARI_INVALID_ARGUMENT', `RAM block ${JSON.stringify(placement.block.name)} can no longer be viewed in place`);
        }
      } else {
        const at = placement.shadowOffsetBytes + within;
        if (ZERO_PAGE.compare(shadow, at, at + PAGE_BYTES) !== 0) data = shadow.subarray(at, at + PAGE_BYTES);
      }
      pages[i] = data === undefined ? { index, kind: PageKind.ZERO, data: EMPTY } : { index, kind: PageKind.RAW, data };
    }
    return pages;
  }

  /**
   * copyPages over a split memory: pages of the shadow copied from it, pages of a block kept outside it read from
   * its source (zero ones known from the scans, not read), in runs of consecutive pages of one block.
   */
  private copySplit(indices: Uint32Array, allocate: SendBufferAllocator): { pages: Page[]; send: Uint8Array } {
    const { placements, shadow } = this;
    const count = indices.length;
    // Pass 1: which pages are zero, so the send buffer holds exactly the RAW pages.
    const raw = new Uint8Array(count);
    let rawCount = 0;
    for (let i = 0, p = 0; i < count; i++) {
      const index = indices[i]!;
      while (index >= placements[p]!.endPage) p += 1;
      const placement = placements[p]!;
      let zero: boolean;
      if (placement.source !== undefined) {
        zero = this.knownZero[index] === 1;
      } else {
        const at = placement.shadowOffsetBytes + (index - placement.firstPage) * PAGE_BYTES;
        zero = this.knownZero[index] === 1 || ZERO_PAGE.compare(shadow, at, at + PAGE_BYTES) === 0;
      }
      if (!zero) {
        raw[i] = 1;
        rawCount += 1;
      }
    }
    // No zero-fill: every byte of it is overwritten below.
    const send = rawCount === 0 ? EMPTY : allocate(rawCount * PAGE_BYTES);
    const pages: Page[] = new Array(count);
    let to = 0;
    for (let i = 0, p = 0; i < count; ) {
      const index = indices[i]!;
      while (index >= placements[p]!.endPage) p += 1;
      if (raw[i] === 0) {
        pages[i] = { index, kind: PageKind.ZERO, data: EMPTY };
        i += 1;
        continue;
      }
      const placement = placements[p]!;
      let j = i + 1;
      while (j < count && raw[j] === 1 && indices[j] === index + (j - i) && indices[j]! < placement.endPage) j += 1;
      const runBytes = (j - i) * PAGE_BYTES;
      const within = (index - placement.firstPage) * PAGE_BYTES;
      if (placement.source !== undefined) placement.source.readInto(send, to, within, runBytes);
      else send.set(shadow.subarray(placement.shadowOffsetBytes + within, placement.shadowOffsetBytes + within + runBytes), to);
      for (let k = i; k < j; k++, to += PAGE_BYTES) pages[k] = { index: indices[k]!, kind: PageKind.RAW, data: send.subarray(to, to + PAGE_BYTES) };
      i = j;
    }
    return { pages, send };
  }
}
