/**
 * Turns a whole RAM block image into page records for `writeMigrationStream`: all-zero pages become 9-byte
 * fill records (as QEMU sends them), the rest data pages. Why: a full restore must send every page, and a 32 MiB
 * guest is mostly zero pages, so this keeps the restore stream near the size QEMU itself would send.
 */
import { KemariError } from '../../errors.js';
import { PAGE_BYTES } from './format.js';
import type { RamPage } from './records.js';

const ZERO_PAGE = Buffer.alloc(PAGE_BYTES);

/**
 * Yields one record per page of `image` (whose length must be a multiple of the page size): `{ fill: 0 }` for zero
 * pages, `{ data }` views of `image` for the others (so `image` must not change until they are written).
 */
export function* imagePages(block: string, image: Uint8Array): Generator<RamPage, void, undefined> {
  if (image.byteLength % PAGE_BYTES !== 0) {
    throw new KemariError('KEMARI_INVALID_ARGUMENT', `image of RAM block ${JSON.stringify(block)} is not a whole number of pages`, {
      details: { block, bytes: image.byteLength },
    });
  }
  for (let offset = 0; offset < image.byteLength; offset += PAGE_BYTES) {
    const data = image.subarray(offset, offset + PAGE_BYTES);
    if (ZERO_PAGE.equals(data)) yield { block, offset, fill: 0 };
    else yield { block, offset, data };
  }
}

/** True if every byte of `page` is zero (native compare). */
export function isZeroPage(page: Uint8Array): boolean {
  return page.byteLength === PAGE_BYTES && ZERO_PAGE.equals(page);
}
