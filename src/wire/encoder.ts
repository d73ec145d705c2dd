/**
 * Frame encoding. {@link encodeFrame} returns the 32-byte header and the body as a list of parts; parts that hold
 * caller data (page views into guest memory, disk data, event payloads) are those very views, so encoding costs
 * one checksum pass over the data and no copy. Writing the parts in order (cork + write, or writev) is the
 * transport's job.
 */
import { KemariError } from '../errors.js';
import { crc32cOfParts } from './checksum.js';
import { encodeBody } from './frame.js';
import type { Frame } from './frame.js';
import { BODY_BYTES_LIMIT, HEADER_BYTES, PROTOCOL_VERSION, writeHeader } from './header.js';
import { checkU32, checkU53 } from './validate.js';

/** An encoded frame: header, then body parts, to be written in this order. */
export interface EncodedFrame {
  header: Uint8Array;
  body: Uint8Array[];
  bodyBytes: number;
  bodyCrc: number;
}

/** Options for {@link encodeFrame}. */
export interface EncodeOptions {
  /** Refuse bodies larger than this (the peer's decoder limit), with KEMARI_FRAME_TOO_LARGE. */
  bodyBytesMax?: number;
}

/** Encodes `frame`. Throws KEMARI_INVALID_ARGUMENT for values the wire cannot carry faithfully. */
export function encodeFrame(frame: Frame, options: EncodeOptions = {}): EncodedFrame {
  const txn = checkU53('frame.txn', frame.txn);
  const seq = checkU32('frame.seq', frame.seq);
  const { parts, flags } = encodeBody(frame);
  let bodyBytes = 0;
  for (const part of parts) bodyBytes += part.byteLength;
  const bodyBytesMax = options.bodyBytesMax ?? BODY_BYTES_LIMIT;
  if (bodyBytes > bodyBytesMax || bodyBytes > BODY_BYTES_LIMIT) {
    throw new KemariError('KEMARI_FRAME_TOO_LARGE', `frame body of ${bodyBytes} bytes exceeds ${Math.min(bodyBytesMax, BODY_BYTES_LIMIT)}`, {
      details: { bodyBytes, bodyBytesMax, type: frame.type },
    });
  }
  const bodyCrc = crc32cOfParts(parts);
  const header = new Uint8Array(HEADER_BYTES);
  writeHeader(header, { version: PROTOCOL_VERSION, type: frame.type, flags, txn, seq, bodyBytes, bodyCrc });
  return { header, body: parts, bodyBytes, bodyCrc };
}

/** The frame as one contiguous buffer (a copy): for tests, fixtures and small control frames. */
export function encodeFrameToBytes(frame: Frame, options: EncodeOptions = {}): Uint8Array {
  const encoded = encodeFrame(frame, options);
  const out = new Uint8Array(HEADER_BYTES + encoded.bodyBytes);
  out.set(encoded.header, 0);
  let offset = HEADER_BYTES;
  for (const part of encoded.body) {
    out.set(part, offset);
    offset += part.byteLength;
  }
  return out;
}
