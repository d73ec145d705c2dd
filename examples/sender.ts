/**
 * The primary as its own process: protects a SimulatedVm to a secondary, runs a workload with outputs through the
 * event-tap for --seconds, prints each acked epoch, then closes.
 *
 *   npx tsx examples/sender.ts --port 7400 [--host 127.0.0.1] [--memory-mib 64] [--seconds 5] [--verify]
 *                                  [--periodic-ms 25]
 */
import { parseArgs } from 'node:util';
import { Primary } from '../src/primary/primary.js';
import type { PrimaryCommit } from '../src/primary/primary.js';
import { SimulatedVm } from '../src/vm/simulated-vm.js';
import { Workload } from '../src/vm/workload.js';

const { values } = parseArgs({
  options: {
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string', default: '7400' },
    'memory-mib': { type: 'string', default: '64' },
    seconds: { type: 'string', default: '5' },
    verify: { type: 'boolean', default: false },
    'periodic-ms': { type: 'string' },
  },
});

const vm = new SimulatedVm({ memoryBytes: Number(values['memory-mib']) << 20, seed: 1 });
const periodic = values['periodic-ms'];
const primary = await Primary.start({
  vm,
  secondary: { host: values.host, port: Number(values.port) },
  verify: values.verify,
  sync: periodic === undefined ? { mode: 'event' } : { mode: 'periodic', intervalMs: Number(periodic) },
  onProgress: (p) => console.log(`full sync ${((100 * p.bytesSent) / p.bytesTotal).toFixed(0)}%`),
});
primary.on('commit', (c: PrimaryCommit) =>
  console.log(`acked txn ${c.txn}: ${c.pages} pages, pause ${c.pauseMs.toFixed(2)} ms, latency ${c.latencyMs.toFixed(2)} ms, ${c.released} outputs released`),
);
primary.on('disconnect', (e: Error) => {
  console.error(`disconnected: ${e.message}`);
  process.exit(1);
});

const workload = new Workload(vm, { seed: 2, outputEvery: 4, output: (channel, data) => void primary.tap.output(channel, data).catch(() => {}) });
const endAt = performance.now() + Number(values.seconds) * 1000;
while (performance.now() < endAt) {
  workload.step();
  await new Promise((resolve) => setTimeout(resolve, 1));
}
const stats = primary.stats();
console.log(`done: ${stats.epochs} epochs, pause p99 ${stats.pauseMs.p99.toFixed(2)} ms, commit p99 ${stats.latencyMs.p99.toFixed(2)} ms`);
primary.close();
process.exit(0);
