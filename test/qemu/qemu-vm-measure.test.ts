/**
 * Measures QemuVm's checkpoint cycle against QEMU's bare migration of the same guest in the same run, and prints
 * the figures (no timed assertions: timings depend on the machine). For each configuration: the pause of a
 * kemari checkpoint (QMP stop → capture → cont returned), its migrate-and-compare part, the pages per epoch, and the
 * bare cycle (stop → migrate to a socket that only drains the bytes → completed → cont) on the same QEMU,
 * interleaved epoch by epoch so both see the same load. Then the failover: restoring the replica of those epochs
 * into a standby QEMU started beforehand. Skipped without qemu-system-x86_64 or nasm.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { RUN_MAGIC, RUN_MAGIC_ADDRESS, buildGuest } from '../../examples/guest/build-guest.js';
import { MemoryNbdBackend } from '../../src/qemu/nbd/memory-nbd-backend.js';
import { QemuStandby } from '../../src/qemu/qemu-standby.js';
import { QemuVm } from '../../src/qemu/qemu-vm.js';
import { Replica } from '../../src/replica/replica.js';
import { beginStagedTxn } from '../../src/txn/staged-txn.js';
import type { EpochCapture } from '../../src/vm/adapter.js';
import type { QemuProcess } from '../../src/qemu/qemu-process.js';
import type { QmpClient } from '../../src/qemu/qmp-client.js';
import { HAS_QEMU, NO_QEMU_MESSAGE, readGuestWords, tempDir } from '../helpers/qemu.js';

const HAS_NASM = spawnSync('nasm', ['-v'], { stdio: 'ignore' }).status === 0;
const SKIP = !HAS_QEMU || !HAS_NASM;
if (SKIP) console.warn(!HAS_QEMU ? NO_QEMU_MESSAGE : 'nasm not found: QemuVm measurements skipped (apt-get install nasm)');

const EPOCHS = 12;
const EPOCH_GAP_MS = 50;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe.skipIf(SKIP)('QemuVm checkpoint cycle against bare QEMU migration (printed, not asserted)', () => {
  let dir: { path: string; remove: () => void };
  let processes: QemuProcess[];
  let cleanups: Array<() => unknown>;

  beforeEach(() => {
    dir = tempDir();
    processes = [];
    cleanups = [];
  });

  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await Promise.resolve(cleanup()).catch(() => {});
    await Promise.all(processes.splice(0).map((qemu) => qemu.kill('SIGKILL')));
    dir.remove();
  });

  const configurations = [
    { name: '32 MiB, RAM in the stream', memoryMiB: 32, shared: false },
    { name: '32 MiB, shared memory file', memoryMiB: 32, shared: true },
    { name: '256 MiB, RAM in the stream', memoryMiB: 256, shared: false },
    { name: '256 MiB, shared memory file', memoryMiB: 256, shared: true },
  ];
  for (const config of configurations) {
    it.skipIf(config.shared && !existsSync('/dev/shm'))(config.name, async () => {
      const shm = `/dev/shm/kemari-measure-${process.pid}`;
      const shmStandby = `${shm}-standby`;
      cleanups.push(() => rmSync(shm, { force: true }));
      cleanups.push(() => rmSync(shmStandby, { force: true }));
      const { imagePath } = await buildGuest({ tickHz: 100, dirtyPagesPerTick: 4, ringPages: 256, serialEveryTicks: 0, diskEveryTicks: 5 }, dir.path);
      const machineArgs = ['-machine', 'pc,accel=tcg', '-m', String(config.memoryMiB), '-nodefaults', '-display', 'none', '-no-reboot'];
      const vm = await QemuVm.launch({
        machineArgs,
        ...(config.shared ? { sharedMemory: { path: shm, sizeBytes: config.memoryMiB << 20 } } : {}),
        dir: dir.path,
        disk: new MemoryNbdBackend(new Uint8Array(readFileSync(imagePath))),
      });
      processes.push(vm.process!);
      cleanups.push(() => vm.close());
      for (const deadline = Date.now() + 10_000; (await readGuestWords(vm.qmp, RUN_MAGIC_ADDRESS, 1))[0] !== RUN_MAGIC; ) {
        if (Date.now() > deadline) throw new Error('the guest did not start');
        await sleep(20);
      }
      const sink = await drainSink(join(dir.path, 'bare.sock'));
      cleanups.push(() => sink.close());

      const cycleMs: number[] = [];
      const migrateMs: number[] = [];
      const scanMs: number[] = [];
      const pages: number[] = [];
      const bareMs: number[] = [];
      let streamBytes = 0;
      let bareBytes = 0;
      const replica = new Replica({ memoryBytes: vm.memoryBytes, pageBytes: vm.pageBytes, deviceNames: vm.deviceNames, disks: vm.disks });
      let txn = 0;
      const fullStart = performance.now();
      await vm.pause();
      apply(replica, ++txn, await vm.capture({ full: true, digest: false }));
      await vm.resume();
      const fullMs = performance.now() - fullStart;
      for (let epoch = 0; epoch < EPOCHS; epoch++) {
        await sleep(EPOCH_GAP_MS);
        const start = performance.now();
        await vm.pause();
        const capture = await vm.capture({ full: false, digest: false });
        await vm.resume();
        cycleMs.push(performance.now() - start);
        apply(replica, ++txn, capture);
        const stats = vm.stats();
        migrateMs.push(stats.lastMigrateMs);
        scanMs.push(stats.lastScanMs);
        pages.push(capture.pages.length);
        streamBytes = stats.lastStreamBytes;
        await sleep(EPOCH_GAP_MS);
        const bare = await bareCycle(vm.qmp, sink);
        bareMs.push(bare.ms);
        bareBytes = bare.bytes;
      }
      // Failover: a standby started beforehand takes the replica.
      const standbyDir = join(dir.path, 'standby');
      mkdirSync(standbyDir);
      const standby = await QemuStandby.start({
        machineArgs,
        ...(config.shared ? { sharedMemory: { path: shmStandby, sizeBytes: config.memoryMiB << 20 } } : {}),
        dir: standbyDir,
        diskBytes: vm.disks[0]!.bytes,
      });
      processes.push(standby.process);
      cleanups.push(() => standby.close());
      await vm.close();
      const restoreStart = performance.now();
      const restored = await standby.restore(replica.snapshot());
      const restoreMs = performance.now() - restoreStart;
      cleanups.push(() => restored.close());
      const line = {
        config: config.name,
        memoryBytes: vm.memoryBytes,
        firstFullCaptureMs: round(fullMs),
        kemariCycleMs: summary(cycleMs),
        kemariMigrateMs: summary(migrateMs),
        kemariScanMs: summary(scanMs),
        pagesPerEpoch: summary(pages),
        streamBytes,
        bareCycleMs: summary(bareMs),
        bareStreamBytes: bareBytes,
        cycleOverBare: round(median(cycleMs) / median(bareMs)),
        restoreMs: round(restoreMs),
        restore: Object.fromEntries(Object.entries(standby.lastRestore!).map(([k, v]) => [k, round(v)])),
      };
      console.log(`[qemu-vm measure] ${JSON.stringify(line)}`);
      expect(pages.every((n) => n > 0 && n < vm.memoryBytes / vm.pageBytes / 20)).toBe(true);
    });
  }
});

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
  return {
    path,
    next: () => new Promise<number>((resolve) => (waiting = resolve)),
    close: () => server.close(),
  };
}

/** QEMU's own checkpoint cost: stop, migrate everything to a socket that discards it, completed, cont. */
async function bareCycle(qmp: QmpClient, sink: Awaited<ReturnType<typeof drainSink>>): Promise<{ ms: number; bytes: number }> {
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

function apply(replica: Replica, txn: number, capture: EpochCapture): void {
  const staged = beginStagedTxn(txn, { full: capture.full, baseTxn: txn - 1, releasedTxn: 0 }, 4096);
  staged.pages.push(...capture.pages);
  staged.devices.push(...capture.devices);
  staged.diskWrites.push(...capture.diskWrites);
  replica.apply(staged, { verify: false });
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? 0;
}

function summary(values: number[]): { p50: number; p90: number; max: number } {
  const sorted = [...values].sort((a, b) => a - b);
  return { p50: round(median(values)), p90: round(sorted[Math.floor(sorted.length * 0.9)] ?? 0), max: round(sorted.at(-1) ?? 0) };
}

function round(value: number): number {
  return Math.round(value * 10) / 10;
}
