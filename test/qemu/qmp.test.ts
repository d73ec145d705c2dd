/**
 * QMP: the sans-I/O core and line framing without QEMU, then the client against a real QEMU: handshake, commands,
 * events, error replies, timeouts, and what pending callers see when QEMU is killed.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { KemariError, isKemariError } from '../../src/errors.js';
import { QmpClient } from '../../src/qemu/qmp-client.js';
import { QmpCore } from '../../src/qemu/qmp-core.js';
import { QmpLineSplitter } from '../../src/qemu/qmp-line-splitter.js';
import { HAS_QEMU, NO_QEMU_MESSAGE, QemuFleet, tempDir } from '../helpers/qemu.js';

async function rejection(promise: Promise<unknown>): Promise<KemariError> {
  try {
    await promise;
  } catch (error) {
    if (error instanceof KemariError) return error;
    throw error;
  }
  throw new Error('expected a rejection');
}

describe('QmpLineSplitter', () => {
  it('splits CRLF lines at any chunk boundary', () => {
    const text = Buffer.from('{"a":1}\r\n{"b":2}\r\n{"c":');
    for (let size = 1; size <= text.length; size++) {
      const splitter = new QmpLineSplitter(64);
      const lines: string[] = [];
      for (let at = 0; at < text.length; at += size) lines.push(...splitter.push(text.subarray(at, at + size)));
      expect(lines).toEqual(['{"a":1}', '{"b":2}']);
      expect(splitter.bufferedBytes).toBe(5);
    }
  });

  it('refuses a line longer than lineBytesMax instead of buffering it', () => {
    const splitter = new QmpLineSplitter(16);
    splitter.push(Buffer.from('0123456789'));
    let error: unknown;
    try {
      splitter.push(Buffer.from('0123456789'));
    } catch (caught) {
      error = caught;
    }
    expect(isKemariError(error, 'KEMARI_QMP_ERROR')).toBe(true);
    expect((error as KemariError).details['reason']).toBe('line-too-long');
  });
});

describe('QmpCore', () => {
  it('matches replies by id, not by order, and passes events through', () => {
    const core = new QmpCore('t-');
    expect(core.receive('{"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": ""}, "capabilities": ["oob"]}}')).toEqual([
      { type: 'greeting', greeting: { version: { qemu: { major: 7, minor: 2, micro: 0 }, package: '' }, capabilities: ['oob'] } },
    ]);
    const a = core.command('query-status');
    const b = core.command('stop', { x: 1 });
    expect(JSON.parse(b.line)).toEqual({ execute: 'stop', id: b.id, arguments: { x: 1 } });
    expect(a.id).not.toBe(b.id);
    expect(core.receive(`{"return": {}, "id": "${b.id}"}`)).toEqual([{ type: 'resolve', id: b.id, command: 'stop', value: {} }]);
    const event = core.receive('{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}');
    expect(event).toEqual([{ type: 'event', event: { event: 'STOP', data: {}, timestamp: { seconds: 1, microseconds: 2 } } }]);
    const [reply] = core.receive(`{"error": {"class": "GenericError", "desc": "nope"}, "id": "${a.id}"}`);
    expect(reply?.type).toBe('reject');
    if (reply?.type === 'reject') {
      expect(reply.error.code).toBe('KEMARI_QMP_ERROR');
      expect(reply.error.details).toEqual({ class: 'GenericError', desc: 'nope', command: 'query-status' });
    }
    expect(core.pendingCount).toBe(0);
  });

  it('expires a command and reports its late reply as unmatched', () => {
    const core = new QmpCore();
    const { id } = core.command('query-status');
    const expired = core.expire(id, 50);
    expect(expired?.type === 'reject' && expired.error.code).toBe('KEMARI_TIMEOUT');
    expect(core.expire(id, 50)).toBeUndefined();
    expect(core.receive(`{"return": {}, "id": "${id}"}`)[0]?.type).toBe('unmatched');
  });

  it('rejects every pending command with the close reason, then refuses new ones', () => {
    const core = new QmpCore();
    core.command('a');
    core.command('b');
    const actions = core.close(new KemariError('KEMARI_QEMU_EXITED', 'gone', { details: { code: 9 } }));
    expect(actions.map((action) => action.type === 'reject' && [action.command, action.error.code, action.error.details['code']])).toEqual([
      ['a', 'KEMARI_QEMU_EXITED', 9],
      ['b', 'KEMARI_QEMU_EXITED', 9],
    ]);
    expect(() => core.command('c')).toThrow(KemariError);
    expect(core.close(new KemariError('KEMARI_QEMU_EXITED', 'again'))).toEqual([]);
  });

  it('treats non-JSON and unknown shapes as fatal protocol errors', () => {
    for (const line of ['not json', '[1,2]', '{"hello": 1}', '{"event": "X", "data": 5}']) {
      expect(() => new QmpCore().receive(line)).toThrow(expect.objectContaining({ code: 'KEMARI_QMP_ERROR' }));
    }
    expect(() => new QmpCore().command('')).toThrow(expect.objectContaining({ code: 'KEMARI_INVALID_ARGUMENT' }));
  });
});

describe.skipIf(!HAS_QEMU)(`QmpClient against QEMU${HAS_QEMU ? '' : ` (${NO_QEMU_MESSAGE})`}`, () => {
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

  it('negotiates, executes commands and delivers STOP and RESUME events', async () => {
    const qemu = await fleet.start();
    const { qmp } = qemu;
    expect(qmp.greeting.version.qemu.major).toBeGreaterThanOrEqual(7);
    expect(await qmp.execute('query-status')).toMatchObject({ running: true, status: 'running' });

    const seen: string[] = [];
    qmp.on('event', (event) => seen.push(event.event));
    const stopped = qmp.waitForEvent('STOP');
    await qmp.execute('stop');
    const stop = await stopped;
    expect(stop.timestamp.seconds).toBeGreaterThan(0);
    expect(await qmp.execute('query-status')).toMatchObject({ running: false, status: 'paused' });

    const resumed = qmp.waitForEvent('RESUME');
    await qmp.execute('cont');
    await resumed;
    expect(seen).toEqual(['STOP', 'RESUME']);

    // Concurrent commands are matched by id.
    const results = await Promise.all([qmp.execute('query-status'), qmp.execute('query-name'), qmp.execute('query-kvm')]);
    expect(results[2]).toMatchObject({ enabled: false });
  });

  it('rejects a QEMU error reply with KEMARI_QMP_ERROR and keeps the session usable', async () => {
    const { qmp } = await fleet.start();
    const missing = await rejection(qmp.execute('no-such-command'));
    expect(missing.code).toBe('KEMARI_QMP_ERROR');
    expect(missing.details).toMatchObject({ class: 'CommandNotFound', command: 'no-such-command' });
    const badArgs = await rejection(qmp.execute('migrate-set-parameters', { 'max-bandwidth': 'fast' }));
    expect(badArgs.details).toMatchObject({ class: 'GenericError', command: 'migrate-set-parameters' });
    expect(String(badArgs.details['desc'])).toContain('max-bandwidth');
    expect(await qmp.execute('query-status')).toMatchObject({ running: true });
  });

  it('times out a command QEMU cannot answer, ignores the late reply, and waits for events with a timeout', async () => {
    const qemu = await fleet.start();
    const { qmp } = qemu;
    expect((await rejection(qmp.waitForEvent('SHUTDOWN', () => true, 50))).code).toBe('KEMARI_TIMEOUT');
    process.kill(qemu.pid, 'SIGSTOP');
    const timedOut = await rejection(qmp.execute('query-status', undefined, { timeoutMs: 150 }));
    expect(timedOut.code).toBe('KEMARI_TIMEOUT');
    expect(timedOut.details).toMatchObject({ command: 'query-status', timeoutMs: 150 });
    process.kill(qemu.pid, 'SIGCONT');
    expect(await qmp.execute('query-status')).toMatchObject({ running: true });
  });

  it('rejects pending commands and event waiters with KEMARI_QEMU_EXITED when QEMU is SIGKILLed', async () => {
    const qemu = await fleet.start();
    const { qmp } = qemu;
    // Freeze QEMU so the command stays pending, then kill it.
    process.kill(qemu.pid, 'SIGSTOP');
    const pending = qmp.execute('query-status', undefined, { timeoutMs: 30_000 });
    const waiting = qmp.waitForEvent('RESUME', () => true, 30_000);
    const pendingError = rejection(pending);
    const waitingError = rejection(waiting);
    process.kill(qemu.pid, 'SIGKILL');
    expect((await pendingError).code).toBe('KEMARI_QEMU_EXITED');
    expect((await pendingError).details['command']).toBe('query-status');
    expect((await waitingError).code).toBe('KEMARI_QEMU_EXITED');
    expect(await qemu.exited).toEqual({ code: null, signal: 'SIGKILL' });
    expect(qmp.isClosed).toBe(true);
    expect((await rejection(qmp.execute('query-status'))).code).toBe('KEMARI_QEMU_EXITED');
    expect((await qmp.closed).code).toBe('KEMARI_QEMU_EXITED');
  });

  it('fails to connect with KEMARI_CONNECT_FAILED when nothing listens', async () => {
    const error = await rejection(QmpClient.connect(`${dir.path}/nothing.sock`));
    expect(error.code).toBe('KEMARI_CONNECT_FAILED');
  });
});
