/**
 * Stand-down: a guest that stops on its own (powers itself off) ends protection, and the standby must not bring it
 * back. Checked over real sockets with a SimulatedVm: the guest's last outputs are released (a last epoch of the
 * paused VM), the standby holds exactly that final state and confirms, and it then never promotes by itself, not
 * on the primary's silence, nor with an arbiter once the lease is free; the control cases show the same setup
 * without a stand-down does promote. Failures (not protected, no confirmation, a loss) leave the primary protecting
 * with its VM held paused.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { KemariError } from '../../src/errors.js';
import { Primary } from '../../src/primary/primary.js';
import type { StoodDownPrimary } from '../../src/primary/primary.js';
import { Secondary } from '../../src/secondary/secondary.js';
import type { StoodDown } from '../../src/secondary/secondary.js';
import { WitnessArbiter } from '../../src/failover/witness-arbiter.js';
import { WitnessServer } from '../../src/failover/witness-server.js';
import { digestHex } from '../../src/replica/state-digest.js';
import { connect } from '../../src/transport/index.js';
import { SimulatedVm } from '../../src/vm/simulated-vm.js';
import { Workload } from '../../src/vm/workload.js';
import { FrameType, HEADER_BYTES, HeaderOffset } from '../../src/wire/header.js';
import { ForwardingConnection } from '../helpers/forwarding-connection.js';

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

const HEARTBEAT = { intervalMs: 20, missedMax: 4 };
const LEASE_TTL_MS = 300;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

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

async function setup(options: { witness?: boolean; dropStandDown?: boolean; intervalMs?: number; vm?: SimulatedVm } = {}) {
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
  const primary = await Primary.start({
    vm,
    sessionId: 'vm-sd',
    heartbeat: HEARTBEAT,
    verify: true,
    sync: { mode: 'periodic', intervalMs: options.intervalMs ?? 5 },
    connector: async () => {
      const connection = await connect({ host: '127.0.0.1', port: secondary.port });
      return options.dropStandDown === true ? (dropping = new StandDownDropping(connection)) : connection;
    },
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
    // Hold the checkpoints off, then tap an output no epoch carries.
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

  it('a lost session during the stand-down rejects it with the loss, and the VM stays paused', async () => {
    const { secondary, primary, vm } = await setup({ dropStandDown: true });
    const pending = primary.standDown('guest powered off', { timeoutMs: 5000 });
    await new Promise((resolve) => setTimeout(resolve, 50));
    await secondary.close();
    await expect(pending).rejects.toMatchObject({ code: expect.stringMatching(/^KEMARI_(PEER_LOST|CONNECTION_CLOSED|NACKED)$/) });
    expect(vm.paused).toBe(true);
    expect(['unprotected', 'paused', 'connecting']).toContain(primary.state);
  });
});
