import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { classifyQemuEvent, isGuestShutdown, watchQemuFaults } from '../../src/qemu/qemu-faults.js';
import type { QemuFault } from '../../src/qemu/qemu-faults.js';
import { HAS_QEMU, NO_QEMU_MESSAGE, QemuFleet, tempDir } from '../helpers/qemu.js';

const event = (name: string, data: Record<string, unknown> = {}) => ({ event: name, data, timestamp: { seconds: 0, microseconds: 0 } });

describe('classifyQemuEvent', () => {
  it('fatal: panics, disk errors, stops kemari did not ask for, host-caused shutdowns; warnings: what the guest meant', () => {
    expect(classifyQemuEvent(event('GUEST_PANICKED', { action: 'pause' }), false)?.severity).toBe('fatal');
    expect(classifyQemuEvent(event('BLOCK_IO_ERROR', { device: 'ide0-hd0', operation: 'write' }), false)?.severity).toBe('fatal');
    expect(classifyQemuEvent(event('BLOCK_IO_ERROR', { device: 'ide0-hd0', operation: 'write', nospace: true }), false)?.severity).toBe('warning');
    expect(classifyQemuEvent(event('STOP'), false)?.severity).toBe('fatal');
    expect(classifyQemuEvent(event('STOP'), true)).toBeUndefined();
    expect(classifyQemuEvent(event('SHUTDOWN', { guest: false, reason: 'host-signal' }), false)?.severity).toBe('fatal');
    expect(classifyQemuEvent(event('SHUTDOWN', { guest: true, reason: 'guest-shutdown' }), false)?.severity).toBe('warning');
    expect(classifyQemuEvent(event('RESET', { guest: true, reason: 'guest-reset' }), false)?.severity).toBe('warning');
    expect(classifyQemuEvent(event('RESUME'), false)).toBeUndefined();
    // Only a power-off ends protection: a reset or panic turned into a shutdown (-no-reboot, a panic action) does not.
    expect(isGuestShutdown(event('SHUTDOWN', { guest: true, reason: 'guest-shutdown' }))).toBe(true);
    expect(isGuestShutdown(event('SHUTDOWN', { guest: true, reason: 'guest-reset' }))).toBe(false);
    expect(isGuestShutdown(event('SHUTDOWN', { guest: true, reason: 'guest-panic' }))).toBe(false);
    expect(isGuestShutdown(event('SHUTDOWN', { guest: false, reason: 'host-signal' }))).toBe(false);
    expect(classifyQemuEvent(event('MIGRATION', { status: 'active' }), false)).toBeUndefined();
  });
});

describe.skipIf(!HAS_QEMU)(`QEMU faults from a real QEMU (${HAS_QEMU ? 'qemu present' : NO_QEMU_MESSAGE})`, () => {
  let dir: ReturnType<typeof tempDir>;
  let fleet: QemuFleet;
  beforeEach(() => {
    dir = tempDir();
    fleet = new QemuFleet(() => dir.path);
  });
  afterEach(async () => {
    await fleet.killAll();
    dir.remove();
  });

  const until = async (faults: QemuFault[], count: number) => {
    const deadline = performance.now() + 10_000;
    while (faults.length < count && performance.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    return faults;
  };

  it('a guest panic (pvpanic) is fatal; our own stop is not', async () => {
    const qemu = await fleet.start(['-device', 'pvpanic', '-action', 'panic=pause']);
    const faults: QemuFault[] = [];
    let ours = false;
    const stop = watchQemuFaults(qemu, (f) => faults.push(f), () => ours);
    ours = true;
    await qemu.qmp.execute('stop');
    await qemu.qmp.execute('cont');
    ours = false;
    await qemu.qmp.execute('human-monitor-command', { 'command-line': 'o /b 0x505 1' });
    await until(faults, 1);
    expect(faults[0]).toMatchObject({ source: 'qmp', severity: 'fatal' });
    expect(faults[0]!.detail).toContain('GUEST_PANICKED');
    stop();
  });

  it('QEMU killed with SIGKILL is fatal, reported once', async () => {
    const qemu = await fleet.start();
    const faults: QemuFault[] = [];
    watchQemuFaults(qemu, (f) => faults.push(f), () => false);
    process.kill(qemu.pid, 'SIGKILL');
    await qemu.exited;
    await until(faults, 1);
    await new Promise((r) => setTimeout(r, 100));
    expect(faults).toHaveLength(1);
    expect(faults[0]).toMatchObject({ source: 'qemu', severity: 'fatal' });
  });

  it('a guest that powers off under -no-shutdown: a warning, the STOP after it is expected, and onGuestStopped hears of it', async () => {
    const qemu = await fleet.start(['-no-shutdown']);
    const faults: QemuFault[] = [];
    const stopped: string[] = [];
    watchQemuFaults(qemu, (f) => faults.push(f), () => false, (detail) => stopped.push(detail));
    const stop = qemu.qmp.waitForEvent('STOP');
    let stopSeen = false;
    void stop.then(() => (stopSeen = true), () => {});
    // The ACPI S5 write a powering-off guest makes (PM1a_CNT of the pc machine's PIIX4): QEMU takes it for the guest's
    // own shutdown. Repeated until it takes: the port exists once SeaBIOS has set the PM base, early in its POST.
    for (let tries = 0; !stopSeen && tries < 50; tries++) {
      await qemu.qmp.execute('human-monitor-command', { 'command-line': 'o /w 0x604 0x2000' });
      await new Promise((r) => setTimeout(r, 100));
    }
    await stop;
    await new Promise((r) => setTimeout(r, 100));
    expect(faults).toEqual([{ source: 'qmp', severity: 'warning', detail: 'SHUTDOWN (guest-shutdown)' }]);
    expect(stopped).toEqual(['SHUTDOWN (guest-shutdown)']);
  });

  it('a stop QEMU decided on its own (stop from another client) is fatal', async () => {
    const qemu = await fleet.start();
    const faults: QemuFault[] = [];
    watchQemuFaults(qemu, (f) => faults.push(f), () => false);
    await qemu.qmp.execute('stop');
    await until(faults, 1);
    expect(faults[0]!.detail).toContain('STOP');
  });
});
