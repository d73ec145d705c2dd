/**
 * Copies the pages a capture takes into one new send buffer, the step every VM adapter shares: the guest resumes
 * while the epoch streams, so its pages must be copied during the pause. All-zero pages become ZERO pages (no
 * data); the others are gathered into the send buffer in one call (gatherPages); the RAW pages are views of it.
 */
import { gatherPages } from '../pages/gather.js';
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
  const rawIndices = new Uint32Array(count);
  let rawCount = 0;
  for (let i = 0; i < count; i++) if (!isZero(indices[i]!)) rawIndices[rawCount++] = indices[i]!;
  // Pass 2: one gathering copy (native: run by run, prefetching the next page); every byte of `send` is written.
  const send = rawCount === 0 ? EMPTY : allocate(rawCount * pageBytes);
  if (rawCount > 0) gatherPages(memory, pageBytes, rawIndices, send, rawCount);
  const pages: Page[] = new Array(count);
  for (let i = 0, r = 0; i < count; i++) {
    const index = indices[i]!;
    if (r < rawCount && rawIndices[r] === index) {
      pages[i] = { index, kind: PageKind.RAW, data: send.subarray(r * pageBytes, (r + 1) * pageBytes) };
      r += 1;
    } else {
      pages[i] = { index, kind: PageKind.ZERO, data: EMPTY };
    }
  }
  return { pages, send };
}
