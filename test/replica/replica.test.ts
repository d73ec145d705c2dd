import { describe, expect, it } from 'vitest';
import { PageKind } from '../../src/index.js';
import { Replica } from '../../src/replica/replica.js';
import { digestHex } from '../../src/replica/state-digest.js';
import type { StagedTxn } from '../../src/txn/staged-txn.js';
import { encodeDelta } from '../../src/pages/delta.js';

const geometry = { memoryBytes: 4 * 4096, pageBytes: 4096, deviceNames: ['cpu0', 'nic0'], disks: [{ id: 0, bytes: 8192 }] };

function fullSync(txn: number, fill: number, extra: Partial<StagedTxn> = {}): StagedTxn {
  return {
    txn,
    full: true,
    baseTxn: txn - 1,
    releasedTxn: 0,
    pageBytes: 4096,
    pages: [0, 1, 2, 3].map((index) => ({ index, kind: PageKind.RAW, data: new Uint8Array(4096).fill(fill) })),
    devices: [
      { name: 'cpu0', state: { epoch: txn } },
      { name: 'nic0', state: { epoch: txn } },
    ],
    diskWrites: [],
    events: [],
    stateDigest: new Uint8Array(0),
    bodyBytes: 0,
    ...extra,
  };
}

function incremental(txn: number, extra: Partial<StagedTxn> = {}): StagedTxn {
  return { ...fullSync(txn, txn), full: false, pages: [{ index: 0, kind: PageKind.RAW, data: new Uint8Array(4096).fill(txn) }], devices: [], ...extra };
}

function deep(depth: number): unknown {
  let v: unknown = 0;
  for (let i = 0; i < depth; i++) v = [v];
  return v;
}

describe('Replica refuses before it changes anything', () => {
  it('a device state that cannot be kept fails the transaction with nothing applied (no half-applied epoch)', () => {
    const replica = new Replica(geometry);
    replica.apply(fullSync(1, 1), { verify: false });
    const before = digestHex(replica.digest());
    const bad = incremental(2, { devices: [{ name: 'cpu0', state: deep(20_000) }] });
    expect(() => replica.apply(bad, { verify: false })).toThrow(expect.objectContaining({ code: 'KEMARI_BAD_BODY' }));
    expect(replica.committedTxn).toBe(1);
    expect(digestHex(replica.digest())).toBe(before);
  });

  it('a full sync must carry every device exactly once, and replaces the device table', () => {
    const replica = new Replica(geometry);
    const dup = fullSync(1, 1, { devices: [{ name: 'cpu0', state: 1 }, { name: 'cpu0', state: 2 }] });
    expect(() => replica.apply(dup, { verify: false })).toThrow(expect.objectContaining({ code: 'KEMARI_BAD_BODY' }));
    replica.apply(fullSync(1, 1), { verify: false });
    expect([...replica.devices.keys()].sort()).toEqual(['cpu0', 'nic0']);
  });

  it('bounds the events kept for replay, refuses a releasedTxn ahead of the committed epoch, and never resurrects released events', () => {
    const replica = new Replica(geometry, { replayEventsMax: 3, replayBytesMax: 1 << 20 });
    const events = (n: number) => Array.from({ length: n }, (_, i) => ({ id: i + 1, channel: 'c', payload: Uint8Array.of(i) }));
    replica.apply(fullSync(1, 1, { events: events(2) }), { verify: false });
    expect(() => replica.apply(incremental(2, { events: events(2), releasedTxn: 0 }), { verify: false })).toThrow(
      expect.objectContaining({ code: 'KEMARI_TXN_TOO_LARGE' }),
    );
    replica.apply(incremental(2, { events: events(2), releasedTxn: 1 }), { verify: false }); // epoch 1's events dropped
    expect(replica.pendingEvents).toHaveLength(2);
    expect(() => replica.apply(incremental(3, { releasedTxn: 3 }), { verify: false })).toThrow(expect.objectContaining({ code: 'KEMARI_BAD_BODY' }));
    expect(replica.committedTxn).toBe(2);
    // A releasedTxn going back (a new primary session) keeps what was known released.
    replica.apply(incremental(3, { releasedTxn: 0 }), { verify: false });
    expect(replica.pendingEvents.map((e) => e.txn)).toEqual([2, 2]);
  });
});

describe('Replica and delta pages', () => {
  const deltaOf = (oldPage: Uint8Array, newPage: Uint8Array): Uint8Array => {
    const out = new Uint8Array(4096);
    const n = encodeDelta(oldPage, newPage, out);
    return out.slice(0, n);
  };

  it('applies a delta against its committed copy of the page, when deltas were negotiated', () => {
    const replica = new Replica(geometry);
    replica.apply(fullSync(1, 5), { verify: false });
    const next = new Uint8Array(4096).fill(5);
    next[10] = 99;
    next[4000] = 42;
    replica.apply(incremental(2, { pages: [{ index: 2, kind: PageKind.DELTA, data: deltaOf(new Uint8Array(4096).fill(5), next) }] }), { verify: false, delta: true });
    expect(Buffer.from(replica.snapshot().memory.subarray(2 * 4096, 3 * 4096)).equals(Buffer.from(next))).toBe(true);
  });

  it('refuses, before changing anything, deltas not negotiated, deltas in a full sync, and malformed deltas', () => {
    const replica = new Replica(geometry);
    replica.apply(fullSync(1, 5), { verify: false });
    const before = digestHex(replica.digest());
    const good = deltaOf(new Uint8Array(4096).fill(5), new Uint8Array(4096).fill(6));
    const pages = (data: Uint8Array) => [
      { index: 0, kind: PageKind.RAW, data: new Uint8Array(4096).fill(1) },
      { index: 1, kind: PageKind.DELTA, data },
    ];
    expect(() => replica.apply(incremental(2, { pages: pages(good) }), { verify: false })).toThrow(expect.objectContaining({ code: 'KEMARI_BAD_BODY' }));
    expect(() => replica.apply({ ...fullSync(2, 1), pages: [...fullSync(2, 1).pages.slice(0, 3), { index: 3, kind: PageKind.DELTA, data: good }] }, { verify: false, delta: true })).toThrow(
      expect.objectContaining({ code: 'KEMARI_BAD_BODY' }),
    );
    for (const malformed of [Uint8Array.of(0x80), Uint8Array.of(0, 200, 1), Uint8Array.of(0xff, 0xff, 0xff, 0x7f, 1, 1)]) {
      expect(() => replica.apply(incremental(2, { pages: pages(malformed) }), { verify: false, delta: true })).toThrow(expect.objectContaining({ code: 'KEMARI_BAD_BODY' }));
    }
    expect(digestHex(replica.digest())).toBe(before);
    expect(replica.committedTxn).toBe(1);
  });
});
