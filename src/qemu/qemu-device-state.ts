/**
 * The one kemari device of a QEMU VM: everything besides RAM pages and disks that a standby QEMU needs to resume
 * the guest, as the `state` of the DEVICE named {@link QEMU_DEVICE_NAME}.
 *
 * QEMU's device sections have no length prefix and their layout belongs to QEMU's version, so kemari carries them
 * as one opaque blob (the bytes between the RAM section's END and EOF). Next to it goes what re-emitting a stream
 * needs and the stream does not repeat elsewhere: the machine type and validated capabilities of the
 * configuration section, the RAM section's ids (device sections are numbered around it), and the RAM block list
 * with each block's place in the linear memory (and whether it lives in a shared memory file).
 *
 * The state is a plain msgpack-able object with no optional `undefined` fields, so it survives the wire and the
 * replica's copy byte for byte: the state digest of both sides hashes the same msgpack encoding.
 */
import { KemariError } from '../errors.js';
import { isRecord } from '../wire/msgpack.js';
import type { GuestRamBlock } from './guest-memory.js';
import { PAGE_BYTES } from './migration/format.js';

/** The device name QemuVm reports (its only device). */
export const QEMU_DEVICE_NAME = 'qemu';

/** Version of the {@link QemuDeviceState} layout; a restore refuses others. */
export const QEMU_DEVICE_STATE_VERSION = 1;

/** The RAM section's header fields, as the source numbered them. */
export interface QemuRamSectionIds {
  sectionId: number;
  instanceId: number;
  versionId: number;
}

/** The state of the `qemu` device; see the module comment. */
export interface QemuDeviceState {
  /** {@link QEMU_DEVICE_STATE_VERSION}. */
  version: number;
  /** Machine type of the configuration section, e.g. `pc-i440fx-7.2`. */
  machineType: string;
  /** Validated capabilities of the configuration section (`x-ignore-shared` in shared-memory mode). */
  capabilities: string[];
  /** The RAM section's ids. */
  ramSection: QemuRamSectionIds;
  /** The RAM blocks in stream order, placed in the linear memory. */
  blocks: GuestRamBlock[];
  /** The device sections, exactly as QEMU wrote them. */
  device: Uint8Array;
}

/** Builds the device state (copies `device`, so the state never aliases a receive buffer). */
export function qemuDeviceState(parts: Omit<QemuDeviceState, 'version'>): QemuDeviceState {
  return {
    version: QEMU_DEVICE_STATE_VERSION,
    machineType: parts.machineType,
    capabilities: [...parts.capabilities],
    ramSection: { sectionId: parts.ramSection.sectionId, instanceId: parts.ramSection.instanceId, versionId: parts.ramSection.versionId },
    blocks: parts.blocks.map((block) => {
      const copy: GuestRamBlock = { name: block.name, offsetBytes: block.offsetBytes, lengthBytes: block.lengthBytes, shared: block.shared };
      if (block.memoryRegionAddr !== undefined) copy.memoryRegionAddr = block.memoryRegionAddr;
      return copy;
    }),
    device: Uint8Array.from(parts.device),
  };
}

/**
 * Checks that `value` (a device state as a replica holds it, after msgpack) is a {@link QemuDeviceState} of this
 * version whose blocks tile `memoryBytes` exactly; returns it typed. Anything else is KEMARI_INVALID_ARGUMENT: a
 * snapshot that was not taken from a QemuVm cannot be restored into QEMU.
 */
export function parseQemuDeviceState(value: unknown, memoryBytes: number): QemuDeviceState {
  const bad = (message: string, details: Record<string, unknown> = {}): never => {
    throw new KemariError('KEMARI_INVALID_ARGUMENT', `the ${QEMU_DEVICE_NAME} device state ${message}`, { details });
  };
  if (!isRecord(value)) return bad('is not an object');
  if (value.version !== QEMU_DEVICE_STATE_VERSION) bad(`has version ${String(value.version)}, not ${QEMU_DEVICE_STATE_VERSION}`);
  if (typeof value.machineType !== 'string' || value.machineType.length === 0) bad('has no machine type');
  const capabilities = value.capabilities;
  if (!Array.isArray(capabilities) || !capabilities.every((c) => typeof c === 'string')) bad('has no capability list');
  const ram = value.ramSection;
  if (!isRecord(ram) || !isU32(ram.sectionId) || !isU32(ram.instanceId) || !isU32(ram.versionId)) bad('has no RAM section ids');
  if (!(value.device instanceof Uint8Array)) bad('has no device blob');
  const blocks = value.blocks;
  if (!Array.isArray(blocks) || blocks.length === 0) return bad('has no RAM blocks');
  let offset = 0;
  const parsed: GuestRamBlock[] = [];
  for (const [i, block] of blocks.entries()) {
    if (!isRecord(block) || typeof block.name !== 'string' || block.name.length === 0 || typeof block.shared !== 'boolean') bad(`has a malformed block ${i}`);
    const b = block as Record<string, unknown>;
    if (b.offsetBytes !== offset || !Number.isSafeInteger(b.lengthBytes) || (b.lengthBytes as number) <= 0 || (b.lengthBytes as number) % PAGE_BYTES !== 0) {
      bad(`has block ${String(b.name)} out of place`, { block: b.name, offsetBytes: b.offsetBytes, expected: offset });
    }
    if (b.memoryRegionAddr !== undefined && !(Number.isSafeInteger(b.memoryRegionAddr) && (b.memoryRegionAddr as number) >= 0)) bad(`has a bad address for block ${String(b.name)}`);
    const placed: GuestRamBlock = { name: b.name as string, offsetBytes: offset, lengthBytes: b.lengthBytes as number, shared: b.shared as boolean };
    if (b.memoryRegionAddr !== undefined) placed.memoryRegionAddr = b.memoryRegionAddr as number;
    parsed.push(placed);
    offset += b.lengthBytes as number;
  }
  if (offset !== memoryBytes) bad(`describes ${offset} bytes of RAM, the snapshot ${memoryBytes}`, { blocksBytes: offset, memoryBytes });
  return {
    version: QEMU_DEVICE_STATE_VERSION,
    machineType: value.machineType as string,
    capabilities: [...(capabilities as string[])],
    ramSection: { sectionId: (ram as Record<string, number>).sectionId!, instanceId: (ram as Record<string, number>).instanceId!, versionId: (ram as Record<string, number>).versionId! },
    blocks: parsed,
    device: value.device as Uint8Array,
  };
}

function isU32(value: unknown): value is number {
  return Number.isInteger(value) && (value as number) >= 0 && (value as number) <= 0xffff_ffff;
}
