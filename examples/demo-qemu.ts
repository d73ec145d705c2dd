/**
 * `npm run demo:qemu`: protect a real QEMU guest, SIGKILL its QEMU, and watch it continue on the standby.
 *
 * Both hosts live in this process, each with its own QEMU 7.2 (TCG): the primary QEMU runs the kemari test guest
 * (examples/guest/, built with nasm: a counter, `tick N` lines on COM1, a disk sector every few ticks) with its disk
 * served by kemari's NBD server and its serial port on a SerialTap, so every line reaches "the outside" (printed as
 * `[primary]`) only once its epoch is acked; the standby QEMU waits with the same machine (`-S -incoming defer`).
 * After a random 1.5 to 3 s the primary QEMU is SIGKILLed by its PID. Its death reaches the Primary as a fatal
 * fault, the Primary quiesces and sends FAILOVER, the Secondary promotes at once and restores the committed epoch
 * into the standby QEMU, whose guest then prints on (`[standby]`, the replay first).
 *
 * Checks, each printed: the standby resumed with the committed counter, its disk holds exactly the committed
 * writes, every released line belongs to a committed epoch, and the lines continue on the standby with none
 * missing. Exits 0 when all pass, 1 otherwise; every QEMU started is killed by PID on the way out.
 */
import { spawnSync } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { COUNTER_ADDRESS, buildGuest } from './guest/build-guest.js';
import type { GuestParams } from './guest/build-guest.js';
import {
  checkCommittedDisk,
  checkReleasedSerial,
  checkSerialAcrossFailover,
  checkStandbySerial,
  committedCounters,
  ringSectors,
  sampleCounterAtResume,
  splitLines,
  standbyDiskAtResume,
  tickNumbers,
} from './guest/failover-checks.js';
import type { GuestCounters } from './guest/failover-checks.js';
import { LateSink } from '../src/cli/late-sink.js';
import { QemuFaultGuard } from '../src/cli/qemu-fault-guard.js';
import { Primary } from '../src/primary/primary.js';
import type { PrimaryCommit } from '../src/primary/primary.js';
import { MemoryNbdBackend } from '../src/qemu/nbd/memory-nbd-backend.js';
import type { QemuProcess } from '../src/qemu/qemu-process.js';
import { QemuStandby } from '../src/qemu/qemu-standby.js';
import { QemuVm } from '../src/qemu/qemu-vm.js';
import { PendingReplay } from '../src/qemu/taps/replay.js';
import { SERIAL_CHANNEL_DEFAULT, SerialTap } from '../src/qemu/taps/serial-tap.js';
import type { ReplicaSnapshot } from '../src/replica/replica.js';
import { Secondary } from '../src/secondary/secondary.js';
import type { Promotion } from '../src/secondary/secondary.js';

const MACHINE_ARGS = ['-machine', 'pc,accel=tcg', '-m', '32', '-nodefaults', '-display', 'none', '-no-reboot'];
const GUEST: GuestParams = { tickHz: 100, dirtyPagesPerTick: 16, ringPages: 1024, serialEveryTicks: 10, diskEveryTicks: 5, diskLbaBase: 2048, diskLbaCount: 1024, cacheFlush: false };
const killAfterMs = randomInt(1500, 3001);
const STANDBY_RUN_MS = 1500;
/** The unterminated last line per source, for {@link printLines}. */
const partial = new Map<string, string>();

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const ms = (value: number) => `${value.toFixed(1)} ms`;

for (const [tool, pkg] of [['qemu-system-x86_64', 'qemu-system-x86'], ['nasm', 'nasm']] as const) {
  if (spawnSync(tool, ['--version'], { stdio: 'ignore' }).status !== 0) {
    console.error(`demo:qemu needs ${tool} (apt-get install ${pkg})`);
    process.exit(1);
  }
}

const dir = mkdtempSync(join(tmpdir(), 'kd-'));
const processes: QemuProcess[] = [];
const cleanups: Array<() => unknown> = [];
const failures: string[] = [];
let exitCode = 1;
try {
  exitCode = await run();
} catch (error) {
  console.error(`demo failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
} finally {
  for (const cleanup of cleanups.reverse()) await Promise.resolve(cleanup()).catch(() => {});
  await Promise.all(processes.map((qemu) => qemu.kill('SIGKILL')));
  rmSync(dir, { recursive: true, force: true });
}
process.exit(exitCode);

async function run(): Promise<number> {
  console.log('kemari demo (QEMU): a real QEMU guest protected over loopback TCP, its QEMU killed, the standby takes over');
  const { imagePath } = await buildGuest(GUEST, dir);
  const image = new Uint8Array(readFileSync(imagePath));
  console.log(`  guest: examples/guest (nasm), 32 MiB, a 'tick N' line every ${GUEST.serialEveryTicks} ticks and a disk sector every ${GUEST.diskEveryTicks} at ${GUEST.tickHz} Hz`);

  // The standby host: a serial tap for the guest once it runs there, and a QEMU waiting for a restore.
  const standbyText: string[] = [];
  let promotedYet = false;
  const standbyTap = await SerialTap.listen({
    path: join(dir, 's-serial.sock'),
    sink: async () => {},
    output: (data) => {
      standbyText.push(Buffer.from(data).toString('latin1'));
      if (promotedYet) printLines('standby', data);
    },
  });
  cleanups.push(() => standbyTap.close());
  mkdirSync(join(dir, 's'));
  const standby = await QemuStandby.start({ machineArgs: MACHINE_ARGS, extraArgs: standbyTap.qemuArgs(), dir: join(dir, 's'), diskBytes: image.byteLength });
  processes.push(standby.process);
  cleanups.push(() => standby.close());
  console.log(`  standby host: QEMU pid ${standby.process.pid} started with the same machine, stopped, waiting for a restore`);

  // The primary host: the guest's disk on kemari's NBD server, COM1 on a serial tap held by the event-tap.
  const released: Uint8Array[] = [];
  // The guest starts running at the full sync's capture, before Primary.start resolves: its first output waits.
  const primarySink = new LateSink();
  const tap = await SerialTap.listen({
    path: join(dir, 'p-serial.sock'),
    sink: primarySink.sink,
    output: (data) => {
      released.push(Uint8Array.from(data));
      printLines('primary', data);
    },
  });
  cleanups.push(() => tap.close());
  mkdirSync(join(dir, 'p'));
  const vm = await QemuVm.launch({ machineArgs: MACHINE_ARGS, extraArgs: tap.qemuArgs(), dir: join(dir, 'p'), disk: new MemoryNbdBackend(image), startPaused: true });
  processes.push(vm.process!);
  cleanups.push(() => vm.close());
  console.log(`  primary host: QEMU pid ${vm.process!.pid}, disk served over NBD, COM1 on a serial tap`);

  let committed: GuestCounters | undefined;
  let committedDisk: Uint8Array | undefined;
  const atResume = sampleCounterAtResume(standby.process.qmp);
  const secondary = await Secondary.listen<QemuVm>({
    host: '127.0.0.1',
    port: 0,
    verify: true,
    sessionId: 'demo-qemu',
    restoreVm: (snapshot: ReplicaSnapshot) => {
      committed = committedCounters(snapshot);
      committedDisk = Uint8Array.from(snapshot.disks[0]!.data);
      return standby.restore(snapshot);
    },
  });
  cleanups.push(() => secondary.close());
  const promoted = new Promise<Promotion<QemuVm>>((resolve) => secondary.once('promoted', resolve));

  const guard = new QemuFaultGuard(vm);
  const syncStart = performance.now();
  const primary = await Primary.start({
    vm: guard,
    secondary: { host: '127.0.0.1', port: secondary.port },
    sessionId: 'demo-qemu',
    verify: true,
    precopyRoundsMax: 0,
    // What the guest printed before each checkpoint's stop belongs to that epoch.
    settleOutputs: () => tap.settle(),
  });
  cleanups.push(() => primary.close());
  primarySink.bind(primary);
  guard.watch(primary);
  const commits: PrimaryCommit[] = [];
  primary.on('commit', (c: PrimaryCommit) => commits.push(c));
  primary.on('quiesced', () => console.log(`  the primary quiesced (QEMU's death is a fatal fault) and sent FAILOVER`));
  console.log(`  protected: full sync of ${(vm.memoryBytes / 2 ** 20).toFixed(1)} MiB acked in ${ms(performance.now() - syncStart)}, verify on; the guest runs.`);
  console.log(`  serial lines reach the outside only once their epoch is acked; the primary QEMU will be SIGKILLed in ${killAfterMs} ms:`);

  await sleep(killAfterMs);
  const before = primary.stats();
  const killedAt = performance.now();
  process.kill(vm.process!.pid, 'SIGKILL');
  console.log(`  SIGKILL -> primary QEMU (pid ${vm.process!.pid}) at txn ${before.ackedTxn}`);

  const promotion = await Promise.race([promoted, sleep(10_000).then(() => undefined)]);
  if (promotion === undefined) {
    console.error('  the standby did not take over within 10 s');
    return 1;
  }
  const sample = await atResume;
  const failoverMs = sample.runningAt - killedAt;
  const resumed = promotion.vm;
  cleanups.push(() => resumed.close());
  console.log(
    `  the standby promoted itself at txn ${promotion.txn}: the guest runs in QEMU pid ${resumed.process!.pid} ${ms(failoverMs)} after the SIGKILL ` +
      `(restore ${ms(standby.lastRestore!.prepareMs + standby.lastRestore!.loadMs + standby.lastRestore!.contMs)})`,
  );

  // Checks on the state the standby started from (the guest is stopped right behind the counter sample).
  const c = committed!;
  const slack = Math.ceil((sample.windowMs * GUEST.tickHz) / 1000) + 1;
  check(sample.counter >= c.ticks && sample.counter <= c.ticks + slack, `the standby resumed at counter ${sample.counter}; the committed epoch's counter is ${c.ticks} (sampled ${ms(sample.windowMs)} after RESUME)`);
  const { disk } = await standbyDiskAtResume(resumed, committedDisk!);
  const diskProblems = [...checkCommittedDisk(disk, c, GUEST), ...(Buffer.from(disk).equals(Buffer.from(committedDisk!)) ? [] : ['the disk differs from the committed one'])];
  const lastCommitted = Math.max(-1, ...ringSectors(disk, GUEST).keys());
  check(
    diskProblems.length === 0,
    `the standby's disk holds exactly the committed writes 0..${lastCommitted} (the guest had counted ${c.diskWrites})${diskProblems.length > 0 ? `: ${diskProblems.join('; ')}` : ''}`,
  );
  const releasedText = released.map((o) => Buffer.from(o).toString('latin1')).join('');
  const releasedLines = tickNumbers(splitLines(releasedText).lines).length;
  const releasedProblems = checkReleasedSerial(releasedText, c, GUEST.serialEveryTicks);
  if (releasedLines === 0) releasedProblems.push('no line was released before the kill');
  check(releasedProblems.length === 0, `the ${releasedLines} lines released by the primary all belong to committed epochs (the committed guest had printed ${c.serialLines})${releasedProblems.length > 0 ? `: ${releasedProblems.join('; ')}` : ''}`);

  // The guest continues on the standby: the replay first, then its own lines.
  const replay = new PendingReplay(promotion.replay).take(SERIAL_CHANNEL_DEFAULT);
  console.log(`  replaying ${replay.length} output(s) of committed epochs the primary may not have released; the guest continues on the standby:`);
  for (const output of replay) printLines('replay', output);
  promotedYet = true;
  for (const text of standbyText) printLines('standby', Buffer.from(text, 'latin1'));
  await resumed.resume();
  await sleep(STANDBY_RUN_MS);
  const [later] = await readCounter(resumed);
  const standbyProblems = checkStandbySerial(standbyText.join(''), c, GUEST.serialEveryTicks);
  check(standbyProblems.length === 0, `the standby's serial continues exactly from the committed state${standbyProblems.length > 0 ? `: ${standbyProblems.join('; ')}` : ''}`);
  const across = checkSerialAcrossFailover(released, replay, standbyText.join(''), GUEST.serialEveryTicks);
  check(across.length === 0, `across the failover the outside misses no line${across.length > 0 ? `: ${across.join('; ')}` : ''}`);
  check(later! > sample.counter, `the guest's counter grows on the standby: ${sample.counter} -> ${later}`);
  const writes = [...ringSectors(await resumed.disk!.read(0, resumed.disk!.sizeBytes), GUEST).values()].sort((a, b) => Number(a.writeIndex - b.writeIndex));
  const contiguous = writes.every((sector, i) => sector.writeIndex === BigInt(i) && sector.intact);
  check(contiguous && writes.length > lastCommitted + 1, `the guest's disk writes go on: writes 0..${writes.length - 1} on the standby's disk, none missing`);

  const pauses = commits.filter((x) => !x.full).map((x) => x.pauseMs).sort((a, b) => a - b);
  const latencies = commits.filter((x) => !x.full).map((x) => x.latencyMs).sort((a, b) => a - b);
  console.log(
    `  summary: ${commits.length} epochs acked; checkpoint pause p50 ${ms(quantile(pauses, 0.5))}, p99 ${ms(quantile(pauses, 0.99))}; ` +
      `commit latency p50 ${ms(quantile(latencies, 0.5))}, p99 ${ms(quantile(latencies, 0.99))}; failover ${ms(failoverMs)}`,
  );
  if (failures.length > 0) {
    console.error(`demo:qemu FAILED (${failures.length} check(s))`);
    return 1;
  }
  console.log('demo:qemu passed: all checks hold');
  return 0;
}

function check(ok: boolean, what: string): void {
  console.log(`  ${ok ? 'ok  ' : 'FAIL'} ${what}`);
  if (!ok) failures.push(what);
}

/** Prints complete serial lines, prefixed by where they were seen. */
function printLines(source: string, data: Uint8Array): void {
  const lines = ((partial.get(source) ?? '') + Buffer.from(data).toString('latin1')).split('\n');
  partial.set(source, lines.pop() ?? '');
  for (const line of lines) if (line.length > 0) console.log(`    [${source}] ${line.length > 100 ? `${line.slice(0, 97)}...` : line}`);
}

async function readCounter(target: QemuVm): Promise<number[]> {
  const text = await target.qmp.execute<string>('human-monitor-command', { 'command-line': `xp /1wx 0x${COUNTER_ADDRESS.toString(16)}` });
  return [...text.matchAll(/0x([0-9a-f]{8})\b/g)].slice(0, 1).map((m) => Number.parseInt(m[1]!, 16));
}

function quantile(sorted: number[], q: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}
