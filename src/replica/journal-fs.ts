/**
 * The file operations the secondary's journal performs, as an interface.
 *
 * Why an interface: the journal's correctness is about what is on disk when a crash interrupts a sequence of
 * writes, renames and syncs. Behind this seam a test (or a later deterministic simulation) can stop the sequence
 * at any operation, tear a write in half or slow the disk down, and then recover with the real file system.
 * {@link nodeJournalFs} is the real implementation over node:fs/promises; the journal never calls node:fs itself.
 *
 * Errors are thrown as the file system raises them (Node's `ErrnoException`); the journal wraps them in
 * KEMARI_JOURNAL_IO. A missing file must be reported with `code: 'ENOENT'` (the journal relies on it to tell
 * "absent" from "unreadable").
 */
import { mkdir, open, readdir, rename, unlink } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';

/** One open file (or directory, for `sync`). */
export interface JournalFile {
  /** Reads up to `length` bytes at file `position` into `buffer[offset..]`; resolves to the count read (0 at EOF). */
  read(buffer: Uint8Array, offset: number, length: number, position: number): Promise<number>;
  /** Writes every byte of `buffers`, in order, starting at file `position`. */
  writeAll(buffers: readonly Uint8Array[], position: number): Promise<void>;
  /** Sets the file's length to `bytes`. */
  truncate(bytes: number): Promise<void>;
  /** fdatasync: the data written so far (and the length) are durable when it resolves. */
  datasync(): Promise<void>;
  /** fsync: data and metadata; on a directory, makes the names created or renamed in it durable. */
  sync(): Promise<void>;
  /** The file's current length in bytes. */
  sizeBytes(): Promise<number>;
  close(): Promise<void>;
}

/** How a file is opened. */
export type JournalOpenMode =
  /** Existing file, read only. */
  | 'read'
  /** Existing file, read and write. */
  | 'readwrite'
  /** New or truncated file, read and write. */
  | 'create'
  /** A directory, only to `sync` it. */
  | 'directory';

/** The directory-level operations, and `open`. */
export interface JournalFs {
  /**
   * Creates `path` and missing parents; no error if it exists. Resolves to the first directory it created
   * (undefined when `path` existed), so the caller can sync the parents whose entries changed.
   */
  mkdir(path: string): Promise<string | undefined>;
  open(path: string, mode: JournalOpenMode): Promise<JournalFile>;
  /** Atomically replaces `to` with `from` (POSIX rename). */
  rename(from: string, to: string): Promise<void>;
  unlink(path: string): Promise<void>;
  /** Names in the directory. */
  readdir(path: string): Promise<string[]>;
}

const OPEN_FLAGS: Readonly<Record<JournalOpenMode, string>> = {
  read: 'r',
  readwrite: 'r+',
  create: 'w+',
  directory: 'r',
};

class NodeJournalFile implements JournalFile {
  constructor(private readonly handle: FileHandle) {}

  async read(buffer: Uint8Array, offset: number, length: number, position: number): Promise<number> {
    const { bytesRead } = await this.handle.read(buffer, offset, length, position);
    return bytesRead;
  }

  async writeAll(buffers: readonly Uint8Array[], position: number): Promise<void> {
    let pending = buffers.filter((b) => b.byteLength > 0);
    let at = position;
    while (pending.length > 0) {
      const { bytesWritten } = await this.handle.writev(pending, at);
      if (bytesWritten <= 0) throw Object.assign(new Error('writev wrote nothing'), { code: 'EIO' });
      at += bytesWritten;
      // A short write (rare: a full disk, a signal) continues with what is left.
      let skip = bytesWritten;
      while (pending.length > 0 && skip >= pending[0]!.byteLength) skip -= pending.shift()!.byteLength;
      if (skip > 0 && pending.length > 0) pending[0] = pending[0]!.subarray(skip);
    }
  }

  truncate(bytes: number): Promise<void> {
    return this.handle.truncate(bytes);
  }

  datasync(): Promise<void> {
    return this.handle.datasync();
  }

  sync(): Promise<void> {
    return this.handle.sync();
  }

  async sizeBytes(): Promise<number> {
    return (await this.handle.stat()).size;
  }

  close(): Promise<void> {
    return this.handle.close();
  }
}

/** The real file system (node:fs/promises). Directory sync needs a POSIX system (Linux, macOS). */
export const nodeJournalFs: JournalFs = {
  mkdir: (path) => mkdir(path, { recursive: true }),
  async open(path, mode) {
    return new NodeJournalFile(await open(path, OPEN_FLAGS[mode]));
  },
  rename,
  unlink,
  readdir: (path) => readdir(path),
};

/** True when `error` is a file system "no such file" error. */
export function isMissingFile(error: unknown): boolean {
  return typeof error === 'object' && error !== null && (error as { code?: unknown }).code === 'ENOENT';
}
