/**
 * FAILOVER: a primary that has quiesced itself (seed 000's failover-safe state: paused, uncommitted outputs
 * dropped, guest kept for post-mortem) tells the secondary to take over now, without waiting for heartbeats to
 * time out and without fencing, because the old primary is known not to run or release output any more.
 *
 * Body: u64 committedTxn (last txn the primary saw acked), u64 generation (its lease generation), UTF-8 reason
 * (the rest, at most 1024 bytes).
 */
import { BodyReader, BodyWriter, utf8Bytes } from '../bytes.js';
import { checkU53, invalid } from '../validate.js';
import { REASON_MESSAGE_BYTES_MAX } from './reason.js';

/** FAILOVER body. */
export interface Failover {
  committedTxn: number;
  generation: number;
  reason: string;
}

export function encodeFailover(failover: Failover): Uint8Array[] {
  if (typeof failover.reason !== 'string') invalid('failover.reason', 'must be a string', failover.reason);
  const reason = utf8Bytes(failover.reason);
  if (reason.byteLength > REASON_MESSAGE_BYTES_MAX) invalid('failover.reason', `at most ${REASON_MESSAGE_BYTES_MAX} bytes`, reason.byteLength);
  return [
    new BodyWriter(16 + reason.byteLength)
      .u64(checkU53('failover.committedTxn', failover.committedTxn))
      .u64(checkU53('failover.generation', failover.generation))
      .raw(reason).bytes,
  ];
}

export function decodeFailover(body: Uint8Array): Failover {
  const r = new BodyReader(body, 'FAILOVER');
  const committedTxn = r.u64();
  const generation = r.u64();
  if (r.remaining > REASON_MESSAGE_BYTES_MAX) r.fail(`reason of ${r.remaining} bytes`);
  return { committedTxn, generation, reason: r.utf8(r.remaining) };
}
