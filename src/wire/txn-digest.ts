/**
 * The digest COMMIT carries over a transaction's frames: count, total body bytes, and CRC32C over the frames' body
 * CRCs (each a little-endian u32) in seq order. Sender and receiver both feed it frame by frame, so neither keeps
 * a list of CRCs.
 */
import { crc32c } from './checksum.js';

export class TxnDigest {
  /** Frames added so far. */
  frameCount = 0;
  /** Sum of their body lengths. */
  bodyBytes = 0;
  private crc = 0;
  private readonly scratch = new Uint8Array(4);
  private readonly scratchView = new DataView(this.scratch.buffer);

  /** Adds the next frame of the transaction. */
  add(bodyBytes: number, bodyCrc: number): void {
    this.scratchView.setUint32(0, bodyCrc, true);
    this.crc = crc32c(this.scratch, this.crc);
    this.frameCount += 1;
    this.bodyBytes += bodyBytes;
  }

  /** CRC32C over the body CRCs added so far. */
  get crcDigest(): number {
    return this.crc >>> 0;
  }
}
