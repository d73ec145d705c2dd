/**
 * `npm run demo`: protect a SimulatedVm over loopback TCP, kill the primary, fail over, and check the result.
 *
 * This process is the secondary. It starts the primary as a child process (examples/demo-primary.ts), lets the
 * guest run with outputs going through the event-tap, then SIGKILLs the primary at a random moment, promotes
 * itself, and verifies: the resumed VM's digest equals the digest the primary recorded when it captured that
 * epoch, and no output of an epoch the secondary had not committed was ever released. Then the guest continues
 * on the promoted VM, and a short report is printed. Exits non-zero if any check fails.
 */
import { fork } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { Secondary } from '../src/secondary/secondary.js';
import type { SecondaryCommit } from '../src/secondary/secondary.js';
import { crc32cImplementation } from '../src/wire/checksum.js';
import { digestHex } from '../src/replica/state-digest.js';
import { Workload } from '../src/vm/workload.js';

interface Message {
  type: string;
  [key: string]: unknown;
}

const MEMORY_BYTES = 32 << 20;
const killAfterMs = randomInt(600, 1800);

const secondary = await Secondary.listen({ host: '127.0.0.1', port: 0, verify: true, sessionId: 'demo-vm' });
const committed = new Set<number>();
secondary.on('commit', (c: SecondaryCommit) => committed.add(c.txn));

const captured = new Map<number, string>();
const releases: Array<{ txn: number; id: number; committedThen: boolean }> = [];
const pauses: number[] = [];
const latencies: number[] = [];
let pages = 0;
let bytes = 0;
let epochs = 0;

console.log(`kemari demo: a ${MEMORY_BYTES >> 20} MiB SimulatedVm protected over loopback TCP (crc32c: ${crc32cImplementation()})`);
const digestLog = join(mkdtempSync(join(tmpdir(), 'kemari-demo-')), 'digests');
const child = fork(new URL('./demo-primary.ts', import.meta.url), [String(secondary.port), String(MEMORY_BYTES), digestLog], {
  execArgv: process.execArgv,
  stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
});
let lastProgress = -1;
child.on('message', (raw) => {
  const m = raw as Message;
  if (m.type === 'progress') {
    const percent = Math.floor((100 * Number(m.bytesSent)) / Number(m.bytesTotal));
    if (percent >= lastProgress + 25 || percent === 100) {
      lastProgress = percent;
      console.log(`  full sync: ${percent}% of ${(Number(m.bytesTotal) / 2 ** 20).toFixed(1)} MiB`);
    }
  } else if (m.type === 'protected') {
    console.log(`  protected; the guest runs; the primary will be killed in ${killAfterMs} ms`);
    setTimeout(() => child.kill('SIGKILL'), killAfterMs);
  } else if (m.type === 'commit') {
    epochs += 1;
    pages += Number(m.pages);
    bytes += Number(m.bytes);
    if (Number(m.txn) > 1) {
      pauses.push(Number(m.pauseMs));
      latencies.push(Number(m.latencyMs));
    }
  } else if (m.type === 'release') releases.push({ txn: Number(m.txn), id: Number(m.id), committedThen: committed.has(Number(m.txn)) });
});
const exit = await new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
  child.on('exit', (code, signal) => resolve({ code, signal })),
);
if (exit.signal !== 'SIGKILL') {
  console.error(`the primary exited on its own (code ${exit.code}, signal ${exit.signal})`);
  process.exit(1);
}
console.log('  primary killed with SIGKILL; promoting the secondary');
// The digest of every epoch the primary captured (later lines win: a txn is captured again after a lost session).
for (const line of readFileSync(digestLog, 'utf8').split('\n')) {
  const [txnText, digest] = line.split(' ');
  if (digest !== undefined) captured.set(Number(txnText), digest);
}
rmSync(dirname(digestLog), { recursive: true, force: true });

const failoverStart = performance.now();
const { vm, txn, replay } = await secondary.promote();
const failoverMs = performance.now() - failoverStart;
const resumedDigest = digestHex(vm.digest());
const failures: string[] = [];
if (captured.get(txn) !== resumedDigest) {
  failures.push(`resumed digest ${resumedDigest} differs from the primary's digest of epoch ${txn}: ${captured.get(txn)}`);
}
const early = releases.filter((r) => !r.committedThen || r.txn > txn);
if (early.length > 0) failures.push(`${early.length} outputs were released before their epoch was committed`);
if (releases.length === 0) failures.push('no output was released at all: the run was too short to show anything');

// The guest continues on the promoted VM from the committed epoch.
const workload = new Workload(vm, { seed: 7, outputEvery: 0 });
const counterAtFailover = workload.counter;
workload.run(10);

const pct = (values: number[], p: number): string => {
  if (values.length === 0) return '-';
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!.toFixed(2);
};
console.log('');
console.log('report');
console.log(`  epochs acked by the primary : ${epochs} (${pages} pages, ${(bytes / 2 ** 20).toFixed(1)} MiB on the wire)`);
console.log(`  epochs committed (secondary): ${committed.size}, last ${txn}`);
console.log(`  VM pause per checkpoint     : p50 ${pct(pauses, 50)} ms, p99 ${pct(pauses, 99)} ms`);
console.log(`  commit latency              : p50 ${pct(latencies, 50)} ms, p99 ${pct(latencies, 99)} ms`);
console.log(`  outputs released            : ${releases.length}, all of committed epochs: ${early.length === 0 ? 'yes' : 'NO'}`);
console.log(`  outputs to replay           : ${replay.length} (of committed epochs the primary may not have released)`);
console.log(`  resumed from epoch          : ${txn}, digest ${resumedDigest.slice(0, 16)}… ${captured.get(txn) === resumedDigest ? 'equals' : 'DIFFERS FROM'} the primary's`);
console.log(`  promotion took              : ${failoverMs.toFixed(1)} ms; guest counter ${counterAtFailover} → ${workload.counter} on the new primary`);
if (failures.length > 0) {
  for (const f of failures) console.error(`FAILED: ${f}`);
  process.exit(1);
}
console.log('all checks passed');
process.exit(0);
