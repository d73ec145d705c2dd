/**
 * Stand-down: a guest that stops on its own (powers itself off) ends protection, and the standby must not bring it
 * back. Checked over real sockets with a SimulatedVm: the guest's last outputs are released (a last epoch of the
 * paused VM), the standby holds exactly that final state and confirms, and it then never promotes by itself, not
 * on the primary's silence, nor with an arbiter once the lease is free; the control cases show the same setup
 * without a stand-down does promote. Failures (not protected, no confirmation, a loss) leave the primary protecting
 * with its VM held paused.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { KemariError } from '../../src/errors.js';
import { Primary } from '../../src/primary/primary.js';
import type { StoodDownPrimary } from '../../src/primary/primary.js';
import { Secondary } from '../../src/secondary/secondary.js';
import type { StoodDown } from '../../src/secondary/secondary.js';
import { WitnessArbiter } from '../../src/failover/witness-arbiter.js';
import { WitnessServer } from '../../src/failover/witness-server.js';
import { digestHex } from '../../src/replica/state-digest.js';
import { connect } from '../../src/transport/index.js';
import { memoryPair } from '../../src/transport/memory.js';
import { SimulatedVm } from '../../src/vm/simulated-vm.js';
import { Workload } from '../../src/vm/workload.js';
import { FrameType, HEADER_BYTES, HeaderOffset } from '../../src/wire/header.js';
import type { Connection } from '../../src/transport/connection.js';
import { encodeFrame } from '../../src/wire/encoder.js';
import { decodeStandDown } from '../../src/wire/bodies/stand-down.js';
import { ForwardingConnection } from '../helpers/forwarding-connection.js';

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

const HEARTBEAT = { intervalMs: 20, missedMax: 4 };
const LEASE_TTL_MS = 300;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
async function waitUntil(cond: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!cond()) {
    if (performance.now() > deadline) throw new Error('condition not met in time');
    await sleep(5);
  }
}

/** Drops every write that carries a STAND_DOWN frame: a secondary that never hears it (or never answers). */
class StandDownDropping extends ForwardingConnection {
  dropped = 0;
  override write(chunks: readonly Uint8Array[]): boolean {
    const isStandDown = (c: Uint8Array): boolean => c.byteLength >= HEADER_BYTES && c[0] === 0x4b && c[HeaderOffset.TYPE] === FrameType.STAND_DOWN;
    if (chunks.some(isStandDown)) {
      this.dropped += 1;
      return true;
    }
    return super.write(chunks);
  }
}

/** A SimulatedVm whose captures fail as a QEMU's do once the process is gone. */
class DyingVm extends SimulatedVm {
  gone = false;
  override capture(options: Parameters<SimulatedVm['capture']>[0]): ReturnType<SimulatedVm['capture']> {
    if (this.gone) throw new KemariError('KEMARI_QEMU_EXITED', 'QEMU exited (code 0)');
    return super.capture(options);
  }
}

/** Rewrites every STAND_DOWN to name `committedTxn + delta`: a primary confused about the final epoch. */
class StandDownRewriting extends ForwardingConnection {
  constructor(
    inner: Connection,
    private readonly delta: number,
  ) {
    super(inner);
  }
  override write(chunks: readonly Uint8Array[]): boolean {
    const out: Uint8Array[] = [];
    for (let i = 0; i < chunks.length; i++) {
      const c = chunks[i]!;
      if (c.byteLength === HEADER_BYTES && c[0] === 0x4b && c[HeaderOffset.TYPE] === FrameType.STAND_DOWN) {
        const decoded = decodeStandDown(chunks[i + 1]!);
        const frame = encodeFrame({ type: FrameType.STAND_DOWN, txn: 0, seq: 0, body: { ...decoded, committedTxn: decoded.committedTxn + this.delta } });
        out.push(frame.header, ...frame.body);
        i += 1;
      } else out.push(c);
    }
    return super.write(out);
  }
}

async function setup(
  options: { witness?: boolean; dropStandDown?: boolean | 'first'; rewriteStandDownTxn?: number; intervalMs?: number; vm?: SimulatedVm; onSecondaryLoss?: 'hold' | 'pause' } = {},
) {
  let arbiters: { primary: WitnessArbiter; secondary: WitnessArbiter } | undefined;
  if (options.witness === true) {
    const witness = await WitnessServer.listen();
    cleanups.push(() => witness.close());
    const primaryArbiter = await WitnessArbiter.connect({ port: witness.port, timeoutMs: 200 });
    const secondaryArbiter = await WitnessArbiter.connect({ port: witness.port, timeoutMs: 200 });
    cleanups.push(() => primaryArbiter.close(), () => secondaryArbiter.close());
    arbiters = { primary: primaryArbiter, secondary: secondaryArbiter };
  }
  const secondary = await Secondary.listen({
    port: 0,
    sessionId: 'vm-sd',
    heartbeat: HEARTBEAT,
    verify: true,
    ...(arbiters === undefined ? {} : { arbiter: arbiters.secondary, leaseTtlMs: LEASE_TTL_MS }),
  });
  cleanups.push(() => secondary.close());
  const vm = options.vm ?? new SimulatedVm({ memoryBytes: 1 << 20, seed: 41 });
  let dropping: StandDownDropping | undefined;
  let connections = 0;
  const primary = await Primary.start({
    vm,
    sessionId: 'vm-sd',
    heartbeat: HEARTBEAT,
    verify: true,
    sync: { mode: 'periodic', intervalMs: options.intervalMs ?? 5 },
    connector: async () => {
      const connection = await connect({ host: '127.0.0.1', port: secondary.port });
      connections += 1;
      const drop = options.dropStandDown === true || (options.dropStandDown === 'first' && connections === 1);
      if (options.rewriteStandDownTxn !== undefined) return new StandDownRewriting(connection, options.rewriteStandDownTxn);
      return drop ? (dropping = new StandDownDropping(connection)) : connection;
    },
    reconnectDelayMs: 50,
    ...(options.onSecondaryLoss === undefined ? {} : { onSecondaryLoss: options.onSecondaryLoss }),
    ...(arbiters === undefined ? {} : { arbiter: arbiters.primary, leaseTtlMs: LEASE_TTL_MS }),
  });
  cleanups.push(() => primary.close());
  const promoted: unknown[] = [];
  secondary.on('promoted', (p) => promoted.push(p));
  return { secondary, primary, vm, promoted, dropping: () => dropping };
}

describe('stand-down: a guest that stops on its own is not resumed by the standby', () => {
  it('releases the last outputs, leaves the standby holding the final state, confirms, and closes the primary', async () => {
    // Checkpoints an hour apart: after the full sync, only the stand-down's last epoch carries anything.
    const { secondary, primary, vm } = await setup({ intervalMs: 3_600_000 });
    const synced = secondary.committedTxn;
    new Workload(vm, { seed: 5, outputEvery: 0 }).run(20);
    // The guest's last words, tapped but in no epoch yet when it stops: only a last epoch releases them.
    const last = primary.tap.output('serial0', Buffer.from('power off\n'));
    const events: { primary?: StoodDownPrimary; secondary?: StoodDown } = {};
    primary.on('stood-down', (e: StoodDownPrimary) => (events.primary = e));
    secondary.on('stood-down', (e: StoodDown) => (events.secondary = e));

    const result = await primary.standDown('SHUTDOWN (guest-shutdown)');

    await expect(last).resolves.toBeUndefined();
    expect(result.reason).toBe('SHUTDOWN (guest-shutdown)');
    expect(result.txn).toBe(secondary.committedTxn);
    expect(result.txn).toBe(synced + 1);
    expect(events.primary).toEqual(result);
    expect(events.secondary).toEqual({ txn: result.txn, reason: 'SHUTDOWN (guest-shutdown)' });
    expect(primary.state).toBe('closed');
    expect(secondary.state).toBe('stood-down');
    // The final state: the VM as it stopped (held paused since), memory, devices and disks of one epoch.
    expect(vm.paused).toBe(true);
    expect(digestHex(secondary.replica!.digest())).toBe(digestHex(vm.digest()));
    expect(primary.stats().outputsHeld).toBe(0);
  });

  it('without an arbiter: the primary falling silent afterwards promotes nothing; a new primary is refused; promote() is still the operator’s to call', async () => {
    const { secondary, primary, promoted } = await setup();
    const { txn } = await primary.standDown('guest powered off');
    await sleep(HEARTBEAT.intervalMs * HEARTBEAT.missedMax * 3);
    expect(promoted).toEqual([]);
    expect(secondary.state).toBe('stood-down');
    await expect(
      Primary.start({ vm: new SimulatedVm({ memoryBytes: 1 << 20, seed: 41 }), sessionId: 'vm-sd', secondary: { host: '127.0.0.1', port: secondary.port }, connectTimeoutMs: 2000 }),
    ).rejects.toBeInstanceOf(KemariError);
    const promotion = await secondary.promote();
    expect(promotion.txn).toBe(txn);
  });

  it('with a witness: once the primary has stood down and let the lease go, the standby never takes it (control: a plain close does promote)', async () => {
    const stood = await setup({ witness: true });
    await stood.primary.standDown('guest powered off');
    await sleep(LEASE_TTL_MS * 4);
    expect(stood.promoted).toEqual([]);
    expect(stood.secondary.state).toBe('stood-down');

    const control = await setup({ witness: true });
    const promotedNow = new Promise((resolve) => control.secondary.once('promoted', resolve));
    control.primary.close();
    await promotedNow;
    expect(control.promoted).toHaveLength(1);
  });

  it('finalEpoch false (the VM can no longer be captured): epochs already sent are acked and released, outputs of none are discarded', async () => {
    const { secondary, primary, vm } = await setup();
    new Workload(vm, { seed: 6, outputEvery: 0 }).run(10);
    await primary.tap.output('net0', Buffer.from('sent'));
    // Paused, and the stand-down called in the same turn: no checkpoint comes between this output and it.
    vm.pause();
    const orphan = primary.tap.output('net0', Buffer.from('never captured'));
    orphan.catch(() => {});
    const committed = secondary.committedTxn;
    const result = await primary.standDown('QEMU exited after a guest shutdown', { finalEpoch: false });
    expect(result.txn).toBeGreaterThanOrEqual(committed);
    expect(result.txn).toBe(secondary.committedTxn);
    await expect(orphan).rejects.toMatchObject({ code: 'KEMARI_CLOSED' });
    expect(secondary.state).toBe('stood-down');
  });

  it('a VM found gone by the last capture (its QEMU exited after the guest powered off): the stand-down goes on without that epoch, no failover', async () => {
    const vm = new DyingVm({ memoryBytes: 1 << 20, seed: 42 });
    const { secondary, primary, promoted } = await setup({ vm, intervalMs: 3_600_000 });
    const quiesced: unknown[] = [];
    primary.on('quiesced', (p) => quiesced.push(p));
    const committed = secondary.committedTxn;
    vm.gone = true;
    const result = await primary.standDown('SHUTDOWN (guest-shutdown)');
    expect(result.txn).toBe(committed);
    expect(secondary.state).toBe('stood-down');
    expect(quiesced).toEqual([]);
    expect(promoted).toEqual([]);
  });

  it('refuses when not protected: KEMARI_NOT_PROTECTED, and a second call while one runs: KEMARI_BUSY', async () => {
    const { primary } = await setup();
    const first = primary.standDown('one');
    await expect(primary.standDown('two')).rejects.toMatchObject({ code: 'KEMARI_BUSY' });
    await first;
    await expect(primary.standDown('again')).rejects.toMatchObject({ code: 'KEMARI_NOT_PROTECTED' });
    await expect(primary.standDown(42 as unknown as string)).rejects.toMatchObject({ code: 'KEMARI_INVALID_ARGUMENT' });
  });

  it('no confirmation within timeoutMs: KEMARI_TIMEOUT; the primary goes on protecting with its VM held paused, and the standby may still take over', async () => {
    const { secondary, primary, vm, dropping } = await setup({ dropStandDown: true });
    const error = await primary.standDown('guest powered off', { timeoutMs: 200 }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'KEMARI_TIMEOUT' });
    expect(dropping()!.dropped).toBe(1);
    expect(primary.state).toBe('protected');
    expect(secondary.state).toBe('replicating');
    // Checkpoints go on (of a VM that stays paused: nothing resumes a guest that stopped on its own).
    const before = primary.stats().ackedTxn;
    await new Promise((resolve) => primary.once('commit', resolve));
    expect(primary.stats().ackedTxn).toBeGreaterThan(before);
    expect(vm.paused).toBe(true);
  });

  it('a fatal fault during the stand-down quiesces the primary and rejects the stand-down with it (the standby takes over after all)', async () => {
    const { secondary, primary } = await setup({ dropStandDown: true });
    const pending = primary.standDown('guest powered off', { timeoutMs: 20_000 });
    const promotedNow = new Promise((resolve) => secondary.once('promoted', resolve));
    await new Promise((resolve) => setTimeout(resolve, 50));
    await primary.reportFault({ source: 'test', severity: 'fatal', detail: 'the host failed meanwhile' });
    await expect(pending).rejects.toMatchObject({ code: 'KEMARI_QUIESCED' });
    expect(primary.state).toBe('quiesced');
    await promotedNow;
  });

  it('a session lost during the stand-down: it waits for protection to come back, sends STAND_DOWN again, and is confirmed; the VM stays paused', async () => {
    const { secondary, primary, vm, dropping } = await setup({ dropStandDown: 'first' });
    const events: string[] = [];
    primary.on('unprotected', () => events.push('unprotected'));
    primary.on('reprotected', () => events.push('reprotected'));
    const pending = primary.standDown('guest powered off', { timeoutMs: 5000 });
    // The first STAND_DOWN is lost with its connection.
    await waitUntil(() => dropping()?.dropped === 1);
    dropping()!.close();
    const result = await pending;
    expect(events).toEqual(['unprotected', 'reprotected']);
    expect(result.txn).toBe(secondary.committedTxn);
    expect(secondary.state).toBe('stood-down');
    expect(vm.paused).toBe(true);
  });

  it('called while the secondary is lost (the pause policy): the VM is held, protection comes back without resuming it, then the stand-down', async () => {
    const { secondary, primary, vm, dropping } = await setup({ dropStandDown: 'first', onSecondaryLoss: 'pause' });
    const lost = new Promise((resolve) => primary.once('unprotected', resolve));
    dropping()!.close();
    await lost;
    expect(primary.state).toBe('paused');
    const resumes: boolean[] = [];
    const resume = vm.resume.bind(vm);
    vm.resume = () => {
      resumes.push(true);
      resume();
    };
    const result = await primary.standDown('guest powered off', { timeoutMs: 5000 });
    expect(result.txn).toBe(secondary.committedTxn);
    expect(secondary.state).toBe('stood-down');
    expect(resumes).toEqual([]);
    expect(vm.paused).toBe(true);
  });

  it('a STAND_DOWN naming another epoch is not confirmed: the secondary reports it and goes on replicating', async () => {
    const { secondary, primary } = await setup({ rewriteStandDownTxn: 1 });
    const errors: KemariError[] = [];
    secondary.on('error', (e: KemariError) => errors.push(e));
    await expect(primary.standDown('guest powered off', { timeoutMs: 300 })).rejects.toMatchObject({ code: 'KEMARI_TIMEOUT' });
    expect(errors.map((e) => e.code)).toContain('KEMARI_PROTOCOL');
    expect(secondary.state).toBe('replicating');
  });

  it('a secondary closed as soon as it stood down still gets its confirmation out (in-memory transport, no kernel buffer)', async () => {
    let onConnection: ((connection: Connection) => void) | undefined;
    const secondary = await Secondary.listen({ sessionId: 'vm-mem', heartbeat: HEARTBEAT, acceptor: async (accept) => ((onConnection = accept), { close: async () => {} }) });
    cleanups.push(() => secondary.close());
    secondary.once('stood-down', () => void secondary.close());
    const primary = await Primary.start({
      vm: new SimulatedVm({ memoryBytes: 1 << 20, seed: 43 }),
      sessionId: 'vm-mem',
      heartbeat: HEARTBEAT,
      connector: async () => {
        const [a, b] = memoryPair();
        onConnection!(b);
        return a;
      },
    });
    cleanups.push(() => primary.close());
    const result = await primary.standDown('guest powered off', { timeoutMs: 2000 });
    expect(result.txn).toBeGreaterThan(0);
  });

  it('a reason over 1024 bytes is refused before anything happens', async () => {
    const { primary, vm } = await setup();
    await expect(primary.standDown('x'.repeat(1025))).rejects.toMatchObject({ code: 'KEMARI_INVALID_ARGUMENT' });
    expect(primary.state).toBe('protected');
    // Not held: checkpoints go on and each resumes the VM (a held VM would stay paused after the next one).
    for (let i = 0; i < 2; i++) await new Promise((resolve) => primary.once('commit', resolve));
    await vi.waitFor(() => expect(vm.paused).toBe(false), { timeout: 2000, interval: 1 });
  });
});
