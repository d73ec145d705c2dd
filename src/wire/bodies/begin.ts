/**
 * BEGIN opens a transaction (seq 0).
 *
 * Body (16 bytes): u8 kind (0 incremental, 1 full sync), 7 reserved bytes, u64 baseTxn.
 * `baseTxn` is the committed txn this one builds on (0 for the first full sync): the receiver applies an
 * incremental epoch only on top of exactly that epoch, so a transaction can never land on the wrong base.
 */
import { BodyReader, BodyWriter } from '../bytes.js';
import { checkU53, invalid } from '../validate.js';

/** BEGIN body. */
export interface Begin {
  /** True for a full sync (every page), false for an incremental epoch (pages changed since `baseTxn`). */
  full: boolean;
  /** The committed txn this transaction builds on; 0 when there is none. */
  baseTxn: number;
}

const BEGIN_BYTES = 16;

export function encodeBegin(begin: Begin): Uint8Array[] {
  if (typeof begin.full !== 'boolean') invalid('begin.full', 'must be a boolean', begin.full);
  return [new BodyWriter(BEGIN_BYTES).u8(begin.full ? 1 : 0).zeros(7).u64(checkU53('begin.baseTxn', begin.baseTxn)).bytes];
}

export function decodeBegin(body: Uint8Array): Begin {
  const r = new BodyReader(body, 'BEGIN');
  const kind = r.u8();
  if (kind > 1) r.fail(`unknown kind ${kind}`);
  r.reserved(7);
  const baseTxn = r.u64();
  r.end();
  return { full: kind === 1, baseTxn };
}
