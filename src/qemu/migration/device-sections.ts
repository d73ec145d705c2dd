/**
 * Finds the device-state sections inside the device blob (everything between the RAM section's END and EOF).
 *
 * Device sections have no length prefix: their payload is whatever each device's VMState description writes. But
 * each one is framed: `0x04 FULL, be32 section id, u8 len + idstr, be32 instance id, be32 version id`, payload,
 * footer `0x7E be32 section id`, and the next section (or the blob's end) follows the footer. So the blob can be
 * checked without understanding any device: walk FULL headers and, for each, the footers carrying its id. A footer
 * lookalike inside a payload is possible, so candidates are tried in order with backtracking, under a step budget.
 *
 * Why check at all: the blob's end is found as "the bytes before EOF", and a stream cut inside device state would
 * otherwise pass as a shorter blob whenever the cut happened to leave a 0x00 last. A blob that is not a whole
 * sequence of framed sections is rejected. The search is bounded by the bytes it may scan, so a crafted blob full of
 * footer lookalikes costs bounded time, not exponential.
 */
import { KemariError } from '../../errors.js';
import { SECTION } from './format.js';
import type { DeviceSectionInfo } from './records.js';

/**
 * Default bound on the bytes scanned while splitting, as a multiple of the blob's size (a real stream scans each
 * byte about once).
 */
export const DEVICE_SPLIT_SCAN_FACTOR_DEFAULT = 16;

/**
 * Splits `blob` into its device sections. Throws KEMARI_MIGRATION_FORMAT (with `details.offset` relative to the
 * stream when `streamOffset` is given) when the blob is not a whole sequence of FULL sections.
 */
export function splitDeviceSections(blob: Uint8Array, streamOffset = 0, scanFactor = DEVICE_SPLIT_SCAN_FACTOR_DEFAULT): DeviceSectionInfo[] {
  if (blob.byteLength === 0) return [];
  const found: DeviceSectionInfo[] = [];
  const scanBytesMax = scanFactor * blob.byteLength + (1 << 16);
  let scannedBytes = 0;
  let deepest = 0;

  // Iterative depth-first search: frames[i] is the section starting found[i].start, with the next footer
  // candidate to try.
  const frames: { header: Omit<DeviceSectionInfo, 'end'>; payloadStart: number; searchFrom: number }[] = [];
  const pushHeader = (start: number): boolean => {
    const header = readHeader(blob, start);
    if (header === undefined) return false;
    frames.push({ header: header.info, payloadStart: header.payloadStart, searchFrom: header.payloadStart });
    deepest = Math.max(deepest, start);
    return true;
  };

  if (!pushHeader(0)) throw bad('the device state does not start with a FULL section header', streamOffset, 0);
  while (frames.length > 0) {
    const frame = frames[frames.length - 1] as (typeof frames)[number];
    const next = nextFooter(blob, frame.header.sectionId, frame.searchFrom);
    scannedBytes += (next === -1 ? blob.byteLength : next + 1) - frame.searchFrom;
    if (scannedBytes > scanBytesMax) throw bad(`device state sections could not be delimited within ${scanBytesMax} scanned bytes`, streamOffset, deepest);
    if (next === -1) {
      // No footer of this section fits: the previous section must end at a later footer (backtrack).
      frames.pop();
      continue;
    }
    frame.searchFrom = next + 1;
    const end = next + 5;
    found.length = frames.length - 1;
    found.push({ ...frame.header, end });
    if (end === blob.byteLength) return found;
    if (blob[end] === SECTION.FULL && pushHeader(end)) continue;
  }
  throw bad('the device state is not a whole sequence of framed sections (truncated or corrupt)', streamOffset, deepest);
}

function readHeader(blob: Uint8Array, start: number): { info: Omit<DeviceSectionInfo, 'end'>; payloadStart: number } | undefined {
  if (start + 6 > blob.byteLength || blob[start] !== SECTION.FULL) return undefined;
  const sectionId = be32(blob, start + 1);
  const idLength = blob[start + 5] as number;
  const idEnd = start + 6 + idLength;
  if (idLength === 0 || idEnd + 8 > blob.byteLength) return undefined;
  let idstr = '';
  for (let at = start + 6; at < idEnd; at++) {
    const byte = blob[at] as number;
    if (byte < 0x20 || byte > 0x7e) return undefined;
    idstr += String.fromCharCode(byte);
  }
  return {
    info: { sectionId, idstr, instanceId: be32(blob, idEnd), versionId: be32(blob, idEnd + 4), start },
    payloadStart: idEnd + 8,
  };
}

/** Position of the next `0x7E be32 sectionId` at or after `from`, or -1. */
function nextFooter(blob: Uint8Array, sectionId: number, from: number): number {
  for (let at = blob.indexOf(SECTION.FOOTER, from); at !== -1 && at + 5 <= blob.byteLength; at = blob.indexOf(SECTION.FOOTER, at + 1)) {
    if (be32(blob, at + 1) === sectionId) return at;
  }
  return -1;
}

function be32(bytes: Uint8Array, at: number): number {
  return (((bytes[at] as number) << 24) >>> 0) + ((bytes[at + 1] as number) << 16) + ((bytes[at + 2] as number) << 8) + (bytes[at + 3] as number);
}

function bad(message: string, streamOffset: number, blobOffset: number): KemariError {
  return new KemariError('KEMARI_MIGRATION_FORMAT', message, { details: { offset: streamOffset + blobOffset, deviceOffset: blobOffset } });
}
