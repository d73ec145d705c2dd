import { describe, expect, it } from 'vitest';
import { digestHex } from '../../src/replica/state-digest.js';
import { SimulatedVm } from '../../src/vm/simulated-vm.js';
import { ReceiverSide, recordStream } from '../helpers/session.js';
import type { RecordedStream } from '../helpers/session.js';

/** Feeds the HELLO and the first `cut` bytes of the stream (in a few chunks), then loses the connection. */
function replayPrefix(recorded: RecordedStream, cut: number, chunkBytes = 7001): ReceiverSide {
  const side = new ReceiverSide({ delta: recorded.delta });
  side.feed(recorded.hello);
  for (let at = 0; at < cut; at += chunkBytes) side.feed(recorded.stream.subarray(at, Math.min(cut, at + chunkBytes)));
  side.lose();
  return side;
}

/** The replica equals exactly the last epoch wholly inside the prefix (or holds no epoch before the first). */
function expectExactlyOneEpoch(recorded: RecordedStream, cut: number): void {
  const side = replayPrefix(recorded, cut);
  const complete = recorded.epochs.filter((e) => e.endOffset <= cut);
  const expected = complete.at(-1);
  expect(side.errors, `cut ${cut}`).toEqual([]);
  if (expected === undefined) {
    expect(side.replica?.hasCommittedEpoch ?? false, `cut ${cut}`).toBe(false);
    return;
  }
  expect(side.replica!.committedTxn, `cut ${cut}`).toBe(expected.txn);
  expect(digestHex(side.replica!.digest()), `cut ${cut}`).toBe(digestHex(expected.digest));
  // And a VM restored from it is that epoch, too.
  expect(digestHex(SimulatedVm.restore(side.replica!.snapshot()).digest())).toBe(digestHex(expected.digest));
}

describe('crash points with delta frames: a cut anywhere leaves the replica at exactly one committed epoch', () => {
  const recorded = recordStream({ epochs: 8, stepsPerEpoch: 3, seed: 7, delta: true });

  it('the stream does carry delta pages, and all of it commits every epoch', () => {
    expect(recorded.deltaPages).toBeGreaterThan(20);
    const side = replayPrefix(recorded, recorded.stream.byteLength);
    expect(side.applied).toEqual(recorded.epochs.map((e) => e.txn));
  });

  it('at every frame boundary, one byte either side of it, and 600 random offsets', () => {
    const cuts = new Set<number>();
    for (const epoch of recorded.epochs) {
      for (const at of epoch.frameOffsets) for (const d of [-1, 0, 1]) if (at + d >= 0) cuts.add(at + d);
      cuts.add(epoch.endOffset);
    }
    let seed = 777;
    const random = (): number => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
    for (let i = 0; i < 600; i++) cuts.add(Math.floor(random() * (recorded.stream.byteLength + 1)));
    for (const cut of cuts) expectExactlyOneEpoch(recorded, Math.min(cut, recorded.stream.byteLength));
  });
});

describe('crash points: a cut anywhere leaves the replica at exactly one committed epoch', () => {
  const recorded = recordStream({ epochs: 8, stepsPerEpoch: 3, seed: 7 });

  it('records distinct epochs (the test could tell them apart)', () => {
    const digests = new Set(recorded.epochs.map((e) => digestHex(e.digest)));
    expect(digests.size).toBe(recorded.epochs.length);
    expect(recorded.epochs.reduce((n, e) => n + e.frameOffsets.length, 0)).toBeGreaterThan(40);
  });

  it('the whole stream commits every epoch', () => {
    const side = replayPrefix(recorded, recorded.stream.byteLength);
    expect(side.applied).toEqual(recorded.epochs.map((e) => e.txn));
  });

  it('at every frame boundary, and one byte either side of it', () => {
    const cuts = new Set<number>();
    for (const epoch of recorded.epochs) {
      for (const at of epoch.frameOffsets) for (const d of [-1, 0, 1]) if (at + d >= 0) cuts.add(at + d);
      cuts.add(epoch.endOffset);
    }
    expect(cuts.size).toBeGreaterThan(100);
    for (const cut of cuts) expectExactlyOneEpoch(recorded, Math.min(cut, recorded.stream.byteLength));
  });

  it('at 1,200 random byte offsets', () => {
    let seed = 12345;
    const random = (): number => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
    for (let i = 0; i < 1200; i++) expectExactlyOneEpoch(recorded, Math.floor(random() * (recorded.stream.byteLength + 1)));
  });
});

describe('memory, devices and disk of one epoch commit together (seed 003)', () => {
  // Every epoch writes its number into memory page 3 and into disk block 5, and the cpu's tick count follows.
  const recorded = recordStream({
    memoryBytes: 256 * 1024,
    epochs: 10,
    stepsPerEpoch: 1,
    seed: 3,
    beforeCapture: (vm, epoch) => {
      const value = new Uint8Array(4096).fill(epoch + 1);
      vm.write(3 * 4096, value);
      vm.diskWrite(0, 5 * 4096, value);
    },
  });

  it('at every byte offset of the stream, memory and disk never disagree', () => {
    const step = Math.max(1, Math.floor(recorded.stream.byteLength / 3000));
    let checked = 0;
    for (let cut = 0; cut <= recorded.stream.byteLength; cut += step) {
      const side = replayPrefix(recorded, cut, 4093);
      const replica = side.replica!;
      if (!replica.hasCommittedEpoch) continue;
      const snap = replica.snapshot();
      const memoryValue = snap.memory[3 * 4096];
      const diskValue = snap.disks[0]!.data[5 * 4096];
      expect(memoryValue, `cut ${cut}`).toBe(diskValue);
      expect(memoryValue, `cut ${cut}`).toBe(replica.committedTxn);
      checked++;
    }
    expect(checked).toBeGreaterThan(1000);
  });
});
