/**
 * The standby QEMU of `kemari standby --qemu`: a QEMU with the primary's machine waiting (`-S -incoming defer`) for
 * a restore, so a takeover only loads the committed epoch and continues the guest instead of starting QEMU first
 * (~0.1 to 0.3 s saved on the failover path).
 *
 * Why it starts when the primary connects: QEMU learns its disk's size when it starts (it connects to its NBD drive
 * then), and the size is known only from the primary's HELLO. A primary that comes back with another disk gets a
 * new standby QEMU; a takeover with none ready (a secondary recovered from its journal, a standby QEMU that died)
 * starts one from the snapshot. The guest's serial port is on a SerialTap that listens from the start: QEMU connects
 * to it when it starts. Its output passes straight through to the outside until the VM is protected again
 * (`--then-protect`), then through the new primary's event-tap; at a takeover it is held until the promotion's
 * replay has been written out (see {@link SerialOutside.hold}).
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { KemariError } from '../errors.js';
import type { QemuVm } from '../qemu/qemu-vm.js';
import { QemuStandby } from '../qemu/qemu-standby.js';
import type { QemuRestoreStats } from '../qemu/qemu-standby.js';
import type { OutputSink } from '../qemu/taps/output-pipeline.js';
import { SerialTap } from '../qemu/taps/serial-tap.js';
import type { ReplicaSnapshot } from '../replica/replica.js';
import type { DiskInfo } from '../wire/bodies/hello.js';
import type { SerialOutside } from './serial-outside.js';

/** Options of {@link CliQemuStandby.create}. */
export interface CliQemuStandbyOptions {
  /** The primary's machine arguments (see qemu-options.ts). */
  machineArgs: readonly string[];
  /** Directory for the sockets. */
  dir: string;
  /** Where the restored guest's serial output goes. */
  outside: SerialOutside;
  /** Told about a standby QEMU that could not be started or died (the CLI reports it). */
  onProblem: (error: KemariError) => void;
  /** Told when a standby QEMU is up and waiting. */
  onReady?: (pid: number) => void;
}

interface Started {
  standby: QemuStandby;
  /** The disk layout it was started for. */
  key: string;
  exited: boolean;
  /** Closed on purpose (replaced, or the command stops): its exit is no problem. */
  retired: boolean;
}

/** The standby QEMU and its serial tap; see the module comment. */
export class CliQemuStandby {
  private current: Promise<Started | undefined> | undefined;
  private starts = 0;
  private sinkNow: OutputSink = passThrough;
  private restored: QemuVm | undefined;
  private closed = false;

  private constructor(
    private readonly options: CliQemuStandbyOptions,
    /** The serial tap of every standby QEMU started here. */
    readonly tap: SerialTap,
  ) {}

  /** Listens for the serial port; no QEMU is started yet (see {@link prepare}). */
  static async create(options: CliQemuStandbyOptions): Promise<CliQemuStandby> {
    await mkdir(options.dir, { recursive: true });
    let self: CliQemuStandby | undefined;
    const tap = await SerialTap.listen({
      path: join(options.dir, 'serial.sock'),
      sink: (channel, data) => self!.sinkNow(channel, data),
      output: options.outside.write,
    });
    self = new CliQemuStandby(options, tap);
    return self;
  }

  /** Timings of the takeover's restore (QemuStandby's), once done. */
  lastRestore: QemuRestoreStats | undefined;

  /** The restored VM, after a takeover. */
  get vm(): QemuVm | undefined {
    return this.restored;
  }

  /** The restored guest's output goes through `sink` from now on (the new primary's event-tap). */
  setSink(sink: OutputSink): void {
    this.sinkNow = sink;
  }

  /**
   * Starts a standby QEMU for a primary with `disks` (at most one disk: a QemuVm serves one), unless one for the
   * same disks is up. Failures are reported through `onProblem`; a takeover then starts one itself.
   */
  prepare(disks: readonly DiskInfo[]): void {
    if (this.closed || this.restored !== undefined) return;
    const key = JSON.stringify(disks.map((d) => [d.id, d.bytes]));
    const previous = this.current;
    this.current = (async () => {
      const before = await previous;
      if (before !== undefined && before.key === key && !before.exited) return before;
      await retire(before);
      return this.start(disks, key).catch((error: unknown) => {
        this.options.onProblem(error instanceof KemariError ? error : new KemariError('KEMARI_QEMU_EXITED', `the standby QEMU did not start: ${String(error)}`, { cause: error }));
        return undefined;
      });
    })();
  }

  /**
   * The Secondary's `restoreVm`: holds the serial outside (the replay goes first), then restores `snapshot` into
   * the waiting QEMU, or into a new one when none fits.
   */
  async restore(snapshot: ReplicaSnapshot): Promise<QemuVm> {
    this.options.outside.hold();
    const disks = snapshot.disks.map((d) => ({ id: d.id, bytes: d.bytes }));
    const key = JSON.stringify(disks.map((d) => [d.id, d.bytes]));
    const ready = await this.current;
    this.current = undefined;
    let started = ready;
    if (started === undefined || started.key !== key || started.exited) {
      await retire(started);
      started = await this.start(disks, key);
    }
    // Its process is the restored VM's from now on (or spent, if the restore fails): its exit is reported there.
    started.retired = true;
    this.restored = await started.standby.restore(snapshot);
    this.lastRestore = started.standby.lastRestore;
    return this.restored;
  }

  /** Kills a waiting standby QEMU and the restored VM (its disk is served by this process), closes the tap. */
  async close(): Promise<void> {
    this.closed = true;
    const waiting = await this.current;
    this.current = undefined;
    await retire(waiting);
    await this.restored?.close();
    await this.tap.close();
  }

  private async start(disks: readonly DiskInfo[], key: string): Promise<Started> {
    if (disks.length > 1) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', `a standby QEMU serves one disk, the primary has ${disks.length}`, { details: { disks: disks.length } });
    }
    const dir = join(this.options.dir, `q${++this.starts}`);
    await mkdir(dir, { recursive: true });
    const disk = disks[0];
    const standby = await QemuStandby.start({
      machineArgs: this.options.machineArgs,
      extraArgs: this.tap.qemuArgs(),
      dir,
      ...(disk === undefined ? {} : { diskBytes: disk.bytes, diskId: disk.id }),
    });
    const started: Started = { standby, key, exited: false, retired: false };
    this.options.onReady?.(standby.process.pid);
    void standby.process.exited.then((exit) => {
      started.exited = true;
      if (!started.retired && this.restored === undefined && !this.closed) {
        this.options.onProblem(new KemariError('KEMARI_QEMU_EXITED', `the standby QEMU exited (${exit.signal ?? `code ${exit.code}`}); a takeover starts a new one`, { details: { ...exit } }));
      }
    });
    return started;
  }
}

async function retire(started: Started | undefined): Promise<void> {
  if (started === undefined) return;
  started.retired = true;
  await started.standby.close();
}

/** Before the VM is protected again, its output goes straight out. */
const passThrough: OutputSink = async () => {};
