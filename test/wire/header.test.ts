import { describe, expect, it } from 'vitest';
import {
  FrameDecoder,
  FrameType,
  HEADER_BYTES,
  HeaderOffset,
  KemariError,
  MAGIC,
  PROTOCOL_VERSION,
  crc32c,
  encodeFrameToBytes,
  readHeader,
} from '../../src/index.js';

const begin = { type: FrameType.BEGIN, txn: 0x0102_0304_0506, seq: 0x0a0b0c0d, body: { full: true, baseTxn: 5, releasedTxn: 4 } } as const;

describe('header layout', () => {
  it('pins the field offsets and sizes', () => {
    expect(HEADER_BYTES).toBe(32);
    expect(HeaderOffset).toEqual({
      MAGIC: 0,
      VERSION: 4,
      TYPE: 5,
      FLAGS: 6,
      TXN: 8,
      SEQ: 16,
      BODY_BYTES: 20,
      BODY_CRC: 24,
      HEADER_CRC: 28,
    });
    expect(Buffer.from(MAGIC).toString('latin1')).toBe('KMRI');
    expect(PROTOCOL_VERSION).toBe(1);
  });

  it('writes every field little-endian at its offset', () => {
    const bytes = encodeFrameToBytes(begin);
    const view = new DataView(bytes.buffer, bytes.byteOffset);
    expect(Buffer.from(bytes.subarray(0, 4)).toString('latin1')).toBe('KMRI');
    expect(bytes[HeaderOffset.VERSION]).toBe(1);
    expect(bytes[HeaderOffset.TYPE]).toBe(FrameType.BEGIN);
    expect(view.getUint16(HeaderOffset.FLAGS, true)).toBe(0);
    expect(view.getBigUint64(HeaderOffset.TXN, true)).toBe(0x0102_0304_0506n);
    expect(view.getUint32(HeaderOffset.SEQ, true)).toBe(0x0a0b0c0d);
    expect(view.getUint32(HeaderOffset.BODY_BYTES, true)).toBe(24);
    expect(view.getUint32(HeaderOffset.BODY_CRC, true)).toBe(crc32c(bytes.subarray(HEADER_BYTES)));
    expect(view.getUint32(HeaderOffset.HEADER_CRC, true)).toBe(crc32c(bytes.subarray(0, 28)));
  });

  it('round-trips the largest txn a JavaScript number holds exactly', () => {
    const bytes = encodeFrameToBytes({ ...begin, txn: Number.MAX_SAFE_INTEGER });
    expect(readHeader(bytes.subarray(0, HEADER_BYTES), 1024).txn).toBe(Number.MAX_SAFE_INTEGER);
  });

  it('checks in a fixed order: magic, version, header CRC, type, flags, txn, length', () => {
    // A header wrong in every way reports the first check; fixing each in turn reveals the next.
    const good = encodeFrameToBytes(begin).subarray(0, HEADER_BYTES);
    const bad = Uint8Array.from(good);
    bad[0] = 0; // magic
    bad[HeaderOffset.VERSION] = 9;
    bad[HeaderOffset.TYPE] = 200;
    bad[HeaderOffset.FLAGS] = 0x80;
    bad[HeaderOffset.TXN + 7] = 0xff;
    new DataView(bad.buffer).setUint32(HeaderOffset.BODY_BYTES, 1 << 30, true);
    const codeOf = (h: Uint8Array): string => {
      try {
        readHeader(h, 1 << 20);
        return 'ok';
      } catch (error) {
        return (error as KemariError).code;
      }
    };
    const resign = (h: Uint8Array): void =>
      new DataView(h.buffer).setUint32(HeaderOffset.HEADER_CRC, crc32c(h.subarray(0, 28)), true);
    expect(codeOf(bad)).toBe('KEMARI_BAD_MAGIC');
    bad.set(MAGIC, 0);
    expect(codeOf(bad)).toBe('KEMARI_UNSUPPORTED_VERSION');
    bad[HeaderOffset.VERSION] = 1;
    expect(codeOf(bad)).toBe('KEMARI_HEADER_CHECKSUM');
    resign(bad);
    expect(codeOf(bad)).toBe('KEMARI_UNKNOWN_TYPE');
    bad[HeaderOffset.TYPE] = FrameType.BEGIN;
    resign(bad);
    expect(codeOf(bad)).toBe('KEMARI_RESERVED_NONZERO');
    bad[HeaderOffset.FLAGS] = 0;
    resign(bad);
    expect(codeOf(bad)).toBe('KEMARI_BAD_HEADER');
    bad[HeaderOffset.TXN + 7] = 0;
    resign(bad);
    expect(codeOf(bad)).toBe('KEMARI_FRAME_TOO_LARGE');
  });

  it('rejects an oversize body from the header alone, before any body byte arrives', () => {
    const decoder = new FrameDecoder({ bodyBytesMax: 15 });
    const header = encodeFrameToBytes(begin).subarray(0, HEADER_BYTES);
    expect(() => decoder.push(header, () => {})).toThrow(expect.objectContaining({ code: 'KEMARI_FRAME_TOO_LARGE' }));
    expect(decoder.bufferedBytes).toBe(0);
  });
});
