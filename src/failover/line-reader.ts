/**
 * Splits a byte stream into newline-terminated lines, holding at most `lineBytesMax` bytes of an unfinished
 * line: a longer line is an error, not a growing buffer.
 */
import { KemariError } from '../errors.js';

export class LineReader {
  private pending: Buffer[] = [];
  private pendingBytes = 0;

  constructor(private readonly lineBytesMax: number) {}

  /** Feeds bytes; returns the complete lines (without the newline). Throws KEMARI_BAD_BODY on an overlong line. */
  push(chunk: Uint8Array): string[] {
    const lines: string[] = [];
    let data = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    for (let at = data.indexOf(10); at !== -1; at = data.indexOf(10)) {
      this.take(data.subarray(0, at));
      lines.push(Buffer.concat(this.pending, this.pendingBytes).toString('utf8'));
      this.pending = [];
      this.pendingBytes = 0;
      data = data.subarray(at + 1);
    }
    if (data.byteLength > 0) this.take(Buffer.from(data));
    return lines;
  }

  private take(part: Buffer): void {
    this.pendingBytes += part.byteLength;
    if (this.pendingBytes > this.lineBytesMax) {
      throw new KemariError('KEMARI_BAD_BODY', `a line exceeds ${this.lineBytesMax} bytes`, { details: { lineBytesMax: this.lineBytesMax } });
    }
    this.pending.push(part);
  }
}
