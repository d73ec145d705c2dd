/**
 * kemari's NBD server for QEMU disks: the sans-I/O protocol core, the socket driver, the backends and the protocol
 * constants. One entry point so a later `kemari/qemu` subpath export can re-export the NBD part in one line.
 */
export * from './nbd-constants.js';
export type { NbdBackend } from './nbd-backend.js';
export { MemoryNbdBackend } from './memory-nbd-backend.js';
export { FileNbdBackend } from './file-nbd-backend.js';
export type { FileNbdBackendOptions } from './file-nbd-backend.js';
export {
  NbdServerCore,
  NBD_OPTIONS_MAX_DEFAULT,
  NBD_OPTION_BYTES_MAX_DEFAULT,
  NBD_PREFERRED_BLOCK_BYTES,
  NBD_REQUEST_BYTES_MAX_DEFAULT,
  NBD_REQUEST_BYTES_MAX_LIMIT,
  NBD_REQUEST_BYTES_MAX_MIN,
} from './nbd-server-core.js';
export type { NbdAction, NbdPhase, NbdRequest, NbdResult, NbdServerCoreOptions } from './nbd-server-core.js';
export { NbdServer, NBD_CLIENTS_MAX_DEFAULT, NBD_QUEUE_ACTIONS_MAX, NBD_ZERO_CHUNK_BYTES_MAX } from './nbd-server.js';
export type { NbdServerOptions } from './nbd-server.js';
export type { NbdServerStats, NbdWriteObserver } from './nbd-session.js';
