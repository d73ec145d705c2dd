/**
 * The guest memory of a QEMU VM as kemari sees it: every RAM block of the migration stream (`pc.ram`, `pc.bios`,
 * the ACPI ROMs, ...) laid end to end, in stream order, as one linear space of 4 KiB pages, plus a shadow copy of
 * that space as it was at the last capture.
 *
 * Why a linear space: kemari's wire, replica and digest know one memory of `memoryBytes`; the block list (names,
 * offsets, lengths) travels with the device state, so the secondary can cut the space back into blocks and re-emit
 * a stream QEMU loads.
 *
 * Why a shadow copy: QEMU tells nobody which pages changed (every `migrate` resends all of RAM, and no QMP command
 * lists dirty pages), so changes are found by comparing each page that arrives with its last captured contents. A
 * byte comparison (memcmp) rather than a fingerprint: it cannot miss a change, and it is about as fast as hashing.
 * Each page keeps a "changed since the last capture" mark; the invariant is that every unmarked page of the shadow
 * equals what the last capture described, so a capture that failed halfway loses nothing (the pages it updated stay
 * marked). The shadow also feeds the per-page CRC table of the state digest.
 */
import { KemariError } from '../errors.js';
import { scanChangedPages } from '../pages/scan.js';
import { copyPages } from '../vm/copy-pages.js';
import type { SendBufferAllocator } from '../vm/copy-pages.js';
import type { Page } from '../wire/bodies/pages.js';
import { PageCrcTable } from '../vm/page-crc-table.js';
import { PAGE_BYTES } from './migration/format.js';
import type { RamBlockInfo, RamPage } from './migration/records.js';

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

const ZERO_PAGE = Buffer.alloc(PAGE_BYTES);

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

/** The linear guest memory with its shadow copy and change marks; see the module comment. */
export class GuestMemory {
  /** The blocks, in stream order. */
  readonly blocks: readonly GuestRamBlock[];
  /** Sum of the block lengths. */
  readonly memoryBytes: number;
  /** Pages in the linear space. */
  readonly pageCount: number;
  /** The shadow: the memory as last received. Read it; change it only through this class. */
  readonly image: Buffer;
  private readonly byName: Map<string, GuestRamBlock>;
  private readonly changed: Uint8Array;
  /**
   * 1 when the page is known to be all zero in the shadow. Most pages of a guest are zero and every stream resends
   * them as fill records: this answers those without touching the page (measured: a compare per zero page was
   * half the cost of a 256 MiB checkpoint).
   */
  private readonly knownZero: Uint8Array;
  private changedList: number[] = [];
  private allChanged = true;
  private readonly crcTable: PageCrcTable;

  /** A zeroed memory (as a fresh QEMU's) with every page marked changed. */
  constructor(blocks: readonly GuestRamBlock[]) {
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
    this.blocks = blocks.map((block) => ({ ...block }));
    this.byName = new Map(this.blocks.map((block) => [block.name, block]));
    if (this.byName.size !== this.blocks.length) throw new KemariError('KEMARI_INVALID_ARGUMENT', 'RAM block names must be unique');
    this.memoryBytes = expected;
    this.pageCount = expected / PAGE_BYTES;
    this.image = Buffer.alloc(expected);
    this.changed = new Uint8Array(this.pageCount);
    this.knownZero = new Uint8Array(this.pageCount).fill(1);
    this.crcTable = new PageCrcTable(this.image, PAGE_BYTES);
  }

  /** The block named `name`, or undefined. */
  block(name: string): GuestRamBlock | undefined {
    return this.byName.get(name);
  }

  /**
   * True when `blocks` (a stream's RAM setup record) lists exactly this memory's blocks, in order, with the same
   * lengths: anything else (a hot-plugged DIMM, another machine) cannot be described by the same linear space.
   */
  sameLayout(blocks: readonly RamBlockInfo[]): boolean {
    return blocks.length === this.blocks.length && blocks.every((block, i) => block.name === this.blocks[i]?.name && block.lengthBytes === this.blocks[i]?.lengthBytes);
  }

  /** Applies one page record of a migration stream: compared with the shadow, copied and marked when different. */
  receivePage(page: RamPage): void {
    const block = this.byName.get(page.block);
    if (block === undefined || page.offset < 0 || page.offset % PAGE_BYTES !== 0 || page.offset + PAGE_BYTES > block.lengthBytes) {
      throw new KemariError('KEMARI_MIGRATION_FORMAT', `page ${page.offset} of RAM block ${JSON.stringify(page.block)} is outside the guest memory`, {
        details: { block: page.block, offset: page.offset },
      });
    }
    const at = block.offsetBytes + page.offset;
    const index = at / PAGE_BYTES;
    if ('fill' in page) {
      if (page.fill === 0) {
        if (this.knownZero[index] === 1) return;
        this.knownZero[index] = 1;
        if (ZERO_PAGE.compare(this.image, at, at + PAGE_BYTES) === 0) return;
      } else if (this.image.subarray(at, at + PAGE_BYTES).every((b) => b === page.fill)) {
        return;
      } else {
        this.knownZero[index] = 0;
      }
      this.image.fill(page.fill, at, at + PAGE_BYTES);
    } else {
      // QEMU sends zero pages as fill records, so a data page is (almost always) not zero.
      this.knownZero[index] = 0;
      if (this.image.compare(page.data, 0, PAGE_BYTES, at, at + PAGE_BYTES) === 0) return;
      this.image.set(page.data, at);
    }
    this.mark(index);
  }

  /**
   * Compares `bytes` (page aligned, whole pages) with the shadow at linear offset `offsetBytes` and takes the pages
   * that differ: how shared-memory blocks, read from their file, are checked.
   */
  receiveRange(offsetBytes: number, bytes: Uint8Array): void {
    if (offsetBytes % PAGE_BYTES !== 0 || bytes.byteLength % PAGE_BYTES !== 0 || offsetBytes + bytes.byteLength > this.memoryBytes) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', 'a memory range must be whole pages inside the guest memory', {
        details: { offsetBytes, bytes: bytes.byteLength, memoryBytes: this.memoryBytes },
      });
    }
    const image = this.image;
    for (let at = 0; at < bytes.byteLength; at += PAGE_BYTES) {
      const to = offsetBytes + at;
      if (image.compare(bytes, at, at + PAGE_BYTES, to, to + PAGE_BYTES) === 0) continue;
      image.set(bytes.subarray(at, at + PAGE_BYTES), to);
      this.knownZero[to / PAGE_BYTES] = 0;
      this.mark(to / PAGE_BYTES);
    }
  }

  /**
   * Like {@link receiveRange}, in one call of the page scanner (the native addon when it is loaded): the pages of
   * `region` that differ from the shadow at linear offset `offsetBytes` are copied into it and marked. `region`
   * may be a mapping of QEMU's shared RAM file, compared in place.
   */
  scanRange(offsetBytes: number, region: Uint8Array): void {
    if (offsetBytes % PAGE_BYTES !== 0 || region.byteLength % PAGE_BYTES !== 0 || offsetBytes + region.byteLength > this.memoryBytes) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', 'a memory range must be whole pages inside the guest memory', {
        details: { offsetBytes, bytes: region.byteLength, memoryBytes: this.memoryBytes },
      });
    }
    const pageCount = region.byteLength / PAGE_BYTES;
    if (this.scanOut === undefined || this.scanOut.changedPages.length < pageCount) {
      this.scanOut = { changedPages: new Uint32Array(pageCount), zeroFlags: new Uint8Array(pageCount) };
    }
    const shadow = this.image.subarray(offsetBytes, offsetBytes + region.byteLength);
    const count = scanChangedPages(region, PAGE_BYTES, shadow, this.scanOut, { update: true });
    const first = offsetBytes / PAGE_BYTES;
    for (let k = 0; k < count; k++) {
      const page = first + this.scanOut.changedPages[k]!;
      this.knownZero[page] = this.scanOut.zeroFlags[k]!;
      this.mark(page);
    }
  }

  private scanOut: { changedPages: Uint32Array; zeroFlags: Uint8Array } | undefined;

  /** Replaces the whole shadow with `memory` (a restored snapshot) and marks every page changed. */
  load(memory: Uint8Array): void {
    if (memory.byteLength !== this.memoryBytes) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', `memory of ${memory.byteLength} bytes does not fit the ${this.memoryBytes} of the RAM blocks`, {
        details: { bytes: memory.byteLength, memoryBytes: this.memoryBytes },
      });
    }
    this.image.set(memory);
    for (let page = 0, at = 0; page < this.pageCount; page++, at += PAGE_BYTES) this.knownZero[page] = ZERO_PAGE.compare(this.image, at, at + PAGE_BYTES) === 0 ? 1 : 0;
    this.crcTable.markRange(0, this.memoryBytes);
    this.markAllChanged();
  }

  /** Marks every page changed: the next {@link takePages} returns them all. */
  markAllChanged(): void {
    this.allChanged = true;
  }

  /** Pages marked changed since the last {@link takePages} (all of them after {@link markAllChanged}). */
  get changedPageCount(): number {
    return this.allChanged ? this.pageCount : this.changedList.length;
  }

  /**
   * Copies of the changed pages (every page when `all`), sorted by index, in one send buffer (from `allocate`, by
   * default a new one), and that buffer; all-zero pages are ZERO with empty data. Clears the change marks.
   */
  takePages(all: boolean, allocate?: SendBufferAllocator): { pages: Page[]; send: Uint8Array } {
    let indices: Uint32Array;
    if (all || this.allChanged) {
      indices = new Uint32Array(this.pageCount);
      for (let i = 0; i < indices.length; i++) indices[i] = i;
    } else {
      indices = Uint32Array.from(this.changedList).sort();
    }
    const image = this.image;
    const taken = copyPages(image, PAGE_BYTES, indices, (index) => ZERO_PAGE.compare(image, index * PAGE_BYTES, (index + 1) * PAGE_BYTES) === 0, allocate);
    if (this.changedList.length * 8 > this.pageCount) this.changed.fill(0);
    else for (const page of this.changedList) this.changed[page] = 0;
    this.changedList = [];
    this.allChanged = false;
    return taken;
  }

  /** The CRC32C of every page of the shadow, current (what the state digest hashes). */
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

}
