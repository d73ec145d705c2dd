/**
 * How kemari starts a QEMU it protects or restores into: the caller's machine options plus what kemari adds (the
 * NBD drive, the shared memory backend, the incoming mode of a standby).
 *
 * Why one place: a standby must be started with exactly the machine of the primary (same machine type, memory,
 * devices, same RAM block layout), or QEMU refuses the restore stream. Both sides build their command lines here.
 */
import { isAbsolute } from 'node:path';
import { KemariError } from '../errors.js';

/**
 * The id of the memory backend object in shared-memory mode, which is also the name of its RAM block in the
 * migration stream (QEMU names a backend's block after the object).
 */
export const SHARED_MEMORY_BACKEND_ID = 'mem';

/**
 * How kemari finds the pages of the shared RAM file that changed since the last capture:
 * - `'shadow'`: against a copy of the file (as much memory again as the guest); exact, never misses a change.
 * - `'fingerprints'`: against one XXH3 of each page, with a random per-VM seed (8 bytes a page, 0.2% of the
 *   guest), so the primary holds no copy of guest RAM: captures copy changed pages straight from the file while
 *   the VM is stopped. A change is missed only if a page's new contents hash like its old ones (2^-64 a page; the
 *   secret seed keeps a guest from aiming at that).
 */
export type SharedMemoryChangeDetection = 'shadow' | 'fingerprints';

/** The values of {@link SharedMemoryChangeDetection}, for validation. */
export const SHARED_MEMORY_CHANGE_DETECTIONS: readonly SharedMemoryChangeDetection[] = Object.freeze(['shadow', 'fingerprints']);

/** Guest RAM in a file both QEMU and kemari can read (`/dev/shm/...`), for larger guests. */
export interface SharedMemoryOptions {
  /** Absolute path of the file (created by QEMU if missing); use tmpfs (`/dev/shm`) so reading it costs no I/O. */
  path: string;
  /** Guest RAM size in bytes: must equal QEMU's `-m`. */
  sizeBytes: number;
  /**
   * How changed pages of the file are found (see {@link SharedMemoryChangeDetection}). Default `'shadow'`. Only the
   * QemuVm protecting (or adopted into) this QEMU uses it; QEMU's command line is the same either way.
   */
  changeDetection?: SharedMemoryChangeDetection;
}

/** The machine a QemuVm runs: what the primary and its standby must share. */
export interface QemuMachineOptions {
  /**
   * QEMU arguments that define the machine, without `-qmp`, drives or `-incoming`, with absolute paths, e.g.
   * `['-machine', 'pc,accel=tcg', '-m', '32', '-nodefaults', '-display', 'none']`. Use `-machine pc` for the IDE
   * drive kemari adds.
   */
  machineArgs: readonly string[];
  /** Guest RAM in a shared file, read by kemari instead of carried by the stream (capability `x-ignore-shared`). */
  sharedMemory?: SharedMemoryOptions;
  /** More arguments (serial, network), appended. */
  extraArgs?: readonly string[];
  /** The QEMU binary. Default `qemu-system-x86_64`. */
  binary?: string;
}

/** The arguments for `-object memory-backend-file ... -machine memory-backend=mem`. */
export function sharedMemoryArgs(shared: SharedMemoryOptions): string[] {
  checkSharedMemory(shared);
  return [
    '-object',
    `memory-backend-file,id=${SHARED_MEMORY_BACKEND_ID},size=${shared.sizeBytes},mem-path=${shared.path.replaceAll(',', ',,')},share=on`,
    '-machine',
    `memory-backend=${SHARED_MEMORY_BACKEND_ID}`,
  ];
}

/** The full argument list (minus `-qmp`, which startQemu adds): machine, shared memory, drive, extras, `tail`. */
export function qemuArgs(machine: QemuMachineOptions, driveArgs: readonly string[], tail: readonly string[] = []): string[] {
  if (!Array.isArray(machine.machineArgs) || !machine.machineArgs.every((a) => typeof a === 'string')) {
    throw new KemariError('KEMARI_INVALID_ARGUMENT', 'machineArgs must be an array of strings', { details: { field: 'machineArgs' } });
  }
  return [
    ...machine.machineArgs,
    ...(machine.sharedMemory === undefined ? [] : sharedMemoryArgs(machine.sharedMemory)),
    ...driveArgs,
    ...(machine.extraArgs ?? []),
    ...tail,
  ];
}

/**
 * Throws KEMARI_INVALID_ARGUMENT unless `shared` has an absolute path, a positive page-multiple size and, when
 * given, a known `changeDetection`.
 */
export function checkSharedMemory(shared: SharedMemoryOptions): void {
  if (typeof shared !== 'object' || shared === null || typeof shared.path !== 'string' || !isAbsolute(shared.path)) {
    throw new KemariError('KEMARI_INVALID_ARGUMENT', 'sharedMemory.path must be an absolute path', { details: { field: 'sharedMemory.path' } });
  }
  if (!Number.isSafeInteger(shared.sizeBytes) || shared.sizeBytes <= 0 || shared.sizeBytes % 4096 !== 0) {
    throw new KemariError('KEMARI_INVALID_ARGUMENT', 'sharedMemory.sizeBytes must be a positive multiple of 4096', { details: { sizeBytes: shared.sizeBytes } });
  }
  if (shared.changeDetection !== undefined && !SHARED_MEMORY_CHANGE_DETECTIONS.includes(shared.changeDetection)) {
    throw new KemariError('KEMARI_INVALID_ARGUMENT', `sharedMemory.changeDetection must be one of ${SHARED_MEMORY_CHANGE_DETECTIONS.join(', ')}`, {
      details: { field: 'sharedMemory.changeDetection', changeDetection: shared.changeDetection },
    });
  }
}
