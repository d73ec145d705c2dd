/**
 * The TypeScript fallback as one {@link PagesBackend}: what src/pages/ uses when the addon did not load, and what
 * the tests compare the addon with.
 */
import type { PagesBackend } from './backend.js';
import { decodeDeltaJs, encodeDeltaBatchJs, encodeDeltaJs, validateDeltaJs } from './delta-js.js';
import { gatherPagesJs } from './gather-js.js';
import { mmapFileJs, unmapJs } from './mmap-js.js';
import { scanFingerprintsJs, scanShadowJs } from './scan-js.js';
import { xxh3Js } from './xxh3.js';

/** The pure-TypeScript backend. */
export const jsBackend: PagesBackend = {
  scanShadow: scanShadowJs,
  scanFingerprints: scanFingerprintsJs,
  xxh3: xxh3Js,
  encodeDelta: encodeDeltaJs,
  encodeDeltaBatch: encodeDeltaBatchJs,
  gatherPages: gatherPagesJs,
  decodeDelta: decodeDeltaJs,
  validateDelta: validateDeltaJs,
  mmapFile: mmapFileJs,
  unmap: unmapJs,
};
