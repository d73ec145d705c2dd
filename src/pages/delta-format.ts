/**
 * The XOR-delta wire form (the idea of QEMU's XBZRLE, the format kemari's own), its limits, and the errors of a
 * malformed delta. native/page_delta.h and native/README.md describe the same form; delta-js.ts and the addon
 * implement it.
 *
 * ```
 * delta   := run*
 * run     := skip:varint  length:varint  xor[length]
 * varint  := unsigned LEB128, 7 bits a byte, least significant group first, high bit set on all bytes but the
 *            last; at most 4 bytes and minimal (a last byte of 0 only when it is the only byte)
 * ```
 *
 * Decoding starts at page offset 0; each run skips `skip` unchanged bytes, then XORs its `length` bytes onto the
 * page. Bytes after the last run are unchanged, so an empty delta means "no change". A delta is malformed, and is
 * rejected before anything is written, when a varint is cut off, too long or not minimal, a run's length is 0, a
 * skip or a length runs past the page, or the xor bytes are cut off.
 *
 * Encoding is deterministic (both backends produce the same bytes): a literal starts at the first differing byte
 * and extends over differing bytes and over gaps of fewer than {@link DELTA_GAP_BYTES_MIN} equal bytes followed by a
 * differing byte. Why 3: a new run costs at least two header bytes, so a gap of 3 is the shortest worth a split.
 */
import { KemariError } from '../errors.js';

/** Equal bytes that end a literal (shorter gaps are carried inside it, XORed to zero). */
export const DELTA_GAP_BYTES_MIN = 3;
/** Longest varint: 4 bytes carry 28 bits, more than any length of a page up to DELTA_PAGE_BYTES_MAX. */
export const DELTA_VARINT_BYTES_MAX = 4;
/** Largest page a delta can describe (16 MiB); kemari's wire caps pages at 1 MiB anyway. */
export const DELTA_PAGE_BYTES_MAX = 1 << 24;

/** Why a delta is malformed. The backends return `reason + 8 * offsetBytes`, 0 meaning valid. */
export const DeltaFault = {
  /** The delta ends inside a varint, before a run's length, or inside a run's xor bytes. */
  TRUNCATED: 1,
  /** A varint is longer than 4 bytes or not minimal. */
  BAD_VARINT: 2,
  /** A skip or a length runs past the end of the page. */
  PAST_PAGE_END: 3,
  /** A run has length 0. */
  EMPTY_LITERAL: 4,
} as const;
/** A delta fault number. */
export type DeltaFault = (typeof DeltaFault)[keyof typeof DeltaFault];

const FAULT_NAMES: Record<number, string> = {
  [DeltaFault.TRUNCATED]: 'truncated',
  [DeltaFault.BAD_VARINT]: 'bad-varint',
  [DeltaFault.PAST_PAGE_END]: 'past-page-end',
  [DeltaFault.EMPTY_LITERAL]: 'empty-literal',
};

const FAULT_MESSAGES: Record<number, string> = {
  [DeltaFault.TRUNCATED]: 'the delta is cut off',
  [DeltaFault.BAD_VARINT]: 'a varint is longer than 4 bytes or not minimal',
  [DeltaFault.PAST_PAGE_END]: 'a run goes past the end of the page',
  [DeltaFault.EMPTY_LITERAL]: 'a run has length 0',
};

/** Packs a fault and the delta offset where it starts into the backends' error value. */
export function deltaFaultValue(reason: DeltaFault, offsetBytes: number): number {
  return reason + 8 * offsetBytes;
}

/** Turns a backend error value (non-zero) into KEMARI_BAD_BODY with the reason and offset in `details`. */
export function deltaError(value: number, deltaBytes: number, pageBytes: number): KemariError {
  const reason = value % 8;
  const offsetBytes = (value - reason) / 8;
  return new KemariError('KEMARI_BAD_BODY', `malformed page delta: ${FAULT_MESSAGES[reason] ?? 'unknown fault'} at byte ${offsetBytes}`, {
    details: { reason: FAULT_NAMES[reason] ?? String(reason), offsetBytes, deltaBytes, pageBytes },
  });
}
