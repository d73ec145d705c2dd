import { afterEach, describe, expect, it } from 'vitest';
import { KemariError } from '../../src/index.js';
import { Primary } from '../../src/primary/primary.js';
import type { PrimaryCapture, PostMortem } from '../../src/primary/primary.js';
import { Secondary } from '../../src/secondary/secondary.js';
import type { Promotion } from '../../src/secondary/secondary.js';
import { digestHex } from '../../src/replica/state-digest.js';
import { SimulatedVm } from '../../src/vm/simulated-vm.js';
import { Workload } from '../../src/vm/workload.js';
import { PartitionProxy } from '../helpers/partition-proxy.js';

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

const HEARTBEAT = { intervalMs: 20, missedMax: 5 };

async function protectedPair(options: { onSecondaryLoss?: 'hold' | 'pause' | 'continue'; viaProxy?: boolean; secondaryMissedMax?: number } = {}) {
  const secondary = await Secondary.listen({ port: 0, verify: true, heartbeat: { ...HEARTBEAT, missedMax: options.secondaryMissedMax ?? HEARTBEAT.missedMax } });
  cleanups.push(() => secondary.close());
  let port = secondary.port;
  let proxy: PartitionProxy | undefined;
  if (options.viaProxy === true) {
    proxy = await PartitionProxy.start(secondary.port);
    cleanups.push(() => proxy!.close());
    port = proxy.port;
  }
  const vm = new SimulatedVm({ memoryBytes: 1 << 20, seed: 21 });
  const primary = await Primary.start({
    vm,
    secondary: { host: '127.0.0.1', port },
    verify: true,
    heartbeat: HEARTBEAT,
    ...(options.onSecondaryLoss === undefined ? {} : { onSecondaryLoss: options.onSecondaryLoss }),
  });
  cleanups.push(() => primary.close());
  const digests = new Map<number, string>();
  primary.on('capture', (c: PrimaryCapture) => digests.set(c.txn, digestHex(c.digest!)));
  return { secondary, primary, vm, proxy, digests };
}

const once = <T>(emitter: { once(event: string, listener: (value: T) => void): unknown }, event: string): Promise<T> =>
  new Promise((resolve) => emitter.once(event, resolve));

describe('event-driven failover (seed 000)', () => {
  it('a fatal fault quiesces the primary and the secondary promotes at once, to a committed epoch', async () => {
    const { secondary, primary, vm, digests } = await protectedPair();
    const workload = new Workload(vm, { seed: 2, outputEvery: 1, output: (c, d) => void primary.tap.output(c, d).catch(() => {}) });
    for (let i = 0; i < 20; i++) {
      workload.step();
      await new Promise((r) => setImmediate(r));
    }
    const held = primary.tap.output('serial0', Buffer.from('after the fault\n')).then(
      () => 'released',
      (e: KemariError) => e.code,
    );
    const promoted = once<Promotion>(secondary, 'promoted');
    const startMs = performance.now();
    await primary.reportFault({ source: 'qmp', severity: 'fatal', detail: 'GUEST_PANICKED' });
    const promotion = await promoted;
    const failoverMs = performance.now() - startMs;

    expect(primary.state).toBe('quiesced');
    expect(vm.paused).toBe(true); // kept for post-mortem, not killed
    const postMortem = primary.postMortem as PostMortem;
    expect(postMortem.fault.detail).toBe('GUEST_PANICKED');
    expect(postMortem.vm).toBe(vm);
    expect(await held).toBe('KEMARI_QUIESCED');
    expect(promotion.txn).toBeGreaterThanOrEqual(postMortem.ackedTxn);
    expect(digestHex(promotion.vm.digest())).toBe(digests.get(promotion.txn));
    expect(secondary.state).toBe('promoted');
    // Reported, not asserted: event-driven failover does not wait for a heartbeat timeout.
    console.log(`reportFault → secondary promoted: ${failoverMs.toFixed(1)} ms (heartbeat timeout would be ${HEARTBEAT.intervalMs * HEARTBEAT.missedMax} ms)`);
  });

  it('a warning is reported and changes nothing', async () => {
    const { primary } = await protectedPair();
    const faults: unknown[] = [];
    primary.on('fault', (f) => faults.push(f));
    await primary.reportFault({ source: 'mce', severity: 'warning', detail: 'corrected error' });
    expect(faults).toHaveLength(1);
    expect(primary.state).toBe('protected');
    await expect(primary.reportFault({ source: 'x', severity: 'maybe' } as never)).rejects.toMatchObject({ code: 'KEMARI_INVALID_ARGUMENT' });
  });
});

describe('loss of the secondary', () => {
  it("'hold' (default): outputs stay held, neither released nor rejected", async () => {
    const { secondary, primary } = await protectedPair();
    const released: unknown[] = [];
    primary.on('release', (r) => released.push(r));
    const unprotected = once<{ error: KemariError; policy: string }>(primary, 'unprotected');
    await secondary.close();
    const event = await unprotected;
    expect(event.policy).toBe('hold');
    const held = primary.tap.output('net0', Uint8Array.of(1));
    const outcome = await Promise.race([held.then(() => 'released', () => 'rejected'), new Promise((r) => setTimeout(() => r('held'), 100))]);
    expect(outcome).toBe('held');
    expect(released).toEqual([]);
    expect(primary.state).toBe('unprotected');
  });

  it("'pause': the VM is paused until protected again", async () => {
    const { secondary, primary, vm } = await protectedPair({ onSecondaryLoss: 'pause' });
    const unprotected = once(primary, 'unprotected');
    await secondary.close();
    await unprotected;
    expect(primary.state).toBe('paused');
    expect(vm.paused).toBe(true);
  });

  it("'continue': held outputs are released (txn 0) and new ones pass through", async () => {
    const { secondary, primary } = await protectedPair({ onSecondaryLoss: 'continue', viaProxy: true });
    const released: Array<{ txn: number }> = [];
    primary.on('release', (r: { txn: number }) => released.push(r));
    const unprotected = once(primary, 'unprotected');
    const held = primary.tap.output('net0', Uint8Array.of(1));
    await secondary.close();
    await unprotected;
    await held;
    await primary.tap.output('net0', Uint8Array.of(2));
    expect(released.map((r) => r.txn)).toEqual([0, 0]);
  });
});

describe('heartbeats', () => {
  it('a partition (silence, sockets open) is detected on both sides within intervalMs * missedMax plus a margin', async () => {
    // The secondary waits twice as long, so each side's own detector is what fires (not the other's close).
    const { secondary, primary, proxy } = await protectedPair({ viaProxy: true, secondaryMissedMax: HEARTBEAT.missedMax * 2 });
    const lostOnSecondary = once<KemariError>(secondary, 'primaryLost');
    const unprotected = once<{ error: KemariError }>(primary, 'unprotected');
    const startMs = performance.now();
    proxy!.partition();
    const [secondaryError, primaryEvent] = await Promise.all([lostOnSecondary, unprotected]);
    const detectedMs = performance.now() - startMs;
    expect(secondaryError.code).toBe('KEMARI_PEER_LOST');
    expect(primaryEvent.error.code).toBe('KEMARI_PEER_LOST');
    // A partition is not a fault: the replica is kept, nobody promoted on silence alone.
    expect(secondary.state).toBe('listening');
    expect(secondary.replica?.hasCommittedEpoch).toBe(true);
    console.log(`partition detected after ${detectedMs.toFixed(0)} ms (timeout ${HEARTBEAT.intervalMs * HEARTBEAT.missedMax} ms)`);
  });

  it('an idle but healthy pair is never suspected', async () => {
    const { secondary, primary } = await protectedPair();
    const lost: unknown[] = [];
    secondary.on('primaryLost', (e) => lost.push(e));
    primary.on('unprotected', (e) => lost.push(e));
    await new Promise((r) => setTimeout(r, HEARTBEAT.intervalMs * HEARTBEAT.missedMax * 3));
    expect(lost).toEqual([]);
    expect(primary.state).toBe('protected');
  });
});

describe('a VM that dies', () => {
  /** A SimulatedVm whose every control call fails once it is "killed", as a SIGKILLed QEMU's do. */
  function mortal(vm: SimulatedVm) {
    let dead = false;
    const check = () => {
      if (dead) throw new KemariError('KEMARI_QEMU_EXITED', 'the VM process was killed');
    };
    const adapter = {
      memoryBytes: vm.memoryBytes,
      pageBytes: vm.pageBytes,
      deviceNames: vm.deviceNames,
      disks: vm.disks,
      pause: () => (check(), vm.pause()),
      resume: () => (check(), vm.resume()),
      capture: (o: Parameters<SimulatedVm['capture']>[0]) => (check(), vm.capture(o)),
    };
    return { adapter, kill: () => (dead = true) };
  }

  async function pairWith(vm: ReturnType<typeof mortal>['adapter']) {
    const secondary = await Secondary.listen({ port: 0, heartbeat: HEARTBEAT });
    cleanups.push(() => secondary.close());
    const primary = await Primary.start({ vm, secondary: { host: '127.0.0.1', port: secondary.port }, heartbeat: HEARTBEAT, sync: { mode: 'periodic', intervalMs: 10 }, reconnectDelayMs: 0 });
    cleanups.push(() => primary.close());
    return { secondary, primary };
  }

  it('a fatal fault about a VM that can no longer be paused still hands over at once', async () => {
    const { adapter, kill } = mortal(new SimulatedVm({ memoryBytes: 1 << 18, seed: 5 }));
    const { secondary, primary } = await pairWith(adapter);
    const promoted = once<Promotion>(secondary, 'promoted');
    kill();
    await primary.reportFault({ source: 'qmp', severity: 'fatal', detail: 'QEMU exited' });
    expect(primary.state).toBe('quiesced');
    expect((await promoted).txn).toBeGreaterThan(0);
  });

  it('a capture that finds the VM gone is a fatal fault: the secondary promotes without waiting for heartbeats', async () => {
    const { adapter, kill } = mortal(new SimulatedVm({ memoryBytes: 1 << 18, seed: 6 }));
    const { secondary, primary } = await pairWith(adapter);
    const promoted = once<Promotion>(secondary, 'promoted');
    const quiesced = once<PostMortem>(primary, 'quiesced');
    kill();
    expect((await quiesced).fault).toMatchObject({ source: 'vm', severity: 'fatal' });
    await promoted;
  });
});

describe('settleOutputs', () => {
  it('output handed over while the VM is paused for a capture belongs to that epoch', async () => {
    const secondary = await Secondary.listen({ port: 0 });
    cleanups.push(() => secondary.close());
    const vm = new SimulatedVm({ memoryBytes: 1 << 18, seed: 8 });
    let primary: Primary | undefined;
    let armed = false;
    let during: { paused: boolean; capture: number } | undefined;
    let late: Promise<void> | undefined;
    const captures: PrimaryCapture[] = [];
    primary = await Primary.start({
      vm,
      secondary: { host: '127.0.0.1', port: secondary.port },
      sync: { mode: 'periodic', intervalMs: 5 },
      onCapture: (c) => captures.push(c),
      settleOutputs: async () => {
        if (!armed || primary === undefined) return;
        armed = false;
        // The capture in progress is the next one reported.
        during = { paused: vm.paused, capture: captures.length };
        // What a tap reads from QEMU's socket after the stop: the guest wrote it during the epoch being captured.
        late = primary.tap.output('serial0', Uint8Array.of(42));
        await new Promise((r) => setImmediate(r));
      },
    });
    cleanups.push(() => primary!.close());
    const released = new Promise<{ txn: number }>((resolve) => primary!.once('release', resolve));
    armed = true;
    const { txn } = await released;
    await late;
    expect(during?.paused).toBe(true);
    const capture = captures[during!.capture]!;
    expect(capture.outputs).toBe(1);
    expect(capture.txn).toBe(txn);
  });
});
