/**
 * The primary's memory of what the secondary holds for recently sent pages, so a page that changed a little goes
 * out as a delta against it (the idea of QEMU's XBZRLE; the delta form is native/README.md's) instead of whole.
 *
 * Why it is correct: the secondary applies epochs in order, so when epoch N arrives its copy of page p is p as last
 * sent, in the newest epoch before N that carried p, which is what this cache holds (updated as each epoch is
 * encoded, before the next). Anything that breaks that chain (a lost connection, a refused or never-sent epoch, a
 * full sync) must {@link clear} the cache: the next epochs then go out whole until it fills again.
 *
 * Bounded: at most `cacheBytesMax` of page copies, least recently sent evicted first.
 */
import { KemariError } from '../errors.js';
import { encodeDelta } from '../pages/delta.js';
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
}

export class DeltaCache {
  /** Page index to its last sent content; Map order is the eviction order (oldest first). */
  private readonly entries = new Map<number, Uint8Array>();
  private bytesNow = 0;

  constructor(
    readonly pageBytes: number,
    readonly cacheBytesMax: number,
  ) {
    if (!Number.isSafeInteger(cacheBytesMax) || cacheBytesMax < 0) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', 'delta cacheBytes must be a non-negative integer', { details: { cacheBytes: cacheBytesMax } });
    }
  }

  /** Bytes of page copies held. */
  get bytes(): number {
    return this.bytesNow;
  }

  /** Forgets everything: the secondary's copies can no longer be assumed. */
  clear(): void {
    this.entries.clear();
    this.bytesNow = 0;
  }

  /**
   * Encodes the pages of one incremental epoch (sorted, as captured) and remembers each as sent. A delta is used
   * only when it is at most half a page. The returned DELTA pages are views of one new buffer, never reused.
   */
  encode(pages: readonly Page[]): DeltaEncoding {
    const pageBytes = this.pageBytes;
    const budgetBytes = pageBytes >> 1;
    let rawWithBase = 0;
    for (const page of pages) if (page.kind === PageKind.RAW && this.entries.has(page.index)) rawWithBase += 1;
    const out = new Uint8Array(rawWithBase * budgetBytes);
    let at = 0;
    const sent: Page[] = [];
    let deltaPages = 0;
    let unchangedPages = 0;
    let savedBytes = 0;
    for (const page of pages) {
      if (page.kind === PageKind.ZERO) {
        this.forget(page.index);
        sent.push(page);
        continue;
      }
      if (page.kind !== PageKind.RAW) {
        this.forget(page.index);
        sent.push(page);
        continue;
      }
      const base = this.entries.get(page.index);
      if (base !== undefined) {
        const n = encodeDelta(base, page.data, out.subarray(at, at + budgetBytes), budgetBytes);
        if (n === 0) {
          unchangedPages += 1;
          savedBytes += pageBytes;
          this.touch(page.index, base);
          continue;
        }
        if (n > 0) {
          sent.push({ index: page.index, kind: PageKind.DELTA, data: out.subarray(at, at + n) });
          at += n;
          deltaPages += 1;
          savedBytes += pageBytes - n;
          base.set(page.data);
          this.touch(page.index, base);
          continue;
        }
        base.set(page.data);
        this.touch(page.index, base);
        sent.push(page);
        continue;
      }
      this.remember(page.index, page.data);
      sent.push(page);
    }
    return { pages: sent, deltaPages, unchangedPages, savedBytes };
  }

  private touch(index: number, base: Uint8Array): void {
    this.entries.delete(index);
    this.entries.set(index, base);
  }

  private forget(index: number): void {
    if (this.entries.delete(index)) this.bytesNow -= this.pageBytes;
  }

  private remember(index: number, data: Uint8Array): void {
    if (this.pageBytes > this.cacheBytesMax) return;
    while (this.bytesNow + this.pageBytes > this.cacheBytesMax) {
      const oldest = this.entries.keys().next();
      if (oldest.done === true) break;
      this.forget(oldest.value);
    }
    this.entries.set(index, Uint8Array.from(data));
    this.bytesNow += this.pageBytes;
  }
}
