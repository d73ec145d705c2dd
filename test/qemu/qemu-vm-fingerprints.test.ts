/**
 * QemuVm's shared-memory mode with `changeDetection: 'fingerprints'` against real QEMU (7.2, TCG) running the kemari
 * test guest: no shadow copy of the shared RAM block, yet captures return exactly what shadow mode returns (the
 * pages that changed since the previous capture, with the guest's bytes), a replica of them is the shared file byte
 * for byte, digests verify, a restored snapshot gives the same pages and digest in both modes, Primary and
 * Secondary verify every epoch and fail over into a fingerprints standby, and a capture that fails after the scan
 * loses no changed page. Also without the page addon (a child process reading the file with
 * positioned I/O). Skipped, with the reason, without qemu-system-x86_64, nasm or /dev/shm.
 */
import { execFile, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { COUNTER_ADDRESS, RUN_MAGIC, RUN_MAGIC_ADDRESS, buildGuest } from '../../examples/guest/build-guest.js';
import { mmapImplementation } from '../../src/pages/mmap.js';
import { PagesWorkerPool } from '../../src/pages/worker-pool.js';
import { Primary } from '../../src/primary/primary.js';
import { GuestMemory } from '../../src/qemu/guest-memory.js';
import { MemoryNbdBackend } from '../../src/qemu/nbd/memory-nbd-backend.js';
import { SHARED_MEMORY_BACKEND_ID, checkSharedMemory } from '../../src/qemu/qemu-machine.js';
import type { SharedMemoryChangeDetection } from '../../src/qemu/qemu-machine.js';
import type { QemuProcess } from '../../src/qemu/qemu-process.js';
import { QemuStandby } from '../../src/qemu/qemu-standby.js';
import { QemuVm } from '../../src/qemu/qemu-vm.js';
import type { QmpClient } from '../../src/qemu/qmp-client.js';
import { SharedMemoryFile } from '../../src/qemu/shared-memory-file.js';
import { Replica } from '../../src/replica/replica.js';
import { digestHex } from '../../src/replica/state-digest.js';
import { Secondary } from '../../src/secondary/secondary.js';
import type { EpochCapture } from '../../src/vm/adapter.js';
import { PageKind } from '../../src/wire/bodies/pages.js';
import { HAS_QEMU, NO_QEMU_MESSAGE, readGuestWords, tempDir } from '../helpers/qemu.js';
import { GUEST, MACHINE_ARGS, SHARED_BYTES, applyCapture, runFingerprintEpochs } from './fingerprint-epochs.js';
import { runInPlaceEpochs } from './in-place-epochs.js';

const HAS_NASM = spawnSync('nasm', ['-v'], { stdio: 'ignore' }).status === 0;
const HAS_SHM = existsSync('/dev/shm');
const SKIP = !HAS_QEMU || !HAS_NASM || !HAS_SHM;
if (SKIP) console.warn(!HAS_QEMU ? NO_QEMU_MESSAGE : !HAS_NASM ? 'nasm not found: fingerprint tests skipped (apt-get install nasm)' : 'no /dev/shm: fingerprint tests skipped');

const PAGE_BYTES = 4096;
const EPOCHS = 5;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const execFileAsync = promisify(execFile);

describe('sharedMemory.changeDetection validation', () => {
  it('an unknown value is KEMARI_INVALID_ARGUMENT, before any QEMU starts', async () => {
    const shared = { path: '/dev/shm/kemari-never-created', sizeBytes: SHARED_BYTES, changeDetection: 'bloom' as SharedMemoryChangeDetection };
    expect(() => checkSharedMemory(shared)).toThrow(expect.objectContaining({ code: 'KEMARI_INVALID_ARGUMENT' }));
    for (const value of ['shadow', 'fingerprints', undefined] as const) expect(() => checkSharedMemory({ ...shared, changeDetection: value })).not.toThrow();
    const dir = tempDir();
    try {
      await expect(QemuVm.launch({ machineArgs: MACHINE_ARGS, sharedMemory: shared, dir: dir.path })).rejects.toMatchObject({ code: 'KEMARI_INVALID_ARGUMENT' });
    } finally {
      dir.remove();
    }
    const blocks = [{ name: 'mem', offsetBytes: 0, lengthBytes: 8 * PAGE_BYTES, shared: true }];
    expect(() => new GuestMemory(blocks, { changeDetection: 'bloom' as SharedMemoryChangeDetection })).toThrow(expect.objectContaining({ code: 'KEMARI_INVALID_ARGUMENT' }));
    // Fingerprints mode keeps no copy of the shared block, so it cannot do without the block's bytes.
    expect(() => new GuestMemory(blocks, { changeDetection: 'fingerprints' })).toThrow(expect.objectContaining({ code: 'KEMARI_INVALID_ARGUMENT' }));
  });
});

describe.skipIf(SKIP)('QemuVm shared memory with fingerprints change detection (real QEMU)', () => {
  let dir: { path: string; remove: () => void };
  /** QEMU processes started by the test: killed by PID in afterEach, whatever happened. */
  let processes: QemuProcess[];
  let cleanups: Array<() => unknown>;
  let files: number;

  beforeEach(() => {
    dir = tempDir();
    processes = [];
    cleanups = [];
    files = 0;
  });

  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await Promise.resolve(cleanup()).catch(() => {});
    await Promise.all(processes.splice(0).map((qemu) => qemu.kill('SIGKILL')));
    dir.remove();
  });

  /** A new shared memory file path, removed after the test. */
  function shmPath(): string {
    const path = `/dev/shm/kemari-fp-${process.pid}-${files++}`;
    cleanups.push(() => rmSync(path, { force: true }));
    return path;
  }

  /** The test guest with its RAM in a shared file, protected under `changeDetection`; waits until it runs. */
  async function launch(changeDetection: SharedMemoryChangeDetection, sub = 'p') {
    const vmDir = join(dir.path, sub);
    mkdirSync(vmDir);
    const { imagePath } = await buildGuest(GUEST, vmDir);
    const path = shmPath();
    const vm = await QemuVm.launch({
      machineArgs: MACHINE_ARGS,
      sharedMemory: { path, sizeBytes: SHARED_BYTES, changeDetection },
      dir: vmDir,
      disk: new MemoryNbdBackend(new Uint8Array(readFileSync(imagePath))),
    });
    processes.push(vm.process!);
    cleanups.push(() => vm.close());
    await waitRunning(vm.qmp);
    return { vm, path, ram: vm.blocks.find((b) => b.shared)! };
  }

  async function startStandby(changeDetection: SharedMemoryChangeDetection, diskBytes: number, sub: string) {
    const standbyDir = join(dir.path, sub);
    mkdirSync(standbyDir);
    const standby = await QemuStandby.start({
      machineArgs: MACHINE_ARGS,
      sharedMemory: { path: shmPath(), sizeBytes: SHARED_BYTES, changeDetection },
      dir: standbyDir,
      diskBytes,
    });
    processes.push(standby.process);
    cleanups.push(() => standby.close());
    return standby;
  }

  // The same checks hold for shadow mode: they are its semantics (every page that differs from the previous capture).
  it.each(['fingerprints', 'shadow'] as const)(
    '%s: each capture is exactly the pages that changed, a verified replica of them is the shared file byte for byte',
    async (changeDetection) => {
      const sub = join(dir.path, 'epochs');
      mkdirSync(sub);
      const path = shmPath();
      const summary = await runFingerprintEpochs({ dir: sub, shmPath: path, changeDetection, epochs: EPOCHS });
      expect(summary.mmap).toBe(mmapImplementation());
      expect(summary.pagesPerEpoch).toHaveLength(EPOCHS);
      expect(summary.pagesPerEpoch[0]).toBe(summary.memoryBytes / PAGE_BYTES);
      if (changeDetection === 'fingerprints') {
        // No shadow of the 32 MiB block: only the ROMs the stream carries; 8 bytes a page of fingerprints.
        expect(summary.shadowBytes).toBe(summary.memoryBytes - summary.sharedBytes);
        expect(summary.shadowBytes).toBeLessThan(summary.sharedBytes / 8);
        expect(summary.fingerprintBytes).toBe((summary.sharedBytes / PAGE_BYTES) * 8);
        // The file no longer holds the last capture's state once the guest runs: no digest of some other state.
        expect(summary.digestWhileRunning).toBe('KEMARI_INVALID_ARGUMENT');
      } else {
        expect(summary.shadowBytes).toBe(summary.memoryBytes);
        expect(summary.fingerprintBytes).toBe(0);
        expect(summary.digestWhileRunning).toBeUndefined();
      }
    },
  );

  it('fingerprints on a worker pool: the threads map the file and fingerprint it, with the same exact captures', async () => {
    const sub = join(dir.path, 'pool');
    mkdirSync(sub);
    // Threshold 0: the 32 MiB test guest counts as large, so every scan runs on the threads.
    const pool = await PagesWorkerPool.start({ workers: 2, parallelBytesMin: 0 });
    cleanups.push(() => pool.close());
    const summary = await runFingerprintEpochs({ dir: sub, shmPath: shmPath(), changeDetection: 'fingerprints', epochs: EPOCHS, pagesPool: pool });
    expect(summary.pagesPerEpoch).toHaveLength(EPOCHS);
    expect(summary.shadowBytes).toBe(summary.memoryBytes - summary.sharedBytes);
    // Every capture after the first scanned the file on the threads (the attach probe and the full capture too).
    expect(pool.stats().parallelOperations).toBeGreaterThanOrEqual(EPOCHS);
    expect(pool.stats().workerCrashes).toBe(0);
  });

  it('fingerprints without the page addon: the file read in chunks and copied with positioned reads (child process)', async () => {
    const sub = join(dir.path, 'js');
    mkdirSync(sub);
    const path = shmPath();
    const helper = join(import.meta.dirname, 'fingerprint-epochs.ts');
    const { stdout } = await execFileAsync(process.execPath, ['--import', 'tsx', helper, sub, path, 'fingerprints', String(EPOCHS)], {
      cwd: join(import.meta.dirname, '..', '..'),
      env: { ...process.env, KEMARI_PAGES_IMPLEMENTATION: 'js' },
      encoding: 'utf8',
      timeout: 120_000,
    });
    const summary = JSON.parse(stdout.trim().split('\n').pop()!) as Awaited<ReturnType<typeof runFingerprintEpochs>>;
    expect(summary.mmap).toBe('js');
    expect(summary.pagesPerEpoch).toHaveLength(EPOCHS);
    expect(summary.shadowBytes).toBe(summary.memoryBytes - summary.sharedBytes);
    expect(summary.fingerprintBytes).toBe((summary.sharedBytes / PAGE_BYTES) * 8);
  });

  it('one restored state gives the same pages and digest in both modes; the fingerprints VM then finds only what changed', async () => {
    const { vm } = await launch('fingerprints');
    const replica = new Replica({ memoryBytes: vm.memoryBytes, pageBytes: PAGE_BYTES, deviceNames: vm.deviceNames, disks: vm.disks });
    for (let txn = 1; txn <= 3; txn++) {
      await sleep(120);
      await vm.pause();
      applyCapture(replica, txn, await vm.capture({ full: txn === 1, digest: true }));
      await vm.resume();
    }
    await vm.close();
    const snapshot = replica.snapshot();
    const committed = Buffer.from(snapshot.memory);
    const diskBytes = vm.disks[0]!.bytes;

    // The same snapshot, restored paused into two standbys: one keeps a shadow, the other fingerprints.
    const withFingerprints = await (await startStandby('fingerprints', diskBytes, 's1')).restore(snapshot, { paused: true });
    cleanups.push(() => withFingerprints.close());
    const withShadow = await (await startStandby('shadow', diskBytes, 's2')).restore(snapshot, { paused: true });
    cleanups.push(() => withShadow.close());
    expect(withShadow.stats()).toMatchObject({ shadowBytes: vm.memoryBytes, fingerprintBytes: 0 });
    expect(withFingerprints.stats()).toMatchObject({ shadowBytes: vm.memoryBytes - SHARED_BYTES, fingerprintBytes: (SHARED_BYTES / PAGE_BYTES) * 8 });
    const a = await withFingerprints.capture({ full: true, digest: true });
    const b = await withShadow.capture({ full: true, digest: true });
    expect(digestHex(a.stateDigest)).toBe(digestHex(b.stateDigest));
    expect(digestHex(a.stateDigest)).toBe(digestHex(replica.digest()));
    expect(samePages(a, b)).toBe(true);
    expect(Buffer.from(withFingerprints.read(0, vm.memoryBytes)).equals(committed)).toBe(true);

    // Protected in turn: a fresh replica of the restored VM; the next capture is exactly what changed since the
    // snapshot (the fingerprints were taken from it on adopt, not left blank: blank ones would resend every page).
    const second = new Replica({ memoryBytes: vm.memoryBytes, pageBytes: PAGE_BYTES, deviceNames: vm.deviceNames, disks: vm.disks });
    applyCapture(second, 1, a);
    await withFingerprints.resume();
    await sleep(150);
    await withFingerprints.pause();
    const next = await withFingerprints.capture({ full: false, digest: true });
    const current = Buffer.from(withFingerprints.read(0, vm.memoryBytes));
    const changed = changedPages(committed, current);
    expect(changed.length).toBeGreaterThan(0);
    expect(changed.length).toBeLessThan(vm.memoryBytes / PAGE_BYTES / 20);
    expect(next.pages.map((p) => p.index)).toEqual(changed);
    applyCapture(second, 2, next);
    expect(Buffer.from(second.snapshot().memory).equals(current)).toBe(true);
    const ram = withFingerprints.blocks.find((block) => block.shared)!;
    expect(current.readUInt32LE(ram.offsetBytes + COUNTER_ADDRESS)).toBeGreaterThan(committed.readUInt32LE(ram.offsetBytes + COUNTER_ADDRESS));
    await withFingerprints.resume();
  });

  it('end to end: Primary and Secondary over TCP with verify, failover into a fingerprints standby that holds the committed memory', async () => {
    const { vm } = await launch('fingerprints');
    const standby = await startStandby('fingerprints', vm.disks[0]!.bytes, 's');
    let committed: Buffer | undefined;
    const secondary = await Secondary.listen<QemuVm>({
      host: '127.0.0.1',
      port: 0,
      verify: true,
      restoreVm: (snapshot) => {
        committed = Buffer.from(snapshot.memory);
        return standby.restore(snapshot, { paused: true });
      },
    });
    cleanups.push(() => secondary.close());
    // verify: every epoch's digest is checked against the secondary's replica; a mismatch is a NACK, not an ack.
    const primary = await Primary.start({ vm, secondary: { host: '127.0.0.1', port: secondary.port }, sync: { mode: 'periodic', intervalMs: 100 }, verify: true, precopyRoundsMax: 0 });
    cleanups.push(() => primary.close());
    await waitFor(() => primary.stats().ackedTxn >= 5, 20_000);
    primary.close();
    await vm.process!.kill('SIGKILL');
    const { vm: resumed, txn } = await secondary.promote();
    cleanups.push(() => resumed.close());
    expect(txn).toBeGreaterThanOrEqual(5);
    expect(resumed.stats()).toMatchObject({ shadowBytes: resumed.memoryBytes - SHARED_BYTES, fingerprintBytes: (SHARED_BYTES / PAGE_BYTES) * 8 });
    // Restored paused: its file and ROMs are exactly the committed memory, and its digest the committed one.
    expect(Buffer.from(resumed.read(0, resumed.memoryBytes)).equals(committed!)).toBe(true);
    const replica = new Replica({ memoryBytes: resumed.memoryBytes, pageBytes: PAGE_BYTES, deviceNames: resumed.deviceNames, disks: resumed.disks });
    applyCapture(replica, 1, await resumed.capture({ full: true, digest: true }));
    await resumed.resume();
    const [start] = await readGuestWords(resumed.qmp, COUNTER_ADDRESS, 1);
    await sleep(200);
    const [later] = await readGuestWords(resumed.qmp, COUNTER_ADDRESS, 1);
    expect(later).toBeGreaterThan(start!);
  });

  it('in place: the changed pages are views of the mapped file while QEMU is stopped, deltas verified at every ack, a lost link resumed', async () => {
    const { vm } = await launch('fingerprints');
    await runInPlaceEpochs(vm, cleanups);
    expect(vm.stats()).toMatchObject({ fingerprintBytes: (SHARED_BYTES / PAGE_BYTES) * 8 });
  });

  it('a capture that fails after the scan loses no changed page: the pages whose fingerprints moved on stay marked', async () => {
    const { vm, path } = await launch('fingerprints');
    await vm.pause();
    // The guest's memory under a fingerprints GuestMemory of its own, over the same file (the send-buffer allocator
    // is the seam: the scan is done, the copy fails).
    const file = await SharedMemoryFile.open(path, SHARED_BYTES);
    cleanups.push(() => file.close());
    const memory = new GuestMemory(vm.blocks, { changeDetection: 'fingerprints', sharedSources: new Map([[SHARED_MEMORY_BACKEND_ID, file]]) });
    const block = memory.block(SHARED_MEMORY_BACKEND_ID)!;
    expect(memory.shadowBytes).toBe(vm.memoryBytes - SHARED_BYTES);
    await file.scanInto(memory, block);
    expect(memory.takePages(true).pages).toHaveLength(vm.memoryBytes / PAGE_BYTES);
    const base = readFileSync(path);
    await vm.resume();
    await sleep(150);
    await vm.pause();
    await file.scanInto(memory, block);
    const marked = memory.changedPageCount;
    expect(marked).toBeGreaterThan(0);
    expect(() =>
      memory.takePages(false, () => {
        throw new Error('injected: no send buffer');
      }),
    ).toThrow('injected: no send buffer');
    expect(memory.changedPageCount).toBe(marked);
    // The same bytes scanned again: their fingerprints already match, yet the pages are still taken.
    await file.scanInto(memory, block);
    expect(memory.changedPageCount).toBe(marked);
    // And a later epoch adds its own changes to them.
    await vm.resume();
    await sleep(150);
    await vm.pause();
    await file.scanInto(memory, block);
    const now = readFileSync(path);
    const { pages, send } = memory.takePages(false);
    const expected = changedPages(base, now).map((page) => page + block.offsetBytes / PAGE_BYTES);
    expect(pages.map((p) => p.index)).toEqual(expected);
    for (const page of pages) {
      const at = page.index * PAGE_BYTES - block.offsetBytes;
      if (page.kind === PageKind.ZERO) expect(now.subarray(at, at + PAGE_BYTES).every((byte) => byte === 0)).toBe(true);
      else expect(Buffer.from(page.data).equals(now.subarray(at, at + PAGE_BYTES))).toBe(true);
    }
    expect(send.byteLength).toBe(pages.filter((p) => p.kind === PageKind.RAW).length * PAGE_BYTES);
    expect(memory.changedPageCount).toBe(0);
    await vm.resume();
  });
});

/** Polls HMP until the guest's run magic is set (it booted and initialised its devices). */
async function waitRunning(qmp: QmpClient): Promise<void> {
  const deadline = Date.now() + 10_000;
  while ((await readGuestWords(qmp, RUN_MAGIC_ADDRESS, 1))[0] !== RUN_MAGIC) {
    if (Date.now() > deadline) throw new Error('the guest did not start');
    await sleep(20);
  }
}

async function waitFor(condition: () => boolean | Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await sleep(20);
  }
}

/** The pages (of PAGE_BYTES) at which `before` and `after` differ, in order. */
function changedPages(before: Buffer, after: Buffer): number[] {
  const pages: number[] = [];
  for (let at = 0; at < after.byteLength; at += PAGE_BYTES) if (before.compare(after, at, at + PAGE_BYTES, at, at + PAGE_BYTES) !== 0) pages.push(at / PAGE_BYTES);
  return pages;
}

/** True when both captures hold the same pages: indices, kinds and bytes. */
function samePages(a: EpochCapture, b: EpochCapture): boolean {
  return (
    a.pages.length === b.pages.length &&
    a.pages.every((page, i) => {
      const other = b.pages[i]!;
      return page.index === other.index && page.kind === other.kind && Buffer.from(page.data).equals(Buffer.from(other.data));
    })
  );
}
