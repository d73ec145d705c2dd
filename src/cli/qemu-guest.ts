/**
 * The QEMU guest `kemari protect` runs or attaches to: `--qemu-image` launches QEMU on a raw image served by
 * kemari's NBD server (every write rides in its epoch's transaction) with its serial port on a SerialTap (output
 * leaves only once its epoch is acked); `--qmp` attaches to a QEMU that already runs (its disk is not captured and
 * its serial is not tapped: kemari did not start it). Either way the VM is protected through a
 * {@link QemuFaultGuard}, so QEMU's faults and death fail over to the standby at once.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { KemariError } from '../errors.js';
import type { Primary } from '../primary/primary.js';
import { FileNbdBackend } from '../qemu/nbd/file-nbd-backend.js';
import { QemuVm } from '../qemu/qemu-vm.js';
import { QmpClient } from '../qemu/qmp-client.js';
import { SerialTap } from '../qemu/taps/serial-tap.js';
import { LateSink } from './late-sink.js';
import { QemuFaultGuard } from './qemu-fault-guard.js';
import type { SerialOutside } from './serial-outside.js';

/** Options of {@link CliQemuGuest.launch}. */
export interface LaunchOptions {
  /** The raw disk image, served over NBD (writes land in it). */
  image: string;
  /** Machine arguments (see qemu-options.ts). */
  machineArgs: readonly string[];
  /** Directory for the sockets. */
  dir: string;
  /** Where released serial output goes. */
  outside: SerialOutside;
}

/** A QEMU protected by `kemari protect`; see the module comment. */
export class CliQemuGuest {
  private unwatch: (() => void) | undefined;

  private constructor(
    /** The adapter to protect (the QemuVm behind its fault guard). */
    readonly guard: QemuFaultGuard,
    /** The serial tap, when kemari launched the QEMU. */
    readonly tap: SerialTap | undefined,
    private readonly backend: FileNbdBackend | undefined,
    /** True when kemari started this QEMU (and stops it on close). */
    readonly launched: boolean,
    private readonly sink: LateSink,
  ) {}

  /** The QemuVm. */
  get vm(): QemuVm {
    return this.guard.vm;
  }

  /**
   * Serves the image, listens for the serial port and starts QEMU on both, stopped (`-S`): the guest runs only
   * once the full sync captured it, so none of its output escapes unprotected.
   */
  static async launch(options: LaunchOptions): Promise<CliQemuGuest> {
    await mkdir(options.dir, { recursive: true });
    const backend = await FileNbdBackend.open(options.image);
    const sink = new LateSink();
    let tap: SerialTap | undefined;
    try {
      tap = await SerialTap.listen({ path: join(options.dir, 'serial.sock'), sink: sink.sink, output: options.outside.write });
      // -no-shutdown: a guest that powers itself off stops QEMU instead of ending it, so the stand-down captures its
      // last epoch (its last outputs leave) before the QEMU is closed.
      const vm = await QemuVm.launch({ machineArgs: options.machineArgs, extraArgs: [...tap.qemuArgs(), '-no-shutdown'], dir: options.dir, disk: backend, startPaused: true });
      return new CliQemuGuest(new QemuFaultGuard(vm), tap, backend, true, sink);
    } catch (error) {
      await tap?.close();
      await backend.close();
      throw error;
    }
  }

  /** Attaches to the QEMU whose QMP socket is `qmpPath` (an absolute path). */
  static async attach(qmpPath: string, dir: string): Promise<CliQemuGuest> {
    await mkdir(dir, { recursive: true });
    const qmp = await QmpClient.connect(qmpPath).catch((error: unknown) => {
      throw new KemariError('KEMARI_CONNECT_FAILED', `--qmp: no QEMU answers on ${qmpPath}: ${(error as Error).message}`, { cause: error, details: { path: qmpPath } });
    });
    try {
      const vm = await QemuVm.attach({ qmp, migrationSocketPath: join(dir, 'migrate.sock') });
      return new CliQemuGuest(new QemuFaultGuard(vm), undefined, undefined, false, new LateSink());
    } catch (error) {
      qmp.close();
      throw error;
    }
  }

  /** From now on the guest's output is held by `primary`'s event-tap, and QEMU's faults go to it. */
  bind(primary: Primary): void {
    this.sink.bind(primary);
    this.unwatch = this.guard.watch(primary);
  }

  /**
   * Stops watching and closes the tap; a launched QEMU is killed (its disk is served by this process, so it could
   * not run on without it), an attached one is left running and only its QMP session is closed.
   */
  async close(): Promise<void> {
    this.unwatch?.();
    await this.tap?.close();
    await this.vm.close();
    if (!this.launched) this.vm.qmp.close();
    await this.backend?.close();
  }
}
