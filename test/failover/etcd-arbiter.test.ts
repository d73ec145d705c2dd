import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { EtcdArbiter } from '../../src/failover/etcd-arbiter.js';
import { Primary } from '../../src/primary/primary.js';
import { Secondary } from '../../src/secondary/secondary.js';
import type { ReleasedOutput } from '../../src/tap/event-tap.js';
import { SimulatedVm } from '../../src/vm/simulated-vm.js';
import { PartitionProxy } from '../helpers/partition-proxy.js';
import { startEtcd } from '../helpers/etcd.js';

let etcd: Awaited<ReturnType<typeof startEtcd>>;
beforeAll(async () => {
  etcd = await startEtcd();
}, 30_000);
afterAll(async () => {
  await etcd?.stop();
});
const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});
const arbiter = (): EtcdArbiter => {
  const a = new EtcdArbiter({ hosts: etcd.hosts, timeoutMs: 2000 });
  cleanups.push(() => a.close());
  return a;
};
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('EtcdArbiter against a real etcd', () => {
  it('grants one holder at a time; a renewal keeps it; after expiry the other gets it with a higher generation', async () => {
    const a = arbiter();
    const b = arbiter();
    const lease = (await a.acquire('vm-e1', 'primary', 1000))!;
    expect(lease.generation).toBeGreaterThan(0);
    expect(await b.acquire('vm-e1', 'secondary', 1000)).toBeUndefined();
    expect(await a.renew(lease)).toEqual(lease);
    // Stop renewing: etcd expires the key (its minimum ttl may exceed the one asked for).
    const deadline = Date.now() + 10_000;
    let taken;
    while ((taken = await b.acquire('vm-e1', 'secondary', 1000)) === undefined && Date.now() < deadline) await sleep(200);
    expect(taken).toBeDefined();
    expect(taken!.generation).toBeGreaterThan(lease.generation);
    expect(await a.renew(lease)).toBeUndefined();
  });

  it('a released lease can be taken at once; another process can adopt and renew a lease by its generation', async () => {
    const a = arbiter();
    const lease = (await a.acquire('vm-e2', 'primary', 5000))!;
    await a.release(lease);
    const b = arbiter();
    const taken = (await b.acquire('vm-e2', 'secondary', 5000))!;
    expect(taken.generation).toBeGreaterThan(lease.generation);
    const c = arbiter(); // a new primary process adopting the promoted secondary's lease
    expect(await c.renew(taken)).toEqual(taken);
  });

  it('an unreachable etcd is KEMARI_ARBITER_UNAVAILABLE', async () => {
    const dead = new EtcdArbiter({ hosts: ['127.0.0.1:1'], timeoutMs: 300 });
    cleanups.push(() => dead.close());
    await expect(dead.acquire('vm-e3', 'p', 1000)).rejects.toMatchObject({ code: 'KEMARI_ARBITER_UNAVAILABLE' });
  });

  it('a cut replication link with both sides alive: exactly one side (the primary, holding the lease) releases output', async () => {
    const secondary = await Secondary.listen({ port: 0, sessionId: 'vm-e4', arbiter: arbiter(), leaseTtlMs: 1000, heartbeat: { intervalMs: 20, missedMax: 5 } });
    cleanups.push(() => secondary.close());
    const proxy = await PartitionProxy.start(secondary.port);
    cleanups.push(() => proxy.close());
    const vm = new SimulatedVm({ memoryBytes: 1 << 20 });
    const primary = await Primary.start({
      vm,
      sessionId: 'vm-e4',
      secondary: { host: '127.0.0.1', port: proxy.port },
      arbiter: arbiter(),
      leaseTtlMs: 1000,
      heartbeat: { intervalMs: 20, missedMax: 5 },
      onSecondaryLoss: 'continue',
    });
    cleanups.push(() => primary.close());
    const released: ReleasedOutput[] = [];
    primary.on('release', (r: ReleasedOutput) => released.push(r));
    const promoted: unknown[] = [];
    secondary.on('promoted', (p) => promoted.push(p));
    const lost = new Promise((r) => primary.once('unprotected', r));
    proxy.partition();
    await lost;
    for (let i = 0; i < 5; i++) await primary.tap.output('net0', Uint8Array.of(i));
    await sleep(3000); // longer than the lease ttl: the secondary keeps trying and keeps being denied
    for (let i = 0; i < 5; i++) await primary.tap.output('net0', Uint8Array.of(i));
    expect(promoted).toEqual([]);
    expect(released.length).toBe(10);
    expect(primary.state).toBe('unprotected');
  });
});
