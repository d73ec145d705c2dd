/**
 * The QemuVm a Primary protects, wrapped so that QEMU's death always ends in a failover to the standby.
 *
 * Why a wrapper: `Primary.reportFault` quiesces and sends FAILOVER only after pausing the VM, and a QEMU killed with
 * SIGKILL refuses the `stop` (KEMARI_QEMU_EXITED), so the FAILOVER was never sent (measured: the secondary only saw
 * the primary fall silent, and without an arbiter silence never promotes). Worse, a QEMU that dies during a
 * checkpoint makes the capture fail first, which the Primary takes for a lost link: it drops the connection and
 * the fault reported afterwards finds nothing to hand over. The guard fixes both from the adapter's side:
 * - a `pause` of a QEMU that is gone succeeds (a dead QEMU runs nothing; that is all a pause promises);
 * - a `capture` or `resume` that fails because QEMU is gone reports the fatal fault *before* the error reaches the
 *   Primary, so the Primary is already quiesced when the capture's failure arrives, and hands over.
 * {@link QemuFaultGuard.watch} also wires {@link watchQemuFaults} (QMP events, QMP closing, the process exiting) to
 * the Primary.
 *
 * A guest that powers itself off is not a failure: QEMU reports SHUTDOWN (guest), then stops (run with
 * `-no-shutdown`, as `kemari protect` launches it) or exits. The guard then asks the Primary to stand down at once
 * (Primary.standDown: its last capture succeeds when QEMU stayed, and finds QEMU gone, so no last epoch, when it
 * exited), so the standby does not resume the guest;
 * from then on it never resumes the VM itself, and QEMU's end is not reported as a death. Should the stand-down fail
 * (not protected, no confirmation), QEMU's end is reported after all: the standby may then take over, as before. Once Primary.reportFault tolerates a failed pause and treats a VM failure as a fault rather than a
 * link failure, only the watching is left.
 */
import { KemariError } from '../errors.js';
import type { Fault, StandDownOptions, StoodDownPrimary } from '../primary/primary.js';
import { watchQemuFaults } from '../qemu/qemu-faults.js';
import type { QemuFault } from '../qemu/qemu-faults.js';
import type { QemuVm } from '../qemu/qemu-vm.js';
import type { CaptureOptions, EpochCapture, VmAdapter } from '../vm/adapter.js';
import type { DiskInfo } from '../wire/bodies/hello.js';

/** How long a failed capture waits for QEMU's death to be noticed before it is taken for a plain failure (ms). */
export const DEATH_CONFIRM_MS = 250;

/** What the guard reports faults to: a Primary (or anything with its `reportFault`, and `standDown` if it can). */
export interface FaultReceiver {
  reportFault(fault: Fault): Promise<void>;
  standDown?(reason: string, options?: StandDownOptions): Promise<StoodDownPrimary>;
}

/** How a stand-down the guard started (for a guest that stopped on its own) ended. */
export type GuardStandDown = { stoodDown: StoodDownPrimary } | { error: unknown };

/** A QemuVm whose failures from QEMU's death become a fatal fault first; see the module comment. */
export class QemuFaultGuard implements VmAdapter {
  readonly memoryBytes: number;
  readonly pageBytes: number;
  readonly deviceNames: readonly string[];
  readonly disks: readonly DiskInfo[];
  /** Settles once QEMU is known gone: its process exited, or (attached QEMU) its QMP session closed. */
  readonly gone: Promise<string>;
  /**
   * Settles once a stand-down the guard started (the guest powered itself off) has ended, confirmed or not; never
   * settles while the guest has not stopped on its own.
   */
  readonly standDown: Promise<GuardStandDown>;
  private settleStandDown!: (outcome: GuardStandDown) => void;
  /** Set once the guest powered itself off: the VM is never resumed again. */
  private guestStopped: string | undefined;
  private standDownFailed = false;
  private receiver: FaultReceiver | undefined;
  private deathReported = false;
  private goneReason: string | undefined;
  private unwatch: (() => void) | undefined;

  /** `vm`: the QEMU to protect. Its process's end counts when the VM owns it, else its QMP session closing. */
  constructor(readonly vm: QemuVm) {
    this.memoryBytes = vm.memoryBytes;
    this.pageBytes = vm.pageBytes;
    this.deviceNames = vm.deviceNames;
    this.disks = vm.disks;
    const signs: Promise<string>[] = [vm.qmp.closed.then((reason) => `the QMP session closed: ${reason.message}`)];
    if (vm.process !== undefined) signs.push(vm.process.exited.then((exit) => `QEMU exited (${exit.signal ?? `code ${exit.code}`})`));
    this.gone = Promise.race(signs);
    void this.gone.then((reason) => (this.goneReason = reason));
    this.standDown = new Promise((resolve) => (this.settleStandDown = resolve));
  }

  /** The guest's own SHUTDOWN, if it powered itself off (see the module comment). */
  get guestStoppedReason(): string | undefined {
    return this.guestStopped;
  }

  /**
   * From now on faults go to `receiver` (the Primary, once started): QMP events and QEMU's end through
   * watchQemuFaults, and the guard's own findings. Returns a function that stops watching.
   */
  watch(receiver: FaultReceiver): () => void {
    this.receiver = receiver;
    this.unwatch?.();
    const vm = this.vm;
    const stop = watchQemuFaults(
      { qmp: vm.qmp, ...(vm.process === undefined ? {} : { exited: vm.process.exited }) },
      (fault) => this.report(fault),
      () => vm.stoppedByKemari,
      (detail) => this.onGuestStopped(detail),
    );
    this.unwatch = () => {
      stop();
      this.receiver = undefined;
    };
    return this.unwatch;
  }

  /** QMP `stop`; succeeds when QEMU is gone (nothing runs any more). */
  async pause(): Promise<void> {
    try {
      await this.vm.pause();
    } catch (error) {
      if (!(await this.isGone(error))) throw error;
      this.reportDeath();
    }
  }

  /**
   * QMP `cont`; a failure because QEMU is gone is reported as a fatal fault before it is thrown. Once the guest has
   * powered itself off, nothing: a `cont` after a capture (runstate postmigrate) would run it again.
   */
  async resume(): Promise<void> {
    if (this.guestStopped !== undefined) return;
    try {
      await this.vm.resume();
    } catch (error) {
      if (await this.isGone(error)) this.reportDeath();
      throw error;
    }
  }

  /** The QemuVm's capture; a failure because QEMU is gone is reported as a fatal fault before it is thrown. */
  async capture(options: CaptureOptions): Promise<EpochCapture> {
    try {
      return await this.vm.capture(options);
    } catch (error) {
      if (!(await this.isGone(error))) throw error;
      this.reportDeath();
      // Said as what it is (the QemuVm may say otherwise: a `stop` the guard let pass left it unpaused), so the
      // Primary can tell a VM that is gone from any other failed capture.
      if (error instanceof KemariError && error.code === 'KEMARI_QEMU_EXITED') throw error;
      throw new KemariError('KEMARI_QEMU_EXITED', `the capture failed: QEMU is gone (${this.goneReason ?? 'its death is confirmed'})`, { cause: error });
    }
  }

  /**
   * The guest powered itself off: the receiver stands down at once, in this event's turn, so a checkpoint that
   * QEMU's end breaks meanwhile is already the stand-down's (the Primary goes on without a last epoch then, as it
   * does when the last capture itself finds QEMU gone). Without `standDown`, or once it failed, QEMU's end is a
   * death as before.
   */
  private onGuestStopped(detail: string): void {
    if (this.guestStopped !== undefined) return;
    this.guestStopped = detail;
    const receiver = this.receiver;
    if (receiver?.standDown === undefined) return this.failStandDown(new KemariError('KEMARI_INVALID_ARGUMENT', 'the fault receiver cannot stand down'));
    receiver.standDown(detail).then(
      (stoodDown) => this.settleStandDown({ stoodDown }),
      (error: unknown) => this.failStandDown(error),
    );
  }

  /** The stand-down failed: the standby may take over after all, and QEMU's end is a death again. */
  private failStandDown(error: unknown): void {
    this.standDownFailed = true;
    this.settleStandDown({ error });
    if (this.goneReason !== undefined) this.reportDeath();
  }

  /** Hands a fault to the receiver (once for QEMU's death, whoever noticed it first). */
  private report(fault: QemuFault): void {
    if (this.receiver === undefined) return;
    if (fault.severity === 'fatal' && fault.source === 'qemu') {
      // The guest powered itself off: its QEMU's end is the stand-down's to deal with, unless that failed.
      if (this.guestStopped !== undefined && !this.standDownFailed) return;
      if (this.deathReported) return;
      this.deathReported = true;
    }
    // reportFault quiesces synchronously, before its first await: the Primary is quiesced when this returns.
    this.receiver.reportFault(fault).catch(() => {});
  }

  private reportDeath(): void {
    this.report({ source: 'qemu', severity: 'fatal', detail: this.goneReason ?? 'QEMU is gone' });
  }

  /** True when `error` comes from QEMU being gone: said so, or its death is confirmed within {@link DEATH_CONFIRM_MS}. */
  private async isGone(error: unknown): Promise<boolean> {
    if (this.goneReason !== undefined) return true;
    if (!(error instanceof KemariError)) return false;
    let timer: NodeJS.Timeout | undefined;
    const reason = await Promise.race([this.gone, new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), DEATH_CONFIRM_MS)))]);
    clearTimeout(timer);
    return reason !== undefined;
  }
}
