import { describe, expect, it } from 'vitest';
import { digestHex } from '../../src/replica/state-digest.js';
import { SimulatedVm } from '../../src/vm/simulated-vm.js';
import type { SimulatedVmOptions } from '../../src/vm/simulated-vm.js';
import { Workload } from '../../src/vm/workload.js';
import type { WorkloadOptions } from '../../src/vm/workload.js';
import { codeOf, errorOf } from './error-of.js';

const KiB = 1024;
const MiB = 1024 * KiB;

function makeVm(options: Partial<SimulatedVmOptions> = {}): SimulatedVm {
  return new SimulatedVm({ memoryBytes: MiB, disks: [{ id: 0, bytes: 256 * KiB }], ...options });
}

function clearDirty(vm: SimulatedVm): void {
  vm.pause();
  vm.capture({ full: false, digest: false });
  vm.resume();
}

function digestAfter(steps: number, vmSeed: number, workload: WorkloadOptions): string {
  const vm = makeVm({ seed: vmSeed });
  new Workload(vm, workload).run(steps);
  return digestHex(vm.digest());
}

function counterIn(vm: SimulatedVm): number {
  const b = vm.read(0, 8);
  return Buffer.from(b).readUInt32LE(0) + Buffer.from(b).readUInt32LE(4) * 2 ** 32;
}

describe('Workload', () => {
  it('is deterministic: same seeds, same state; another seed, another state', () => {
    const a = digestAfter(50, 1, { seed: 9 });
    expect(digestAfter(50, 1, { seed: 9 })).toBe(a);
    expect(digestAfter(50, 1, { seed: 10 })).not.toBe(a);
    expect(digestAfter(50, 2, { seed: 9 })).not.toBe(a);
    expect(digestAfter(49, 1, { seed: 9 })).not.toBe(a);
  });

  it('one step: ticks cpu0, writes the counter to page 0, dirties pagesPerStep other pages, writes the disk', () => {
    const vm = makeVm();
    const workload = new Workload(vm, { seed: 3, pagesPerStep: 10, diskWritesPerStep: 2, diskWriteBytes: 1024 });
    clearDirty(vm);
    const cpuBefore = vm.device('cpu0');
    expect(workload.step()).toBe(true);
    const cpu = vm.device('cpu0');
    expect(cpu.ticks).toBe(cpuBefore.ticks + 1);
    expect(cpu.registers).not.toEqual(cpuBefore.registers);
    expect(cpu.instructionsRetired).toBeGreaterThan(cpuBefore.instructionsRetired);
    expect(workload.counter).toBe(1);
    expect(counterIn(vm)).toBe(1);
    expect(vm.dirtyPageCount).toBe(11);
    expect(vm.isDirty(0)).toBe(true);
    expect(vm.device('disk-ctl')).toMatchObject({ writes: 2, sectorsWritten: 4 });
    expect(vm.diskLogBytes).toBe(2048);
    workload.step();
    expect(counterIn(vm)).toBe(2);
    expect(workload.steps).toBe(2);
  });

  it('rewrites bytesPerPageWrite bytes of each chosen page', () => {
    const vm = makeVm({ pageBytes: 4096 });
    const workload = new Workload(vm, { seed: 4, pagesPerStep: 20, bytesPerPageWrite: 32, diskWritesPerStep: 0 });
    clearDirty(vm);
    workload.step();
    for (const page of vm.dirtyPages().filter((p) => p !== 0)) {
      const nonZero = vm.read(page * 4096, 4096).filter((b) => b !== 0).length;
      expect(nonZero).toBeGreaterThan(0);
      expect(nonZero).toBeLessThanOrEqual(32);
    }
  });

  it('sends most writes to a hot set', () => {
    const vm = makeVm(); // 256 pages; hot set of ~26
    const workload = new Workload(vm, { seed: 5, pagesPerStep: 8, hotPagesFraction: 0.1, hotWritesFraction: 1, diskWritesPerStep: 0 });
    workload.run(1); // the first step fixes nothing about the hot set; it is chosen at construction
    clearDirty(vm);
    workload.run(20);
    const pages = vm.dirtyPages().filter((p) => p !== 0);
    expect(Math.max(...pages) - Math.min(...pages)).toBeLessThan(26);
    const anywhere = makeVm();
    const spread = new Workload(anywhere, { seed: 5, pagesPerStep: 8, hotWritesFraction: 0, diskWritesPerStep: 0 });
    clearDirty(anywhere);
    spread.run(20);
    const spreadPages = anywhere.dirtyPages().filter((p) => p !== 0);
    expect(Math.max(...spreadPages) - Math.min(...spreadPages)).toBeGreaterThan(100);
  });

  it('does nothing while the VM is paused', () => {
    const vm = makeVm();
    const workload = new Workload(vm, { seed: 1 });
    workload.run(3);
    vm.pause();
    const before = digestHex(vm.digest());
    expect(workload.step()).toBe(false);
    expect(workload.run(5)).toBe(0);
    expect(digestHex(vm.digest())).toBe(before);
    expect(workload.counter).toBe(3);
    vm.resume();
    expect(workload.step()).toBe(true);
    expect(workload.counter).toBe(4);
  });

  it('emits outputs at the configured rate, naming the step, alternating serial0 and net0', () => {
    const outputs: [string, string][] = [];
    const vm = makeVm();
    const workload = new Workload(vm, { seed: 2, outputEvery: 4, output: (channel, data) => outputs.push([channel, Buffer.from(data).toString()]) });
    workload.run(40);
    expect(outputs).toHaveLength(10);
    expect(workload.outputs).toBe(10);
    expect(outputs.slice(0, 3)).toEqual([
      ['serial0', 'serial line 4\n'],
      ['net0', 'net packet 8\n'],
      ['serial0', 'serial line 12\n'],
    ]);
    const net = outputs.filter(([c]) => c === 'net0');
    expect(vm.device('nic0')).toMatchObject({ txPackets: net.length, txBytes: net.reduce((n, [, d]) => n + d.length, 0) });

    const every = new Workload(makeVm(), { seed: 2, outputEvery: 1, output: () => outputs.push(['x', '']) });
    outputs.length = 0;
    every.run(7);
    expect(outputs).toHaveLength(7);
    const never = new Workload(makeVm(), { seed: 2, outputEvery: 0, output: () => outputs.push(['x', '']) });
    outputs.length = 0;
    never.run(20);
    expect(outputs).toHaveLength(0);
  });

  it('continues the guest counter found in page 0 (a VM restored after failover)', () => {
    const vm = makeVm();
    new Workload(vm, { seed: 1 }).run(10);
    const restored = SimulatedVm.restore(vm.snapshot());
    const outputs: string[] = [];
    const resumed = new Workload(restored, { seed: 1, outputEvery: 4, output: (_c, d) => outputs.push(Buffer.from(d).toString()) });
    expect(resumed.counter).toBe(10);
    resumed.run(2);
    expect(resumed.counter).toBe(12);
    expect(outputs).toEqual(['serial line 12\n']);
    expect(restored.device('cpu0').ticks).toBe(12);
  });

  it('refuses a step that would overflow the disk write log, before changing anything', () => {
    const vm = makeVm({ diskLogBytesMax: 8 * KiB });
    const workload = new Workload(vm, { seed: 1, diskWriteBytes: 4096 });
    workload.run(2);
    const before = digestHex(vm.digest());
    const error = errorOf(() => workload.step());
    expect(error.code).toBe('KEMARI_DISK_LOG_FULL');
    expect(error.details.field).toBe('diskLog');
    expect(digestHex(vm.digest())).toBe(before);
    expect(workload.counter).toBe(2);
    clearDirty(vm);
    expect(workload.step()).toBe(true);
  });

  it('validates its options against the VM', () => {
    const vm = makeVm({ memoryBytes: 16 * 4096 });
    const bad: WorkloadOptions[] = [
      { seed: -1 },
      { pagesPerStep: 16 }, // only 15 pages besides page 0
      { bytesPerPageWrite: 0 },
      { bytesPerPageWrite: 4097 },
      { hotPagesFraction: 0 },
      { hotPagesFraction: 1.5 },
      { hotWritesFraction: -0.1 },
      { zeroWritesFraction: Number.NaN },
      { diskWriteBytes: 1000 },
      { diskWriteBytes: 512 * KiB }, // larger than the disk
      { outputEvery: -1 },
    ];
    for (const options of bad) expect(codeOf(() => new Workload(vm, options)), JSON.stringify(options)).toBe('KEMARI_INVALID_ARGUMENT');
    const diskless = makeVm({ disks: [] });
    expect(codeOf(() => new Workload(diskless, { diskWritesPerStep: 1 }))).toBe('KEMARI_INVALID_ARGUMENT');
    new Workload(diskless).run(3); // default: no disk writes on a diskless VM
    expect(diskless.device('disk-ctl').writes).toBe(0);
    expect(new Workload(vm, { pagesPerStep: 15 }).run(2)).toBe(2);
  });
});
