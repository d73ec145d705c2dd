/**
 * QemuVm against real QEMU (7.2, TCG) running the kemari test guest, its disk served by kemari's NBD server:
 * captures (full, then only changed pages; disk writes in order; copies), a Replica fed the captures reaching the
 * capture's state digest, restore into a standby QEMU that runs on from the checkpoint, and Primary + Secondary end
 * to end with failover into the standby. Skipped, with the reason, without qemu-system-x86_64 or nasm.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  COUNTER_ADDRESS,
  DISK_WRITES_ADDRESS,
  RUN_MAGIC,
  RUN_MAGIC_ADDRESS,
  SECTOR_SIZE_BYTES,
  buildGuest,
  decodeGuestSector,
} from '../../examples/guest/build-guest.js';
import type { GuestParams } from '../../examples/guest/build-guest.js';
import { Primary } from '../../src/primary/primary.js';
import type { PrimaryCapture } from '../../src/primary/primary.js';
import { runInPlaceEpochs } from './in-place-epochs.js';
import { MemoryNbdBackend } from '../../src/qemu/nbd/memory-nbd-backend.js';
import { QemuDisk } from '../../src/qemu/qemu-disk.js';
import { QEMU_DEVICE_NAME } from '../../src/qemu/qemu-device-state.js';
import { QemuStandby } from '../../src/qemu/qemu-standby.js';
import { watchQemuFaults } from '../../src/qemu/qemu-faults.js';
import type { QemuFault } from '../../src/qemu/qemu-faults.js';
import { QemuVm } from '../../src/qemu/qemu-vm.js';
import type { QemuProcess } from '../../src/qemu/qemu-process.js';
import type { QmpClient } from '../../src/qemu/qmp-client.js';
import { Replica } from '../../src/replica/replica.js';
import { digestHex } from '../../src/replica/state-digest.js';
import { Secondary } from '../../src/secondary/secondary.js';
import { beginStagedTxn } from '../../src/txn/staged-txn.js';
import type { EpochCapture } from '../../src/vm/adapter.js';
import { PageKind } from '../../src/wire/bodies/pages.js';
import { GUEST_ARGS, HAS_QEMU, NO_QEMU_MESSAGE, QemuFleet, readGuestWords, tempDir } from '../helpers/qemu.js';

const HAS_NASM = spawnSync('nasm', ['-v'], { stdio: 'ignore' }).status === 0;
const SKIP = !HAS_QEMU || !HAS_NASM;
if (SKIP) console.warn(!HAS_QEMU ? NO_QEMU_MESSAGE : 'nasm not found: QemuVm tests skipped (apt-get install nasm)');

/** The machine of both primary and standby (the guest needs `-machine pc` for its IDE ports). */
const MACHINE_ARGS: readonly string[] = [...GUEST_ARGS, '-no-reboot'];
/** A small dirty rate: 4 ring pages a tick at 100 Hz, one sector every 5 ticks. */
const GUEST: Partial<GuestParams> = { tickHz: 100, dirtyPagesPerTick: 4, ringPages: 256, serialEveryTicks: 0, diskEveryTicks: 5, diskLbaBase: 2048, diskLbaCount: 1024 };

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe.skipIf(SKIP)('QemuVm with real QEMU', () => {
  let dir: { path: string; remove: () => void };
  let fleet: QemuFleet;
  /** QEMU processes started outside the fleet (standbys): killed by PID too. */
  let others: QemuProcess[];
  let cleanups: Array<() => unknown>;

  beforeEach(() => {
    dir = tempDir();
    fleet = new QemuFleet(() => dir.path);
    others = [];
    cleanups = [];
  });

  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await Promise.resolve(cleanup()).catch(() => {});
    await fleet.killAll();
    await Promise.all(others.splice(0).map((qemu) => qemu.kill('SIGKILL')));
    dir.remove();
  });

  /** The test guest on a fleet QEMU, its disk on kemari's NBD server, wrapped in a QemuVm; waits until it runs. */
  async function startGuest(sub = 'p') {
    const { imagePath } = await buildGuest(GUEST, dir.path);
    const backend = new MemoryNbdBackend(new Uint8Array(readFileSync(imagePath)));
    const disk = await QemuDisk.serve({ backend, socketPath: join(dir.path, `${sub}-nbd.sock`) });
    cleanups.push(() => disk.close());
    const qemu = await fleet.start([...disk.driveArgs(), '-no-reboot']);
    const vm = await QemuVm.attach({ qmp: qemu.qmp, disk, migrationSocketPath: join(dir.path, `${sub}-mig.sock`) });
    cleanups.push(() => vm.close());
    await waitRunning(qemu.qmp);
    return { vm, disk, backend, qemu };
  }

  async function startStandby(diskBytes: number, sub = 's') {
    const standbyDir = join(dir.path, sub);
    mkdirSync(standbyDir);
    const standby = await QemuStandby.start({ machineArgs: MACHINE_ARGS, dir: standbyDir, diskBytes });
    others.push(standby.process);
    cleanups.push(() => standby.close());
    return standby;
  }

  /** One epoch: pause, capture, resume. */
  async function epoch(vm: QemuVm, full: boolean): Promise<EpochCapture> {
    await vm.pause();
    try {
      return await vm.capture({ full, digest: true });
    } finally {
      await vm.resume();
    }
  }

  it('captures everything first, then only changed pages, the device blob, and the disk writes in order', async () => {
    const { vm } = await startGuest();
    const pageCount = vm.memoryBytes / vm.pageBytes;
    const ram = vm.blocks.find((b) => b.name === 'pc.ram')!;
    expect(ram.offsetBytes).toBe(0);
    expect(ram.lengthBytes).toBe(32 << 20);
    expect(vm.deviceNames).toEqual([QEMU_DEVICE_NAME]);
    expect(vm.disks).toEqual([{ id: 0, bytes: 4 << 20 }]);
    const counterPage = (ram.offsetBytes + COUNTER_ADDRESS) / 4096;

    await sleep(200);
    const first = await epoch(vm, true);
    expect(first.full).toBe(true);
    expect(first.pages.length).toBe(pageCount);
    expect(first.pages.every((p, i) => p.index === i)).toBe(true);
    expect(first.devices).toHaveLength(1);
    const state = first.devices[0]!.state as { machineType: string; device: Uint8Array; blocks: unknown[] };
    expect(state.machineType).toMatch(/^pc-i440fx-/);
    expect(state.device.byteLength).toBeGreaterThan(1000);
    expect(state.blocks.length).toBe(vm.blocks.length);
    // A full capture describes the disk whole: the boot sector is in it.
    expect(first.diskWrites[0]).toMatchObject({ diskId: 0, offset: 0 });
    let lastCounter = counterOf(first, counterPage);
    expect(lastCounter).toBeGreaterThan(0);

    const writeIndices: bigint[] = [];
    const kept: Array<{ capture: EpochCapture; bytes: Buffer[] }> = [];
    for (let i = 0; i < 4; i++) {
      await sleep(150);
      await vm.pause();
      const capture = await vm.capture({ full: false, digest: true });
      // While still paused: the capture's counter is the guest's counter.
      const [live] = await readGuestWords(vm.qmp, COUNTER_ADDRESS, 1);
      await vm.resume();
      expect(capture.full).toBe(false);
      expect(capture.pages.length).toBeGreaterThan(0);
      expect(capture.pages.length).toBeLessThan(pageCount / 20);
      expect(capture.pages.map((p) => p.index)).toEqual([...capture.pages.map((p) => p.index)].sort((a, b) => a - b));
      const counter = counterOf(capture, counterPage);
      expect(counter).toBe(live);
      expect(counter).toBeGreaterThan(lastCounter);
      lastCounter = counter;
      expect(capture.diskWrites.length).toBeGreaterThan(0);
      for (const write of capture.diskWrites) {
        expect(write.data.byteLength % SECTOR_SIZE_BYTES).toBe(0);
        for (let at = 0; at < write.data.byteLength; at += SECTOR_SIZE_BYTES) {
          const sector = decodeGuestSector(write.data.subarray(at, at + SECTOR_SIZE_BYTES));
          expect(sector?.intact).toBe(true);
          expect(sector!.lba * SECTOR_SIZE_BYTES).toBe(write.offset + at);
          writeIndices.push(sector!.writeIndex);
        }
      }
      kept.push({ capture, bytes: capture.pages.map((p) => Buffer.from(p.data)) });
    }
    // The guest's writes, in the order it issued them, none missing between captures.
    for (let i = 1; i < writeIndices.length; i++) expect(writeIndices[i]).toBe(writeIndices[i - 1]! + 1n);
    // Nothing returned changed while the guest ran on.
    await sleep(100);
    for (const { capture, bytes } of kept) capture.pages.forEach((p, i) => expect(Buffer.from(p.data).equals(bytes[i]!)).toBe(true));
    expect(vm.stats().streams).toBeGreaterThanOrEqual(6);
  });

  it('a Replica fed the captures reaches the state digest of each capture', async () => {
    const { vm, backend } = await startGuest();
    const replica = new Replica({ memoryBytes: vm.memoryBytes, pageBytes: vm.pageBytes, deviceNames: vm.deviceNames, disks: vm.disks });
    for (let txn = 1; txn <= 4; txn++) {
      await sleep(txn === 1 ? 100 : 120);
      const capture = await epoch(vm, txn === 1);
      expect(capture.stateDigest.byteLength).toBe(32);
      // apply with verify throws KEMARI_VERIFY_FAILED unless the replica's digest equals the capture's.
      const digest = applyCapture(replica, txn, capture);
      expect(digestHex(digest)).toBe(digestHex(capture.stateDigest));
    }
    // The replica's disk is the served disk as of the last capture, and its memory the last stream.
    await vm.pause();
    const last = await vm.capture({ full: false, digest: false });
    applyCapture(replica, 5, last, false);
    const snapshot = replica.snapshot();
    expect(Buffer.from(snapshot.disks[0]!.data).equals(Buffer.from(backend.bytes))).toBe(true);
    expect(Buffer.from(snapshot.memory).equals(Buffer.from(vm.read(0, vm.memoryBytes)))).toBe(true);
    // A capture with the guest not run since reuses the stream: nothing changed.
    const again = await vm.capture({ full: false, digest: true });
    expect(again.pages).toEqual([]);
    expect(again.diskWrites).toEqual([]);
    expect(digestHex(again.stateDigest)).toBe(digestHex(replica.digest()));
    await vm.resume();
  });

  it('restores a replica into a standby QEMU: the guest runs on from the checkpoint with the replica disk', async () => {
    const { vm, qemu } = await startGuest();
    const standby = await startStandby(vm.disks[0]!.bytes);
    const replica = new Replica({ memoryBytes: vm.memoryBytes, pageBytes: vm.pageBytes, deviceNames: vm.deviceNames, disks: vm.disks });
    let txn = 0;
    for (; txn < 3; ) {
      await sleep(120);
      const capture = await epoch(vm, txn === 0);
      applyCapture(replica, ++txn, capture);
    }
    // The primary dies after its last checkpoint; its guest ran on a little (uncommitted, lost).
    await sleep(50);
    await qemu.kill('SIGKILL');
    const snapshot = replica.snapshot();
    const pcRam = vm.blocks.find((b) => b.name === 'pc.ram')!;
    const u64 = (address: number) => Number(Buffer.from(snapshot.memory.buffer, snapshot.memory.byteOffset + pcRam.offsetBytes + address, 8).readBigUInt64LE());
    const checkpointCounter = u64(COUNTER_ADDRESS);
    const checkpointWrites = u64(DISK_WRITES_ADDRESS);
    const committedDisk = Uint8Array.from(snapshot.disks[0]!.data);
    expect(checkpointCounter).toBeGreaterThan(0);
    expect(checkpointWrites).toBeGreaterThan(0);

    const restored = await standby.restore(snapshot);
    cleanups.push(() => restored.close());
    expect(restored.memoryBytes).toBe(vm.memoryBytes);
    const [startCounter] = await readGuestWords(restored.qmp, COUNTER_ADDRESS, 1);
    expect(startCounter).toBeGreaterThanOrEqual(checkpointCounter);
    expect(startCounter).toBeLessThan(checkpointCounter + 30);
    await sleep(300);
    const [laterCounter] = await readGuestWords(restored.qmp, COUNTER_ADDRESS, 1);
    expect(laterCounter).toBeGreaterThan(startCounter!);

    // The standby's disk is the replica's disk plus what the restored guest wrote since: its write log.
    await restored.pause();
    const capture = await restored.capture({ full: false, digest: false });
    expect(capture.pages.length).toBeGreaterThan(0);
    expect(capture.diskWrites.length).toBeGreaterThan(0);
    const expected = Uint8Array.from(committedDisk);
    for (const write of capture.diskWrites) expected.set(write.data, write.offset);
    const served = (restored.disk!.backend as MemoryNbdBackend).bytes;
    expect(Buffer.from(served).equals(Buffer.from(expected))).toBe(true);
    // ...and the guest's writes continue the checkpoint's sequence: the next write index is diskWrites at the
    // checkpoint, or one more when the checkpoint caught the guest after that write completed and before it counted it.
    const slot = (GUEST.diskLbaBase! + (checkpointWrites % GUEST.diskLbaCount!)) * SECTOR_SIZE_BYTES;
    const inFlightDone = decodeGuestSector(committedDisk.subarray(slot, slot + SECTOR_SIZE_BYTES))?.writeIndex === BigInt(checkpointWrites);
    const firstNew = decodeGuestSector(capture.diskWrites[0]!.data.subarray(0, SECTOR_SIZE_BYTES))!;
    expect(firstNew.writeIndex).toBe(BigInt(checkpointWrites + (inFlightDone ? 1 : 0)));
    // The restored VM can be protected in turn: a full capture verifies against a fresh replica.
    const second = new Replica({ memoryBytes: restored.memoryBytes, pageBytes: restored.pageBytes, deviceNames: restored.deviceNames, disks: restored.disks });
    applyCapture(second, 1, await restored.capture({ full: true, digest: true }));
    await restored.resume();
    expect(standby.lastRestore?.loadMs).toBeGreaterThan(0);
  });

  it('end to end: Primary and Secondary over TCP, failover into the standby, the guest continues from the committed counter', async () => {
    const { vm, qemu } = await startGuest();
    const standby = await startStandby(vm.disks[0]!.bytes);
    const secondary = await Secondary.listen<QemuVm>({ host: '127.0.0.1', port: 0, verify: true, restoreVm: (snapshot) => standby.restore(snapshot) });
    cleanups.push(() => secondary.close());
    const captures: PrimaryCapture[] = [];
    const primary = await Primary.start({
      vm,
      secondary: { host: '127.0.0.1', port: secondary.port },
      sync: { mode: 'periodic', intervalMs: 100 },
      verify: true,
      precopyRoundsMax: 0,
      onCapture: (c) => captures.push(c),
    });
    cleanups.push(() => primary.close());
    await waitFor(() => primary.stats().ackedTxn >= 5, 20_000);
    primary.close();
    // The primary dies: its guest must not run on beside the promoted one.
    await qemu.kill('SIGKILL');
    const { vm: resumed, txn } = await secondary.promote();
    cleanups.push(() => resumed.close());
    expect(txn).toBeGreaterThanOrEqual(5);
    expect(captures.find((c) => c.txn === txn)).toBeDefined();
    const committed = resumed.read(resumed.blocks.find((b) => b.name === 'pc.ram')!.offsetBytes + COUNTER_ADDRESS, 4);
    const committedCounter = Buffer.from(committed).readUInt32LE(0);
    expect(committedCounter).toBeGreaterThan(0);
    const [now] = await readGuestWords(resumed.qmp, COUNTER_ADDRESS, 1);
    expect(now).toBeGreaterThanOrEqual(committedCounter);
    await sleep(200);
    const [later] = await readGuestWords(resumed.qmp, COUNTER_ADDRESS, 1);
    expect(later).toBeGreaterThan(now!);
    const stats = primary.stats();
    expect(stats.epochs).toBeGreaterThanOrEqual(5);
  });

  it('in place: deltas encoded from the shadow while QEMU is stopped, verified at every ack; a lost link resumes by marking pages changed', async () => {
    const { vm } = await startGuest();
    await runInPlaceEpochs(vm, cleanups);
  });

  it('a full disk log refuses the write (NBD ENOSPC): QEMU stops the guest, the capture takes the log, cont retries the write', async () => {
    const { imagePath } = await buildGuest({ ...GUEST, diskEveryTicks: 2 }, dir.path);
    const disk = await QemuDisk.serve({
      backend: new MemoryNbdBackend(new Uint8Array(readFileSync(imagePath))),
      socketPath: join(dir.path, 'nbd.sock'),
      logBytesMax: 2 * SECTOR_SIZE_BYTES,
    });
    cleanups.push(() => disk.close());
    const qemu = await fleet.start([...disk.driveArgs(), '-no-reboot']);
    const stopped = qemu.qmp.waitForEvent('BLOCK_IO_ERROR', () => true, 10_000);
    const vm = await QemuVm.attach({ qmp: qemu.qmp, disk, migrationSocketPath: join(dir.path, 'mig.sock') });
    cleanups.push(() => vm.close());
    // kemari's own backpressure is not a fault: no failover for a full disk log, nor for the STOP QEMU follows it with.
    const faults: QemuFault[] = [];
    const unwatch = watchQemuFaults({ qmp: qemu.qmp }, (fault) => faults.push(fault), () => vm.stoppedByKemari);
    cleanups.push(unwatch);
    // Capturing is refused while the guest runs.
    await expect(vm.capture({ full: true, digest: false })).rejects.toMatchObject({ code: 'KEMARI_INVALID_ARGUMENT' });
    const event = await stopped;
    expect(event.data).toMatchObject({ operation: 'write', action: 'stop', nospace: true });
    expect((await qemu.qmp.execute<{ status: string }>('query-status')).status).toBe('io-error');
    expect(disk.logBytes).toBe(2 * SECTOR_SIZE_BYTES);
    const [writesBefore] = await readGuestWords(qemu.qmp, DISK_WRITES_ADDRESS, 1);
    await vm.pause();
    const capture = await vm.capture({ full: false, digest: false });
    expect(capture.diskWrites.map((w) => w.data.byteLength)).toEqual([SECTOR_SIZE_BYTES, SECTOR_SIZE_BYTES]);
    expect(disk.logBytes).toBe(0);
    await vm.resume();
    // The refused write is retried and the guest goes on (until the log fills again).
    await waitFor(async () => (await readGuestWords(qemu.qmp, DISK_WRITES_ADDRESS, 1))[0]! > writesBefore!, 5000);
    expect(disk.logBytes).toBeGreaterThan(0);
    expect(faults.filter((f) => f.severity === 'fatal')).toEqual([]);
    expect(faults.some((f) => f.detail.includes('no space'))).toBe(true);
  });

  it('reports QEMU gone as KEMARI_QEMU_EXITED and refuses a snapshot that is not a QEMU one', async () => {
    const { vm, qemu } = await startGuest();
    const standby = await startStandby(vm.disks[0]!.bytes);
    await qemu.kill('SIGKILL');
    await expect(vm.pause()).rejects.toMatchObject({ code: 'KEMARI_QEMU_EXITED' });
    const snapshot = {
      txn: 1,
      memoryBytes: vm.memoryBytes,
      pageBytes: 4096,
      memory: new Uint8Array(vm.memoryBytes),
      devices: new Map<string, unknown>([['cpu0', {}]]),
      disks: [{ id: 0, bytes: vm.disks[0]!.bytes, data: new Uint8Array(vm.disks[0]!.bytes) }],
    };
    await expect(standby.restore(snapshot)).rejects.toMatchObject({ code: 'KEMARI_INVALID_ARGUMENT' });
    // A failed restore spends the standby.
    expect((await standby.process.exited).signal).toBe('SIGKILL');
  });

  it.skipIf(!existsSync('/dev/shm'))('shared memory mode: RAM read from the file, a small stream, and a restore into a standby with its own file', async () => {
    const shmPrimary = `/dev/shm/kemari-test-${process.pid}-p`;
    const shmStandby = `/dev/shm/kemari-test-${process.pid}-s`;
    cleanups.push(() => rmSync(shmPrimary, { force: true }));
    cleanups.push(() => rmSync(shmStandby, { force: true }));
    const { imagePath } = await buildGuest(GUEST, dir.path);
    const vm = await QemuVm.launch({
      machineArgs: MACHINE_ARGS,
      sharedMemory: { path: shmPrimary, sizeBytes: 32 << 20 },
      dir: dir.path,
      disk: new MemoryNbdBackend(new Uint8Array(readFileSync(imagePath))),
    });
    others.push(vm.process!);
    cleanups.push(() => vm.close());
    await waitRunning(vm.qmp);
    const ram = vm.blocks.find((b) => b.shared)!;
    expect(ram).toMatchObject({ name: 'mem', lengthBytes: 32 << 20, shared: true });
    const counterPage = (ram.offsetBytes + COUNTER_ADDRESS) / 4096;
    const pageCount = vm.memoryBytes / vm.pageBytes;
    const replica = new Replica({ memoryBytes: vm.memoryBytes, pageBytes: vm.pageBytes, deviceNames: vm.deviceNames, disks: vm.disks });
    let last = 0;
    for (let txn = 1; txn <= 4; txn++) {
      await sleep(120);
      const capture = await epoch(vm, txn === 1);
      applyCapture(replica, txn, capture);
      const counter = counterOf(capture, counterPage);
      expect(counter).toBeGreaterThan(last);
      last = counter;
      if (txn > 1) expect(capture.pages.length).toBeLessThan(pageCount / 20);
      // Devices and ROMs only: the 32 MiB block is not in the stream.
      expect(vm.stats().lastStreamBytes).toBeLessThan(1 << 20);
    }
    await vm.close();
    const standbyDir = join(dir.path, 's');
    mkdirSync(standbyDir);
    const standby = await QemuStandby.start({ machineArgs: MACHINE_ARGS, sharedMemory: { path: shmStandby, sizeBytes: 32 << 20 }, dir: standbyDir, diskBytes: vm.disks[0]!.bytes });
    others.push(standby.process);
    cleanups.push(() => standby.close());
    const restored = await standby.restore(replica.snapshot());
    cleanups.push(() => restored.close());
    const [start] = await readGuestWords(restored.qmp, COUNTER_ADDRESS, 1);
    expect(start).toBeGreaterThanOrEqual(last);
    expect(start).toBeLessThan(last + 30);
    await sleep(200);
    const [later] = await readGuestWords(restored.qmp, COUNTER_ADDRESS, 1);
    expect(later).toBeGreaterThan(start!);
    expect(standby.lastRestore!.streamBytes).toBeLessThan(1 << 20);
  });
});

/** Polls HMP until the guest's run magic is set (it booted and initialised its devices). */
async function waitRunning(qmp: QmpClient): Promise<void> {
  await waitFor(async () => (await readGuestWords(qmp, RUN_MAGIC_ADDRESS, 1))[0] === RUN_MAGIC, 10_000);
}

async function waitFor(condition: () => boolean | Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await sleep(20);
  }
}

/** The low 32 bits of the guest counter in `capture` (its page must be in it). */
function counterOf(capture: EpochCapture, counterPage: number): number {
  const page = capture.pages.find((p) => p.index === counterPage);
  expect(page).toBeDefined();
  if (page!.kind === PageKind.ZERO) return 0;
  return Buffer.from(page!.data.buffer, page!.data.byteOffset, 8).readUInt32LE(0);
}

/** Applies `capture` as transaction `txn` (verified against its digest when it has one); returns the digest. */
function applyCapture(replica: Replica, txn: number, capture: EpochCapture, verify = true): Uint8Array {
  const staged = beginStagedTxn(txn, { full: capture.full, baseTxn: txn - 1, releasedTxn: 0 }, 4096);
  staged.pages.push(...capture.pages);
  staged.devices.push(...capture.devices);
  staged.diskWrites.push(...capture.diskWrites);
  staged.stateDigest = capture.stateDigest;
  return replica.apply(staged, { verify });
}
