/**
 * The standby QEMU on the secondary, and the restore of a committed replica into it.
 *
 * Why started ahead of failover: QEMU takes ~110 ms from exec to QMP, more than loading a 32 MiB guest. So the
 * standby is started early with the primary's machine options plus `-S -incoming defer`, its drive already connected
 * to a kemari NBD server (QEMU connects to its drive at start), and waits. On failover,
 * {@link QemuStandby.restore}:
 * 1. puts the snapshot's disk behind that NBD server (a copy: the promoted guest writes to it);
 * 2. in shared-memory mode, writes the shared RAM block into the standby's own memory file;
 * 3. re-emits a migration stream from the snapshot (the linear memory cut back into its RAM blocks, the device
 *    blob, machine type and capabilities) and loads it with `migrate-incoming`;
 * 4. `cont`s the guest, then wraps the QEMU in a {@link QemuVm} that knows its state (no probe stream).
 *
 * The result is a running QemuVm that can at once be protected by a new secondary (`Primary.start({ vm })`). Use it
 * as the Secondary's `restoreVm`: `restoreVm: (snapshot) => standby.restore(snapshot)`.
 */
import { join } from 'node:path';
import { KemariError } from '../errors.js';
import type { ReplicaSnapshot } from '../replica/replica.js';
import type { GuestRamBlock } from './guest-memory.js';
import { loadIncomingMigration } from './incoming-migration.js';
import { INCOMING_TIMEOUT_MS_DEFAULT } from './incoming-migration.js';
import { PAGE_BYTES } from './migration/format.js';
import { imagePages } from './migration/image-pages.js';
import type { RamBlockInfo, RamPage } from './migration/records.js';
import { writeMigrationStream } from './migration/stream-writer.js';
import { configureCheckpointMigration } from './migration-receiver.js';
import { MemoryNbdBackend } from './nbd/memory-nbd-backend.js';
import type { NbdBackend } from './nbd/nbd-backend.js';
import { QemuDisk } from './qemu-disk.js';
import { QEMU_DEVICE_NAME, parseQemuDeviceState } from './qemu-device-state.js';
import { qemuArgs } from './qemu-machine.js';
import type { QemuMachineOptions } from './qemu-machine.js';
import { startQemu } from './qemu-process.js';
import type { QemuProcess } from './qemu-process.js';
import { QemuVm } from './qemu-vm.js';
import { SharedMemoryFile } from './shared-memory-file.js';

/** Options of {@link QemuStandby.start}: the primary's machine, and where the standby keeps its sockets. */
export interface QemuStandbyOptions extends QemuMachineOptions {
  /** Absolute directory for the QMP, NBD, incoming and checkpoint sockets (short: socket paths have 108 bytes). */
  dir: string;
  /**
   * Size of the guest's disk in bytes (the primary's disk size): the NBD export size QEMU learns at start. Omit for
   * a diskless guest. `sharedMemory.path` must be the standby's own file, not the primary's.
   */
  diskBytes?: number;
  /** The disk's id, as the primary's QemuDisk has it. Default 0. */
  diskId?: number;
  /**
   * Builds the backend the restored disk is served from, given the snapshot's disk content (a view valid only
   * during the call: copy it). Default: a MemoryNbdBackend on a copy.
   */
  diskBackend?: (data: Uint8Array) => NbdBackend | Promise<NbdBackend>;
  /** Bound of one epoch's disk write log once the restored VM is protected. Default 64 MiB. */
  diskLogBytesMax?: number;
  /** Time allowed for QEMU to start. Default 10 s. */
  startTimeoutMs?: number;
  /** Time the restore stream may take to load. Default 30 s. */
  incomingTimeoutMs?: number;
  /** Time one checkpoint migration of the restored VM may take. Default 30 s. */
  migrationTimeoutMs?: number;
}

/** Timings of the last restore. */
export interface QemuRestoreStats {
  /** Preparing the disk and shared memory. */
  prepareMs: number;
  /** Writing and loading the stream until QEMU said completed. */
  loadMs: number;
  /** `cont`: the guest runs after prepareMs + loadMs + contMs. */
  contMs: number;
  /** Building the QemuVm after the guest runs (shadow copy of memory, checkpoint socket). */
  adoptMs: number;
  /** Bytes of the restore stream. */
  streamBytes: number;
}

/** A QEMU waiting for a restore; see the module comment. */
export class QemuStandby {
  /** The waiting QEMU process. */
  readonly process: QemuProcess;
  /** The standby's disk server (serving zeros until the restore). */
  readonly disk: QemuDisk | undefined;
  /** Timings of the restore, once done. */
  lastRestore: QemuRestoreStats | undefined;
  private readonly options: QemuStandbyOptions;
  private used = false;

  private constructor(options: QemuStandbyOptions, process: QemuProcess, disk: QemuDisk | undefined) {
    this.options = options;
    this.process = process;
    this.disk = disk;
  }

  /**
   * Serves an empty disk of `diskBytes`, starts QEMU with the machine options plus `-S -incoming defer` and turns
   * on what the restore needs (MIGRATION events, `x-ignore-shared` in shared-memory mode). Rejects like
   * startQemu; whatever was started is stopped again.
   */
  static async start(options: QemuStandbyOptions): Promise<QemuStandby> {
    let disk: QemuDisk | undefined;
    let qemu: QemuProcess | undefined;
    try {
      if (options.diskBytes !== undefined) {
        disk = await QemuDisk.serve({
          backend: new MemoryNbdBackend(options.diskBytes),
          socketPath: join(options.dir, 'nbd.sock'),
          ...(options.diskId === undefined ? {} : { diskId: options.diskId }),
          ...(options.diskLogBytesMax === undefined ? {} : { logBytesMax: options.diskLogBytesMax }),
        });
      }
      qemu = await startQemu({
        ...(options.binary === undefined ? {} : { binary: options.binary }),
        args: qemuArgs(options, disk?.driveArgs() ?? [], ['-S', '-incoming', 'defer']),
        qmpSocketPath: join(options.dir, 'qmp.sock'),
        ...(options.startTimeoutMs === undefined ? {} : { startTimeoutMs: options.startTimeoutMs }),
      });
      await configureCheckpointMigration(qemu.qmp, options.sharedMemory !== undefined);
      return new QemuStandby(options, qemu, disk);
    } catch (error) {
      await qemu?.kill();
      await disk?.close();
      throw error;
    }
  }

  /**
   * Restores `snapshot` (a Replica snapshot of a QemuVm) into this QEMU and resumes the guest; returns the running
   * VM, which owns the process and the disk from then on. Once only (KEMARI_INVALID_ARGUMENT after). A snapshot
   * that does not fit (not taken from a QemuVm, other sizes) is KEMARI_INVALID_ARGUMENT; QEMU refusing the stream
   * is KEMARI_QMP_ERROR. A failed restore kills the standby (QEMU exits after a failed load anyway): start another.
   * With `paused`, the guest is left stopped at exactly the committed state (resume it with `vm.resume()`, e.g. once
   * its taps are connected, or after inspecting it).
   */
  async restore(snapshot: ReplicaSnapshot, options: { paused?: boolean } = {}): Promise<QemuVm> {
    if (this.used) throw new KemariError('KEMARI_INVALID_ARGUMENT', 'this standby was already restored into');
    this.used = true;
    try {
      return await this.restoreOnce(snapshot, options.paused === true);
    } catch (error) {
      // QEMU exits after a failed incoming migration anyway: the standby is spent either way.
      await this.process.kill();
      await this.disk?.close();
      throw error;
    }
  }

  private async restoreOnce(snapshot: ReplicaSnapshot, paused: boolean): Promise<QemuVm> {
    const startMs = performance.now();
    if (snapshot.pageBytes !== PAGE_BYTES) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', `a QEMU snapshot has ${PAGE_BYTES}-byte pages, not ${snapshot.pageBytes}`, { details: { pageBytes: snapshot.pageBytes } });
    }
    const state = parseQemuDeviceState(snapshot.devices.get(QEMU_DEVICE_NAME), snapshot.memoryBytes);
    const shared = this.options.sharedMemory;
    const sharedBlocks = state.blocks.filter((block) => block.shared);
    if ((shared === undefined) !== (sharedBlocks.length === 0) || sharedBlocks.length > 1) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', 'the snapshot and the standby disagree on shared memory', {
        details: { standbyShared: shared !== undefined, sharedBlocks: sharedBlocks.map((b) => b.name) },
      });
    }
    const expectedDisks = this.disk === undefined ? 0 : 1;
    if (snapshot.disks.length !== expectedDisks || (this.disk !== undefined && (snapshot.disks[0]!.bytes !== this.disk.sizeBytes || snapshot.disks[0]!.id !== this.disk.id))) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', 'the snapshot and the standby disagree on the disks', {
        details: { snapshotDisks: snapshot.disks.map((d) => ({ id: d.id, bytes: d.bytes })), standbyDiskBytes: this.disk?.sizeBytes },
      });
    }
    const qmp = this.process.qmp;

    // 1. The disk, behind the NBD server QEMU is already connected to.
    if (this.disk !== undefined) {
      const data = snapshot.disks[0]!.data;
      const backend = this.options.diskBackend === undefined ? new MemoryNbdBackend(Uint8Array.from(data)) : await this.options.diskBackend(data);
      this.disk.replaceBackend(backend);
    }
    // 2. The shared RAM block, written into the standby's own file.
    if (shared !== undefined) {
      const block = sharedBlocks[0]!;
      const file = await SharedMemoryFile.open(shared.path, shared.sizeBytes);
      try {
        await file.writeAll(snapshot.memory.subarray(block.offsetBytes, block.offsetBytes + block.lengthBytes));
      } finally {
        await file.close();
      }
    }
    const preparedMs = performance.now();

    // 3. The stream.
    const blocks: RamBlockInfo[] = state.blocks.map((block) => {
      const info: RamBlockInfo = { name: block.name, lengthBytes: block.lengthBytes };
      if (block.memoryRegionAddr !== undefined) info.memoryRegionAddr = block.memoryRegionAddr;
      return info;
    });
    const chunks = writeMigrationStream({
      machineType: state.machineType,
      capabilities: state.capabilities,
      ramSection: state.ramSection,
      blocks,
      pages: streamPages(state.blocks, snapshot.memory),
      device: state.device,
    });
    const { streamBytes } = await loadIncomingMigration(qmp, join(this.options.dir, 'incoming.sock'), chunks, this.options.incomingTimeoutMs ?? INCOMING_TIMEOUT_MS_DEFAULT);
    const loadedMs = performance.now();

    // 4. The guest runs at once; the QemuVm around it (a copy of the committed memory as its shadow, the
    // checkpoint socket) is built after, off the failover path: its first capture is a full one anyway.
    if (!paused) await qmp.execute('cont');
    const runningMs = performance.now();
    const vm = await QemuVm.adopt({
      qmp,
      ...(this.disk === undefined ? {} : { disk: this.disk }),
      migrationSocketPath: join(this.options.dir, 'migrate.sock'),
      ...(shared === undefined ? {} : { sharedMemory: shared }),
      ...(this.options.migrationTimeoutMs === undefined ? {} : { migrationTimeoutMs: this.options.migrationTimeoutMs }),
      process: this.process,
      ownsDisk: true,
      deviceState: state,
      memory: snapshot.memory,
      paused,
    });
    this.lastRestore = { prepareMs: preparedMs - startMs, loadMs: loadedMs - preparedMs, contMs: runningMs - loadedMs, adoptMs: performance.now() - runningMs, streamBytes };
    return vm;
  }

  /** Kills the QEMU and closes the disk server, unless a restore handed them to a QemuVm. Idempotent. */
  async close(): Promise<void> {
    if (this.used) return;
    this.used = true;
    await this.process.kill();
    await this.disk?.close();
  }
}

/**
 * Starts a standby and restores `snapshot` into it at once: for callers that did not start one ahead (slower by
 * QEMU's start, ~0.1 to 0.3 s). The standby is killed again when the restore fails.
 */
export async function restoreQemu(snapshot: ReplicaSnapshot, options: QemuStandbyOptions): Promise<QemuVm> {
  const standby = await QemuStandby.start(options);
  return standby.restore(snapshot);
}

/** Every page of the blocks the stream carries (shared ones excluded), zero pages as fill records. */
function* streamPages(blocks: readonly GuestRamBlock[], memory: Uint8Array): Generator<RamPage, void, undefined> {
  for (const block of blocks) {
    if (block.shared) continue;
    yield* imagePages(block.name, memory.subarray(block.offsetBytes, block.offsetBytes + block.lengthBytes));
  }
}
