/**
 * Builds the kemari test guest (examples/guest/guest.asm) into a raw disk image, and decodes what the guest leaves
 * in its memory and on its disk.
 *
 * The guest is a boot sector plus a small 32-bit stage: a timer interrupt increments a counter at a fixed address,
 * dirties a configurable number of pages per tick, prints `tick N` lines to COM1 and writes sectors through the
 * legacy IDE ports; optionally it powers itself off through ACPI after a number of ticks. Everything a checkpoint or
 * a test needs to find sits at a fixed address or image offset; the constants below are that contract (and must match
 * guest.asm). See examples/guest/README.md.
 *
 *   const { imagePath, layout } = await buildGuest({ tickHz: 100, diskEveryTicks: 10 }, '/abs/dir');
 *   qemu-system-x86_64 ...guestQemuArgs(imagePath) -serial file:/abs/out.txt
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, open, readFile, rename, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { KemariError } from '../../src/errors.js';

const execFileAsync = promisify(execFile);

/** Bytes per guest page: the unit the dirty ring and QEMU's migration stream both count in. */
export const PAGE_SIZE_BYTES = 4096;
/** Bytes per disk sector: the unit of the guest's IDE writes and of every LBA below. */
export const SECTOR_SIZE_BYTES = 512;
/** Guest RAM the guest is built for (`-m 32`): the status page and the largest ring fit below it. */
export const GUEST_MEMORY_BYTES = 32 << 20;

/**
 * Guest-physical address of the status page: page 0x200 of `pc.ram`. Fixed so a checkpoint (a migration stream
 * page, or HMP `xp`) can read the guest's progress without symbols. The page is zeroed at boot.
 */
export const STATUS_ADDRESS = 0x200000;
/** u64 ticks since the timer started; incremented first thing in every timer interrupt. */
export const COUNTER_ADDRESS = STATUS_ADDRESS + 0x00;
/** u64 sector writes issued so far; it is also the write index of the next one. Incremented after each write completes. */
export const DISK_WRITES_ADDRESS = STATUS_ADDRESS + 0x08;
/** u64 `tick` lines printed completely (the banner is not counted); incremented after the line's newline. */
export const SERIAL_LINES_ADDRESS = STATUS_ADDRESS + 0x10;
/** u32 {@link RUN_MAGIC} once the stage has initialised its devices, just before it enables interrupts. */
export const RUN_MAGIC_ADDRESS = STATUS_ADDRESS + 0x18;
/** u32 sector writes that ended with ERR/DF or timed out (they still count in {@link DISK_WRITES_ADDRESS}). */
export const DISK_ERRORS_ADDRESS = STATUS_ADDRESS + 0x1c;
/** u32 index of the ring page the next tick writes first. */
export const RING_CURSOR_ADDRESS = STATUS_ADDRESS + 0x20;
/** u32 sectors the disk reported through IDENTIFY DEVICE (0 if unknown). */
export const DISK_SECTORS_ADDRESS = STATUS_ADDRESS + 0x2c;
/** u32 1 + vector of a CPU exception that stopped the guest; 0 while healthy. */
export const FATAL_VECTOR_ADDRESS = STATUS_ADDRESS + 0x30;
/** The parameter block as the guest applies it, after its own clamping ({@link PARAMS_SIZE_BYTES} bytes). */
export const EFFECTIVE_PARAMS_ADDRESS = STATUS_ADDRESS + 0x40;
/** Bytes of the status page that {@link decodeGuestStatus} reads. */
export const STATUS_SIZE_BYTES = 0x80;
/** 'KRUN' as a little-endian u32: the value at {@link RUN_MAGIC_ADDRESS} while the guest runs. */
export const RUN_MAGIC = 0x4e55524b;

/**
 * Guest-physical address of the dirty ring: `ringPages` pages; each tick writes the counter into the first 8 bytes
 * of the next `dirtyPagesPerTick` of them. Above the status page so ring writes never touch it.
 */
export const RING_ADDRESS = 0x300000;
/** Most pages a ring may have: 16 MiB, so the ring ends at 0x1300000, inside {@link GUEST_MEMORY_BYTES}. */
export const RING_PAGES_MAX = 4096;

/** Lowest tick rate: the PIT divisor 1193182 / tickHz must fit in 16 bits. */
export const TICK_HZ_MIN = 19;
/** Highest tick rate; beyond it TCG spends its time in the interrupt handler. */
export const TICK_HZ_MAX = 10_000;

/**
 * Byte offset of the parameter block in the image: the first bytes of LBA 1, where the stage begins (and guest
 * address 0x7E00 once loaded). Fixed so an image can be re-parameterised by patching, without reassembling.
 */
export const PARAMS_OFFSET = 0x200;
/** 'KGST': the first four bytes of the parameter block; the guest refuses to run without it. */
export const PARAMS_MAGIC = 'KGST';
/** Version of the parameter block layout (u16 at offset 4); the guest refuses other versions. */
export const PARAMS_VERSION = 1;
/** Size of the parameter block (u16 at offset 6). */
export const PARAMS_SIZE_BYTES = 64;
/** Parameter flag: issue CACHE FLUSH (0xE7) after each sector write. */
export const FLAG_CACHE_FLUSH = 1;

/** 'KGSD' as a little-endian u32: the first four bytes of every sector the guest writes. */
export const SECTOR_MAGIC = 0x4453474b;
/** Version of the written-sector layout (u32 at offset 4). */
export const SECTOR_VERSION = 1;

/** The last serial line of a guest that powers itself off (see {@link GuestParams.powerOffAfterTicks}). */
export const POWER_OFF_LINE = 'power off\n';
/**
 * The port the guest writes 0x2000 (SLP_EN, sleep type S5 = 0) to, as a 16-bit word, to power off: PM1a_CNT of
 * QEMU's `pc` machine (PIIX4 PM), whose I/O base SeaBIOS sets to 0x600.
 */
export const PM1A_CNT_PORT = 0x604;

/** Default image size: 4 MiB, room for the boot sector, the stage and the default sector ring at LBA 2048. */
export const IMAGE_SIZE_BYTES_DEFAULT = 4 << 20;

/** What the guest does per tick. All fields are u32 in the parameter block. */
export interface GuestParams {
  /** Timer interrupts per second (PIT channel 0), {@link TICK_HZ_MIN}..{@link TICK_HZ_MAX}. */
  tickHz: number;
  /** Ring pages written per tick, 0..ringPages. */
  dirtyPagesPerTick: number;
  /** Pages in the ring at {@link RING_ADDRESS}, 1..{@link RING_PAGES_MAX}. */
  ringPages: number;
  /** A `tick N` line every this many ticks; 0: never. */
  serialEveryTicks: number;
  /** One sector write every this many ticks; 0: never. */
  diskEveryTicks: number;
  /** First LBA of the sector ring; must lie after the stage. */
  diskLbaBase: number;
  /** Sectors in the sector ring: write i goes to diskLbaBase + (i mod diskLbaCount). */
  diskLbaCount: number;
  /** Send CACHE FLUSH after each sector write. */
  cacheFlush: boolean;
  /**
   * Power off after this many ticks, 0..2^32-1; 0 or absent: never (the default). The tick that reaches it does its
   * usual work (line, dirty pages, sector), then the guest prints a last line {@link POWER_OFF_LINE} (waiting until
   * the UART has sent every byte) and powers off the way an OS does: ACPI sleep to S5 (SLP_EN, SLP_TYP 0) through
   * PM1a_CNT at {@link PM1A_CNT_PORT}, so QEMU reports a SHUTDOWN event with `guest: true`, reason `guest-shutdown`
   * (and exits, unless started with `-no-shutdown`). If the write does nothing, the guest halts with interrupts off.
   * Optional so that older parameter sets stay valid: the field lives in what used to be reserved (zero) bytes.
   */
  powerOffAfterTicks?: number;
}

/** The parameters the guest runs with unless told otherwise (also the values assembled into guest.asm). */
export const DEFAULT_GUEST_PARAMS: Readonly<GuestParams> = Object.freeze({
  tickHz: 100,
  dirtyPagesPerTick: 16,
  ringPages: 1024,
  serialEveryTicks: 10,
  diskEveryTicks: 10,
  diskLbaBase: 2048,
  diskLbaCount: 1024,
  cacheFlush: false,
});

/** Where things are in a built image and in the running guest. */
export interface GuestLayout {
  /** See {@link COUNTER_ADDRESS}. */
  COUNTER_ADDRESS: number;
  /** See {@link DISK_WRITES_ADDRESS}. */
  DISK_WRITES_ADDRESS: number;
  /** See {@link SERIAL_LINES_ADDRESS}. */
  SERIAL_LINES_ADDRESS: number;
  /** See {@link RING_ADDRESS}. */
  RING_ADDRESS: number;
  /** See {@link PARAMS_OFFSET}. */
  PARAMS_OFFSET: number;
  /** See {@link SECTOR_MAGIC}. */
  SECTOR_MAGIC: number;
  /** Sectors of the stage (LBA 1..stageSectors). */
  stageSectors: number;
  /** First LBA after the stage: the lowest allowed diskLbaBase. */
  stageEndLba: number;
  /** Size of the image file. */
  imageSizeBytes: number;
}

/** Result of {@link buildGuest}. */
export interface BuiltGuest {
  /** Absolute path of the raw disk image. */
  imagePath: string;
  /** Offsets and addresses for this image. */
  layout: GuestLayout;
  /** The parameters patched into the image (defaults filled in). */
  params: GuestParams;
}

/** Options for {@link buildGuest}. */
export interface BuildGuestOptions {
  /** Image file size, a multiple of 512; default {@link IMAGE_SIZE_BYTES_DEFAULT}. */
  imageSizeBytes?: number;
  /** Image file name inside outDir; default `guest.img`. */
  imageName?: string;
  /** The assembler to run; default `nasm` from PATH. */
  nasmPath?: string;
}

const SOURCE_PATH = fileURLToPath(new URL('./guest.asm', import.meta.url));
const CACHE_KEY_VERSION = 'kemari-guest-cache-1';

/**
 * Assembles the guest (cached in os.tmpdir() by source hash), patches `params` into its parameter block and writes
 * a raw image of `imageSizeBytes` to `outDir`, replacing any image there (so the sector ring starts blank).
 * Throws a KemariError (KEMARI_INVALID_ARGUMENT) for parameters the guest would clamp, and an Error naming the
 * package to install when nasm is missing.
 */
export async function buildGuest(
  params: Partial<GuestParams> = {},
  outDir: string,
  options: BuildGuestOptions = {},
): Promise<BuiltGuest> {
  const full: GuestParams = { ...DEFAULT_GUEST_PARAMS, ...params };
  const imageSizeBytes = options.imageSizeBytes ?? IMAGE_SIZE_BYTES_DEFAULT;
  const binary = await assembleGuest(options.nasmPath ?? 'nasm');
  const stageSectors = binary.length / SECTOR_SIZE_BYTES - 1;
  const layout: GuestLayout = {
    COUNTER_ADDRESS,
    DISK_WRITES_ADDRESS,
    SERIAL_LINES_ADDRESS,
    RING_ADDRESS,
    PARAMS_OFFSET,
    SECTOR_MAGIC,
    stageSectors,
    stageEndLba: 1 + stageSectors,
    imageSizeBytes,
  };
  validateParams(full, layout, binary.length);

  const image = Buffer.from(binary);
  encodeGuestParams(full).copy(image, PARAMS_OFFSET);
  const imagePath = resolve(outDir, options.imageName ?? 'guest.img');
  await mkdir(outDir, { recursive: true });
  await rm(imagePath, { force: true });
  const file = await open(imagePath, 'wx');
  try {
    await file.write(image, 0, image.length, 0);
    await file.truncate(imageSizeBytes);
  } finally {
    await file.close();
  }
  return { imagePath, layout, params: full };
}

/**
 * QEMU arguments that boot an image built by {@link buildGuest}: pc machine (legacy IDE), TCG, 32 MiB, no default
 * devices or display, no reboot on a triple fault (QEMU exits instead). Add `-serial ...` and `-qmp ...`. A guest
 * built with `powerOffAfterTicks` makes QEMU exit (code 0) when it powers off; add `-no-shutdown` to keep QEMU, stopped.
 */
export function guestQemuArgs(imagePath: string): string[] {
  return [
    '-machine', 'pc,accel=tcg',
    '-m', String(GUEST_MEMORY_BYTES >> 20),
    '-nodefaults',
    '-display', 'none',
    '-no-reboot',
    '-drive', `file=${imagePath.replaceAll(',', ',,')},format=raw,if=ide,file.locking=off`,
  ];
}

/** The 64-byte parameter block for `params` (see README.md for the layout). */
export function encodeGuestParams(params: GuestParams): Buffer {
  const block = Buffer.alloc(PARAMS_SIZE_BYTES);
  block.write(PARAMS_MAGIC, 0, 'latin1');
  block.writeUInt16LE(PARAMS_VERSION, 4);
  block.writeUInt16LE(PARAMS_SIZE_BYTES, 6);
  block.writeUInt32LE(params.tickHz, 0x08);
  block.writeUInt32LE(params.dirtyPagesPerTick, 0x0c);
  block.writeUInt32LE(params.ringPages, 0x10);
  block.writeUInt32LE(params.serialEveryTicks, 0x14);
  block.writeUInt32LE(params.diskEveryTicks, 0x18);
  block.writeUInt32LE(params.diskLbaBase, 0x1c);
  block.writeUInt32LE(params.diskLbaCount, 0x20);
  block.writeUInt32LE(params.cacheFlush ? FLAG_CACHE_FLUSH : 0, 0x24);
  block.writeUInt32LE(params.powerOffAfterTicks ?? 0, 0x28);
  return block;
}

/**
 * Reads a parameter block (from an image at {@link PARAMS_OFFSET}, or from guest memory); undefined without the magic
 * or version. `powerOffAfterTicks` is present only when it is set (not 0), as {@link DEFAULT_GUEST_PARAMS} leaves it out.
 */
export function decodeGuestParams(block: Uint8Array): GuestParams | undefined {
  if (block.length < PARAMS_SIZE_BYTES) return undefined;
  const b = Buffer.from(block.buffer, block.byteOffset, PARAMS_SIZE_BYTES);
  if (b.toString('latin1', 0, 4) !== PARAMS_MAGIC || b.readUInt16LE(4) !== PARAMS_VERSION) return undefined;
  const powerOffAfterTicks = b.readUInt32LE(0x28);
  return {
    tickHz: b.readUInt32LE(0x08),
    dirtyPagesPerTick: b.readUInt32LE(0x0c),
    ringPages: b.readUInt32LE(0x10),
    serialEveryTicks: b.readUInt32LE(0x14),
    diskEveryTicks: b.readUInt32LE(0x18),
    diskLbaBase: b.readUInt32LE(0x1c),
    diskLbaCount: b.readUInt32LE(0x20),
    cacheFlush: (b.readUInt32LE(0x24) & FLAG_CACHE_FLUSH) !== 0,
    ...(powerOffAfterTicks === 0 ? {} : { powerOffAfterTicks }),
  };
}

/** The guest's progress, decoded from the first {@link STATUS_SIZE_BYTES} bytes of the status page. */
export interface GuestStatus {
  /** Timer ticks ({@link COUNTER_ADDRESS}). */
  ticks: bigint;
  /** Sector writes issued ({@link DISK_WRITES_ADDRESS}). */
  diskWrites: bigint;
  /** `tick` lines printed ({@link SERIAL_LINES_ADDRESS}). */
  serialLines: bigint;
  /** The stage has initialised ({@link RUN_MAGIC_ADDRESS} holds {@link RUN_MAGIC}). */
  running: boolean;
  /** Sector writes that failed. */
  diskErrors: number;
  /** Ring page the next tick writes first. */
  ringCursor: number;
  /** Sectors the disk reported, 0 if unknown. */
  diskSectors: number;
  /** Vector of a fatal CPU exception, or undefined. */
  fatalVector: number | undefined;
  /** Parameters after the guest's clamping; undefined before the stage copied them. */
  effectiveParams: GuestParams | undefined;
}

/** Decodes the status page (guest-physical {@link STATUS_ADDRESS}, page 0x200 of `pc.ram`). */
export function decodeGuestStatus(page: Uint8Array): GuestStatus {
  if (page.length < STATUS_SIZE_BYTES) {
    throw new KemariError('KEMARI_INVALID_ARGUMENT', `the guest status needs ${STATUS_SIZE_BYTES} bytes, got ${page.length}`);
  }
  const b = Buffer.from(page.buffer, page.byteOffset, STATUS_SIZE_BYTES);
  const at = (address: number): number => address - STATUS_ADDRESS;
  const fatal = b.readUInt32LE(at(FATAL_VECTOR_ADDRESS));
  return {
    ticks: b.readBigUInt64LE(at(COUNTER_ADDRESS)),
    diskWrites: b.readBigUInt64LE(at(DISK_WRITES_ADDRESS)),
    serialLines: b.readBigUInt64LE(at(SERIAL_LINES_ADDRESS)),
    running: b.readUInt32LE(at(RUN_MAGIC_ADDRESS)) === RUN_MAGIC,
    diskErrors: b.readUInt32LE(at(DISK_ERRORS_ADDRESS)),
    ringCursor: b.readUInt32LE(at(RING_CURSOR_ADDRESS)),
    diskSectors: b.readUInt32LE(at(DISK_SECTORS_ADDRESS)),
    fatalVector: fatal === 0 ? undefined : fatal - 1,
    effectiveParams: decodeGuestParams(b.subarray(at(EFFECTIVE_PARAMS_ADDRESS))),
  };
}

/** One sector the guest wrote. */
export interface GuestSector {
  /** The tick counter when the guest built the sector (write i happens at tick (i + 1) * diskEveryTicks). */
  counter: bigint;
  /** 0-based index of the write; the sector sits at diskLbaBase + (writeIndex mod diskLbaCount). */
  writeIndex: bigint;
  /** The LBA the guest aimed the write at. */
  lba: number;
  /** Version 1, and the trailing copies of counter and write index match the leading ones (not torn or mixed). */
  intact: boolean;
}

/**
 * Decodes a 512-byte sector written by the guest: offset 0 'KGSD', 4 u32 version, 8 u64 counter, 16 u64 write index,
 * 24 u32 LBA, 496 u64 counter again, 504 u64 write index again. Undefined if the magic is absent (never written).
 */
export function decodeGuestSector(sector: Uint8Array): GuestSector | undefined {
  if (sector.length < SECTOR_SIZE_BYTES) return undefined;
  const b = Buffer.from(sector.buffer, sector.byteOffset, SECTOR_SIZE_BYTES);
  if (b.readUInt32LE(0) !== SECTOR_MAGIC) return undefined;
  const counter = b.readBigUInt64LE(8);
  const writeIndex = b.readBigUInt64LE(16);
  return {
    counter,
    writeIndex,
    lba: b.readUInt32LE(24),
    intact: b.readUInt32LE(4) === SECTOR_VERSION && b.readBigUInt64LE(496) === counter && b.readBigUInt64LE(504) === writeIndex,
  };
}

/**
 * Decodes the sector ring of an image (a path or its bytes): one entry per slot, in LBA order, undefined for slots
 * never written.
 */
export async function readGuestSectors(
  image: string | Uint8Array,
  params: Pick<GuestParams, 'diskLbaBase' | 'diskLbaCount'>,
): Promise<Array<GuestSector | undefined>> {
  const bytes = typeof image === 'string' ? await readFile(image) : image;
  const slots: Array<GuestSector | undefined> = [];
  for (let slot = 0; slot < params.diskLbaCount; slot++) {
    const start = (params.diskLbaBase + slot) * SECTOR_SIZE_BYTES;
    slots.push(start + SECTOR_SIZE_BYTES <= bytes.length ? decodeGuestSector(bytes.subarray(start, start + SECTOR_SIZE_BYTES)) : undefined);
  }
  return slots;
}

function validateParams(p: GuestParams, layout: GuestLayout, binaryBytes: number): void {
  const bad = (message: string, details: Record<string, unknown>): never => {
    throw new KemariError('KEMARI_INVALID_ARGUMENT', `guest parameters: ${message}`, { details });
  };
  const u32 = (name: keyof GuestParams, value: number, min: number, max: number): void => {
    if (!Number.isInteger(value) || value < min || value > max) bad(`${name} must be an integer in ${min}..${max}, got ${value}`, { [name]: value });
  };
  u32('tickHz', p.tickHz, TICK_HZ_MIN, TICK_HZ_MAX);
  u32('ringPages', p.ringPages, 1, RING_PAGES_MAX);
  u32('dirtyPagesPerTick', p.dirtyPagesPerTick, 0, p.ringPages);
  u32('serialEveryTicks', p.serialEveryTicks, 0, 0xffff_ffff);
  u32('diskEveryTicks', p.diskEveryTicks, 0, 0xffff_ffff);
  u32('powerOffAfterTicks', p.powerOffAfterTicks ?? 0, 0, 0xffff_ffff);
  if (typeof p.cacheFlush !== 'boolean') bad('cacheFlush must be a boolean', { cacheFlush: p.cacheFlush });
  const { imageSizeBytes } = layout;
  if (!Number.isInteger(imageSizeBytes) || imageSizeBytes % SECTOR_SIZE_BYTES !== 0 || imageSizeBytes < binaryBytes) {
    bad(`imageSizeBytes must be a multiple of ${SECTOR_SIZE_BYTES} of at least ${binaryBytes}, got ${imageSizeBytes}`, { imageSizeBytes });
  }
  const imageSectors = Math.min(imageSizeBytes / SECTOR_SIZE_BYTES, 0x0fff_ffff);
  u32('diskLbaBase', p.diskLbaBase, 0, 0x0fff_ffff);
  u32('diskLbaCount', p.diskLbaCount, 0, 0x0fff_ffff);
  if (p.diskEveryTicks > 0) {
    if (p.diskLbaBase < layout.stageEndLba) bad(`diskLbaBase ${p.diskLbaBase} would overwrite the stage (LBA 1..${layout.stageEndLba - 1})`, { diskLbaBase: p.diskLbaBase });
    if (p.diskLbaCount < 1 || p.diskLbaBase + p.diskLbaCount > imageSectors) {
      bad(`the sector ring ${p.diskLbaBase}+${p.diskLbaCount} must hold at least one sector and end within the image (${imageSectors} sectors)`, {
        diskLbaBase: p.diskLbaBase,
        diskLbaCount: p.diskLbaCount,
        imageSectors,
      });
    }
  }
}

/** nasm output for guest.asm, from the tmpdir cache when the source (and this cache format) is unchanged. */
async function assembleGuest(nasmPath: string): Promise<Buffer> {
  const source = await readFile(SOURCE_PATH);
  const hash = createHash('sha256').update(CACHE_KEY_VERSION).update(source).digest('hex').slice(0, 24);
  const cachePath = join(tmpdir(), `kemari-guest-${hash}.bin`);
  const cached = await readFile(cachePath).catch(() => undefined);
  if (cached !== undefined && isGuestBinary(cached)) return cached;

  const outPath = `${cachePath}.${process.pid}.${Date.now()}.tmp`;
  try {
    await execFileAsync(nasmPath, ['-f', 'bin', '-o', outPath, SOURCE_PATH]);
  } catch (error) {
    await rm(outPath, { force: true });
    const e = error as NodeJS.ErrnoException & { stderr?: string };
    if (e.code === 'ENOENT') {
      throw new Error(`cannot build the kemari test guest: '${nasmPath}' not found on PATH (install nasm, e.g. apt-get install nasm)`, { cause: error });
    }
    throw new Error(`nasm failed on ${SOURCE_PATH}: ${e.stderr?.trim() || e.message}`, { cause: error });
  }
  const binary = await readFile(outPath);
  if (!isGuestBinary(binary)) {
    await rm(outPath, { force: true });
    throw new Error(`nasm output for ${SOURCE_PATH} is not a guest image: no boot signature or no '${PARAMS_MAGIC}' block at ${PARAMS_OFFSET}`);
  }
  await rename(outPath, cachePath).catch(() => rm(outPath, { force: true }));
  return binary;
}

function isGuestBinary(binary: Buffer): boolean {
  return (
    binary.length >= 2 * SECTOR_SIZE_BYTES &&
    binary.length % SECTOR_SIZE_BYTES === 0 &&
    binary[510] === 0x55 &&
    binary[511] === 0xaa &&
    binary.toString('latin1', PARAMS_OFFSET, PARAMS_OFFSET + 4) === PARAMS_MAGIC
  );
}
