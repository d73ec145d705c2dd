/**
 * The variable-length state digest field shared by COMMIT and ACK: u16 length (0..DIGEST_BYTES_MAX) then the bytes.
 * Empty when end-to-end verification is off.
 */
import type { BodyReader, BodyWriter } from '../bytes.js';
import { checkBytes, invalid } from '../validate.js';

/** Largest state digest carried (a SHA-512 fits). */
export const DIGEST_BYTES_MAX = 64;

export function checkDigest(field: string, digest: unknown): Uint8Array {
  const bytes = checkBytes(field, digest);
  if (bytes.byteLength > DIGEST_BYTES_MAX) invalid(field, `at most ${DIGEST_BYTES_MAX} bytes`, bytes.byteLength);
  return bytes;
}

export function readDigest(r: BodyReader): Uint8Array {
  const length = r.u16();
  if (length > DIGEST_BYTES_MAX) r.fail(`digest of ${length} bytes exceeds ${DIGEST_BYTES_MAX}`);
  return r.bytes(length);
}

export function writeDigest(w: BodyWriter, digest: Uint8Array): BodyWriter {
  return w.u16(digest.byteLength).raw(digest);
}
