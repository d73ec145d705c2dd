/**
 * A seeded guest workload: drives a {@link SimulatedVm} the way a running guest would, deterministically.
 *
 * It exists so replication can be tested and demonstrated against realistic, reproducible change: each step is one
 * guest tick that advances the CPU, increments a counter at a fixed address (page 0, like a real guest's counter),
 * rewrites a few bytes of some pages (mostly in a hot set, some anywhere, as real guests do), writes to disk and,
 * every few steps, emits an output (a network packet or a serial line) that names the step. The same seed on the
 * same VM state gives the same sequence of changes and outputs.
 *
 * The counter is read back from page 0 when the workload is created, so a workload started on a VM restored after
 * failover continues counting where the committed epoch left off, and its outputs keep naming steps in order.
 */
import { KemariError } from '../errors.js';
import { checkInteger, invalid } from '../wire/validate.js';
import { Prng } from './prng.js';
import { DISK_SECTOR_BYTES } from './simulated-vm.js';
import type { SimulatedVm } from './simulated-vm.js';

/** Byte offset of the guest counter in memory (page 0) and its width (u64 little-endian). */
export const WORKLOAD_COUNTER_OFFSET = 0;
/** Width of the guest counter in bytes. */
export const WORKLOAD_COUNTER_BYTES = 8;

/** Output channels a workload emits on. */
export type WorkloadChannel = 'net0' | 'serial0';

/** Options of {@link Workload}. */
export interface WorkloadOptions {
  /** PRNG seed, an integer in [0, 2^32 - 1]; default 1. */
  seed?: number;
  /** Distinct pages (besides page 0) whose bytes each step rewrites; default 16, at most pageCount - 1. */
  pagesPerStep?: number;
  /** Bytes rewritten in each chosen page, at a random offset; default 64, at most pageBytes. */
  bytesPerPageWrite?: number;
  /** Size of the hot set as a fraction of the pages (besides page 0), in (0, 1]; default 0.1. */
  hotPagesFraction?: number;
  /** Fraction of page choices that fall in the hot set, in [0, 1]; the rest fall anywhere. Default 0.9. */
  hotWritesFraction?: number;
  /** Fraction of page writes that clear the whole page instead (a guest freeing memory), in [0, 1]; default 0. */
  zeroWritesFraction?: number;
  /** Disk writes per step; default 1 (0 when the VM has no disks). */
  diskWritesPerStep?: number;
  /** Bytes of each disk write, a positive multiple of 512 no larger than any disk; default 4096. */
  diskWriteBytes?: number;
  /** Emit one output every this many steps (when the counter is a multiple of it); 0 = never. Default 4. */
  outputEvery?: number;
  /** Receives each output: channel and payload (e.g. "serial line 42\n"). */
  output?: (channel: WorkloadChannel, data: Uint8Array) => void;
}

const TEXT = new TextEncoder();

/** A fraction in [0, 1], or in (0, 1] when zero is not allowed. */
function fraction(field: string, value: number, zeroAllowed: boolean): number {
  if (typeof value !== 'number' || !(value <= 1) || !(zeroAllowed ? value >= 0 : value > 0)) {
    invalid(field, `must be a number in ${zeroAllowed ? '[0' : '(0'}, 1]`, value);
  }
  return value;
}

/** A deterministic guest workload over one SimulatedVm; see the module comment. */
export class Workload {
  /** The VM this workload drives. */
  readonly vm: SimulatedVm;
  /** The PRNG seed. */
  readonly seed: number;
  private readonly prng: Prng;
  private readonly pagesPerStep: number;
  private readonly bytesPerPageWrite: number;
  private readonly hotWritesFraction: number;
  private readonly zeroWritesFraction: number;
  private readonly diskWritesPerStep: number;
  private readonly diskWriteBytes: number;
  private readonly outputEvery: number;
  private readonly output: ((channel: WorkloadChannel, data: Uint8Array) => void) | undefined;
  private readonly hotStart: number;
  private readonly hotCount: number;
  private readonly pageScratch: Uint8Array;
  private readonly zeroPage: Uint8Array;
  private readonly diskScratch: Uint8Array;
  private readonly counterBytes = new Uint8Array(WORKLOAD_COUNTER_BYTES);
  private readonly counterView = new DataView(this.counterBytes.buffer);
  /**
   * The pages chosen in the current step, as marks (one byte a guest page, cleared at the end of each step) and as a
   * list: a step allocates nothing, so the workload does not feed the garbage collector of the process it runs in.
   */
  private readonly chosenMarks: Uint8Array;
  private readonly chosenList: Uint32Array;
  private counterValue: number;
  private stepCount = 0;
  private outputCount = 0;

  /** Validates the options against the VM's geometry; a value out of range is KEMARI_INVALID_ARGUMENT. */
  constructor(vm: SimulatedVm, options: WorkloadOptions = {}) {
    this.vm = vm;
    this.seed = checkInteger('workload.seed', options.seed ?? 1, 0, 0xffff_ffff);
    this.prng = new Prng(this.seed);
    const otherPages = vm.pageCount - 1;
    this.pagesPerStep = checkInteger('workload.pagesPerStep', options.pagesPerStep ?? Math.min(16, otherPages), 0, otherPages);
    this.bytesPerPageWrite = checkInteger('workload.bytesPerPageWrite', options.bytesPerPageWrite ?? 64, 1, vm.pageBytes);
    const hotPagesFraction = fraction('workload.hotPagesFraction', options.hotPagesFraction ?? 0.1, false);
    this.hotWritesFraction = fraction('workload.hotWritesFraction', options.hotWritesFraction ?? 0.9, true);
    this.zeroWritesFraction = fraction('workload.zeroWritesFraction', options.zeroWritesFraction ?? 0, true);
    const disks = vm.disks;
    this.diskWritesPerStep = checkInteger('workload.diskWritesPerStep', options.diskWritesPerStep ?? (disks.length > 0 ? 1 : 0), 0, 1_000_000);
    if (this.diskWritesPerStep > 0 && disks.length === 0) invalid('workload.diskWritesPerStep', 'the VM has no disks', this.diskWritesPerStep);
    const smallestDiskBytes = disks.reduce((m, d) => Math.min(m, d.bytes), Number.MAX_SAFE_INTEGER);
    this.diskWriteBytes = checkInteger('workload.diskWriteBytes', options.diskWriteBytes ?? 4096, DISK_SECTOR_BYTES, smallestDiskBytes);
    if (this.diskWriteBytes % DISK_SECTOR_BYTES !== 0) invalid('workload.diskWriteBytes', `must be a multiple of ${DISK_SECTOR_BYTES}`, this.diskWriteBytes);
    this.outputEvery = checkInteger('workload.outputEvery', options.outputEvery ?? 4, 0, Number.MAX_SAFE_INTEGER);
    if (options.output !== undefined && typeof options.output !== 'function') invalid('workload.output', 'must be a function');
    this.output = options.output;

    this.hotCount = otherPages === 0 ? 0 : Math.max(1, Math.round(hotPagesFraction * otherPages));
    this.hotStart = otherPages === 0 ? 1 : 1 + this.prng.nextInt(otherPages - this.hotCount + 1);
    this.pageScratch = new Uint8Array(this.bytesPerPageWrite);
    this.zeroPage = new Uint8Array(vm.pageBytes);
    this.diskScratch = new Uint8Array(this.diskWriteBytes);
    this.chosenMarks = new Uint8Array(this.pagesPerStep > 0 ? vm.pageCount : 0);
    this.chosenList = new Uint32Array(this.pagesPerStep);
    const counter = vm.read(WORKLOAD_COUNTER_OFFSET, WORKLOAD_COUNTER_BYTES);
    const view = new DataView(counter.buffer, counter.byteOffset, counter.byteLength);
    this.counterValue = view.getUint32(0, true) + view.getUint32(4, true) * 0x1_0000_0000;
  }

  /** The guest counter: the value the last step wrote to page 0 (or found there when the workload was created). */
  get counter(): number {
    return this.counterValue;
  }

  /** Steps this workload executed. */
  get steps(): number {
    return this.stepCount;
  }

  /** Outputs this workload emitted. */
  get outputs(): number {
    return this.outputCount;
  }

  /** Picks a page other than page 0: mostly in the hot set, sometimes anywhere. */
  private pickPage(): number {
    if (this.prng.nextFloat() < this.hotWritesFraction) return this.hotStart + this.prng.nextInt(this.hotCount);
    return 1 + this.prng.nextInt(this.vm.pageCount - 1);
  }

  /**
   * One guest tick; returns false and changes nothing when the VM is paused. Advances cpu0, writes the incremented
   * counter to page 0, rewrites `pagesPerStep` distinct other pages, performs the disk writes, and emits an output
   * when the counter is a multiple of `outputEvery` (channel 'serial0' and 'net0' alternately; net0 outputs are also
   * transmitted on nic0). When the disk write log has no room for this step's writes the step throws the VM's
   * KEMARI_DISK_LOG_FULL before changing anything.
   */
  step(): boolean {
    const vm = this.vm;
    if (vm.paused) return false;
    const diskBytes = this.diskWritesPerStep * this.diskWriteBytes;
    if (diskBytes > 0 && vm.diskLogBytes + diskBytes > vm.diskLogBytesMax) {
      throw new KemariError('KEMARI_DISK_LOG_FULL', `the epoch's disk write log has no room for this step (${vm.diskLogBytes} + ${diskBytes} > ${vm.diskLogBytesMax}); capture the epoch first`, {
        details: { field: 'diskLog', diskLogBytes: vm.diskLogBytes, diskLogBytesMax: vm.diskLogBytesMax },
      });
    }
    const prng = this.prng;
    vm.tick();

    const counter = this.counterValue + 1;
    const view = this.counterView;
    view.setUint32(0, counter >>> 0, true);
    view.setUint32(4, Math.floor(counter / 0x1_0000_0000), true);
    vm.write(WORKLOAD_COUNTER_OFFSET, this.counterBytes);
    this.counterValue = counter;

    const marks = this.chosenMarks;
    const list = this.chosenList;
    const pageBytes = vm.pageBytes;
    let chosen = 0;
    try {
      while (chosen < this.pagesPerStep) {
        // Redraw duplicates the same way (keeping the hot-set bias); a full hot set falls back to anywhere.
        let page = this.pickPage();
        for (let tries = 1; marks[page] === 1; tries++) page = tries < 16 ? this.pickPage() : 1 + prng.nextInt(vm.pageCount - 1);
        marks[page] = 1;
        list[chosen++] = page;
        if (this.zeroWritesFraction > 0 && prng.nextFloat() < this.zeroWritesFraction) {
          vm.write(page * pageBytes, this.zeroPage);
          continue;
        }
        const at = prng.nextInt(pageBytes - this.bytesPerPageWrite + 1);
        vm.write(page * pageBytes + at, prng.fill(this.pageScratch));
      }
    } finally {
      for (let k = 0; k < chosen; k++) marks[list[k]!] = 0;
    }

    const disks = vm.disks;
    for (let i = 0; i < this.diskWritesPerStep; i++) {
      const disk = disks[prng.nextInt(disks.length)]!;
      const sectors = this.diskWriteBytes / DISK_SECTOR_BYTES;
      const lba = prng.nextInt(disk.bytes / DISK_SECTOR_BYTES - sectors + 1);
      vm.diskWrite(disk.id, lba * DISK_SECTOR_BYTES, prng.fill(this.diskScratch));
    }

    this.stepCount += 1;
    if (this.outputEvery > 0 && counter % this.outputEvery === 0) {
      const n = counter / this.outputEvery;
      const channel: WorkloadChannel = n % 2 === 1 ? 'serial0' : 'net0';
      const data = TEXT.encode(channel === 'serial0' ? `serial line ${counter}\n` : `net packet ${counter}\n`);
      if (channel === 'net0') vm.nicTransmit(data);
      this.outputCount += 1;
      this.output?.(channel, data);
    }
    return true;
  }

  /** Runs `count` steps; returns how many ran (fewer only when the VM is paused). */
  run(count: number): number {
    checkInteger('workload.count', count, 0, Number.MAX_SAFE_INTEGER);
    let ran = 0;
    while (ran < count && this.step()) ran += 1;
    return ran;
  }
}
