import { fc, test } from '@fast-check/vitest';
import { describe, expect, it } from 'vitest';
import { digestHex } from '../../src/replica/state-digest.js';
import type { EpochCapture } from '../../src/vm/adapter.js';
import { SimulatedVm } from '../../src/vm/simulated-vm.js';
import { Workload } from '../../src/vm/workload.js';
import { decodePages, encodePages } from '../../src/wire/bodies/pages.js';
import { PlainReplica } from './plain-replica.js';

const KiB = 1024;

function captureOf(vm: SimulatedVm, full: boolean, digest: boolean): EpochCapture {
  vm.pause();
  const capture = vm.capture({ full, digest });
  vm.resume();
  return capture;
}

/** The replica as a VM: its digest, and byte equality of memory and disks with `vm`. */
function expectReplicaEquals(replica: PlainReplica, vm: SimulatedVm): void {
  const restored = SimulatedVm.restore(replica.snapshot());
  expect(digestHex(restored.digest())).toBe(digestHex(vm.digest()));
  expect(Buffer.compare(replica.memory, vm.memory)).toBe(0);
  for (const disk of replica.disks) expect(Buffer.compare(disk.data, vm.diskRead(disk.id, 0, disk.bytes))).toBe(0);
}

describe('replication: applying captures in order reproduces the VM', () => {
  it('full first, then incremental epochs', () => {
    const vm = new SimulatedVm({ memoryBytes: 2 * 1024 * KiB, seed: 3, disks: [{ id: 0, bytes: 512 * KiB }, { id: 4, bytes: 64 * KiB }] });
    const workload = new Workload(vm, { seed: 8, pagesPerStep: 32, zeroWritesFraction: 0.1, diskWritesPerStep: 2 });
    const replica = new PlainReplica(vm.memoryBytes, vm.pageBytes, vm.disks);
    workload.run(5);
    replica.apply(captureOf(vm, true, false));
    for (let epoch = 0; epoch < 20; epoch++) {
      workload.run(1 + (epoch % 4));
      const capture = captureOf(vm, false, true);
      expect(capture.pages.length).toBeLessThanOrEqual(4 * 33);
      replica.apply(capture);
      // The digest in the capture names the state the replica now holds.
      expect(digestHex(SimulatedVm.restore(replica.snapshot()).digest())).toBe(digestHex(capture.stateDigest));
    }
    expectReplicaEquals(replica, vm);
  });

  it('captures survive the PAGES wire encoding', () => {
    const vm = new SimulatedVm({ memoryBytes: 1024 * KiB, pageBytes: 1024, disks: [{ id: 0, bytes: 64 * KiB }] });
    const workload = new Workload(vm, { seed: 1, zeroWritesFraction: 0.2 });
    const replica = new PlainReplica(vm.memoryBytes, vm.pageBytes, vm.disks);
    for (let epoch = 0; epoch < 5; epoch++) {
      workload.run(3);
      const capture = captureOf(vm, epoch === 0, false);
      const body = Buffer.concat(encodePages({ pageBytes: vm.pageBytes, pages: capture.pages }).parts);
      replica.apply({ ...capture, pages: decodePages(body, 0).pages });
    }
    expectReplicaEquals(replica, vm);
  });

  it('a replica that misses one epoch differs', () => {
    const vm = new SimulatedVm({ memoryBytes: 512 * KiB, disks: [{ id: 0, bytes: 64 * KiB }] });
    const workload = new Workload(vm, { seed: 2 });
    const replica = new PlainReplica(vm.memoryBytes, vm.pageBytes, vm.disks);
    replica.apply(captureOf(vm, true, false));
    workload.run(2);
    captureOf(vm, false, false); // lost
    workload.run(2);
    replica.apply(captureOf(vm, false, false));
    expect(digestHex(SimulatedVm.restore(replica.snapshot()).digest())).not.toBe(digestHex(vm.digest()));
  });

  it('failover: the VM restored from the replica runs on exactly like the original', () => {
    const vm = new SimulatedVm({ memoryBytes: 512 * KiB, disks: [{ id: 0, bytes: 64 * KiB }] });
    const replica = new PlainReplica(vm.memoryBytes, vm.pageBytes, vm.disks);
    new Workload(vm, { seed: 6 }).run(7);
    replica.apply(captureOf(vm, true, false));
    const restored = SimulatedVm.restore(replica.snapshot());
    new Workload(vm, { seed: 77 }).run(9);
    new Workload(restored, { seed: 77 }).run(9);
    expect(digestHex(restored.digest())).toBe(digestHex(vm.digest()));
  });

  test.prop(
    [
      fc.record({
        vmSeed: fc.integer({ min: 0, max: 0xffff_ffff }),
        workloadSeed: fc.integer({ min: 0, max: 0xffff_ffff }),
        pageBytes: fc.constantFrom(512, 1024, 4096),
        pages: fc.integer({ min: 2, max: 128 }),
        pagesPerStep: fc.integer({ min: 0, max: 24 }),
        bytesPerPageWrite: fc.integer({ min: 1, max: 512 }),
        zeroWritesFraction: fc.constantFrom(0, 0.1, 0.5),
        diskWritesPerStep: fc.integer({ min: 0, max: 3 }),
        epochs: fc.array(fc.record({ steps: fc.integer({ min: 0, max: 4 }), full: fc.boolean(), digest: fc.boolean() }), {
          minLength: 1,
          maxLength: 12,
        }),
      }),
    ],
    { numRuns: 50 },
  )('random workloads: captures applied in order reproduce the VM', (p) => {
    const vm = new SimulatedVm({
      memoryBytes: p.pageBytes * p.pages,
      pageBytes: p.pageBytes,
      seed: p.vmSeed,
      disks: [{ id: 0, bytes: 32 * KiB }, { id: 1, bytes: 16 * KiB }],
    });
    const workload = new Workload(vm, {
      seed: p.workloadSeed,
      pagesPerStep: Math.min(p.pagesPerStep, p.pages - 1),
      bytesPerPageWrite: Math.min(p.bytesPerPageWrite, p.pageBytes),
      zeroWritesFraction: p.zeroWritesFraction,
      diskWritesPerStep: p.diskWritesPerStep,
      diskWriteBytes: 1024,
    });
    const replica = new PlainReplica(vm.memoryBytes, vm.pageBytes, vm.disks);
    for (const epoch of p.epochs) {
      workload.run(epoch.steps);
      const dirty = vm.dirtyPages();
      const capture = captureOf(vm, epoch.full, epoch.digest);
      const expected = epoch.full ? Array.from({ length: p.pages }, (_, i) => i) : dirty;
      expect(capture.pages.map((page) => page.index)).toEqual(expected);
      expect(vm.dirtyPageCount).toBe(0);
      replica.apply(capture);
      if (epoch.digest) expect(digestHex(capture.stateDigest)).toBe(digestHex(vm.digest()));
    }
    expectReplicaEquals(replica, vm);
  });
});
