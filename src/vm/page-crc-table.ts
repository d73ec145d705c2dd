/**
 * Per-page CRC32C of a memory region, kept current lazily: writers mark pages stale, `refresh` recomputes only
 * those. This is what makes the state digest cheap: hashing 4 bytes a page instead of the whole memory, and
 * recomputing CRCs only for pages changed since the last digest.
 */
import { crc32c } from '../wire/checksum.js';

/**
 * Pages a table reads from somewhere other than one contiguous Uint8Array (QemuVm's guest memory in fingerprints
 * mode: ROM pages in a small shadow, RAM pages in QEMU's shared file).
 */
export interface PageSource {
  /** Pages in the region. */
  readonly pageCount: number;
  /** The bytes of page `index` (pageBytes long): read at once by the table, so the view may be reused after. */
  page(index: number): Uint8Array;
}

export class PageCrcTable {
  /** CRC32C of each page; valid for pages not marked stale. */
  readonly crcs: Uint32Array;
  private readonly stale: Uint8Array;
  private staleCount: number;
  private readonly source: PageSource | undefined;

  /** A table over `memory` (its pages, the last one possibly short) or over the pages of a {@link PageSource}. */
  constructor(
    private readonly memory: Uint8Array | PageSource,
    readonly pageBytes: number,
  ) {
    this.source = memory instanceof Uint8Array ? undefined : memory;
    const pages = memory instanceof Uint8Array ? Math.ceil(memory.byteLength / pageBytes) : memory.pageCount;
    this.crcs = new Uint32Array(pages);
    this.stale = new Uint8Array(pages).fill(1);
    this.staleCount = pages;
  }

  /** Marks the pages overlapping [offset, offset + length) as changed. */
  markRange(offset: number, length: number): void {
    if (length <= 0) return;
    const first = Math.floor(offset / this.pageBytes);
    const last = Math.floor((offset + length - 1) / this.pageBytes);
    for (let page = first; page <= last; page++) this.markPage(page);
  }

  /** Marks one page as changed. */
  markPage(page: number): void {
    if (this.stale[page] === 0) {
      this.stale[page] = 1;
      this.staleCount += 1;
    }
  }

  /** Recomputes the CRCs of stale pages; returns the table. */
  refresh(): Uint32Array {
    if (this.staleCount === 0) return this.crcs;
    const { pageBytes, source } = this;
    const memory = this.memory as Uint8Array;
    for (let page = 0; page < this.stale.length; page++) {
      if (this.stale[page] === 0) continue;
      const start = page * pageBytes;
      this.crcs[page] = crc32c(source !== undefined ? source.page(page) : memory.subarray(start, Math.min(start + pageBytes, memory.byteLength)));
      this.stale[page] = 0;
    }
    this.staleCount = 0;
    return this.crcs;
  }
}
