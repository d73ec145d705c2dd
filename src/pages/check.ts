/**
 * Argument checks of the page functions. They run before either backend is called, so both backends see only
 * arguments they can handle, and a caller's mistake is KEMARI_INVALID_ARGUMENT naming the argument, not a TypeError
 * from inside the addon or, worse, a quietly wrong result (an output array overlapping the region it describes).
 */
import { invalid } from '../wire/validate.js';

/** Smallest page the scan accepts: 8 bytes, one fingerprint word. */
export const SCAN_PAGE_BYTES_MIN = 8;
/** Largest page the scan accepts: 16 MiB, the delta's limit too (huge pages are 2 MiB). */
export const SCAN_PAGE_BYTES_MAX = 1 << 24;

/** `value` is a Uint8Array (Buffers are). */
export function checkUint8Array(field: string, value: unknown): Uint8Array {
  if (!(value instanceof Uint8Array)) invalid(field, 'must be a Uint8Array', typeof value);
  return value;
}

/** A scan page size: a power of two in [SCAN_PAGE_BYTES_MIN, SCAN_PAGE_BYTES_MAX]. */
export function checkScanPageBytes(field: string, value: unknown): number {
  if (
    typeof value !== 'number' ||
    !Number.isInteger(value) ||
    value < SCAN_PAGE_BYTES_MIN ||
    value > SCAN_PAGE_BYTES_MAX ||
    (value & (value - 1)) !== 0
  ) {
    invalid(field, `must be a power of two in [${SCAN_PAGE_BYTES_MIN}, ${SCAN_PAGE_BYTES_MAX}]`, value);
  }
  return value;
}

/** An unsigned 64-bit bigint. */
export function checkU64(field: string, value: unknown): bigint {
  if (typeof value !== 'bigint' || value < 0n || value >= 1n << 64n) invalid(field, 'must be a bigint in [0, 2^64)', value);
  return value;
}

/** True when the two views share at least one byte of memory. */
export function overlaps(a: ArrayBufferView, b: ArrayBufferView): boolean {
  if (a.buffer !== b.buffer || a.byteLength === 0 || b.byteLength === 0) return false;
  return a.byteOffset < b.byteOffset + b.byteLength && b.byteOffset < a.byteOffset + a.byteLength;
}

/** Refuses `a` and `b` sharing memory. */
export function checkDisjoint(fieldA: string, a: ArrayBufferView, fieldB: string, b: ArrayBufferView): void {
  if (overlaps(a, b)) invalid(fieldA, `must not share memory with ${fieldB}`);
}
