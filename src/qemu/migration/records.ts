/**
 * The typed records a QEMU migration stream is made of, as {@link MigrationStreamParser} emits them and
 * {@link writeMigrationStream} consumes them. Only what kemari needs is structured (configuration, RAM); device
 * state stays one opaque byte range because device sections carry no length prefix.
 */

/** One RAM block of the guest (`pc.ram`, `pc.bios`, ACPI ROMs, ...), as listed in the RAM setup record. */
export interface RamBlockInfo {
  /** The block's idstr, e.g. `pc.ram` or `/rom@etc/acpi/tables`. */
  name: string;
  /** Used length of the block in bytes (a multiple of the page size). */
  lengthBytes: number;
  /**
   * The block's memory region address (`mr->addr`); present only with the `x-ignore-shared` capability, which adds
   * it to the setup record so the destination can check shared blocks sit where it expects.
   */
  memoryRegionAddr?: number;
}

/** A page of a RAM block with its contents. */
export interface RamDataPage {
  /** Name of the block the page belongs to. */
  block: string;
  /** Byte offset of the page inside its block (page aligned). */
  offset: number;
  /**
   * The page's bytes (4096 of them). A view into a chunk given to the parser when the page did not
   * span chunks, so the chunk must not be modified while the record is in use.
   */
  data: Uint8Array;
}

/** A page whose every byte equals `fill` (QEMU sends zero pages this way: 9 bytes instead of 4 KiB). */
export interface RamFillPage {
  /** Name of the block the page belongs to. */
  block: string;
  /** Byte offset of the page inside its block (page aligned). */
  offset: number;
  /** The value of every byte of the page (0 in streams QEMU writes). */
  fill: number;
}

/** A RAM page record: real data or a fill byte. */
export type RamPage = RamDataPage | RamFillPage;

/** One device-state section found inside the device blob (informational; the blob is written back as is). */
export interface DeviceSectionInfo {
  /** Section id (numbering is per stream). */
  sectionId: number;
  /** The device's idstr, e.g. `timer`, `cpu`, `0000:00:01.1/ide`. */
  idstr: string;
  /** Instance of the device (several devices of one kind count up from 0). */
  instanceId: number;
  /** Version of the device's state layout the source wrote. */
  versionId: number;
  /** Byte range of the whole section (type byte to footer) inside the device blob. */
  start: number;
  end: number;
}

/** The stream header. */
export interface HeaderRecord {
  type: 'header';
  /** Always 3 for streams we accept. */
  version: number;
}

/** The CONFIGURATION section: who wrote the stream and which validated capabilities were on. */
export interface ConfigurationRecord {
  type: 'configuration';
  /** Machine type name, e.g. `pc-i440fx-7.2`; the destination refuses a stream of another machine type. */
  machineType: string;
  /** Capabilities listed in the `configuration/capabilities` subsection (7.2: only `x-ignore-shared`). */
  capabilities: string[];
  /** From `configuration/target-page-bits`, when present. */
  targetPageBits?: number;
  /** From `configuration/uuid`, when present. */
  uuid?: Uint8Array;
}

/** A section header of the RAM section (START carries idstr, instance and version; PART and END only the id). */
export interface RamSectionRecord {
  type: 'ram-section';
  /** START opens the section (setup record), PART carries pages, END the last pages before device state. */
  kind: 'start' | 'part' | 'end';
  /** Per-stream section number; PART and END refer to START by it. */
  sectionId: number;
  /** From the START header (0). */
  instanceId: number;
  /** From the START header (4 in 7.2). */
  versionId: number;
}

/** The RAM setup record: total bytes and the block list. Every page record names one of these blocks. */
export interface RamBlocksRecord {
  type: 'ram-blocks';
  /** Sum of the block lengths, as announced before the list. */
  totalBytes: number;
  blocks: RamBlockInfo[];
}

/** A page with data. */
export interface PageRecord extends RamDataPage {
  type: 'page';
}

/** A page filled with one byte value. */
export interface FillPageRecord extends RamFillPage {
  type: 'fill-page';
}

/** A QEMU_VM_COMMAND record (postcopy and return-path control; not written in plain precopy). */
export interface CommandRecord {
  type: 'command';
  /** MIG_CMD_* number. */
  command: number;
  /** The command's payload (copied). */
  data: Uint8Array;
}

/** Everything between the RAM section's END and the EOF marker: all device-state sections, as one byte range. */
export interface DeviceRecord {
  type: 'device';
  /** The bytes, to be written back unchanged after the RAM section's END. */
  data: Uint8Array;
  /** The sections found in `data`, in order. */
  sections: DeviceSectionInfo[];
}

/** The EOF marker after the device state. */
export interface EofRecord {
  type: 'eof';
}

/** The VMDESC JSON after EOF (describes device state for debugging tools; QEMU only warns when it is missing). */
export interface VmdescRecord {
  type: 'vmdesc';
  /** The JSON text as bytes. */
  json: Uint8Array;
}

/** Any record of a migration stream, in the order they occur. */
export type MigrationRecord =
  | HeaderRecord
  | ConfigurationRecord
  | RamSectionRecord
  | RamBlocksRecord
  | PageRecord
  | FillPageRecord
  | CommandRecord
  | DeviceRecord
  | EofRecord
  | VmdescRecord;
