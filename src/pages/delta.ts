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

/** Options of {@link encodeDeltaBatch}. */
export interface EncodeDeltaBatchOptions {
  /** How many pages to encode: the first `count` entries of the index arrays. Default: pageIndices.length. */
  count?: number;
  /** Every kept delta is smaller than this, in [1, pageBytes]; a page that would need more gets -1. Default: pageBytes. */
  budgetBytes?: number;
  /** Copy every page whose length is not 0 over its base, after encoding it. Default: false. */
  updateBases?: boolean;
}

function checkIndexArray<T extends Uint32Array | Int32Array>(field: string, value: unknown, type: new (n: number) => T, count: number): T {
  if (!(value instanceof type) || value.length < count) invalid(field, `must be a ${type.name} with at least count (${count}) entries`, (value as { length?: unknown } | null)?.length);
  return value;
}

/**
 * Encodes many pages as XOR deltas in one call: page k is `pages[pageIndices[k] * pageBytes, +pageBytes)`, encoded
 * against `bases[baseIndices[k] * pageBytes, +pageBytes)` (the page as the secondary has it) exactly as
 * {@link encodeDelta} would with the budget, and the deltas are packed one after another into `out` from offset 0.
 * `lengths[k]` receives the delta length (> 0, at the running cursor), 0 (the page equals its base, nothing written)
 * or -1 (the delta would need budgetBytes or more: send the page raw; nothing kept). Returns the bytes written to
 * `out`; delta k starts at the sum of the positive lengths before it. Bytes of `out` after that may be garbage.
 *
 * Why a batch: one call per epoch instead of one per page. With the addon the per-page binding call and argument
 * checks were a large share of the delta time; here everything is checked once, then one native loop runs.
 * `updateBases` copies each page whose length is not 0 (changed: sent as a delta or raw) over its base in the same
 * pass, while the page is still in cache, so the primary's copy of what the secondary holds advances without a second
 * walk over the pages. Pages are processed in order, so a later k sharing a base slot sees the updated base.
 *
 * Checks (KEMARI_INVALID_ARGUMENT): pageBytes in [1, DELTA_PAGE_BYTES_MAX]; budgetBytes in [1, pageBytes];
 * pageIndices and baseIndices Uint32Arrays and lengths an Int32Array, each with at least `count` entries; every index
 * names a whole page of its array; `out` holds count * (budgetBytes - 1) bytes (the worst case, so the call never
 * runs out of room midway); `out` and `lengths` share no memory with any other argument, nor `bases` with pages
 * and the index arrays when updateBases (written memory must not feed what is read later).
 */
export function encodeDeltaBatch(
  pages: Uint8Array,
  pageIndices: Uint32Array,
  bases: Uint8Array,
  baseIndices: Uint32Array,
  pageBytes: number,
  out: Uint8Array,
  lengths: Int32Array,
  options: EncodeDeltaBatchOptions = {},
): number {
  checkUint8Array('pages', pages);
  checkUint8Array('bases', bases);
  checkUint8Array('out', out);
  checkInteger('pageBytes', pageBytes, 1, DELTA_PAGE_BYTES_MAX);
  if (typeof options !== 'object' || options === null) invalid('options', 'must be an object', options);
  if (!(pageIndices instanceof Uint32Array)) invalid('pageIndices', 'must be a Uint32Array', typeof pageIndices);
  const count = checkInteger('options.count', options.count ?? pageIndices.length, 0, 0xffff_ffff);
  checkIndexArray('pageIndices', pageIndices, Uint32Array, count);
  checkIndexArray('baseIndices', baseIndices, Uint32Array, count);
  checkIndexArray('lengths', lengths, Int32Array, count);
  const budget = checkInteger('options.budgetBytes', options.budgetBytes ?? pageBytes, 1, pageBytes);
  const updateBases = options.updateBases ?? false;
  if (typeof updateBases !== 'boolean') invalid('options.updateBases', 'must be a boolean', updateBases);
  if (out.length < count * (budget - 1)) invalid('out', `must hold count * (budgetBytes - 1) = ${count * (budget - 1)} bytes`, out.length);
  const outputs: Array<[string, ArrayBufferView]> = [['out', out], ['lengths', lengths]];
  if (updateBases) outputs.push(['bases', bases]);
  const all: Array<[string, ArrayBufferView]> = [['pages', pages], ['pageIndices', pageIndices], ['bases', bases], ['baseIndices', baseIndices], ['out', out], ['lengths', lengths]];
  for (const [outputName, output] of outputs) {
    for (const [name, view] of all) if (name !== outputName) checkDisjoint(outputName, output, name, view);
  }
  const pageSlots = Math.floor(pages.length / pageBytes);
  const baseSlots = Math.floor(bases.length / pageBytes);
  for (let k = 0; k < count; k++) {
    if (pageIndices[k]! >= pageSlots) invalid(`pageIndices[${k}]`, `must be < pages.length / pageBytes (${pageSlots})`, pageIndices[k]);
    if (baseIndices[k]! >= baseSlots) invalid(`baseIndices[${k}]`, `must be < bases.length / pageBytes (${baseSlots})`, baseIndices[k]);
  }
  return activeBackend.encodeDeltaBatch(pages, pageIndices, bases, baseIndices, count, pageBytes, budget, out, lengths, updateBases);
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
