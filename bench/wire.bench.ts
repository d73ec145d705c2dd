/**
 * Wire microbenchmarks (benchmark.js): encode and decode of PAGES frames of 256 pages x 4 KiB (1 MiB), and
 * CRC32C, each beside Buffer.copy of the same bytes measured in the same run: the memcpy limit. Ratios are what to
 * compare across machines; absolute GB/s depend on the machine.
 *
 *   npm run bench            all benchmarks
 *   npm run bench -- --quick shorter runs (for CI smoke checks)
 */
import Benchmark from 'benchmark';
import { FrameDecoder, FrameType, PageKind, crc32c, crc32cImplementation, encodeFrame } from '../src/index.js';
import type { Frame } from '../src/index.js';

const quick = process.argv.includes('--quick');
const PAGE_BYTES = 4096;
const PAGES = 256;
const FRAME_BYTES = PAGE_BYTES * PAGES;

// Guest memory: 16 MiB, every 16th page dirty, so the 256 pages are scattered (no view merging flatters encode).
const memory = new Uint8Array(16 << 20);
for (let i = 0; i < memory.length; i += 997) memory[i] = i & 0xff;
const pages = Array.from({ length: PAGES }, (_, i) => {
  const index = i * 16;
  return { index, kind: PageKind.RAW, data: memory.subarray(index * PAGE_BYTES, (index + 1) * PAGE_BYTES) };
});
const frame: Frame = { type: FrameType.PAGES, txn: 1, seq: 1, body: { pageBytes: PAGE_BYTES, pages } };
const encoded = encodeFrame(frame);
const wire = Buffer.concat([encoded.header, ...encoded.body]);
const chunks64k: Buffer[] = [];
for (let at = 0; at < wire.length; at += 65536) chunks64k.push(wire.subarray(at, at + 65536));

const src = Buffer.from(memory.subarray(0, FRAME_BYTES));
const dst = Buffer.alloc(FRAME_BYTES);
let sink = 0;

const decoder = () => new FrameDecoder({ bodyBytesMax: 2 << 20 });
// A receiver's staging area: bodies spanning chunks are assembled into memory reused across transactions.
const arena = new Uint8Array(4 << 20);
let arenaAt = 0;
const stagingDecoder = () =>
  new FrameDecoder({
    bodyBytesMax: 2 << 20,
    allocateBody: (bytes) => {
      if (arenaAt + bytes > arena.byteLength) arenaAt = 0; // frames of the previous round are dead by now
      const out = arena.subarray(arenaAt, arenaAt + bytes);
      arenaAt += bytes;
      return out;
    },
  });
const count = (f: { bodyBytes: number }): void => {
  sink += f.bodyBytes;
};

const suite = new Benchmark.Suite('wire');
const options = quick ? { maxTime: 0.5, minSamples: 5 } : { maxTime: 3, minSamples: 20 };
suite
  .add('memcpy (Buffer.copy) 1 MiB', () => {
    src.copy(dst);
  }, options)
  .add('crc32c 1 MiB', () => {
    sink ^= crc32c(src);
  }, options)
  .add('encode PAGES 256 x 4 KiB (views, no copy)', () => {
    sink += encodeFrame(frame).bodyBytes;
  }, options)
  .add('decode PAGES 1 MiB, one chunk', () => {
    decoder().push(wire, count);
  }, options)
  .add('decode PAGES 1 MiB, 64 KiB chunks', () => {
    const d = decoder();
    for (const c of chunks64k) d.push(c, count);
  }, options)
  .add('decode PAGES 1 MiB, 64 KiB chunks, staging', () => {
    const d = stagingDecoder();
    for (const c of chunks64k) d.push(c, count);
  }, options);

const results: Array<{ name: string; hz: number; rme: number }> = [];
suite.on('cycle', (event: Benchmark.Event) => {
  const b = event.target as unknown as Benchmark;
  results.push({ name: String(b.name), hz: b.hz ?? 0, rme: b.stats?.rme ?? 0 });
});
suite.on('complete', () => {
  const memcpyHz = results[0]!.hz;
  const gbps = (hz: number): number => (hz * FRAME_BYTES) / 1e9;
  console.log(`crc32c implementation: ${crc32cImplementation()}; node ${process.version}; ${quick ? 'quick' : 'full'} run`);
  console.log(`${'benchmark'.padEnd(44)} ${'GB/s'.padStart(7)} ${'x memcpy'.padStart(9)} ${'±%'.padStart(6)}`);
  for (const r of results) {
    console.log(`${r.name.padEnd(44)} ${gbps(r.hz).toFixed(2).padStart(7)} ${(r.hz / memcpyHz).toFixed(2).padStart(9)} ${r.rme.toFixed(1).padStart(6)}`);
  }
  if (sink === 0.5) console.log(sink); // keep results observable
});
suite.run();
