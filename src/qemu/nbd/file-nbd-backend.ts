/**
 * An {@link NbdBackend} on a file (or block device) through a `fs.promises` FileHandle: positioned reads and writes,
 * fdatasync on flush.
 *
 * Why: the primary's disk image lives in a file; QEMU reaches it only through kemari's NBD server, so every write
 * passes the write observer before it lands here. Positioned I/O (pread/pwrite) needs no shared file offset, so
 * concurrent requests cannot move each other's position.
 */
import { open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { KemariError } from '../../errors.js';
import type { NbdBackend } from './nbd-backend.js';
import { checkRange } from './memory-nbd-backend.js';

/** Options of {@link FileNbdBackend.open}. */
export interface FileNbdBackendOptions {
  /** Open the file read-only (the export should then be read-only too). Default false. */
  readOnly?: boolean;
}

/** A disk in a file. Its size is the file's size when opened; close it after the server that uses it. */
export class FileNbdBackend implements NbdBackend {
  /** Size of the disk in bytes (the file's size at open). */
  readonly sizeBytes: number;
  /** The path opened, for messages. */
  readonly path: string;
  private readonly handle: FileHandle;
  private closed = false;

  private constructor(handle: FileHandle, path: string, sizeBytes: number) {
    this.handle = handle;
    this.path = path;
    this.sizeBytes = sizeBytes;
  }

  /**
   * Opens an existing file (never creates one: a missing disk image is a configuration error, not an empty disk).
   * Rejects with KEMARI_INVALID_ARGUMENT for a bad path or a file that cannot be opened (`details.errno` says
   * why, such as ENOENT or EACCES).
   */
  static async open(path: string, options: FileNbdBackendOptions = {}): Promise<FileNbdBackend> {
    if (typeof path !== 'string' || path.length === 0) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', 'a file disk needs a non-empty path', { details: { path } });
    }
    let handle: FileHandle;
    try {
      handle = await open(path, options.readOnly === true ? 'r' : 'r+');
    } catch (error) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', `cannot open the disk ${path}: ${(error as Error).message}`, {
        cause: error,
        details: { path, errno: (error as NodeJS.ErrnoException).code },
      });
    }
    try {
      const stat = await handle.stat();
      return new FileNbdBackend(handle, path, stat.size);
    } catch (error) {
      await handle.close();
      throw new KemariError('KEMARI_INVALID_ARGUMENT', `cannot stat the disk ${path}: ${(error as Error).message}`, { cause: error, details: { path } });
    }
  }

  /** Reads `length` bytes at `offset` (pread, repeated until complete; bytes past a shrunken file's end read as 0). */
  async read(offset: number, length: number): Promise<Uint8Array> {
    this.checkOpen();
    checkRange(offset, length, this.sizeBytes);
    const data = new Uint8Array(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.handle.read(data, done, length - done, offset + done);
      if (bytesRead === 0) break; // the file shrank under us: the rest stays zero, as in a sparse tail
      done += bytesRead;
    }
    return data;
  }

  /** Writes `data` at `offset` (pwrite, repeated until every byte is written). */
  async write(offset: number, data: Uint8Array): Promise<void> {
    this.checkOpen();
    checkRange(offset, data.length, this.sizeBytes);
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await this.handle.write(data, done, data.length - done, offset + done);
      done += bytesWritten;
    }
  }

  /** fdatasync: every write completed before is on stable storage when this resolves. */
  async flush(): Promise<void> {
    this.checkOpen();
    await this.handle.datasync();
  }

  /** Closes the file. Idempotent. Calls after close throw KEMARI_CLOSED (answered NBD_EIO by a server). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.handle.close();
  }

  private checkOpen(): void {
    if (this.closed) throw new KemariError('KEMARI_CLOSED', `the disk ${this.path} is closed`, { details: { path: this.path } });
  }
}
