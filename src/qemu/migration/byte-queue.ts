/**
 * A queue of received chunks read as one byte sequence: the need-n-bytes primitive of the streaming parser.
 *
 * Reads return views (`subarray`) when the bytes lie in one chunk and a fresh copy only when they span chunks, so
 * a page that arrived whole costs no copy and a page split across chunks never aliases memory we write again.
 */
export class ByteQueue {
  private chunks: Uint8Array[] = [];
  /** Index of the first unread chunk (dropped chunks are compacted away in batches, not shifted one by one). */
  private first = 0;
  /** Read position inside `chunks[first]`. */
  private head = 0;
  private available = 0;
  private consumed = 0;

  /** Bytes pushed and not yet read. */
  get length(): number {
    return this.available;
  }

  /** Bytes read so far: the stream offset of the next byte. */
  get offset(): number {
    return this.consumed;
  }

  /** Appends a chunk (borrowed, not copied). */
  push(chunk: Uint8Array): void {
    if (chunk.byteLength === 0) return;
    this.chunks.push(chunk);
    this.available += chunk.byteLength;
  }

  /** The byte `at` positions ahead of the read position, without consuming; the caller checks `length` first. */
  peek(at = 0): number {
    let index = this.first;
    let position = this.head + at;
    for (;;) {
      const chunk = this.chunks[index] as Uint8Array;
      if (position < chunk.byteLength) return chunk[position] as number;
      position -= chunk.byteLength;
      index += 1;
    }
  }

  /** Consumes `n` bytes (the caller checked `length >= n`): a view if they lie in one chunk, else a copy. */
  read(n: number): Uint8Array {
    if (n === 0) return new Uint8Array(0);
    const first = this.chunks[this.first] as Uint8Array;
    if (this.head + n <= first.byteLength) {
      const view = first.subarray(this.head, this.head + n);
      this.advance(n);
      return view;
    }
    const copy = new Uint8Array(n);
    let filled = 0;
    while (filled < n) {
      const chunk = this.chunks[this.first] as Uint8Array;
      const take = Math.min(n - filled, chunk.byteLength - this.head);
      copy.set(chunk.subarray(this.head, this.head + take), filled);
      filled += take;
      this.advance(take);
    }
    return copy;
  }

  /** Consumes one byte. */
  readU8(): number {
    const chunk = this.chunks[this.first] as Uint8Array;
    if (this.head < chunk.byteLength) {
      const value = chunk[this.head] as number;
      this.advance(1);
      return value;
    }
    const value = this.peek(0);
    this.advance(1);
    return value;
  }

  /** Consumes a big-endian u16. */
  readBe16(): number {
    return (this.readU8() << 8) | this.readU8();
  }

  /** Consumes a big-endian u32 (fast path when it lies in one chunk). */
  readBe32(): number {
    const chunk = this.chunks[this.first] as Uint8Array;
    const at = this.head;
    if (at + 4 <= chunk.byteLength) {
      const value = (((chunk[at] as number) << 24) >>> 0) + ((chunk[at + 1] as number) << 16) + ((chunk[at + 2] as number) << 8) + (chunk[at + 3] as number);
      this.advance(4);
      return value;
    }
    return ((this.readU8() << 24) >>> 0) + (this.readU8() << 16) + (this.readU8() << 8) + this.readU8();
  }

  /**
   * The chunk holding the read position (undefined when empty), for a caller that reads many small records in place:
   * its unread bytes start at {@link headOffset}; consume what was read with {@link skip}.
   */
  get headChunk(): Uint8Array | undefined {
    return this.first < this.chunks.length ? this.chunks[this.first] : undefined;
  }

  /** The read position inside {@link headChunk}. */
  get headOffset(): number {
    return this.head;
  }

  /** Consumes `n` bytes already read in place (the caller checked `length >= n`). */
  skip(n: number): void {
    this.advance(n);
  }

  /** Consumes everything buffered, as views in order. */
  drain(): Uint8Array[] {
    const out: Uint8Array[] = [];
    while (this.first < this.chunks.length) {
      const chunk = this.chunks[this.first] as Uint8Array;
      out.push(this.head === 0 ? chunk : chunk.subarray(this.head));
      this.advance(chunk.byteLength - this.head);
    }
    return out;
  }

  private advance(n: number): void {
    this.available -= n;
    this.consumed += n;
    this.head += n;
    while (this.first < this.chunks.length && this.head >= (this.chunks[this.first] as Uint8Array).byteLength) {
      this.head -= (this.chunks[this.first] as Uint8Array).byteLength;
      this.first += 1;
    }
    if (this.first === this.chunks.length) {
      this.chunks = [];
      this.first = 0;
    } else if (this.first >= 1024) {
      this.chunks = this.chunks.slice(this.first);
      this.first = 0;
    }
  }
}
