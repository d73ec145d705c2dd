/**
 * The msgpack dialect of structured bodies (HELLO, DEVICE): plain msgpack maps and arrays, no msgpackr record
 * extension, so every body stands alone (no structure state shared across frames or connections) and any msgpack
 * implementation can read it. Decoding errors become KEMARI_BAD_BODY.
 */
import { Packr } from 'msgpackr';
import { KemariError } from '../errors.js';

const packr = new Packr({ useRecords: false, mapsAsObjects: true, moreTypes: false, bundleStrings: false });

/** msgpack bytes of `value`. */
export function pack(what: string, value: unknown): Uint8Array {
  try {
    return packr.pack(value);
  } catch (cause) {
    throw new KemariError('KEMARI_INVALID_ARGUMENT', `${what}: value cannot be msgpack-encoded`, { cause });
  }
}

/** The value encoded in `body`, which must be exactly one msgpack value. */
export function unpack(what: string, body: Uint8Array): unknown {
  try {
    const values = packr.unpackMultiple(body as Buffer);
    if (values === undefined || values.length !== 1) {
      throw new Error(`expected one msgpack value, found ${values?.length ?? 0}`);
    }
    return values[0];
  } catch (cause) {
    throw new KemariError('KEMARI_BAD_BODY', `${what}: invalid msgpack body`, { cause });
  }
}

/** A plain object (a msgpack map with string keys). */
export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Uint8Array);
}
