/**
 * The `kemari` CLI with a real QEMU: `kemari standby --qemu` and `kemari protect --qemu-image` run in-process
 * through main() with --json; the primary QEMU is SIGKILLed by its PID; the standby must report `promoted` and the
 * guest's serial lines must continue there from where the released ones stopped. Skipped, with the reason, without
 * qemu-system-x86_64 or nasm.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { buildGuest } from '../../examples/guest/build-guest.js';
import type { GuestParams } from '../../examples/guest/build-guest.js';
import { main } from '../../src/cli/main.js';
import { startQemu } from '../../src/qemu/qemu-process.js';
import { HAS_QEMU, NO_QEMU_MESSAGE, tempDir } from '../helpers/qemu.js';
import { captureCliIo, waitFor as waitForValue } from '../helpers/cli-io.js';
import type { CliEvent } from '../helpers/cli-io.js';

const HAS_NASM = spawnSync('nasm', ['-v'], { stdio: 'ignore' }).status === 0;
const SKIP = !HAS_QEMU || !HAS_NASM;
const SKIP_MESSAGE = !HAS_QEMU ? NO_QEMU_MESSAGE : 'nasm not found: CLI QEMU tests skipped (apt-get install nasm)';
if (SKIP) console.warn(SKIP_MESSAGE);

const GUEST: Partial<GuestParams> = { tickHz: 100, dirtyPagesPerTick: 8, ringPages: 256, serialEveryTicks: 5, diskEveryTicks: 10 };

/** The QEMU runs here get longer. */
const waitFor = <T>(probe: () => T | undefined, what: string, timeoutMs = 20_000): Promise<T> => waitForValue(probe, what, timeoutMs);

const aborts: AbortController[] = [];
const runs: Array<Promise<number>> = [];
/** QEMU processes the commands said they started: killed by PID after each test, whatever happened. */
const pids = new Set<number>();
const cleanups: Array<() => void> = [];
afterEach(async () => {
  for (const a of aborts.splice(0)) a.abort();
  await Promise.allSettled(runs.splice(0));
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  pids.clear();
  for (const cleanup of cleanups.splice(0)) cleanup();
});

function start(argv: string[]) {
  const io = captureCliIo();
  const abort = new AbortController();
  aborts.push(abort);
  const done = main(argv, io, abort.signal);
  runs.push(done);
  return { io, abort, done };
}

/** The tick numbers of the `serial` events of `source`, in order. */
function serialTicks(events: CliEvent[], source: string): number[] {
  return events
    .filter((e) => e.event === 'serial' && e.source === source && e.partial !== true)
    .map((e) => /tick (\d+)$/.exec(String(e.line)))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => Number(m[1]));
}

/** The serial text of `source` as it reached the outside (a partial last line is flagged by the command). */
function serialText(events: CliEvent[], source: string): string {
  return events
    .filter((e) => e.event === 'serial' && e.source === source)
    .map((e) => `${String(e.line)}${e.partial === true ? '' : '\n'}`)
    .join('');
}

/** The tick numbers of the complete lines of `text` (a line glued to a repeated partial one still ends in its tick). */
function ticksOf(text: string): number[] {
  return text
    .split('\n')
    .slice(0, -1)
    .map((line) => /tick (\d+)$/.exec(line))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => Number(m[1]));
}

/**
 * A QEMU already running the test guest with a second QMP monitor for kemari (QEMU serves one client per monitor,
 * and startQemu keeps the first), a standby QEMU on a copy of its disk (kemari does not capture an attached QEMU's
 * disk), and `kemari protect --qmp` attached to it; resolves once protected.
 */
async function attached(guest: Partial<GuestParams>, session: string) {
  const dir = tempDir();
  cleanups.push(() => dir.remove());
  const { imagePath, params } = await buildGuest(guest, dir.path);
  const copy = join(dir.path, 'standby.img');
  copyFileSync(imagePath, copy);
  const qmpPath = join(dir.path, 'kemari-qmp.sock');
  const qemu = await startQemu({
    args: ['-machine', 'pc,accel=tcg', '-m', '32', '-nodefaults', '-display', 'none', '-drive', `file=${imagePath},format=raw,if=ide,file.locking=off`, '-serial', 'null', '-qmp', `unix:${qmpPath},server=on,wait=off`],
    qmpSocketPath: join(dir.path, 'qmp.sock'),
  });
  pids.add(qemu.pid);
  const common = ['--session', session, '--json', '--status-ms', '200'];
  const standby = start(['standby', '--listen', '127.0.0.1:0', '--qemu', '--qemu-arg=-drive', `--qemu-arg=file=${copy},format=raw,if=ide,file.locking=off`, ...common]);
  const port = (await waitFor(() => standby.io.events().find((e) => e.event === 'listening'), 'the standby')).port as number;
  const protect = start(['protect', '--secondary', `127.0.0.1:${port}`, '--qmp', qmpPath, ...common]);
  const starting = await waitFor(() => protect.io.events().find((e) => e.event === 'starting'), 'the attach');
  await waitFor(() => protect.io.events().find((e) => e.event === 'protected'), 'protection');
  pids.add((await waitFor(() => standby.io.events().find((e) => e.event === 'standby-ready'), 'the standby QEMU')).pid as number);
  return { qemu, params, standby, protect, starting };
}

describe('kemari protect/standby --help (QEMU flags)', () => {
  it('say how to protect a QEMU, and that an attached one has its disk not captured', async () => {
    const protect = captureCliIo();
    expect(await main(['protect', '--help'], protect)).toBe(0);
    const text = protect.out.join('');
    for (const flag of ['--qemu-image', '--qmp', '--qemu-mib', '--serial-out']) expect(text).toContain(flag);
    expect(text).toMatch(/disk is NOT captured/);
    const standby = captureCliIo();
    expect(await main(['standby', '--help'], standby)).toBe(0);
    expect(standby.out.join('')).toContain('--qemu ');
    const both = captureCliIo();
    expect(await main(['protect', '--secondary', '127.0.0.1:1', '--session', 's', '--qemu-image', '/x', '--qmp', '/y'], both)).toBe(1);
    expect(both.err.join('')).toContain('KEMARI_INVALID_ARGUMENT');
  });
});

describe.skipIf(SKIP)(`kemari with a real QEMU (${SKIP ? SKIP_MESSAGE : 'qemu and nasm present'})`, () => {
  it('protect --qemu-image to standby --qemu: SIGKILL of the primary QEMU, the standby is promoted and the serial lines continue', async () => {
    const dir = tempDir();
    cleanups.push(() => dir.remove());
    const { imagePath, params } = await buildGuest(GUEST, dir.path);
    const S = params.serialEveryTicks;
    const common = ['--session', 'cli-qemu', '--verify', '--json', '--status-ms', '200'];

    const standby = start(['standby', '--listen', '127.0.0.1:0', '--qemu', '--qemu-dir', join(dir.path, 's'), ...common]);
    const port = (await waitFor(() => standby.io.events().find((e) => e.event === 'listening'), 'the standby')).port as number;
    const protect = start(['protect', '--secondary', `127.0.0.1:${port}`, '--qemu-image', imagePath, '--qemu-dir', join(dir.path, 'p'), ...common]);
    const starting = await waitFor(() => protect.io.events().find((e) => e.event === 'starting'), 'QEMU to start');
    const primaryPid = starting.pid as number;
    pids.add(primaryPid);
    expect(starting.qemu).toBe('launched');
    await waitFor(() => protect.io.events().find((e) => e.event === 'protected'), 'protection');
    const ready = await waitFor(() => standby.io.events().find((e) => e.event === 'standby-ready'), 'the standby QEMU');
    pids.add(ready.pid as number);
    // Serial lines reach the outside once their epochs are acked.
    await waitFor(() => (serialTicks(protect.io.events(), 'primary').length >= 6 ? true : undefined), 'released serial lines');

    process.kill(primaryPid, 'SIGKILL');
    const promoted = await waitFor(() => standby.io.events().find((e) => e.event === 'promoted'), 'the takeover', 10_000);
    expect(promoted.txn as number).toBeGreaterThan(1);
    expect(await protect.done).toBe(1);
    const gone = protect.io.events().find((e) => e.event === 'qemu-exited');
    expect(gone?.reason).toMatch(/SIGKILL|QMP/);
    expect(protect.io.events().some((e) => e.event === 'quiesced')).toBe(true);
    const released = serialTicks(protect.io.events(), 'primary');
    const lastReleased = released.at(-1)!;
    released.forEach((n, i) => expect(n).toBe((i + 1) * S));

    // The guest goes on in the standby QEMU: its lines follow the promotion and continue the released ones.
    await waitFor(() => (serialTicks(standby.io.events(), 'standby').filter((n) => n > lastReleased).length >= 5 ? true : undefined), 'serial lines from the standby');
    const events = standby.io.events();
    const promotedAt = events.findIndex((e) => e.event === 'promoted');
    expect(events.findIndex((e) => e.event === 'serial')).toBeGreaterThan(promotedAt);
    // Released lines, then the replay (it may repeat released output) and the standby's: as the outside reads them,
    // every line comes once the repeats are skipped, S by S, with none missing across the failover.
    const seen = ticksOf(serialText(protect.io.events(), 'primary') + serialText(events, 'standby'));
    const once = seen.filter((n, i) => seen.slice(0, i).every((m) => m < n));
    expect(once.length).toBeGreaterThan(released.length + 4);
    once.forEach((n, i) => expect(n).toBe((i + 1) * S));
    const running = events.find((e) => e.event === 'running');
    expect(running?.pid).toBe(ready.pid);
    expect(standby.io.err.join('')).toBe('');

    standby.abort.abort();
    expect(await standby.done).toBe(0);
    // The promoted QEMU is stopped with the standby.
    expect(() => process.kill(ready.pid as number, 0)).toThrow();
  });

  it('standby --qemu --then-protect: the promoted QEMU is protected to a second standby, which takes over when it dies too', async () => {
    const dir = tempDir();
    cleanups.push(() => dir.remove());
    const { imagePath, params } = await buildGuest(GUEST, dir.path);
    const common = ['--session', 'cli-chain', '--json', '--status-ms', '200'];
    const second = start(['standby', '--listen', '127.0.0.1:0', '--qemu', '--qemu-dir', join(dir.path, 'b'), ...common]);
    const portB = (await waitFor(() => second.io.events().find((e) => e.event === 'listening'), 'the second standby')).port as number;
    const first = start(['standby', '--listen', '127.0.0.1:0', '--qemu', '--qemu-dir', join(dir.path, 'a'), '--then-protect', `127.0.0.1:${portB}`, ...common]);
    const portA = (await waitFor(() => first.io.events().find((e) => e.event === 'listening'), 'the first standby')).port as number;
    const protect = start(['protect', '--secondary', `127.0.0.1:${portA}`, '--qemu-image', imagePath, '--qemu-dir', join(dir.path, 'p'), ...common]);
    const primaryPid = (await waitFor(() => protect.io.events().find((e) => e.event === 'starting'), 'QEMU to start')).pid as number;
    pids.add(primaryPid);
    await waitFor(() => protect.io.events().find((e) => e.event === 'protected'), 'protection');
    pids.add((await waitFor(() => first.io.events().find((e) => e.event === 'standby-ready'), 'the first standby QEMU')).pid as number);
    await waitFor(() => (serialTicks(protect.io.events(), 'primary').length >= 3 ? true : undefined), 'released serial lines');

    process.kill(primaryPid, 'SIGKILL');
    const restored = await waitFor(() => first.io.events().find((e) => e.event === 'restored'), 'the first takeover', 10_000);
    // Protected again, to the second standby: its full sync, its own standby QEMU.
    await waitFor(() => first.io.events().find((e) => e.event === 'protected'), 're-protection');
    await waitFor(() => second.io.events().find((e) => e.event === 'full-sync'), 'the full sync to the second standby');
    pids.add((await waitFor(() => second.io.events().find((e) => e.event === 'standby-ready'), 'the second standby QEMU')).pid as number);
    await waitFor(() => (serialTicks(first.io.events(), 'standby').length >= 3 ? true : undefined), 'serial lines of the promoted guest');

    process.kill(restored.pid as number, 'SIGKILL');
    await waitFor(() => second.io.events().find((e) => e.event === 'promoted'), 'the second takeover', 10_000);
    expect(first.io.events().some((e) => e.event === 'quiesced')).toBe(true);
    // The guest runs on in the third QEMU, its lines going on from the ones the first standby released.
    const lastBefore = serialTicks(first.io.events(), 'standby').at(-1)!;
    await waitFor(() => (serialTicks(second.io.events(), 'standby').filter((n) => n > lastBefore).length >= 3 ? true : undefined), 'serial lines from the second standby');
    const fresh = serialTicks(second.io.events(), 'standby').filter((n) => n > lastBefore);
    fresh.forEach((n, i) => expect(n).toBe(lastBefore + (i + 1) * params.serialEveryTicks));
    expect(first.io.err.join('') + second.io.err.join('')).toBe('');
  });

  it('protect --qemu-image: a guest that powers itself off ends protection; its last lines are released, the standby stands down and resumes nothing', async () => {
    const dir = tempDir();
    cleanups.push(() => dir.remove());
    // The guest starts after the full sync (QEMU is launched stopped): 150 ticks later it powers off.
    const { imagePath, params } = await buildGuest({ ...GUEST, powerOffAfterTicks: 150 }, dir.path);
    const common = ['--session', 'cli-off', '--verify', '--json', '--status-ms', '200'];
    const standby = start(['standby', '--listen', '127.0.0.1:0', '--qemu', '--qemu-dir', join(dir.path, 's'), ...common]);
    const port = (await waitFor(() => standby.io.events().find((e) => e.event === 'listening'), 'the standby')).port as number;
    const protect = start(['protect', '--secondary', `127.0.0.1:${port}`, '--qemu-image', imagePath, '--qemu-dir', join(dir.path, 'p'), ...common]);
    const starting = await waitFor(() => protect.io.events().find((e) => e.event === 'starting'), 'QEMU to start');
    pids.add(starting.pid as number);
    pids.add((await waitFor(() => standby.io.events().find((e) => e.event === 'standby-ready'), 'the standby QEMU')).pid as number);

    expect(await protect.done).toBe(0);
    const stood = protect.io.events().find((e) => e.event === 'stood-down');
    expect(stood?.reason).toBe('SHUTDOWN (guest-shutdown)');
    expect(protect.io.events().some((e) => e.event === 'quiesced' || e.event === 'qemu-exited')).toBe(false);
    // Every line the guest printed left, the last one ('power off', after tick 150) with the stand-down's last epoch.
    const text = serialText(protect.io.events(), 'primary');
    expect(text.endsWith(`tick ${params.powerOffAfterTicks}\npower off\n`)).toBe(true);
    ticksOf(text).forEach((n, i) => expect(n).toBe((i + 1) * params.serialEveryTicks));
    // The launched QEMU is closed with the command.
    expect(() => process.kill(starting.pid as number, 0)).toThrow();

    const down = await waitFor(() => standby.io.events().find((e) => e.event === 'stood-down'), 'the standby to stand down');
    expect(down.txn).toBe(stood?.txn);
    expect(await standby.done).toBe(0);
    expect(standby.io.events().some((e) => e.event === 'promoted')).toBe(false);
    expect(standby.io.events().find((e) => e.event === 'stopped')?.why).toBe('stood-down');
    expect(standby.io.err.join('')).toBe('');
  });

  it('protect --qmp on a QEMU that exits when its guest powers off (no -no-shutdown): the standby stands down all the same', async () => {
    const { qemu, standby, protect } = await attached({ ...GUEST, powerOffAfterTicks: 400 }, 'cli-off-attach');

    expect((await qemu.exited).code).toBe(0);
    expect(await protect.done).toBe(0);
    const stood = protect.io.events().find((e) => e.event === 'stood-down');
    expect(stood?.reason).toBe('SHUTDOWN (guest-shutdown)');
    expect(protect.io.events().some((e) => e.event === 'quiesced')).toBe(false);
    expect((await waitFor(() => standby.io.events().find((e) => e.event === 'stood-down'), 'the standby to stand down')).txn).toBe(stood?.txn);
    expect(await standby.done).toBe(0);
    expect(standby.io.events().some((e) => e.event === 'promoted')).toBe(false);
  });

  it('protect --qmp attaches to a running QEMU (memory and devices only): its death fails over to a standby given the same disk', async () => {
    const { qemu, params, standby, protect, starting } = await attached(GUEST, 'cli-attach');
    expect(starting).toMatchObject({ qemu: 'attached', diskBytes: 0 });
    // Periodic epochs by default: a few of them before the kill.
    await waitFor(() => protect.io.events().find((e) => e.event === 'status' && (e.ackedTxn as number) >= 4), 'epochs');

    await qemu.kill('SIGKILL');
    const promoted = await waitFor(() => standby.io.events().find((e) => e.event === 'promoted'), 'the takeover', 10_000);
    expect(promoted.txn as number).toBeGreaterThanOrEqual(4);
    expect(await protect.done).toBe(1);
    // The guest runs on in the standby QEMU: its lines go on S by S.
    await waitFor(() => (serialTicks(standby.io.events(), 'standby').length >= 4 ? true : undefined), 'serial lines from the standby');
    const ticks = serialTicks(standby.io.events(), 'standby');
    ticks.forEach((n, i) => expect(n).toBe(ticks[0]! + i * params.serialEveryTicks));
    expect(standby.io.err.join('')).toBe('');
  });
});
