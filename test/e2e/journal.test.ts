import { mkdtempSync, rmSync, statSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Primary } from '../../src/primary/primary.js';
import type { PrimaryCapture } from '../../src/primary/primary.js';
import { Secondary } from '../../src/secondary/secondary.js';
import type { SecondaryCommit } from '../../src/secondary/secondary.js';
import { digestHex } from '../../src/replica/state-digest.js';
import { SimulatedVm } from '../../src/vm/simulated-vm.js';
import { Workload } from '../../src/vm/workload.js';

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

/** Replicates a guest for `steps` steps to a journaled secondary, then stops both; returns what was committed. */
async function replicate(journalDir: string, steps: number) {
  const secondary = await Secondary.listen({ port: 0, journalDir, verify: true, sessionId: 'vm-j' });
  const commits: number[] = [];
  secondary.on('commit', (c: SecondaryCommit) => commits.push(c.txn));
  const vm = new SimulatedVm({ memoryBytes: 1 << 20, seed: 41 });
  const primary = await Primary.start({ vm, sessionId: 'vm-j', verify: true, secondary: { host: '127.0.0.1', port: secondary.port } });
  const digests = new Map<number, string>();
  primary.on('capture', (c: PrimaryCapture) => digests.set(c.txn, digestHex(c.digest!)));
  const outputs: Array<Promise<void>> = [];
  const workload = new Workload(vm, { seed: 9, outputEvery: 2, output: (c, d) => outputs.push(primary.tap.output(c, d)) });
  for (let i = 0; i < steps; i++) {
    workload.step();
    await new Promise((r) => setImmediate(r));
  }
  await Promise.all(outputs);
  primary.close();
  await secondary.close();
  return { commits, digests, last: commits.at(-1)! };
}

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'kemari-journal-e2e-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

describe('a durable secondary', () => {
  it('restarted on its journal, holds the last committed epoch before any primary connects', async () => {
    const dir = tempDir();
    const { digests, last, commits } = await replicate(dir, 30);
    expect(commits.length).toBeGreaterThan(3);
    const restarted = await Secondary.listen({ port: 0, journalDir: dir, sessionId: 'vm-j' });
    cleanups.push(() => restarted.close());
    expect(restarted.committedTxn).toBe(last);
    const { vm, txn } = await restarted.promote();
    expect(txn).toBe(last);
    expect(digestHex(vm.digest())).toBe(digests.get(last));
  });

  it('a torn journal tail is dropped: the restart holds the epoch before it', async () => {
    const dir = tempDir();
    const { digests, last } = await replicate(dir, 20);
    const file = join(dir, 'journal.kmj');
    truncateSync(file, statSync(file).size - 3);
    const restarted = await Secondary.listen({ port: 0, journalDir: dir });
    cleanups.push(() => restarted.close());
    expect(restarted.committedTxn).toBe(last - 1);
    const { vm } = await restarted.promote();
    expect(digestHex(vm.digest())).toBe(digests.get(last - 1));
  });

  it('a new primary continues on a recovered secondary from its committed epoch', async () => {
    const dir = tempDir();
    const { last } = await replicate(dir, 10);
    const restarted = await Secondary.listen({ port: 0, journalDir: dir, sessionId: 'vm-j' });
    cleanups.push(() => restarted.close());
    const vm = new SimulatedVm({ memoryBytes: 1 << 20, seed: 41 });
    const primary = await Primary.start({ vm, sessionId: 'vm-j', secondary: { host: '127.0.0.1', port: restarted.port } });
    cleanups.push(() => primary.close());
    expect(restarted.committedTxn).toBe(last + 1);
  });

  it('refuses a journal of another session at start', async () => {
    const dir = tempDir();
    await replicate(dir, 5);
    await expect(Secondary.listen({ port: 0, journalDir: dir, sessionId: 'someone-else' })).rejects.toMatchObject({ code: 'KEMARI_HELLO_MISMATCH' });
  });
});
