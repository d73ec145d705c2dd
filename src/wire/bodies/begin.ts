/**
 * BEGIN opens a transaction (seq 0).
 *
 * Body (24 bytes): u8 kind (0 incremental, 1 full sync), 7 reserved bytes, u64 baseTxn, u64 releasedTxn.
 * `baseTxn` is the committed txn this one builds on (0 for the first full sync): the receiver applies an
 * incremental epoch only on top of exactly that epoch, so a transaction can never land on the wrong base.
 * `releasedTxn` is the newest epoch whose outputs the sender has released: the receiver keeps, for replay on
 * failover, only the events of committed epochs after it (the ones the outside world may not have seen).
 */
import { BodyReader, BodyWriter } from '../bytes.js';
import { checkU53, invalid } from '../validate.js';

/** BEGIN body. */
export interface Begin {
  /** True for a full sync (every page), false for an incremental epoch (pages changed since `baseTxn`). */
  full: boolean;
  /** The committed txn this transaction builds on; 0 when there is none. */
  baseTxn: number;
  /** Every output of epochs up to this txn has been released by the sender (0 when none). */
  releasedTxn: number;
}

const BEGIN_BYTES = 24;

export function encodeBegin(begin: Begin): Uint8Array[] {
  if (typeof begin.full !== 'boolean') invalid('begin.full', 'must be a boolean', begin.full);
  return [
    new BodyWriter(BEGIN_BYTES)
      .u8(begin.full ? 1 : 0)
      .zeros(7)
      .u64(checkU53('begin.baseTxn', begin.baseTxn))
      .u64(checkU53('begin.releasedTxn', begin.releasedTxn)).bytes,
  ];
}

export function decodeBegin(body: Uint8Array): Begin {
  const r = new BodyReader(body, 'BEGIN');
  const kind = r.u8();
  if (kind > 1) r.fail(`unknown kind ${kind}`);
  r.reserved(7);
  const baseTxn = r.u64();
  const releasedTxn = r.u64();
  r.end();
  return { full: kind === 1, baseTxn, releasedTxn };
}
