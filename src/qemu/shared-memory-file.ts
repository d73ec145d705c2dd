/**
 * Guest RAM in a shared file (`-object memory-backend-file,share=on`), read and written with positioned file I/O.
 *
 * Why: with `x-ignore-shared`, QEMU's stream no longer carries the RAM block in the file, so a checkpoint of a large
 * guest costs a device-state stream (~0.3 MB) instead of all of RAM. kemari then finds the changed pages itself by
 * scanning the file while the VM is stopped (mapped by the native addon and compared in place; without the addon,
 * read with positioned I/O: a memory copy on tmpfs), and a standby is
 * restored by writing the committed RAM into its own file before the (tiny) stream is loaded.
 */
import { open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { KemariError } from '../errors.js';
import { mmapFile, mmapImplementation, unmap } from '../pages/mmap.js';
import type { GuestMemory, GuestRamBlock } from './guest-memory.js';

/** Bytes read per request while scanning the file (4 MiB). */
const SCAN_CHUNK_BYTES = 4 << 20;

/** An open shared memory file; see the module comment. */
export class SharedMemoryFile {
  private readonly scratch = Buffer.allocUnsafeSlow(SCAN_CHUNK_BYTES);

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
    if (mmapImplementation() === 'native') {
      // Compared in place: the file mapped once (MAP_SHARED sees every write QEMU makes), one native scan a capture.
      this.mapping ??= new Uint8Array(mmapFile(this.path, this.sizeBytes));
      memory.scanRange(block.offsetBytes, this.mapping);
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
    if (this.mapping !== undefined) unmap(this.mapping.buffer as ArrayBuffer);
    this.mapping = undefined;
    await this.handle.close().catch(() => {});
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
