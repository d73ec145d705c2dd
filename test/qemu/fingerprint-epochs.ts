/**
 * The epoch check of qemu-vm-fingerprints.test.ts, shared by the test process and a child process run without the
 * page addon (KEMARI_PAGES_IMPLEMENTATION=js is read when src/pages loads, so the fallback needs its own process).
 *
 * It protects the nasm test guest in shared-memory mode over several epochs and checks each capture, while the VM
 * is still paused, against what the guest's memory independently is: the shared block read straight from its
 * file, the ROMs from the VM. A capture must return exactly the pages that differ from the previous capture's state
 * (which is what shadow mode returns, by construction), with their current bytes; a Replica fed the captures must
 * verify each capture's digest and hold, byte for byte, the file and the ROMs. Assertions are node:assert, so the
 * same code fails a vitest test or a child process.
 *
 *   node --import tsx test/qemu/fingerprint-epochs.ts DIR SHM_PATH MODE EPOCHS   (prints the summary as JSON)
 */
import assert from 'node:assert/strict';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { COUNTER_ADDRESS, RUN_MAGIC, RUN_MAGIC_ADDRESS, buildGuest } from '../../examples/guest/build-guest.js';
import type { GuestParams } from '../../examples/guest/build-guest.js';
import { mmapImplementation } from '../../src/pages/mmap.js';
import type { PagesWorkerPool } from '../../src/pages/worker-pool.js';
import { MemoryNbdBackend } from '../../src/qemu/nbd/memory-nbd-backend.js';
import type { SharedMemoryChangeDetection } from '../../src/qemu/qemu-machine.js';
import { QemuVm } from '../../src/qemu/qemu-vm.js';
import { Replica } from '../../src/replica/replica.js';
import { digestHex } from '../../src/replica/state-digest.js';
import { beginStagedTxn } from '../../src/txn/staged-txn.js';
import type { EpochCapture } from '../../src/vm/adapter.js';
import { PageKind } from '../../src/wire/bodies/pages.js';
import { GUEST_ARGS, readGuestWords } from '../helpers/qemu.js';

/** The machine of the fingerprint tests (the guest needs `-machine pc` for its IDE ports). */
export const MACHINE_ARGS: readonly string[] = [...GUEST_ARGS, '-no-reboot'];
/** Guest RAM of the shared file: the nasm guest's 32 MiB. */
export const SHARED_BYTES = 32 << 20;
/** A small dirty rate: 4 ring pages a tick at 100 Hz, one sector every 5 ticks. */
export const GUEST: Partial<GuestParams> = { tickHz: 100, dirtyPagesPerTick: 4, ringPages: 256, serialEveryTicks: 0, diskEveryTicks: 5, diskLbaBase: 2048, diskLbaCount: 1024 };

const PAGE_BYTES = 4096;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** What a run of {@link runFingerprintEpochs} saw. */
export interface FingerprintEpochsSummary {
  /** How the shared file was read: `'native'` (mapped) or `'js'` (positioned reads). */
  mmap: string;
  memoryBytes: number;
  sharedBytes: number;
  shadowBytes: number;
  fingerprintBytes: number;
  /** Pages of each capture (the first one full). */
  pagesPerEpoch: number[];
  /** Error code of `digest()` once the guest ran on after the last capture (undefined when it answered). */
  digestWhileRunning: string | undefined;
}

/**
 * Launches the test guest with its RAM in `shmPath` under `changeDetection`, runs `epochs` epochs (the first a full
 * capture) and checks every capture (see the module comment). The VM and its QEMU are closed on the way out.
 */
export async function runFingerprintEpochs(options: {
  dir: string;
  shmPath: string;
  changeDetection: SharedMemoryChangeDetection;
  epochs: number;
  pagesPool?: PagesWorkerPool;
}): Promise<FingerprintEpochsSummary> {
  const { dir, shmPath, changeDetection, epochs } = options;
  const { imagePath } = await buildGuest(GUEST, dir);
  const vm = await QemuVm.launch({
    machineArgs: MACHINE_ARGS,
    sharedMemory: { path: shmPath, sizeBytes: SHARED_BYTES, changeDetection },
    dir,
    disk: new MemoryNbdBackend(new Uint8Array(readFileSync(imagePath))),
    ...(options.pagesPool === undefined ? {} : { pagesPool: options.pagesPool }),
  });
  const onSignal = () => void vm.process!.kill('SIGKILL').finally(() => process.exit(1));
  process.once('SIGTERM', onSignal);
  try {
    for (const deadline = Date.now() + 10_000; (await readGuestWords(vm.qmp, RUN_MAGIC_ADDRESS, 1))[0] !== RUN_MAGIC; await sleep(20)) {
      assert.ok(Date.now() < deadline, 'the guest did not start');
    }
    const ram = vm.blocks.find((block) => block.shared);
    assert.ok(ram !== undefined, 'no shared block');
    assert.equal(ram.lengthBytes, SHARED_BYTES);
    const pageCount = vm.memoryBytes / PAGE_BYTES;
    const counterPage = (ram.offsetBytes + COUNTER_ADDRESS) / PAGE_BYTES;
    const replica = new Replica({ memoryBytes: vm.memoryBytes, pageBytes: PAGE_BYTES, deviceNames: vm.deviceNames, disks: vm.disks });
    const pagesPerEpoch: number[] = [];
    let lastCounter = -1;
    for (let txn = 1; txn <= epochs; txn++) {
      await sleep(txn === 1 ? 100 : 120);
      await vm.pause();
      try {
        const full = txn === 1;
        const previous = Buffer.from(replica.snapshot().memory);
        const capture = await vm.capture({ full, digest: true });
        // The guest's memory now, independently of the capture: the shared block from its file, the ROMs from the VM.
        const file = readFileSync(shmPath);
        const current = Buffer.from(vm.read(0, vm.memoryBytes));
        assert.ok(current.subarray(ram.offsetBytes, ram.offsetBytes + ram.lengthBytes).equals(file), `epoch ${txn}: read() of the shared block is not the file`);
        file.copy(current, ram.offsetBytes);
        const expected: number[] = [];
        for (let page = 0, at = 0; page < pageCount; page++, at += PAGE_BYTES) {
          if (full || previous.compare(current, at, at + PAGE_BYTES, at, at + PAGE_BYTES) !== 0) expected.push(page);
        }
        assert.deepEqual(
          capture.pages.map((page) => page.index),
          expected,
          `epoch ${txn}: the capture's pages are not exactly the pages that changed since the previous capture`,
        );
        for (const page of capture.pages) {
          const bytes = current.subarray(page.index * PAGE_BYTES, (page.index + 1) * PAGE_BYTES);
          if (page.kind === PageKind.ZERO) assert.ok(bytes.every((b) => b === 0), `epoch ${txn}: page ${page.index} sent as ZERO is not zero`);
          else assert.ok(bytes.equals(page.data), `epoch ${txn}: page ${page.index} does not hold the guest's bytes`);
        }
        if (!full) assert.ok(capture.pages.length > 0 && capture.pages.length < pageCount / 20, `epoch ${txn}: ${capture.pages.length} pages`);
        // Verified: throws KEMARI_VERIFY_FAILED unless the replica's digest is the capture's.
        const digest = applyCapture(replica, txn, capture);
        assert.equal(digestHex(digest), digestHex(capture.stateDigest));
        assert.ok(Buffer.from(replica.snapshot().memory).equals(current), `epoch ${txn}: the replica is not the guest's memory`);
        const counter = Buffer.from(current.buffer, current.byteOffset + counterPage * PAGE_BYTES, 8).readUInt32LE(0);
        assert.ok(counter > lastCounter, `epoch ${txn}: the counter did not advance`);
        lastCounter = counter;
        pagesPerEpoch.push(capture.pages.length);
      } finally {
        await vm.resume();
      }
    }
    await sleep(50);
    const digestWhileRunning = await vm.digest().then(
      () => undefined,
      (error: unknown) => (error as { code?: string }).code ?? String(error),
    );
    const stats = vm.stats();
    return {
      mmap: mmapImplementation(),
      memoryBytes: vm.memoryBytes,
      sharedBytes: ram.lengthBytes,
      shadowBytes: stats.shadowBytes,
      fingerprintBytes: stats.fingerprintBytes,
      pagesPerEpoch,
      digestWhileRunning,
    };
  } finally {
    process.off('SIGTERM', onSignal);
    await vm.close();
  }
}

/** Applies `capture` as transaction `txn`, verified against its digest when it has one; returns the digest. */
export function applyCapture(replica: Replica, txn: number, capture: EpochCapture, verify = true): Uint8Array {
  const staged = beginStagedTxn(txn, { full: capture.full, baseTxn: txn - 1, releasedTxn: 0 }, PAGE_BYTES);
  staged.pages.push(...capture.pages);
  staged.devices.push(...capture.devices);
  staged.diskWrites.push(...capture.diskWrites);
  staged.stateDigest = capture.stateDigest;
  return replica.apply(staged, { verify });
}

// As a child process: DIR SHM_PATH MODE EPOCHS; prints the summary as the last line.
if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const [dir, shmPath, mode, epochs] = process.argv.slice(2) as [string, string, SharedMemoryChangeDetection, string];
  try {
    const summary = await runFingerprintEpochs({ dir, shmPath, changeDetection: mode, epochs: Number(epochs) });
    console.log(JSON.stringify(summary));
  } finally {
    rmSync(shmPath, { force: true });
    rmSync(join(dir, 'nbd.sock'), { force: true });
  }
}
