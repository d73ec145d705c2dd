import { describe, expect, it } from 'vitest';
import { mergeCaptures } from '../../src/vm/merge-captures.js';
import type { EpochCapture } from '../../src/vm/adapter.js';
import { PageKind } from '../../src/wire/bodies/pages.js';
import { Replica } from '../../src/replica/replica.js';
import { SimulatedVm } from '../../src/vm/simulated-vm.js';
import { Workload } from '../../src/vm/workload.js';
import { digestHex } from '../../src/replica/state-digest.js';
import { beginStagedTxn } from '../../src/txn/staged-txn.js';

const page = (index: number, fill: number) => ({ index, kind: PageKind.RAW, data: new Uint8Array(4096).fill(fill) });
const capture = (over: Partial<EpochCapture>): EpochCapture => ({ full: false, pages: [], devices: [], diskWrites: [], stateDigest: new Uint8Array(0), ...over });

describe('mergeCaptures', () => {
  it('keeps the newest copy of each page, the newest state of each device, and every disk write in order', () => {
    const a = capture({ pages: [page(1, 1), page(5, 1)], devices: [{ name: 'cpu0', state: 1 }, { name: 'nic0', state: 1 }], diskWrites: [{ diskId: 0, offset: 0, data: Uint8Array.of(1) }] });
    const b = capture({ pages: [page(0, 2), page(5, 2)], devices: [{ name: 'cpu0', state: 2 }], diskWrites: [{ diskId: 0, offset: 0, data: Uint8Array.of(2) }], stateDigest: Uint8Array.of(9) });
    const merged = mergeCaptures([a, b]);
    expect(merged.full).toBe(false);
    expect(merged.pages.map((p) => [p.index, p.data[0]])).toEqual([[0, 2], [1, 1], [5, 2]]);
    expect(merged.devices).toEqual([{ name: 'cpu0', state: 2 }, { name: 'nic0', state: 1 }]);
    expect(merged.diskWrites.map((w) => w.data[0])).toEqual([1, 2]);
    expect([...merged.stateDigest]).toEqual([9]);
  });

  it('refuses nothing to merge and full captures', () => {
    expect(() => mergeCaptures([])).toThrow(expect.objectContaining({ code: 'KEMARI_INVALID_ARGUMENT' }));
    expect(() => mergeCaptures([capture({ full: true })])).toThrow(expect.objectContaining({ code: 'KEMARI_INVALID_ARGUMENT' }));
  });

  it('applied to the base epoch, the merge of later epochs gives the newest state of a real VM', () => {
    const vm = new SimulatedVm({ memoryBytes: 64 * 4096, seed: 3, disks: [{ id: 0, bytes: 64 * 512 }] });
    const workload = new Workload(vm, { seed: 4 });
    const replica = new Replica({ memoryBytes: vm.memoryBytes, pageBytes: vm.pageBytes, deviceNames: vm.deviceNames, disks: vm.disks });
    const apply = (txn: number, c: EpochCapture) => {
      const staged = beginStagedTxn(txn, { full: c.full, baseTxn: txn - 1, releasedTxn: 0 }, vm.pageBytes);
      staged.pages.push(...c.pages);
      staged.devices.push(...c.devices);
      staged.diskWrites.push(...c.diskWrites);
      replica.apply(staged, { verify: false });
    };
    vm.pause();
    apply(1, vm.capture({ full: true, digest: false }));
    vm.resume();
    const later: EpochCapture[] = [];
    for (let epoch = 0; epoch < 4; epoch++) {
      for (let i = 0; i < 5; i++) workload.step();
      vm.pause();
      later.push(vm.capture({ full: false, digest: false }));
      vm.resume();
    }
    apply(2, mergeCaptures(later));
    vm.pause();
    expect(digestHex(replica.digest())).toBe(digestHex(vm.digest()));
  });
});
