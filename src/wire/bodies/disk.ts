/**
 * DISK carries one disk write of the epoch, so disk and memory of an epoch commit together (the Remus bug in seed
 * 003 was disk and memory on separate channels with separate commits).
 *
 * Body: u32 disk id, 4 reserved bytes, u64 byte offset, then the data (the rest of the body, at least one byte).
 * The data part is the caller's view, not a copy; decoded data is a view into the frame body.
 */
import { BodyReader, BodyWriter } from '../bytes.js';
import { checkBytes, checkU32, checkU53, invalid } from '../validate.js';

/** DISK body. */
export interface DiskWrite {
  diskId: number;
  offset: number;
  data: Uint8Array;
}

const PREFIX_BYTES = 16;

export function encodeDisk(write: DiskWrite): Uint8Array[] {
  const data = checkBytes('disk.data', write.data);
  if (data.byteLength === 0) invalid('disk.data', 'must not be empty');
  const offset = checkU53('disk.offset', write.offset);
  if (offset + data.byteLength > Number.MAX_SAFE_INTEGER) invalid('disk.offset', 'write end exceeds 2^53 - 1', offset);
  return [new BodyWriter(PREFIX_BYTES).u32(checkU32('disk.diskId', write.diskId)).zeros(4).u64(offset).bytes, data];
}

export function decodeDisk(body: Uint8Array): DiskWrite {
  const r = new BodyReader(body, 'DISK');
  const diskId = r.u32();
  r.reserved(4);
  const offset = r.u64();
  if (r.remaining === 0) r.fail('empty write');
  if (offset + r.remaining > Number.MAX_SAFE_INTEGER) r.fail('write end exceeds 2^53 - 1');
  return { diskId, offset, data: r.rest() };
}
