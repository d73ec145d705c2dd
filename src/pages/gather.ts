/**
 * Gathering an epoch's pages, scattered over guest memory, into one send buffer: the copy a capture makes while the
 * VM is paused (so it is on the guest's critical path). The addon copies run by run and prefetches the next page
 * while it copies one (the pages are mostly cold, and the hardware prefetcher stops at each 4 KiB boundary); the
 * TypeScript fallback copies the same runs with TypedArray.prototype.set. Same bytes either way.
 */
import { checkInteger, invalid } from '../wire/validate.js';
import { checkDisjoint, checkUint8Array } from './check.js';
import { activeBackend } from './implementation.js';

/**
 * Copies page `indices[k]` of `memory` (pages of `pageBytes`) to `out` at k * pageBytes, for every k < `count`
 * (default: indices.length). Throws KEMARI_INVALID_ARGUMENT for an index past the end of `memory`, an `out` shorter
 * than count pages, or an `out` sharing memory with `memory`.
 */
export function gatherPages(memory: Uint8Array, pageBytes: number, indices: Uint32Array, out: Uint8Array, count: number = indices.length): number {
  checkUint8Array('memory', memory);
  checkUint8Array('out', out);
  checkInteger('pageBytes', pageBytes, 1, 2 ** 32 - 1);
  if (!(indices instanceof Uint32Array)) invalid('indices', 'must be a Uint32Array', typeof indices);
  checkInteger('count', count, 0, indices.length);
  if (out.length < count * pageBytes) invalid('out', `must hold count * pageBytes = ${count * pageBytes} bytes`, out.length);
  const pages = Math.floor(memory.length / pageBytes);
  for (let k = 0; k < count; k++) if (indices[k]! >= pages) invalid(`indices[${k}]`, `must be below the ${pages} pages of memory`, indices[k]);
  checkDisjoint('out', out, 'memory', memory);
  return activeBackend.gatherPages(memory, pageBytes, indices, count, out);
}
