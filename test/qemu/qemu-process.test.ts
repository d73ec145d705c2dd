/**
 * The QEMU process wrapper: start, reap, start timeout, start failure with stderr, and QMP failing when the process
 * exits. Every process started here is killed by PID in afterEach.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { KemariError } from '../../src/errors.js';
import { startQemu } from '../../src/qemu/qemu-process.js';
import { GUEST_ARGS, HAS_QEMU, NO_QEMU_MESSAGE, QemuFleet, tempDir } from '../helpers/qemu.js';

async function rejection(promise: Promise<unknown>): Promise<KemariError> {
  try {
    await promise;
  } catch (error) {
    if (error instanceof KemariError) return error;
    throw error;
  }
  throw new Error('expected a rejection');
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

describe('startQemu arguments', () => {
  it('refuses a relative QMP socket path', async () => {
    const error = await rejection(startQemu({ args: [], qmpSocketPath: 'qmp.sock' }));
    expect(error.code).toBe('KEMARI_INVALID_ARGUMENT');
  });
});

describe.skipIf(!HAS_QEMU)(`QEMU process${HAS_QEMU ? '' : ` (${NO_QEMU_MESSAGE})`}`, () => {
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

  it('starts with QMP ready, and kill() reaps the process and fails QMP with KEMARI_QEMU_EXITED', async () => {
    const qemu = await fleet.start();
    expect(isAlive(qemu.pid)).toBe(true);
    expect(await qemu.qmp.execute('query-status')).toMatchObject({ running: true });
    const exit = await qemu.kill();
    expect(exit.signal).toBe('SIGKILL');
    expect(isAlive(qemu.pid)).toBe(false);
    const closed = await qemu.qmp.closed;
    expect(closed.code).toBe('KEMARI_QEMU_EXITED');
    expect((await rejection(qemu.qmp.execute('query-status'))).code).toBe('KEMARI_QEMU_EXITED');
    expect(await qemu.kill()).toEqual(exit);
  });

  it('reports a clean QMP quit as an exit with code 0', async () => {
    const qemu = await fleet.start();
    const shutdown = qemu.qmp.waitForEvent('SHUTDOWN');
    await qemu.qmp.execute('quit').catch(() => {});
    await shutdown.catch(() => {});
    expect(await qemu.exited).toEqual({ code: 0, signal: null });
    expect((await qemu.qmp.closed).code).toBe('KEMARI_QEMU_EXITED');
  });

  it('fails with KEMARI_QEMU_EXITED and the stderr reason when QEMU refuses its arguments', async () => {
    const error = await rejection(startQemu({ args: [...GUEST_ARGS, '-no-such-option'], qmpSocketPath: join(dir.path, 'bad.sock') }));
    expect(error.code).toBe('KEMARI_QEMU_EXITED');
    expect(String(error.details['stderr'])).toContain('no-such-option');
    expect(error.details['code']).toBe(1);
  });

  it('fails with KEMARI_QEMU_EXITED when the binary does not exist', async () => {
    const error = await rejection(startQemu({ binary: '/nonexistent/qemu', args: [], qmpSocketPath: join(dir.path, 'none.sock') }));
    expect(error.code).toBe('KEMARI_QEMU_EXITED');
  });

  it('kills the process and fails with KEMARI_TIMEOUT when QMP is not ready in time', async () => {
    const qmpSocketPath = join(dir.path, 'slow.sock');
    const error = await rejection(startQemu({ args: GUEST_ARGS, qmpSocketPath, startTimeoutMs: 1 }));
    expect(error.code).toBe('KEMARI_TIMEOUT');
    const pid = error.details['pid'] as number;
    expect(typeof pid).toBe('number');
    expect(isAlive(pid)).toBe(false);
    // The socket file of the dead QEMU is removed.
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(existsSync(qmpSocketPath)).toBe(false);
  });
});
