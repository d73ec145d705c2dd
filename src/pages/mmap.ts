/**
 * Guest memory straight from QEMU's shared memory-backend file (`-object memory-backend-file,share=on,mem-path=...`):
 * an ArrayBuffer over a read-only MAP_SHARED mapping, so kemari scans the running guest's RAM without copying it and
 * sees every write QEMU makes after the mapping.
 *
 * Lifetime: the mapping is released when the ArrayBuffer is garbage-collected (a finalizer), or at once by
 * {@link unmap}, which first detaches the buffer so every view of it becomes empty (an access after munmap would
 * crash the process, not throw). The file must not be truncated below `bytes` while mapped: touching a page past
 * the end of a file is SIGBUS. QEMU never shrinks its RAM file.
 *
 * Without the addon ({@link mmapImplementation} `'js'`) the file is read into a new ArrayBuffer: a snapshot that
 * does not see later writes and costs a copy of the whole file in memory and time. Code that relies on seeing the
 * guest's writes live must check the implementation.
 */
import { KemariError } from '../errors.js';
import { checkInteger, invalid } from '../wire/validate.js';
import { jsBackend } from './js-backend.js';
import { nativeBinding } from './native-binding.js';

/** How {@link mmapFile} gets the bytes: a live shared mapping (`'native'`) or a copy read from the file (`'js'`). */
export type MmapImplementation = 'native' | 'js';

/** Set when the runtime refuses external ArrayBuffers (a V8 sandbox): the fallback is used from then on. */
let externalBuffersRefused = false;

/** `'native'` when {@link mmapFile} maps the file (live, zero copy), `'js'` when it reads a snapshot copy. */
export function mmapImplementation(): MmapImplementation {
  return nativeBinding !== undefined && !externalBuffersRefused ? 'native' : 'js';
}

function fileError(path: string, bytes: number, cause: unknown): KemariError {
  const message = cause instanceof Error ? cause.message : String(cause);
  const errno = (cause as { errno?: unknown; code?: unknown } | undefined)?.code ?? (cause as { errno?: unknown } | undefined)?.errno;
  return new KemariError('KEMARI_INVALID_ARGUMENT', `path: cannot map ${path}: ${message}`, {
    cause,
    details: { field: 'path', path, bytes, errno },
  });
}

/**
 * The first `bytes` bytes of the file at `path` as a read-only ArrayBuffer: a MAP_SHARED mapping with the addon, a
 * copy without it (see the module comment). Throws KEMARI_INVALID_ARGUMENT (with the system error as `cause`) when
 * the file cannot be opened, is not a regular file, or is shorter than `bytes`.
 */
export function mmapFile(path: string, bytes: number): ArrayBuffer {
  if (typeof path !== 'string' || path.length === 0) invalid('path', 'must be a non-empty string', path);
  checkInteger('bytes', bytes, 1, Number.MAX_SAFE_INTEGER);
  if (mmapImplementation() === 'native') {
    try {
      return nativeBinding!.mmapFile(path, bytes);
    } catch (error) {
      if (!(error instanceof Error && /external ArrayBuffers are not allowed/.test(error.message))) throw fileError(path, bytes, error);
      externalBuffersRefused = true;
    }
  }
  try {
    return jsBackend.mmapFile(path, bytes);
  } catch (error) {
    throw fileError(path, bytes, error);
  }
}

/**
 * Releases a buffer returned by {@link mmapFile} now rather than at garbage collection: detaches it (every view
 * becomes empty) and unmaps it. Returns false, doing nothing, for any other buffer or one already released.
 */
export function unmap(buffer: ArrayBuffer): boolean {
  if (!(buffer instanceof ArrayBuffer)) invalid('buffer', 'must be an ArrayBuffer', typeof buffer);
  if (nativeBinding !== undefined && nativeBinding.unmap(buffer)) return true;
  return jsBackend.unmap(buffer);
}
