/**
 * XOR-delta of a changed page against its previous version, with zero-run compression: a page where a guest
 * changed a few words travels as a few dozen bytes instead of 4 KiB. The wire form is in delta-format.ts.
 *
 * The sender encodes against the page as the secondary has it (the shadow copy of the committed epoch), within a
 * budget: when the delta would not be smaller than the budget (default: the page), encodeDelta returns -1 and the
 * page goes RAW. The secondary validates deltas when they arrive (validateDelta, before the transaction is
 * committed) and applies them at commit (decodeDelta), so a malformed delta is refused as KEMARI_BAD_BODY and the
 * replica stays at its last committed epoch: decodeDelta validates the whole delta before writing a byte.
 */
import { KemariError } from '../errors.js';
import { checkInteger, invalid } from '../wire/validate.js';
import { checkDisjoint, checkUint8Array } from './check.js';
import { DELTA_PAGE_BYTES_MAX, deltaError } from './delta-format.js';
import { activeBackend } from './implementation.js';

function checkPage(field: string, page: unknown): Uint8Array {
  const bytes = checkUint8Array(field, page);
  if (bytes.length < 1 || bytes.length > DELTA_PAGE_BYTES_MAX) invalid(field, `length must be in [1, ${DELTA_PAGE_BYTES_MAX}]`, bytes.length);
  return bytes;
}

/**
 * Encodes `newPage` as a delta against `oldPage` into `out`; returns its length, which is smaller than
 * `budgetBytes`, or -1 when it would not be (send the raw page then). Writes at most budgetBytes - 1 bytes of `out`;
 * on -1 those bytes are garbage. `budgetBytes` defaults to the page size, capped at out.length + 1.
 */
export function encodeDelta(oldPage: Uint8Array, newPage: Uint8Array, out: Uint8Array, budgetBytes?: number): number {
  checkPage('oldPage', oldPage);
  checkPage('newPage', newPage);
  checkUint8Array('out', out);
  if (newPage.length !== oldPage.length) invalid('newPage', `length must equal oldPage's (${oldPage.length})`, newPage.length);
  checkDisjoint('out', out, 'oldPage', oldPage);
  checkDisjoint('out', out, 'newPage', newPage);
  const budget = budgetBytes ?? Math.min(oldPage.length, out.length + 1);
  checkInteger('budgetBytes', budget, 0, out.length + 1);
  return activeBackend.encodeDelta(oldPage, newPage, out, budget);
}

/**
 * Applies `delta` to `oldPage`, writing the new page into `out` (default: `oldPage` itself, in place). Throws
 * KEMARI_BAD_BODY, with `details.reason` and `details.offsetBytes`, for a malformed delta, and then `out` is
 * untouched. `out` must be as long as `oldPage` and must not share memory with `delta`.
 */
export function decodeDelta(oldPage: Uint8Array, delta: Uint8Array, out: Uint8Array = oldPage): void {
  checkPage('oldPage', oldPage);
  checkUint8Array('delta', delta);
  checkUint8Array('out', out);
  if (out.length !== oldPage.length) invalid('out', `length must equal oldPage's (${oldPage.length})`, out.length);
  checkDisjoint('out', out, 'delta', delta);
  const fault = activeBackend.decodeDelta(oldPage, delta, out);
  if (fault !== 0) throw deltaError(fault, delta.length, oldPage.length);
}

/**
 * Checks that `delta` is well formed for a page of `pageBytes`, without applying it: returns undefined, or the
 * KEMARI_BAD_BODY error decodeDelta would throw (as a value, for decoders that return errors rather than throw).
 */
export function validateDelta(delta: Uint8Array, pageBytes: number): KemariError | undefined {
  checkUint8Array('delta', delta);
  checkInteger('pageBytes', pageBytes, 1, DELTA_PAGE_BYTES_MAX);
  const fault = activeBackend.validateDelta(delta, pageBytes);
  return fault === 0 ? undefined : deltaError(fault, delta.length, pageBytes);
}
