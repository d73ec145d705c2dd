/**
 * QemuFaultGuard with a guest that powers itself off (the kemari test guest, `powerOffAfterTicks`), in a real QEMU
 * run with `-no-shutdown`: the guard asks its receiver to stand down (once, with QEMU's reason) instead of reporting
 * a death; it never resumes the powered-off VM (a `cont` after a capture would run it again); and QEMU's later end is
 * a death again only when the stand-down failed. The receiver is a recorder here: the Primary's side of the
 * stand-down is test/failover/stand-down.test.ts's, and the whole path test/cli/cli-qemu.test.ts's.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { buildGuest } from '../../examples/guest/build-guest.js';
import { QemuFaultGuard } from '../../src/cli/qemu-fault-guard.js';
import type { GuardStandDown } from '../../src/cli/qemu-fault-guard.js';
import { KemariError } from '../../src/errors.js';
import type { Fault, StoodDownPrimary } from '../../src/primary/primary.js';
import { MemoryNbdBackend } from '../../src/qemu/nbd/memory-nbd-backend.js';
import { QemuVm } from '../../src/qemu/qemu-vm.js';
import { HAS_QEMU, NO_QEMU_MESSAGE, tempDir } from '../helpers/qemu.js';

const HAS_NASM = spawnSync('nasm', ['-v'], { stdio: 'ignore' }).status === 0;
const SKIP = !HAS_QEMU || !HAS_NASM;
const SKIP_MESSAGE = !HAS_QEMU ? NO_QEMU_MESSAGE : 'nasm not found: guest power-off tests skipped (apt-get install nasm)';
const MACHINE_ARGS: readonly string[] = ['-machine', 'pc,accel=tcg', '-m', '32', '-nodefaults', '-display', 'none', '-no-reboot', '-no-shutdown'];

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

/** A fault receiver that records, and answers stand-downs as told. */
class Recorder {
  readonly faults: Fault[] = [];
  readonly standDowns: string[] = [];
  constructor(private readonly answer: (reason: string) => Promise<StoodDownPrimary>) {}
  reportFault(fault: Fault): Promise<void> {
    this.faults.push(fault);
    return Promise.resolve();
  }
  standDown(reason: string): Promise<StoodDownPrimary> {
    this.standDowns.push(reason);
    return this.answer(reason);
  }
}

async function poweredOff(answer: (reason: string) => Promise<StoodDownPrimary>) {
  const dir = tempDir();
  cleanups.push(() => dir.remove());
  const { imagePath } = await buildGuest({ tickHz: 100, serialEveryTicks: 0, diskEveryTicks: 0, powerOffAfterTicks: 20 }, dir.path);
  mkdirSync(join(dir.path, 'q'));
  const vm = await QemuVm.launch({ machineArgs: MACHINE_ARGS, dir: join(dir.path, 'q'), disk: new MemoryNbdBackend(new Uint8Array(readFileSync(imagePath))), startPaused: true });
  cleanups.push(() => vm.close());
  const guard = new QemuFaultGuard(vm);
  const receiver = new Recorder(answer);
  guard.watch(receiver);
  await vm.resume();
  const standDown = await guard.standDown;
  return { vm, guard, receiver, standDown };
}

const status = async (vm: QemuVm): Promise<string> => ((await vm.qmp.execute('query-status')) as { status: string }).status;

describe.skipIf(SKIP)(`QemuFaultGuard and a guest that powers itself off (${SKIP ? SKIP_MESSAGE : 'qemu and nasm present'})`, () => {
  it('stands down once with QEMU’s reason, reports no death, and then QEMU’s end is no death either', async () => {
    const { vm, guard, receiver, standDown } = await poweredOff(async (reason) => ({ txn: 7, reason }));
    expect(standDown).toEqual({ stoodDown: { txn: 7, reason: 'SHUTDOWN (guest-shutdown)' } } satisfies GuardStandDown);
    expect(receiver.standDowns).toEqual(['SHUTDOWN (guest-shutdown)']);
    expect(guard.guestStoppedReason).toBe('SHUTDOWN (guest-shutdown)');
    expect(await status(vm)).toBe('shutdown');
    // The STOP that followed the SHUTDOWN is expected: only the guest's warning was reported.
    expect(receiver.faults).toEqual([{ source: 'qmp', severity: 'warning', detail: 'SHUTDOWN (guest-shutdown)' }]);
    await vm.process!.kill('SIGKILL');
    await guard.gone;
    await new Promise((r) => setTimeout(r, 50));
    expect(receiver.faults.filter((f) => f.severity === 'fatal')).toEqual([]);
  });

  it('never resumes the powered-off VM, even after a capture left it in postmigrate (where cont would run it again)', async () => {
    const { vm, guard } = await poweredOff(async (reason) => ({ txn: 1, reason }));
    await guard.pause();
    await guard.capture({ full: true, digest: false });
    expect(await status(vm)).toBe('postmigrate');
    await guard.resume();
    expect(await status(vm)).toBe('postmigrate');
  });

  it('a stand-down that failed makes QEMU’s end a death again', async () => {
    const refused = new KemariError('KEMARI_NOT_PROTECTED', 'not protected');
    const { vm, guard, receiver, standDown } = await poweredOff(() => Promise.reject(refused));
    expect(standDown).toEqual({ error: refused });
    await vm.process!.kill('SIGKILL');
    await guard.gone;
    await new Promise((r) => setTimeout(r, 50));
    expect(receiver.faults.filter((f) => f.severity === 'fatal')).toEqual([expect.objectContaining({ source: 'qemu', severity: 'fatal' })]);
  });
});
