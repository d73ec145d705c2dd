/**
 * Streaming, sans-I/O parser of QEMU 7.2 precopy migration streams (the bytes `migrate` sends).
 *
 * Feed it chunks split anywhere with {@link MigrationStreamParser.push}, then call
 * {@link MigrationStreamParser.end} when the sender closed the connection; both return the records completed so
 * far, in stream order: header, configuration, RAM section headers, the RAM block list, pages (data or fill byte),
 * then the device blob, EOF and VMDESC.
 *
 * Why the device blob is only known at the end: device sections have no length prefix, so the EOF marker after them
 * cannot be told from a zero byte inside device state while bytes still arrive. The parser keeps everything after
 * the RAM section's END (bounded by `deviceBytesMax + vmdescBytesMax`) and splits it when the stream ends: a
 * trailing `0x00 0x06 be32 len + JSON` is EOF + VMDESC (JSON never contains a 0x00 byte, so the split is unique),
 * otherwise the last byte must be EOF. The blob is then checked to be a whole sequence of framed device sections.
 *
 * Guarantees: memory is bounded (a partial record, at most one page, or the bounded device tail); malformed input
 * throws KemariError KEMARI_MIGRATION_FORMAT with `details.offset` (stream offset of the offending record) and the
 * parser stays failed; it never loops without consuming input. Page `data` are views of the pushed chunks when a page
 * did not span chunks: do not modify a chunk while its records are in use.
 */
import { KemariError } from '../../errors.js';
import { ByteQueue } from './byte-queue.js';
import { splitDeviceSections } from './device-sections.js';
import {
  CAPABILITY_X_IGNORE_SHARED,
  CONFIG_SUBSECTION,
  PAGE_BYTES,
  QEMU_VM_FILE_MAGIC,
  QEMU_VM_FILE_VERSION,
  RAM_FLAG,
  RAM_FLAGS_MASK,
  RAM_SECTION_IDSTR,
  SECTION,
} from './format.js';
import type { ConfigurationRecord, FillPageRecord, MigrationRecord, PageRecord, RamBlockInfo } from './records.js';

/** Options of {@link MigrationStreamParser}; every limit exists so a hostile or broken sender cannot exhaust memory. */
export interface MigrationStreamParserOptions {
  /**
   * Whether the source had the `x-ignore-shared` capability on (it adds a be64 per block to the RAM setup record).
   * Default: taken from the stream's `configuration/capabilities` subsection, which 7.2 writes exactly when it is on.
   * When given and the stream says otherwise, the stream is rejected.
   */
  xIgnoreShared?: boolean;
  /** Longest machine type name accepted. Default 256. */
  machineTypeBytesMax?: number;
  /** Longest RAM block name accepted (the format allows 255). Default 255. */
  blockNameBytesMax?: number;
  /** Most RAM blocks accepted in the setup record. Default 256. */
  blocksMax?: number;
  /** Most capabilities accepted in the configuration subsection. Default 64. */
  capabilitiesMax?: number;
  /** Largest device blob accepted (all device sections together). Default 16 MiB; a `-m 32` pc guest has ~13 KB. */
  deviceBytesMax?: number;
  /** Largest VMDESC JSON accepted. Default 4 MiB; a pc guest has ~100 KB. */
  vmdescBytesMax?: number;
  /** Emit the VMDESC record (true) or drop it (false). Default true. */
  keepVmdesc?: boolean;
  /**
   * Takes every record as it is parsed, in stream order, instead of its being returned by push() and end() (which
   * then return nothing). A stream carries a page record for every guest page, so a receiver that applies each at
   * once spares the allocation of all of them: the `page` and `fill-page` record objects are reused for the next
   * page (as `data` views the pushed chunk), valid during the call only. An exception it throws fails the parser.
   */
  onRecord?: (record: MigrationRecord) => void;
}

/** Parser state: which bytes are expected next. */
type State =
  | 'file-header'
  | 'section-type'
  | 'config-name-length'
  | 'config-name'
  | 'config-subsection-peek'
  | 'subsection-name-length'
  | 'subsection-name'
  | 'subsection-version'
  | 'subsection-page-bits'
  | 'subsection-uuid'
  | 'subsection-caps-count'
  | 'subsection-cap-length'
  | 'subsection-cap-name'
  | 'section-start-header'
  | 'section-start-idstr'
  | 'section-id'
  | 'ram-record'
  | 'ram-block-name-length'
  | 'ram-block-entry'
  | 'page-name-length'
  | 'page-name'
  | 'page-body'
  | 'footer'
  | 'command-header'
  | 'command-data'
  | 'device-tail'
  | 'vmdesc-type'
  | 'vmdesc-length'
  | 'vmdesc-data'
  | 'done';

/** Default limits, exported so callers can size buffers from the same numbers. */
export const MIGRATION_PARSER_DEFAULTS = {
  machineTypeBytesMax: 256,
  blockNameBytesMax: 255,
  blocksMax: 256,
  capabilitiesMax: 64,
  deviceBytesMax: 16 << 20,
  vmdescBytesMax: 4 << 20,
} as const;

/** The sans-I/O parser. One instance parses one stream. */
export class MigrationStreamParser {
  private readonly queue = new ByteQueue();
  private state: State = 'file-header';
  private failure: KemariError | undefined;
  private ended = false;
  private readonly limits: Required<Omit<MigrationStreamParserOptions, 'xIgnoreShared' | 'onRecord'>>;
  /** The record sink (MigrationStreamParserOptions.onRecord), and the two page records it is handed, reused. */
  private readonly onRecord: ((record: MigrationRecord) => void) | undefined;
  private readonly fillRecord: FillPageRecord = { type: 'fill-page', block: '', offset: 0, fill: 0 };
  private readonly pageRecord: PageRecord = { type: 'page', block: '', offset: 0, data: new Uint8Array(0) };
  private xIgnoreShared: boolean | undefined;

  // Record under construction and context.
  private recordOffset = 0;
  private need = 8;
  private configuration: ConfigurationRecord | undefined;
  private subsectionName = '';
  private capsRemaining = 0;
  private sectionType = 0;
  private sectionId = 0;
  private ramSectionId: number | undefined;
  private ramInstanceId = 0;
  private ramVersionId = 0;
  private ramEnded = false;
  private blocks: RamBlockInfo[] | undefined;
  private readonly blockByName = new Map<string, RamBlockInfo>();
  private pendingBlocks: RamBlockInfo[] = [];
  private totalBytes = 0;
  private listedBytes = 0;
  private pendingBlockNameLength = 0;
  private pageFlags = 0;
  private pageOffset = 0;
  private lastBlock: RamBlockInfo | undefined;
  private pageBlock: RamBlockInfo | undefined;
  private commandType = 0;
  private tail: Uint8Array[] = [];
  private tailBytes = 0;
  private tailOffset = 0;
  private sawEof = false;

  constructor(options: MigrationStreamParserOptions = {}) {
    this.xIgnoreShared = options.xIgnoreShared;
    this.onRecord = options.onRecord;
    this.limits = {
      machineTypeBytesMax: options.machineTypeBytesMax ?? MIGRATION_PARSER_DEFAULTS.machineTypeBytesMax,
      blockNameBytesMax: options.blockNameBytesMax ?? MIGRATION_PARSER_DEFAULTS.blockNameBytesMax,
      blocksMax: options.blocksMax ?? MIGRATION_PARSER_DEFAULTS.blocksMax,
      capabilitiesMax: options.capabilitiesMax ?? MIGRATION_PARSER_DEFAULTS.capabilitiesMax,
      deviceBytesMax: options.deviceBytesMax ?? MIGRATION_PARSER_DEFAULTS.deviceBytesMax,
      vmdescBytesMax: options.vmdescBytesMax ?? MIGRATION_PARSER_DEFAULTS.vmdescBytesMax,
      keepVmdesc: options.keepVmdesc ?? true,
    };
    for (const [name, value] of Object.entries(this.limits)) {
      if (typeof value === 'number' && (!Number.isSafeInteger(value) || value < 0)) {
        throw new KemariError('KEMARI_INVALID_ARGUMENT', `${name} must be a non-negative integer`, { details: { [name]: value } });
      }
    }
  }

  /** Stream bytes consumed so far (the offset reported in errors is the start of the record being parsed). */
  get offset(): number {
    return this.queue.offset;
  }

  /** Bytes held: a partial record, or the device tail once RAM has ended. */
  get bufferedBytes(): number {
    return this.queue.length + this.tailBytes;
  }

  /** The RAM block list, once the setup record was parsed. */
  get ramBlocks(): readonly RamBlockInfo[] | undefined {
    return this.blocks;
  }

  /** The error that failed this parser, if any; every later call throws it again. */
  get error(): KemariError | undefined {
    return this.failure;
  }

  /** Feeds the next bytes of the stream; returns the records they completed. */
  push(chunk: Uint8Array): MigrationRecord[] {
    if (this.failure !== undefined) throw this.failure;
    if (this.ended) throw this.fail('bytes pushed after end()', this.queue.offset);
    const out: MigrationRecord[] = [];
    this.queue.push(chunk);
    try {
      this.run(out);
    } catch (error) {
      throw this.captureFailure(error);
    }
    return out;
  }

  /**
   * Declares the end of the stream (the sender closed the connection); returns the last records: device blob, EOF
   * and VMDESC. Throws KEMARI_MIGRATION_FORMAT if the stream stopped anywhere else than after a whole stream.
   */
  end(): MigrationRecord[] {
    if (this.failure !== undefined) throw this.failure;
    if (this.ended) return [];
    this.ended = true;
    const out: MigrationRecord[] = [];
    try {
      if (this.state === 'device-tail') this.finishDeviceTail(out);
      else if (this.state === 'vmdesc-type' && this.queue.length === 0) this.state = 'done';
      else if (this.state !== 'done') throw this.fail(`stream truncated while expecting ${this.state} (${this.need} bytes, ${this.queue.length} present)`, this.recordOffset);
    } catch (error) {
      throw this.captureFailure(error);
    }
    return out;
  }

  private run(out: MigrationRecord[]): void {
    while (this.state !== 'device-tail' && this.queue.length >= this.need) {
      if (this.state === 'done') throw this.fail('bytes after the end of the stream', this.queue.offset);
      if (this.state === 'ram-record' && this.continuedPages(out)) continue;
      this.step(out);
    }
    if (this.state === 'device-tail') this.collectTail();
  }

  /** Consumes exactly the `need` bytes of the current state and moves on. */
  private step(out: MigrationRecord[]): void {
    const q = this.queue;
    switch (this.state) {
      case 'file-header': {
        this.recordOffset = q.offset;
        const magic = q.readBe32();
        const version = q.readBe32();
        if (magic !== QEMU_VM_FILE_MAGIC) throw this.fail(`bad magic 0x${magic.toString(16).padStart(8, '0')} (expected QEVM)`, 0, { magic });
        if (version !== QEMU_VM_FILE_VERSION) throw this.fail(`unsupported stream version ${version}`, 4, { version });
        this.emit(out, { type: 'header', version });
        return this.expect('section-type', 1);
      }
      case 'section-type': {
        this.recordOffset = q.offset;
        const type = q.readU8();
        this.sectionType = type;
        switch (type) {
          case SECTION.CONFIGURATION:
            if (this.configuration !== undefined || this.ramSectionId !== undefined) throw this.fail('CONFIGURATION section out of place', this.recordOffset);
            return this.expect('config-name-length', 4);
          case SECTION.START:
            return this.expect('section-start-header', 5);
          case SECTION.FULL:
            throw this.fail('a device (FULL) section before the RAM section ended; only precopy with RAM first is supported', this.recordOffset);
          case SECTION.PART:
          case SECTION.END:
            return this.expect('section-id', 4);
          case SECTION.COMMAND:
            return this.expect('command-header', 4);
          case SECTION.EOF:
            this.sawEof = true;
            this.emit(out, { type: 'eof' });
            return this.expect('vmdesc-type', 1);
          default:
            throw this.fail(`unknown section type 0x${type.toString(16)}`, this.recordOffset, { sectionType: type });
        }
      }
      case 'config-name-length': {
        const length = q.readBe32();
        if (length === 0 || length > this.limits.machineTypeBytesMax) {
          throw this.fail(`machine type name of ${length} bytes (limit ${this.limits.machineTypeBytesMax})`, this.recordOffset, { length });
        }
        return this.expect('config-name', length);
      }
      case 'config-name': {
        this.configuration = { type: 'configuration', machineType: latin1(q.read(this.need)), capabilities: [] };
        return this.expect('config-subsection-peek', 1);
      }
      case 'config-subsection-peek': {
        if (q.peek() !== SECTION.SUBSECTION) return this.finishConfiguration(out);
        this.recordOffset = q.offset;
        q.readU8();
        return this.expect('subsection-name-length', 1);
      }
      case 'subsection-name-length': {
        const length = q.readU8();
        if (length === 0) throw this.fail('empty subsection name', this.recordOffset);
        return this.expect('subsection-name', length);
      }
      case 'subsection-name': {
        this.subsectionName = latin1(q.read(this.need));
        return this.expect('subsection-version', 4);
      }
      case 'subsection-version': {
        const version = q.readBe32();
        if (version !== 1) throw this.fail(`subsection ${this.subsectionName} version ${version} unsupported`, this.recordOffset);
        switch (this.subsectionName) {
          case CONFIG_SUBSECTION.TARGET_PAGE_BITS:
            return this.expect('subsection-page-bits', 4);
          case CONFIG_SUBSECTION.UUID:
            return this.expect('subsection-uuid', 16);
          case CONFIG_SUBSECTION.CAPABILITIES:
            return this.expect('subsection-caps-count', 4);
          default:
            throw this.fail(`unknown configuration subsection ${JSON.stringify(this.subsectionName)}`, this.recordOffset);
        }
      }
      case 'subsection-page-bits': {
        const bits = q.readBe32();
        if (bits !== 12) throw this.fail(`target page bits ${bits} unsupported (only 4 KiB pages)`, this.recordOffset, { targetPageBits: bits });
        (this.configuration as ConfigurationRecord).targetPageBits = bits;
        return this.expect('config-subsection-peek', 1);
      }
      case 'subsection-uuid': {
        (this.configuration as ConfigurationRecord).uuid = Uint8Array.from(q.read(16));
        return this.expect('config-subsection-peek', 1);
      }
      case 'subsection-caps-count': {
        const count = q.readBe32();
        if (count > this.limits.capabilitiesMax) throw this.fail(`${count} capabilities (limit ${this.limits.capabilitiesMax})`, this.recordOffset, { count });
        this.capsRemaining = count;
        return count === 0 ? this.expect('config-subsection-peek', 1) : this.expect('subsection-cap-length', 1);
      }
      case 'subsection-cap-length': {
        const length = q.readU8();
        if (length === 0) throw this.fail('empty capability name', this.recordOffset);
        return this.expect('subsection-cap-name', length);
      }
      case 'subsection-cap-name': {
        (this.configuration as ConfigurationRecord).capabilities.push(latin1(q.read(this.need)));
        this.capsRemaining -= 1;
        return this.capsRemaining === 0 ? this.expect('config-subsection-peek', 1) : this.expect('subsection-cap-length', 1);
      }
      case 'section-start-header': {
        this.sectionId = q.readBe32();
        const idLength = q.readU8();
        if (idLength === 0) throw this.fail('empty section idstr', this.recordOffset);
        return this.expect('section-start-idstr', idLength + 8);
      }
      case 'section-start-idstr': {
        const idstr = latin1(q.read(this.need - 8));
        const instanceId = q.readBe32();
        const versionId = q.readBe32();
        if (idstr !== RAM_SECTION_IDSTR) {
          throw this.fail(`iterative section ${JSON.stringify(idstr)} is not supported (only ram; block migration and dirty bitmaps must be off)`, this.recordOffset, { idstr });
        }
        if (this.ramSectionId !== undefined) throw this.fail('a second RAM START section', this.recordOffset);
        this.ramSectionId = this.sectionId;
        this.ramInstanceId = instanceId;
        this.ramVersionId = versionId;
        this.resolveCapabilities();
        this.emit(out, { type: 'ram-section', kind: 'start', sectionId: this.sectionId, instanceId, versionId });
        return this.expect('ram-record', 8);
      }
      case 'section-id': {
        this.sectionId = q.readBe32();
        if (this.ramSectionId === undefined || this.sectionId !== this.ramSectionId) {
          throw this.fail(`${this.sectionType === SECTION.PART ? 'PART' : 'END'} of unknown section ${this.sectionId}`, this.recordOffset, { sectionId: this.sectionId });
        }
        this.emit(out, {
          type: 'ram-section',
          kind: this.sectionType === SECTION.PART ? 'part' : 'end',
          sectionId: this.sectionId,
          instanceId: this.ramInstanceId,
          versionId: this.ramVersionId,
        });
        return this.expect('ram-record', 8);
      }
      case 'ram-record':
        return this.ramRecord(out);
      case 'ram-block-name-length': {
        const length = q.readU8();
        if (length === 0) throw this.fail('empty RAM block name', this.recordOffset);
        if (length > this.limits.blockNameBytesMax) throw this.fail(`RAM block name of ${length} bytes (limit ${this.limits.blockNameBytesMax})`, this.recordOffset, { length });
        this.pendingBlockNameLength = length;
        return this.expect('ram-block-entry', length + 8 + (this.xIgnoreShared === true ? 8 : 0));
      }
      case 'ram-block-entry':
        return this.ramBlockEntry(out);
      case 'page-name-length': {
        const length = q.readU8();
        if (length === 0) throw this.fail('empty RAM block name in a page record', this.recordOffset);
        if (length > this.limits.blockNameBytesMax) throw this.fail(`RAM block name of ${length} bytes (limit ${this.limits.blockNameBytesMax})`, this.recordOffset, { length });
        return this.expect('page-name', length);
      }
      case 'page-name': {
        const name = latin1(q.read(this.need));
        const block = this.blockByName.get(name);
        if (block === undefined) throw this.fail(`page of unknown RAM block ${JSON.stringify(name)}`, this.recordOffset, { block: name });
        this.lastBlock = block;
        return this.pageTarget(block);
      }
      case 'page-body': {
        const block = this.pageBlock as RamBlockInfo;
        // Back to records first: a sink that throws leaves the parser failed, not halfway through this one.
        this.expect('ram-record', 8);
        if (this.pageFlags === RAM_FLAG.ZERO) this.fillPage(out, block.name, this.pageOffset, q.readU8());
        else this.dataPage(out, block.name, this.pageOffset, q.read(PAGE_BYTES));
        return;
      }
      case 'footer': {
        const marker = q.readU8();
        const id = q.readBe32();
        if (marker !== SECTION.FOOTER || id !== this.sectionId) {
          throw this.fail(`bad section footer (0x${marker.toString(16)} id ${id}, expected 0x7e id ${this.sectionId})`, this.recordOffset, { marker, sectionId: id });
        }
        if (this.sectionType === SECTION.END) {
          this.ramEnded = true;
          this.state = 'device-tail';
          this.tailOffset = q.offset;
          return;
        }
        return this.expect('section-type', 1);
      }
      case 'command-header': {
        this.commandType = q.readBe16();
        return this.expect('command-data', q.readBe16());
      }
      case 'command-data': {
        this.emit(out, { type: 'command', command: this.commandType, data: Uint8Array.from(q.read(this.need)) });
        return this.expect('section-type', 1);
      }
      case 'vmdesc-type': {
        this.recordOffset = q.offset;
        const type = q.readU8();
        if (type !== SECTION.VMDESCRIPTION) throw this.fail(`expected VMDESC after EOF, got 0x${type.toString(16)}`, this.recordOffset);
        return this.expect('vmdesc-length', 4);
      }
      case 'vmdesc-length': {
        const length = q.readBe32();
        if (length > this.limits.vmdescBytesMax) throw this.fail(`VMDESC of ${length} bytes (limit ${this.limits.vmdescBytesMax})`, this.recordOffset, { length });
        return this.expect('vmdesc-data', length);
      }
      case 'vmdesc-data': {
        const json = q.read(this.need);
        if (this.limits.keepVmdesc) this.emit(out, { type: 'vmdesc', json });
        return this.expect('done', 1);
      }
      case 'device-tail':
      case 'done':
        return;
    }
  }

  /** A RAM record header (be64 offset | flags) is in: dispatch on its single flag. */
  private ramRecord(out: MigrationRecord[]): void {
    const q = this.queue;
    this.recordOffset = q.offset;
    const high = q.readBe32();
    const low = q.readBe32();
    const flags = low & RAM_FLAGS_MASK;
    const value = high * 2 ** 32 + (low - flags);
    if (high > 0x1f_ffff) throw this.fail('RAM record offset beyond 2^53', this.recordOffset);
    const kind = flags & ~RAM_FLAG.CONTINUE;
    switch (kind) {
      case RAM_FLAG.MEM_SIZE: {
        if (this.sectionType !== SECTION.START || this.blocks !== undefined || (flags & RAM_FLAG.CONTINUE) !== 0) {
          throw this.fail('RAM setup record (MEM_SIZE) out of place', this.recordOffset);
        }
        // The total is page aligned, so its low bits are free for the flag.
        this.totalBytes = value;
        this.listedBytes = 0;
        this.pendingBlocks = [];
        return this.totalBytes === 0 ? this.finishBlocks(out) : this.expect('ram-block-name-length', 1);
      }
      case RAM_FLAG.ZERO:
      case RAM_FLAG.PAGE: {
        if (this.blocks === undefined) throw this.fail('RAM page before the RAM setup record', this.recordOffset);
        this.pageFlags = kind;
        this.pageOffset = value;
        if ((flags & RAM_FLAG.CONTINUE) === 0) return this.expect('page-name-length', 1);
        if (this.lastBlock === undefined) throw this.fail('RAM page with CONTINUE but no previous block', this.recordOffset);
        return this.pageTarget(this.lastBlock);
      }
      case RAM_FLAG.EOS:
        if ((flags & RAM_FLAG.CONTINUE) !== 0 || value !== 0) throw this.fail('malformed RAM EOS record', this.recordOffset);
        if (this.sectionType === SECTION.START && this.blocks === undefined) throw this.fail('RAM START section without a setup record', this.recordOffset);
        return this.expect('footer', 5);
      default:
        throw this.fail(`unsupported RAM record flags 0x${flags.toString(16)} (compression, xbzrle, multifd and RDMA are not supported)`, this.recordOffset, { flags });
    }
  }

  /**
   * The fast path of the RAM section, where nearly all of a stream's bytes are: a run of well-formed page records of
   * the previous record's block (CONTINUE: a zero-filled or a whole page, no block name) read in place from the
   * current chunk, without a state change per field. It stops before the first record that is anything else, is
   * not whole in the chunk, or would fail a check, and leaves that one to {@link step}, so records, errors and
   * their offsets are the same as without it. Returns whether it consumed any record.
   */
  private continuedPages(out: MigrationRecord[]): boolean {
    const block = this.lastBlock;
    const q = this.queue;
    const chunk = q.headChunk;
    if (block === undefined || this.blocks === undefined || chunk === undefined) return false;
    const name = block.name;
    const lengthBytes = block.lengthBytes;
    const start = q.headOffset;
    const end = chunk.byteLength;
    // Stream offset of a position in the chunk: the record being handed on is where errors say they were.
    const base = q.offset - start;
    let at = start;
    try {
      while (at + 8 <= end) {
        const high = (((chunk[at] as number) << 24) >>> 0) + ((chunk[at + 1] as number) << 16) + ((chunk[at + 2] as number) << 8) + (chunk[at + 3] as number);
        const low = (((chunk[at + 4] as number) << 24) >>> 0) + ((chunk[at + 5] as number) << 16) + ((chunk[at + 6] as number) << 8) + (chunk[at + 7] as number);
        const flags = low & RAM_FLAGS_MASK;
        if (high > 0x1f_ffff) break;
        const offset = high * 2 ** 32 + (low - flags);
        if (offset + PAGE_BYTES > lengthBytes) break;
        // As field by field: the record is consumed, and errors point at it, before it is handed on.
        if (flags === (RAM_FLAG.ZERO | RAM_FLAG.CONTINUE)) {
          if (at + 9 > end) break;
          const fill = chunk[at + 8] as number;
          this.recordOffset = base + at;
          at += 9;
          this.fillPage(out, name, offset, fill);
        } else if (flags === (RAM_FLAG.PAGE | RAM_FLAG.CONTINUE)) {
          if (at + 8 + PAGE_BYTES > end) break;
          const data = chunk.subarray(at + 8, at + 8 + PAGE_BYTES);
          this.recordOffset = base + at;
          at += 8 + PAGE_BYTES;
          this.dataPage(out, name, offset, data);
        } else {
          break;
        }
      }
    } finally {
      // Also when the sink throws: what was handed on is consumed.
      if (at > start) q.skip(at - start);
    }
    return at > start;
  }

  /** Hands a record to the sink when there is one, else adds it to what push() or end() returns. */
  private emit(out: MigrationRecord[], record: MigrationRecord): void {
    if (this.onRecord === undefined) out.push(record);
    else this.onRecord(record);
  }

  /** A zero (fill) page: to the sink when there is one (the reused record), else a new record. */
  private fillPage(out: MigrationRecord[], block: string, offset: number, fill: number): void {
    const sink = this.onRecord;
    if (sink === undefined) {
      out.push({ type: 'fill-page', block, offset, fill });
      return;
    }
    const record = this.fillRecord;
    record.block = block;
    record.offset = offset;
    record.fill = fill;
    sink(record);
  }

  /** A whole page: to the sink when there is one (the reused record), else a new record. */
  private dataPage(out: MigrationRecord[], block: string, offset: number, data: Uint8Array): void {
    const sink = this.onRecord;
    if (sink === undefined) {
      out.push({ type: 'page', block, offset, data });
      return;
    }
    const record = this.pageRecord;
    record.block = block;
    record.offset = offset;
    record.data = data;
    sink(record);
  }

  private ramBlockEntry(out: MigrationRecord[]): void {
    const q = this.queue;
    const name = latin1(q.read(this.pendingBlockNameLength));
    const lengthBytes = readBe64(q);
    if (lengthBytes === undefined || lengthBytes === 0 || lengthBytes % PAGE_BYTES !== 0) {
      throw this.fail(`RAM block ${JSON.stringify(name)} has a bad length`, this.recordOffset, { block: name });
    }
    const block: RamBlockInfo = { name, lengthBytes };
    if (this.xIgnoreShared === true) {
      const addr = readBe64(q);
      if (addr === undefined) throw this.fail(`RAM block ${JSON.stringify(name)} has an address beyond 2^53`, this.recordOffset, { block: name });
      block.memoryRegionAddr = addr;
    }
    if (this.blockByName.has(name)) throw this.fail(`RAM block ${JSON.stringify(name)} listed twice`, this.recordOffset, { block: name });
    if (this.pendingBlocks.length >= this.limits.blocksMax) throw this.fail(`more than ${this.limits.blocksMax} RAM blocks`, this.recordOffset);
    this.listedBytes += lengthBytes;
    if (this.listedBytes > this.totalBytes) {
      throw this.fail(`RAM blocks add up to more than the announced ${this.totalBytes} bytes`, this.recordOffset, { totalBytes: this.totalBytes });
    }
    this.pendingBlocks.push(block);
    this.blockByName.set(name, block);
    if (this.listedBytes === this.totalBytes) return this.finishBlocks(out);
    return this.expect('ram-block-name-length', 1);
  }

  private finishBlocks(out: MigrationRecord[]): void {
    this.blocks = this.pendingBlocks;
    this.emit(out, { type: 'ram-blocks', totalBytes: this.totalBytes, blocks: this.blocks.map((block) => ({ ...block })) });
    this.expect('ram-record', 8);
  }

  /** The page's block is known: check the offset and wait for the fill byte or the page. */
  private pageTarget(block: RamBlockInfo): void {
    if (this.pageOffset + PAGE_BYTES > block.lengthBytes) {
      throw this.fail(`page offset 0x${this.pageOffset.toString(16)} outside RAM block ${JSON.stringify(block.name)} of ${block.lengthBytes} bytes`, this.recordOffset, {
        block: block.name,
        pageOffset: this.pageOffset,
      });
    }
    this.pageBlock = block;
    this.expect('page-body', this.pageFlags === RAM_FLAG.ZERO ? 1 : PAGE_BYTES);
  }

  private finishConfiguration(out: MigrationRecord[]): void {
    const configuration = this.configuration as ConfigurationRecord;
    this.emit(out, configuration);
    this.expect('section-type', 1);
  }

  /** Settles whether block entries carry an address, from the option and the stream's capability list. */
  private resolveCapabilities(): void {
    const listed = this.configuration?.capabilities.includes(CAPABILITY_X_IGNORE_SHARED);
    if (this.xIgnoreShared === undefined) {
      this.xIgnoreShared = listed === true;
      return;
    }
    // 7.2 always lists x-ignore-shared in the configuration when it is on; a configuration without the
    // capabilities subsection (or no configuration at all) leaves the option in charge.
    const hasCapabilityList = this.configuration !== undefined && this.configuration.capabilities.length > 0;
    if (hasCapabilityList && listed !== this.xIgnoreShared) {
      throw this.fail(`x-ignore-shared is ${this.xIgnoreShared ? 'on' : 'off'} for the parser but ${listed ? 'on' : 'off'} in the stream`, this.recordOffset);
    }
  }

  /** After the RAM section's END: keep every byte (bounded) until end() splits device state, EOF and VMDESC. */
  private collectTail(): void {
    const limit = this.limits.deviceBytesMax + 1 + 5 + this.limits.vmdescBytesMax;
    for (const part of this.queue.drain()) {
      this.tailBytes += part.byteLength;
      if (this.tailBytes > limit) {
        throw this.fail(`device state and VMDESC exceed ${limit} bytes (deviceBytesMax + vmdescBytesMax)`, this.tailOffset, { limit });
      }
      this.tail.push(part);
    }
  }

  private finishDeviceTail(out: MigrationRecord[]): void {
    const tail = concat(this.tail, this.tailBytes);
    this.tail = [];
    let eofAt = -1;
    let vmdesc: Uint8Array | undefined;
    // Search VMDESC from the end: `0x00 EOF, 0x06, be32 length` where the length reaches exactly the end.
    const lowest = Math.max(1, tail.byteLength - 5 - this.limits.vmdescBytesMax);
    for (let at = tail.byteLength - 5; at >= lowest; at--) {
      if (tail[at] !== SECTION.VMDESCRIPTION || tail[at - 1] !== SECTION.EOF) continue;
      const length = be32(tail, at + 1);
      if (length !== tail.byteLength - at - 5) continue;
      if (length > 0 && tail[at + 5] !== 0x7b /* '{' */) continue;
      eofAt = at - 1;
      vmdesc = tail.subarray(at + 5);
      break;
    }
    if (eofAt === -1) {
      if (tail.byteLength === 0 || tail[tail.byteLength - 1] !== SECTION.EOF) {
        throw this.fail(`stream ended without EOF after the device state (truncated, or a VMDESC over vmdescBytesMax ${this.limits.vmdescBytesMax})`, this.tailOffset + tail.byteLength, { deviceTailBytes: tail.byteLength });
      }
      eofAt = tail.byteLength - 1;
    }
    if (eofAt > this.limits.deviceBytesMax) throw this.fail(`device state of ${eofAt} bytes (limit ${this.limits.deviceBytesMax})`, this.tailOffset, { deviceBytes: eofAt });
    const data = tail.subarray(0, eofAt);
    const sections = splitDeviceSections(data, this.tailOffset);
    this.emit(out, { type: 'device', data, sections });
    this.emit(out, { type: 'eof' });
    this.sawEof = true;
    if (vmdesc !== undefined && this.limits.keepVmdesc) this.emit(out, { type: 'vmdesc', json: vmdesc });
    this.state = 'done';
  }

  private expect(state: State, need: number): void {
    this.state = state;
    this.need = need;
  }

  private fail(message: string, offset: number, details: Record<string, unknown> = {}): KemariError {
    return new KemariError('KEMARI_MIGRATION_FORMAT', `migration stream: ${message}`, { details: { offset, state: this.state, ...details } });
  }

  private captureFailure(error: unknown): KemariError {
    const failure =
      error instanceof KemariError ? error : new KemariError('KEMARI_MIGRATION_FORMAT', `migration stream: ${String(error)}`, { cause: error, details: { offset: this.recordOffset } });
    this.failure = failure;
    this.tail = [];
    return failure;
  }

  /** For tests and diagnostics: whether the RAM section ended and whether EOF was seen. */
  get progress(): { ramEnded: boolean; eof: boolean } {
    return { ramEnded: this.ramEnded, eof: this.sawEof };
  }
}

function latin1(bytes: Uint8Array): string {
  let text = '';
  for (const byte of bytes) text += String.fromCharCode(byte);
  return text;
}

function be32(bytes: Uint8Array, at: number): number {
  return (((bytes[at] as number) << 24) >>> 0) + ((bytes[at + 1] as number) << 16) + ((bytes[at + 2] as number) << 8) + (bytes[at + 3] as number);
}

/** A be64 as a number, or undefined beyond 2^53. */
function readBe64(q: ByteQueue): number | undefined {
  const high = q.readBe32();
  const low = q.readBe32();
  if (high > 0x1f_ffff) return undefined;
  return high * 2 ** 32 + low;
}

function concat(parts: Uint8Array[], total: number): Uint8Array {
  if (parts.length === 1) return parts[0] as Uint8Array;
  const out = new Uint8Array(total);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.byteLength;
  }
  return out;
}
