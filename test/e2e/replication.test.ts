import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FrameType, KemariError, encodeFrameToBytes } from '../../src/index.js';
import { primaryHello } from '../../src/txn/hello-for.js';
import { connectTls } from '../../src/transport/tls.js';
import type { Connection } from '../../src/transport/connection.js';
import { Primary } from '../../src/primary/primary.js';
import type { PrimaryCommit } from '../../src/primary/primary.js';
import { Secondary } from '../../src/secondary/secondary.js';
import { digestHex } from '../../src/replica/state-digest.js';
import { SimulatedVm } from '../../src/vm/simulated-vm.js';
import { Workload } from '../../src/vm/workload.js';
import type { SyncPolicy } from '../../src/checkpoint/controller.js';
import { OutputCommitChecker } from '../helpers/output-commit-checker.js';
import { makeTestPki } from '../helpers/pki.js';

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

async function pair(options: { sync?: SyncPolicy; pipelineDepth?: number; memoryBytes?: number; verify?: boolean } = {}) {
  const secondary = await Secondary.listen({ host: '127.0.0.1', port: 0, verify: options.verify ?? true });
  cleanups.push(() => secondary.close());
  const vm = new SimulatedVm({ memoryBytes: options.memoryBytes ?? 2 << 20, seed: 11, disks: [{ id: 0, bytes: 1 << 20 }] });
  const primary = await Primary.start({
    vm,
    secondary: { host: '127.0.0.1', port: secondary.port },
    sync: options.sync ?? { mode: 'event' },
    pipelineDepth: options.pipelineDepth ?? 2,
    verify: options.verify ?? true,
  });
  cleanups.push(() => primary.close());
  return { secondary, vm, primary };
}

/** Runs the guest for `steps` ticks, one per macrotask, sending its outputs through the tap. */
async function runGuest(vm: SimulatedVm, primary: Primary, steps: number, seed = 3): Promise<Array<Promise<void>>> {
  const outputs: Array<Promise<void>> = [];
  const workload = new Workload(vm, {
    seed,
    pagesPerStep: 8,
    outputEvery: 2,
    output: (channel, data) => outputs.push(primary.tap.output(channel, data)),
  });
  for (let done = 0; done < steps; ) {
    if (workload.step()) done++;
    await new Promise((r) => setImmediate(r));
  }
  return outputs;
}

describe('replication over loopback TCP', () => {
  const policies: SyncPolicy[] = [{ mode: 'event' }, { mode: 'periodic', intervalMs: 3 }];
  for (const sync of policies) {
    for (const pipelineDepth of [1, 3]) {
      it(`${sync.mode} policy, pipeline depth ${pipelineDepth}: no output before its epoch's ack; promotion resumes a committed epoch`, async () => {
        const { secondary, vm, primary } = await pair({ sync, pipelineDepth });
        const checker = new OutputCommitChecker(primary, secondary);
        const digests = new Map<number, string>();
        primary.on('commit', (c: PrimaryCommit) => digests.set(c.txn, digestHex(c.digest!)));
        const outputs = await runGuest(vm, primary, 60);
        await Promise.all(outputs);
        expect(outputs.length).toBe(30);
        expect(checker.violations).toEqual([]);
        expect(checker.releases.length).toBe(30);
        expect(primary.stats().outputsHeld).toBe(0);
        // Released in the order they were tapped.
        expect(checker.releases.map((r) => r.id)).toEqual([...checker.releases.map((r) => r.id)].sort((a, b) => a - b));
        primary.close();
        const { vm: resumed, txn } = await secondary.promote();
        expect(txn).toBeGreaterThan(1);
        expect(digests.has(txn)).toBe(true);
        expect(digestHex(resumed.digest())).toBe(digests.get(txn));
      });
    }
  }

  it('the first transaction is a full sync of every page, with progress up to its size', async () => {
    const secondary = await Secondary.listen({ port: 0 });
    cleanups.push(() => secondary.close());
    const vm = new SimulatedVm({ memoryBytes: 8 << 20, seed: 2 });
    vm.write(0, new Uint8Array(8 << 20).fill(1)); // no zero pages: every page travels
    const progress: Array<{ txn: number; bytesSent: number; bytesTotal: number }> = [];
    const primary = await Primary.start({ vm, secondary: { host: '127.0.0.1', port: secondary.port }, onProgress: (p) => progress.push(p) });
    cleanups.push(() => primary.close());
    expect(primary.state).toBe('protected');
    expect(secondary.committedTxn).toBe(1);
    expect(secondary.stats().pagesApplied).toBe((8 << 20) / 4096);
    expect(secondary.stats().bytesApplied).toBeGreaterThan(8 << 20);
    expect(progress.length).toBeGreaterThan(8);
    expect(progress.every((p) => p.txn === 1)).toBe(true);
    const sent = progress.map((p) => p.bytesSent);
    expect(sent).toEqual([...sent].sort((a, b) => a - b));
    expect(progress.at(-1)!.bytesSent).toBe(progress.at(-1)!.bytesTotal);
  });

  it('a second primary is refused with KEMARI_BUSY while the first is served', async () => {
    const { secondary, vm } = await pair();
    const rival = Primary.start({ vm, secondary: { host: '127.0.0.1', port: secondary.port } });
    await expect(rival).rejects.toMatchObject({ code: 'KEMARI_BUSY' });
    expect(secondary.stats().refusedConnections).toBe(1);
  });

  it('a primary of another session is refused with KEMARI_HELLO_MISMATCH', async () => {
    const secondary = await Secondary.listen({ port: 0, sessionId: 'vm-a' });
    cleanups.push(() => secondary.close());
    const vm = new SimulatedVm({ memoryBytes: 1 << 20 });
    await expect(Primary.start({ vm, sessionId: 'vm-b', secondary: { host: '127.0.0.1', port: secondary.port } })).rejects.toMatchObject({
      code: 'KEMARI_HELLO_MISMATCH',
    });
  });

  it('a reconnecting primary with other VM geometry is refused with KEMARI_HELLO_MISMATCH', async () => {
    const { secondary, primary } = await pair({ memoryBytes: 1 << 20 });
    primary.close();
    await new Promise((r) => setTimeout(r, 50));
    const other = new SimulatedVm({ memoryBytes: 2 << 20 });
    await expect(Primary.start({ vm: other, sessionId: primary.sessionId, secondary: { host: '127.0.0.1', port: secondary.port } })).rejects.toMatchObject({
      code: 'KEMARI_HELLO_MISMATCH',
    });
  });

  it('a connect to nothing fails with KEMARI_CONNECT_FAILED', async () => {
    const secondary = await Secondary.listen({ port: 0 });
    const port = secondary.port;
    await secondary.close();
    const vm = new SimulatedVm({ memoryBytes: 1 << 20 });
    await expect(Primary.start({ vm, secondary: { host: '127.0.0.1', port } })).rejects.toMatchObject({ code: 'KEMARI_CONNECT_FAILED' });
  });

  it('close() discards held outputs with KEMARI_CLOSED, is idempotent, and releases nothing afterwards', async () => {
    const { secondary, vm, primary } = await pair({ sync: { mode: 'periodic', intervalMs: 60_000 } });
    const checker = new OutputCommitChecker(primary, secondary);
    vm.write(4096, Uint8Array.of(1));
    const held = primary.tap.output('serial0', Buffer.from('never seen\n'));
    primary.close();
    primary.close();
    await expect(held).rejects.toMatchObject({ code: 'KEMARI_CLOSED' });
    expect(checker.releases).toEqual([]);
    await expect(primary.tap.output('serial0', Uint8Array.of(1))).rejects.toBeInstanceOf(KemariError);
    expect(primary.state).toBe('closed');
  });

  it('an AbortSignal closes the primary', async () => {
    const secondary = await Secondary.listen({ port: 0 });
    cleanups.push(() => secondary.close());
    const controller = new AbortController();
    const vm = new SimulatedVm({ memoryBytes: 1 << 20 });
    const primary = await Primary.start({ vm, secondary: { host: '127.0.0.1', port: secondary.port }, signal: controller.signal });
    const held = primary.tap.output('net0', Uint8Array.of(1, 2, 3));
    controller.abort();
    expect(primary.state).toBe('closed');
    await held.then(
      () => undefined,
      (e: KemariError) => expect(['KEMARI_ABORTED', 'KEMARI_CLOSED']).toContain(e.code),
    );
  });

  it('refuses nonsensical limits with KEMARI_INVALID_ARGUMENT', async () => {
    await expect(Secondary.listen({ port: 0, txnBytesMax: 2 << 30 })).rejects.toMatchObject({ code: 'KEMARI_INVALID_ARGUMENT' });
    await expect(Secondary.listen({ port: 0, txnFramesMax: 0 })).rejects.toMatchObject({ code: 'KEMARI_INVALID_ARGUMENT' });
  });

  it('promote() without a committed epoch → KEMARI_NO_REPLICA', async () => {
    const secondary = await Secondary.listen({ port: 0 });
    cleanups.push(() => secondary.close());
    await expect(secondary.promote()).rejects.toMatchObject({ code: 'KEMARI_NO_REPLICA' });
  });

  it('promote() returns the events of committed epochs not yet released, for replay', async () => {
    const { secondary, vm, primary } = await pair({ sync: { mode: 'event' }, pipelineDepth: 1 });
    vm.write(8192, Uint8Array.of(9));
    await primary.tap.output('serial0', Buffer.from('released\n'));
    // This output's epoch commits on the secondary, but the primary is gone before it hears the ack.
    let resolveCommit: () => void = () => {};
    const committed = new Promise<void>((r) => (resolveCommit = r));
    secondary.once('commit', () => {
      primary.close();
      resolveCommit();
    });
    const pending = primary.tap.output('serial0', Buffer.from('in flight\n'));
    await committed;
    await expect(pending).rejects.toMatchObject({ code: 'KEMARI_CLOSED' });
    const { replay } = await secondary.promote();
    expect(replay.map((e) => Buffer.from(e.payload).toString())).toEqual(['in flight\n']);
  });
});

describe('replication over a unix socket', () => {
  it('replicates and promotes to the primary digest', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kemari-e2e-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const path = join(dir, 'secondary.sock');
    const secondary = await Secondary.listen({ path, verify: true });
    cleanups.push(() => secondary.close());
    const vm = new SimulatedVm({ memoryBytes: 1 << 20, seed: 4 });
    const primary = await Primary.start({ vm, secondary: { path }, verify: true });
    cleanups.push(() => primary.close());
    const digests = new Map<number, string>();
    primary.on('commit', (c: PrimaryCommit) => digests.set(c.txn, digestHex(c.digest!)));
    await Promise.all(await runGuest(vm, primary, 20));
    primary.close();
    const { vm: resumed, txn } = await secondary.promote();
    expect(digestHex(resumed.digest())).toBe(digests.get(txn));
  });
});

describe('replication over mutual TLS', () => {
  const pki = makeTestPki();

  it('replicates when both sides present certificates of the shared CA', async () => {
    const secondary = await Secondary.listen({ host: '127.0.0.1', port: 0, tls: pki.credentials('server'), verify: true });
    cleanups.push(() => secondary.close());
    const vm = new SimulatedVm({ memoryBytes: 1 << 20, seed: 8 });
    const primary = await Primary.start({ vm, secondary: { host: '127.0.0.1', port: secondary.port }, tls: pki.credentials('client'), verify: true });
    cleanups.push(() => primary.close());
    await Promise.all(await runGuest(vm, primary, 10));
    expect(secondary.committedTxn).toBeGreaterThan(1);
  });

  it('a primary with a certificate of another CA is refused: KEMARI_TLS_REFUSED, nothing replicated', async () => {
    const secondary = await Secondary.listen({ host: '127.0.0.1', port: 0, tls: pki.credentials('server') });
    cleanups.push(() => secondary.close());
    const refused: KemariError[] = [];
    secondary.on('error', (e: KemariError) => refused.push(e));
    const vm = new SimulatedVm({ memoryBytes: 1 << 20 });
    await expect(
      Primary.start({ vm, secondary: { host: '127.0.0.1', port: secondary.port }, tls: pki.credentials('rogue', 'rogue-ca') }),
    ).rejects.toMatchObject({ code: 'KEMARI_TLS_REFUSED' });
    await new Promise((r) => setTimeout(r, 50));
    expect(refused.map((e) => e.code)).toContain('KEMARI_TLS_REFUSED');
    expect(secondary.stats().refusedConnections).toBeGreaterThan(0);
    expect(secondary.replica).toBeUndefined();
  });

  it('a plain TCP primary cannot talk to a TLS secondary', async () => {
    const secondary = await Secondary.listen({ host: '127.0.0.1', port: 0, tls: pki.credentials('server') });
    cleanups.push(() => secondary.close());
    const vm = new SimulatedVm({ memoryBytes: 1 << 20 });
    await expect(Primary.start({ vm, secondary: { host: '127.0.0.1', port: secondary.port }, connectTimeoutMs: 2000 })).rejects.toBeInstanceOf(KemariError);
    expect(secondary.replica).toBeUndefined();
  });

  it('honours a FAILOVER before any transaction from a certified primary that resumed from the replica, only then', async () => {
    const secondary = await Secondary.listen({ host: '127.0.0.1', port: 0, sessionId: 's', tls: pki.credentials('server') });
    cleanups.push(() => secondary.close());
    const errors: KemariError[] = [];
    secondary.on('error', (e: KemariError) => errors.push(e));
    const promoted: unknown[] = [];
    secondary.on('promoted', (p) => promoted.push(p));
    const vm = new SimulatedVm({ memoryBytes: 1 << 20, seed: 8 });
    const primary = await Primary.start({ vm, sessionId: 's', secondary: { host: '127.0.0.1', port: secondary.port }, tls: pki.credentials('client') });
    await Promise.all(await runGuest(vm, primary, 5));
    primary.close();
    const committedTxn = secondary.committedTxn;
    expect(committedTxn).toBeGreaterThan(1);
    await waitFor(() => secondary.state === 'listening');

    // The primary's guest fails right after it reconnected: HELLO resuming from the replica's epoch, then FAILOVER,
    // on a certified connection. Sent by hand (as the primary sends them), with and without resuming.
    const say = async (helloTxn: number): Promise<Connection> => {
      const connection = await connectTls({ host: '127.0.0.1', port: secondary.port, ...pki.credentials('client') });
      cleanups.push(() => connection.close());
      connection.write([
        encodeFrameToBytes({ type: FrameType.HELLO, txn: 0, seq: 0, body: primaryHello(vm, 's', [], helloTxn) }),
        encodeFrameToBytes({ type: FrameType.FAILOVER, txn: 0, seq: 0, body: { committedTxn, generation: 0, reason: 'guest failed' } }),
      ]);
      return connection;
    };
    // Not resuming (a fresh session would sync from scratch): nothing proves it is the primary of this replica.
    const fresh = await say(0);
    await waitFor(() => errors.some((e) => e.code === 'KEMARI_PROTOCOL'));
    expect(promoted).toEqual([]);
    fresh.close();
    await waitFor(() => secondary.state === 'listening');
    // Resuming from the replica's epoch: promoted at once.
    await say(committedTxn);
    await waitFor(() => promoted.length === 1);
    expect(secondary.state).toBe('promoted');
  });
});

async function waitFor(condition: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}
