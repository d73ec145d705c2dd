/**
 * Guest RAM in a shared file (`-object memory-backend-file,share=on`), read and written with positioned file I/O.
 *
 * Why: with `x-ignore-shared`, QEMU's stream no longer carries the RAM block in the file, so a checkpoint of a large
 * guest costs a device-state stream (~0.3 MB) instead of all of RAM. kemari then finds the changed pages itself by
 * scanning the file while the VM is stopped (mapped by the native addon and compared in place; without the addon,
 * read with positioned I/O: a memory copy on tmpfs), and a standby is
 * restored by writing the committed RAM into its own file before the (tiny) stream is loaded.
 *
 * In fingerprints mode (see SharedMemoryChangeDetection) kemari keeps no copy of the file: captures, reads and the
 * state digest take the bytes of the file itself ({@link SharedMemoryFile.readInto}) while the VM is stopped.
 */
import { readSync } from 'node:fs';
import { open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { KemariError } from '../errors.js';
import { mmapFile, mmapImplementation, unmap } from '../pages/mmap.js';
import type { PagesWorkerPool } from '../pages/worker-pool.js';
import type { GuestMemory, GuestRamBlock, SharedBlockSource } from './guest-memory.js';

/** Bytes read per request while scanning the file (4 MiB). */
const SCAN_CHUNK_BYTES = 4 << 20;

/**
 * Pooled scans that may fail in a row (each marks the whole block changed) before the file stops using the pool:
 * one failure may be a thread that crashed and was replaced; a second in a row is taken as lasting.
 */
const POOL_FAILURES_IN_ROW_MAX = 2;

/** An open shared memory file; see the module comment. */
export class SharedMemoryFile implements SharedBlockSource {
  private readonly scratch = Buffer.allocUnsafeSlow(SCAN_CHUNK_BYTES);
  private closed = false;

  private constructor(
    private readonly handle: FileHandle,
    /** The file's path. */
    readonly path: string,
    /** The file's size: the RAM block's length. */
    readonly sizeBytes: number,
  ) {}

  /**
   * Opens the file QEMU created (read-write, never creating it) and checks it has `sizeBytes`. Rejects with
   * KEMARI_INVALID_ARGUMENT when it cannot be opened or has another size.
   */
  static async open(path: string, sizeBytes: number): Promise<SharedMemoryFile> {
    let handle: FileHandle;
    try {
      handle = await open(path, 'r+');
    } catch (cause) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', `cannot open the shared memory file ${path}: ${(cause as Error).message}`, { cause, details: { path } });
    }
    const { size } = await handle.stat();
    if (size !== sizeBytes) {
      await handle.close();
      throw new KemariError('KEMARI_INVALID_ARGUMENT', `the shared memory file ${path} has ${size} bytes, not ${sizeBytes}`, { details: { path, size, sizeBytes } });
    }
    return new SharedMemoryFile(handle, path, sizeBytes);
  }

  /** Reads the whole file (the VM must be stopped) and lets `memory` take the pages of `block` that changed. */
  async scanInto(memory: GuestMemory, block: GuestRamBlock): Promise<void> {
    if (block.lengthBytes !== this.sizeBytes) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', `RAM block ${block.name} has ${block.lengthBytes} bytes, its file ${this.sizeBytes}`, {
        details: { block: block.name, lengthBytes: block.lengthBytes, sizeBytes: this.sizeBytes },
      });
    }
    this.checkOpen();
    const mapping = this.mapped();
    if (mapping !== undefined) {
      // Compared in place: the file mapped once (MAP_SHARED sees every write QEMU makes), one native scan a capture,
      // split over a worker pool's threads when one is given (each maps the file itself).
      const pool = this.sharedWithPool(mapping);
      if (pool === undefined) {
        memory.scanRange(block.offsetBytes, mapping);
        return;
      }
      const outcome = await memory.scanRangeOn(pool, block.offsetBytes, mapping);
      if (outcome === 'threads') this.poolFailuresInRow = 0;
      if (outcome === 'closed') this.dropPool();
      if (outcome === 'failed') {
        this.poolFailures += 1;
        this.poolFailuresInRow += 1;
        if (this.poolFailuresInRow >= POOL_FAILURES_IN_ROW_MAX) this.dropPool();
      }
      return;
    }
    for (let position = 0; position < this.sizeBytes; position += SCAN_CHUNK_BYTES) {
      const length = Math.min(SCAN_CHUNK_BYTES, this.sizeBytes - position);
      await this.readFully(this.scratch, length, position);
      memory.scanRange(block.offsetBytes + position, this.scratch.subarray(0, length));
    }
  }

  /** The file mapped into memory (native addon only), kept across captures. */
  private mapping: Uint8Array | undefined;
  private pool: PagesWorkerPool | undefined;
  private poolShared = false;

  /**
   * Scans of the mapping go to `pool`'s threads from now on (used by fingerprints mode: XXH3 of every page is
   * compute-bound, so threads shorten the pause; a shadow compare runs at memory speed and gains nothing, and the
   * pool keeps it on the calling thread by its measured thresholds). Only with the addon on both sides (the threads
   * map the file themselves); otherwise ignored. The file stops using the pool when it is closed, or after
   * {@link POOL_FAILURES_IN_ROW_MAX} scans in a row failed after the threads began ({@link poolDropped}).
   */
  usePool(pool: PagesWorkerPool): void {
    this.pool = pool;
  }

  /** Pooled scans that failed after the threads began (each sent the whole block), since the file was opened. */
  poolFailures = 0;
  private poolFailuresInRow = 0;

  /** True once the file stopped handing scans to its pool (a closed pool, or failures in a row): see {@link usePool}. */
  get poolDropped(): boolean {
    return this.dropped;
  }
  private dropped = false;

  /**
   * The pool the mapping is shared with, sharing it on first use; undefined when scans stay on this thread. A pool
   * that cannot take the file (closed meanwhile) is dropped: the scan runs here, as without one.
   */
  private sharedWithPool(mapping: Uint8Array): PagesWorkerPool | undefined {
    const pool = this.pool;
    if (pool === undefined || pool.implementation !== 'native') return undefined;
    if (!this.poolShared) {
      try {
        pool.shareFile(mapping, this.path);
      } catch {
        this.dropPool();
        return undefined;
      }
      this.poolShared = true;
    }
    return pool;
  }

  /**
   * Scans stay on this thread from now on. A pool whose scans of the file keep failing after they began (a thread
   * that cannot map the file, say) would otherwise make every capture send the whole block.
   */
  private dropPool(): void {
    if (this.mapping !== undefined && this.poolShared) this.pool?.unshareFile(this.mapping);
    this.poolShared = false;
    this.pool = undefined;
    this.dropped = true;
  }

  /**
   * Copies `length` bytes at `positionBytes` of the file into `target` at `targetOffset`: from the mapping with the
   * native addon, else by positioned reads. Synchronous, like a copy out of a shadow: it runs while the VM is
   * stopped (a capture), and the file is on tmpfs (a memory copy). KEMARI_INVALID_ARGUMENT for a range outside the
   * file or the target, KEMARI_CLOSED once closed.
   */
  readInto(target: Uint8Array, targetOffset: number, positionBytes: number, length: number): void {
    this.checkOpen();
    if (
      !Number.isSafeInteger(positionBytes) || !Number.isSafeInteger(length) || !Number.isSafeInteger(targetOffset) ||
      positionBytes < 0 || length < 0 || targetOffset < 0 || positionBytes + length > this.sizeBytes || targetOffset + length > target.byteLength
    ) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', `cannot read ${length} bytes at ${positionBytes} of the shared memory file into ${target.byteLength} at ${targetOffset}`, {
        details: { path: this.path, positionBytes, length, sizeBytes: this.sizeBytes, targetOffset, targetBytes: target.byteLength },
      });
    }
    const mapping = this.mapped();
    if (mapping !== undefined) {
      target.set(mapping.subarray(positionBytes, positionBytes + length), targetOffset);
      return;
    }
    let done = 0;
    while (done < length) {
      const bytesRead = readSync(this.handle.fd, target, targetOffset + done, length - done, positionBytes + done);
      if (bytesRead === 0) {
        throw new KemariError('KEMARI_INVALID_ARGUMENT', `the shared memory file ${this.path} ended at ${positionBytes + done}`, { details: { path: this.path } });
      }
      done += bytesRead;
    }
  }

  /**
   * A view of `length` bytes at `positionBytes` of the live mapping (what QEMU writes shows through: read it only
   * while the VM is stopped), or undefined without the native addon (no mapping: use {@link readInto}).
   * KEMARI_INVALID_ARGUMENT for a range outside the file, KEMARI_CLOSED once closed.
   */
  view(positionBytes: number, length: number): Uint8Array | undefined {
    this.checkOpen();
    if (!Number.isSafeInteger(positionBytes) || !Number.isSafeInteger(length) || positionBytes < 0 || length < 0 || positionBytes + length > this.sizeBytes) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', `cannot view ${length} bytes at ${positionBytes} of the shared memory file`, {
        details: { path: this.path, positionBytes, length, sizeBytes: this.sizeBytes },
      });
    }
    return this.mapped()?.subarray(positionBytes, positionBytes + length);
  }

  /**
   * The live mapping of the file (mapped on first use), or undefined without the native addon. A mapping that
   * turned out to be a copy (the runtime refused external buffers during the call) is dropped: a copy would not
   * see QEMU's later writes, so positioned reads are used instead.
   */
  private mapped(): Uint8Array | undefined {
    if (this.mapping === undefined && mmapImplementation() === 'native') {
      const buffer = mmapFile(this.path, this.sizeBytes);
      if (mmapImplementation() === 'native') this.mapping = new Uint8Array(buffer);
      else unmap(buffer);
    }
    return this.mapping;
  }

  /** Writes `bytes` (the whole block) into the file: a standby's RAM before its restore stream is loaded. */
  async writeAll(bytes: Uint8Array): Promise<void> {
    if (bytes.byteLength !== this.sizeBytes) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', `cannot write ${bytes.byteLength} bytes into the shared memory file of ${this.sizeBytes}`, {
        details: { bytes: bytes.byteLength, sizeBytes: this.sizeBytes },
      });
    }
    let done = 0;
    while (done < bytes.byteLength) {
      const { bytesWritten } = await this.handle.write(bytes, done, bytes.byteLength - done, done);
      done += bytesWritten;
    }
  }

  /** Closes the file (QEMU's mapping stays). Idempotent. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.mapping !== undefined && this.poolShared) this.pool?.unshareFile(this.mapping);
    this.poolShared = false;
    if (this.mapping !== undefined) unmap(this.mapping.buffer as ArrayBuffer);
    this.mapping = undefined;
    await this.handle.close().catch(() => {});
  }

  private checkOpen(): void {
    if (this.closed) throw new KemariError('KEMARI_CLOSED', `the shared memory file ${this.path} is closed`, { details: { path: this.path } });
  }

  private async readFully(buffer: Buffer, length: number, position: number): Promise<void> {
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.handle.read(buffer, done, length - done, position + done);
      if (bytesRead === 0) {
        throw new KemariError('KEMARI_INVALID_ARGUMENT', `the shared memory file ${this.path} ended at ${position + done}`, { details: { path: this.path } });
      }
      done += bytesRead;
    }
  }
}
