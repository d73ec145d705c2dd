/**
 * The fallback of mmapFile: reads the first `bytes` bytes of the file into a new ArrayBuffer.
 *
 * The difference that matters: a copy is a snapshot. Writes made to the file after the call (by QEMU running the
 * guest) do not show through, and the copy costs the memory and the read time of the whole file, where the native
 * MAP_SHARED mapping costs neither. Callers that need live memory check {@link mmapImplementation} in mmap.ts.
 * unmap detaches the buffer (transfers it away) so that, as with the native mapping, every view of it becomes
 * empty and the memory can be reclaimed.
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';

const copies = new WeakSet<ArrayBuffer>();

/** Error raised by the fallback when the file cannot be read as asked; mmap.ts turns it into a KemariError. */
export class FileReadError extends Error {
  constructor(
    message: string,
    readonly errno: number,
  ) {
    super(message);
  }
}

/** Reads the first `bytes` bytes of `path`; see PagesBackend.mmapFile. */
export function mmapFileJs(path: string, bytes: number): ArrayBuffer {
  const fd = openSync(path, 'r');
  try {
    const stats = fstatSync(fd);
    if (!stats.isFile()) throw new FileReadError('not a regular file', 0);
    if (stats.size < bytes) throw new FileReadError('the file is smaller than the requested bytes', 0);
    const buffer = new ArrayBuffer(bytes);
    const view = new Uint8Array(buffer);
    let at = 0;
    while (at < bytes) {
      const read = readSync(fd, view, at, bytes - at, at);
      if (read === 0) throw new FileReadError('the file shrank while it was read', 0);
      at += read;
    }
    copies.add(buffer);
    return buffer;
  } finally {
    closeSync(fd);
  }
}

/** Detaches a buffer returned by mmapFileJs; see PagesBackend.unmap. */
export function unmapJs(buffer: ArrayBuffer): boolean {
  if (!copies.has(buffer) || buffer.byteLength === 0) return false;
  copies.delete(buffer);
  structuredClone(buffer, { transfer: [buffer] });
  return true;
}
