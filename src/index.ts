/**
 * kemari: fault-tolerant VMs by continuous transactional checkpointing to a standby host.
 *
 * This entry point re-exports the public API. The QEMU adapter will live at the subpath `kemari/qemu`.
 */
export { ERROR_CODES, KemariError, isKemariError } from './errors.js';
export type { ErrorCode, KemariErrorOptions } from './errors.js';
export * from './wire/index.js';
