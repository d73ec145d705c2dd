/**
 * PAGES carries a batch of guest pages: many pages a frame, never one frame a page.
 *
 * Body: u32 count, u32 pageBytes, then `count` 16-byte descriptors, then the page data in descriptor order.
 *   descriptor: u64 page index, u8 kind ({@link PageKind}), 3 reserved bytes, u32 data bytes.
 *   RAW   data is the page, exactly pageBytes.
 *   ZERO  no data: the page is all zero bytes.
 *   DELTA data is an encoded difference against the receiver's committed copy of the page, 1..pageBytes-1 bytes
 *         (a delta as large as the page is sent RAW instead). The header flag PAGES_DELTA is set exactly when a
 *         frame holds a DELTA page, so a receiver that did not negotiate deltas refuses the frame up front.
 * Page indices are strictly increasing inside a frame, so a page cannot appear twice in one batch.
 *
 * Zero copy: the encoder emits the 8-byte prefix plus descriptor table as one new buffer and then the callers' page
 * views themselves; views that are adjacent in the same ArrayBuffer (consecutive guest pages) are merged into one
 * view. No page byte is copied. The views must stay unchanged until the frame is written: the body CRC is computed
 * at encode time, so a page modified in between is caught by the receiver as KEMARI_BODY_CHECKSUM, never applied.
 * The decoder's page data are views into the frame body.
 */
import { BodyReader, BodyWriter } from '../bytes.js';
import { FrameFlag } from '../header.js';
import { checkBytes, checkInteger, checkU53, invalid } from '../validate.js';

/** How one page is carried. */
export const PageKind = {
  RAW: 0,
  ZERO: 1,
  DELTA: 2,
} as const;
/** A page kind number. */
export type PageKind = (typeof PageKind)[keyof typeof PageKind];

/** One page of a batch. `data` is empty for ZERO pages. */
export interface Page {
  index: number;
  kind: PageKind;
  data: Uint8Array;
}

/** PAGES body. */
export interface PageBatch {
  pageBytes: number;
  pages: Page[];
}

/** Smallest and largest page size the wire accepts (powers of two). */
export const PAGE_BYTES_MIN = 512;
export const PAGE_BYTES_MAX = 1 << 20;
const PREFIX_BYTES = 8;
const DESCRIPTOR_BYTES = 16;
const EMPTY: Uint8Array = new Uint8Array(0);

function isPowerOfTwo(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}

/** Checks a page size: a power of two in [PAGE_BYTES_MIN, PAGE_BYTES_MAX]. */
export function isValidPageBytes(pageBytes: number): boolean {
  return Number.isInteger(pageBytes) && pageBytes >= PAGE_BYTES_MIN && pageBytes <= PAGE_BYTES_MAX && isPowerOfTwo(pageBytes);
}

/** Encodes a batch; returns the body parts and the header flags it needs. */
export function encodePages(batch: PageBatch): { parts: Uint8Array[]; flags: number } {
  const { pageBytes, pages } = batch;
  if (!isValidPageBytes(pageBytes)) invalid('pages.pageBytes', `must be a power of two in [${PAGE_BYTES_MIN}, ${PAGE_BYTES_MAX}]`, pageBytes);
  if (!Array.isArray(pages) || pages.length === 0) invalid('pages.pages', 'must be a non-empty array');
  const table = new BodyWriter(PREFIX_BYTES + DESCRIPTOR_BYTES * pages.length);
  table.u32(pages.length).u32(pageBytes);
  const parts: Uint8Array[] = [table.bytes];
  let flags = 0;
  let previousIndex = -1;
  // The current run of views that continue each other: its first view, and its length so far (one view is made
  // per run at its end, not one per page).
  let run: Uint8Array | undefined;
  let runBytes = 0;
  const endRun = (): void => {
    if (run === undefined) return;
    parts.push(runBytes === run.byteLength ? run : new Uint8Array(run.buffer, run.byteOffset, runBytes));
  };
  for (let i = 0; i < pages.length; i++) {
    const page = pages[i]!;
    // The field names are built only for an error: a template string a page would be garbage every epoch.
    const index = page.index;
    if (!Number.isSafeInteger(index) || index < 0) checkU53(`pages[${i}].index`, index);
    if (index <= previousIndex) invalid(`pages[${i}].index`, 'page indices must be strictly increasing', index);
    previousIndex = index;
    const data = page.data instanceof Uint8Array ? page.data : checkBytes(`pages[${i}].data`, page.data);
    switch (page.kind) {
      case PageKind.RAW:
        if (data.byteLength !== pageBytes) invalid(`pages[${i}].data`, `RAW page must be ${pageBytes} bytes`, data.byteLength);
        break;
      case PageKind.ZERO:
        if (data.byteLength !== 0) invalid(`pages[${i}].data`, 'ZERO page carries no data', data.byteLength);
        break;
      case PageKind.DELTA:
        if (data.byteLength < 1 || data.byteLength > pageBytes - 1) checkInteger(`pages[${i}].data.byteLength`, data.byteLength, 1, pageBytes - 1);
        flags |= FrameFlag.PAGES_DELTA;
        break;
      default:
        invalid(`pages[${i}].kind`, 'unknown page kind', page.kind);
    }
    table.u64(index).u8(page.kind).zeros(3).u32(data.byteLength);
    if (data.byteLength === 0) continue;
    // Merge views that continue each other in the same memory: one part per run of consecutive pages.
    if (run !== undefined && run.buffer === data.buffer && run.byteOffset + runBytes === data.byteOffset) {
      runBytes += data.byteLength;
    } else {
      endRun();
      run = data;
      runBytes = data.byteLength;
    }
  }
  endRun();
  return { parts, flags };
}

/** Decodes a batch; page data are views into `body`. */
export function decodePages(body: Uint8Array, flags: number): PageBatch {
  const r = new BodyReader(body, 'PAGES');
  const count = r.u32();
  const pageBytes = r.u32();
  if (count === 0) r.fail('empty batch');
  if (!isValidPageBytes(pageBytes)) r.fail(`invalid pageBytes ${pageBytes}`);
  if (count * DESCRIPTOR_BYTES > r.remaining) r.fail(`count ${count} does not fit the body`);
  const table = new BodyReader(r.bytes(count * DESCRIPTOR_BYTES), 'PAGES descriptor');
  const pages: Page[] = new Array(count);
  let previousIndex = -1;
  let sawDelta = false;
  for (let i = 0; i < count; i++) {
    const index = table.u64();
    if (index <= previousIndex) r.fail('page indices not strictly increasing', { index, previousIndex });
    previousIndex = index;
    const kind = table.u8();
    table.reserved(3);
    const dataBytes = table.u32();
    let data: Uint8Array = EMPTY;
    switch (kind) {
      case PageKind.RAW:
        if (dataBytes !== pageBytes) r.fail(`RAW page ${index} has ${dataBytes} bytes`);
        data = r.bytes(dataBytes);
        break;
      case PageKind.ZERO:
        if (dataBytes !== 0) r.fail(`ZERO page ${index} has ${dataBytes} bytes`);
        break;
      case PageKind.DELTA:
        if (dataBytes === 0 || dataBytes >= pageBytes) r.fail(`DELTA page ${index} has ${dataBytes} bytes`);
        sawDelta = true;
        data = r.bytes(dataBytes);
        break;
      default:
        r.fail(`unknown page kind ${kind}`);
    }
    pages[i] = { index, kind: kind as PageKind, data };
  }
  r.end();
  if (sawDelta !== ((flags & FrameFlag.PAGES_DELTA) !== 0)) r.fail('PAGES_DELTA flag disagrees with the pages');
  return { pageBytes, pages };
}
