import { describe, expect, it } from 'vitest';
import { digestHex } from '../../src/replica/state-digest.js';
import { SIMULATED_DEVICE_NAMES, SimulatedVm } from '../../src/vm/simulated-vm.js';
import type { CpuState, NicState, SimulatedVmOptions } from '../../src/vm/simulated-vm.js';
import { PageKind } from '../../src/wire/bodies/pages.js';
import { codeOf, errorOf } from './error-of.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/** A VM whose initial all-dirty epoch has been captured, so tests start from a clean bitmap. */
function cleanVm(options: Partial<SimulatedVmOptions> = {}): SimulatedVm {
  const vm = new SimulatedVm({ memoryBytes: 256 * KiB, pageBytes: 4096, disks: [{ id: 0, bytes: 64 * KiB }], ...options });
  vm.pause();
  vm.capture({ full: false, digest: false });
  vm.resume();
  return vm;
}

function filled(length: number, value: number): Uint8Array {
  return new Uint8Array(length).fill(value);
}

function hex(digest: Uint8Array): string {
  return digestHex(digest);
}

describe('SimulatedVm: construction', () => {
  it('uses the documented defaults', () => {
    const vm = new SimulatedVm({ memoryBytes: MiB });
    expect(vm.pageBytes).toBe(4096);
    expect(vm.pageCount).toBe(256);
    expect(vm.seed).toBe(1);
    expect(vm.disks).toEqual([{ id: 0, bytes: 8 * MiB }]);
    expect(vm.deviceNames).toEqual(['cpu0', 'nic0', 'disk-ctl']);
    expect(vm.diskLogBytesMax).toBe(64 * MiB);
    expect(vm.paused).toBe(false);
    expect(vm.memory.byteLength).toBe(MiB);
    expect(vm.dirtyPageCount).toBe(256); // nothing captured yet: everything is dirty
  });

  it('derives the initial device state from the seed', () => {
    const a = new SimulatedVm({ memoryBytes: 64 * KiB, seed: 5 });
    const b = new SimulatedVm({ memoryBytes: 64 * KiB, seed: 5 });
    const c = new SimulatedVm({ memoryBytes: 64 * KiB, seed: 6 });
    expect(a.device('cpu0')).toEqual(b.device('cpu0'));
    expect(a.device('cpu0').registers).not.toEqual(c.device('cpu0').registers);
    expect(a.device('nic0').mac).toMatch(/^52:54:00(:[0-9a-f]{2}){3}$/);
    expect(hex(a.digest())).toBe(hex(b.digest()));
    expect(hex(a.digest())).not.toBe(hex(c.digest()));
  });

  it('refuses invalid geometry with KEMARI_INVALID_ARGUMENT', () => {
    const bad: SimulatedVmOptions[] = [
      { memoryBytes: 0 },
      { memoryBytes: 4096 * 3 + 1 },
      { memoryBytes: 4096, pageBytes: 3000 },
      { memoryBytes: 4096, pageBytes: 256 },
      { memoryBytes: 4 * MiB, pageBytes: 2 * MiB },
      { memoryBytes: 4096, disks: [{ id: 0, bytes: 1000 }] },
      { memoryBytes: 4096, disks: [{ id: 0, bytes: 0 }] },
      { memoryBytes: 4096, disks: [{ id: 1, bytes: 512 }, { id: 1, bytes: 512 }] },
      { memoryBytes: 4096, disks: [{ id: -1, bytes: 512 }] },
      { memoryBytes: 4096, seed: -1 },
      { memoryBytes: 4096, diskLogBytesMax: 0 },
    ];
    for (const options of bad) expect(codeOf(() => new SimulatedVm(options)), JSON.stringify(options)).toBe('KEMARI_INVALID_ARGUMENT');
    expect(new SimulatedVm({ memoryBytes: 512, pageBytes: 512, disks: [] }).pageCount).toBe(1);
  });
});

describe('SimulatedVm: memory and dirty tracking', () => {
  it('read returns copies of what was written', () => {
    const vm = cleanVm();
    vm.write(5000, Uint8Array.of(1, 2, 3));
    const got = vm.read(4999, 5);
    expect([...got]).toEqual([0, 1, 2, 3, 0]);
    got[1] = 99;
    expect(vm.memory[5000]).toBe(1);
  });

  it('every write sets the dirty bits of exactly the pages it touches', () => {
    const vm = cleanVm();
    expect(vm.dirtyPageCount).toBe(0);
    vm.write(4095, Uint8Array.of(1, 2)); // straddles pages 0 and 1
    vm.write(10 * 4096, filled(3 * 4096, 7)); // pages 10..12
    vm.write(63 * 4096 + 4095, Uint8Array.of(1)); // the very last byte
    vm.write(20 * 4096, new Uint8Array(0)); // empty: dirties nothing
    expect(vm.dirtyPages()).toEqual([0, 1, 10, 11, 12, 63]);
    expect(vm.dirtyPageCount).toBe(6);
    expect(vm.isDirty(11)).toBe(true);
    expect(vm.isDirty(13)).toBe(false);
    vm.write(11 * 4096, Uint8Array.of(1)); // already dirty: counted once
    expect(vm.dirtyPageCount).toBe(6);
    expect(vm.stats()).toMatchObject({ writes: 4, pagesDirtied: 6 });
  });

  it('tracks random writes exactly like a model set', () => {
    const vm = cleanVm();
    const model = new Set<number>();
    let x = 12345;
    for (let i = 0; i < 200; i++) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      const offset = x % (vm.memoryBytes - 100);
      const length = 1 + (x % 97);
      vm.write(offset, filled(length, i & 0xff));
      for (let p = Math.floor(offset / 4096); p <= Math.floor((offset + length - 1) / 4096); p++) model.add(p);
    }
    expect(vm.dirtyPages()).toEqual([...model].sort((a, b) => a - b));
  });

  it('bounds-checks reads and writes', () => {
    const vm = cleanVm();
    expect(codeOf(() => vm.write(vm.memoryBytes - 1, Uint8Array.of(1, 2)))).toBe('KEMARI_INVALID_ARGUMENT');
    expect(codeOf(() => vm.write(-1, Uint8Array.of(1)))).toBe('KEMARI_INVALID_ARGUMENT');
    expect(codeOf(() => vm.write(1.5, Uint8Array.of(1)))).toBe('KEMARI_INVALID_ARGUMENT');
    expect(codeOf(() => vm.write(0, [1, 2] as unknown as Uint8Array))).toBe('KEMARI_INVALID_ARGUMENT');
    expect(codeOf(() => vm.read(vm.memoryBytes, 1))).toBe('KEMARI_INVALID_ARGUMENT');
    expect(codeOf(() => vm.read(0, -1))).toBe('KEMARI_INVALID_ARGUMENT');
    expect(vm.read(vm.memoryBytes, 0).byteLength).toBe(0);
    expect(vm.dirtyPageCount).toBe(0); // refused writes dirty nothing
  });
});

describe('SimulatedVm: pause', () => {
  it('refuses every change while paused with KEMARI_VM_PAUSED, and changes nothing', () => {
    const vm = cleanVm();
    vm.pause();
    expect(vm.paused).toBe(true);
    const before = hex(vm.digest());
    expect(codeOf(() => vm.write(0, Uint8Array.of(1)))).toBe('KEMARI_VM_PAUSED');
    expect(codeOf(() => vm.diskWrite(0, 0, filled(512, 1)))).toBe('KEMARI_VM_PAUSED');
    expect(codeOf(() => vm.tick())).toBe('KEMARI_VM_PAUSED');
    expect(codeOf(() => vm.nicTransmit(Uint8Array.of(1)))).toBe('KEMARI_VM_PAUSED');
    expect(codeOf(() => vm.nicReceive(Uint8Array.of(1)))).toBe('KEMARI_VM_PAUSED');
    expect(hex(vm.digest())).toBe(before);
    expect(vm.dirtyPageCount).toBe(0);
    expect(vm.read(0, 1)[0]).toBe(0); // reads are fine while paused
    vm.pause(); // idempotent
    vm.resume();
    expect(vm.paused).toBe(false);
    vm.write(0, Uint8Array.of(1));
    expect(vm.read(0, 1)[0]).toBe(1);
  });

  it('refuses capture while running', () => {
    const vm = cleanVm();
    vm.write(0, Uint8Array.of(1));
    const error = errorOf(() => vm.capture({ full: false, digest: false }));
    expect(error.code).toBe('KEMARI_INVALID_ARGUMENT');
    expect(error.message).toMatch(/paused/);
    expect(vm.dirtyPageCount).toBe(1); // the refused capture did not start a new epoch
  });
});

describe('SimulatedVm: capture', () => {
  it('returns exactly the dirty pages, sorted, as RAW copies in one send buffer', () => {
    const vm = cleanVm();
    for (const page of [40, 3, 17, 4, 5]) vm.write(page * 4096 + 100, filled(10, page));
    vm.pause();
    const capture = vm.capture({ full: false, digest: false });
    expect(capture.full).toBe(false);
    expect(capture.pages.map((p) => p.index)).toEqual([3, 4, 5, 17, 40]);
    for (const page of capture.pages) {
      expect(page.kind).toBe(PageKind.RAW);
      expect(page.data.byteLength).toBe(4096);
      expect(page.data).toEqual(vm.read(page.index * 4096, 4096));
      expect(page.data.buffer).not.toBe(vm.memory.buffer);
    }
    const buffer = capture.pages[0]!.data.buffer;
    expect(capture.pages.every((p) => p.data.buffer === buffer)).toBe(true);
    // Consecutive guest pages are adjacent in the send buffer (the PAGES encoder merges them into one view).
    expect(capture.pages[1]!.data.byteOffset).toBe(capture.pages[0]!.data.byteOffset + 4096);
  });

  it('captured data does not change when the VM changes afterwards', () => {
    const vm = cleanVm();
    vm.write(2 * 4096, filled(4096, 0xaa));
    vm.tick();
    vm.diskWrite(0, 0, filled(512, 3));
    vm.pause();
    const capture = vm.capture({ full: false, digest: false });
    const pageCopy = capture.pages[0]!.data.slice();
    const cpu = structuredClone(capture.devices[0]!.state);
    const diskCopy = capture.diskWrites[0]!.data.slice();
    vm.resume();
    vm.write(2 * 4096, filled(4096, 0x55));
    vm.tick();
    vm.diskWrite(0, 0, filled(512, 4));
    expect(capture.pages[0]!.data).toEqual(pageCopy);
    expect(capture.pages[0]!.data[0]).toBe(0xaa);
    expect(capture.devices[0]!.state).toEqual(cpu);
    expect(capture.diskWrites[0]!.data).toEqual(diskCopy);
    expect(vm.device('cpu0').ticks).toBe((cpu as CpuState).ticks + 1);
  });

  it('detects zero pages and gives them as ZERO with empty data', () => {
    const vm = cleanVm();
    vm.write(1 * 4096, new Uint8Array(4096)); // dirtied with zeros
    vm.write(2 * 4096, filled(4096, 9));
    vm.write(2 * 4096, new Uint8Array(4096)); // non-zero, then zeroed again
    const lastByte = new Uint8Array(4096);
    lastByte[4095] = 1;
    vm.write(3 * 4096, lastByte); // only the last byte set: not zero
    vm.write(4 * 4096 + 7, Uint8Array.of(0x80)); // the pattern of a float64 -0: not zero
    vm.pause();
    const capture = vm.capture({ full: false, digest: false });
    expect(capture.pages.map((p) => [p.index, p.kind, p.data.byteLength])).toEqual([
      [1, PageKind.ZERO, 0],
      [2, PageKind.ZERO, 0],
      [3, PageKind.RAW, 4096],
      [4, PageKind.RAW, 4096],
    ]);
    expect(capture.pages[1]!.data.byteLength).toBe(0);
    expect(capture.pages[2]!.data[4095]).toBe(1);
    expect(capture.pages[3]!.data[7]).toBe(0x80);
  });

  it('an in-place capture gives guest memory itself (zero pages still ZERO) and says so', () => {
    const vm = cleanVm();
    vm.write(7 * 4096, filled(4096, 0x11));
    vm.write(9 * 4096, new Uint8Array(4096));
    vm.pause();
    const capture = vm.capture({ full: false, digest: false, inPlace: true });
    expect(capture.inPlace).toBe(true);
    expect(capture.pages.map((p) => [p.index, p.kind])).toEqual([
      [7, PageKind.RAW],
      [9, PageKind.ZERO],
    ]);
    const raw = capture.pages[0]!.data;
    expect(raw.buffer).toBe(vm.memory.buffer);
    expect(raw.byteOffset).toBe(vm.memory.byteOffset + 7 * 4096);
    expect(raw.byteLength).toBe(4096);
    expect(vm.dirtyPageCount).toBe(0);
    // A view, valid until the guest runs: what it writes next shows through (why the primary reads it paused).
    vm.resume();
    vm.write(7 * 4096, Uint8Array.of(0x22));
    expect(raw[0]).toBe(0x22);
    vm.pause();
    expect(vm.capture({ full: false, digest: false }).inPlace).toBeUndefined();
  });

  it('markDirty puts pages back into the next capture, unchanged or not, and refuses pages beyond memory', () => {
    const vm = cleanVm();
    vm.write(3 * 4096, filled(4096, 3));
    vm.pause();
    expect(vm.capture({ full: false, digest: false }).pages.map((p) => p.index)).toEqual([3]);
    vm.markDirty(Uint32Array.of(12, 3, 3));
    expect(vm.dirtyPageCount).toBe(2);
    const again = vm.capture({ full: false, digest: false });
    expect(again.pages.map((p) => [p.index, p.kind])).toEqual([
      [3, PageKind.RAW],
      [12, PageKind.ZERO],
    ]);
    expect(again.pages[0]!.data).toEqual(filled(4096, 3));
    expect(codeOf(() => vm.markDirty(Uint32Array.of(1, vm.pageCount)))).toBe('KEMARI_INVALID_ARGUMENT');
    expect(vm.dirtyPageCount).toBe(0); // nothing marked, not even page 1
    expect(codeOf(() => vm.markDirty([1] as unknown as Uint32Array))).toBe('KEMARI_INVALID_ARGUMENT');
  });

  it('full capture has every page with the memory contents', () => {
    const vm = cleanVm({ memoryBytes: 64 * KiB, pageBytes: 1024 });
    vm.write(5 * 1024, filled(2048, 1));
    vm.pause();
    const capture = vm.capture({ full: true, digest: false });
    expect(capture.full).toBe(true);
    expect(capture.pages.map((p) => p.index)).toEqual(Array.from({ length: 64 }, (_, i) => i));
    for (const page of capture.pages) {
      const expectedKind = page.index === 5 || page.index === 6 ? PageKind.RAW : PageKind.ZERO;
      expect(page.kind).toBe(expectedKind);
      if (page.kind === PageKind.RAW) expect(page.data).toEqual(vm.read(page.index * 1024, 1024));
    }
    expect(vm.dirtyPageCount).toBe(0);
  });

  it('clears the dirty bitmap: the next capture has only what changed since', () => {
    const vm = cleanVm();
    vm.write(0, filled(4096 * 8, 1));
    vm.pause();
    expect(vm.capture({ full: false, digest: false }).pages).toHaveLength(8);
    expect(vm.dirtyPageCount).toBe(0);
    expect(vm.capture({ full: false, digest: false }).pages).toHaveLength(0);
    vm.resume();
    vm.write(4096 * 30, Uint8Array.of(1));
    vm.pause();
    expect(vm.capture({ full: false, digest: false }).pages.map((p) => p.index)).toEqual([30]);
    expect(vm.stats().captures).toBe(4);
  });

  it('gives the device states in deviceNames order', () => {
    const vm = cleanVm();
    vm.tick();
    vm.pause();
    const capture = vm.capture({ full: false, digest: false });
    expect(capture.devices.map((d) => d.name)).toEqual([...SIMULATED_DEVICE_NAMES]);
    expect((capture.devices[0]!.state as CpuState).ticks).toBe(1);
    expect(capture.devices.map((d) => d.state)).toEqual([...vm.devices.values()]);
  });

  it('hands over the disk write log in order, then resets it', () => {
    const vm = cleanVm();
    const source = filled(1024, 1);
    vm.diskWrite(0, 512, source);
    source.fill(2); // the log holds a copy
    vm.diskWrite(0, 0, filled(512, 3));
    expect(vm.diskLogBytes).toBe(1536);
    vm.pause();
    const capture = vm.capture({ full: false, digest: false });
    expect(capture.diskWrites.map((w) => [w.diskId, w.offset, w.data.byteLength, w.data[0]])).toEqual([
      [0, 512, 1024, 1],
      [0, 0, 512, 3],
    ]);
    expect(vm.diskLogBytes).toBe(0);
    expect(vm.capture({ full: false, digest: false }).diskWrites).toEqual([]);
  });

  it('includes the state digest only when asked', () => {
    const vm = cleanVm();
    vm.write(0, Uint8Array.of(1));
    vm.pause();
    const expected = hex(vm.digest());
    expect(hex(vm.capture({ full: false, digest: true }).stateDigest)).toBe(expected);
    expect(vm.capture({ full: false, digest: false }).stateDigest.byteLength).toBe(0);
  });
});

describe('SimulatedVm: disks and devices', () => {
  it('writes and reads disks and updates disk-ctl', () => {
    const vm = cleanVm({ disks: [{ id: 0, bytes: 64 * KiB }, { id: 7, bytes: 8 * KiB }] });
    vm.diskWrite(7, 1024, filled(1024, 5));
    expect([...vm.diskRead(7, 1023, 3)]).toEqual([0, 5, 5]);
    expect(vm.diskRead(0, 1024, 1)[0]).toBe(0);
    expect(vm.device('disk-ctl')).toEqual({ writes: 1, sectorsWritten: 2, lastLba: 2 });
    vm.diskWrite(0, 0, filled(512, 1));
    expect(vm.device('disk-ctl')).toEqual({ writes: 2, sectorsWritten: 3, lastLba: 0 });
    expect(vm.stats().diskWrites).toBe(2);
  });

  it('refuses misaligned or out-of-range disk access', () => {
    const vm = cleanVm();
    expect(codeOf(() => vm.diskWrite(0, 100, filled(512, 1)))).toBe('KEMARI_INVALID_ARGUMENT');
    expect(codeOf(() => vm.diskWrite(0, 0, filled(100, 1)))).toBe('KEMARI_INVALID_ARGUMENT');
    expect(codeOf(() => vm.diskWrite(0, 0, new Uint8Array(0)))).toBe('KEMARI_INVALID_ARGUMENT');
    expect(codeOf(() => vm.diskWrite(0, 64 * KiB, filled(512, 1)))).toBe('KEMARI_INVALID_ARGUMENT');
    expect(codeOf(() => vm.diskWrite(3, 0, filled(512, 1)))).toBe('KEMARI_INVALID_ARGUMENT');
    expect(codeOf(() => vm.diskRead(0, 64 * KiB - 1, 2))).toBe('KEMARI_INVALID_ARGUMENT');
    expect(codeOf(() => vm.diskRead(3, 0, 1))).toBe('KEMARI_INVALID_ARGUMENT');
    expect(vm.device('disk-ctl').writes).toBe(0);
    expect(vm.diskLogBytes).toBe(0);
  });

  it('bounds the disk write log: a write that does not fit is refused until the epoch is captured', () => {
    const vm = cleanVm({ diskLogBytesMax: 8 * KiB });
    vm.diskWrite(0, 0, filled(4096, 1));
    vm.diskWrite(0, 4096, filled(4096, 2));
    const before = hex(vm.digest());
    const error = errorOf(() => vm.diskWrite(0, 8192, filled(512, 3)));
    expect(error.code).toBe('KEMARI_DISK_LOG_FULL');
    expect(error.details).toMatchObject({ field: 'diskLog', diskLogBytes: 8192, diskLogBytesMax: 8192 });
    expect(error.message).toMatch(/capture/);
    expect(hex(vm.digest())).toBe(before); // nothing written
    expect(vm.diskRead(0, 8192, 1)[0]).toBe(0);
    vm.pause();
    expect(vm.capture({ full: false, digest: false }).diskWrites).toHaveLength(2);
    vm.resume();
    vm.diskWrite(0, 8192, filled(512, 3));
    expect(vm.diskRead(0, 8192, 1)[0]).toBe(3);
  });

  it('devices change only through VM operations', () => {
    const vm = cleanVm();
    const cpu = vm.device('cpu0');
    cpu.ticks = 1000;
    cpu.registers[0] = 1;
    (vm.devices.get('nic0') as NicState).txPackets = 50;
    expect(vm.device('cpu0').ticks).toBe(0);
    expect(vm.device('nic0').txPackets).toBe(0);
    const before = vm.device('cpu0');
    vm.tick();
    const after = vm.device('cpu0');
    expect(after.ticks).toBe(1);
    expect(after.registers).not.toEqual(before.registers);
    expect(after.rip).not.toBe(before.rip);
    expect(after.instructionsRetired).toBeGreaterThan(0);
    vm.nicTransmit(filled(60, 0));
    vm.nicReceive(filled(40, 0));
    expect(vm.device('nic0')).toMatchObject({ txPackets: 1, txBytes: 60, rxPackets: 1 });
    expect(codeOf(() => vm.device('gpu0' as 'cpu0'))).toBe('KEMARI_INVALID_ARGUMENT');
  });
});

describe('SimulatedVm: digest', () => {
  it('changes when one memory byte, device field or disk byte changes, and not otherwise', () => {
    const vm = cleanVm();
    vm.write(100, Uint8Array.of(1, 2, 3));
    vm.diskWrite(0, 0, filled(512, 1));
    const d0 = hex(vm.digest());
    // Reads, pause/resume, captures and rewriting identical bytes change no state.
    vm.read(0, 4096);
    vm.diskRead(0, 0, 512);
    vm.pause();
    vm.capture({ full: true, digest: true });
    vm.resume();
    vm.write(100, Uint8Array.of(1, 2, 3));
    expect(hex(vm.digest())).toBe(d0);
    // One memory byte.
    vm.write(200 * 1024, Uint8Array.of(1));
    const d1 = hex(vm.digest());
    expect(d1).not.toBe(d0);
    vm.write(200 * 1024, Uint8Array.of(0));
    expect(hex(vm.digest())).toBe(d0);

    // One device field, one disk byte, one memory byte, each alone, through snapshots.
    const base = vm.snapshot();
    expect(hex(SimulatedVm.restore(base).digest())).toBe(d0);
    const nic = { ...(base.devices.get('nic0') as NicState), rxPackets: 1 };
    const devices = new Map(base.devices);
    devices.set('nic0', nic);
    expect(hex(SimulatedVm.restore({ ...base, devices }).digest())).not.toBe(d0);
    const disks = base.disks.map((d) => ({ ...d, data: d.data.slice() }));
    disks[0]!.data[60 * KiB] = 1;
    expect(hex(SimulatedVm.restore({ ...base, disks }).digest())).not.toBe(d0);
    const memory = base.memory.slice();
    memory[memory.byteLength - 1] = 0x10;
    expect(hex(SimulatedVm.restore({ ...base, memory }).digest())).not.toBe(d0);
    // And through the VM's own operations.
    vm.nicReceive(Uint8Array.of(1));
    expect(hex(vm.digest())).not.toBe(d0);
  });

  it('restore copies the snapshot and reproduces the digest', () => {
    const vm = cleanVm();
    vm.write(12345, filled(3000, 0x42));
    vm.diskWrite(0, 4096, filled(4096, 0x17));
    vm.tick();
    vm.nicTransmit(filled(10, 1));
    const snapshot = vm.snapshot();
    const restored = SimulatedVm.restore(snapshot);
    expect(hex(restored.digest())).toBe(hex(vm.digest()));
    expect(restored.device('cpu0')).toEqual(vm.device('cpu0'));
    expect(restored.paused).toBe(false);
    snapshot.memory.fill(0xff); // the restored VM holds copies
    snapshot.disks[0]!.data.fill(0xff);
    expect(hex(restored.digest())).toBe(hex(vm.digest()));
    restored.write(0, Uint8Array.of(9)); // and is independent of its source
    expect(vm.read(0, 1)[0]).toBe(0);
  });

  it('restore refuses snapshots that do not describe a SimulatedVm state', () => {
    const base = cleanVm().snapshot();
    const withDevice = (name: string, state: unknown): Map<string, unknown> => new Map(base.devices).set(name, state);
    const cpu = base.devices.get('cpu0') as CpuState;
    const bad = [
      { ...base, memory: base.memory.subarray(1) },
      { ...base, disks: [{ ...base.disks[0]!, data: new Uint8Array(10) }] },
      { ...base, devices: new Map([...base.devices].slice(1)) },
      { ...base, devices: withDevice('gpu0', {}) },
      { ...base, devices: withDevice('cpu0', { ...cpu, extra: 1 }) },
      { ...base, devices: withDevice('cpu0', { ...cpu, registers: cpu.registers.slice(1) }) },
      { ...base, devices: withDevice('cpu0', { ...cpu, rip: -1 }) },
      { ...base, devices: withDevice('nic0', { ...(base.devices.get('nic0') as NicState), mac: 'nope' }) },
      { ...base, pageBytes: 1000 },
    ];
    for (const snapshot of bad) expect(codeOf(() => SimulatedVm.restore(snapshot))).toBe('KEMARI_INVALID_ARGUMENT');
  });
});

describe('full capture carries whole disks', () => {
  it('describes every non-zero extent of every disk, so a blank replica disk becomes the VM disk', () => {
    const vm = new SimulatedVm({ memoryBytes: 64 * 1024, disks: [{ id: 0, bytes: 64 * 1024 }, { id: 7, bytes: 32 * 1024 }] });
    // Written before protection began: an incremental log alone would never carry these.
    vm.diskWrite(0, 4096, new Uint8Array(8192).fill(5));
    vm.diskWrite(0, 40960, new Uint8Array(512).fill(6));
    vm.diskWrite(7, 0, new Uint8Array(512).fill(7));
    vm.pause();
    vm.capture({ full: false, digest: false }); // the log is gone now
    const full = vm.capture({ full: true, digest: false });
    vm.resume();
    expect(full.diskWrites.map((w) => [w.diskId, w.offset, w.data.byteLength])).toEqual([
      [0, 4096, 8192],
      [0, 40960, 4096],
      [7, 0, 4096],
    ]);
    const blank = new Uint8Array(64 * 1024);
    for (const w of full.diskWrites.filter((w) => w.diskId === 0)) blank.set(w.data, w.offset);
    expect(Buffer.from(blank).equals(Buffer.from(vm.diskRead(0, 0, 64 * 1024)))).toBe(true);
    // Copies: later writes do not reach into the capture.
    vm.diskWrite(0, 4096, new Uint8Array(512).fill(9));
    expect(full.diskWrites[0]!.data[0]).toBe(5);
  });
});

describe('pre-copy', () => {
  it('copies in bounded chunks with a cursor, clears dirty marks, and sees pages dirtied meanwhile in the next round', () => {
    const vm = new SimulatedVm({ memoryBytes: 64 * 1024, disks: [] }); // 16 pages, all dirty when new
    const first = vm.precopy({ all: true, fromIndex: 0, pagesMax: 10 });
    expect(first.pages.map((p) => p.index)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(first.nextIndex).toBe(10);
    vm.write(3 * 4096, Uint8Array.of(1)); // dirtied after its copy
    const rest = vm.precopy({ all: true, fromIndex: 10, pagesMax: 10 });
    expect(rest.pages.map((p) => p.index)).toEqual([10, 11, 12, 13, 14, 15]);
    expect(rest.nextIndex).toBeUndefined();
    const round2 = vm.precopy({ all: false, fromIndex: 0, pagesMax: 100 });
    expect(round2.pages.map((p) => p.index)).toEqual([3]);
    expect(round2.pages[0]!.data[0]).toBe(1); // a copy of the page as it is now
    expect(vm.precopy({ all: false, fromIndex: 0, pagesMax: 100 }).pages).toEqual([]);
    vm.pause();
    expect(vm.capture({ full: false, digest: false }).pages).toEqual([]); // nothing left for the final capture
  });

  it('a chunk handed back lends its buffer to the next chunk of the same sync, and none is kept after the final capture', () => {
    const vm = new SimulatedVm({ memoryBytes: 64 * 4096, disks: [] });
    for (let page = 0; page < 64; page++) vm.write(page * 4096, Uint8Array.of(page + 1)); // no zero pages
    const first = vm.precopy({ all: true, fromIndex: 0, pagesMax: 16 });
    const second = vm.precopy({ all: true, fromIndex: 16, pagesMax: 16 });
    // Not handed back: the next chunk has a buffer of its own.
    expect(second.pages[0]!.data.buffer).not.toBe(first.pages[0]!.data.buffer);
    const firstBuffer = first.pages[0]!.data.buffer;
    vm.releasePrecopy(first);
    const third = vm.precopy({ all: true, fromIndex: 32, pagesMax: 16 });
    expect(third.pages[0]!.data.buffer).toBe(firstBuffer);
    // The reused buffer holds the third chunk's pages, each its own copy.
    expect(third.pages.map((p) => p.data[0])).toEqual(Array.from({ length: 16 }, (_, k) => 33 + k));
    vm.releasePrecopy(first); // twice: ignored, the buffer is the third chunk's
    const fourth = vm.precopy({ all: true, fromIndex: 48, pagesMax: 16 });
    expect(fourth.pages[0]!.data.buffer).not.toBe(firstBuffer);
    expect(third.pages[0]!.data[0]).toBe(33);
    // The sync ends with the final capture: chunks handed back from then on are not kept for a later sync.
    vm.releasePrecopy(second); // free before the final capture
    vm.pause();
    vm.capture({ full: false, digest: false });
    vm.resume();
    const next = vm.precopy({ all: true, fromIndex: 0, pagesMax: 16 });
    expect(next.pages[0]!.data.buffer).not.toBe(second.pages[0]!.data.buffer);
    vm.pause();
    vm.capture({ full: false, digest: false });
    vm.resume();
    vm.releasePrecopy(third); // handed back after the final capture
    const later = vm.precopy({ all: true, fromIndex: 0, pagesMax: 16 });
    expect(later.pages[0]!.data.buffer).not.toBe(firstBuffer);
  });
});
