/**
 * In-place captures across a lost link: an in-place epoch keeps no copies of its pages (they were guest memory,
 * read while the VM was paused), so an epoch the secondary never committed is taken from the guest again, its
 * pages marked dirty (VmAdapter.markDirty), when the secondary resumes from its committed epoch. Real sockets; the
 * secondary verifies every epoch's digest, so a page missing from the resumed transaction fails it.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { Primary } from '../../src/primary/primary.js';
import type { PrimaryCapture, Reprotection } from '../../src/primary/primary.js';
import { Secondary } from '../../src/secondary/secondary.js';
import { digestHex } from '../../src/replica/state-digest.js';
import { connect } from '../../src/transport/index.js';
import { SimulatedVm } from '../../src/vm/simulated-vm.js';
import type { CaptureOptions, EpochCapture } from '../../src/vm/adapter.js';
import { Workload } from '../../src/vm/workload.js';
import { ForwardingConnection } from '../helpers/forwarding-connection.js';
import type { ConnectionEvents } from '../../src/transport/connection.js';

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

const HEARTBEAT = { intervalMs: 20, missedMax: 50 };
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
async function waitUntil(cond: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!cond()) {
    if (performance.now() > deadline) throw new Error(`not in time: ${what}`);
    await sleep(2);
  }
}

/**
 * Swallows every write once `swallowing`: epochs the primary sends that the secondary never receives. Holds what
 * arrives (acks) while `holding`, until {@link deliver}.
 */
class Swallowing extends ForwardingConnection {
  swallowing = false;
  holding = false;
  private readonly held: Array<() => void> = [];
  override write(chunks: readonly Uint8Array[]): boolean {
    return this.swallowing ? true : super.write(chunks);
  }
  override on<E extends keyof ConnectionEvents>(event: E, listener: ConnectionEvents[E]): this {
    if (event !== 'data') return super.on(event, listener);
    const onData = listener as ConnectionEvents['data'];
    this.inner.on('data', (chunk) => (this.holding ? this.held.push(() => onData(chunk)) : onData(chunk)));
    return this;
  }
  deliver(): void {
    this.holding = false;
    for (const f of this.held.splice(0)) f();
  }
}

/** Records what each capture was asked for and whether it came back in place. */
class RecordingVm extends SimulatedVm {
  readonly captures: Array<{ asked: boolean; inPlace: boolean }> = [];
  readonly marked: number[] = [];
  override capture(options: CaptureOptions): EpochCapture {
    const capture = super.capture(options);
    this.captures.push({ asked: options.inPlace === true, inPlace: capture.inPlace === true });
    return capture;
  }
  override markDirty(pageIndices: Uint32Array): void {
    this.marked.push(...pageIndices);
    super.markDirty(pageIndices);
  }
}

async function setup(options: { delta: boolean; settleOutputs?: () => Promise<void>; onSecondaryLoss?: 'pause' }) {
  const secondary = await Secondary.listen({ port: 0, sessionId: 'vm-in-place', heartbeat: HEARTBEAT, verify: true });
  cleanups.push(() => secondary.close());
  const vm = new RecordingVm({ memoryBytes: 1 << 20, seed: 61 });
  const links: Swallowing[] = [];
  const primary = await Primary.start({
    vm,
    sessionId: 'vm-in-place',
    heartbeat: HEARTBEAT,
    verify: true,
    delta: options.delta,
    captureInPlace: true,
    sync: { mode: 'periodic', intervalMs: 5 },
    reconnectDelayMs: 20,
    connector: async () => {
      const link = new Swallowing(await connect({ host: '127.0.0.1', port: secondary.port }));
      links.push(link);
      return link;
    },
    ...(options.settleOutputs === undefined ? {} : { settleOutputs: options.settleOutputs }),
    ...(options.onSecondaryLoss === undefined ? {} : { onSecondaryLoss: options.onSecondaryLoss }),
  });
  cleanups.push(() => primary.close());
  const reprotections: Reprotection[] = [];
  primary.on('reprotected', (r: Reprotection) => reprotections.push(r));
  const workload = new Workload(vm, { seed: 62, pagesPerStep: 24, outputEvery: 0 });
  const steps = async (count: number): Promise<void> => {
    for (let i = 0; i < count; i++) {
      workload.step();
      await sleep(1);
    }
  };
  /** The guest stops changing; once two more epochs commit, the replica must be the VM exactly. */
  const settled = async (): Promise<void> => {
    const from = secondary.committedTxn;
    await waitUntil(() => secondary.committedTxn >= from + 2, 'two quiet epochs');
    expect(primary.state).toBe('protected');
    // One session since the loss: a refused (digest) epoch would have ended it and started another, a full sync.
    expect(reprotections.map((r) => r.full)).toEqual([false]);
    vm.pause();
    await waitUntil(() => primary.stats().inFlight === 0, 'nothing in flight');
    expect(digestHex(secondary.replica!.digest())).toBe(digestHex(vm.digest()));
    vm.resume();
  };
  return { secondary, primary, vm, links, reprotections, steps, settled };
}

describe('in-place captures', () => {
  for (const delta of [true, false]) {
    it(`epochs sent but never received are taken from the guest again on resume (delta ${delta})`, async () => {
      const { primary, vm, links, reprotections, steps, settled } = await setup({ delta });
      await steps(20);
      await waitUntil(() => primary.state === 'protected', 'protected');
      // Incremental captures are asked for in place, and the SimulatedVm gives guest memory.
      expect(vm.captures.some((c) => c.asked && c.inPlace)).toBe(true);
      expect(vm.captures.filter((c) => c.asked).every((c) => c.inPlace)).toBe(true);

      // From now on nothing reaches the secondary: the epochs captured meanwhile stay in flight, uncommitted.
      const captured: PrimaryCapture[] = [];
      primary.on('capture', (c: PrimaryCapture) => captured.push(c));
      links.at(-1)!.swallowing = true;
      // Two epochs swallowed and in flight (one sent before may still be acked meanwhile: then another follows).
      while (captured.filter((c) => c.pages > 0).length < 2 || primary.stats().inFlight < 2) await steps(1);
      expect(captured.filter((c) => c.pages > 0).length).toBeGreaterThanOrEqual(2);
      const marked = vm.marked.length;

      // The link dies; the secondary, which never saw those epochs, resumes from its committed one.
      links.at(-1)!.close();
      await waitUntil(() => reprotections.length > 0, 'reprotected');
      expect(reprotections[0]!.full).toBe(false);
      expect(captured.every((c) => c.txn > reprotections[0]!.fromTxn)).toBe(true);
      // Their pages were marked dirty again, every one of them (the guest may have rewritten some since).
      const inFlightPages = new Set(vm.marked.slice(marked));
      expect(inFlightPages.size).toBeGreaterThanOrEqual(24);

      await steps(10);
      await settled();
    });
  }

  it('an epoch captured as the link died is not sent, and its pages go out again with the next session', async () => {
    let arm: (() => Promise<void>) | undefined;
    const { primary, vm, links, reprotections, steps, settled } = await setup({
      delta: true,
      // Runs in the pause, before the capture: the link dies there, so the capture belongs to a lost session.
      settleOutputs: async () => {
        const now = arm;
        arm = undefined;
        await now?.();
      },
    });
    await steps(20);
    await waitUntil(() => primary.state === 'protected' && primary.stats().inFlight === 0, 'protected, nothing in flight');
    const marked = vm.marked.length;
    const capturesBefore = vm.captures.length;
    arm = async () => {
      links.at(-1)!.close();
      await waitUntil(() => primary.state !== 'protected', 'the loss seen');
    };
    await steps(1);
    await waitUntil(() => reprotections.length > 0, 'reprotected');
    expect(reprotections[0]!.full).toBe(false);
    expect(vm.captures.length).toBeGreaterThan(capturesBefore);
    // The lost capture's pages (page 0 and the step's 24 others) were marked dirty again before the next capture.
    expect(new Set(vm.marked.slice(marked)).size).toBeGreaterThanOrEqual(25);
    await steps(5);
    await settled();
  });

  it("'pause': protection coming back while a checkpoint holds the VM paused does not resume it under that capture", async () => {
    // After the loss the VM stays paused ('pause'). In the new session, the first epoch's ack is held back until the
    // next checkpoint has paused the VM and waits in settleOutputs; the ack then makes the primary protected again,
    // and its resume of the VM must wait for that checkpoint (else its capture reads a running guest's memory).
    let session: { calls: number } | undefined;
    let primaryRef: Primary | undefined;
    let linksRef: Swallowing[] = [];
    let overlapped: boolean | undefined;
    const { primary, vm, links, reprotections, steps, settled } = await setup({
      delta: true,
      onSecondaryLoss: 'pause',
      settleOutputs: async () => {
        if (session === undefined || primaryRef?.state !== 'syncing') return;
        session.calls += 1;
        const link = linksRef.at(-1)!;
        if (session.calls === 1) link.holding = true; // the resync epoch's ack will wait
        else if (session.calls === 2) {
          link.deliver();
          await waitUntil(() => primaryRef!.state === 'protected', 'protected again');
          await sleep(5);
          overlapped = vm.paused;
        }
      },
    });
    primaryRef = primary;
    linksRef = links;
    await steps(20);
    await waitUntil(() => primary.state === 'protected', 'protected');
    session = { calls: 0 };
    links.at(-1)!.close();
    await waitUntil(() => reprotections.length > 0, 'reprotected');
    await waitUntil(() => overlapped !== undefined, 'a second checkpoint in the new session');
    expect(overlapped).toBe(true); // the VM was still paused for that checkpoint once protection came back
    await steps(5);
    expect(vm.paused).toBe(false); // and runs again after it
    await settled();
  });

  it('views are never read once the guest runs again: a guest that rewrites its pages at every resume changes no epoch', async () => {
    class Scribbling extends RecordingVm {
      private last: number[] = [];
      scribbled = 0;
      override capture(options: CaptureOptions): EpochCapture {
        const capture = super.capture(options);
        this.last = capture.inPlace === true ? capture.pages.map((p) => p.index) : [];
        return capture;
      }
      override resume(): void {
        super.resume();
        // The guest's first act after the pause: every page the in-place capture viewed is rewritten.
        for (const index of this.last) this.write(index * this.pageBytes + 100, new Uint8Array(8).fill(0xee ^ (this.scribbled & 0xff)));
        if (this.last.length > 0) this.scribbled += 1;
        this.last = [];
      }
    }
    const secondary = await Secondary.listen({ port: 0, sessionId: 'vm-scribble', heartbeat: HEARTBEAT, verify: true });
    cleanups.push(() => secondary.close());
    const vm = new Scribbling({ memoryBytes: 1 << 20, seed: 67 });
    const primary = await Primary.start({ vm, sessionId: 'vm-scribble', heartbeat: HEARTBEAT, verify: true, delta: true, captureInPlace: true, sync: { mode: 'periodic', intervalMs: 5 }, secondary: { host: '127.0.0.1', port: secondary.port } });
    cleanups.push(() => primary.close());
    const workload = new Workload(vm, { seed: 68, pagesPerStep: 24, outputEvery: 0 });
    for (let i = 0; i < 30; i++) {
      workload.step();
      await sleep(1);
    }
    await waitUntil(() => vm.scribbled >= 10, 'ten scribbled resumes');
    // Verified at every ack: an epoch sent with a scribbled page would have failed its digest and ended the session.
    expect(primary.state).toBe('protected');
    expect(primary.stats().lastError).toBeUndefined();
    expect(primary.stats().deltaPages).toBeGreaterThan(0);
  });

  it('a VM that answers with views it was not asked for fails the epoch, it is not sent', async () => {
    class Unasked extends RecordingVm {
      unasked = false;
      override capture(options: CaptureOptions): EpochCapture {
        return super.capture({ ...options, inPlace: this.unasked });
      }
    }
    const secondary = await Secondary.listen({ port: 0, sessionId: 'vm-unasked', heartbeat: HEARTBEAT, verify: true });
    cleanups.push(() => secondary.close());
    const vm = new Unasked({ memoryBytes: 1 << 20, seed: 65 });
    const primary = await Primary.start({ vm, sessionId: 'vm-unasked', heartbeat: HEARTBEAT, verify: true, sync: { mode: 'periodic', intervalMs: 5 }, reconnectDelayMs: 0, secondary: { host: '127.0.0.1', port: secondary.port } });
    cleanups.push(() => primary.close());
    const synced = secondary.committedTxn;
    vm.unasked = true;
    new Workload(vm, { seed: 66, outputEvery: 0 }).step();
    await waitUntil(() => primary.stats().lastError !== undefined, 'the epoch failed');
    expect(primary.stats().lastError).toMatchObject({ code: 'KEMARI_INVALID_ARGUMENT', message: expect.stringContaining('not asked for') });
    expect(secondary.committedTxn).toBe(synced);
  });

  it('captures copy by default, and only a boolean is taken', async () => {
    const secondary = await Secondary.listen({ port: 0, sessionId: 'vm-copy', heartbeat: HEARTBEAT, verify: true });
    cleanups.push(() => secondary.close());
    const vm = new RecordingVm({ memoryBytes: 1 << 20, seed: 63 });
    const primary = await Primary.start({
      vm,
      sessionId: 'vm-copy',
      heartbeat: HEARTBEAT,
      verify: true,
      delta: true,
      sync: { mode: 'periodic', intervalMs: 5 },
      secondary: { host: '127.0.0.1', port: secondary.port },
    });
    cleanups.push(() => primary.close());
    const workload = new Workload(vm, { seed: 64, outputEvery: 0 });
    for (let i = 0; i < 10; i++) {
      workload.step();
      await sleep(2);
    }
    await waitUntil(() => secondary.committedTxn >= 5, 'epochs committed');
    expect(vm.captures.length).toBeGreaterThan(2);
    expect(vm.captures.every((c) => !c.asked && !c.inPlace)).toBe(true);
    await expect(Primary.start({ vm, captureInPlace: 'yes' as never, secondary: { host: '127.0.0.1', port: secondary.port } })).rejects.toMatchObject({
      code: 'KEMARI_INVALID_ARGUMENT',
    });
  });
});
