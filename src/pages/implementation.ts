/**
 * Which page implementation this process uses: the kemari_pages addon when it loaded, the TypeScript fallback
 * otherwise. Both give identical results (the tests compare them byte for byte); they differ in throughput, by an
 * order of magnitude or more for fingerprints and deltas (bench/pages.bench.ts), which is why this is reported rather
 * than silent: a fallback nobody noticed would show up only as long checkpoint pauses.
 */
import type { PagesBackend } from './backend.js';
import { jsBackend } from './js-backend.js';
import { nativeBinding, nativeLoadError } from './native-binding.js';

/** Which implementation of the page functions is in use. */
export type PagesImplementation = 'native' | 'js';

/** The backend every public function of src/pages/ calls after validating its arguments. */
export const activeBackend: PagesBackend = nativeBinding ?? jsBackend;

/**
 * `'native'` when the kemari_pages addon loaded, `'js'` when the TypeScript fallback is in use (same results, lower
 * throughput). CI checks it is `'native'` after a fresh install.
 */
export function pagesImplementation(): PagesImplementation {
  return nativeBinding === undefined ? 'js' : 'native';
}

/** Why the addon did not load, or undefined when it did: put it in the log line that reports a `'js'` fallback. */
export function pagesNativeLoadError(): unknown {
  return nativeLoadError;
}
