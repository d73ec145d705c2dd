/**
 * CRC32C (Castagnoli), the checksum of every frame header and body.
 *
 * CRC32C rather than CRC32 because x86 (SSE4.2) and ARMv8 compute it in hardware, so checksumming whole pages costs
 * a fraction of copying them. fast-crc32c picks the native sse4_crc32 addon when it built and falls back to a
 * table-driven JavaScript version; {@link crc32cImplementation} says which one this process loaded, because the
 * difference is more than tenfold and a silent fallback would show up only as a slow replica.
 */
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

interface Crc32cModule {
  calculate(data: Uint8Array, initial?: number): number;
}

const loaded = require('fast-crc32c') as Crc32cModule;
const nativeModule = loadNative();

function loadNative(): Crc32cModule | undefined {
  try {
    return require('fast-crc32c/impls/sse4_crc32c') as Crc32cModule;
  } catch {
    return undefined;
  }
}

const calculate = loaded.calculate;

/** Which CRC32C implementation is in use: `'native'` (the sse4_crc32 addon) or `'js'` (table-driven fallback). */
export function crc32cImplementation(): 'native' | 'js' {
  return nativeModule !== undefined && loaded === nativeModule ? 'native' : 'js';
}

/**
 * CRC32C of `data`, continuing from `initial` (the CRC of the bytes before it), so a body held as several views
 * is checksummed without joining them: `crc32c(b, crc32c(a)) === crc32c(a ++ b)`.
 */
export function crc32c(data: Uint8Array, initial = 0): number {
  return calculate(data, initial) >>> 0;
}

/** CRC32C over the concatenation of `parts`, without concatenating them. */
export function crc32cOfParts(parts: readonly Uint8Array[]): number {
  let crc = 0;
  for (const part of parts) crc = calculate(part, crc);
  return crc >>> 0;
}
