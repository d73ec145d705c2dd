/** Defects a review found in failover and re-protection, each reproduced here so it stays fixed. */
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Primary } from '../../src/primary/primary.js';
import { Secondary } from '../../src/secondary/secondary.js';
import type { Promotion } from '../../src/secondary/secondary.js';
import { nodeJournalFs } from '../../src/replica/journal-fs.js';
import type { JournalFs } from '../../src/replica/journal-fs.js';
import { SimulatedVm } from '../../src/vm/simulated-vm.js';
import { Workload } from '../../src/vm/workload.js';

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A TCP listener that accepts and never says a word; `stop()` drops its connections and closes it. */
async function silentListener(port = 0): Promise<{ port: number; stop(): Promise<void> }> {
  const sockets = new Set<import('node:net').Socket>();
  const server = createServer((socket) => sockets.add(socket));
  await new Promise<void>((r) => server.listen(port, '127.0.0.1', () => r()));
  let stopped: Promise<void> | undefined;
  return {
    port: (server.address() as AddressInfo).port,
    stop: () => {
      stopped ??= new Promise<void>((r) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => r());
      });
      return stopped;
    },
  };
}
const hash = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'kemari-review-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** The real file system with a switchable slow fdatasync. */
function slowFs(): { fs: JournalFs; slow: { on: boolean } } {
  const slow = { on: false };
  const fs: JournalFs = {
    ...nodeJournalFs,
    async open(path, mode) {
      const f = await nodeJournalFs.open(path, mode);
      return {
        read: f.read.bind(f),
        writeAll: f.writeAll.bind(f),
        truncate: f.truncate.bind(f),
        sync: f.sync.bind(f),
        sizeBytes: f.sizeBytes.bind(f),
        close: f.close.bind(f),
        async datasync() {
          if (slow.on) await sleep(150);
          return f.datasync();
        },
      };
    },
  };
  return { fs, slow };
}

describe('review regressions', () => {
  it('a promotion waits for the journal: the restored VM is one settled epoch, stable while it is restored', async () => {
    const { fs, slow } = slowFs();
    let during: { txn: number; before: string; after: string } | undefined;
    const secondary = await Secondary.listen({
      port: 0,
      sessionId: 'r1',
      journalDir: tempDir(),
      journalFs: fs,
      restoreVm: async (snapshot) => {
        const before = hash(snapshot.memory);
        await sleep(300); // a restore that takes time, as a QEMU standby's does
        during = { txn: snapshot.txn, before, after: hash(snapshot.memory) };
        return SimulatedVm.restore(snapshot as never);
      },
    });
    cleanups.push(() => secondary.close());
    const vm = new SimulatedVm({ memoryBytes: 1 << 20, seed: 1 });
    const primary = await Primary.start({ vm, sessionId: 'r1', secondary: { host: '127.0.0.1', port: secondary.port } });
    cleanups.push(() => primary.close());
    const promoted = new Promise<Promotion>((r) => secondary.once('promoted', r));
    slow.on = true;
    vm.write(4096 * 3, Uint8Array.of(1, 2, 3, 4));
    void primary.tap.output('net0', Uint8Array.of(9)).catch(() => {});
    await sleep(20); // the epoch is captured and sent; its journal sync is slow
    await primary.reportFault({ source: 'test', severity: 'fatal' });
    const promotion = await promoted;
    expect(during!.after).toBe(during!.before);
    expect(promotion.txn).toBe(during!.txn);
    expect(promotion.txn).toBe(secondary.committedTxn);
  });

  it('FAILOVER early in a journaled session is honoured: the replica holds an epoch from before', async () => {
    const { fs, slow } = slowFs();
    const dir = tempDir();
    const first = await Secondary.listen({ port: 0, sessionId: 'r2', journalDir: dir, journalFs: fs });
    const vm = new SimulatedVm({ memoryBytes: 1 << 20, seed: 2 });
    const primary = await Primary.start({ vm, sessionId: 'r2', secondary: { host: '127.0.0.1', port: first.port }, reconnectDelayMs: 20 });
    cleanups.push(() => primary.close());
    const port = first.port;
    await first.close();
    const again = await Secondary.listen({ port, sessionId: 'r2', journalDir: dir, journalFs: fs });
    cleanups.push(() => again.close());
    await new Promise((r) => primary.once('reprotected', r));
    slow.on = true;
    vm.write(4096 * 5, Uint8Array.of(7));
    void primary.tap.output('net0', Uint8Array.of(1)).catch(() => {});
    const promoted = new Promise<Promotion>((r) => again.once('promoted', r));
    await sleep(10);
    await primary.reportFault({ source: 'test', severity: 'fatal' });
    const promotion = await Promise.race([promoted, sleep(3000).then(() => undefined)]);
    expect(promotion, 'the secondary ignored FAILOVER').toBeDefined();
  });

  it('a fatal fault while reconnecting keeps the primary quiesced and its VM paused', async () => {
    const secondary = await Secondary.listen({ port: 0, sessionId: 'r3' });
    const vm = new SimulatedVm({ memoryBytes: 1 << 18, seed: 3 });
    const primary = await Primary.start({ vm, sessionId: 'r3', secondary: { host: '127.0.0.1', port: secondary.port }, reconnectDelayMs: 30 });
    cleanups.push(() => primary.close());
    const port = secondary.port;
    // A listener that accepts and stays silent: the reconnection sits waiting for HELLO.
    await secondary.close();
    const silent = await silentListener(port);
    cleanups.push(() => silent.stop());
    await sleep(100);
    await primary.reportFault({ source: 'test', severity: 'fatal' });
    expect(primary.state).toBe('quiesced');
    await silent.stop();
    const real = await Secondary.listen({ port, sessionId: 'r3' });
    cleanups.push(() => real.close());
    await sleep(300);
    expect(primary.state).toBe('quiesced');
    expect(vm.paused).toBe(true);
    expect(real.state).toBe('listening');
  });

  it('Primary.start gives up on a secondary that never answers HELLO (KEMARI_TIMEOUT)', async () => {
    const silent = await silentListener();
    cleanups.push(() => silent.stop());
    const port = silent.port;
    await expect(Primary.start({ vm: new SimulatedVm({ memoryBytes: 1 << 16 }), secondary: { host: '127.0.0.1', port }, connectTimeoutMs: 200 })).rejects.toMatchObject({
      code: 'KEMARI_TIMEOUT',
    });
  });

  it('a resumed transaction the secondary refuses is not resent forever: the next session is a full sync', async () => {
    const dir = tempDir();
    const options = { port: 0, sessionId: 'r5', journalDir: dir, journalFsync: false, txnBytesMax: 3 << 20 };
    const first = await Secondary.listen(options);
    const vm = new SimulatedVm({ memoryBytes: 1 << 20, seed: 5, disks: [{ id: 0, bytes: 1 << 16 }] });
    const primary = await Primary.start({ vm, sessionId: 'r5', secondary: { host: '127.0.0.1', port: first.port }, reconnectDelayMs: 20, precopyRoundsMax: 0 });
    cleanups.push(() => primary.close());
    const port = first.port;
    await first.close();
    await sleep(50);
    // While unprotected the guest rewrites its disk over and over: the merged resume grows past txnBytesMax.
    const workload = new Workload(vm, { seed: 6, pagesPerStep: 1, diskWritesPerStep: 8, diskWriteBytes: 8192 });
    for (let i = 0; i < 60; i++) workload.step();
    const reprotected = new Promise<{ full: boolean }>((r) => primary.once('reprotected', r));
    const again = await Secondary.listen({ ...options, port });
    cleanups.push(() => again.close());
    const outcome = await Promise.race([reprotected, sleep(5000).then(() => undefined)]);
    expect(outcome, 'never protected again').toBeDefined();
    expect(outcome!.full).toBe(true);
  });
});
