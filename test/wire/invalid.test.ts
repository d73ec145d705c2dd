import { describe, expect, it } from 'vitest';
import {
  FrameDecoder,
  FrameType,
  HEADER_BYTES,
  HeaderOffset,
  KemariError,
  encodeFrameToBytes,
} from '../../src/index.js';
import type { DecodedFrame, ErrorCode } from '../../src/index.js';
import { SAMPLE_FRAMES } from '../helpers/sample-frames.js';
import { concat, le, rawFrame } from '../helpers/raw-frame.js';

const good = encodeFrameToBytes(SAMPLE_FRAMES.event!);
const pages = encodeFrameToBytes(SAMPLE_FRAMES.pages!);

function mutate(bytes: Uint8Array, at: number, xor = 0x01): Uint8Array {
  const copy = Uint8Array.from(bytes);
  copy[at]! ^= xor;
  return copy;
}

/** Page descriptor: u64 index, u8 kind, 3 reserved, u32 data bytes. */
const desc = (index: number, kind: number, bytes: number, reserved = 0): Uint8Array =>
  le([8, index], [1, kind], [1, reserved], [2, 0], [4, bytes]);

interface Case {
  name: string;
  input: Uint8Array;
  code: ErrorCode;
  /** Frames that must be handed on before the error. */
  before?: number;
  /** Also call end() (for truncation). */
  end?: boolean;
  bodyBytesMax?: number;
}

const CASES: Case[] = [
  { name: 'bad magic', input: mutate(good, 0), code: 'KEMARI_BAD_MAGIC' },
  { name: 'unsupported version', input: rawFrame({ type: FrameType.BEGIN, body: new Uint8Array(24), version: 2 }), code: 'KEMARI_UNSUPPORTED_VERSION' },
  { name: 'version 0', input: rawFrame({ type: FrameType.BEGIN, body: new Uint8Array(24), version: 0 }), code: 'KEMARI_UNSUPPORTED_VERSION' },
  ...[HeaderOffset.TYPE, HeaderOffset.FLAGS, HeaderOffset.TXN, HeaderOffset.SEQ, HeaderOffset.BODY_BYTES, HeaderOffset.BODY_CRC, HeaderOffset.HEADER_CRC, HeaderOffset.HEADER_CRC + 3].map(
    (at): Case => ({ name: `header bit flipped at offset ${at}`, input: mutate(good, at), code: 'KEMARI_HEADER_CHECKSUM' }),
  ),
  { name: 'body bit flipped (first byte)', input: mutate(good, HEADER_BYTES), code: 'KEMARI_BODY_CHECKSUM' },
  { name: 'body bit flipped (last byte)', input: mutate(good, good.byteLength - 1, 0x80), code: 'KEMARI_BODY_CHECKSUM' },
  { name: 'page data bit flipped', input: mutate(pages, pages.byteLength - 100), code: 'KEMARI_BODY_CHECKSUM' },
  { name: 'truncated header', input: good.subarray(0, 20), code: 'KEMARI_TRUNCATED', end: true },
  { name: 'truncated body', input: good.subarray(0, good.byteLength - 1), code: 'KEMARI_TRUNCATED', end: true },
  { name: 'header only', input: good.subarray(0, HEADER_BYTES), code: 'KEMARI_TRUNCATED', end: true },
  { name: 'oversize length', input: pages, code: 'KEMARI_FRAME_TOO_LARGE', bodyBytesMax: 4096 },
  { name: 'unknown type 0', input: rawFrame({ type: 0, body: new Uint8Array(0) }), code: 'KEMARI_UNKNOWN_TYPE' },
  { name: 'unknown type 14', input: rawFrame({ type: 14, body: new Uint8Array(0) }), code: 'KEMARI_UNKNOWN_TYPE' },
  { name: 'unknown type 255', input: rawFrame({ type: 255, body: new Uint8Array(0) }), code: 'KEMARI_UNKNOWN_TYPE' },
  { name: 'reserved flag on BEGIN', input: rawFrame({ type: FrameType.BEGIN, body: new Uint8Array(24), flags: 1 }), code: 'KEMARI_RESERVED_NONZERO' },
  { name: 'undefined flag on PAGES', input: rawFrame({ type: FrameType.PAGES, body: new Uint8Array(8), flags: 0x8000 }), code: 'KEMARI_RESERVED_NONZERO' },
  { name: 'txn beyond 2^53-1', input: rawFrame({ type: FrameType.BEGIN, body: new Uint8Array(24), txn: 2 ** 53 }), code: 'KEMARI_BAD_HEADER' },
  { name: 'garbage after a good frame', input: concat(good, Uint8Array.from(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'))), code: 'KEMARI_BAD_MAGIC', before: 1 },
  { name: 'a good frame then a corrupt one', input: concat(good, mutate(good, HEADER_BYTES + 3)), code: 'KEMARI_BODY_CHECKSUM', before: 1 },
  // Bodies with valid checksums but malformed contents.
  { name: 'BEGIN too short', input: rawFrame({ type: FrameType.BEGIN, body: new Uint8Array(23) }), code: 'KEMARI_BAD_BODY' },
  { name: 'BEGIN trailing byte', input: rawFrame({ type: FrameType.BEGIN, body: new Uint8Array(25) }), code: 'KEMARI_BAD_BODY' },
  { name: 'BEGIN unknown kind', input: rawFrame({ type: FrameType.BEGIN, body: le([1, 2], [1, 0], [2, 0], [4, 0], [8, 0], [8, 0]) }), code: 'KEMARI_BAD_BODY' },
  { name: 'BEGIN reserved byte set', input: rawFrame({ type: FrameType.BEGIN, body: le([1, 0], [1, 1], [2, 0], [4, 0], [8, 0], [8, 0]) }), code: 'KEMARI_RESERVED_NONZERO' },
  { name: 'PAGES empty batch', input: rawFrame({ type: FrameType.PAGES, body: le([4, 0], [4, 4096]) }), code: 'KEMARI_BAD_BODY' },
  { name: 'PAGES page size not a power of two', input: rawFrame({ type: FrameType.PAGES, body: concat(le([4, 1], [4, 4000]), desc(0, 1, 0)) }), code: 'KEMARI_BAD_BODY' },
  { name: 'PAGES count larger than body', input: rawFrame({ type: FrameType.PAGES, body: concat(le([4, 0xffffffff], [4, 4096]), desc(0, 1, 0)) }), code: 'KEMARI_BAD_BODY' },
  { name: 'PAGES raw page short', input: rawFrame({ type: FrameType.PAGES, body: concat(le([4, 1], [4, 512]), desc(0, 0, 511), new Uint8Array(511)) }), code: 'KEMARI_BAD_BODY' },
  { name: 'PAGES data missing', input: rawFrame({ type: FrameType.PAGES, body: concat(le([4, 1], [4, 512]), desc(0, 0, 512), new Uint8Array(100)) }), code: 'KEMARI_BAD_BODY' },
  { name: 'PAGES trailing bytes', input: rawFrame({ type: FrameType.PAGES, body: concat(le([4, 1], [4, 512]), desc(0, 1, 0), new Uint8Array(3)) }), code: 'KEMARI_BAD_BODY' },
  { name: 'PAGES zero page with data', input: rawFrame({ type: FrameType.PAGES, body: concat(le([4, 1], [4, 512]), desc(0, 1, 4), new Uint8Array(4)) }), code: 'KEMARI_BAD_BODY' },
  { name: 'PAGES duplicate index', input: rawFrame({ type: FrameType.PAGES, body: concat(le([4, 2], [4, 512]), desc(3, 1, 0), desc(3, 1, 0)) }), code: 'KEMARI_BAD_BODY' },
  { name: 'PAGES decreasing index', input: rawFrame({ type: FrameType.PAGES, body: concat(le([4, 2], [4, 512]), desc(4, 1, 0), desc(3, 1, 0)) }), code: 'KEMARI_BAD_BODY' },
  { name: 'PAGES unknown kind', input: rawFrame({ type: FrameType.PAGES, body: concat(le([4, 1], [4, 512]), desc(0, 7, 0)) }), code: 'KEMARI_BAD_BODY' },
  { name: 'PAGES descriptor reserved set', input: rawFrame({ type: FrameType.PAGES, body: concat(le([4, 1], [4, 512]), desc(0, 1, 0, 9)) }), code: 'KEMARI_RESERVED_NONZERO' },
  { name: 'PAGES delta without flag', input: rawFrame({ type: FrameType.PAGES, body: concat(le([4, 1], [4, 512]), desc(0, 2, 4), new Uint8Array(4)) }), code: 'KEMARI_BAD_BODY' },
  { name: 'PAGES flag without delta', input: rawFrame({ type: FrameType.PAGES, flags: 1, body: concat(le([4, 1], [4, 512]), desc(0, 1, 0)) }), code: 'KEMARI_BAD_BODY' },
  { name: 'PAGES delta as large as a page', input: rawFrame({ type: FrameType.PAGES, flags: 1, body: concat(le([4, 1], [4, 512]), desc(0, 2, 512), new Uint8Array(512)) }), code: 'KEMARI_BAD_BODY' },
  { name: 'PAGES index beyond 2^53-1', input: rawFrame({ type: FrameType.PAGES, body: concat(le([4, 1], [4, 512]), le([8, 2n ** 60n], [1, 1], [1, 0], [2, 0], [4, 0])) }), code: 'KEMARI_BAD_BODY' },
  { name: 'DISK empty write', input: rawFrame({ type: FrameType.DISK, body: le([4, 0], [4, 0], [8, 0]) }), code: 'KEMARI_BAD_BODY' },
  { name: 'DISK reserved set', input: rawFrame({ type: FrameType.DISK, body: concat(le([4, 0], [4, 1], [8, 0]), new Uint8Array(1)) }), code: 'KEMARI_RESERVED_NONZERO' },
  { name: 'EVENT empty channel', input: rawFrame({ type: FrameType.EVENT, body: le([8, 1], [2, 0], [2, 0], [4, 0]) }), code: 'KEMARI_BAD_BODY' },
  { name: 'EVENT channel longer than body', input: rawFrame({ type: FrameType.EVENT, body: concat(le([8, 1], [2, 200], [2, 0], [4, 0]), new Uint8Array(10).fill(65)) }), code: 'KEMARI_BAD_BODY' },
  { name: 'EVENT channel not UTF-8', input: rawFrame({ type: FrameType.EVENT, body: concat(le([8, 1], [2, 2], [2, 0], [4, 0]), Uint8Array.of(0xc3, 0x28)) }), code: 'KEMARI_BAD_BODY' },
  { name: 'COMMIT digest longer than 64', input: rawFrame({ type: FrameType.COMMIT, body: concat(le([4, 1], [4, 0], [8, 0], [2, 65]), new Uint8Array(65)) }), code: 'KEMARI_BAD_BODY' },
  { name: 'ACK truncated digest', input: rawFrame({ type: FrameType.ACK, body: concat(le([2, 32]), new Uint8Array(10)) }), code: 'KEMARI_BAD_BODY' },
  { name: 'NACK reason 0', input: rawFrame({ type: FrameType.NACK, body: le([2, 0], [2, 0]) }), code: 'KEMARI_BAD_BODY' },
  { name: 'ABORT reserved set', input: rawFrame({ type: FrameType.ABORT, body: le([2, 1], [2, 5]) }), code: 'KEMARI_RESERVED_NONZERO' },
  { name: 'HEARTBEAT unknown state', input: rawFrame({ type: FrameType.HEARTBEAT, body: le([8, 0], [8, 0], [8, 0], [4, 99], [4, 0]) }), code: 'KEMARI_BAD_BODY' },
  { name: 'FAILOVER short', input: rawFrame({ type: FrameType.FAILOVER, body: new Uint8Array(12) }), code: 'KEMARI_BAD_BODY' },
  { name: 'STAND_DOWN short', input: rawFrame({ type: FrameType.STAND_DOWN, body: new Uint8Array(7) }), code: 'KEMARI_BAD_BODY' },
  { name: 'STAND_DOWN reason over 1024 bytes', input: rawFrame({ type: FrameType.STAND_DOWN, body: concat(le([8, 1]), new Uint8Array(1025).fill(65)) }), code: 'KEMARI_BAD_BODY' },
  { name: 'STAND_DOWN reason not UTF-8', input: rawFrame({ type: FrameType.STAND_DOWN, body: concat(le([8, 1]), Uint8Array.of(0xc3, 0x28)) }), code: 'KEMARI_BAD_BODY' },
  { name: 'HELLO not msgpack', input: rawFrame({ type: FrameType.HELLO, body: Uint8Array.of(0xc1) }), code: 'KEMARI_BAD_BODY' },
  { name: 'HELLO empty body', input: rawFrame({ type: FrameType.HELLO, body: new Uint8Array(0) }), code: 'KEMARI_BAD_BODY' },
  { name: 'HELLO missing fields', input: rawFrame({ type: FrameType.HELLO, body: Uint8Array.of(0x80) }), code: 'KEMARI_BAD_BODY' },
  { name: 'HELLO two values', input: rawFrame({ type: FrameType.HELLO, body: Uint8Array.of(0x80, 0x80) }), code: 'KEMARI_BAD_BODY' },
  { name: 'DEVICE not [name, state]', input: rawFrame({ type: FrameType.DEVICE, body: Uint8Array.of(0x91, 0x01) }), code: 'KEMARI_BAD_BODY' },
];

describe('invalid inputs and their error codes', () => {
  it.each(CASES)('$name → $code', ({ input, code, before = 0, end, bodyBytesMax }) => {
    const decoder = new FrameDecoder(bodyBytesMax === undefined ? {} : { bodyBytesMax });
    const frames: DecodedFrame[] = [];
    let thrown: unknown;
    try {
      decoder.push(input, (f) => frames.push(f));
      if (end) decoder.end();
    } catch (error) {
      thrown = error;
    }
    expect(thrown).toBeInstanceOf(KemariError);
    expect((thrown as KemariError).code).toBe(code);
    expect(frames).toHaveLength(before);
    // A failed decoder stays failed: the same error again, nothing more handed on, nothing buffered.
    expect(decoder.error).toBe(thrown);
    expect(decoder.bufferedBytes).toBe(0);
    expect(() => decoder.push(good, (f) => frames.push(f))).toThrow(thrown as Error);
    expect(() => decoder.end()).toThrow(thrown as Error);
    expect(frames).toHaveLength(before);
  });

  it('the same valid frames decode when not mutated (the table tests what it claims)', () => {
    const decoder = new FrameDecoder();
    let n = 0;
    decoder.push(concat(good, good, pages), () => n++);
    decoder.end();
    expect(n).toBe(3);
  });
});
