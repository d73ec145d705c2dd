/**
 * The primary hands an epoch's frames to a connection that can cork under one cork (one system call on a socket),
 * one write per frame; a connection that cannot cork gets the same frames, one write each, as before.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { Primary } from '../../src/primary/primary.js';
import { Secondary } from '../../src/secondary/secondary.js';
import { connectTcp } from '../../src/transport/tcp.js';
import type { Connection } from '../../src/transport/connection.js';
import { ForwardingConnection } from '../helpers/forwarding-connection.js';
import { SimulatedVm } from '../../src/vm/simulated-vm.js';
import { Workload } from '../../src/vm/workload.js';
import { HEADER_BYTES, readHeader } from '../../src/wire/header.js';

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

/** A TCP connection that records every write: the frame type it starts with, and how deep the cork was. */
class RecordingConnection extends ForwardingConnection {
  readonly writes: Array<{ type: number; corked: number }> = [];
  /** Frame types written under each cork, one list per cork, in order. */
  readonly batches: number[][] = [];
  private depth = 0;
  cork?: () => void;
  uncork?: () => void;

  constructor(inner: Connection, corks: boolean) {
    super(inner);
    if (corks) {
      this.cork = () => {
        if (this.depth++ === 0) this.batches.push([]);
        inner.cork!();
      };
      this.uncork = () => {
        this.depth -= 1;
        inner.uncork!();
      };
    }
  }

  override write(chunks: readonly Uint8Array[]): boolean {
    const first = chunks[0]!;
    expect(first.byteLength).toBe(HEADER_BYTES); // one frame a write: its header first
    const { type } = readHeader(first, 2 ** 32 - 1);
    this.writes.push({ type, corked: this.depth });
    if (this.depth > 0) this.batches.at(-1)!.push(type);
    return super.write(chunks);
  }
}

async function protectAndRun(corks: boolean): Promise<{ recording: RecordingConnection; epochs: number }> {
  const secondary = await Secondary.listen({ host: '127.0.0.1', port: 0, verify: true });
  cleanups.push(() => secondary.close());
  const vm = new SimulatedVm({ memoryBytes: 1 << 20, seed: 5, disks: [{ id: 0, bytes: 64 << 10 }] });
  let recording: RecordingConnection | undefined;
  const primary = await Primary.start({
    vm,
    connector: async () => {
      recording = new RecordingConnection(await connectTcp({ host: '127.0.0.1', port: secondary.port }), corks);
      return recording;
    },
    verify: true,
    precopyRoundsMax: 0,
  });
  cleanups.push(() => primary.close());
  const workload = new Workload(vm, { seed: 9, pagesPerStep: 40, outputEvery: 1, output: (channel, data) => void primary.tap.output(channel, data) });
  for (let i = 0; i < 20; i++) {
    workload.step();
    await new Promise((r) => setTimeout(r, 2));
  }
  await primary.tap.output('net0', Uint8Array.of(1));
  expect(secondary.committedTxn).toBeGreaterThanOrEqual(primary.stats().ackedTxn);
  return { recording: recording!, epochs: primary.stats().epochs };
}

describe("the primary's writes", () => {
  it('on a connection that corks: every frame under a cork, an epoch (BEGIN to COMMIT, several frames) in one', async () => {
    const { recording, epochs } = await protectAndRun(true);
    expect(epochs).toBeGreaterThan(3);
    expect(recording.writes.length).toBeGreaterThan(4 * epochs);
    expect(recording.writes.every((w) => w.corked === 1)).toBe(true);
    // Some cork carried a whole epoch's frames: BEGIN, at least PAGES and DEVICE, and COMMIT.
    const whole = recording.batches.filter((types) => types.length >= 4);
    expect(whole.length).toBeGreaterThan(0);
  });

  it('on a connection that cannot cork: the same frames, one write each, none corked', async () => {
    const { recording, epochs } = await protectAndRun(false);
    expect(epochs).toBeGreaterThan(3);
    expect(recording.batches).toEqual([]);
    expect(recording.writes.length).toBeGreaterThan(4 * epochs);
    expect(recording.writes.every((w) => w.corked === 0)).toBe(true);
  });
});
