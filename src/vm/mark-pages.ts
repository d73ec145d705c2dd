/**
 * Marking pages changed again (VmAdapter.markDirty), the step every adapter with a change bitmap shares: a page
 * index list is checked whole before any page is marked, so a bad list changes nothing.
 */
import { invalid } from '../wire/validate.js';

/**
 * Sets `marks[page]` and appends `page` to `list` for every page of `pageIndices` not marked yet. A non-Uint32Array,
 * or an index at or beyond `marks.length`, is KEMARI_INVALID_ARGUMENT, and then no page is marked.
 */
export function markPages(marks: Uint8Array, list: number[], pageIndices: Uint32Array): void {
  if (!(pageIndices instanceof Uint32Array)) invalid('pageIndices', 'must be a Uint32Array', pageIndices);
  for (const index of pageIndices) if (index >= marks.length) invalid('pageIndices', `page ${index} is beyond the last page (${marks.length - 1})`, index);
  for (const page of pageIndices) {
    if (marks[page] === 0) {
      marks[page] = 1;
      list.push(page);
    }
  }
}
