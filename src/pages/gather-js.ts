/**
 * The TypeScript fallback of gatherPages (see gather.ts): runs of consecutive pages copied with one `set` each.
 */

/** Copies page indices[k] of `memory` to out at k * pageBytes, for k < count; returns count. Arguments validated. */
export function gatherPagesJs(memory: Uint8Array, pageBytes: number, indices: Uint32Array, count: number, out: Uint8Array): number {
  for (let k = 0; k < count; ) {
    const first = indices[k]!;
    let run = 1;
    while (k + run < count && indices[k + run] === first + run) run += 1;
    out.set(memory.subarray(first * pageBytes, (first + run) * pageBytes), k * pageBytes);
    k += run;
  }
  return count;
}
