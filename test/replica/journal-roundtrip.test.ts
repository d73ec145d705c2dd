import { stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Journal } from '../../src/replica/journal.js';
import { JOURNAL_FILE_NAME } from '../../src/replica/journal-context.js';
import { RECORD_HEADER_BYTES, decodeRecordPayload, encodeRecord, readRecordHeader } from '../../src/replica/journal-record.js';
import { digestHex } from '../../src/replica/state-digest.js';
import type { StagedTxn } from '../../src/txn/staged-txn.js';
import { PageKind } from '../../src/wire/bodies/pages.js';
import { CrashingFs, TempDirs, copyEvent, hex, stagedStream, codeOf } from './journal-fixtures.js';
import type { StagedStream } from './journal-fixtures.js';

const dirs = new TempDirs();
afterEach(() => dirs.cleanup());

let stream: StagedStream;
beforeAll(() => {
  stream = stagedStream({ epochs: 8, seed: 7 });
});

function options(extra: Partial<Parameters<typeof Journal.open>[1]> = {}): Parameters<typeof Journal.open>[1] {
  return { geometry: stream.geometry, sessionId: stream.sessionId, ...extra };
}


/** Encodes then decodes through the record format alone. */
function roundTrip(staged: StagedTxn): StagedTxn {
  const salt = 0x1234_5678;
  const record = encodeRecord(staged, salt, 1 << 30);
  const header = readRecordHeader(record.header, salt);
  expect(header).toBeDefined();
  expect(readRecordHeader(record.header, salt + 1)).toBeUndefined();
  const payload = Buffer.concat(record.payload);
  expect(RECORD_HEADER_BYTES + payload.byteLength).toBe(record.recordBytes);
  return decodeRecordPayload(header!, new Uint8Array(payload));
}

function plain(staged: StagedTxn): unknown {
  const bytes = (b: Uint8Array): number[] => Array.from(b);
  return {
    ...staged,
    pages: staged.pages.map((p) => ({ index: p.index, kind: p.kind, data: bytes(p.data) })),
    diskWrites: staged.diskWrites.map((w) => ({ ...w, data: bytes(w.data) })),
    events: staged.events.map((e) => ({ ...e, payload: bytes(e.payload) })),
    stateDigest: bytes(staged.stateDigest),
  };
}

describe('journal record format', () => {
  it('round-trips every field of a StagedTxn, pages in arrival order with repeats, ZERO and DELTA kinds', () => {
    const page = (fill: number): Uint8Array => new Uint8Array(4096).fill(fill);
    const staged: StagedTxn = {
      txn: 42,
      full: true,
      baseTxn: 41,
      releasedTxn: 39,
      pageBytes: 4096,
      // 7 repeats across what must become separate PAGES frames; the later copy wins on apply.
      pages: [
        { index: 3, kind: PageKind.RAW, data: page(3) },
        { index: 7, kind: PageKind.ZERO, data: new Uint8Array(0) },
        { index: 1, kind: PageKind.DELTA, data: Uint8Array.of(1, 2, 3) },
        { index: 7, kind: PageKind.RAW, data: page(7) },
        { index: 7, kind: PageKind.RAW, data: page(8) },
      ],
      devices: [
        { name: 'cpu0', state: { regs: [1, 2, 3], flag: true, blob: Uint8Array.of(5, 6) } },
        { name: 'nic0', state: 'opaque' },
      ],
      diskWrites: [
        { diskId: 0, offset: 1024, data: Uint8Array.of(1, 2, 3, 4) },
        { diskId: 2, offset: 0, data: new Uint8Array(700).fill(9) },
      ],
      events: [
        { id: 5, channel: 'net0', payload: Uint8Array.of(1) },
        { id: 6, channel: 'serial', payload: new Uint8Array(0) },
      ],
      stateDigest: new Uint8Array(32).fill(0xab),
      bodyBytes: 123_456,
    };
    const back = roundTrip(staged);
    expect(plain(back)).toEqual(plain(staged));
    expect(back.devices[0]!.state).toEqual({ regs: [1, 2, 3], flag: true, blob: Uint8Array.of(5, 6) });
  });

  it('round-trips an empty transaction without pages (pageBytes 0) and without a digest', () => {
    const staged: StagedTxn = {
      txn: 1,
      full: false,
      baseTxn: 0,
      releasedTxn: 0,
      pageBytes: 0,
      pages: [],
      devices: [],
      diskWrites: [],
      events: [],
      stateDigest: new Uint8Array(0),
      bodyBytes: 24,
    };
    expect(plain(roundTrip(staged))).toEqual(plain(staged));
  });

  it('round-trips every transaction of a recorded stream', () => {
    for (const staged of stream.txns) expect(plain(roundTrip(staged))).toEqual(plain(staged));
  });
});

describe('journal append and recovery', () => {
  it('recovers the replica of the last epoch, with its pending replay events, from a journal of every transaction', async () => {
    const dir = await dirs.make();
    const opened = await Journal.open(dir, options());
    expect(opened.recovered).toEqual({ txn: 0, fromSnapshotTxn: 0, replayedTxns: 0, droppedTailBytes: 0, refusedTxn: 0 });
    expect(opened.replica.committedTxn).toBe(0);
    for (const txn of stream.txns) await opened.journal.append(txn);
    const stats = opened.journal.stats();
    expect(stats).toMatchObject({ records: 8, lastTxn: 8, snapshots: 0, snapshotTxn: 0 });
    expect(stats.bytes).toBe((await stat(join(dir, JOURNAL_FILE_NAME))).size);
    await opened.journal.close();

    const again = await Journal.open(dir, options());
    expect(again.recovered).toEqual({ txn: 8, fromSnapshotTxn: 0, replayedTxns: 8, droppedTailBytes: 0, refusedTxn: 0 });
    expect(digestHex(again.replica.digest())).toBe(hex(stream.digests.at(-1)!));
    expect(again.replica.pendingEvents.map(copyEvent)).toEqual(stream.pending.at(-1));
    expect(again.replica.pendingEvents.length).toBeGreaterThan(0);
    expect(again.journal.lastTxn).toBe(8);
    await again.journal.close();
  });

  it('serves like a secondary: append, apply to the returned replica, reopen halfway and continue', async () => {
    const dir = await dirs.make();
    let { journal, replica } = await Journal.open(dir, options());
    for (const [i, txn] of stream.txns.entries()) {
      await journal.append(txn);
      expect(digestHex(replica.apply(txn, { verify: true }))).toBe(hex(stream.digests[i]!));
      if (i === 3) {
        await journal.close();
        ({ journal, replica } = await Journal.open(dir, options()));
        expect(replica.committedTxn).toBe(4);
        expect(digestHex(replica.digest())).toBe(hex(stream.digests[3]!));
      }
    }
    await journal.close();
    const again = await Journal.open(dir, options());
    expect(digestHex(again.replica.digest())).toBe(hex(stream.digests[7]!));
    expect(again.recovered.replayedTxns).toBe(8);
    await again.journal.close();
  });

  it('refuses an append out of txn order with KEMARI_INVALID_ARGUMENT and writes nothing', async () => {
    const dir = await dirs.make();
    const { journal } = await Journal.open(dir, options());
    expect(await codeOf(journal.append(stream.txns[1]!))).toBe('KEMARI_INVALID_ARGUMENT');
    const before = journal.stats();
    await journal.append(stream.txns[0]!);
    expect(await codeOf(journal.append(stream.txns[0]!))).toBe('KEMARI_INVALID_ARGUMENT');
    expect(await codeOf(journal.append(stream.txns[2]!))).toBe('KEMARI_INVALID_ARGUMENT');
    await journal.append(stream.txns[1]!);
    expect(journal.stats().records).toBe(2);
    expect(before.records).toBe(0);
    await journal.close();
    const again = await Journal.open(dir, options());
    expect(digestHex(again.replica.digest())).toBe(hex(stream.digests[1]!));
    await again.journal.close();
  });

  it('refuses a directory of another session or geometry with KEMARI_HELLO_MISMATCH', async () => {
    const dir = await dirs.make();
    const { journal } = await Journal.open(dir, options());
    await journal.append(stream.txns[0]!);
    await journal.close();
    expect(await codeOf(Journal.open(dir, options({ sessionId: 'another-session' })))).toBe('KEMARI_HELLO_MISMATCH');
    const g = stream.geometry;
    expect(await codeOf(Journal.open(dir, options({ geometry: { ...g, memoryBytes: g.memoryBytes * 2 } })))).toBe('KEMARI_HELLO_MISMATCH');
    expect(await codeOf(Journal.open(dir, options({ geometry: { ...g, deviceNames: [...g.deviceNames].reverse() } })))).toBe('KEMARI_HELLO_MISMATCH');
    expect(await codeOf(Journal.open(dir, options({ geometry: { ...g, disks: [{ id: 0, bytes: 512 }] } })))).toBe('KEMARI_HELLO_MISMATCH');
    // The mismatch changed nothing: the right session still recovers.
    const again = await Journal.open(dir, options());
    expect(again.recovered.txn).toBe(1);
    await again.journal.close();
  });

  it('refuses a record above recordBytesMax with KEMARI_INVALID_ARGUMENT and stays usable', async () => {
    const dir = await dirs.make();
    const limit = 64 * 1024;
    const { journal } = await Journal.open(dir, options({ recordBytesMax: limit }));
    await journal.append(stream.txns[0]!); // a full sync of zero pages: small
    expect(await codeOf(journal.append(stream.txns[1]!))).toBe('KEMARI_INVALID_ARGUMENT'); // ~100 KB
    expect(journal.stats()).toMatchObject({ records: 1, lastTxn: 1 });
    const empty: StagedTxn = { ...stream.txns[1]!, pages: [], devices: [], diskWrites: [], events: [], stateDigest: new Uint8Array(0) };
    await journal.append(empty);
    expect(journal.stats()).toMatchObject({ records: 2, lastTxn: 2 });
    await journal.abandon(2);
    await journal.close();
    // A record written under a larger limit is refused on reading too, instead of allocated.
    const big = await Journal.open(dir, options());
    await big.journal.append(stream.txns[1]!);
    await big.journal.close();
    expect(await codeOf(Journal.open(dir, options({ recordBytesMax: limit })))).toBe('KEMARI_INVALID_ARGUMENT');
    expect(await codeOf(Journal.open(dir, options({ recordBytesMax: 10 })))).toBe('KEMARI_INVALID_ARGUMENT');
    const again = await Journal.open(dir, options());
    expect(digestHex(again.replica.digest())).toBe(hex(stream.digests[1]!));
    await again.journal.close();
  });

  it('closes idempotently and refuses later calls with KEMARI_CLOSED', async () => {
    const dir = await dirs.make();
    const { journal } = await Journal.open(dir, options());
    const pending = journal.append(stream.txns[0]!);
    const closing = journal.close();
    await expect(pending).resolves.toBeUndefined();
    await closing;
    await journal.close();
    expect(await codeOf(journal.append(stream.txns[1]!))).toBe('KEMARI_CLOSED');
    expect(await codeOf(journal.snapshot())).toBe('KEMARI_CLOSED');
    const again = await Journal.open(dir, options());
    expect(again.recovered.txn).toBe(1);
    await again.journal.close();
  });

  it('abandons the last transaction (its apply failed) so recovery does not replay it', async () => {
    const dir = await dirs.make();
    const { journal } = await Journal.open(dir, options());
    for (const txn of stream.txns.slice(0, 3)) await journal.append(txn);
    expect(await codeOf(journal.abandon(2))).toBe('KEMARI_INVALID_ARGUMENT');
    await journal.abandon(3);
    expect(journal.lastTxn).toBe(2);
    await journal.append(stream.txns[2]!);
    await journal.abandon(3);
    await journal.close();
    const again = await Journal.open(dir, options());
    expect(again.recovered).toMatchObject({ txn: 2, replayedTxns: 2, droppedTailBytes: 0 });
    expect(digestHex(again.replica.digest())).toBe(hex(stream.digests[1]!));
    await again.journal.close();
  });

  it('drops a last transaction that does not reproduce its digest (failed its apply, never acked), once', async () => {
    const dir = await dirs.make();
    const { journal } = await Journal.open(dir, options());
    for (const txn of stream.txns.slice(0, 4)) await journal.append(txn);
    const bad = { ...stream.txns[4]!, stateDigest: new Uint8Array(32).fill(1) };
    await journal.append(bad);
    const journaledBytes = journal.stats().bytes;
    await journal.close();
    const again = await Journal.open(dir, options());
    expect(again.recovered.refusedTxn).toBe(5);
    expect(again.recovered.txn).toBe(4);
    expect(again.recovered.droppedTailBytes).toBeGreaterThan(0);
    expect(again.journal.stats().bytes).toBe(journaledBytes - again.recovered.droppedTailBytes);
    expect(digestHex(again.replica.digest())).toBe(hex(stream.digests[3]!));
    // The primary resends txn 5; it journals and recovers normally.
    await again.journal.append(stream.txns[4]!);
    await again.journal.close();
    const third = await Journal.open(dir, options());
    expect(third.recovered).toMatchObject({ txn: 5, refusedTxn: 0 });
    expect(digestHex(third.replica.digest())).toBe(hex(stream.digests[4]!));
    await third.journal.close();
  });

  it('refuses, as corrupt, a journal whose last two records both fail their digest (only one can be unacked)', async () => {
    const dir = await dirs.make();
    const { journal } = await Journal.open(dir, options());
    for (const txn of stream.txns.slice(0, 2)) await journal.append(txn);
    await journal.append({ ...stream.txns[2]!, stateDigest: new Uint8Array(32).fill(2) });
    await journal.append({ ...stream.txns[3]!, stateDigest: new Uint8Array(32).fill(3) });
    await journal.close();
    expect(await codeOf(Journal.open(dir, options()))).toBe('KEMARI_JOURNAL_CORRUPT');
  });

  it('fails for good on an I/O error during append (KEMARI_JOURNAL_IO); reopening recovers what was synced', async () => {
    const dir = await dirs.make();
    const fs = new CrashingFs();
    const { journal } = await Journal.open(dir, options({ fs }));
    for (const txn of stream.txns.slice(0, 2)) await journal.append(txn);
    fs.arm(1); // the next write tears in half and fails
    const failed = journal.append(stream.txns[2]!);
    expect(await codeOf(failed)).toBe('KEMARI_JOURNAL_IO');
    expect(await codeOf(journal.append(stream.txns[2]!))).toBe('KEMARI_JOURNAL_IO');
    await journal.close();
    const again = await Journal.open(dir, options());
    expect(again.recovered.txn).toBe(2);
    expect(again.recovered.droppedTailBytes).toBeGreaterThan(0);
    expect(digestHex(again.replica.digest())).toBe(hex(stream.digests[1]!));
    await again.journal.close();
  });

  it('creates a missing directory and syncs the parents whose entries changed', async () => {
    const base = await dirs.make();
    const fs = new CrashingFs();
    fs.arm();
    const dir = join(base, 'outer', 'inner');
    const { journal } = await Journal.open(dir, options({ fs }));
    await journal.append(stream.txns[0]!);
    await journal.close();
    // inner's entry lives in outer, outer's in base; the journal's own rename is synced in inner.
    expect(fs.log).toEqual(expect.arrayContaining(['sync outer', `sync ${basename(base)}`, 'sync inner', 'rename journal.kmj.tmp -> journal.kmj']));
    expect(fs.log.indexOf('sync inner')).toBeGreaterThan(fs.log.indexOf('rename journal.kmj.tmp -> journal.kmj'));
    const again = await Journal.open(dir, options());
    expect(again.recovered.txn).toBe(1);
    await again.journal.close();
  });

  it('validates its options', async () => {
    const dir = await dirs.make();
    expect(await codeOf(Journal.open(dir, options({ sessionId: '' })))).toBe('KEMARI_INVALID_ARGUMENT');
    expect(await codeOf(Journal.open(dir, options({ snapshotEveryBytes: -1 })))).toBe('KEMARI_INVALID_ARGUMENT');
    expect(await codeOf(Journal.open(dir, options({ geometry: { ...stream.geometry, memoryBytes: 1000 } })))).toBe('KEMARI_INVALID_ARGUMENT');
    expect(await codeOf(Journal.open('', options()))).toBe('KEMARI_INVALID_ARGUMENT');
  });
});
