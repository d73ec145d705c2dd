/**
 * Checks of a failover of the kemari test guest: what the committed epoch holds, and whether the standby's guest,
 * its disk and the serial output seen outside agree with it. Shared by the failover test, `npm run demo:qemu` and
 * the CLI tests, so all of them hold the guest to the same invariants (see examples/guest/README.md):
 *
 * - the guest prints `tick N` lines with N = S, 2S, 3S, ... (S = serialEveryTicks) and counts the complete ones;
 * - it writes sector i at LBA diskLbaBase + (i mod diskLbaCount) and counts the writes issued.
 *
 * Each function returns a list of problems (empty when the check passes) rather than throwing, so a test can
 * assert on it and a demo can print it.
 */
import { parseQemuDeviceState, QEMU_DEVICE_NAME } from '../../src/qemu/qemu-device-state.js';
import type { QemuVm } from '../../src/qemu/qemu-vm.js';
import type { QmpClient } from '../../src/qemu/qmp-client.js';
import type { QmpEvent } from '../../src/qemu/qmp-core.js';
import type { ReplicaSnapshot } from '../../src/replica/replica.js';
import { COUNTER_ADDRESS, DISK_WRITES_ADDRESS, SECTOR_SIZE_BYTES, SERIAL_LINES_ADDRESS, decodeGuestSector } from './build-guest.js';
import type { GuestParams, GuestSector } from './build-guest.js';

/** The guest's progress counters in one memory image. */
export interface GuestCounters {
  /** Timer ticks (u64 at COUNTER_ADDRESS). */
  ticks: number;
  /** Sector writes issued (u64 at DISK_WRITES_ADDRESS). */
  diskWrites: number;
  /** `tick` lines printed completely (u64 at SERIAL_LINES_ADDRESS). */
  serialLines: number;
}

/**
 * The guest counters of a committed epoch: read from the replica's linear memory, where guest-physical address A
 * of `pc.ram` sits at the block's offset + A (the RAM blocks are laid end to end, in stream order).
 */
export function committedCounters(snapshot: ReplicaSnapshot): GuestCounters {
  const state = parseQemuDeviceState(snapshot.devices.get(QEMU_DEVICE_NAME), snapshot.memoryBytes);
  const ram = state.blocks.find((block) => block.name === 'pc.ram' || block.name === 'mem');
  if (ram === undefined) throw new Error(`no pc.ram block in the snapshot (blocks: ${state.blocks.map((b) => b.name).join(', ')})`);
  const u64 = (address: number): number => Number(Buffer.from(snapshot.memory.buffer, snapshot.memory.byteOffset + ram.offsetBytes + address, 8).readBigUInt64LE());
  return { ticks: u64(COUNTER_ADDRESS), diskWrites: u64(DISK_WRITES_ADDRESS), serialLines: u64(SERIAL_LINES_ADDRESS) };
}

/** Serial text cut into complete lines and the unterminated rest. */
export function splitLines(text: string): { lines: string[]; rest: string } {
  const parts = text.split('\n');
  const rest = parts.pop() ?? '';
  return { lines: parts, rest };
}

/** The tick numbers of `tick N` lines (other lines, such as the banner, are skipped). */
export function tickNumbers(lines: readonly string[]): number[] {
  const out: number[] = [];
  for (const line of lines) {
    const match = /^tick (\d+)$/.exec(line);
    if (match !== null) out.push(Number(match[1]));
  }
  return out;
}

/**
 * Output commit, on what reached the outside from the primary: every complete `tick N` line belongs to a committed
 * epoch (N <= the committed counter, and no more lines than the committed guest had printed), and none is missing
 * between released ones (S, 2S, 3S, ...).
 */
export function checkReleasedSerial(released: string, committed: GuestCounters, serialEveryTicks: number): string[] {
  const problems: string[] = [];
  const ticks = tickNumbers(splitLines(released).lines);
  ticks.forEach((n, i) => {
    if (n !== (i + 1) * serialEveryTicks) problems.push(`released line ${i + 1} is 'tick ${n}', expected 'tick ${(i + 1) * serialEveryTicks}' (a line is missing or out of order)`);
    if (n > committed.ticks) problems.push(`released 'tick ${n}' is beyond the committed counter ${committed.ticks}: output of an uncommitted epoch`);
  });
  // One more than counted: the committed guest may have sent a line's newline and not yet counted the line.
  if (ticks.length > committed.serialLines + 1) problems.push(`${ticks.length} complete lines released, but the committed guest had printed only ${committed.serialLines}`);
  return problems;
}

/**
 * The standby's serial continues exactly from the committed state: its first line ends line `serialLines + 1` (the
 * committed guest may have printed part of it already: then only its tail follows, empty when only the newline was
 * left), or is line `serialLines + 2` whole (the committed guest had printed line `serialLines + 1` to its newline but
 * not counted it yet), and the lines after go on S by S. `promotedText` is what the standby's guest printed since it was restored.
 */
export function checkStandbySerial(promotedText: string, committed: GuestCounters, serialEveryTicks: number): string[] {
  const { lines } = splitLines(promotedText);
  if (lines.length === 0) return [`the standby printed no complete line (${JSON.stringify(promotedText)})`];
  const line = (n: number): string => `tick ${n * serialEveryTicks}`;
  const first = lines[0]!;
  let next: number;
  // The tail may be empty: the committed guest had sent every character of the line but its newline (COM1 takes one
  // byte an I/O, so a checkpoint can fall between any two). The lines after it still have to go on exactly.
  if (line(committed.serialLines + 1).endsWith(first)) next = committed.serialLines + 2;
  else if (first === line(committed.serialLines + 2)) next = committed.serialLines + 3;
  else return [`the standby's first line is ${JSON.stringify(first)}, expected (the end of) ${JSON.stringify(line(committed.serialLines + 1))}`];
  const problems: string[] = [];
  tickNumbers(lines.slice(1)).forEach((n, i) => {
    if (n !== (next + i) * serialEveryTicks) problems.push(`the standby's line ${i + 2} is 'tick ${n}', expected '${line(next + i)}'`);
  });
  return problems;
}

/** The decoded sectors of the guest's ring in `disk`, keyed by write index. */
export function ringSectors(disk: Uint8Array, params: Pick<GuestParams, 'diskLbaBase' | 'diskLbaCount'>): Map<number, GuestSector> {
  const out = new Map<number, GuestSector>();
  for (let slot = 0; slot < params.diskLbaCount; slot++) {
    const at = (params.diskLbaBase + slot) * SECTOR_SIZE_BYTES;
    if (at + SECTOR_SIZE_BYTES > disk.byteLength) break;
    const sector = decodeGuestSector(disk.subarray(at, at + SECTOR_SIZE_BYTES));
    if (sector !== undefined) out.set(Number(sector.writeIndex), sector);
  }
  return out;
}

/**
 * The disk holds exactly the writes of the committed epoch: write indices 0..k-1 where k is the committed
 * `diskWrites`, or 0..k when the write in flight at the checkpoint had completed before the guest counted it
 * (QMP `stop` drains block I/O); every sector intact and at its LBA; nothing beyond. The ring must not have wrapped.
 */
export function checkCommittedDisk(disk: Uint8Array, committed: GuestCounters, params: Pick<GuestParams, 'diskLbaBase' | 'diskLbaCount'>): string[] {
  const problems: string[] = [];
  if (committed.diskWrites + 1 >= params.diskLbaCount) return [`the ring wrapped (${committed.diskWrites} writes, ${params.diskLbaCount} slots): the check needs a larger ring`];
  const sectors = ringSectors(disk, params);
  const k = committed.diskWrites;
  const top = sectors.has(k) ? k : k - 1;
  for (let i = 0; i <= top; i++) {
    const sector = sectors.get(i);
    if (sector === undefined) problems.push(`write ${i} is missing (committed diskWrites ${k})`);
    else if (!sector.intact || sector.lba !== params.diskLbaBase + (i % params.diskLbaCount)) problems.push(`write ${i} is torn or misplaced`);
  }
  for (const index of sectors.keys()) if (index > top) problems.push(`write ${index} is on the disk but beyond the committed diskWrites ${k}`);
  return problems;
}

/**
 * What the outside saw across the failover, as one stream: the outputs the primary released, then the promotion's
 * replay (outputs of committed epochs the primary may not have released; the ones it did release are dropped here,
 * where the replay repeats the released tail), then what the standby printed. Every `tick` line must appear once,
 * S by S, with nothing missing: no output of a committed epoch is lost, none is invented.
 */
export function checkSerialAcrossFailover(releasedOutputs: readonly Uint8Array[], replayOutputs: readonly Uint8Array[], standbyText: string, serialEveryTicks: number): string[] {
  const same = (a: Uint8Array, b: Uint8Array): boolean => Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
  let overlap = Math.min(releasedOutputs.length, replayOutputs.length);
  for (; overlap > 0; overlap--) {
    const tail = releasedOutputs.slice(releasedOutputs.length - overlap);
    if (tail.every((output, i) => same(output, replayOutputs[i]!))) break;
  }
  const text = [...releasedOutputs, ...replayOutputs.slice(overlap)].map((o) => Buffer.from(o).toString('latin1')).join('') + standbyText;
  const ticks = tickNumbers(splitLines(text).lines);
  const problems: string[] = [];
  ticks.forEach((n, i) => {
    if (n !== (i + 1) * serialEveryTicks && problems.length < 3) problems.push(`line ${i + 1} seen outside is 'tick ${n}', expected 'tick ${(i + 1) * serialEveryTicks}'`);
  });
  return problems;
}

/** The counter a restored guest started with, sampled by {@link sampleCounterAtResume}. */
export interface ResumeSample {
  /** The guest's counter (u64 at COUNTER_ADDRESS) as sampled. */
  counter: number;
  /** QEMU's time between RESUME and the STOP right behind the sample (ms): how long the guest ran before it. */
  windowMs: number;
  /** performance.now() when RESUME arrived here: the guest runs from then on. */
  runningAt: number;
}

/**
 * Samples the counter of a guest the moment it starts running, for a standby restored by QemuStandby (which
 * cannot restore paused: it `cont`s right after the load). On QEMU's RESUME event it sends HMP `xp` of the counter
 * and a `stop` right behind it; QEMU runs them in order, so the sample lies between RESUME and STOP by QEMU's own
 * clock, and at most `windowMs * tickHz / 1000 + 1` ticks after the resume. The guest is left stopped: resume it
 * (QemuVm.resume) when done. Call before the restore; the promise settles after it.
 */
export function sampleCounterAtResume(qmp: QmpClient): Promise<ResumeSample> {
  return new Promise((resolve, reject) => {
    const onEvent = (event: QmpEvent): void => {
      if (event.event !== 'RESUME') return;
      qmp.off('event', onEvent);
      const runningAt = performance.now();
      const stopEvent = qmp.waitForEvent('STOP', () => true, 10_000);
      const words = qmp.execute<string>('human-monitor-command', { 'command-line': `xp /2wx 0x${COUNTER_ADDRESS.toString(16)}` });
      const stopped = qmp.execute('stop');
      Promise.all([words, stopEvent, stopped]).then(([text, stop]) => {
        const [lo, hi] = [...text.matchAll(/0x([0-9a-f]{8})\b/g)].slice(0, 2).map((m) => Number.parseInt(m[1]!, 16));
        resolve({ counter: lo! + hi! * 2 ** 32, windowMs: qemuMs(stop) - qemuMs(event), runningAt });
      }, reject);
    };
    qmp.on('event', onEvent);
  });
}

/** QEMU's wall-clock time of an event, in ms. */
function qemuMs(event: QmpEvent): number {
  return event.timestamp.seconds * 1000 + event.timestamp.microseconds / 1000;
}

/**
 * The standby's disk as it was when the restored guest started: what its NBD server holds now with the writes the
 * guest made since (its write log, taken by a capture) put back to `committedDisk`'s contents, and the write
 * indices of those newer writes, in order. Pauses the VM for the capture and leaves it paused. Only for a guest
 * whose sector ring has not wrapped since (a newer write lands on a sector that was blank at the resume).
 */
export async function standbyDiskAtResume(vm: QemuVm, committedDisk: Uint8Array): Promise<{ disk: Uint8Array; newWrites: number[] }> {
  await vm.pause();
  const disk = await vm.disk!.read(0, vm.disk!.sizeBytes);
  const since = await vm.capture({ full: false, digest: false });
  const newWrites: number[] = [];
  for (const write of since.diskWrites) {
    for (let at = 0; at < write.data.byteLength; at += SECTOR_SIZE_BYTES) {
      const sector = decodeGuestSector(write.data.subarray(at, at + SECTOR_SIZE_BYTES));
      if (sector !== undefined) newWrites.push(Number(sector.writeIndex));
    }
    disk.set(committedDisk.subarray(write.offset, write.offset + write.data.byteLength), write.offset);
  }
  return { disk, newWrites };
}
