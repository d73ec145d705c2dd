import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { PagesWorkerPool } from '../../src/pages/worker-pool.js';
import { Primary } from '../../src/primary/primary.js';
import type { PrimaryCommit, PrimaryOptions, Reprotection } from '../../src/primary/primary.js';
import { Secondary } from '../../src/secondary/secondary.js';
import type { SecondaryOptions } from '../../src/secondary/secondary.js';
import { SimulatedVm } from '../../src/vm/simulated-vm.js';
import { Workload } from '../../src/vm/workload.js';

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

const HEARTBEAT = { intervalMs: 20, missedMax: 5 };

const once = <T>(emitter: { once(event: string, listener: (value: T) => void): unknown }, event: string): Promise<T> =>
  new Promise((resolve) => emitter.once(event, resolve));

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'kemari-reconnect-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A primary protecting a 1 MiB guest to a secondary on a unix socket that can be restarted at the same path. */
async function setup(options: { journal: boolean; primary?: Partial<PrimaryOptions> }) {
  const dir = tempDir();
  const path = join(dir, 'secondary.sock');
  const secondaryOptions: SecondaryOptions = {
    path,
    verify: true,
    sessionId: 'vm-reconnect',
    heartbeat: HEARTBEAT,
    ...(options.journal ? { journalDir: join(dir, 'journal'), journalFsync: false } : {}),
  };
  const startSecondary = async () => {
    const secondary = await Secondary.listen(secondaryOptions);
    cleanups.push(() => secondary.close());
    return secondary;
  };
  const secondary = await startSecondary();
  const vm = new SimulatedVm({ memoryBytes: 1 << 20, seed: 17 });
  const primary = await Primary.start({
    vm,
    sessionId: 'vm-reconnect',
    verify: true,
    secondary: { path },
    heartbeat: HEARTBEAT,
    reconnectDelayMs: 20,
    ...options.primary,
  });
  cleanups.push(() => primary.close());
  const commits: PrimaryCommit[] = [];
  primary.on('commit', (c: PrimaryCommit) => commits.push(c));
  const outputs: Array<Promise<void>> = [];
  const workload = new Workload(vm, { seed: 5, outputEvery: 2, output: (c, d) => outputs.push(primary.tap.output(c, d)) });
  const run = async (steps: number) => {
    for (let i = 0; i < steps; i++) {
      workload.step();
      await new Promise((r) => setImmediate(r));
    }
  };
  return { secondary, startSecondary, primary, vm, commits, outputs, run };
}

describe('a primary reconnects to its secondary', () => {
  it('resumes a secondary restarted on its journal from its committed epoch, with one incremental transaction', async () => {
    const { secondary, startSecondary, primary, vm, commits, outputs, run } = await setup({ journal: true });
    await run(20);
    await Promise.all(outputs.splice(0));
    const unprotected = once(primary, 'unprotected');
    await secondary.close();
    await unprotected;
    // The guest runs on and produces output while unprotected: held, not released.
    await run(10);
    const held = outputs.splice(0);
    expect(held.length).toBeGreaterThan(0);
    expect(primary.stats().outputsHeld).toBeGreaterThanOrEqual(held.length);

    const restarted = await startSecondary();
    const recoveredTxn = restarted.committedTxn;
    expect(recoveredTxn).toBe(primary.stats().ackedTxn);
    const reprotection = await once<Reprotection>(primary, 'reprotected');
    expect(reprotection).toMatchObject({ full: false, fromTxn: recoveredTxn, txn: recoveredTxn + 1 });
    await Promise.all(held); // every output held across the loss is released once its epoch commits
    const resume = commits.find((c) => c.txn === reprotection.txn)!;
    expect(resume.full).toBe(false);
    expect(resume.pages).toBeLessThan(vm.pageCount / 2);
    expect(resume.bytes).toBeLessThan(vm.memoryBytes / 2);

    // Verification is on: every ack compared the secondary's digest with the primary's, so a wrong resume fails.
    await run(20);
    await Promise.all(outputs.splice(0));
    expect(primary.state).toBe('protected');
    expect(restarted.committedTxn).toBeGreaterThan(reprotection.txn);
    expect(restarted.stats().epochs).toBeGreaterThan(1);
  });

  it('an epoch whose deltas were still encoding on the worker pool when the link died is carried, and the cache starts over', async () => {
    // Threshold 0: every epoch's deltas go to the threads. The wrapper holds the encoded batch back on demand, so
    // the cache takes the epoch's pages only after the new session began (and cleared it).
    const pool = await PagesWorkerPool.start({ workers: 1, parallelBytesMin: 0 });
    cleanups.push(() => pool.close());
    const encode = pool.encodeDeltas.bind(pool);
    let gate: Promise<void> | undefined;
    let entered: (() => void) | undefined;
    pool.encodeDeltas = async (...args) => {
      const result = await encode(...args);
      if (gate !== undefined) {
        entered?.();
        await gate;
      }
      return result;
    };
    const { secondary, startSecondary, primary, outputs, run } = await setup({ journal: true, primary: { delta: true, pagesPool: pool } });
    await run(20);
    await Promise.all(outputs.splice(0));
    expect(primary.stats().parallelDeltaEpochs).toBeGreaterThan(0);

    let release!: () => void;
    gate = new Promise((r) => (release = r));
    const stuck = new Promise<void>((r) => (entered = r));
    await run(2);
    await stuck; // an epoch's encoded deltas are held back
    const unprotected = once(primary, 'unprotected');
    await secondary.close();
    await unprotected;
    const restarted = await startSecondary();
    for (const deadline = Date.now() + 10_000; primary.state !== 'syncing'; await new Promise((r) => setTimeout(r, 5))) {
      if (Date.now() > deadline) throw new Error(`no new session (state ${primary.state})`);
    }
    gate = undefined;
    release(); // the held epoch ends on a session that is no longer its own
    const reprotection = await once<Reprotection>(primary, 'reprotected');
    expect(reprotection.full).toBe(false);
    // Verification is on: a cache that kept the unsent epoch's pages would encode deltas against bases the
    // secondary never had, and the first such epoch would fail its digest.
    await run(20);
    await Promise.all(outputs.splice(0));
    expect(primary.state).toBe('protected');
    expect(restarted.committedTxn).toBeGreaterThan(reprotection.txn);
    expect(primary.stats().deltaPages).toBeGreaterThan(0);
  });

  it('brings back a secondary that lost its replica with a full sync, releasing what it held', async () => {
    const { secondary, startSecondary, primary, commits, outputs, run } = await setup({ journal: false });
    await run(10);
    await Promise.all(outputs.splice(0));
    const unprotected = once(primary, 'unprotected');
    await secondary.close();
    await unprotected;
    await run(5);
    const held = outputs.splice(0);
    const restarted = await startSecondary();
    const reprotection = await once<Reprotection>(primary, 'reprotected');
    expect(reprotection).toMatchObject({ full: true, fromTxn: 0, txn: 1 });
    await Promise.all(held);
    expect(commits.filter((c) => c.full).map((c) => c.txn)).toEqual([1]); // the listener came after the first
    await run(10);
    await Promise.all(outputs.splice(0));
    expect(restarted.committedTxn).toBe(primary.stats().ackedTxn);
  });

  it("'pause': the VM stays paused until the secondary is back, then runs on", async () => {
    const { secondary, startSecondary, primary, vm, run } = await setup({ journal: true, primary: { onSecondaryLoss: 'pause' } });
    await run(10);
    const unprotected = once(primary, 'unprotected');
    await secondary.close();
    await unprotected;
    await new Promise((r) => setTimeout(r, 50));
    expect(primary.state).toBe('paused');
    expect(vm.paused).toBe(true);
    const reprotected = once<Reprotection>(primary, 'reprotected');
    await startSecondary();
    expect((await reprotected).full).toBe(false);
    await new Promise((r) => setTimeout(r, 20));
    expect(vm.paused).toBe(false);
    expect(primary.state).toBe('protected');
  });

  it('keeps trying while the secondary is away, and gives up only when closed', async () => {
    const { secondary, primary } = await setup({ journal: true });
    const unprotected = once(primary, 'unprotected');
    await secondary.close();
    await unprotected;
    await new Promise((r) => setTimeout(r, 120));
    expect(primary.state).toBe('unprotected');
    expect(primary.stats().lastError?.code).toBe('KEMARI_CONNECT_FAILED');
    primary.close();
    expect(primary.state).toBe('closed');
  });

  it('reconnectDelayMs 0 turns reconnection off', async () => {
    const { secondary, startSecondary, primary } = await setup({ journal: true, primary: { reconnectDelayMs: 0 } });
    const unprotected = once(primary, 'unprotected');
    await secondary.close();
    await unprotected;
    const restarted = await startSecondary();
    const before = restarted.committedTxn;
    await new Promise((r) => setTimeout(r, 150));
    expect(primary.state).toBe('unprotected');
    expect(restarted.state).toBe('listening');
    expect(restarted.committedTxn).toBe(before);
    await expect(Primary.start({ vm: new SimulatedVm({ memoryBytes: 1 << 16 }), secondary: { path: '/nonexistent.sock' }, reconnectDelayMs: -1 })).rejects.toMatchObject({
      code: 'KEMARI_INVALID_ARGUMENT',
    });
  });
});
