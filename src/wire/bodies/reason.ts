/**
 * NACK (receiver refuses a txn) and ABORT (sender abandons a txn) share one body: why.
 *
 * Body: u16 reason code ({@link ReasonCode}), 2 reserved bytes, UTF-8 message (the rest, at most 1024 bytes).
 * A code this build does not know is passed on as its number: a newer peer may have more reasons, and refusing the
 * refusal would help nobody.
 */
import { BodyReader, BodyWriter, utf8Bytes } from '../bytes.js';
import { checkInteger, invalid } from '../validate.js';

/** Why a transaction was refused or abandoned. */
export const ReasonCode = {
  /** The sender gave up on the txn (capture failed, VM stopped, shutting down). */
  SENDER_ABORT: 1,
  /** The txn exceeded the receiver's txnBytesMax. */
  TXN_TOO_LARGE: 2,
  /** After applying, the replica's state digest differed from the one in COMMIT; the epoch was rolled back. */
  VERIFY_FAILED: 3,
  /** Txn number not the next expected one (old, repeated or skipped), or built on another base. */
  OUT_OF_ORDER: 4,
  /** A frame of the txn was malformed or failed its checksum. */
  BAD_FRAME: 5,
  /** COMMIT's frame count, byte count or CRC digest disagreed with what was staged. */
  INCOMPLETE: 6,
  /** The side is shutting down. */
  SHUTDOWN: 7,
  /** HELLO did not match (versions, session, geometry, inventory). */
  HELLO_MISMATCH: 8,
  /** The peer's credential was refused. */
  UNAUTHORIZED: 9,
  /** The secondary already serves a primary (single writer). */
  BUSY: 10,
} as const;
/** A reason code number (known or not). */
export type ReasonCode = number;

/** NACK/ABORT body. */
export interface Reason {
  code: ReasonCode;
  message: string;
}

/** Longest reason message in bytes. */
export const REASON_MESSAGE_BYTES_MAX = 1024;

export function encodeReason(reason: Reason): Uint8Array[] {
  const code = checkInteger('reason.code', reason.code, 1, 0xffff);
  if (typeof reason.message !== 'string') invalid('reason.message', 'must be a string', reason.message);
  const message = utf8Bytes(reason.message);
  if (message.byteLength > REASON_MESSAGE_BYTES_MAX) invalid('reason.message', `at most ${REASON_MESSAGE_BYTES_MAX} bytes`, message.byteLength);
  return [new BodyWriter(4 + message.byteLength).u16(code).zeros(2).raw(message).bytes];
}

export function decodeReason(body: Uint8Array, what: string): Reason {
  const r = new BodyReader(body, what);
  const code = r.u16();
  if (code === 0) r.fail('reason code 0');
  r.reserved(2);
  if (r.remaining > REASON_MESSAGE_BYTES_MAX) r.fail(`message of ${r.remaining} bytes`);
  return { code, message: r.utf8(r.remaining) };
}
