/**
 * The pieces of the CLI's QEMU mode that need no QEMU: the fault guard's ordering (QEMU's death is reported before
 * the failure it caused reaches the Primary; a pause of a dead QEMU succeeds), the late sink, and the serial
 * outside (JSON lines, hold and release around a replay, a file).
 */
import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { LateSink } from '../../src/cli/late-sink.js';
import { DEATH_CONFIRM_MS, QemuFaultGuard } from '../../src/cli/qemu-fault-guard.js';
import { Reporter } from '../../src/cli/reporter.js';
import { SerialOutside } from '../../src/cli/serial-outside.js';
import { KemariError } from '../../src/errors.js';
import type { Fault, Primary } from '../../src/primary/primary.js';
import type { QemuExit } from '../../src/qemu/qemu-process.js';
import type { QemuVm } from '../../src/qemu/qemu-vm.js';
import { tempDir } from '../helpers/qemu.js';

/** A stand-in for a QemuVm whose QEMU can be killed: QMP closes, the process exits, pending operations fail. */
function fakeQemu() {
  let closeQmp!: (reason: KemariError) => void;
  let exit!: (exit: QemuExit) => void;
  const qmp = Object.assign(new EventEmitter(), { closed: new Promise<KemariError>((resolve) => (closeQmp = resolve)) });
  const exited = new Promise<QemuExit>((resolve) => (exit = resolve));
  let failCapture!: (error: KemariError) => void;
  const dead = new KemariError('KEMARI_QEMU_EXITED', 'QEMU exited');
  let alive = true;
  const vm = {
    memoryBytes: 1 << 20,
    pageBytes: 4096,
    deviceNames: ['qemu'],
    disks: [],
    qmp,
    process: { exited, pid: 1 },
    stoppedByKemari: false,
    pause: async () => {
      if (!alive) throw dead;
    },
    resume: async () => {
      if (!alive) throw dead;
    },
    capture: () => new Promise((_, reject) => (failCapture = reject)),
  };
  return {
    vm: vm as unknown as QemuVm,
    kill: () => {
      alive = false;
      // The migration socket closes first (seen as a malformed stream), QMP and the exit a little later.
      failCapture?.(new KemariError('KEMARI_MIGRATION_FORMAT', 'the checkpoint stream ended early'));
      setTimeout(() => {
        closeQmp(dead);
        exit({ code: null, signal: 'SIGKILL' });
      }, 20);
    },
    failCapture: (error: KemariError) => failCapture(error),
  };
}

function receiver(log: string[]) {
  return {
    reportFault: async (fault: Fault) => {
      log.push(`fault ${fault.severity} ${fault.source}`);
    },
  };
}

describe('QemuFaultGuard', () => {
  it("reports QEMU's death before the capture it broke fails (as KEMARI_QEMU_EXITED, the stream's error its cause), once, and a pause of the dead QEMU succeeds", async () => {
    const qemu = fakeQemu();
    const guard = new QemuFaultGuard(qemu.vm);
    const log: string[] = [];
    guard.watch(receiver(log));
    const capture = guard.capture({ full: false, digest: false }).then(
      () => log.push('captured'),
      (error: KemariError) => log.push(`capture failed ${error.code} (${(error.cause as KemariError).code})`),
    );
    qemu.kill();
    await capture;
    const expected = ['fault fatal qemu', 'capture failed KEMARI_QEMU_EXITED (KEMARI_MIGRATION_FORMAT)'];
    expect(log).toEqual(expected);
    await guard.pause();
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(log).toEqual(expected);
    await expect(guard.resume()).rejects.toMatchObject({ code: 'KEMARI_QEMU_EXITED' });
  });

  it('a capture that fails while QEMU lives is only a failure, after waiting a moment for a death', async () => {
    const qemu = fakeQemu();
    const guard = new QemuFaultGuard(qemu.vm);
    const log: string[] = [];
    guard.watch(receiver(log));
    const started = performance.now();
    const capture = guard.capture({ full: false, digest: false });
    qemu.failCapture(new KemariError('KEMARI_TIMEOUT', 'slow'));
    await expect(capture).rejects.toMatchObject({ code: 'KEMARI_TIMEOUT' });
    expect(performance.now() - started).toBeGreaterThanOrEqual(DEATH_CONFIRM_MS - 5);
    expect(log).toEqual([]);
  });
});

describe('LateSink', () => {
  it('holds outputs until the primary exists, then hands them over in order', async () => {
    const late = new LateSink();
    const got: string[] = [];
    const first = late.sink('serial0', Buffer.from('a'));
    const second = late.sink('serial0', Buffer.from('b'));
    const primary = { tap: { output: async (channel: string, data: Uint8Array) => void got.push(`${channel}:${Buffer.from(data).toString()}`) } } as unknown as Primary;
    late.bind(primary);
    await Promise.all([first, second, late.sink('serial0', Buffer.from('c'))]);
    expect(got).toEqual(['serial0:a', 'serial0:b', 'serial0:c']);
  });
});

describe('SerialOutside', () => {
  function io() {
    const out: string[] = [];
    return { out, io: { stdout: { write: (t: string) => out.push(t), isTTY: false }, stderr: { write: () => true } } };
  }

  it('with --json: one serial event per line, the replay before what was held, the partial line at close', async () => {
    const { out, io: cli } = io();
    const outside = await SerialOutside.open({ reporter: new Reporter(cli, true), json: true, io: cli, source: 'standby' });
    outside.hold();
    outside.write(Buffer.from('tick 30\ntick'));
    expect(out).toEqual([]);
    outside.release([Buffer.from('tick 20\n')]);
    outside.write(Buffer.from(' 40\ntick 5'));
    await outside.close();
    const events = out.join('').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(events.map((e) => [e.event, e.line, e.partial])).toEqual([
      ['serial', 'tick 20', undefined],
      ['serial', 'tick 30', undefined],
      ['serial', 'tick 40', undefined],
      ['serial', 'tick 5', true],
    ]);
    expect(outside.bytesOut).toBe(30);
  });

  it('raw bytes to stdout, or appended to --serial-out', async () => {
    const { out, io: cli } = io();
    const raw = await SerialOutside.open({ reporter: new Reporter(cli, false), json: false, io: cli, source: 'primary' });
    raw.write(Buffer.from('tick 10\n'));
    expect(out).toEqual(['tick 10\n']);
    const dir = tempDir();
    try {
      const path = join(dir.path, 'serial.txt');
      for (const text of ['tick 10\n', 'tick 20\n']) {
        const file = await SerialOutside.open({ file: path, reporter: new Reporter(cli, true), json: true, io: cli, source: 'primary' });
        file.write(Buffer.from(text));
        await file.close();
      }
      expect(readFileSync(path, 'utf8')).toBe('tick 10\ntick 20\n');
      await expect(SerialOutside.open({ file: join(dir.path, 'no', 'such', 'dir'), reporter: new Reporter(cli, true), json: true, io: cli, source: 'primary' })).rejects.toMatchObject({
        code: 'KEMARI_INVALID_ARGUMENT',
      });
    } finally {
      dir.remove();
    }
  });
});
