import { afterEach, describe, expect, it } from 'vitest';
import { Primary } from '../../src/primary/primary.js';
import type { PrimaryCapture } from '../../src/primary/primary.js';
import { Secondary } from '../../src/secondary/secondary.js';
import type { Promotion } from '../../src/secondary/secondary.js';
import { WitnessArbiter } from '../../src/failover/witness-arbiter.js';
import { WitnessServer } from '../../src/failover/witness-server.js';
import { digestHex } from '../../src/replica/state-digest.js';
import type { ReleasedOutput } from '../../src/tap/event-tap.js';
import { SimulatedVm } from '../../src/vm/simulated-vm.js';
import { CuttableArbiter } from '../helpers/cuttable-arbiter.js';
import { PartitionProxy } from '../helpers/partition-proxy.js';

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

const HEARTBEAT = { intervalMs: 20, missedMax: 4 };
const LEASE_TTL_MS = 300;

async function setup(onSecondaryLoss: 'hold' | 'continue') {
  const witness = await WitnessServer.listen();
  cleanups.push(() => witness.close());
  const arbiterFor = async () => {
    const a = new CuttableArbiter(await WitnessArbiter.connect({ port: witness.port, timeoutMs: 200 }));
    cleanups.push(() => a.close());
    return a;
  };
  const secondaryArbiter = await arbiterFor();
  const primaryArbiter = await arbiterFor();
  const secondary = await Secondary.listen({ port: 0, sessionId: 'vm-sw', heartbeat: HEARTBEAT, arbiter: secondaryArbiter, leaseTtlMs: LEASE_TTL_MS, verify: true });
  cleanups.push(() => secondary.close());
  const proxy = await PartitionProxy.start(secondary.port);
  cleanups.push(() => proxy.close());
  const vm = new SimulatedVm({ memoryBytes: 1 << 20, seed: 31 });
  const primary = await Primary.start({
    vm,
    sessionId: 'vm-sw',
    secondary: { host: '127.0.0.1', port: proxy.port },
    heartbeat: HEARTBEAT,
    arbiter: primaryArbiter,
    leaseTtlMs: LEASE_TTL_MS,
    onSecondaryLoss,
    verify: true,
  });
  cleanups.push(() => primary.close());
  const releases: Array<{ atMs: number; output: ReleasedOutput }> = [];
  primary.on('release', (output: ReleasedOutput) => releases.push({ atMs: performance.now(), output }));
  const digests = new Map<number, string>();
  primary.on('capture', (c: PrimaryCapture) => digests.set(c.txn, digestHex(c.digest!)));
  return { secondary, primary, proxy, primaryArbiter, vm, releases, digests, witness };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('single writer with a witness', () => {
  it('a second primary cannot start while the lease is held: KEMARI_LEASE_DENIED', async () => {
    const { secondary, witness } = await setup('hold');
    const arbiter = await WitnessArbiter.connect({ port: witness.port });
    cleanups.push(() => arbiter.close());
    const rival = Primary.start({
      vm: new SimulatedVm({ memoryBytes: 1 << 20 }),
      sessionId: 'vm-sw',
      secondary: { host: '127.0.0.1', port: secondary.port },
      arbiter,
      holder: 'rival',
    });
    await expect(rival).rejects.toMatchObject({ code: 'KEMARI_LEASE_DENIED' });
  });

  it('a cut replication link with both sides alive: the primary keeps the lease and alone releases output; the secondary never promotes', async () => {
    const { secondary, primary, proxy, releases } = await setup('continue');
    const promoted: unknown[] = [];
    secondary.on('promoted', (p) => promoted.push(p));
    const unprotected = new Promise((r) => primary.once('unprotected', r));
    proxy.partition();
    await unprotected;
    const out = primary.tap.output('net0', Buffer.from('still the writer'));
    await out;
    await sleep(LEASE_TTL_MS * 3);
    expect(promoted).toEqual([]);
    expect(secondary.state).toBe('listening');
    expect(releases.at(-1)!.output.txn).toBe(0); // released unprotected, under the lease
    expect(primary.state).toBe('unprotected');
  });

  it('a primary cut off from everything: the secondary takes the lease and promotes; the old primary releases nothing once it could have been superseded, and quiesces when it hears it lost the lease', async () => {
    const { secondary, primary, proxy, primaryArbiter, releases, digests } = await setup('continue');
    await primary.tap.output('serial0', Buffer.from('before the cut\n'));
    const promoted = new Promise<Promotion>((r) => secondary.once('promoted', r));
    const cutAtMs = performance.now();
    primaryArbiter.cut = true;
    proxy.partition();
    const promotion = await promoted;
    const promotedAtMs = performance.now();
    const promotedAfterMs = promotedAtMs - cutAtMs;
    // Tapped now, with the lease long lapsed on the primary's clock: it must wait, and never leave.
    const late = primary.tap.output('serial0', Buffer.from('never seen\n')).then(() => 'released', (e: { code: string }) => e.code);
    await sleep(50);
    expect(promotion.lease?.generation).toBe(2);
    expect(digestHex(promotion.vm.digest())).toBe(digests.get(promotion.txn));
    // The old primary heals: its renewal is refused, it quiesces, and nothing it held ever leaves.
    const quiesced = new Promise((r) => primary.once('quiesced', r));
    primaryArbiter.cut = false;
    await quiesced;
    expect(primary.state).toBe('quiesced');
    expect(await late).toBe('KEMARI_QUIESCED');
    // Single writer: whatever the old primary released, it released before the secondary could take over.
    expect(releases.filter((r) => r.atMs >= promotedAtMs)).toEqual([]);
    expect(releases.every((r) => r.atMs < cutAtMs + LEASE_TTL_MS)).toBe(true);
    console.log(`cut off → secondary promoted after ${promotedAfterMs.toFixed(0)} ms (heartbeat timeout ${HEARTBEAT.intervalMs * HEARTBEAT.missedMax} ms + lease ttl ${LEASE_TTL_MS} ms)`);
  });
});
