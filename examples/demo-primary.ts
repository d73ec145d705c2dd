/**
 * The primary half of `npm run demo`, run as a child process so the demo can SIGKILL it like a failing host.
 * Protects a SimulatedVm to the secondary at argv[2] (port), runs a workload whose outputs go through the
 * event-tap, and reports every commit and release to the parent over IPC, every capture's digest in the file at
 * argv[4].
 */
import { appendFileSync } from 'node:fs';
import { Primary } from '../src/primary/primary.js';
import type { PrimaryCapture, PrimaryCommit } from '../src/primary/primary.js';
import { digestHex } from '../src/replica/state-digest.js';
import type { ReleasedOutput } from '../src/tap/event-tap.js';
import { SimulatedVm } from '../src/vm/simulated-vm.js';
import { Workload } from '../src/vm/workload.js';

const port = Number(process.argv[2]);
const memoryBytes = Number(process.argv[3] ?? 32 << 20);
const digestLog = process.argv[4]!;
const send = (message: unknown): void => void process.send?.(message);

const vm = new SimulatedVm({ memoryBytes, seed: 2026, disks: [{ id: 0, bytes: 16 << 20 }] });
// The guest ran before protection began: its memory and disk are not blank.
new Workload(vm, { seed: 1, pagesPerStep: 64, outputEvery: 0 }).run(200);

const primary = await Primary.start({
  vm,
  secondary: { host: '127.0.0.1', port },
  sync: { mode: 'event', idleIntervalMs: 50 },
  pipelineDepth: 2,
  verify: true,
  sessionId: 'demo-vm',
  onProgress: (p) => send({ type: 'progress', ...p }),
});
// Each epoch's digest is appended to a file before its frames are written (the event fires just before): unlike an
// IPC message, which may still sit in the pipe when SIGKILL comes, a write the kernel took survives the kill.
primary.on('capture', (c: PrimaryCapture) => appendFileSync(digestLog, `${c.txn} ${digestHex(c.digest!)}\n`));
primary.on('commit', (c: PrimaryCommit) =>
  send({ type: 'commit', txn: c.txn, pages: c.pages, bytes: c.bytes, pauseMs: c.pauseMs, latencyMs: c.latencyMs }),
);
primary.on('release', (r: ReleasedOutput) => send({ type: 'release', txn: r.txn, id: r.id, channel: r.channel }));
send({ type: 'protected' });

const workload = new Workload(vm, {
  seed: 7,
  pagesPerStep: 32,
  outputEvery: 3,
  output: (channel, data) => void primary.tap.output(channel, data).catch(() => {}),
});
// The guest runs until this process is killed.
for (;;) {
  workload.step();
  await new Promise((resolve) => setImmediate(resolve));
}
