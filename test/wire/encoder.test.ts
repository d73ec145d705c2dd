import { describe, expect, it } from 'vitest';
import { FrameType, HEADER_BYTES, KemariError, PageKind, TxnDigest, crc32c, encodeFrame, encodeFrameToBytes } from '../../src/index.js';
import type { Frame, Page } from '../../src/index.js';
import { decodeAll } from '../helpers/decode.js';

const memory = new Uint8Array(64 * 4096).map((_, i) => i % 251);
const raw = (index: number): Page => ({ index, kind: PageKind.RAW, data: memory.subarray(index * 4096, (index + 1) * 4096) });

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (error) {
    return error instanceof KemariError ? error.code : `not a KemariError: ${String(error)}`;
  }
  return 'no error';
}

describe('encodeFrame', () => {
  it('passes page data through as views of guest memory, merging consecutive pages (no copy)', () => {
    const pages = [raw(3), raw(4), raw(5), { index: 6, kind: PageKind.ZERO, data: new Uint8Array(0) } as Page, raw(9), raw(10)];
    const encoded = encodeFrame({ type: FrameType.PAGES, txn: 1, seq: 1, body: { pageBytes: 4096, pages } });
    expect(encoded.header.byteLength).toBe(HEADER_BYTES);
    // Descriptor table, then one view for pages 3-5 and one for 9-10.
    expect(encoded.body).toHaveLength(3);
    const [, run1, run2] = encoded.body;
    expect(run1!.buffer).toBe(memory.buffer);
    expect([run1!.byteOffset, run1!.byteLength]).toEqual([3 * 4096, 3 * 4096]);
    expect(run2!.buffer).toBe(memory.buffer);
    expect([run2!.byteOffset, run2!.byteLength]).toEqual([9 * 4096, 2 * 4096]);
    expect(encoded.bodyCrc).toBe(crc32c(Buffer.concat(encoded.body)));
  });

  it('a page changed after encoding is caught as a body checksum error, never applied', () => {
    const local = Uint8Array.from(memory.subarray(0, 4096));
    const frame: Frame = { type: FrameType.PAGES, txn: 1, seq: 1, body: { pageBytes: 4096, pages: [{ index: 0, kind: PageKind.RAW, data: local }] } };
    const encoded = encodeFrame(frame);
    local[100] = local[100]! ^ 0xff; // the guest wrote to the page before the frame went out
    const bytes = Buffer.concat([encoded.header, ...encoded.body]);
    expect(codeOf(() => decodeAll(bytes))).toBe('KEMARI_BODY_CHECKSUM');
  });

  it('passes disk data and event payloads through as views', () => {
    const data = new Uint8Array(8192).fill(3);
    const disk = encodeFrame({ type: FrameType.DISK, txn: 2, seq: 1, body: { diskId: 1, offset: 4096, data } });
    expect(disk.body[1]).toBe(data);
    const payload = new Uint8Array(100);
    const event = encodeFrame({ type: FrameType.EVENT, txn: 2, seq: 2, body: { id: 1, channel: 'net0', payload } });
    expect(event.body[1]).toBe(payload);
  });

  it.each<[string, Frame]>([
    ['negative txn', { type: FrameType.BEGIN, txn: -1, seq: 0, body: { full: true, baseTxn: 0, releasedTxn: 0 } }],
    ['txn beyond 2^53-1', { type: FrameType.BEGIN, txn: 2 ** 53, seq: 0, body: { full: true, baseTxn: 0, releasedTxn: 0 } }],
    ['fractional seq', { type: FrameType.BEGIN, txn: 1, seq: 0.5, body: { full: true, baseTxn: 0, releasedTxn: 0 } }],
    ['seq beyond u32', { type: FrameType.BEGIN, txn: 1, seq: 2 ** 32, body: { full: true, baseTxn: 0, releasedTxn: 0 } }],
    ['unknown type', { type: 99, txn: 1, seq: 0, body: {} } as unknown as Frame],
    ['empty page batch', { type: FrameType.PAGES, txn: 1, seq: 1, body: { pageBytes: 4096, pages: [] } }],
    ['page size 3000', { type: FrameType.PAGES, txn: 1, seq: 1, body: { pageBytes: 3000, pages: [raw(0)] } }],
    ['short raw page', { type: FrameType.PAGES, txn: 1, seq: 1, body: { pageBytes: 4096, pages: [{ index: 0, kind: PageKind.RAW, data: new Uint8Array(10) }] } }],
    ['unsorted pages', { type: FrameType.PAGES, txn: 1, seq: 1, body: { pageBytes: 4096, pages: [raw(2), raw(1)] } }],
    ['delta as big as a page', { type: FrameType.PAGES, txn: 1, seq: 1, body: { pageBytes: 4096, pages: [{ index: 0, kind: PageKind.DELTA, data: new Uint8Array(4096) }] } }],
    ['empty delta', { type: FrameType.PAGES, txn: 1, seq: 1, body: { pageBytes: 4096, pages: [{ index: 0, kind: PageKind.DELTA, data: new Uint8Array(0) }] } }],
    ['negative page index', { type: FrameType.PAGES, txn: 1, seq: 1, body: { pageBytes: 4096, pages: [raw(-1)] } }],
    ['fractional page index', { type: FrameType.PAGES, txn: 1, seq: 1, body: { pageBytes: 4096, pages: [raw(0), raw(1.5)] } }],
    ['page index beyond 2^53-1', { type: FrameType.PAGES, txn: 1, seq: 1, body: { pageBytes: 4096, pages: [raw(2 ** 53)] } }],
    ['page data not bytes', { type: FrameType.PAGES, txn: 1, seq: 1, body: { pageBytes: 4096, pages: [{ index: 0, kind: PageKind.RAW, data: [1, 2] as unknown as Uint8Array }] } }],
    ['unknown page kind', { type: FrameType.PAGES, txn: 1, seq: 1, body: { pageBytes: 4096, pages: [{ index: 0, kind: 7 as PageKind, data: new Uint8Array(4096) }] } }],
    ['empty disk write', { type: FrameType.DISK, txn: 1, seq: 1, body: { diskId: 0, offset: 0, data: new Uint8Array(0) } }],
    ['channel too long', { type: FrameType.EVENT, txn: 1, seq: 1, body: { id: 1, channel: 'x'.repeat(256), payload: new Uint8Array(0) } }],
    ['digest too long', { type: FrameType.ACK, txn: 1, seq: 0, body: { stateDigest: new Uint8Array(65) } }],
    ['reason code 0', { type: FrameType.NACK, txn: 1, seq: 0, body: { code: 0, message: '' } }],
    ['hello without role', { type: FrameType.HELLO, txn: 0, seq: 0, body: { sessionId: 's' } } as unknown as Frame],
    ['device state undefined', { type: FrameType.DEVICE, txn: 1, seq: 1, body: { name: 'cpu0', state: undefined } }],
  ])('refuses %s with KEMARI_INVALID_ARGUMENT', (_name, frame) => {
    expect(codeOf(() => encodeFrame(frame))).toBe('KEMARI_INVALID_ARGUMENT');
  });

  it('names the page and field it refuses', () => {
    const pages = [raw(0), raw(1), { index: 2, kind: PageKind.RAW, data: new Uint8Array(10) }];
    const field = (frame: Frame): unknown => {
      try {
        encodeFrame(frame);
      } catch (error) {
        return (error as KemariError).details?.field;
      }
      return undefined;
    };
    expect(field({ type: FrameType.PAGES, txn: 1, seq: 1, body: { pageBytes: 4096, pages } })).toBe('pages[2].data');
    expect(field({ type: FrameType.PAGES, txn: 1, seq: 1, body: { pageBytes: 4096, pages: [raw(0), raw(-3)] } })).toBe('pages[1].index');
    const delta = { index: 5, kind: PageKind.DELTA, data: new Uint8Array(0) };
    expect(field({ type: FrameType.PAGES, txn: 1, seq: 1, body: { pageBytes: 4096, pages: [raw(0), delta] } })).toBe('pages[1].data.byteLength');
  });

  it('refuses a body over the peer limit with KEMARI_FRAME_TOO_LARGE', () => {
    const frame: Frame = { type: FrameType.PAGES, txn: 1, seq: 1, body: { pageBytes: 4096, pages: [raw(0), raw(1)] } };
    expect(codeOf(() => encodeFrame(frame, { bodyBytesMax: 8192 }))).toBe('KEMARI_FRAME_TOO_LARGE');
    expect(encodeFrame(frame, { bodyBytesMax: 8 + 32 + 8192 }).bodyBytes).toBe(8 + 32 + 8192);
  });
});

describe('TxnDigest', () => {
  it('is CRC32C over the little-endian body CRCs in order, and order matters', () => {
    const frames = [1, 2, 3].map((n) => encodeFrameToBytes({ type: FrameType.EVENT, txn: 5, seq: n, body: { id: n, channel: 'c', payload: Uint8Array.of(n) } }));
    const crcs = frames.map((f) => crc32c(f.subarray(HEADER_BYTES)));
    const d = new TxnDigest();
    frames.forEach((f, i) => d.add(f.byteLength - HEADER_BYTES, crcs[i]!));
    const le = Buffer.alloc(12);
    crcs.forEach((c, i) => le.writeUInt32LE(c, i * 4));
    expect(d.crcDigest).toBe(crc32c(le));
    expect(d.frameCount).toBe(3);
    expect(d.bodyBytes).toBe(frames.reduce((n, f) => n + f.byteLength - HEADER_BYTES, 0));
    const swapped = new TxnDigest();
    [1, 0, 2].forEach((i) => swapped.add(0, crcs[i]!));
    expect(swapped.crcDigest).not.toBe(d.crcDigest);
  });
});
