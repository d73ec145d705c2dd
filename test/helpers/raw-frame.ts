/** Builds frames with valid checksums around arbitrary (possibly malformed) bodies, to reach body validation. */
import { HEADER_BYTES, HeaderOffset, MAGIC, PROTOCOL_VERSION, crc32c } from '../../src/index.js';

export interface RawFrameFields {
  type: number;
  body: Uint8Array;
  flags?: number;
  txn?: number;
  seq?: number;
  version?: number;
}

export function rawFrame(fields: RawFrameFields): Uint8Array {
  const out = new Uint8Array(HEADER_BYTES + fields.body.byteLength);
  const view = new DataView(out.buffer);
  out.set(MAGIC, 0);
  out[HeaderOffset.VERSION] = fields.version ?? PROTOCOL_VERSION;
  out[HeaderOffset.TYPE] = fields.type;
  view.setUint16(HeaderOffset.FLAGS, fields.flags ?? 0, true);
  view.setBigUint64(HeaderOffset.TXN, BigInt(fields.txn ?? 1), true);
  view.setUint32(HeaderOffset.SEQ, fields.seq ?? 0, true);
  view.setUint32(HeaderOffset.BODY_BYTES, fields.body.byteLength, true);
  view.setUint32(HeaderOffset.BODY_CRC, crc32c(fields.body), true);
  view.setUint32(HeaderOffset.HEADER_CRC, crc32c(out.subarray(0, 28)), true);
  out.set(fields.body, HEADER_BYTES);
  return out;
}

/** Little-endian bytes from a list of [width, value] fields. */
export function le(...fields: Array<[1 | 2 | 4 | 8, number | bigint]>): Uint8Array {
  const out = new Uint8Array(fields.reduce((n, [w]) => n + w, 0));
  const view = new DataView(out.buffer);
  let at = 0;
  for (const [w, v] of fields) {
    if (w === 1) view.setUint8(at, Number(v));
    else if (w === 2) view.setUint16(at, Number(v), true);
    else if (w === 4) view.setUint32(at, Number(v), true);
    else view.setBigUint64(at, BigInt(v), true);
    at += w;
  }
  return out;
}

export function concat(...parts: Uint8Array[]): Uint8Array {
  return Uint8Array.from(Buffer.concat(parts));
}
