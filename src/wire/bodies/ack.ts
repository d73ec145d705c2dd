/**
 * ACK tells the sender that txn (the header's txn) is applied to the replica, or durably journaled when the
 * secondary runs with a journal. Never sent on mere receipt: that was Kemari's weakness (invariant 3).
 *
 * Body: u16 state digest length, state digest (the replica's digest after applying, when verification is on).
 */
import { BodyReader, BodyWriter } from '../bytes.js';
import { checkDigest, readDigest, writeDigest } from './digest.js';

/** ACK body. */
export interface Ack {
  stateDigest: Uint8Array;
}

export function encodeAck(ack: Ack): Uint8Array[] {
  const digest = checkDigest('ack.stateDigest', ack.stateDigest);
  return [writeDigest(new BodyWriter(2 + digest.byteLength), digest).bytes];
}

export function decodeAck(body: Uint8Array): Ack {
  const r = new BodyReader(body, 'ACK');
  const stateDigest = readDigest(r);
  r.end();
  return { stateDigest };
}
