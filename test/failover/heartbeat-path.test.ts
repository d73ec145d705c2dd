import { afterEach, describe, expect, it } from 'vitest';
import type { KemariError } from '../../src/errors.js';
import { Primary } from '../../src/primary/primary.js';
import { Secondary } from '../../src/secondary/secondary.js';
import { SimulatedVm } from '../../src/vm/simulated-vm.js';
import { connect } from '../../src/transport/index.js';
import { encodeFrame } from '../../src/wire/encoder.js';
import { FrameType } from '../../src/wire/header.js';
import { primaryHello } from '../../src/txn/hello-for.js';
import { PartitionProxy } from '../helpers/partition-proxy.js';

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

const HEARTBEAT = { intervalMs: 20, missedMax: 5 };
const once = <T>(emitter: { once(event: string, listener: (value: T) => void): unknown }, event: string): Promise<T> =>
  new Promise((resolve) => emitter.once(event, resolve));

/** A protected pair whose replication link runs through a proxy that can be silenced; optionally a second path. */
async function pair(secondPath: boolean) {
  const secondary = await Secondary.listen({
    port: 0,
    sessionId: 'vm-hb',
    heartbeat: HEARTBEAT,
    ...(secondPath ? { heartbeatPath: { port: 0 } } : {}),
  });
  cleanups.push(() => secondary.close());
  const proxy = await PartitionProxy.start(secondary.port);
  cleanups.push(() => proxy.close());
  const vm = new SimulatedVm({ memoryBytes: 1 << 18, seed: 2 });
  const primary = await Primary.start({
    vm,
    sessionId: 'vm-hb',
    secondary: { host: '127.0.0.1', port: proxy.port },
    heartbeat: HEARTBEAT,
    reconnectDelayMs: 0,
    ...(secondPath ? { heartbeatPath: { host: '127.0.0.1', port: secondary.heartbeatPort } } : {}),
  });
  cleanups.push(() => primary.close());
  return { secondary, primary, proxy };
}

describe('the second heartbeat path', () => {
  it('tells a broken replication link from a dead host on both sides', async () => {
    const { secondary, primary, proxy } = await pair(true);
    await new Promise((r) => setTimeout(r, 3 * HEARTBEAT.intervalMs)); // the path is up and heard
    const linkDown = once<KemariError>(secondary, 'linkDown');
    const primaryLost: KemariError[] = [];
    secondary.on('primaryLost', (e: KemariError) => primaryLost.push(e));
    const disconnected = once<KemariError>(primary, 'disconnect');
    proxy.partition();
    const [onSecondary, onPrimary] = await Promise.all([linkDown, disconnected]);
    expect(onSecondary.details.verdict).toBe('link-down');
    expect(onPrimary.code).toBe('KEMARI_PEER_LOST');
    expect(onPrimary.details.verdict).toBe('link-down');
    expect(primaryLost).toEqual([]);
    expect(secondary.state).toBe('listening');
  });

  it('without it, the same silence reads as a dead primary', async () => {
    const { secondary, proxy } = await pair(false);
    const lost = once<KemariError>(secondary, 'primaryLost');
    proxy.partition();
    expect((await lost).details.verdict).toBe('dead');
  });

  it('a primary that is gone is dead on both paths', async () => {
    const { secondary, primary, proxy } = await pair(true);
    await new Promise((r) => setTimeout(r, 3 * HEARTBEAT.intervalMs));
    const lost = once<KemariError>(secondary, 'primaryLost');
    proxy.partition();
    primary.close(); // closes the heartbeat path too: nothing is heard anywhere
    expect((await lost).details.verdict).toBe('dead');
  });

  it('refuses a heartbeat path opened without this session’s HELLO', async () => {
    const { secondary } = await pair(true);
    for (const hello of [undefined, primaryHello(new SimulatedVm({ memoryBytes: 1 << 18 }), 'another-session', [])]) {
      const connection = await connect({ host: '127.0.0.1', port: secondary.heartbeatPort });
      const closed = new Promise<void>((resolve) => connection.on('close', () => resolve()));
      const frame =
        hello === undefined
          ? encodeFrame({ type: FrameType.HEARTBEAT, txn: 0, seq: 0, body: { timeMs: 0, committedTxn: 0, generation: 0, state: 2 } })
          : encodeFrame({ type: FrameType.HELLO, txn: 0, seq: 0, body: hello });
      connection.write([frame.header, ...frame.body]);
      await closed;
      expect(connection.closed).toBe(true);
    }
  });
});

describe('the heartbeat path listener', () => {
  it('closes a connection that does not say HELLO within helloTimeoutMs', async () => {
    const secondary = await Secondary.listen({ port: 0, sessionId: 'vm-idle', heartbeat: HEARTBEAT, heartbeatPath: { port: 0 }, helloTimeoutMs: 100 });
    cleanups.push(() => secondary.close());
    const connection = await connect({ host: '127.0.0.1', port: secondary.heartbeatPort });
    const startMs = performance.now();
    await new Promise<void>((resolve) => connection.on('close', () => resolve()));
    expect(performance.now() - startMs).toBeGreaterThanOrEqual(80);
  });
});
