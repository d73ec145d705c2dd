/**
 * Pages: the changed-page scan (shadow copy or XXH3 fingerprints, zero pages flagged in the same pass), XOR deltas
 * with zero-run compression, and mmap of QEMU's shared memory file. Each is the kemari_pages addon (native/) when it
 * loaded and an identical TypeScript fallback otherwise; pagesImplementation() and mmapImplementation() say which.
 */
export { pagesImplementation, pagesNativeLoadError } from './implementation.js';
export type { PagesImplementation } from './implementation.js';
export { scanChangedPages } from './scan.js';
export type { PageReference, PageScanOptions, PageScanOutput } from './scan.js';
export { SCAN_PAGE_BYTES_MAX, SCAN_PAGE_BYTES_MIN } from './check.js';
export { FINGERPRINT_BYTES, pageFingerprint } from './fingerprint.js';
export { decodeDelta, encodeDelta, encodeDeltaBatch, validateDelta } from './delta.js';
export { gatherPages } from './gather.js';
export type { EncodeDeltaBatchOptions } from './delta.js';
export { DELTA_GAP_BYTES_MIN, DELTA_PAGE_BYTES_MAX, DELTA_VARINT_BYTES_MAX, DeltaFault } from './delta-format.js';
export { mmapFile, mmapImplementation, unmap } from './mmap.js';
export type { MmapImplementation } from './mmap.js';
export { PARALLEL_BYTES_MIN_DEFAULTS, PagesWorkerPool, QUEUE_DEPTH_MAX_DEFAULT, defaultWorkerCount, sharedBytes } from './worker-pool.js';
export type { DeltaBatchOutput, DeltaBatchResult, PagesPoolOperation, PagesWorkerPoolOptions, PagesWorkerPoolStats, ParallelBytesMin } from './worker-pool.js';
export { measureParallelBytesMin } from './worker-calibrate.js';
export type { CalibrationOptions, CalibrationRow } from './worker-calibrate.js';
