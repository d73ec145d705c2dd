/**
 * STAND_DOWN: the protected guest stopped on its own (it powered itself off), so protection ends and the standby
 * must not resume it. Without it, a guest shut down on purpose looks like a dead primary, and the standby brings it
 * back to life from its last epoch.
 *
 * Sent by the primary once every epoch is acked, the last one holding the guest's final state, with the txn of
 * that epoch; the secondary, once it holds exactly that epoch, sends the same frame back (its confirmation: from
 * then on it never promotes by itself) and ends the session.
 *
 * Body: u64 committedTxn (the final epoch), UTF-8 reason (the rest, at most 1024 bytes).
 */
import { BodyReader, BodyWriter, utf8Bytes } from '../bytes.js';
import { checkU53, invalid } from '../validate.js';
import { REASON_MESSAGE_BYTES_MAX } from './reason.js';

/** STAND_DOWN body. */
export interface StandDown {
  /** The final epoch: the last txn the primary saw acked, which the secondary must hold. */
  committedTxn: number;
  /** Why protection ends (e.g. "SHUTDOWN (guest-shutdown)"), for the standby's logs. */
  reason: string;
}

export function encodeStandDown(standDown: StandDown): Uint8Array[] {
  if (typeof standDown.reason !== 'string') invalid('standDown.reason', 'must be a string', standDown.reason);
  const reason = utf8Bytes(standDown.reason);
  if (reason.byteLength > REASON_MESSAGE_BYTES_MAX) invalid('standDown.reason', `at most ${REASON_MESSAGE_BYTES_MAX} bytes`, reason.byteLength);
  return [new BodyWriter(8 + reason.byteLength).u64(checkU53('standDown.committedTxn', standDown.committedTxn)).raw(reason).bytes];
}

export function decodeStandDown(body: Uint8Array): StandDown {
  const r = new BodyReader(body, 'STAND_DOWN');
  const committedTxn = r.u64();
  if (r.remaining > REASON_MESSAGE_BYTES_MAX) r.fail(`reason of ${r.remaining} bytes`);
  return { committedTxn, reason: r.utf8(r.remaining) };
}
