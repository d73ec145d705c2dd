/**
 * `QemuVm`: the {@link VmAdapter} for a real QEMU, so kemari protects a QEMU guest exactly as it protects the
 * reference SimulatedVm.
 *
 * How each part of an epoch is captured:
 * - Memory: QEMU's own migration stream. With the VM stopped, {@link QemuVm.capture} migrates it to a unix socket
 *   we listen on and parses the stream as it arrives. Every RAM block of the stream, laid end to end in stream
 *   order, is the guest memory kemari sees (one linear space of 4 KiB pages, see {@link GuestMemory}). The stream
 *   always carries all of RAM, so changed pages are found by comparing each page with a shadow copy of the last
 *   capture; only those are returned (every page when `full`). In shared-memory mode (`sharedMemory`, capability
 *   `x-ignore-shared`) the stream carries only devices and ROMs, and the RAM block is read from its file instead:
 *   compared with a shadow copy (`changeDetection: 'shadow'`, the default), or with one fingerprint a page
 *   (`'fingerprints'`: no copy of guest RAM on the primary; captures copy the changed pages out of the file).
 * - Devices: the stream's device sections as one opaque blob, in the single device {@link QEMU_DEVICE_NAME}, with
 *   what a standby needs to re-emit a stream (see {@link QemuDeviceState}).
 * - Disk: the guest's drive is served by kemari's NBD server ({@link QemuDisk}); the writes it logged since the
 *   previous capture, in order (the whole disk for a full capture).
 *
 * QEMU facts this relies on (7.2): QMP `stop` returns once the vCPUs stopped and in-flight block I/O drained, so all
 * writes of the epoch have reached the NBD server; after a migration QEMU sits in `postmigrate`, and `cont`
 * resumes it from there (re-activating the drive); a second `migrate` from `postmigrate` is refused. A capture
 * while the guest has not run since the previous stream therefore reuses that stream: nothing can have changed.
 */
import { join } from 'node:path';
import { KemariError } from '../errors.js';
import { DISK_DIGEST_BLOCK_BYTES, computeStateDigest } from '../replica/state-digest.js';
import type { DeviceState } from '../wire/bodies/device.js';
import type { DiskWrite } from '../wire/bodies/disk.js';
import type { DiskInfo } from '../wire/bodies/hello.js';
import type { CaptureOptions, EpochCapture, VmAdapter } from '../vm/adapter.js';
import { CaptureBuffers } from '../vm/capture-buffers.js';
import { GuestMemory, layoutBlocks } from './guest-memory.js';
import type { GuestMemoryOptions, GuestRamBlock } from './guest-memory.js';
import { PAGE_BYTES } from './migration/format.js';
import type { RamBlockInfo } from './migration/records.js';
import { MigrationReceiver, configureCheckpointMigration } from './migration-receiver.js';
import type { NbdBackend } from './nbd/nbd-backend.js';
import { QemuDisk } from './qemu-disk.js';
import { QEMU_DEVICE_NAME, qemuDeviceState } from './qemu-device-state.js';
import type { QemuDeviceState } from './qemu-device-state.js';
import { SHARED_MEMORY_BACKEND_ID, checkSharedMemory, qemuArgs } from './qemu-machine.js';
import type { QemuMachineOptions, SharedMemoryOptions } from './qemu-machine.js';
import { startQemu } from './qemu-process.js';
import type { QemuProcess } from './qemu-process.js';
import type { QmpClient } from './qmp-client.js';
import { SharedMemoryFile } from './shared-memory-file.js';
import type { PagesWorkerPool } from '../pages/worker-pool.js';

/** Options of {@link QemuVm.attach}: a QEMU that already runs (or waits with `-S`). */
export interface QemuVmAttachOptions {
  /** QMP session of the QEMU. Its drive must be `disk`'s (see {@link QemuDisk.driveArgs}). */
  qmp: QmpClient;
  /** The guest's disk, served by kemari. Omit for a diskless guest. */
  disk?: QemuDisk;
  /** Absolute path of the unix socket checkpoints are migrated to (created; a stale file is removed). */
  migrationSocketPath: string;
  /** The shared RAM file, when the QEMU was started with it (see qemu-machine.ts). */
  sharedMemory?: SharedMemoryOptions;
  /** Time one checkpoint migration may take. Default 30 s. */
  migrationTimeoutMs?: number;
  /** The process, when the VM should own it: {@link QemuVm.close} then kills it. */
  process?: QemuProcess;
  /** Close `disk` with the VM. Default false. */
  ownsDisk?: boolean;
  /**
   * Worker threads for the fingerprint scan of the shared RAM file (`changeDetection: 'fingerprints'`): XXH3 of
   * every page is compute-bound, so the threads shorten the pause of each capture. The pool is the caller's
   * (started and closed by it). Unused in shadow mode and without the native addon.
   */
  pagesPool?: PagesWorkerPool;
}

/** Options of {@link QemuVm.launch}: start QEMU with the disk served by kemari. */
export interface QemuVmLaunchOptions extends QemuMachineOptions {
  /** Absolute directory for the QMP, NBD and migration sockets (keep it short: socket paths have 108 bytes). */
  dir: string;
  /** What the guest's IDE disk holds (e.g. a FileNbdBackend on the image, or a MemoryNbdBackend). */
  disk?: NbdBackend;
  /** Bound of one epoch's disk write log. Default 64 MiB. */
  diskLogBytesMax?: number;
  /** Time allowed for QEMU to start. Default 10 s. */
  startTimeoutMs?: number;
  /** Time one checkpoint migration may take. Default 30 s. */
  migrationTimeoutMs?: number;
  /** Start the guest stopped (`-S`); {@link QemuVm.resume} starts it. Default false. */
  startPaused?: boolean;
  /**
   * Worker threads for the fingerprint scan of the shared RAM file (`changeDetection: 'fingerprints'`): XXH3 of
   * every page is compute-bound, so the threads shorten the pause of each capture. The pool is the caller's
   * (started and closed by it). Unused in shadow mode and without the native addon.
   */
  pagesPool?: PagesWorkerPool;
}

/** What {@link QemuVm.adopt} needs: a QEMU whose state is already known (a standby just restored). */
export interface QemuVmAdoptOptions {
  qmp: QmpClient;
  disk?: QemuDisk;
  migrationSocketPath: string;
  sharedMemory?: SharedMemoryOptions;
  migrationTimeoutMs?: number;
  process?: QemuProcess;
  ownsDisk?: boolean;
  /** The device state the QEMU holds. */
  deviceState: QemuDeviceState;
  /** The linear guest memory the QEMU holds (copied), `sum(blocks)` long. */
  memory: Uint8Array;
  /** True while the VM is stopped. */
  paused: boolean;
  /**
   * Worker threads for the fingerprint scan of the shared RAM file (`changeDetection: 'fingerprints'`): XXH3 of
   * every page is compute-bound, so the threads shorten the pause of each capture. The pool is the caller's
   * (started and closed by it). Unused in shadow mode and without the native addon.
   */
  pagesPool?: PagesWorkerPool;
}

/** Counters and the timings of the last capture. */
export interface QemuVmStats {
  /** Captures taken. */
  captures: number;
  /** Pages returned by captures (RAW and ZERO). */
  pagesCaptured: number;
  /** Checkpoint migrations run. */
  streams: number;
  /** Bytes of the last stream. */
  lastStreamBytes: number;
  /** `migrate` to completion, parsing and page comparison included, of the last capture (0 when reused). */
  lastMigrateMs: number;
  /** Reading and comparing the shared RAM file in the last capture (0 without shared memory). */
  lastScanMs: number;
  /** Pages the last capture returned. */
  lastPages: number;
  /**
   * Bytes of the shadow copy of guest memory held: all of it in shadow mode, only the blocks the stream carries
   * (ROMs, BIOS) with `changeDetection: 'fingerprints'`.
   */
  shadowBytes: number;
  /** Bytes of the page fingerprints of the shared RAM block (8 a page with `'fingerprints'`, else 0). */
  fingerprintBytes: number;
  /** Scans of the shared RAM file that `pagesPool` failed after its threads began: each sent the whole block. */
  poolScanFailures: number;
  /**
   * True once scans of the shared RAM file stopped using `pagesPool` (it was closed, or failed two scans in a row):
   * they run on the calling thread from then on.
   */
  poolDropped: boolean;
}

const EMPTY = new Uint8Array(0);

/** The VmAdapter of a real QEMU; see the module comment. */
export class QemuVm implements VmAdapter {
  readonly memoryBytes: number;
  readonly pageBytes = PAGE_BYTES;
  readonly deviceNames: readonly string[] = Object.freeze([QEMU_DEVICE_NAME]);
  readonly disks: readonly DiskInfo[];
  /** The QMP session. */
  readonly qmp: QmpClient;
  /** The served disk, if any. */
  readonly disk: QemuDisk | undefined;
  /** The QEMU process, when this VM owns it. */
  readonly process: QemuProcess | undefined;
  /** The RAM blocks in the linear memory, in stream order. */
  readonly blocks: readonly GuestRamBlock[];

  private readonly memory: GuestMemory;
  private readonly receiver: MigrationReceiver;
  private readonly sharedFile: SharedMemoryFile | undefined;
  private readonly migrationTimeoutMs: number | undefined;
  private readonly ownsDisk: boolean;
  private state: QemuDeviceState;
  private isPaused: boolean;
  /** True while the shadow and `state` are the VM's state: a stream was taken and the guest has not run since. */
  private streamCurrent: boolean;
  private closed = false;
  /** Send buffers of captures, reused once the primary hands the capture back (releaseCapture). */
  private readonly captureBuffers = new CaptureBuffers();
  private readonly counters: Omit<QemuVmStats, 'shadowBytes' | 'fingerprintBytes' | 'poolScanFailures' | 'poolDropped'> = {
    captures: 0,
    pagesCaptured: 0,
    streams: 0,
    lastStreamBytes: 0,
    lastMigrateMs: 0,
    lastScanMs: 0,
    lastPages: 0,
  };

  private constructor(init: {
    qmp: QmpClient;
    disk: QemuDisk | undefined;
    process: QemuProcess | undefined;
    ownsDisk: boolean;
    memory: GuestMemory;
    receiver: MigrationReceiver;
    sharedFile: SharedMemoryFile | undefined;
    migrationTimeoutMs: number | undefined;
    state: QemuDeviceState;
    paused: boolean;
    streamCurrent: boolean;
  }) {
    this.qmp = init.qmp;
    this.disk = init.disk;
    this.process = init.process;
    this.ownsDisk = init.ownsDisk;
    this.memory = init.memory;
    this.receiver = init.receiver;
    this.sharedFile = init.sharedFile;
    this.migrationTimeoutMs = init.migrationTimeoutMs;
    this.state = init.state;
    this.isPaused = init.paused;
    this.streamCurrent = init.streamCurrent;
    this.memoryBytes = init.memory.memoryBytes;
    this.blocks = init.memory.blocks;
    this.disks = Object.freeze(init.disk === undefined ? [] : [Object.freeze(init.disk.info)]);
  }

  /**
   * Takes over a running QEMU (or one waiting with `-S`): configures checkpoint migration, listens on the
   * migration socket and takes one probe stream to learn the RAM block layout (`memoryBytes` must be known before
   * the first capture, for HELLO). A running guest is stopped for the probe (about one checkpoint) and resumed;
   * one that was not running is left stopped (in `postmigrate`). Every page starts changed, so the first capture
   * describes the whole memory. The shared memory file, if any, is opened first: a wrong path or size fails
   * before the guest is stopped.
   */
  static async attach(options: QemuVmAttachOptions): Promise<QemuVm> {
    const shared = options.sharedMemory;
    if (shared !== undefined) checkSharedMemory(shared);
    await configureCheckpointMigration(options.qmp, shared !== undefined);
    const receiver = await MigrationReceiver.listen(options.migrationSocketPath);
    let sharedFile: SharedMemoryFile | undefined;
    try {
      if (shared !== undefined) sharedFile = await SharedMemoryFile.open(shared.path, shared.sizeBytes);
      if (options.pagesPool !== undefined) sharedFile?.usePool(options.pagesPool);
      const status = await options.qmp.execute<{ status: string; running: boolean }>('query-status');
      if (status.running) await options.qmp.execute('stop');
      let memory: GuestMemory | undefined;
      const sharedNames = new Set(shared === undefined ? [] : [SHARED_MEMORY_BACKEND_ID]);
      const memoryOptions = guestMemoryOptions(shared, sharedFile);
      const stream = await receiver.receive(options.qmp, {
        xIgnoreShared: shared !== undefined,
        ...(options.migrationTimeoutMs === undefined ? {} : { timeoutMs: options.migrationTimeoutMs }),
        onBlocks: (blocks) => {
          memory = new GuestMemory(layoutBlocks(blocks, sharedNames), memoryOptions);
        },
        onPage: (page) => memory!.receivePage(page),
      });
      if (memory === undefined) throw new KemariError('KEMARI_MIGRATION_FORMAT', 'the probe stream has no RAM blocks');
      if (sharedFile !== undefined) {
        const block = memory.block(SHARED_MEMORY_BACKEND_ID);
        if (block === undefined) {
          throw new KemariError('KEMARI_INVALID_ARGUMENT', `no RAM block ${SHARED_MEMORY_BACKEND_ID}: was QEMU started with the shared memory backend?`, {
            details: { blocks: memory.blocks.map((b) => b.name) },
          });
        }
        await sharedFile.scanInto(memory, block);
      }
      memory.markAllChanged();
      const state = qemuDeviceState({
        machineType: stream.configuration.machineType,
        capabilities: stream.configuration.capabilities,
        ramSection: stream.ramSection,
        blocks: [...memory.blocks],
        device: stream.device,
      });
      const vm = new QemuVm({
        qmp: options.qmp,
        disk: options.disk,
        process: options.process,
        ownsDisk: options.ownsDisk === true,
        memory,
        receiver,
        sharedFile,
        migrationTimeoutMs: options.migrationTimeoutMs,
        state,
        paused: !status.running,
        streamCurrent: true,
      });
      vm.counters.streams = 1;
      vm.counters.lastStreamBytes = stream.streamBytes;
      if (status.running) await vm.resume();
      return vm;
    } catch (error) {
      receiver.close();
      await sharedFile?.close();
      throw error;
    }
  }

  /**
   * Serves `disk` over NBD, starts QEMU on it (`machineArgs` + shared memory + the drive + `extraArgs`) and
   * attaches. The VM owns the process and the disk server: {@link close} kills and closes them. On failure
   * everything started is stopped again.
   */
  static async launch(options: QemuVmLaunchOptions): Promise<QemuVm> {
    const { dir } = options;
    let disk: QemuDisk | undefined;
    let qemu: QemuProcess | undefined;
    try {
      if (options.disk !== undefined) {
        disk = await QemuDisk.serve({
          backend: options.disk,
          socketPath: join(dir, 'nbd.sock'),
          ...(options.diskLogBytesMax === undefined ? {} : { logBytesMax: options.diskLogBytesMax }),
        });
      }
      qemu = await startQemu({
        ...(options.binary === undefined ? {} : { binary: options.binary }),
        args: qemuArgs(options, disk?.driveArgs() ?? [], options.startPaused === true ? ['-S'] : []),
        qmpSocketPath: join(dir, 'qmp.sock'),
        ...(options.startTimeoutMs === undefined ? {} : { startTimeoutMs: options.startTimeoutMs }),
      });
      return await QemuVm.attach({
        qmp: qemu.qmp,
        ...(disk === undefined ? {} : { disk }),
        migrationSocketPath: join(dir, 'migrate.sock'),
        ...(options.sharedMemory === undefined ? {} : { sharedMemory: options.sharedMemory }),
        ...(options.migrationTimeoutMs === undefined ? {} : { migrationTimeoutMs: options.migrationTimeoutMs }),
        process: qemu,
        ownsDisk: true,
        ...(options.pagesPool === undefined ? {} : { pagesPool: options.pagesPool }),
      });
    } catch (error) {
      await qemu?.kill();
      await disk?.close();
      throw error;
    }
  }

  /**
   * Wraps a QEMU whose whole state is known without a probe stream: a standby that was just restored from a
   * snapshot (see QemuStandby). The shadow starts as `memory` with every page changed, so the first capture (the
   * new primary's full sync) describes everything. With `changeDetection: 'fingerprints'` the shared block of
   * `memory` must already be in the shared file (QemuStandby writes it there before the restore stream): only its
   * fingerprints are taken from `memory`, and nothing is written into the file (the guest may be running on).
   */
  static async adopt(options: QemuVmAdoptOptions): Promise<QemuVm> {
    const shared = options.sharedMemory;
    if (shared !== undefined) checkSharedMemory(shared);
    await configureCheckpointMigration(options.qmp, shared !== undefined);
    const receiver = await MigrationReceiver.listen(options.migrationSocketPath);
    let sharedFile: SharedMemoryFile | undefined;
    let memory: GuestMemory;
    try {
      if (shared !== undefined) sharedFile = await SharedMemoryFile.open(shared.path, shared.sizeBytes);
      if (options.pagesPool !== undefined) sharedFile?.usePool(options.pagesPool);
      memory = new GuestMemory(options.deviceState.blocks, guestMemoryOptions(shared, sharedFile));
      memory.load(options.memory);
    } catch (error) {
      receiver.close();
      await sharedFile?.close();
      throw error;
    }
    return new QemuVm({
      qmp: options.qmp,
      disk: options.disk,
      process: options.process,
      ownsDisk: options.ownsDisk === true,
      memory,
      receiver,
      sharedFile,
      migrationTimeoutMs: options.migrationTimeoutMs,
      state: options.deviceState,
      paused: options.paused,
      streamCurrent: options.paused,
    });
  }

  /** True while paused by {@link pause} (or attached stopped). */
  get paused(): boolean {
    return this.isPaused;
  }

  /** The device state of the last stream (machine type, blocks, device blob). */
  get deviceState(): QemuDeviceState {
    return this.state;
  }

  /** Counters and timings (a copy), and the bytes held to find changed pages. */
  stats(): QemuVmStats {
    return {
      ...this.counters,
      shadowBytes: this.memory.shadowBytes,
      fingerprintBytes: this.memory.fingerprintBytes,
      poolScanFailures: this.sharedFile?.poolFailures ?? 0,
      poolDropped: this.sharedFile?.poolDropped ?? false,
    };
  }

  /** QMP `stop`: its reply comes once the vCPUs stopped and block I/O drained. */
  async pause(): Promise<void> {
    this.checkOpen();
    // Set before the command: QEMU sends the STOP event before its reply, and a fault watcher asks in between.
    this.ownStop = true;
    await this.qmp.execute('stop');
    this.isPaused = true;
  }

  /**
   * True from kemari's own `stop` until its `cont` completes: a STOP event then is a checkpoint's, not a fault
   * (pass `() => vm.stoppedByKemari` to watchQemuFaults).
   */
  get stoppedByKemari(): boolean {
    return this.ownStop;
  }

  private ownStop = false;

  /** QMP `cont` (also from `postmigrate` after a capture, or `io-error` after a full disk log). */
  async resume(): Promise<void> {
    this.checkOpen();
    this.streamCurrent = false;
    await this.qmp.execute('cont');
    this.isPaused = false;
    this.ownStop = false;
  }

  /**
   * Captures the epoch; the VM must be paused (else KEMARI_INVALID_ARGUMENT). Migrates the stopped VM to our socket
   * (unless the guest has not run since the last stream), returns the pages that differ from the last capture
   * (every page when `full`) as copies (with `inPlace`: views of the shadow, or of the mapped file in fingerprints
   * mode with the page addon), the device state, the disk writes logged since the last capture in order (the whole
   * disk when `full` or `wholeDisks`), and the state digest when asked. Failures: KEMARI_QMP_ERROR,
   * KEMARI_MIGRATION_FORMAT, KEMARI_TIMEOUT, KEMARI_QEMU_EXITED; the pages a failed capture saw stay marked, so the
   * next capture still returns them.
   */
  async capture(options: CaptureOptions): Promise<EpochCapture> {
    this.checkOpen();
    if (!this.isPaused) throw new KemariError('KEMARI_INVALID_ARGUMENT', 'capture: the VM must be paused', { details: { field: 'paused' } });
    if (this.streamCurrent) {
      this.counters.lastMigrateMs = 0;
      this.counters.lastScanMs = 0;
    } else {
      await this.takeStream();
    }
    const full = options.full === true;
    const shared = options.sharedBuffers === true;
    const inPlace = options.inPlace === true && this.memory.takesInPlace;
    const { pages, send } = this.memory.takePages(full, (bytes) => this.captureBuffers.take(bytes, shared), inPlace);
    const devices: DeviceState[] = [{ name: QEMU_DEVICE_NAME, state: this.state }];
    let diskWrites: DiskWrite[] = [];
    if (this.disk !== undefined) {
      if (full || options.wholeDisks === true) {
        this.disk.discardLog();
        diskWrites = await this.disk.wholeDisk();
      } else {
        diskWrites = this.disk.takeLog();
      }
    }
    const stateDigest = options.digest === true ? await this.digest() : EMPTY;
    this.counters.captures += 1;
    this.counters.pagesCaptured += pages.length;
    this.counters.lastPages = pages.length;
    const capture: EpochCapture = { full, pages, devices, diskWrites, stateDigest, ...(inPlace ? { inPlace } : {}) };
    this.captureBuffers.own(capture, send);
    return capture;
  }

  /**
   * Marks pages changed (see VmAdapter.markDirty): the next capture returns them, as the shadow (or the shared file)
   * holds them then. With it a Primary may capture in place (`captureInPlace`): the pages are then views of the
   * shadow (or of the mapped file), which the primary encodes or copies while the VM is stopped.
   */
  markDirty(pageIndices: Uint32Array): void {
    this.checkOpen();
    this.memory.markChanged(pageIndices);
  }

  /** Takes back a committed capture's send buffer for a later capture (see VmAdapter.releaseCapture). */
  releaseCapture(capture: EpochCapture): void {
    this.captureBuffers.release(capture);
  }

  /**
   * The state digest (computeStateDigest) of the last captured state: the same inputs a Replica hashes (page CRCs
   * of the linear memory, the `qemu` device state, the disk's block CRCs), so the secondary's verification matches.
   * With `changeDetection: 'fingerprints'` the shared block's pages are hashed from its file, which holds the last
   * captured state only until the guest runs again: so it is KEMARI_INVALID_ARGUMENT unless the VM is paused and
   * captured since it last ran (as inside {@link capture}), never a digest of some other state.
   */
  async digest(): Promise<Uint8Array> {
    if (this.memory.changeDetection === 'fingerprints' && !this.streamCurrent) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', 'digest: with fingerprints change detection the VM must be paused and captured since it last ran', {
        details: { field: 'paused', changeDetection: this.memory.changeDetection },
      });
    }
    const disks =
      this.disk === undefined ? [] : [{ id: this.disk.id, bytes: this.disk.sizeBytes, blockBytes: DISK_DIGEST_BLOCK_BYTES, blockCrcs: await this.disk.blockCrcs() }];
    return computeStateDigest({
      memoryBytes: this.memoryBytes,
      pageBytes: this.pageBytes,
      pageCrcs: this.memory.pageCrcs(),
      devices: new Map([[QEMU_DEVICE_NAME, this.state]]),
      disks,
    });
  }

  /**
   * A copy of `length` bytes of the linear guest memory at `offset`, as of the last stream (for tests and tools:
   * the counter of a guest is `read(pc.ram offset + address, 8)`). With `changeDetection: 'fingerprints'` the
   * shared block is read from its file: as of the last stream while the VM is paused since, the running guest's
   * bytes otherwise (KEMARI_CLOSED once the VM is closed).
   */
  read(offset: number, length: number): Uint8Array {
    return this.memory.read(offset, length);
  }

  /**
   * Stops listening for checkpoints; kills the process and closes the disk server when this VM owns them.
   * Idempotent.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.receiver.close();
    await this.sharedFile?.close();
    await this.process?.kill();
    if (this.ownsDisk) await this.disk?.close();
  }

  /** Migrates the stopped VM, updating the shadow and the device state. */
  private async takeStream(): Promise<void> {
    const startMs = performance.now();
    const memory = this.memory;
    const stream = await this.receiver.receive(this.qmp, {
      xIgnoreShared: this.sharedFile !== undefined,
      ...(this.migrationTimeoutMs === undefined ? {} : { timeoutMs: this.migrationTimeoutMs }),
      onBlocks: (blocks) => this.checkLayout(blocks),
      onPage: (page) => memory.receivePage(page),
    });
    const streamedMs = performance.now();
    let scanMs = 0;
    if (this.sharedFile !== undefined) {
      for (const block of memory.blocks) if (block.shared) await this.sharedFile.scanInto(memory, block);
      scanMs = performance.now() - streamedMs;
    }
    this.state = qemuDeviceState({
      machineType: stream.configuration.machineType,
      capabilities: stream.configuration.capabilities,
      ramSection: stream.ramSection,
      blocks: [...memory.blocks],
      device: stream.device,
    });
    this.streamCurrent = true;
    this.counters.streams += 1;
    this.counters.lastStreamBytes = stream.streamBytes;
    this.counters.lastMigrateMs = streamedMs - startMs;
    this.counters.lastScanMs = scanMs;
  }

  private checkLayout(blocks: readonly RamBlockInfo[]): void {
    if (!this.memory.sameLayout(blocks)) {
      throw new KemariError('KEMARI_MIGRATION_FORMAT', 'the RAM block layout of the VM changed (hot-plug?): it cannot be checkpointed into the same memory', {
        details: { expected: this.memory.blocks.map((b) => `${b.name}:${b.lengthBytes}`), actual: blocks.map((b) => `${b.name}:${b.lengthBytes}`) },
      });
    }
  }

  private checkOpen(): void {
    if (this.closed) throw new KemariError('KEMARI_CLOSED', 'the QemuVm is closed');
  }
}

/** The GuestMemory options of a VM with `shared` memory whose file is `file`. */
function guestMemoryOptions(shared: SharedMemoryOptions | undefined, file: SharedMemoryFile | undefined): GuestMemoryOptions {
  if (shared === undefined || file === undefined) return {};
  return { changeDetection: shared.changeDetection ?? 'shadow', sharedSources: new Map([[SHARED_MEMORY_BACKEND_ID, file]]) };
}
