/**
 * Writes a QEMU 7.2 precopy migration stream that `-incoming` (or `migrate-incoming`) accepts, from what kemari keeps
 * of a checkpoint: the machine type and capabilities, the RAM block list, the pages, and the opaque device blob.
 *
 * Why this exists: the secondary restores a VM from its last committed epoch by streaming that epoch into a fresh
 * QEMU. QEMU loads whatever pages the stream carries; pages it does not carry keep the destination's contents (zero
 * in a fresh QEMU), so a full restore sends every page, zero pages as 9-byte fill records.
 *
 * Layout written (mirrors what 7.2 sends with the VM stopped): header; CONFIGURATION (+ capabilities subsection when
 * capabilities are given); RAM START with the setup record; one RAM PART with all pages; RAM END; the device blob as
 * is (its sections keep their own ids); EOF; VMDESC if given. Output comes as chunks of about `chunkBytes`, pages
 * copied into them (one memcpy per page; the socket write is the cost that matters).
 */
import { KemariError } from '../../errors.js';
import {
  CAPABILITY_X_IGNORE_SHARED,
  CONFIG_SUBSECTION,
  PAGE_BYTES,
  QEMU_VM_FILE_MAGIC,
  QEMU_VM_FILE_VERSION,
  RAM_FLAG,
  RAM_SECTION_IDSTR,
  RAM_SECTION_VERSION,
  SECTION,
} from './format.js';
import type { RamBlockInfo, RamPage } from './records.js';

/** The RAM section's header fields; take them from the parsed stream to re-emit it faithfully. */
export interface RamSectionIds {
  /** Section id of the RAM section (2 in a pc guest of 7.2). Must not collide with a device section id. */
  sectionId: number;
  /** Default 0. */
  instanceId?: number;
  /** Default 4 ({@link RAM_SECTION_VERSION}). */
  versionId?: number;
}

/** Everything a stream is written from. */
export interface MigrationStreamSpec {
  /** Machine type, e.g. `pc-i440fx-7.2`; must equal the destination's. */
  machineType: string;
  /**
   * Validated capabilities to list in the configuration (7.2: `x-ignore-shared` when on; the destination must have
   * the same ones on). Listing `x-ignore-shared` also writes each block's `memoryRegionAddr`.
   */
  capabilities?: readonly string[];
  /** RAM section ids. Default `{ sectionId: 2 }`, what 7.2 assigns in a pc guest. */
  ramSection?: RamSectionIds;
  /** The RAM blocks, in the source's order, with the destination's lengths. */
  blocks: readonly RamBlockInfo[];
  /** The pages to load, any order; see `imagePages` (image-pages.ts) for whole block images. Validated as they are written. */
  pages: Iterable<RamPage>;
  /** The device blob exactly as parsed (every device section between RAM END and EOF). */
  device: Uint8Array;
  /** The VMDESC JSON to append after EOF; omitted when undefined (QEMU then only warns). */
  vmdesc?: Uint8Array;
  /** Target size of the emitted chunks. Default 256 KiB. */
  chunkBytes?: number;
}

/**
 * Yields the stream as chunks. Throws KEMARI_INVALID_ARGUMENT (possibly after some chunks were yielded, since pages
 * are checked as they come) for a spec the format cannot express: unknown block, unaligned or out-of-range page,
 * names over 255 bytes, a block without `memoryRegionAddr` under `x-ignore-shared`.
 */
export function* writeMigrationStream(spec: MigrationStreamSpec): Generator<Uint8Array, void, undefined> {
  const capabilities = spec.capabilities ?? [];
  const ignoreShared = capabilities.includes(CAPABILITY_X_IGNORE_SHARED);
  const ram = { sectionId: spec.ramSection?.sectionId ?? 2, instanceId: spec.ramSection?.instanceId ?? 0, versionId: spec.ramSection?.versionId ?? RAM_SECTION_VERSION };
  const blocks = checkBlocks(spec.blocks, ignoreShared);
  for (const value of [ram.sectionId, ram.instanceId, ram.versionId]) checkU32(value, 'RAM section id fields');
  const out = new ChunkWriter(spec.chunkBytes ?? 256 << 10);

  // Header and configuration (savevm.c: qemu_savevm_state_header, vmstate_configuration).
  out.be32(QEMU_VM_FILE_MAGIC);
  out.be32(QEMU_VM_FILE_VERSION);
  const machineType = ascii(spec.machineType, 'machineType', 0xffff);
  out.u8(SECTION.CONFIGURATION);
  out.be32(machineType.byteLength);
  out.bytes(machineType);
  if (capabilities.length > 0) {
    out.u8(SECTION.SUBSECTION);
    shortString(out, CONFIG_SUBSECTION.CAPABILITIES, 'subsection name');
    out.be32(1);
    out.be32(capabilities.length);
    for (const capability of capabilities) shortString(out, capability, 'capability');
  }

  // RAM START: the setup record (ram.c: ram_save_setup).
  sectionHeader(out, SECTION.START, ram.sectionId);
  shortString(out, RAM_SECTION_IDSTR, 'idstr');
  out.be32(ram.instanceId);
  out.be32(ram.versionId);
  const totalBytes = blocks.reduce((sum, block) => sum + block.lengthBytes, 0);
  out.be64(totalBytes + RAM_FLAG.MEM_SIZE);
  for (const block of blocks) {
    shortString(out, block.name, 'block name');
    out.be64(block.lengthBytes);
    if (ignoreShared) out.be64(block.memoryRegionAddr as number);
  }
  endOfSection(out, ram.sectionId);
  yield* out.flush();

  // RAM PART: every page.
  sectionHeader(out, SECTION.PART, ram.sectionId);
  const byName = new Map(blocks.map((block) => [block.name, block]));
  let previous: string | undefined;
  for (const page of spec.pages) {
    const block = byName.get(page.block);
    if (block === undefined) throw invalid(`page of unknown RAM block ${JSON.stringify(page.block)}`, { block: page.block });
    if (!Number.isSafeInteger(page.offset) || page.offset < 0 || page.offset % PAGE_BYTES !== 0 || page.offset + PAGE_BYTES > block.lengthBytes) {
      throw invalid(`page offset ${page.offset} is not a page of RAM block ${JSON.stringify(block.name)}`, { block: block.name, offset: page.offset });
    }
    const isFill = 'fill' in page;
    const continued = previous === block.name;
    out.be64(page.offset + (isFill ? RAM_FLAG.ZERO : RAM_FLAG.PAGE) + (continued ? RAM_FLAG.CONTINUE : 0));
    if (!continued) shortString(out, block.name, 'block name');
    previous = block.name;
    if (isFill) {
      if (!Number.isInteger(page.fill) || page.fill < 0 || page.fill > 255) throw invalid('a fill byte must be in [0, 255]', { fill: page.fill });
      out.u8(page.fill);
    } else {
      if (page.data.byteLength !== PAGE_BYTES) throw invalid(`page data must be ${PAGE_BYTES} bytes`, { bytes: page.data.byteLength });
      out.bytes(page.data);
    }
    if (out.full) yield* out.flush();
  }
  endOfSection(out, ram.sectionId);

  // RAM END: nothing left to send with the VM stopped.
  sectionHeader(out, SECTION.END, ram.sectionId);
  endOfSection(out, ram.sectionId);
  yield* out.flush();

  // Device state, EOF, VMDESC.
  if (spec.device.byteLength > 0) yield spec.device;
  out.u8(SECTION.EOF);
  if (spec.vmdesc !== undefined) {
    out.u8(SECTION.VMDESCRIPTION);
    checkU32(spec.vmdesc.byteLength, 'vmdesc length');
    out.be32(spec.vmdesc.byteLength);
    yield* out.flush();
    if (spec.vmdesc.byteLength > 0) yield spec.vmdesc;
  } else {
    yield* out.flush();
  }
}

/** Writes the whole stream into one buffer (tests, small guests). */
export function migrationStreamBytes(spec: MigrationStreamSpec): Uint8Array {
  const chunks = [...writeMigrationStream(spec)];
  const total = chunks.reduce((sum, chunk) => sum + chunk.byteLength, 0);
  const bytes = new Uint8Array(total);
  let at = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, at);
    at += chunk.byteLength;
  }
  return bytes;
}

function sectionHeader(out: ChunkWriter, type: number, sectionId: number): void {
  out.u8(type);
  out.be32(sectionId);
}

function endOfSection(out: ChunkWriter, sectionId: number): void {
  out.be64(RAM_FLAG.EOS);
  out.u8(SECTION.FOOTER);
  out.be32(sectionId);
}

function checkBlocks(blocks: readonly RamBlockInfo[], ignoreShared: boolean): RamBlockInfo[] {
  const seen = new Set<string>();
  for (const block of blocks) {
    ascii(block.name, 'block name', 255);
    if (block.name.length === 0 || seen.has(block.name)) throw invalid(`RAM block name ${JSON.stringify(block.name)} is empty or repeated`, { block: block.name });
    seen.add(block.name);
    if (!Number.isSafeInteger(block.lengthBytes) || block.lengthBytes <= 0 || block.lengthBytes % PAGE_BYTES !== 0) {
      throw invalid(`RAM block ${JSON.stringify(block.name)} length must be a positive multiple of ${PAGE_BYTES}`, { block: block.name, lengthBytes: block.lengthBytes });
    }
    if (ignoreShared && (block.memoryRegionAddr === undefined || !Number.isSafeInteger(block.memoryRegionAddr) || block.memoryRegionAddr < 0)) {
      throw invalid(`RAM block ${JSON.stringify(block.name)} needs memoryRegionAddr under x-ignore-shared`, { block: block.name });
    }
  }
  return [...blocks];
}

function shortString(out: ChunkWriter, text: string, what: string): void {
  const bytes = ascii(text, what, 255);
  out.u8(bytes.byteLength);
  out.bytes(bytes);
}

function ascii(text: string, what: string, bytesMax: number): Uint8Array {
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code > 0xff) throw invalid(`${what} must be Latin-1`, { [what]: text });
    bytes[i] = code;
  }
  if (bytes.byteLength === 0 || bytes.byteLength > bytesMax) throw invalid(`${what} must have 1 to ${bytesMax} bytes`, { [what]: text });
  return bytes;
}

function checkU32(value: number, what: string): void {
  if (!Number.isInteger(value) || value < 0 || value > 0xffff_ffff) throw invalid(`${what} must fit in 32 bits`, { value });
}

function invalid(message: string, details: Record<string, unknown>): KemariError {
  return new KemariError('KEMARI_INVALID_ARGUMENT', `migration stream writer: ${message}`, { details });
}

/** Appends big-endian fields into fixed-size chunks. */
class ChunkWriter {
  private buffer: Uint8Array;
  private view: DataView;
  private used = 0;
  private readonly done: Uint8Array[] = [];

  constructor(private readonly chunkBytes: number) {
    if (!Number.isSafeInteger(chunkBytes) || chunkBytes < PAGE_BYTES) throw invalid(`chunkBytes must be at least ${PAGE_BYTES}`, { chunkBytes });
    this.buffer = new Uint8Array(chunkBytes + PAGE_BYTES + 512);
    this.view = new DataView(this.buffer.buffer);
  }

  /** True once the current chunk reached its target size. */
  get full(): boolean {
    return this.used >= this.chunkBytes;
  }

  u8(value: number): void {
    this.ensure(1);
    this.buffer[this.used++] = value;
  }

  be32(value: number): void {
    this.ensure(4);
    this.view.setUint32(this.used, value);
    this.used += 4;
  }

  be64(value: number): void {
    this.ensure(8);
    this.view.setUint32(this.used, Math.floor(value / 2 ** 32));
    this.view.setUint32(this.used + 4, value >>> 0);
    this.used += 8;
  }

  bytes(data: Uint8Array): void {
    this.ensure(data.byteLength);
    this.buffer.set(data, this.used);
    this.used += data.byteLength;
  }

  /** Yields the completed chunks and the current one, leaving the writer empty. */
  *flush(): Generator<Uint8Array, void, undefined> {
    this.seal();
    while (this.done.length > 0) yield this.done.shift() as Uint8Array;
  }

  /** Starts a new chunk when `n` more bytes would overflow the current one. */
  private ensure(n: number): void {
    if (this.used + n <= this.buffer.byteLength) return;
    this.seal();
    if (n > this.buffer.byteLength) {
      this.buffer = new Uint8Array(n);
      this.view = new DataView(this.buffer.buffer);
    }
  }

  private seal(): void {
    if (this.used === 0) return;
    this.done.push(this.buffer.subarray(0, this.used));
    this.buffer = new Uint8Array(Math.max(this.chunkBytes + PAGE_BYTES + 512, this.buffer.byteLength));
    this.view = new DataView(this.buffer.buffer);
    this.used = 0;
  }
}
