/**
 * `npm run demo`: one ft-transaction over the wire, end to end in one process.
 *
 * Captures an epoch of a small guest (dirty pages, a device, a disk write, a held output), frames it as BEGIN,
 * PAGES, DEVICE, DISK, EVENT and COMMIT, streams the bytes through the decoder in random-sized chunks as a socket
 * would deliver them, checks COMMIT's frame count, byte count and CRC digest, then shows a flipped bit being
 * refused with its error code. The replication demo (primary, secondary, failover) replaces this with issue 3.
 */
import { randomInt } from 'node:crypto';
import {
  FRAME_TYPE_NAMES,
  FrameDecoder,
  FrameType,
  HEADER_BYTES,
  KemariError,
  PageKind,
  TxnDigest,
  crc32cImplementation,
  encodeFrame,
} from '../src/index.js';
import type { DecodedFrame, EncodedFrame, Frame, Page } from '../src/index.js';

const PAGE_BYTES = 4096;
const memory = new Uint8Array(256 * PAGE_BYTES);
const dirty = [3, 4, 5, 17, 90, 91, 200];
for (const index of dirty) memory.fill(index, index * PAGE_BYTES, (index + 1) * PAGE_BYTES);
memory.fill(0, 17 * PAGE_BYTES, 18 * PAGE_BYTES);

const txn = 42;
const pages: Page[] = dirty.map((index) =>
  index === 17
    ? { index, kind: PageKind.ZERO, data: new Uint8Array(0) }
    : { index, kind: PageKind.RAW, data: memory.subarray(index * PAGE_BYTES, (index + 1) * PAGE_BYTES) },
);
const body: Frame[] = [
  { type: FrameType.BEGIN, txn, seq: 0, body: { full: false, baseTxn: txn - 1, releasedTxn: txn - 2 } },
  { type: FrameType.PAGES, txn, seq: 1, body: { pageBytes: PAGE_BYTES, pages } },
  { type: FrameType.DEVICE, txn, seq: 2, body: { name: 'cpu0', state: { rip: 0x7c00, ticks: 1234 } } },
  { type: FrameType.DISK, txn, seq: 3, body: { diskId: 0, offset: 512 * 8, data: new Uint8Array(512).fill(0xd1) } },
  { type: FrameType.EVENT, txn, seq: 4, body: { id: 1, channel: 'serial0', payload: new TextEncoder().encode('login: ') } },
];

const digest = new TxnDigest();
const encoded: EncodedFrame[] = body.map((frame) => {
  const e = encodeFrame(frame);
  digest.add(e.bodyBytes, e.bodyCrc);
  return e;
});
encoded.push(
  encodeFrame({
    type: FrameType.COMMIT,
    txn,
    seq: digest.frameCount,
    body: { frameCount: digest.frameCount, crcDigest: digest.crcDigest, bodyBytes: digest.bodyBytes, stateDigest: new Uint8Array(0) },
  }),
);
const stream = Buffer.concat(encoded.flatMap((e) => [e.header, ...e.body]));
console.log(`kemari wire demo (crc32c: ${crc32cImplementation()})`);
console.log(`txn ${txn}: ${encoded.length} frames, ${stream.length} bytes on the wire, ${dirty.length} dirty pages`);

// Receive in random chunks, as a socket delivers them.
const decoder = new FrameDecoder();
const received: DecodedFrame[] = [];
let chunks = 0;
for (let at = 0; at < stream.length; chunks++) {
  const next = Math.min(stream.length, at + randomInt(1, 8192));
  decoder.push(stream.subarray(at, next), (frame) => received.push(frame));
  at = next;
}
decoder.end();

const check = new TxnDigest();
for (const frame of received) {
  if (frame.type === FrameType.COMMIT) {
    const ok =
      frame.body.frameCount === check.frameCount &&
      frame.body.bodyBytes === check.bodyBytes &&
      frame.body.crcDigest === check.crcDigest;
    console.log(`  COMMIT   frames=${frame.body.frameCount} bytes=${frame.body.bodyBytes} digest=${frame.body.crcDigest.toString(16)} → ${ok ? 'complete and verified' : 'MISMATCH'}`);
    if (!ok) process.exit(1);
  } else {
    check.add(frame.bodyBytes, frame.bodyCrc);
    console.log(`  ${FRAME_TYPE_NAMES[frame.type].padEnd(8)} seq=${frame.seq} body=${frame.bodyBytes} bytes`);
  }
}
console.log(`decoded from ${chunks} chunks of random size`);

// A single flipped bit in a page is refused, with its code.
const corrupt = Buffer.from(stream);
corrupt[encoded[0]!.header.byteLength + encoded[0]!.bodyBytes + HEADER_BYTES + 500]! ^= 0x10;
try {
  new FrameDecoder().push(corrupt, () => {});
  console.log('corruption went unnoticed');
  process.exit(1);
} catch (error) {
  if (!(error instanceof KemariError)) throw error;
  console.log(`one flipped bit in the PAGES frame → refused: ${error.code}`);
}
