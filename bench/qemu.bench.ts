/**
 * Protecting a real QEMU (7.2, TCG): what a checkpoint costs beside QEMU's own migration of the same guest,
 * measured in the same run, and how fast the standby takes over. For a 32 MiB and a 256 MiB guest (the kemari test
 * guest, examples/guest: 16 ring pages dirtied per tick at 100 Hz, a disk sector every 10 ticks, its disk on
 * kemari's NBD server), protected by a Primary to a real Secondary over loopback TCP:
 *
 * 1. Checkpoint cycle against bare migrate, alternating under the same load: one kemari checkpoint (the Primary's
 *    pause, `stop` → capture → `cont` returned, and its commit latency, capture start → ack), then one bare
 *    migration of QEMU's own on the same QEMU (`stop` → `migrate` to a socket that only drains the bytes →
 *    completed → `cont`: the floor a migration-stream checkpoint cannot beat; kemari adds parsing the stream,
 *    finding the changed pages and copying them). p50/p99 of both, and the ratio (goal <= 1.5x).
 * 2. Back to back: checkpoints per second with one always due and 2 transactions in flight (goal >= 25/s for
 *    32 MiB), with their pause and commit latency under that load.
 * 3. Failover during 2: the primary QEMU SIGKILLed by PID → its death reported (QemuFaultGuard) → FAILOVER → the
 *    Secondary restores the committed epoch into a standby QEMU started beforehand → QEMU's RESUME (goal <= 500 ms).
 * 4. Shared-memory mode of a 256 MiB guest (RAM in a /dev/shm file, `x-ignore-shared`): the per-epoch scan of the
 *    file and the checkpoint (stop → capture → cont) for each change detection (`shadow`: a copy of the file;
 *    `fingerprints`: 8 bytes a page) and each way of reading the file (mapped by the page addon, or positioned
 *    reads: the fallback, forced with KEMARI_PAGES_IMPLEMENTATION=js), each in a process of its own; with the
 *    memory the primary holds to find changes (shadow bytes, fingerprint table bytes).
 *
 *   npm run bench:qemu               (40 alternating cycles after 10 not counted, 6 s back to back, per size)
 *   npm run bench:qemu -- --quick    (12 cycles after 6, 1.5 s: a CI smoke run)
 *
 * Prints the figures and exits 0 (goals are reported, not enforced: timings depend on the machine and its load);
 * exits 1 only when something failed to run. Every QEMU started is killed by PID on the way out.
 */
import { fork, spawnSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RUN_MAGIC, RUN_MAGIC_ADDRESS, buildGuest } from '../examples/guest/build-guest.js';
import { QemuFaultGuard } from '../src/cli/qemu-fault-guard.js';
import { Primary } from '../src/primary/primary.js';
import type { PrimaryCommit } from '../src/primary/primary.js';
import { mmapImplementation } from '../src/pages/mmap.js';
import { PagesWorkerPool } from '../src/pages/worker-pool.js';
import { MemoryNbdBackend } from '../src/qemu/nbd/memory-nbd-backend.js';
import type { SharedMemoryChangeDetection } from '../src/qemu/qemu-machine.js';
import type { QemuProcess } from '../src/qemu/qemu-process.js';
import { QemuStandby } from '../src/qemu/qemu-standby.js';
import { QemuVm } from '../src/qemu/qemu-vm.js';
import type { QmpClient } from '../src/qemu/qmp-client.js';
import { Secondary } from '../src/secondary/secondary.js';
import type { Promotion } from '../src/secondary/secondary.js';

const quick = process.argv.includes('--quick');
const SIZES_MIB = [32, 256];
const PROTECTED_MS = quick ? 1500 : 6000;
const CYCLES = quick ? 12 : 40;
/**
 * Alternating cycles run first and not counted: the first checkpoints of a process run the stream parser before it
 * is compiled (a protected VM spends hours past them), and QEMU's first migrations set up what later ones reuse.
 */
const WARMUP_CYCLES = quick ? 6 : 10;
const GAP_MS = 20;
const GOAL_RATIO = 1.5;
const GOAL_RATE_PER_S = 25;
const GOAL_FAILOVER_MS = 500;
/** Section 4: the shared-memory guest's size, and its epochs per configuration. */
const SCAN_MIB = 256;
const SCAN_EPOCHS = quick ? 12 : 40;
/** The argument that makes this script one configuration of section 4 (a child process). */
const SCAN_CHILD = 'scan-child';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

for (const tool of ['qemu-system-x86_64', 'nasm']) {
  if (spawnSync(tool, ['--version'], { stdio: 'ignore' }).status !== 0) {
    console.error(`bench:qemu needs ${tool} (apt-get install ${tool === 'nasm' ? 'nasm' : 'qemu-system-x86'})`);
    process.exit(1);
  }
}

interface Result {
  mib: number;
  memoryBytes: number;
  bare: number[];
  bareBytes: number;
  pause: number[];
  latency: number[];
  pages: number[];
  /** Checkpoint pauses and bare migrations of the warm-up cycles (not in the figures above). */
  warmupPause: number[];
  warmupBare: number[];
  /** Pause and commit latency of the back-to-back checkpoints. */
  loadedPause: number[];
  loadedLatency: number[];
  epochs: number;
  seconds: number;
  streamBytes: number;
  failoverMs: number;
  restore: { prepareMs: number; loadMs: number; contMs: number; streamBytes: number };
  detectMs: number;
}

if (process.argv[2] === SCAN_CHILD) {
  await scanChild(process.argv[3] as SharedMemoryChangeDetection, process.argv.includes('--pool'));
  process.exit(0);
}

const processes: QemuProcess[] = [];
/** QEMUs of section 4's child processes, killed by PID on the way out too. */
const childQemuPids: number[] = [];
const root = mkdtempSync(join(tmpdir(), 'kb-'));
let status = 0;
const results: Result[] = [];
try {
  console.log(`bench:qemu: ${quick ? 'quick' : 'full'} run; per size ${CYCLES} checkpoints alternating with bare migrations (after ${WARMUP_CYCLES} not counted), then ${(PROTECTED_MS / 1000).toFixed(1)} s back to back; QEMU TCG, node ${process.version}`);
  for (const mib of SIZES_MIB) results.push(await measure(mib));
  report(results);
  if (existsSync('/dev/shm')) reportScans(await measureScans());
  else console.log('  4. shared-memory scan: skipped (no /dev/shm)');
} catch (error) {
  console.error(`bench:qemu failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
  status = 1;
} finally {
  await Promise.all(processes.map((qemu) => qemu.kill('SIGKILL')));
  for (const pid of childQemuPids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone already
    }
  }
  rmSync(root, { recursive: true, force: true });
}
process.exit(status);

async function measure(mib: number): Promise<Result> {
  const dir = join(root, `m${mib}`);
  mkdirSync(join(dir, 'p'), { recursive: true });
  mkdirSync(join(dir, 's'), { recursive: true });
  const cleanups: Array<() => unknown> = [];
  try {
    const { imagePath } = await buildGuest({ tickHz: 100, dirtyPagesPerTick: 16, ringPages: 1024, serialEveryTicks: 0, diskEveryTicks: 10 }, dir);
    const image = new Uint8Array(readFileSync(imagePath));
    const machineArgs = ['-machine', 'pc,accel=tcg', '-m', String(mib), '-nodefaults', '-display', 'none', '-no-reboot'];
    const standby = await QemuStandby.start({ machineArgs, dir: join(dir, 's'), diskBytes: image.byteLength });
    processes.push(standby.process);
    cleanups.push(() => standby.close());
    const vm = await QemuVm.launch({ machineArgs, dir: join(dir, 'p'), disk: new MemoryNbdBackend(image) });
    processes.push(vm.process!);
    cleanups.push(() => vm.close());
    await waitRunning(vm.qmp);
    const sink = await drainSink(join(dir, 'bare.sock'));
    cleanups.push(() => sink.close());

    // The guest writes its whole ring first (1024 pages at 16 a tick: 64 ticks), so every stream carries the same
    // memory from the start.
    await sleep(1000);
    let runningAt = 0;
    standby.process.qmp.on('event', (event) => {
      if (event.event === 'RESUME' && runningAt === 0) runningAt = performance.now();
    });
    const secondary = await Secondary.listen<QemuVm>({ host: '127.0.0.1', port: 0, restoreVm: (snapshot) => standby.restore(snapshot) });
    cleanups.push(() => secondary.close());
    const promoted = new Promise<Promotion<QemuVm>>((resolve) => secondary.once('promoted', resolve));
    const guard = new QemuFaultGuard(vm);
    // Event policy without idle checkpoints: a checkpoint happens exactly when the bench taps an output.
    const primary = await Primary.start({ vm: guard, secondary: { host: '127.0.0.1', port: secondary.port }, sync: { mode: 'event', idleIntervalMs: 3_600_000 }, precopyRoundsMax: 0 });
    cleanups.push(() => primary.close());
    const commits: PrimaryCommit[] = [];
    primary.on('commit', (c: PrimaryCommit) => commits.push(c));
    const nextCommit = () => new Promise<PrimaryCommit>((resolve) => primary.once('commit', resolve));
    const output = new Uint8Array(1);

    // 1. Alternating, under the same load: one kemari checkpoint (an output triggers it; its commit says its pause
    // and latency), then one bare migration of QEMU's own on the same QEMU. Faults are not watched yet: the bare
    // cycle's own `stop` would count as one.
    const bare: number[] = [];
    const pause: number[] = [];
    const latency: number[] = [];
    const pages: number[] = [];
    const warmupPause: number[] = [];
    const warmupBare: number[] = [];
    let bareBytes = 0;
    for (let i = 0; i < WARMUP_CYCLES + CYCLES; i++) {
      const committed = nextCommit();
      void primary.tap.output('bench', output).catch(() => {});
      const commit = await committed;
      await sleep(GAP_MS);
      const cycle = await bareCycle(vm.qmp, sink);
      await sleep(GAP_MS);
      if (i < WARMUP_CYCLES) {
        warmupPause.push(commit.pauseMs);
        warmupBare.push(cycle.ms);
        continue;
      }
      pause.push(commit.pauseMs);
      latency.push(commit.latencyMs);
      pages.push(commit.pages);
      bare.push(cycle.ms);
      bareBytes = cycle.bytes;
    }
    const streamBytes = vm.stats().lastStreamBytes;

    // 2. Back to back: an output every millisecond keeps a checkpoint always due (2 transactions in flight).
    guard.watch(primary);
    const pump = setInterval(() => void primary.tap.output('bench', output).catch(() => {}), 1);
    cleanups.push(() => clearInterval(pump));
    await sleep(PROTECTED_MS / 4);
    const epochsAt = commits.length;
    const startedAt = performance.now();
    await sleep(PROTECTED_MS);
    const seconds = (performance.now() - startedAt) / 1000;
    const loaded = commits.slice(epochsAt);
    const epochs = loaded.length;

    // 3. Failover, while checkpoints run back to back.
    let faultAt = 0;
    primary.once('fault', () => (faultAt = performance.now()));
    const killedAt = performance.now();
    process.kill(vm.process!.pid, 'SIGKILL');
    const promotion = await Promise.race([promoted, sleep(15_000).then(() => undefined)]);
    if (promotion === undefined) throw new Error(`${mib} MiB: the standby did not take over within 15 s`);
    cleanups.push(() => promotion.vm.close());
    const restore = standby.lastRestore!;

    return {
      mib,
      memoryBytes: vm.memoryBytes,
      bare,
      bareBytes,
      pause,
      latency,
      pages,
      warmupPause,
      warmupBare,
      loadedPause: loaded.map((c) => c.pauseMs),
      loadedLatency: loaded.map((c) => c.latencyMs),
      epochs,
      seconds,
      streamBytes,
      failoverMs: runningAt - killedAt,
      restore: { prepareMs: restore.prepareMs, loadMs: restore.loadMs, contMs: restore.contMs, streamBytes: restore.streamBytes },
      detectMs: faultAt - killedAt,
    };
  } finally {
    for (const cleanup of cleanups.reverse()) await Promise.resolve(cleanup()).catch(() => {});
  }
}

function report(all: Result[]): void {
  console.log('');
  console.log('  1. one kemari checkpoint, then one bare QEMU migration, alternating (same QEMU, same load):');
  table([
    ['guest', 'bare migrate p50 / p99', 'checkpoint p50 / p99', 'ratio p50', 'commit p50 / p99', 'pages/epoch p50'],
    ...all.map((r) => [`${r.mib} MiB`, pair(r.bare), pair(r.pause), `${(quantile(r.pause, 0.5) / quantile(r.bare, 0.5)).toFixed(2)}x`, pair(r.latency), String(Math.round(quantile(r.pages, 0.5)))]),
  ]);
  console.log('  2. checkpoints back to back (one always due, 2 in flight), and the failover during them:');
  table([
    ['guest', 'checkpoints/s', 'checkpoint p50 / p99', 'commit p50 / p99', 'failover (SIGKILL -> running)'],
    ...all.map((r) => [`${r.mib} MiB`, (r.epochs / r.seconds).toFixed(1), pair(r.loadedPause), pair(r.loadedLatency), ms(r.failoverMs)]),
  ]);
  for (const r of all) {
    console.log(
      `  ${r.mib} MiB: ${(r.memoryBytes / 2 ** 20).toFixed(1)} MiB of RAM blocks; streams ${(r.streamBytes / 2 ** 20).toFixed(2)} MiB (kemari) and ${(r.bareBytes / 2 ** 20).toFixed(2)} MiB (bare); ` +
        `${r.pause.length} alternating checkpoints after ${r.warmupPause.length} not counted (their p50: checkpoint ${ms(quantile(r.warmupPause, 0.5))}, bare ${ms(quantile(r.warmupBare, 0.5))}), ` +
        `${r.epochs} back to back; failover: death noticed ${ms(r.detectMs)}, ` +
        `restore prepare ${ms(r.restore.prepareMs)} + load ${ms(r.restore.loadMs)} (${(r.restore.streamBytes / 2 ** 20).toFixed(2)} MiB) + cont ${ms(r.restore.contMs)}`,
    );
  }
  console.log('');
  console.log('  goals:');
  for (const r of all) {
    const ratio = quantile(r.pause, 0.5) / quantile(r.bare, 0.5);
    console.log(`    ${r.mib} MiB checkpoint / bare migrate p50: ${ratio.toFixed(2)}x (goal <= ${GOAL_RATIO}x): ${ratio <= GOAL_RATIO ? 'met' : 'NOT met'}`);
  }
  const small = all.find((r) => r.mib === 32);
  if (small !== undefined) {
    const rate = small.epochs / small.seconds;
    console.log(`    32 MiB checkpoints/s: ${rate.toFixed(1)} (goal >= ${GOAL_RATE_PER_S}): ${rate >= GOAL_RATE_PER_S ? 'met' : 'NOT met'}`);
  }
  for (const r of all) console.log(`    ${r.mib} MiB failover: ${ms(r.failoverMs)} (goal <= ${GOAL_FAILOVER_MS} ms): ${r.failoverMs <= GOAL_FAILOVER_MS ? 'met' : 'NOT met'}`);
}

/** What one configuration of section 4 measured (sent by its child process). */
interface ScanResult {
  /** How the file was read: 'native' (mapped by the addon) or 'js' (positioned reads). */
  mmap: string;
  changeDetection: SharedMemoryChangeDetection;
  /** Threads of the PagesWorkerPool that scanned (0: the calling thread alone). */
  threads: number;
  memoryBytes: number;
  sharedBytes: number;
  /** The first capture, a full one (stop → capture of every page → cont): copies from the shadow or the file. */
  fullCaptureMs: number;
  scanMs: number[];
  pauseMs: number[];
  pages: number[];
  shadowBytes: number;
  fingerprintBytes: number;
}

/** Section 4: each file access × change detection in a child process of its own (the fallback is chosen at load). */
async function measureScans(): Promise<ScanResult[]> {
  const nativeEnv = { ...process.env };
  delete nativeEnv.KEMARI_PAGES_IMPLEMENTATION;
  const jsEnv = { ...process.env, KEMARI_PAGES_IMPLEMENTATION: 'js' };
  const results: ScanResult[] = [];
  for (const env of [nativeEnv, jsEnv]) {
    for (const changeDetection of ['shadow', 'fingerprints'] as const) results.push(await runScanChild(changeDetection, env, false));
  }
  // Fingerprints on a worker pool (default threads and measured thresholds), with the addon: each thread maps the file.
  results.push(await runScanChild('fingerprints', nativeEnv, true));
  return results;
}

async function runScanChild(changeDetection: SharedMemoryChangeDetection, env: NodeJS.ProcessEnv, pool: boolean): Promise<ScanResult> {
  const args = [SCAN_CHILD, changeDetection, ...(quick ? ['--quick'] : []), ...(pool ? ['--pool'] : [])];
  const child: ChildProcess = fork(new URL(import.meta.url), args, { execArgv: process.execArgv, env });
  try {
    return await new Promise<ScanResult>((resolve, reject) => {
      child.on('message', (message: { qemuPid?: number; result?: ScanResult; error?: string }) => {
        if (message.qemuPid !== undefined) childQemuPids.push(message.qemuPid);
        if (message.result !== undefined) resolve(message.result);
        if (message.error !== undefined) reject(new Error(`scan child (${changeDetection}): ${message.error}`));
      });
      child.on('exit', (code) => reject(new Error(`scan child (${changeDetection}) exited with ${code} before reporting`)));
    });
  } finally {
    if (child.connected) child.disconnect();
  }
}

/**
 * One configuration of section 4, in this (child) process: the guest with its RAM in a shared file under
 * `changeDetection`, protected alone (captures released as a primary would), SCAN_EPOCHS epochs after the full one.
 */
async function scanChild(changeDetection: SharedMemoryChangeDetection, withPool: boolean): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'kbs-'));
  const shm = `/dev/shm/kemari-bench-scan-${process.pid}`;
  let vm: QemuVm | undefined;
  let pool: PagesWorkerPool | undefined;
  try {
    if (withPool) pool = await PagesWorkerPool.start();
    const { imagePath } = await buildGuest({ tickHz: 100, dirtyPagesPerTick: 16, ringPages: 1024, serialEveryTicks: 0, diskEveryTicks: 10 }, dir);
    const machineArgs = ['-machine', 'pc,accel=tcg', '-m', String(SCAN_MIB), '-nodefaults', '-display', 'none', '-no-reboot'];
    vm = await QemuVm.launch({
      machineArgs,
      sharedMemory: { path: shm, sizeBytes: SCAN_MIB << 20, changeDetection },
      dir,
      disk: new MemoryNbdBackend(new Uint8Array(readFileSync(imagePath))),
      ...(pool === undefined ? {} : { pagesPool: pool }),
    });
    process.send!({ qemuPid: vm.process!.pid });
    await waitRunning(vm.qmp);
    // The ring written whole first (1024 pages at 16 a tick), as in sections 1 to 3.
    await sleep(1000);
    const fullStart = performance.now();
    await vm.pause();
    vm.releaseCapture(await vm.capture({ full: true, digest: false }));
    await vm.resume();
    const fullCaptureMs = performance.now() - fullStart;
    const scanMs: number[] = [];
    const pauseMs: number[] = [];
    const pages: number[] = [];
    for (let epoch = 0; epoch < SCAN_EPOCHS; epoch++) {
      await sleep(GAP_MS);
      const start = performance.now();
      await vm.pause();
      const capture = await vm.capture({ full: false, digest: false });
      await vm.resume();
      pauseMs.push(performance.now() - start);
      scanMs.push(vm.stats().lastScanMs);
      pages.push(capture.pages.length);
      vm.releaseCapture(capture);
    }
    const stats = vm.stats();
    const result: ScanResult = {
      mmap: mmapImplementation(),
      changeDetection,
      threads: pool?.stats().parallelOperations === 0 ? 0 : (pool?.workerCount ?? 0),
      memoryBytes: vm.memoryBytes,
      sharedBytes: SCAN_MIB << 20,
      fullCaptureMs,
      scanMs,
      pauseMs,
      pages,
      shadowBytes: stats.shadowBytes,
      fingerprintBytes: stats.fingerprintBytes,
    };
    process.send!({ result });
  } catch (error) {
    process.send!({ error: error instanceof Error ? (error.stack ?? error.message) : String(error) });
  } finally {
    await vm?.close();
    await pool?.close();
    rmSync(shm, { force: true });
    rmSync(dir, { recursive: true, force: true });
  }
}

function reportScans(all: ScanResult[]): void {
  const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(2)} MiB`;
  console.log('');
  console.log(`  4. shared-memory mode, ${SCAN_MIB} MiB guest (RAM in /dev/shm, x-ignore-shared): the per-epoch scan of the file, by change detection`);
  console.log('     and by how the file is read, and what the primary holds to find changed pages (beside the guest it protects):');
  table([
    ['file read by', 'change detection', 'threads', 'scan p50 / p99', 'checkpoint p50 / p99', 'pages/epoch p50', 'full capture', 'shadow held', 'fingerprints held', 'held / guest'],
    ...all.map((r) => [
      r.mmap === 'native' ? 'mmap (addon)' : 'positioned reads',
      r.changeDetection,
      r.threads === 0 ? '-' : String(r.threads),
      pair(r.scanMs),
      pair(r.pauseMs),
      String(Math.round(quantile(r.pages, 0.5))),
      ms(r.fullCaptureMs),
      mib(r.shadowBytes),
      mib(r.fingerprintBytes),
      `${((100 * (r.shadowBytes + r.fingerprintBytes)) / r.memoryBytes).toFixed(1)}%`,
    ]),
  ]);
  for (const mmap of ['native', 'js']) {
    const shadow = all.find((r) => r.mmap === mmap && r.changeDetection === 'shadow');
    const fingerprints = all.find((r) => r.mmap === mmap && r.changeDetection === 'fingerprints' && r.threads === 0);
    if (shadow === undefined || fingerprints === undefined) continue;
    const ratio = quantile(fingerprints.scanMs, 0.5) / quantile(shadow.scanMs, 0.5);
    console.log(
      `     ${mmap === 'native' ? 'mmap (addon)' : 'positioned reads'}: fingerprints scan ${ratio.toFixed(2)}x the shadow's time per epoch, ` +
        `holding ${mib(fingerprints.shadowBytes + fingerprints.fingerprintBytes)} instead of ${mib(shadow.shadowBytes + shadow.fingerprintBytes)}`,
    );
  }
  const alone = all.find((r) => r.mmap === 'native' && r.changeDetection === 'fingerprints' && r.threads === 0);
  const threaded = all.find((r) => r.threads > 0);
  if (alone !== undefined && threaded !== undefined) {
    console.log(
      `     fingerprints on ${threaded.threads} pool threads: scan p50 ${ms(quantile(threaded.scanMs, 0.5))} against ${ms(quantile(alone.scanMs, 0.5))} on one ` +
        `(${(quantile(alone.scanMs, 0.5) / quantile(threaded.scanMs, 0.5)).toFixed(2)}x)`,
    );
  }
  console.log('');
}

function table(rows: string[][]): void {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((row) => row[i]!.length)));
  for (const [i, row] of rows.entries()) {
    console.log(`     ${row.map((cell, j) => (j === 0 ? cell.padEnd(widths[j]!) : cell.padStart(widths[j]!))).join('  ')}`);
    if (i === 0) console.log(`     ${widths.map((w) => '-'.repeat(w)).join('  ')}`);
  }
  console.log('');
}

function pair(values: number[]): string {
  return `${ms(quantile(values, 0.5))} / ${ms(quantile(values, 0.99))}`;
}

/** Polls HMP until the guest's run magic is set. */
async function waitRunning(qmp: QmpClient): Promise<void> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    const text = await qmp.execute<string>('human-monitor-command', { 'command-line': `xp /1wx 0x${RUN_MAGIC_ADDRESS.toString(16)}` });
    if (Number.parseInt(/0x([0-9a-f]{8})\b/.exec(text)?.[1] ?? '0', 16) === RUN_MAGIC) return;
    if (Date.now() > deadline) throw new Error('the guest did not start');
    await sleep(20);
  }
}

/** A unix socket that accepts one migration at a time and only counts its bytes. */
async function drainSink(path: string): Promise<{ path: string; next: () => Promise<number>; close: () => void }> {
  rmSync(path, { force: true });
  let waiting: ((bytes: number) => void) | undefined;
  const server = net.createServer((socket) => {
    let bytes = 0;
    socket.on('data', (chunk: Buffer) => (bytes += chunk.byteLength));
    socket.on('close', () => waiting?.(bytes));
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  return { path, next: () => new Promise<number>((resolve) => (waiting = resolve)), close: () => server.close() };
}

/** QEMU's own checkpoint: stop, migrate everything to a socket that discards it, completed, cont. */
async function bareCycle(qmp: QmpClient, sink: Awaited<ReturnType<typeof drainSink>>): Promise<{ ms: number; bytes: number }> {
  // The same migration settings as kemari's checkpoints (QemuVm sets them on the protected QEMU; set them here too).
  await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] });
  await qmp.execute('migrate-set-parameters', { 'max-bandwidth': 107374182400 });
  const start = performance.now();
  await qmp.execute('stop');
  const drained = sink.next();
  const completed = qmp.waitForEvent('MIGRATION', (event) => event.data['status'] === 'completed' || event.data['status'] === 'failed', 30_000);
  await qmp.execute('migrate', { uri: `unix:${sink.path}` });
  const event = await completed;
  const bytes = await drained;
  await qmp.execute('cont');
  if (event.data['status'] !== 'completed') throw new Error('bare migration failed');
  return { ms: performance.now() - start, bytes };
}

function quantile(values: number[], q: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

function ms(value: number): string {
  return `${value.toFixed(1)} ms`;
}
