/**
 * Failover of a real QEMU: the primary QEMU is SIGKILLed at a random moment, and the standby QEMU must take over
 * by itself, from exactly the last committed epoch. Each round protects the kemari test guest (a `tick N` line every
 * few ticks, a disk sector every few ticks) with a Primary and a Secondary over loopback TCP (verify on), its disk
 * on kemari's NBD server and its serial port on a SerialTap whose output is recorded as "the outside". QEMU's death
 * reaches the Primary through watchQemuFaults, wired by QemuFaultGuard (src/cli/qemu-fault-guard.ts), which also
 * keeps the Primary's own `stop` of the dead QEMU and a capture the kill broke from blocking the FAILOVER (see its
 * module comment); the Primary quiesces and sends FAILOVER, and the secondary promotes at once, restoring into a
 * pre-started QemuStandby.
 *
 * Checked per round: (a) the standby guest's counter when it starts running is the committed epoch's counter (read
 * from the replica's memory at promotion), within the ticks that can elapse between QEMU's RESUME and our `xp` of
 * the counter (QemuStandby cannot restore paused); (b) the standby's disk at resume holds exactly the guest's
 * writes up to that epoch; (c) every serial line that reached the outside belongs to a committed epoch, none is
 * missing, and the standby's serial continues exactly from the committed state. Failover time (SIGKILL to the
 * guest running on the standby) is printed per round.
 *
 * The rounds are driven by a seeded PRNG (src/vm/prng.ts); the seed is printed: KEMARI_FAILOVER_SEED=N replays it.
 */
import { randomInt } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import {
  COUNTER_ADDRESS,
  RUN_MAGIC,
  RUN_MAGIC_ADDRESS,
  buildGuest,
} from '../../examples/guest/build-guest.js';
import type { GuestParams } from '../../examples/guest/build-guest.js';
import {
  checkCommittedDisk,
  checkReleasedSerial,
  checkSerialAcrossFailover,
  checkStandbySerial,
  committedCounters,
  ringSectors,
  splitLines,
  standbyDiskAtResume,
  tickNumbers,
} from '../../examples/guest/failover-checks.js';
import type { GuestCounters } from '../../examples/guest/failover-checks.js';
import { LateSink } from '../../src/cli/late-sink.js';
import { QemuFaultGuard } from '../../src/cli/qemu-fault-guard.js';
import { Primary } from '../../src/primary/primary.js';
import { MemoryNbdBackend } from '../../src/qemu/nbd/memory-nbd-backend.js';
import { QemuStandby } from '../../src/qemu/qemu-standby.js';
import { QemuVm } from '../../src/qemu/qemu-vm.js';
import type { QemuProcess } from '../../src/qemu/qemu-process.js';
import { PendingReplay } from '../../src/qemu/taps/replay.js';
import { SERIAL_CHANNEL_DEFAULT, SerialTap } from '../../src/qemu/taps/serial-tap.js';
import type { ReplicaSnapshot } from '../../src/replica/replica.js';
import { Secondary } from '../../src/secondary/secondary.js';
import type { Promotion } from '../../src/secondary/secondary.js';
import { Prng } from '../../src/vm/prng.js';
import { HAS_QEMU, NO_QEMU_MESSAGE, readGuestWords, tempDir } from '../helpers/qemu.js';

const HAS_NASM = spawnSync('nasm', ['-v'], { stdio: 'ignore' }).status === 0;
const SKIP = !HAS_QEMU || !HAS_NASM;
const SKIP_MESSAGE = !HAS_QEMU ? NO_QEMU_MESSAGE : 'nasm not found: QEMU failover tests skipped (apt-get install nasm)';
if (SKIP) console.warn(SKIP_MESSAGE);

/** Rounds per run: each kills the primary QEMU once. */
const ROUNDS = 5;
const SEED = process.env.KEMARI_FAILOVER_SEED === undefined ? randomInt(0, 2 ** 32) : Number(process.env.KEMARI_FAILOVER_SEED);
/** How long the protected guest runs before the kill: 0.3 to 1.5 s. */
const RUN_MS_MIN = 300;
const RUN_MS_MAX = 1500;

/** The machine of both QEMUs (the guest needs `-machine pc` for its IDE ports). */
const MACHINE_ARGS: readonly string[] = ['-machine', 'pc,accel=tcg', '-m', '32', '-nodefaults', '-display', 'none', '-no-reboot'];
/** A line every 3 ticks and a sector every 4 ticks at 100 Hz; the ring (1024 slots) does not wrap in a round. */
const GUEST: GuestParams = { tickHz: 100, dirtyPagesPerTick: 8, ringPages: 256, serialEveryTicks: 3, diskEveryTicks: 4, diskLbaBase: 2048, diskLbaCount: 1024, cacheFlush: false };

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface RoundReport {
  round: number;
  runMs: number;
  duringCheckpoint: boolean;
  txn: number;
  counter: number;
  detectMs: number;
  failoverMs: number;
  restoreMs: number;
  released: number;
}

const reports: RoundReport[] = [];

describe.skipIf(SKIP)(`failover of a real QEMU killed at random moments (${SKIP ? SKIP_MESSAGE : `seed ${SEED}`})`, () => {
  const prng = new Prng(SEED >>> 0);
  if (!SKIP) console.log(`failover seed: ${SEED} (KEMARI_FAILOVER_SEED=${SEED} replays these rounds)`);
  let cleanups: Array<() => unknown> = [];
  let processes: QemuProcess[] = [];

  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await Promise.resolve(cleanup()).catch(() => {});
    // Whatever is left, by PID.
    await Promise.all(processes.splice(0).map((qemu) => qemu.kill('SIGKILL')));
  });

  afterAll(() => {
    if (reports.length === 0) return;
    console.log(`failover of a real QEMU, seed ${SEED}:`);
    for (const r of reports) {
      console.log(
        `  round ${r.round}: killed after ${r.runMs} ms ${r.duringCheckpoint ? 'during a checkpoint' : 'while the guest ran'} at txn ${r.txn} (counter ${r.counter}), ${r.released} lines released; ` +
          `death noticed ${r.detectMs.toFixed(1)} ms, guest running on the standby ${r.failoverMs.toFixed(1)} ms after SIGKILL (restore ${r.restoreMs.toFixed(1)} ms)`,
      );
    }
    const times = reports.map((r) => r.failoverMs).sort((a, b) => a - b);
    console.log(`  failover time: min ${times[0]!.toFixed(1)} ms, median ${times[Math.floor(times.length / 2)]!.toFixed(1)} ms, max ${times.at(-1)!.toFixed(1)} ms`);
  });

  for (let round = 1; round <= ROUNDS; round++) {
    it(`round ${round}: SIGKILL of the primary QEMU fails over to the standby from the committed epoch`, async () => {
      const runMs = RUN_MS_MIN + prng.nextInt(RUN_MS_MAX - RUN_MS_MIN + 1);
      const dir = tempDir();
      cleanups.push(() => dir.remove());
      const { imagePath } = await buildGuest(GUEST, dir.path);
      const image = new Uint8Array(readFileSync(imagePath));

      // The standby host: its own serial tap (the promoted guest prints there), then a QEMU waiting for a restore.
      const standbyText: string[] = [];
      const standbyTap = await SerialTap.listen({ path: join(dir.path, 's-serial.sock'), sink: async () => {}, output: (data) => standbyText.push(Buffer.from(data).toString('latin1')) });
      cleanups.push(() => standbyTap.close());
      mkdirSync(join(dir.path, 's'));
      const standby = await QemuStandby.start({ machineArgs: MACHINE_ARGS, extraArgs: standbyTap.qemuArgs(), dir: join(dir.path, 's'), diskBytes: image.byteLength });
      processes.push(standby.process);
      cleanups.push(() => standby.close());

      // The primary host: the serial tap whose sink is the event-tap and whose outside is recorded.
      const released: Uint8Array[] = [];
      // The guest starts running at the full sync's capture, before Primary.start resolves: its first output waits.
      const primarySink = new LateSink();
      const tap = await SerialTap.listen({
        path: join(dir.path, 'p-serial.sock'),
        sink: primarySink.sink,
        output: (data) => released.push(Uint8Array.from(data)),
      });
      cleanups.push(() => tap.close());
      mkdirSync(join(dir.path, 'p'));
      // Started paused: the guest runs only from the full sync's capture on, so none of its output escapes unprotected.
      const vm = await QemuVm.launch({ machineArgs: MACHINE_ARGS, extraArgs: tap.qemuArgs(), dir: join(dir.path, 'p'), disk: new MemoryNbdBackend(image), startPaused: true });
      processes.push(vm.process!);
      cleanups.push(() => vm.close());

      // Promotion: the committed counters are read from the replica's memory as it is handed to the restore; the
      // standby is restored paused, its counter read exactly, and only then resumed.
      let killedAt = 0;
      let committed: GuestCounters | undefined;
      let committedDisk: Uint8Array | undefined;
      let restoreStartedAt = 0;
      let resumedAt = -1;
      let runningAt = 0;
      const secondary = await Secondary.listen<QemuVm>({
        host: '127.0.0.1',
        port: 0,
        verify: true,
        restoreVm: async (snapshot: ReplicaSnapshot) => {
          restoreStartedAt = performance.now();
          committed = committedCounters(snapshot);
          committedDisk = Uint8Array.from(snapshot.disks[0]!.data);
          const restored = await standby.restore(snapshot, { paused: true });
          const [lo, hi] = await readGuestWords(standby.process.qmp, COUNTER_ADDRESS, 2);
          resumedAt = lo! + hi! * 2 ** 32;
          await restored.resume();
          runningAt = performance.now();
          return restored;
        },
      });
      cleanups.push(() => secondary.close());
      const promoted = new Promise<Promotion<QemuVm>>((resolve) => secondary.once('promoted', resolve));

      const guard = new QemuFaultGuard(vm);
      const primary = await Primary.start({ vm: guard, secondary: { host: '127.0.0.1', port: secondary.port }, verify: true, precopyRoundsMax: 0, settleOutputs: () => tap.settle() });
      cleanups.push(() => primary.close());
      primarySink.bind(primary);
      let faultAt = 0;
      primary.once('fault', () => (faultAt = performance.now()));
      guard.watch(primary);

      await sleep(runMs);
      const acked = primary.stats().ackedTxn;
      expect(primary.state).toBe('protected');
      // Whether the kill lands inside a checkpoint (QEMU stopped by kemari, a migration running or about to) or while
      // the guest runs: both happen over the rounds, and both must fail over.
      const duringCheckpoint = vm.stoppedByKemari;
      killedAt = performance.now();
      process.kill(vm.process!.pid, 'SIGKILL');

      // Failover happens by itself: no promote() call here.
      const promotion = await Promise.race([promoted, sleep(10_000).then(() => undefined)]);
      expect(promotion, 'the secondary did not promote within 10 s of the SIGKILL').toBeDefined();
      const { vm: resumed, txn, replay } = promotion!;
      cleanups.push(() => resumed.close());
      expect(primary.state).toBe('quiesced');
      expect(txn).toBeGreaterThanOrEqual(acked);
      expect(committed).toBeDefined();
      const restoreMs = standby.lastRestore!.prepareMs + standby.lastRestore!.loadMs + standby.lastRestore!.contMs;

      // (a) The counter the standby resumed with: exactly the committed epoch's.
      expect(resumedAt, `the standby resumed at ${resumedAt}, the committed counter is ${committed!.ticks}`).toBe(committed!.ticks);

      // (b) The standby's disk at resume: what it serves now, minus the writes its guest made since (its log).
      const { disk: diskAtResume, newWrites } = await standbyDiskAtResume(resumed, committedDisk!);
      expect(Buffer.from(diskAtResume).equals(Buffer.from(committedDisk!)), 'the standby disk at resume differs from the committed disk').toBe(true);
      expect(checkCommittedDisk(diskAtResume, committed!, GUEST)).toEqual([]);
      const onDisk = [...ringSectors(diskAtResume, GUEST).keys()].sort((x, y) => x - y);
      // The guest goes on writing where the committed epoch left off.
      newWrites.forEach((index, i) => expect(index).toBe((onDisk.at(-1) ?? -1) + 1 + i));
      await resumed.resume();

      // (c) Serial: what reached the outside from the primary, and what the standby prints from now on.
      const releasedText = released.map((o) => Buffer.from(o).toString('latin1')).join('');
      expect(tickNumbers(splitLines(releasedText).lines).length, 'no line reached the outside before the kill').toBeGreaterThan(0);
      expect(checkReleasedSerial(releasedText, committed!, GUEST.serialEveryTicks)).toEqual([]);
      await waitFor(() => standbyText.join('').split('\n').length > 4, 5000, 'the standby printed no lines');
      expect(checkStandbySerial(standbyText.join(''), committed!, GUEST.serialEveryTicks)).toEqual([]);
      // Across the failover, the outside (released, then the replay, then the standby) misses no line.
      const replayed = new PendingReplay(replay).take(SERIAL_CHANNEL_DEFAULT);
      expect(checkSerialAcrossFailover(released, replayed, standbyText.join(''), GUEST.serialEveryTicks)).toEqual([]);
      const [later] = await readGuestWords(resumed.qmp, COUNTER_ADDRESS, 1);
      expect(later).toBeGreaterThan(resumedAt);
      expect((await readGuestWords(resumed.qmp, RUN_MAGIC_ADDRESS, 1))[0]).toBe(RUN_MAGIC);

      reports.push({
        round,
        runMs,
        duringCheckpoint,
        txn,
        counter: committed!.ticks,
        detectMs: faultAt - killedAt,
        failoverMs: runningAt - killedAt,
        restoreMs,
        released: releasedText.split('\n').length - 1,
      });
      console.log(
        `round ${round}: killed after ${runMs} ms ${duringCheckpoint ? 'during a checkpoint' : 'while the guest ran'}; txn ${txn}, counter ${committed!.ticks} (standby resumed at ${resumedAt}), ` +
          `${committed!.diskWrites} disk writes, ${replay.length} outputs to replay; failover ${(runningAt - killedAt).toFixed(1)} ms ` +
          `(noticed ${(faultAt - killedAt).toFixed(1)}, restore began ${(restoreStartedAt - killedAt).toFixed(1)})`,
      );
    });
  }
});

async function waitFor(condition: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!condition()) {
    if (performance.now() > deadline) throw new Error(`${what} within ${timeoutMs} ms`);
    await sleep(20);
  }
}
