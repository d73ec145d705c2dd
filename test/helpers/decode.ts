import { FrameDecoder } from '../../src/index.js';
import type { DecodedFrame, Frame } from '../../src/index.js';

/** Decodes a whole buffer (which must end on a frame boundary). */
export function decodeAll(bytes: Uint8Array, bodyBytesMax?: number): DecodedFrame[] {
  const frames: DecodedFrame[] = [];
  const decoder = new FrameDecoder(bodyBytesMax === undefined ? {} : { bodyBytesMax });
  decoder.push(bytes, (f) => frames.push(f));
  decoder.end();
  return frames;
}

/** Decodes `bytes` fed as the given chunks (by cut offsets). */
export function decodeChunked(bytes: Uint8Array, cuts: number[]): DecodedFrame[] {
  const frames: DecodedFrame[] = [];
  const decoder = new FrameDecoder();
  let at = 0;
  for (const cut of [...cuts, bytes.byteLength]) {
    decoder.push(bytes.subarray(at, cut), (f) => frames.push(f));
    at = cut;
  }
  decoder.end();
  return frames;
}

/** The frame without the wire facts the decoder adds. */
export function stripWireFacts(frame: DecodedFrame): Frame {
  const { flags: _flags, bodyBytes: _bodyBytes, bodyCrc: _bodyCrc, ...rest } = frame;
  return rest as Frame;
}
