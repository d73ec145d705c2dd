/**
 * Copies the pages a capture takes into one new send buffer, the step every VM adapter shares: the guest resumes
 * while the epoch streams, so its pages must be copied during the pause. All-zero pages become ZERO pages (no
 * data); runs of consecutive pages are copied with one `set` each; the RAW pages are views of the send buffer.
 */
import { PageKind } from '../wire/bodies/pages.js';
import type { Page } from '../wire/bodies/pages.js';

const EMPTY: Uint8Array = new Uint8Array(0);

/** Makes the send buffer of `bytes` (every byte of it is overwritten): a reused one (CaptureBuffers) or a new one. */
export type SendBufferAllocator = (bytes: number) => Uint8Array;

const newSendBuffer: SendBufferAllocator = (bytes) => new Uint8Array(Buffer.allocUnsafeSlow(bytes).buffer, 0, bytes);

/**
 * The pages at `indices` (sorted) of `memory`, copied into one send buffer from `allocate`; `isZero(index)` says
 * which are all zero (the caller knows the cheapest way to tell). Returns the pages and the send buffer (empty when
 * every page is zero).
 */
export function copyPages(
  memory: Uint8Array,
  pageBytes: number,
  indices: Uint32Array,
  isZero: (index: number) => boolean,
  allocate: SendBufferAllocator = newSendBuffer,
): { pages: Page[]; send: Uint8Array } {
  const count = indices.length;
  // Pass 1: which pages are zero, so the send buffer holds exactly the RAW pages.
  const raw = new Uint8Array(count);
  let rawCount = 0;
  for (let i = 0; i < count; i++) {
    if (!isZero(indices[i]!)) {
      raw[i] = 1;
      rawCount += 1;
    }
  }
  // No zero-fill: every byte of it is overwritten below.
  const send = rawCount === 0 ? EMPTY : allocate(rawCount * pageBytes);
  const pages: Page[] = new Array(count);
  let to = 0;
  for (let i = 0; i < count; ) {
    const index = indices[i]!;
    if (raw[i] === 0) {
      pages[i] = { index, kind: PageKind.ZERO, data: EMPTY };
      i += 1;
      continue;
    }
    let j = i + 1;
    while (j < count && raw[j] === 1 && indices[j] === index + (j - i)) j += 1;
    const start = index * pageBytes;
    const runBytes = (j - i) * pageBytes;
    send.set(memory.subarray(start, start + runBytes), to);
    for (let k = i; k < j; k++, to += pageBytes) pages[k] = { index: indices[k]!, kind: PageKind.RAW, data: send.subarray(to, to + pageBytes) };
    i = j;
  }
  return { pages, send };
}
