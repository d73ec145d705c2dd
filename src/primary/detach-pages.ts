/**
 * The last step of an in-place capture (CaptureOptions.inPlace), while the VM is still paused: the RAW pages that
 * remain after delta encoding are views of guest memory, and the guest is about to run again, so they are copied
 * into one send buffer. DELTA and ZERO pages own their bytes already and pass through unchanged.
 *
 * Why here and not in the adapter: a page that goes out as a small delta is then never copied whole; only the pages
 * that go out whole (new to the delta cache, or changed too much) are.
 */
import { gatherPages } from '../pages/gather.js';
import { PageKind } from '../wire/bodies/pages.js';
import type { Page } from '../wire/bodies/pages.js';
import type { SendBufferAllocator } from '../vm/copy-pages.js';

const EMPTY: Uint8Array = new Uint8Array(0);

/**
 * `pages` with every RAW page's data copied into one send buffer from `allocate` (in page order), and that buffer
 * (empty when no page is RAW). Pages that are whole-page, page-aligned views of one buffer (guest memory) are
 * gathered in one call; any other RAW page is copied on its own.
 */
export function detachPages(pages: readonly Page[], pageBytes: number, allocate: SendBufferAllocator): { pages: Page[]; send: Uint8Array } {
  let rawCount = 0;
  let rawBytes = 0;
  let source: ArrayBufferLike | undefined;
  let gatherable = true;
  for (const page of pages) {
    if (page.kind !== PageKind.RAW) continue;
    rawCount += 1;
    rawBytes += page.data.length;
    const view = page.data;
    source ??= view.buffer;
    if (view.buffer !== source || view.byteOffset % pageBytes !== 0 || view.length !== pageBytes) gatherable = false;
  }
  if (rawCount === 0) return { pages: [...pages], send: EMPTY };
  const send = allocate(rawBytes);
  if (gatherable) {
    const indices = new Uint32Array(rawCount);
    let r = 0;
    for (const page of pages) if (page.kind === PageKind.RAW) indices[r++] = page.data.byteOffset / pageBytes;
    const memory = new Uint8Array(source!, 0, Math.floor(source!.byteLength / pageBytes) * pageBytes);
    gatherPages(memory, pageBytes, indices, send, rawCount);
  } else {
    let at = 0;
    for (const page of pages) {
      if (page.kind !== PageKind.RAW) continue;
      send.set(page.data, at);
      at += page.data.length;
    }
  }
  const out: Page[] = new Array(pages.length);
  let at = 0;
  for (let i = 0; i < pages.length; i++) {
    const page = pages[i]!;
    if (page.kind !== PageKind.RAW) {
      out[i] = page;
      continue;
    }
    out[i] = { index: page.index, kind: PageKind.RAW, data: send.subarray(at, at + page.data.length) };
    at += page.data.length;
  }
  return { pages: out, send };
}
