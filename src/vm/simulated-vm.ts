/**
 * An in-memory virtual machine: guest RAM, three devices with real state and in-memory disks, with the dirty-page
 * tracking and per-epoch disk write log a hypervisor gives kemari.
 *
 * It exists as the reference {@link VmAdapter}: the embedded default that lets kemari run (and be tested) without a
 * hypervisor, and the behaviour every other adapter is tested against. It is a real object, not a mock: memory,
 * devices and disks only change through its operations, every change is tracked, and {@link SimulatedVm.restore}
 * rebuilds a VM from a replica so failover can resume the guest on the secondary.
 *
 * Rules it enforces, as a hypervisor would:
 * - While paused, nothing changes: memory writes, disk writes and device operations throw KEMARI_VM_PAUSED.
 * - {@link SimulatedVm.capture} is only allowed while paused, copies everything it returns (but the pages of an
 *   in-place capture, which are views of guest memory), and starts a new epoch
 *   (dirty bitmap cleared, disk write log handed over and reset).
 * - The disk write log of one epoch is bounded by `diskLogBytesMax`; a disk write that would exceed it is refused
 *   with KEMARI_DISK_LOG_FULL and changes nothing: capture the epoch first.
 */
import { KemariError } from '../errors.js';
import { DISK_DIGEST_BLOCK_BYTES, computeStateDigest } from '../replica/state-digest.js';
import type { DeviceState } from '../wire/bodies/device.js';
import type { DiskWrite } from '../wire/bodies/disk.js';
import type { DiskInfo } from '../wire/bodies/hello.js';
import { PAGE_BYTES_MAX, PAGE_BYTES_MIN, PageKind, isValidPageBytes } from '../wire/bodies/pages.js';
import type { Page } from '../wire/bodies/pages.js';
import { CaptureBuffers } from './capture-buffers.js';
import { copyPages } from './copy-pages.js';
import { markPages } from './mark-pages.js';
import { isRecord } from '../wire/msgpack.js';
import { checkBytes, checkInteger, invalid } from '../wire/validate.js';
import type { CaptureOptions, EpochCapture, PrecopyChunk, PrecopyOptions, VmAdapter } from './adapter.js';
import { PageCrcTable } from './page-crc-table.js';
import { Prng } from './prng.js';

/** Disk sector size: disk write offsets and lengths, and disk sizes, are multiples of it. */
export const DISK_SECTOR_BYTES = 512;

/** Default disk write log bound per epoch (64 MiB). */
export const DISK_LOG_BYTES_MAX_DEFAULT = 64 * 1024 * 1024;

/** Default disk inventory: one 8 MiB disk with id 0. */
export const SIMULATED_DISKS_DEFAULT: readonly DiskInfo[] = Object.freeze([Object.freeze({ id: 0, bytes: 8 * 1024 * 1024 })]);

/** The devices of a SimulatedVm, in the order captures report them. */
export const SIMULATED_DEVICE_NAMES = Object.freeze(['cpu0', 'nic0', 'disk-ctl'] as const);

/** A SimulatedVm device name. */
export type SimulatedDeviceName = (typeof SIMULATED_DEVICE_NAMES)[number];

/** State of the virtual CPU `cpu0`; every field changes on each {@link SimulatedVm.tick}. */
export interface CpuState {
  /** 16 general-purpose registers, unsigned 32-bit each. */
  registers: number[];
  /** Instruction pointer (unsigned 32-bit). */
  rip: number;
  /** Flags register (unsigned 32-bit). */
  rflags: number;
  /** Guest ticks executed since boot. */
  ticks: number;
  /** Instructions retired since boot. */
  instructionsRetired: number;
}

/** State of the network card `nic0`. */
export interface NicState {
  /** MAC address, lower-case "52:54:00:xx:xx:xx" (derived from the VM seed). */
  mac: string;
  txPackets: number;
  txBytes: number;
  rxPackets: number;
}

/** State of the disk controller `disk-ctl`. */
export interface DiskControllerState {
  /** Disk writes completed since boot. */
  writes: number;
  /** Sectors ({@link DISK_SECTOR_BYTES}) written since boot. */
  sectorsWritten: number;
  /** First sector (LBA) of the most recent write; 0 before any. */
  lastLba: number;
}

/** Device states by name. */
export interface SimulatedDevices {
  cpu0: CpuState;
  nic0: NicState;
  'disk-ctl': DiskControllerState;
}

/** Options of {@link SimulatedVm}. */
export interface SimulatedVmOptions {
  /** Guest memory size, a positive multiple of `pageBytes`. */
  memoryBytes: number;
  /** Page size, a power of two in [512, 1 MiB]; default 4096. */
  pageBytes?: number;
  /** Seed of the initial device state (registers, MAC address), an integer in [0, 2^32 - 1]; default 1. */
  seed?: number;
  /** Disks: unique u32 ids, sizes positive multiples of 512; default {@link SIMULATED_DISKS_DEFAULT}. */
  disks?: readonly DiskInfo[];
  /** Most bytes the disk write log of one epoch may hold; default {@link DISK_LOG_BYTES_MAX_DEFAULT}. */
  diskLogBytesMax?: number;
}

/**
 * A whole VM state, as failover holds it: what {@link SimulatedVm.snapshot} returns and {@link SimulatedVm.restore}
 * accepts. A replica built from committed epochs has exactly this shape.
 */
export interface SimulatedVmSnapshot {
  memoryBytes: number;
  pageBytes: number;
  /** Guest memory, `memoryBytes` long. */
  memory: Uint8Array;
  /** State of every device by name (exactly {@link SIMULATED_DEVICE_NAMES}). */
  devices: ReadonlyMap<string, unknown>;
  /** Every disk with its whole content (`data.byteLength === bytes`). */
  disks: ReadonlyArray<{ id: number; bytes: number; data: Uint8Array }>;
  /** Seed recorded on the restored VM; only the initial state of a new VM depends on it. Default 1. */
  seed?: number;
}

/** Counters of a SimulatedVm since it was created. */
export interface SimulatedVmStats {
  /** Non-empty memory writes ({@link SimulatedVm.write} calls). */
  writes: number;
  /** Pages that went from clean to dirty. */
  pagesDirtied: number;
  /** Disk writes. */
  diskWrites: number;
  /** Captures taken. */
  captures: number;
  /** Pages returned by captures (RAW and ZERO). */
  pagesCaptured: number;
}

interface Disk {
  readonly id: number;
  readonly bytes: number;
  readonly data: Uint8Array;
  readonly crcs: PageCrcTable;
}

const EMPTY: Uint8Array = new Uint8Array(0);
const MAC_PATTERN = /^52:54:00(:[0-9a-f]{2}){3}$/;
const CPU_REGISTER_COUNT = 16;

function cloneCpu(cpu: CpuState): CpuState {
  return {
    registers: cpu.registers.slice(),
    rip: cpu.rip,
    rflags: cpu.rflags,
    ticks: cpu.ticks,
    instructionsRetired: cpu.instructionsRetired,
  };
}

function cloneNic(nic: NicState): NicState {
  return { mac: nic.mac, txPackets: nic.txPackets, txBytes: nic.txBytes, rxPackets: nic.rxPackets };
}

function cloneDiskController(ctl: DiskControllerState): DiskControllerState {
  return { writes: ctl.writes, sectorsWritten: ctl.sectorsWritten, lastLba: ctl.lastLba };
}

/** Checks that `value` is a plain object with exactly `keys`. */
function checkShape(field: string, value: unknown, keys: readonly string[]): Record<string, unknown> {
  if (!isRecord(value)) invalid(field, 'must be a plain object', typeof value);
  const actual = Object.keys(value).sort();
  const expected = [...keys].sort();
  if (actual.length !== expected.length || actual.some((k, i) => k !== expected[i])) {
    invalid(field, `must have exactly the keys ${expected.join(', ')}`, actual);
  }
  return value;
}

const u32 = (field: string, value: unknown): number => checkInteger(field, value, 0, 0xffff_ffff);
const u53 = (field: string, value: unknown): number => checkInteger(field, value, 0, Number.MAX_SAFE_INTEGER);

/** Validates snapshot device states and rebuilds them with the canonical key order (the digest depends on it). */
function parseDevices(devices: ReadonlyMap<string, unknown>): SimulatedDevices {
  if (!(devices instanceof Map)) invalid('snapshot.devices', 'must be a Map of device name to state');
  const names = [...devices.keys()].sort();
  const expected = [...SIMULATED_DEVICE_NAMES].sort();
  if (names.length !== expected.length || names.some((n, i) => n !== expected[i])) {
    invalid('snapshot.devices', `must hold exactly the devices ${SIMULATED_DEVICE_NAMES.join(', ')}`, names);
  }
  const cpu = checkShape('snapshot.devices.cpu0', devices.get('cpu0'), ['registers', 'rip', 'rflags', 'ticks', 'instructionsRetired']);
  const registers = cpu.registers;
  if (!Array.isArray(registers) || registers.length !== CPU_REGISTER_COUNT) {
    invalid('snapshot.devices.cpu0.registers', `must be an array of ${CPU_REGISTER_COUNT} numbers`);
  }
  const nic = checkShape('snapshot.devices.nic0', devices.get('nic0'), ['mac', 'txPackets', 'txBytes', 'rxPackets']);
  if (typeof nic.mac !== 'string' || !MAC_PATTERN.test(nic.mac)) invalid('snapshot.devices.nic0.mac', 'must be "52:54:00:xx:xx:xx"', nic.mac);
  const ctl = checkShape('snapshot.devices.disk-ctl', devices.get('disk-ctl'), ['writes', 'sectorsWritten', 'lastLba']);
  return {
    cpu0: {
      registers: registers.map((r: unknown, i: number) => u32(`snapshot.devices.cpu0.registers[${i}]`, r)),
      rip: u32('snapshot.devices.cpu0.rip', cpu.rip),
      rflags: u32('snapshot.devices.cpu0.rflags', cpu.rflags),
      ticks: u53('snapshot.devices.cpu0.ticks', cpu.ticks),
      instructionsRetired: u53('snapshot.devices.cpu0.instructionsRetired', cpu.instructionsRetired),
    },
    nic0: {
      mac: nic.mac,
      txPackets: u53('snapshot.devices.nic0.txPackets', nic.txPackets),
      txBytes: u53('snapshot.devices.nic0.txBytes', nic.txBytes),
      rxPackets: u53('snapshot.devices.nic0.rxPackets', nic.rxPackets),
    },
    'disk-ctl': {
      writes: u53('snapshot.devices.disk-ctl.writes', ctl.writes),
      sectorsWritten: u53('snapshot.devices.disk-ctl.sectorsWritten', ctl.sectorsWritten),
      lastLba: u53('snapshot.devices.disk-ctl.lastLba', ctl.lastLba),
    },
  };
}

/** The in-memory reference VM; see the module comment. */
export class SimulatedVm implements VmAdapter {
  readonly memoryBytes: number;
  readonly pageBytes: number;
  /** Number of pages (`memoryBytes / pageBytes`). */
  readonly pageCount: number;
  /** The seed the initial device state was derived from. */
  readonly seed: number;
  /** Most bytes the disk write log of one epoch may hold. */
  readonly diskLogBytesMax: number;
  readonly deviceNames: readonly string[] = SIMULATED_DEVICE_NAMES;
  readonly disks: readonly DiskInfo[];
  /**
   * Guest RAM, one buffer. Read it freely; change it only through {@link write}: a direct store bypasses dirty
   * tracking and the page CRC table, so captures and digests would not see it.
   */
  readonly memory: Uint8Array;

  private readonly words: Uint32Array;
  private readonly wordsPerPage: number;
  private readonly crcTable: PageCrcTable;
  /** One byte a page: 1 when dirtied since the previous capture. */
  private readonly dirty: Uint8Array;
  /** The dirty pages in the order they were dirtied (each once). */
  private dirtyList: number[];
  private readonly diskById = new Map<number, Disk>();
  private diskLog: DiskWrite[] = [];
  private diskLogBytesUsed = 0;
  private cpu: CpuState;
  private nic: NicState;
  private diskController: DiskControllerState;
  private isPaused = false;
  /** Send buffers of captures, reused once the primary hands the capture back (releaseCapture). */
  private readonly captureBuffers = new CaptureBuffers();
  /** Buffers of pre-copied chunks, reused chunk after chunk within a full sync (releasePrecopy), dropped after it. */
  private readonly precopyBuffers = new CaptureBuffers();
  /** True from a pre-copy until the capture that ends the full sync: chunk buffers handed back are kept for reuse. */
  private precopying = false;
  private readonly counters: SimulatedVmStats = { writes: 0, pagesDirtied: 0, diskWrites: 0, captures: 0, pagesCaptured: 0 };

  /**
   * Creates a running VM with zeroed memory and disks. Every page starts dirty (nothing has been captured yet), so
   * even an incremental first capture describes the whole memory. Invalid geometry is KEMARI_INVALID_ARGUMENT.
   */
  constructor(options: SimulatedVmOptions) {
    if (!isRecord(options)) invalid('options', 'must be an object');
    const pageBytes = options.pageBytes ?? 4096;
    if (!isValidPageBytes(pageBytes)) invalid('pageBytes', `must be a power of two in [${PAGE_BYTES_MIN}, ${PAGE_BYTES_MAX}]`, pageBytes);
    const memoryBytes = checkInteger('memoryBytes', options.memoryBytes, pageBytes, Number.MAX_SAFE_INTEGER);
    if (memoryBytes % pageBytes !== 0) invalid('memoryBytes', `must be a multiple of pageBytes (${pageBytes})`, memoryBytes);
    this.seed = checkInteger('seed', options.seed ?? 1, 0, 0xffff_ffff);
    this.diskLogBytesMax = checkInteger('diskLogBytesMax', options.diskLogBytesMax ?? DISK_LOG_BYTES_MAX_DEFAULT, DISK_SECTOR_BYTES, Number.MAX_SAFE_INTEGER);
    const diskInfos = options.disks ?? SIMULATED_DISKS_DEFAULT;
    if (!Array.isArray(diskInfos)) invalid('disks', 'must be an array');
    for (const [i, info] of diskInfos.entries()) {
      if (!isRecord(info)) invalid(`disks[${i}]`, 'must be { id, bytes }');
      const id = checkInteger(`disks[${i}].id`, info.id, 0, 0xffff_ffff);
      const bytes = checkInteger(`disks[${i}].bytes`, info.bytes, DISK_SECTOR_BYTES, Number.MAX_SAFE_INTEGER);
      if (bytes % DISK_SECTOR_BYTES !== 0) invalid(`disks[${i}].bytes`, `must be a multiple of ${DISK_SECTOR_BYTES}`, bytes);
      if (this.diskById.has(id)) invalid(`disks[${i}].id`, 'duplicate disk id', id);
      const data = SimulatedVm.allocate(`disks[${i}].bytes`, bytes);
      this.diskById.set(id, { id, bytes, data, crcs: new PageCrcTable(data, DISK_DIGEST_BLOCK_BYTES) });
    }
    this.disks = Object.freeze([...this.diskById.values()].map((d) => Object.freeze({ id: d.id, bytes: d.bytes })));

    this.memoryBytes = memoryBytes;
    this.pageBytes = pageBytes;
    this.pageCount = memoryBytes / pageBytes;
    this.memory = SimulatedVm.allocate('memoryBytes', memoryBytes);
    this.words = new Uint32Array(this.memory.buffer, this.memory.byteOffset, memoryBytes / 4);
    this.wordsPerPage = pageBytes / 4;
    this.crcTable = new PageCrcTable(this.memory, pageBytes);
    this.dirty = new Uint8Array(this.pageCount).fill(1);
    this.dirtyList = Array.from({ length: this.pageCount }, (_, i) => i);

    const prng = new Prng(this.seed);
    const registers: number[] = [];
    for (let i = 0; i < CPU_REGISTER_COUNT; i++) registers.push(prng.nextU32());
    this.cpu = { registers, rip: 0xfff0, rflags: 0x2, ticks: 0, instructionsRetired: 0 };
    const mac = [0x52, 0x54, 0x00, prng.nextInt(256), prng.nextInt(256), prng.nextInt(256)];
    this.nic = { mac: mac.map((b) => b.toString(16).padStart(2, '0')).join(':'), txPackets: 0, txBytes: 0, rxPackets: 0 };
    this.diskController = { writes: 0, sectorsWritten: 0, lastLba: 0 };
  }

  private static allocate(field: string, bytes: number): Uint8Array {
    try {
      return new Uint8Array(bytes);
    } catch (cause) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', `${field}: cannot allocate ${bytes} bytes`, { cause, details: { field, value: bytes } });
    }
  }

  /**
   * Builds a running VM whose memory, devices and disks are copies of `snapshot`: how failover resumes the guest
   * from the secondary's replica. Its {@link digest} equals the digest of the state the snapshot was taken from.
   * Every page starts dirty. A snapshot that does not describe a SimulatedVm state (sizes disagree, devices missing
   * or malformed) is KEMARI_INVALID_ARGUMENT.
   */
  static restore(snapshot: SimulatedVmSnapshot, options: { diskLogBytesMax?: number } = {}): SimulatedVm {
    if (!isRecord(snapshot)) invalid('snapshot', 'must be an object');
    const disks = snapshot.disks;
    if (!Array.isArray(disks)) invalid('snapshot.disks', 'must be an array');
    const vmOptions: SimulatedVmOptions = {
      memoryBytes: snapshot.memoryBytes,
      pageBytes: snapshot.pageBytes,
      disks: disks.map((d: { id: number; bytes: number }) => ({ id: d.id, bytes: d.bytes })),
    };
    if (snapshot.seed !== undefined) vmOptions.seed = snapshot.seed;
    if (options.diskLogBytesMax !== undefined) vmOptions.diskLogBytesMax = options.diskLogBytesMax;
    const memory = checkBytes('snapshot.memory', snapshot.memory);
    const devices = parseDevices(snapshot.devices);
    const vm = new SimulatedVm(vmOptions);
    if (memory.byteLength !== vm.memoryBytes) invalid('snapshot.memory', `must be memoryBytes (${vm.memoryBytes}) long`, memory.byteLength);
    for (const [i, d] of disks.entries()) {
      const data = checkBytes(`snapshot.disks[${i}].data`, d.data);
      if (data.byteLength !== d.bytes) invalid(`snapshot.disks[${i}].data`, `must be bytes (${d.bytes}) long`, data.byteLength);
    }
    vm.memory.set(memory);
    for (const d of disks) vm.diskById.get(d.id)!.data.set(d.data);
    // The CRC tables of a new VM start all stale, so the first digest hashes the restored contents.
    vm.cpu = devices.cpu0;
    vm.nic = devices.nic0;
    vm.diskController = devices['disk-ctl'];
    return vm;
  }

  /** True while paused: no memory, device or disk change is allowed. */
  get paused(): boolean {
    return this.isPaused;
  }

  /** Stops the guest (idempotent). */
  pause(): void {
    this.isPaused = true;
  }

  /** Lets the guest run again (idempotent). */
  resume(): void {
    this.isPaused = false;
  }

  /** Pages dirtied since the previous capture. */
  get dirtyPageCount(): number {
    return this.dirtyList.length;
  }

  /** Bytes held by the current epoch's disk write log. */
  get diskLogBytes(): number {
    return this.diskLogBytesUsed;
  }

  /** True when page `index` was dirtied since the previous capture. */
  isDirty(index: number): boolean {
    checkInteger('index', index, 0, this.pageCount - 1);
    return this.dirty[index] === 1;
  }

  /** The dirty page indices, ascending. */
  dirtyPages(): number[] {
    return this.dirtyList.slice().sort((a, b) => a - b);
  }

  /** Copies of the device states by name (in {@link deviceNames} order); changing them does not change the VM. */
  get devices(): ReadonlyMap<SimulatedDeviceName, CpuState | NicState | DiskControllerState> {
    return new Map<SimulatedDeviceName, CpuState | NicState | DiskControllerState>([
      ['cpu0', cloneCpu(this.cpu)],
      ['nic0', cloneNic(this.nic)],
      ['disk-ctl', cloneDiskController(this.diskController)],
    ]);
  }

  /** A copy of one device's state, typed. */
  device<N extends SimulatedDeviceName>(name: N): SimulatedDevices[N] {
    const state = this.devices.get(name);
    if (state === undefined) invalid('name', 'unknown device', name);
    return state as SimulatedDevices[N];
  }

  /** Counters since creation (a copy). */
  stats(): SimulatedVmStats {
    return { ...this.counters };
  }

  private checkRunning(operation: string): void {
    if (this.isPaused) {
      throw new KemariError('KEMARI_VM_PAUSED', `${operation}: the VM is paused`, { details: { operation } });
    }
  }

  private static checkRange(field: string, offset: number, length: number, limit: number): void {
    checkInteger(`${field}.offset`, offset, 0, limit);
    checkInteger(`${field}.length`, length, 0, limit);
    if (offset + length > limit) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', `${field}: range [${offset}, ${offset + length}) exceeds ${limit} bytes`, {
        details: { field, offset, length, limit },
      });
    }
  }

  /** Copies `bytes` into guest memory at `offset`, marking the pages it touches dirty. Paused: KEMARI_VM_PAUSED. */
  write(offset: number, bytes: Uint8Array): void {
    this.checkRunning('write');
    checkBytes('write.bytes', bytes);
    SimulatedVm.checkRange('write', offset, bytes.byteLength, this.memoryBytes);
    if (bytes.byteLength === 0) return;
    this.memory.set(bytes, offset);
    this.counters.writes += 1;
    const first = Math.floor(offset / this.pageBytes);
    const last = Math.floor((offset + bytes.byteLength - 1) / this.pageBytes);
    for (let page = first; page <= last; page++) {
      if (this.dirty[page] === 0) {
        this.dirty[page] = 1;
        this.dirtyList.push(page);
        this.counters.pagesDirtied += 1;
      }
      this.crcTable.markPage(page);
    }
  }

  /** A copy of `length` bytes of guest memory at `offset`. */
  read(offset: number, length: number): Uint8Array {
    SimulatedVm.checkRange('read', offset, length, this.memoryBytes);
    return this.memory.slice(offset, offset + length);
  }

  private disk(diskId: number): Disk {
    const disk = this.diskById.get(diskId);
    if (disk === undefined) invalid('diskId', 'no such disk', diskId);
    return disk;
  }

  /**
   * Writes `bytes` to disk `diskId` at `offset` (both multiples of 512, length > 0, inside the disk), appends a copy
   * to the epoch's disk write log and updates `disk-ctl`. Paused: KEMARI_VM_PAUSED. When the log would exceed
   * `diskLogBytesMax`, KEMARI_DISK_LOG_FULL and nothing is written: the epoch
   * must be captured first.
   */
  diskWrite(diskId: number, offset: number, bytes: Uint8Array): void {
    this.checkRunning('diskWrite');
    const disk = this.disk(diskId);
    checkBytes('diskWrite.bytes', bytes);
    SimulatedVm.checkRange('diskWrite', offset, bytes.byteLength, disk.bytes);
    if (bytes.byteLength === 0 || bytes.byteLength % DISK_SECTOR_BYTES !== 0) {
      invalid('diskWrite.length', `must be a positive multiple of ${DISK_SECTOR_BYTES}`, bytes.byteLength);
    }
    if (offset % DISK_SECTOR_BYTES !== 0) invalid('diskWrite.offset', `must be a multiple of ${DISK_SECTOR_BYTES}`, offset);
    if (this.diskLogBytesUsed + bytes.byteLength > this.diskLogBytesMax) {
      throw new KemariError(
        'KEMARI_DISK_LOG_FULL',
        `diskWrite: the epoch's disk write log is full (${this.diskLogBytesUsed} + ${bytes.byteLength} > diskLogBytesMax ${this.diskLogBytesMax}); capture the epoch first`,
        { details: { field: 'diskLog', diskLogBytes: this.diskLogBytesUsed, length: bytes.byteLength, diskLogBytesMax: this.diskLogBytesMax } },
      );
    }
    const data = new Uint8Array(bytes); // the log's copy; the disk gets its own bytes below
    disk.data.set(data, offset);
    disk.crcs.markRange(offset, data.byteLength);
    this.diskLog.push({ diskId, offset, data });
    this.diskLogBytesUsed += data.byteLength;
    const ctl = this.diskController;
    ctl.writes += 1;
    ctl.sectorsWritten += data.byteLength / DISK_SECTOR_BYTES;
    ctl.lastLba = offset / DISK_SECTOR_BYTES;
    this.counters.diskWrites += 1;
  }

  /** A copy of `length` bytes of disk `diskId` at `offset`. */
  diskRead(diskId: number, offset: number, length: number): Uint8Array {
    const disk = this.disk(diskId);
    SimulatedVm.checkRange('diskRead', offset, length, disk.bytes);
    return disk.data.slice(offset, offset + length);
  }

  /**
   * One guest tick: the CPU runs a slice of instructions, so `cpu0` changes (ticks, registers, rip, rflags,
   * instructions retired) deterministically from its own state. Paused: KEMARI_VM_PAUSED.
   */
  tick(): void {
    this.checkRunning('tick');
    const cpu = this.cpu;
    const ticks = cpu.ticks + 1;
    const r = cpu.registers;
    for (let i = 0; i < CPU_REGISTER_COUNT; i++) {
      const next = r[(i + 1) % CPU_REGISTER_COUNT]!;
      r[i] = (Math.imul(r[i]! ^ (next >>> 7), 0x9e3779b1) + ticks + i) >>> 0;
    }
    cpu.ticks = ticks;
    cpu.rip = (cpu.rip + 16 + (r[0]! & 0xff)) >>> 0;
    cpu.rflags = 0x202 | (r[2]! & 0x1) | (r[1] === 0 ? 0x40 : 0) | (r[3]! >>> 31 === 1 ? 0x80 : 0);
    cpu.instructionsRetired += 1000 + (r[4]! & 0x3ff);
  }

  /** The guest sends a packet of `bytes.byteLength` bytes on `nic0`. Paused: KEMARI_VM_PAUSED. */
  nicTransmit(bytes: Uint8Array): void {
    this.checkRunning('nicTransmit');
    checkBytes('nicTransmit.bytes', bytes);
    this.nic.txPackets += 1;
    this.nic.txBytes += bytes.byteLength;
  }

  /** A packet arrives on `nic0` (only the counter is kept). Paused: KEMARI_VM_PAUSED. */
  nicReceive(bytes: Uint8Array): void {
    this.checkRunning('nicReceive');
    checkBytes('nicReceive.bytes', bytes);
    this.nic.rxPackets += 1;
  }

  /** True when page `index` holds only zero bytes (a word loop that stops at the first non-zero word). */
  private isZeroPage(index: number): boolean {
    const words = this.words;
    const end = (index + 1) * this.wordsPerPage;
    for (let w = index * this.wordsPerPage; w < end; w++) if (words[w] !== 0) return false;
    return true;
  }

  /**
   * Captures the epoch; the VM must be paused (else KEMARI_INVALID_ARGUMENT). Pages (every page when `full`, else
   * the dirty ones) are sorted by index; RAW pages are copies held in one send buffer allocated for this capture
   * (with `inPlace`: views of guest memory, valid until the guest writes again), all-zero pages are ZERO with empty
   * data. Devices are copies in {@link deviceNames} order, `diskWrites` is the
   * epoch's log. Then the dirty bitmap and the disk write log are reset.
   */
  capture(options: CaptureOptions): EpochCapture {
    if (!this.isPaused) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', 'capture: the VM must be paused', { details: { field: 'paused' } });
    }
    const full = options.full === true;
    const pageBytes = this.pageBytes;
    let indices: Uint32Array;
    if (full) {
      indices = new Uint32Array(this.pageCount);
      for (let i = 0; i < indices.length; i++) indices[i] = i;
    } else {
      indices = Uint32Array.from(this.dirtyList).sort();
    }
    const shared = options.sharedBuffers === true;
    const inPlace = options.inPlace === true;
    const { pages, send } = inPlace
      ? { pages: this.pageViews(indices), send: EMPTY }
      : copyPages(this.memory, this.pageBytes, indices, (index) => this.isZeroPage(index), (bytes) => this.captureBuffers.take(bytes, shared));
    const count = pages.length;
    const devices: DeviceState[] = [
      { name: 'cpu0', state: cloneCpu(this.cpu) },
      { name: 'nic0', state: cloneNic(this.nic) },
      { name: 'disk-ctl', state: cloneDiskController(this.diskController) },
    ];
    const stateDigest = options.digest === true ? this.digest() : EMPTY;
    // A full sync describes each disk whole (the replica zeroes its disks first): the non-zero extents, copied.
    const diskWrites = full || options.wholeDisks === true ? this.wholeDisks() : this.diskLog;
    this.diskLog = [];
    this.diskLogBytesUsed = 0;
    if (this.dirtyList.length * 8 > this.pageCount) this.dirty.fill(0);
    else for (const page of this.dirtyList) this.dirty[page] = 0;
    this.dirtyList = [];
    this.counters.captures += 1;
    this.counters.pagesCaptured += count;
    const capture: EpochCapture = { full, pages, devices, diskWrites, stateDigest, ...(inPlace ? { inPlace } : {}) };
    this.captureBuffers.own(capture, send);
    // Whatever pre-copy came before is over: its free chunk buffers go, and chunks handed back later are not kept.
    this.precopying = false;
    this.precopyBuffers.trim();
    return capture;
  }

  /** The pages at `indices` as views of guest memory (an in-place capture): ZERO when all zero, else RAW. */
  private pageViews(indices: Uint32Array): Page[] {
    const pageBytes = this.pageBytes;
    const pages: Page[] = new Array(indices.length);
    for (let i = 0; i < indices.length; i++) {
      const index = indices[i]!;
      pages[i] = this.isZeroPage(index)
        ? { index, kind: PageKind.ZERO, data: EMPTY }
        : { index, kind: PageKind.RAW, data: this.memory.subarray(index * pageBytes, (index + 1) * pageBytes) };
    }
    return pages;
  }

  /**
   * Marks pages dirty again (see VmAdapter.markDirty): the next capture takes them. Paused or not; an index outside
   * memory is KEMARI_INVALID_ARGUMENT, and then no page is marked.
   */
  markDirty(pageIndices: Uint32Array): void {
    markPages(this.dirty, this.dirtyList, pageIndices);
  }

  /** Takes back a committed capture's send buffer for a later capture (see VmAdapter.releaseCapture). */
  releaseCapture(capture: EpochCapture): void {
    this.captureBuffers.release(capture);
  }

  /**
   * Pre-copy for a full sync while the guest runs (see VmAdapter.precopy): copies up to `pagesMax` pages from
   * `fromIndex` on (all, or the dirty ones) and clears their dirty marks, so the next round (and the final
   * capture) carries only what the guest changed meanwhile. Devices and disks go with the final capture.
   */
  precopy(options: PrecopyOptions): PrecopyChunk {
    const { all, fromIndex, pagesMax } = options;
    const chosen: number[] = [];
    let index = fromIndex;
    for (; index < this.pageCount && chosen.length < pagesMax; index++) {
      if (all || this.dirty[index] !== 0) chosen.push(index);
    }
    const indices = Uint32Array.from(chosen);
    this.precopying = true;
    const { pages, send } = copyPages(this.memory, this.pageBytes, indices, (i) => this.isZeroPage(i), (bytes) => this.precopyBuffers.take(bytes, false));
    for (const page of chosen) {
      if (this.dirty[page] !== 0) this.dirty[page] = 0;
    }
    if (chosen.length > 0) {
      const cleared = new Set(chosen);
      this.dirtyList = this.dirtyList.filter((page) => !cleared.has(page));
    }
    const chunk: PrecopyChunk = { pages, nextIndex: index < this.pageCount ? index : undefined };
    this.precopyBuffers.own(chunk, send);
    return chunk;
  }

  /** Takes back a pre-copied chunk's buffer for the next chunk of the same full sync (see VmAdapter.releasePrecopy). */
  releasePrecopy(chunk: PrecopyChunk): void {
    this.precopyBuffers.release(chunk);
    if (!this.precopying) this.precopyBuffers.trim();
  }

  /** The non-zero extents of every disk, as copies in DISK_DIGEST_BLOCK_BYTES granules (for a full capture). */
  private wholeDisks(): DiskWrite[] {
    const writes: DiskWrite[] = [];
    const block = DISK_DIGEST_BLOCK_BYTES;
    for (const disk of this.diskById.values()) {
      const data = disk.data;
      for (let start = 0; start < data.byteLength; ) {
        if (isZero(data.subarray(start, Math.min(start + block, data.byteLength)))) {
          start += block;
          continue;
        }
        let end = Math.min(start + block, data.byteLength);
        while (end < data.byteLength && !isZero(data.subarray(end, Math.min(end + block, data.byteLength)))) end = Math.min(end + block, data.byteLength);
        writes.push({ diskId: disk.id, offset: start, data: data.slice(start, end) });
        start = end;
      }
    }
    return writes;
  }

  digest(): Uint8Array {
    return computeStateDigest({
      memoryBytes: this.memoryBytes,
      pageBytes: this.pageBytes,
      pageCrcs: this.crcTable.refresh(),
      devices: this.devices,
      disks: [...this.diskById.values()].map((d) => ({
        id: d.id,
        bytes: d.bytes,
        blockBytes: DISK_DIGEST_BLOCK_BYTES,
        blockCrcs: d.crcs.refresh(),
      })),
    });
  }

  /** Copies of memory, devices and disks: the input {@link restore} takes. */
  snapshot(): SimulatedVmSnapshot {
    return {
      memoryBytes: this.memoryBytes,
      pageBytes: this.pageBytes,
      memory: this.memory.slice(),
      devices: this.devices,
      disks: [...this.diskById.values()].map((d) => ({ id: d.id, bytes: d.bytes, data: d.data.slice() })),
      seed: this.seed,
    };
  }
}

/** True when every byte of `bytes` is zero (word-wise where aligned). */
function isZero(bytes: Uint8Array): boolean {
  const words = bytes.byteOffset % 4 === 0 ? Math.floor(bytes.byteLength / 4) : 0;
  if (words > 0) {
    const view = new Uint32Array(bytes.buffer, bytes.byteOffset, words);
    for (let i = 0; i < words; i++) if (view[i] !== 0) return false;
  }
  for (let i = words * 4; i < bytes.byteLength; i++) if (bytes[i] !== 0) return false;
  return true;
}
