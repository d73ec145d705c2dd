/** Regression tests for hostile or unlucky peers: each case once broke an invariant or crashed the standby. */
import { connect as netConnect } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { FrameType, KemariError, encodeFrameToBytes } from '../../src/index.js';
import { Primary } from '../../src/primary/primary.js';
import { Secondary } from '../../src/secondary/secondary.js';
import { WitnessArbiter } from '../../src/failover/witness-arbiter.js';
import { WitnessServer } from '../../src/failover/witness-server.js';
import type { CaptureOptions, EpochCapture, VmAdapter } from '../../src/vm/adapter.js';
import { SimulatedVm } from '../../src/vm/simulated-vm.js';
import { primaryHello } from '../../src/txn/hello-for.js';
import { ThrottleProxy } from '../helpers/throttle-proxy.js';

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function listen(options: Parameters<typeof Secondary.listen>[0] = {}) {
  const secondary = await Secondary.listen({ port: 0, ...options });
  cleanups.push(() => secondary.close());
  const errors: KemariError[] = [];
  secondary.on('error', (e: KemariError) => errors.push(e));
  return { secondary, errors };
}

/** A raw client that writes `bytes` and keeps the socket. */
async function rawClient(port: number, bytes?: Uint8Array) {
  const socket = netConnect(port, '127.0.0.1');
  await new Promise((r) => socket.once('connect', r));
  socket.on('error', () => {});
  cleanups.push(() => socket.destroy());
  if (bytes !== undefined) socket.write(bytes);
  return socket;
}

describe('hardening', () => {
  it('a HELLO announcing more memory than one buffer can hold is refused; the standby lives on', async () => {
    const { secondary, errors } = await listen({ memoryBytesMax: 2 ** 40 });
    const vm = new SimulatedVm({ memoryBytes: 1 << 20 });
    const hello = { ...primaryHello(vm, 'huge', []), memoryBytes: 2 ** 33 };
    await rawClient(secondary.port, encodeFrameToBytes({ type: FrameType.HELLO, txn: 0, seq: 0, body: hello }));
    await sleep(100);
    expect(errors.map((e) => e.code)).toContain('KEMARI_HELLO_MISMATCH');
    expect(secondary.state).toBe('listening');
    const primary = await Primary.start({ vm, secondary: { host: '127.0.0.1', port: secondary.port } });
    cleanups.push(() => primary.close());
    expect(primary.state).toBe('protected');
  });

  it('a silent connection neither blocks the real primary nor lingers past the HELLO deadline', async () => {
    const { secondary } = await listen({ helloTimeoutMs: 200 });
    const squatter = await rawClient(secondary.port);
    const closed = new Promise((r) => squatter.once('close', r));
    const vm = new SimulatedVm({ memoryBytes: 1 << 20 });
    const primary = await Primary.start({ vm, secondary: { host: '127.0.0.1', port: secondary.port } });
    cleanups.push(() => primary.close());
    expect(primary.state).toBe('protected');
    await closed;
  });

  it('a stray HELLO that never commits does not pin the secondary to its session', async () => {
    const { secondary } = await listen();
    const stray = new SimulatedVm({ memoryBytes: 2 << 20 });
    const socket = await rawClient(secondary.port, encodeFrameToBytes({ type: FrameType.HELLO, txn: 0, seq: 0, body: primaryHello(stray, 'stray', []) }));
    await sleep(50);
    socket.destroy();
    await sleep(50);
    const vm = new SimulatedVm({ memoryBytes: 1 << 20 });
    const primary = await Primary.start({ vm, sessionId: 'real', secondary: { host: '127.0.0.1', port: secondary.port } });
    cleanups.push(() => primary.close());
    expect(primary.state).toBe('protected');
  });

  it('FAILOVER from a session that committed nothing is ignored', async () => {
    const { secondary, errors } = await listen();
    const vm = new SimulatedVm({ memoryBytes: 1 << 20 });
    const primary = await Primary.start({ vm, sessionId: 's', secondary: { host: '127.0.0.1', port: secondary.port } });
    primary.close();
    await sleep(50);
    const promoted: unknown[] = [];
    secondary.on('promoted', (p) => promoted.push(p));
    const hello = primaryHello(vm, 's', []);
    await rawClient(
      secondary.port,
      Buffer.concat([
        encodeFrameToBytes({ type: FrameType.HELLO, txn: 0, seq: 0, body: hello }),
        encodeFrameToBytes({ type: FrameType.FAILOVER, txn: 0, seq: 0, body: { committedTxn: 1, generation: 0, reason: 'forged' } }),
      ]),
    );
    await sleep(100);
    expect(promoted).toEqual([]);
    expect(errors.map((e) => e.code)).toContain('KEMARI_PROTOCOL');
  });

  it('STAND_DOWN from a session that replicated nothing is not confirmed: the standby stays ready to take over', async () => {
    const { secondary, errors } = await listen();
    const vm = new SimulatedVm({ memoryBytes: 1 << 20 });
    const primary = await Primary.start({ vm, sessionId: 's', secondary: { host: '127.0.0.1', port: secondary.port } });
    primary.close();
    await sleep(50);
    const committedTxn = secondary.committedTxn;
    expect(committedTxn).toBeGreaterThan(0);
    const socket = await rawClient(
      secondary.port,
      Buffer.concat([
        encodeFrameToBytes({ type: FrameType.HELLO, txn: 0, seq: 0, body: primaryHello(vm, 's', []) }),
        // The very epoch the replica holds: only the missing replication tells it apart from a real stand-down.
        encodeFrameToBytes({ type: FrameType.STAND_DOWN, txn: 0, seq: 0, body: { committedTxn, reason: 'forged' } }),
      ]),
    );
    const received: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => received.push(chunk));
    await sleep(100);
    expect(secondary.state).toBe('replicating');
    expect(errors.map((e) => e.code)).toContain('KEMARI_PROTOCOL');
    // No confirmation went back: only the HELLO reply and heartbeats (frame types 1 and 11).
    const bytes = Buffer.concat(received);
    const types: number[] = [];
    for (let at = 0; at + 32 <= bytes.byteLength; at += 32 + bytes.readUInt32LE(at + 20)) types.push(bytes[at + 5]!);
    expect(types.length).toBeGreaterThan(0);
    expect(types.filter((t) => t !== FrameType.HELLO && t !== FrameType.HEARTBEAT)).toEqual([]);
  });

  it('a long full sync over a slow link is not mistaken for a dead secondary (the secondary speaks on its own)', async () => {
    const { secondary } = await listen({ heartbeat: { intervalMs: 50, missedMax: 4 } });
    const proxy = await ThrottleProxy.start(secondary.port, 8 << 20);
    cleanups.push(() => proxy.close());
    const vm = new SimulatedVm({ memoryBytes: 8 << 20 });
    vm.write(0, new Uint8Array(8 << 20).fill(3)); // 8 MiB at 8 MiB/s: about a second, five times the timeout
    const primary = await Primary.start({ vm, secondary: { host: '127.0.0.1', port: proxy.port }, heartbeat: { intervalMs: 50, missedMax: 4 } });
    cleanups.push(() => primary.close());
    expect(primary.state).toBe('protected');
  });

  it('a start refused after taking the lease gives the lease back at once', async () => {
    const witness = await WitnessServer.listen();
    cleanups.push(() => witness.close());
    const { secondary } = await listen({ sessionId: 'other' });
    const arbiter = await WitnessArbiter.connect({ port: witness.port });
    cleanups.push(() => arbiter.close());
    const vm = new SimulatedVm({ memoryBytes: 1 << 20 });
    await expect(
      Primary.start({ vm, sessionId: 'mine', arbiter, leaseTtlMs: 10_000, secondary: { host: '127.0.0.1', port: secondary.port } }),
    ).rejects.toMatchObject({ code: 'KEMARI_HELLO_MISMATCH' });
    await sleep(50);
    const next = await WitnessArbiter.connect({ port: witness.port });
    cleanups.push(() => next.close());
    expect(await next.acquire('mine', 'someone-else', 1000)).toBeDefined();
  });

  it("under 'pause', a secondary lost during a slow capture leaves the VM paused", async () => {
    const { secondary } = await listen();
    const inner = new SimulatedVm({ memoryBytes: 1 << 20 });
    let slow = false;
    const vm: VmAdapter = {
      memoryBytes: inner.memoryBytes,
      pageBytes: inner.pageBytes,
      deviceNames: inner.deviceNames,
      disks: inner.disks,
      pause: () => inner.pause(),
      resume: () => inner.resume(),
      capture: async (o: CaptureOptions): Promise<EpochCapture> => {
        if (slow) await sleep(150);
        return inner.capture(o);
      },
    };
    const primary = await Primary.start({ vm, secondary: { host: '127.0.0.1', port: secondary.port }, onSecondaryLoss: 'pause' });
    cleanups.push(() => primary.close());
    slow = true;
    inner.write(0, Uint8Array.of(1));
    void primary.tap.output('c', Uint8Array.of(1)).catch(() => {});
    await sleep(20); // the capture is under way
    await secondary.close();
    await sleep(300);
    expect(primary.state).toBe('paused');
    expect(inner.paused).toBe(true);
  });
});
