/**
 * Line framing for QMP: QEMU writes one JSON object per line, ended by `\r\n`.
 *
 * The splitter holds at most `lineBytesMax` bytes of an unfinished line, so a QEMU (or anything else listening on
 * the socket path) that never sends a newline cannot make us buffer without limit: an overlong line is an error.
 */
import { KemariError } from '../errors.js';

/** Default bound on one QMP line: `query-qmp-schema`, the largest reply we know of, is about 200 KB. */
export const QMP_LINE_BYTES_MAX_DEFAULT = 8 << 20;

/**
 * Splits a byte stream into lines (without `\n` and a trailing `\r`), keeping at most `lineBytesMax` bytes of a
 * partial line. Pure: no I/O, so it is tested byte by byte.
 */
export class QmpLineSplitter {
  private pending: Buffer[] = [];
  private pendingBytes = 0;

  /** @param lineBytesMax Longest line accepted, in bytes (excluding the line end). */
  constructor(readonly lineBytesMax: number = QMP_LINE_BYTES_MAX_DEFAULT) {
    if (!Number.isSafeInteger(lineBytesMax) || lineBytesMax < 1) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', 'lineBytesMax must be a positive integer', { details: { lineBytesMax } });
    }
  }

  /**
   * Feeds bytes; returns the lines completed by them. Throws KEMARI_QMP_ERROR (reason `line-too-long`) when a line
   * grows past `lineBytesMax`; the splitter is then unusable, as the stream has lost its framing.
   */
  push(chunk: Uint8Array): string[] {
    const lines: string[] = [];
    let data = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    for (let at = data.indexOf(10); at !== -1; at = data.indexOf(10)) {
      this.take(data.subarray(0, at));
      let line = Buffer.concat(this.pending, this.pendingBytes).toString('utf8');
      if (line.endsWith('\r')) line = line.slice(0, -1);
      lines.push(line);
      this.pending = [];
      this.pendingBytes = 0;
      data = data.subarray(at + 1);
    }
    // Copy the unfinished rest: the caller may reuse its chunk.
    if (data.byteLength > 0) this.take(Buffer.from(data));
    return lines;
  }

  /** Bytes of an unfinished line currently held. */
  get bufferedBytes(): number {
    return this.pendingBytes;
  }

  private take(part: Buffer): void {
    this.pendingBytes += part.byteLength;
    if (this.pendingBytes > this.lineBytesMax) {
      throw new KemariError('KEMARI_QMP_ERROR', `a QMP line exceeds ${this.lineBytesMax} bytes`, {
        details: { reason: 'line-too-long', lineBytesMax: this.lineBytesMax },
      });
    }
    this.pending.push(part);
  }
}
