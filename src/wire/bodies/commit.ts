/**
 * COMMIT closes a transaction. The receiver applies the transaction only if everything it staged matches:
 * the number of frames, their total body bytes, and a digest over their body CRCs (so a frame dropped, duplicated,
 * reordered or swapped for one of another transaction cannot slip through even when each frame checks out alone).
 *
 * Body: u32 frameCount, u32 crcDigest, u64 bodyBytes, u16 state digest length, state digest.
 *   frameCount counts the frames of the txn before COMMIT (BEGIN included), i.e. COMMIT's own seq.
 *   crcDigest  is CRC32C over the body CRCs of those frames, each as a little-endian u32, in seq order
 *              ({@link TxnDigest} computes it on both sides).
 *   bodyBytes  is the sum of their body lengths.
 *   stateDigest is the digest of the whole captured VM state when end-to-end verification is on, else empty.
 */
import { BodyReader, BodyWriter } from '../bytes.js';
import { checkU32, checkU53 } from '../validate.js';
import { checkDigest, readDigest, writeDigest } from './digest.js';

/** COMMIT body. */
export interface Commit {
  frameCount: number;
  crcDigest: number;
  bodyBytes: number;
  stateDigest: Uint8Array;
}

export function encodeCommit(commit: Commit): Uint8Array[] {
  const digest = checkDigest('commit.stateDigest', commit.stateDigest);
  const w = new BodyWriter(18 + digest.byteLength)
    .u32(checkU32('commit.frameCount', commit.frameCount))
    .u32(checkU32('commit.crcDigest', commit.crcDigest))
    .u64(checkU53('commit.bodyBytes', commit.bodyBytes));
  return [writeDigest(w, digest).bytes];
}

export function decodeCommit(body: Uint8Array): Commit {
  const r = new BodyReader(body, 'COMMIT');
  const frameCount = r.u32();
  const crcDigest = r.u32();
  const bodyBytes = r.u64();
  const stateDigest = readDigest(r);
  r.end();
  return { frameCount, crcDigest, bodyBytes, stateDigest };
}
