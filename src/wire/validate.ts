/**
 * Argument checks for the encoders. A frame that would decode into something else than what was asked for (a txn
 * past 2^53, a page index that wraps, a 300-byte channel name in a u16 field that should say 255) is refused at the
 * sender with KEMARI_INVALID_ARGUMENT instead of being put on the wire.
 */
import { KemariError } from '../errors.js';

/** Throws KEMARI_INVALID_ARGUMENT naming the field. */
export function invalid(field: string, message: string, value?: unknown): never {
  throw new KemariError('KEMARI_INVALID_ARGUMENT', `${field}: ${message}`, {
    details: { field, value: typeof value === 'bigint' ? value.toString() : value },
  });
}

/** `value` is an integer in [min, max]. */
export function checkInteger(field: string, value: unknown, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    invalid(field, `must be an integer in [${min}, ${max}]`, value);
  }
  return value;
}

/** Unsigned 16-bit. */
export const checkU16 = (field: string, value: unknown): number => checkInteger(field, value, 0, 0xffff);
/** Unsigned 32-bit. */
export const checkU32 = (field: string, value: unknown): number => checkInteger(field, value, 0, 0xffff_ffff);
/** Unsigned 64-bit limited to JavaScript's safe integers. */
export const checkU53 = (field: string, value: unknown): number =>
  checkInteger(field, value, 0, Number.MAX_SAFE_INTEGER);

/** A Uint8Array (Buffers are Uint8Arrays too). */
export function checkBytes(field: string, value: unknown): Uint8Array {
  if (!(value instanceof Uint8Array)) invalid(field, 'must be a Uint8Array', typeof value);
  return value;
}
