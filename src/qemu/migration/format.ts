/**
 * Constants of QEMU's precopy migration stream as QEMU 7.2 writes it (migration/savevm.c, migration/ram.c), in one
 * place so the parser and the writer cannot disagree.
 *
 * Layout, all integers big-endian:
 *
 *     'QEVM' be32 version(3)
 *     0x07 CONFIGURATION  be32 len + machine type; subsections 0x05 (u8 len + name, be32 version, fields)
 *     0x01 START   be32 section id, u8 len + idstr, be32 instance id, be32 version id, payload, 0x7E be32 section id
 *     0x02 PART / 0x03 END   be32 section id, payload, 0x7E be32 section id
 *     0x04 FULL    like START (device state: no length prefix, so opaque to us)
 *     0x08 COMMAND be16 command, be16 length, data
 *     0x00 EOF, then 0x06 VMDESC be32 length + JSON (optional for the loader)
 *
 * The RAM section payload is a sequence of `be64 (offset | flags)` records ended by a record with flag EOS.
 */

/** `QEVM`: the first four bytes of every stream. */
export const QEMU_VM_FILE_MAGIC = 0x5145564d;
/** The only stream version QEMU has written since 2.x. */
export const QEMU_VM_FILE_VERSION = 3;

/** Section type bytes (QEMU_VM_*). */
export const SECTION = {
  EOF: 0x00,
  START: 0x01,
  PART: 0x02,
  END: 0x03,
  FULL: 0x04,
  SUBSECTION: 0x05,
  VMDESCRIPTION: 0x06,
  CONFIGURATION: 0x07,
  COMMAND: 0x08,
  FOOTER: 0x7e,
} as const;

/** RAM record flags (RAM_SAVE_FLAG_*), kept in the low bits of the be64 page offset. */
export const RAM_FLAG = {
  /** Obsolete; never written by 7.2. */
  FULL: 0x01,
  /** The page is filled with one byte value (in practice zero); that byte follows. */
  ZERO: 0x02,
  /** Setup: total RAM bytes, then the block list. */
  MEM_SIZE: 0x04,
  /** A whole page follows. */
  PAGE: 0x08,
  /** End of this section's RAM records. */
  EOS: 0x10,
  /** Same block as the previous record: no block name follows. */
  CONTINUE: 0x20,
  XBZRLE: 0x40,
  HOOK: 0x80,
  COMPRESS_PAGE: 0x100,
} as const;

/** Guest page size of x86 (TARGET_PAGE_SIZE); RAM record flags live in the bits below it. */
export const PAGE_BYTES = 4096;
/** Mask of the flag bits in a RAM record's be64. */
export const RAM_FLAGS_MASK = PAGE_BYTES - 1;

/** The idstr of the RAM section. */
export const RAM_SECTION_IDSTR = 'ram';
/** The RAM section's version id in 7.2 (ram_mig_init registers version 4). */
export const RAM_SECTION_VERSION = 4;

/** Subsections of the CONFIGURATION section that 7.2 may write, by name. */
export const CONFIG_SUBSECTION = {
  /** be32 target page bits; only for targets with variable page size (not x86). */
  TARGET_PAGE_BITS: 'configuration/target-page-bits',
  /** be32 count, then count times u8 len + capability name; written when x-ignore-shared is on. */
  CAPABILITIES: 'configuration/capabilities',
  /** 16 bytes of VM UUID; written with the validate-uuid parameter. */
  UUID: 'configuration/uuid',
} as const;

/** The migration capability that adds a be64 memory-region address per block to the RAM setup record. */
export const CAPABILITY_X_IGNORE_SHARED = 'x-ignore-shared';
