import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { Primary } from '../../src/primary/primary.js';
import type { PrimaryCapture, PrimaryCommit } from '../../src/primary/primary.js';
import { Secondary } from '../../src/secondary/secondary.js';
import { digestHex } from '../../src/replica/state-digest.js';
import { connectTcp } from '../../src/transport/tcp.js';
import type { Connection } from '../../src/transport/connection.js';
import { ForwardingConnection } from '../helpers/forwarding-connection.js';
import { SimulatedVm } from '../../src/vm/simulated-vm.js';
import { Workload } from '../../src/vm/workload.js';

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

/**
 * Holds the last `tailBytes` of each write (the chunks themselves, not copies, as a socket does) until the next
 * write or at most 200 ms, and counts them in `bufferedBytes`; everything else goes to the inner connection at once.
 */
class TailHoldingConnection extends ForwardingConnection {
  private held: Uint8Array[] = [];
  /** Bytes written and held here, not yet handed to the inner connection. */
  heldBytes = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    inner: Connection,
    private readonly tailBytes: number,
  ) {
    super(inner);
  }

  override write(chunks: readonly Uint8Array[]): boolean {
    // What was held goes first, then this write but for its last `tailBytes`, which stay referenced here.
    const pass = this.held;
    let totalBytes = 0;
    for (const chunk of chunks) totalBytes += chunk.byteLength;
    const cut = totalBytes - Math.min(this.tailBytes, totalBytes);
    this.held = [];
    this.heldBytes = totalBytes - cut;
    let offset = 0;
    for (const chunk of chunks) {
      const passed = Math.min(chunk.byteLength, Math.max(0, cut - offset));
      if (passed > 0) pass.push(chunk.subarray(0, passed));
      if (passed < chunk.byteLength) this.held.push(chunk.subarray(passed));
      offset += chunk.byteLength;
    }
    const ok = pass.length === 0 ? true : this.inner.write(pass);
    this.timer ??= setTimeout(() => {
      this.timer = undefined;
      this.release();
    }, 200);
    return ok;
  }

  private release(): void {
    const rest = this.held;
    this.held = [];
    this.heldBytes = 0;
    if (rest.length > 0 && !this.inner.closed) this.inner.write(rest);
  }

  override close(error?: Parameters<Connection['close']>[0]): void {
    clearTimeout(this.timer);
    if (error === undefined) this.release();
    super.close(error);
  }
  override get bufferedBytes(): number {
    return this.heldBytes + this.inner.bufferedBytes;
  }
}

/** Starts protection while a guest keeps running; returns how many guest steps ran during the full sync. */
async function syncWhileRunning(precopyRoundsMax: number) {
  const secondary = await Secondary.listen({ port: 0, verify: true, bodyBytesMax: 1 << 20 });
  cleanups.push(() => secondary.close());
  const vm = new SimulatedVm({ memoryBytes: 16 << 20, seed: 71 });
  vm.write(0, new Uint8Array(16 << 20).fill(7)); // no zero pages: the sync has something to move
  const workload = new Workload(vm, { seed: 4, pagesPerStep: 32, outputEvery: 0 });
  let running = true;
  let steps = 0;
  const guest = (async () => {
    while (running) {
      if (workload.step()) steps++;
      await new Promise((r) => setImmediate(r));
    }
  })();
  const digests = new Map<number, string>();
  const commits: PrimaryCommit[] = [];
  const stepsBefore = steps;
  const primaryPromise = Primary.start({
    vm,
    secondary: { host: '127.0.0.1', port: secondary.port },
    verify: true,
    precopyRoundsMax,
    pagesPerFrameMax: 64,
    bodyBytesMax: 1 << 20,
  });
  const primary = await primaryPromise;
  cleanups.push(() => primary.close());
  const stepsDuring = steps - stepsBefore;
  primary.on('capture', (c: PrimaryCapture) => digests.set(c.txn, digestHex(c.digest!)));
  primary.on('commit', (c: PrimaryCommit) => commits.push(c));
  await primary.tap.output('serial0', Buffer.from('after the full sync\n')); // one more epoch, verified too
  running = false;
  await guest;
  return { secondary, primary, stepsDuring, digests };
}

describe('full sync with pre-copy', () => {
  it('the guest keeps running during the full sync, and the replica is still exactly one verified epoch', async () => {
    const { secondary, primary, stepsDuring, digests } = await syncWhileRunning(4);
    expect(stepsDuring).toBeGreaterThan(0);
    expect(primary.state).toBe('protected');
    // verify is on: the secondary checked every epoch's digest, including the pre-copied full sync.
    expect(secondary.stats().lastError).toBeUndefined();
    primary.close();
    const { vm, txn } = await secondary.promote();
    expect(digestHex(vm.digest())).toBe(digests.get(txn));
    console.log(`pre-copy: ${stepsDuring} guest steps ran during the full sync of 16 MiB; longest pause ${primary.stats().pauseMs.max.toFixed(2)} ms`);
  }, 20_000);

  it('pre-copied chunks are handed back once written, and the next chunks reuse their buffers without corrupting frames', async () => {
    // A connection that keeps the last 900 KiB written until the next write (or 200 ms): below the 1 MiB
    // the primary waits for, so the next chunk is copied while the tail of the last one is still held. A chunk
    // handed back before its bytes were handed over would be overwritten under those frames (whose CRC the
    // secondary checks), and the sync would fail.
    const secondary = await Secondary.listen({ port: 0, verify: true });
    cleanups.push(() => secondary.close());
    const vm = new SimulatedVm({ memoryBytes: 64 << 20, seed: 72, disks: [] });
    vm.write(0, randomBytes(64 << 20)); // every page different: an overwritten page could not pass for itself
    const workload = new Workload(vm, { seed: 5, pagesPerStep: 64, outputEvery: 0 });
    const chunkBuffers = new Set<ArrayBufferLike>();
    let chunks = 0;
    let copiedWhileHeld = 0;
    let released = 0;
    let reused = 0;
    const precopy = vm.precopy.bind(vm);
    vm.precopy = (options) => {
      const chunk = precopy(options);
      const buffer = chunk.pages.find((p) => p.data.length > 0)?.data.buffer;
      if (buffer !== undefined && chunkBuffers.has(buffer)) reused += 1;
      if (buffer !== undefined) chunkBuffers.add(buffer);
      chunks += 1;
      if ((holding?.heldBytes ?? 0) > 0) copiedWhileHeld += 1;
      workload.step(); // the guest runs between chunks: later rounds and the final capture have pages to carry
      return chunk;
    };
    const releasePrecopy = vm.releasePrecopy.bind(vm);
    vm.releasePrecopy = (chunk) => {
      released += 1;
      releasePrecopy(chunk);
    };
    let holding: TailHoldingConnection | undefined;
    const primary = await Primary.start({
      vm,
      connector: async () => (holding = new TailHoldingConnection(await connectTcp({ host: '127.0.0.1', port: secondary.port }), 900 << 10)),
      verify: true,
      precopyRoundsMax: 2,
    });
    cleanups.push(() => primary.close());
    const digests = new Map<number, string>();
    primary.on('capture', (c: PrimaryCapture) => digests.set(c.txn, digestHex(c.digest!)));
    workload.step();
    await primary.tap.output('serial0', Buffer.from('after the full sync\n'));
    expect(primary.state).toBe('protected');
    expect(secondary.stats().lastError).toBeUndefined();
    // Chunks were copied while the tail of the one before was still held: the hazard was there to be met.
    expect(copiedWhileHeld).toBeGreaterThanOrEqual(2);
    expect(chunks).toBeGreaterThanOrEqual(5);
    // Every chunk is handed back (the last ones once later writes found them written), and buffers were reused.
    expect(released).toBe(chunks);
    expect(reused).toBeGreaterThanOrEqual(2);
    expect(chunkBuffers.size).toBeLessThanOrEqual(3);
    primary.close();
    const { vm: replica, txn } = await secondary.promote();
    expect(digestHex(replica.digest())).toBe(digests.get(txn));
  }, 30_000);

  it('without pre-copy the full sync is one capture (the guest waits for it)', async () => {
    const { primary } = await syncWhileRunning(0);
    expect(primary.state).toBe('protected');
    console.log(`no pre-copy: full-sync pause ${primary.stats().pauseMs.max.toFixed(2)} ms`);
  }, 20_000);
});
