/**
 * Per-page CRC32C of a memory region, kept current lazily: writers mark pages stale, `refresh` recomputes only
 * those. This is what makes the state digest cheap: hashing 4 bytes a page instead of the whole memory, and
 * recomputing CRCs only for pages changed since the last digest.
 */
import { crc32c } from '../wire/checksum.js';

export class PageCrcTable {
  /** CRC32C of each page; valid for pages not marked stale. */
  readonly crcs: Uint32Array;
  private readonly stale: Uint8Array;
  private staleCount: number;

  constructor(
    private readonly memory: Uint8Array,
    readonly pageBytes: number,
  ) {
    const pages = Math.ceil(memory.byteLength / pageBytes);
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
    const { memory, pageBytes } = this;
    for (let page = 0; page < this.stale.length; page++) {
      if (this.stale[page] === 0) continue;
      const start = page * pageBytes;
      this.crcs[page] = crc32c(memory.subarray(start, Math.min(start + pageBytes, memory.byteLength)));
      this.stale[page] = 0;
    }
    this.staleCount = 0;
    return this.crcs;
  }
}
