/**
 * End-to-end replication benchmarks over loopback TCP, primary and secondary in this one process (as the raw
 * socket baseline is), each figure beside its physical limit measured in the same run:
 *
 * 1. Full-sync throughput: a SimulatedVm with no zero pages, from the first frame written to the ack, beside raw
 *    node:net throughput of the same number of bytes (1 MiB writes). For both, the receiving side (the Secondary,
 *    or a plain sink) runs in a child process, on its own core, as a standby host would.
 * 2. Checkpoint pause and commit latency (capture start → ack) for 64, 256 and 1024 dirty pages: p50 and p99, and
 *    pause per MiB dirty.
 * 3. Event-tap: released outputs per second with the event policy and coalescing.
 *
 *   npm run bench:replication            (256 MiB full sync)
 *   npm run bench:replication -- --quick (32 MiB, fewer rounds: a CI smoke run)
 */
import { fork } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { connect } from 'node:net';
import { Primary } from '../src/primary/primary.js';
import type { PrimaryCommit } from '../src/primary/primary.js';
import { Secondary } from '../src/secondary/secondary.js';
import { SimulatedVm } from '../src/vm/simulated-vm.js';
import { crc32cImplementation } from '../src/wire/checksum.js';

const quick = process.argv.includes('--quick');
const FULL_BYTES = quick ? 32 << 20 : 256 << 20;
const ROUNDS = quick ? 40 : 300;
const TAP_SECONDS = quick ? 0.5 : 2;

/** Starts bench/receiver-process.ts in `mode`; resolves with its port and the child. */
async function receiver(args: string[]): Promise<{ port: number; child: ChildProcess }> {
  const child = fork(new URL('./receiver-process.ts', import.meta.url), args, { execArgv: process.execArgv });
  const port = await new Promise<number>((resolve) => child.once('message', (m) => resolve((m as { port: number }).port)));
  return { port, child };
}

/** Raw loopback TCP to a sink in another process: seconds to move `bytes` in 1 MiB writes. */
async function rawNet(bytes: number): Promise<number> {
  const { port, child } = await receiver(['raw', String(bytes)]);
  const chunk = Buffer.alloc(1 << 20, 7);
  const socket = connect(port, '127.0.0.1');
  await new Promise((r) => socket.once('connect', r));
  socket.setNoDelay(true);
  const done = new Promise((r) => child.once('message', r));
  const start = performance.now();
  for (let sent = 0; sent < bytes; sent += chunk.length) {
    if (!socket.write(chunk)) await new Promise((r) => socket.once('drain', r));
  }
  await done;
  const seconds = (performance.now() - start) / 1000;
  socket.destroy();
  child.disconnect();
  return seconds;
}

/** A full sync to a Secondary in another process: seconds from the first frame written to the ack. */
async function fullSync(precopyRoundsMax: number): Promise<{ seconds: number; wireBytes: number; captureMs: number; pauseMs: number }> {
  const { port, child } = await receiver(['kemari']);
  const vm = new SimulatedVm({ memoryBytes: FULL_BYTES, seed: 1, disks: [] });
  const fill = new Uint8Array(FULL_BYTES);
  for (let i = 0; i < FULL_BYTES; i += 512) fill[i] = (i >> 9) | 1; // no zero pages
  vm.write(0, fill);
  let firstWriteMs = 0;
  let wireBytes = 0;
  let captureMs = 0;
  const start = performance.now();
  const primary = await Primary.start({
    vm,
    secondary: { host: '127.0.0.1', port },
    precopyRoundsMax,
    heartbeat: { intervalMs: 100, missedMax: 50 },
    onProgress: (p) => {
      if (firstWriteMs === 0) {
        firstWriteMs = performance.now();
        captureMs = firstWriteMs - start;
      }
      wireBytes = p.bytesTotal;
    },
  });
  const seconds = (performance.now() - firstWriteMs) / 1000;
  const pauseMs = primary.stats().pauseMs.max;
  primary.close();
  child.disconnect();
  return { seconds, wireBytes, captureMs, pauseMs };
}

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

async function checkpointLatency(dirtyPages: number): Promise<{ pause: number[]; latency: number[] }> {
  const secondary = await Secondary.listen({ port: 0 });
  const vm = new SimulatedVm({ memoryBytes: 64 << 20, seed: 3, disks: [] });
  const primary = await Primary.start({ vm, secondary: { host: '127.0.0.1', port: secondary.port }, pipelineDepth: 1 });
  const pause: number[] = [];
  const latency: number[] = [];
  primary.on('commit', (c: PrimaryCommit) => {
    pause.push(c.pauseMs);
    latency.push(c.latencyMs);
  });
  const page = new Uint8Array(4096);
  const pageCount = (64 << 20) / 4096;
  for (let round = 0; round < ROUNDS; round++) {
    for (let i = 0; i < dirtyPages; i++) {
      page[0] = round;
      page[1] = i;
      vm.write(((round * 7919 + i * 104729) % pageCount) * 4096, page);
    }
    await primary.tap.output('bench', Uint8Array.of(round & 0xff));
  }
  primary.close();
  await secondary.close();
  return { pause: pause.slice(5), latency: latency.slice(5) };
}

async function tapThroughput(): Promise<number> {
  const secondary = await Secondary.listen({ port: 0 });
  const vm = new SimulatedVm({ memoryBytes: 4 << 20, seed: 4, disks: [] });
  const primary = await Primary.start({ vm, secondary: { host: '127.0.0.1', port: secondary.port }, pipelineDepth: 2 });
  const payload = Buffer.from('GET / HTTP/1.1\r\n\r\n');
  let released = 0;
  const window = 4096;
  const endAt = performance.now() + TAP_SECONDS * 1000;
  const start = performance.now();
  const pending = new Set<Promise<void>>();
  while (performance.now() < endAt) {
    while (pending.size < window) {
      const p: Promise<void> = primary.tap.output('net0', payload).then(() => {
        released += 1;
        pending.delete(p);
      });
      pending.add(p);
    }
    await Promise.race(pending);
  }
  await Promise.all(pending);
  const seconds = (performance.now() - start) / 1000;
  primary.close();
  await secondary.close();
  return released / seconds;
}

console.log(`replication benchmarks (${quick ? 'quick' : 'full'} run; crc32c ${crc32cImplementation()}; node ${process.version}; full sync to a secondary process; latency and tap in one process)`);

// Loopback throughput on a small machine is noisy and the first transfer of a process is the slowest: one
// discarded warm-up, then raw and kemari runs alternate, and the medians are compared.
const RUNS = quick ? 1 : 3;
await rawNet(FULL_BYTES);
const syncRates: number[] = [];
const rawRates: number[] = [];
let captureMs = 0;
for (let run = 0; run < RUNS; run++) {
  const sync = await fullSync(0);
  syncRates.push(sync.wireBytes / sync.seconds / 1e9);
  captureMs = sync.captureMs;
  rawRates.push(sync.wireBytes / (await rawNet(sync.wireBytes)) / 1e9);
}
const syncGBps = percentile(syncRates, 50);
const rawGBps = percentile(rawRates, 50);
console.log(
  `full sync of ${FULL_BYTES >> 20} MiB in one capture (median of ${RUNS}): ${syncGBps.toFixed(2)} GB/s on the wire (capture ${captureMs.toFixed(0)} ms before it); ` +
    `raw node:net ${rawGBps.toFixed(2)} GB/s; ratio ${(syncGBps / rawGBps).toFixed(2)} [runs: kemari ${syncRates.map((r) => r.toFixed(2)).join(' ')}; raw ${rawRates.map((r) => r.toFixed(2)).join(' ')}]`,
);
for (const rounds of [0, 4]) {
  const sync = await fullSync(rounds);
  console.log(
    `full sync of ${FULL_BYTES >> 20} MiB, precopyRoundsMax ${rounds}: guest paused ${sync.pauseMs.toFixed(1)} ms; ` +
      `first frame to ack ${(sync.seconds * 1000).toFixed(0)} ms (${(sync.wireBytes / sync.seconds / 1e9).toFixed(2)} GB/s, copying included when pre-copying)`,
  );
}

for (const pages of [64, 256, 1024]) {
  const { pause, latency } = await checkpointLatency(pages);
  const mib = (pages * 4096) / 2 ** 20;
  console.log(
    `${String(pages).padStart(4)} dirty pages: pause p50 ${percentile(pause, 50).toFixed(2)} ms p99 ${percentile(pause, 99).toFixed(2)} ms ` +
      `(${(percentile(pause, 50) / mib).toFixed(2)} ms/MiB); commit p50 ${percentile(latency, 50).toFixed(2)} ms p99 ${percentile(latency, 99).toFixed(2)} ms`,
  );
}

console.log(`event-tap: ${Math.round(await tapThroughput()).toLocaleString('en-US')} released outputs/s (event policy, pipeline depth 2)`);
process.exit(0);
