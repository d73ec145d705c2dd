/**
 * The test guest's `powerOffAfterTicks`: after that many ticks it prints `power off` and powers the machine off
 * through ACPI (S5 via PM1a_CNT), as an OS does. Checked on real QEMU (TCG, the `pc` machine of guestQemuArgs):
 * the serial output ends with that line after the tick lines, QMP reports SHUTDOWN with `guest: true` and reason
 * `guest-shutdown`, and QEMU then exits with code 0, or, with `-no-shutdown`, stops in the `shutdown` runstate with
 * the counter exactly at `powerOffAfterTicks`.
 *
 * QEMU starts paused (`-S`) and the test records every QMP event before `cont`: the guest powers off within a
 * fraction of a second of boot, and QEMU sends no event to a QMP session that is not yet negotiated.
 */
import { spawnSync } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  COUNTER_ADDRESS,
  DEFAULT_GUEST_PARAMS,
  PARAMS_OFFSET,
  POWER_OFF_LINE,
  buildGuest,
  decodeGuestParams,
  encodeGuestParams,
  guestQemuArgs,
} from '../../examples/guest/build-guest.js';
import type { GuestParams } from '../../examples/guest/build-guest.js';
import { isKemariError } from '../../src/errors.js';
import { startQemu } from '../../src/qemu/qemu-process.js';
import type { QemuProcess } from '../../src/qemu/qemu-process.js';
import type { QmpEvent } from '../../src/qemu/qmp-client.js';
import { HAS_QEMU, NO_QEMU_MESSAGE, QEMU_BINARY, readGuestWords, tempDir } from '../helpers/qemu.js';

const HAS_NASM = spawnSync('nasm', ['-v'], { stdio: 'ignore' }).status === 0;
const NO_NASM_MESSAGE = 'nasm not found: guest power-off tests skipped (apt-get install nasm)';
if (!HAS_NASM) console.warn(NO_NASM_MESSAGE);
else if (!HAS_QEMU) console.warn(NO_QEMU_MESSAGE);

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

function scratchDir(): string {
  const dir = tempDir();
  cleanups.push(dir.remove);
  return dir.path;
}

interface PoweredGuest {
  qemu: QemuProcess;
  /** Every QMP event, in arrival order, from before the guest started running. */
  events: QmpEvent[];
  serialPath: string;
}

/** Boots `imagePath` paused, starts recording QMP events, then lets it run. */
async function bootPaused(dir: string, imagePath: string, extraArgs: readonly string[] = []): Promise<PoweredGuest> {
  const serialPath = join(dir, 'serial.txt');
  const qemu = await startQemu({
    binary: QEMU_BINARY,
    args: [...guestQemuArgs(imagePath), '-serial', `file:${serialPath}`, '-S', ...extraArgs],
    qmpSocketPath: join(dir, 'qmp.sock'),
    startTimeoutMs: 20_000,
  });
  cleanups.push(() => qemu.kill('SIGKILL'));
  const events: QmpEvent[] = [];
  qemu.qmp.on('event', (event) => events.push(event));
  await qemu.qmp.execute('cont');
  return { qemu, events, serialPath };
}

/** The serial output split into lines: the banner first, then the guest's lines (the text must end with a newline). */
function serialLines(text: string): { banner: string; rest: string[] } {
  expect(text.endsWith('\n')).toBe(true);
  const [banner = '', ...rest] = text.slice(0, -1).split('\n');
  return { banner, rest };
}

const tickLines = (every: number, upTo: number): string[] =>
  Array.from({ length: Math.floor(upTo / every) }, (_, i) => `tick ${(i + 1) * every}`);

function expectGuestShutdown(event: QmpEvent | undefined): void {
  expect(event?.event).toBe('SHUTDOWN');
  expect(event?.data).toEqual({ guest: true, reason: 'guest-shutdown' });
}

describe.skipIf(!HAS_NASM)('guest powerOffAfterTicks: the parameter block (needs nasm)', () => {
  it('lives in formerly reserved bytes (0x28), so version 1 blocks without it still mean "never"', async () => {
    const dir = scratchDir();
    const params: GuestParams = { ...DEFAULT_GUEST_PARAMS, powerOffAfterTicks: 0xffff_ffff };
    const block = encodeGuestParams(params);
    expect(block.readUInt32LE(0x28)).toBe(0xffff_ffff);
    expect(block.readUInt16LE(4)).toBe(1);
    expect(decodeGuestParams(block)).toEqual(params);

    // Unset (the default) and 0 encode the same zero bytes as before the field existed, and decode without it.
    expect(encodeGuestParams(DEFAULT_GUEST_PARAMS)).toEqual(encodeGuestParams({ ...DEFAULT_GUEST_PARAMS, powerOffAfterTicks: 0 }));
    expect(encodeGuestParams(DEFAULT_GUEST_PARAMS).subarray(0x28).every((b) => b === 0)).toBe(true);
    expect(decodeGuestParams(encodeGuestParams({ ...DEFAULT_GUEST_PARAMS, powerOffAfterTicks: 0 }))).toEqual(DEFAULT_GUEST_PARAMS);
    expect(Object.keys(decodeGuestParams(encodeGuestParams(DEFAULT_GUEST_PARAMS)) ?? {})).not.toContain('powerOffAfterTicks');

    const { imagePath, params: applied } = await buildGuest({ powerOffAfterTicks: 7 }, dir);
    expect(applied.powerOffAfterTicks).toBe(7);
    const image = await readFile(imagePath);
    expect(decodeGuestParams(image.subarray(PARAMS_OFFSET))?.powerOffAfterTicks).toBe(7);

    for (const powerOffAfterTicks of [-1, 1.5, 2 ** 32]) {
      const error = await buildGuest({ powerOffAfterTicks }, dir).then(() => undefined, (e: unknown) => e);
      expect(isKemariError(error, 'KEMARI_INVALID_ARGUMENT'), String(powerOffAfterTicks)).toBe(true);
    }
  });
});

describe.skipIf(!HAS_NASM || !HAS_QEMU)('guest powerOffAfterTicks under QEMU (needs qemu-system-x86_64 and nasm)', () => {
  it('prints `power off` after the tick lines, QMP reports a guest SHUTDOWN, and QEMU exits with code 0', async () => {
    const dir = scratchDir();
    const N = 5;
    const { imagePath } = await buildGuest({ serialEveryTicks: 1, diskEveryTicks: 2, powerOffAfterTicks: N }, dir);
    const guest = await bootPaused(dir, imagePath);

    const exit = await guest.qemu.exited;
    expect(exit).toEqual({ code: 0, signal: null });
    const shutdowns = guest.events.filter((event) => event.event === 'SHUTDOWN');
    expect(shutdowns).toHaveLength(1);
    expectGuestShutdown(shutdowns[0]);

    const text = await readFile(guest.serialPath, 'latin1');
    expect(text.endsWith(`tick ${N}\n${POWER_OFF_LINE}`)).toBe(true);
    const { banner, rest } = serialLines(text);
    expect(banner).toMatch(new RegExp(`^kemari-guest 1 .* powerOffAfterTicks=${N}$`));
    expect(rest).toEqual([...tickLines(1, N), 'power off']);
  });

  it('with -no-shutdown: SHUTDOWN then STOP, runstate `shutdown`, the counter stays at powerOffAfterTicks', async () => {
    const dir = scratchDir();
    const N = 7;
    const { imagePath } = await buildGuest({ serialEveryTicks: 2, powerOffAfterTicks: N }, dir);
    const guest = await bootPaused(dir, imagePath, ['-no-shutdown']);
    const { qmp } = guest.qemu;

    const stopped = guest.events.some((event) => event.event === 'STOP') ? Promise.resolve() : qmp.waitForEvent('STOP', () => true, 20_000);
    await stopped;
    const names = guest.events.map((event) => event.event);
    expect(names.slice(names.indexOf('SHUTDOWN'))).toEqual(['SHUTDOWN', 'STOP']);
    expectGuestShutdown(guest.events.find((event) => event.event === 'SHUTDOWN'));
    expect(await qmp.execute('query-status')).toMatchObject({ running: false, status: 'shutdown' });

    // The guest powered off inside tick N, with interrupts off: its counter is exactly N, and stays there.
    const [low, high] = await readGuestWords(qmp, COUNTER_ADDRESS, 2);
    expect([low, high]).toEqual([N, 0]);
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(await readGuestWords(qmp, COUNTER_ADDRESS, 2)).toEqual([N, 0]);

    const text = await readFile(guest.serialPath, 'latin1');
    expect(serialLines(text).rest).toEqual([...tickLines(2, N), 'power off']);
  });
});
