/**
 * Compaction: snapshots, the journal that follows them, automatic compaction, and a crash at every file
 * operation of the snapshot sequence.
 */
import { copyFile, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Journal } from '../../src/replica/journal.js';
import type { JournalOptions } from '../../src/replica/journal.js';
import { JOURNAL_FILE_NAME, SNAPSHOT_FILE_NAME } from '../../src/replica/journal-context.js';
import { nodeJournalFs } from '../../src/replica/journal-fs.js';
import { readSnapshotHead } from '../../src/replica/journal-snapshot.js';
import { Replica } from '../../src/replica/replica.js';
import { CrashingFs, TempDirs, copyEvent, hex, replicaAt, smallTxn, stagedStream, codeOf } from './journal-fixtures.js';
import type { StagedStream } from './journal-fixtures.js';

const dirs = new TempDirs();
afterEach(() => dirs.cleanup());

let stream: StagedStream;
beforeAll(() => {
  stream = stagedStream({ epochs: 10, seed: 3 });
});

function options(extra: Partial<JournalOptions> = {}): JournalOptions {
  return { geometry: stream.geometry, sessionId: stream.sessionId, ...extra };
}


/** Journals then applies txns [from, to) like a secondary. */
async function serve(journal: Journal, replica: Replica, from: number, to: number): Promise<void> {
  for (const txn of stream.txns.slice(from, to)) {
    await journal.append(txn);
    replica.apply(txn, { verify: true });
  }
}

/** Reopens `dir` and checks the replica equals the stream after `txns` transactions. */
async function expectRecovers(dir: string, txns: number, extra: Partial<JournalOptions> = {}): Promise<Awaited<ReturnType<typeof Journal.open>>> {
  const opened = await Journal.open(dir, options(extra));
  expect(opened.recovered.txn).toBe(txns);
  expect(hex(opened.replica.digest())).toBe(hex(stream.digests[txns - 1]!));
  expect(opened.replica.pendingEvents.map(copyEvent)).toEqual(stream.pending[txns - 1]);
  expect(opened.replica.hasCommittedEpoch).toBe(true);
  return opened;
}

describe('journal snapshot', () => {
  it('leaves a short journal after a snapshot; recovery is the snapshot plus the transactions after it', async () => {
    const dir = await dirs.make();
    const { journal, replica } = await Journal.open(dir, options());
    await serve(journal, replica, 0, 6);
    const before = journal.stats();
    await journal.snapshot();
    const after = journal.stats();
    expect(after).toMatchObject({ records: 0, snapshots: 1, snapshotTxn: 6, lastTxn: 6, bytesSinceSnapshot: 0 });
    expect(after.bytes).toBeLessThan(200);
    expect(before.bytes).toBeGreaterThan(300_000);
    expect((await stat(join(dir, JOURNAL_FILE_NAME))).size).toBe(after.bytes);
    expect((await stat(join(dir, SNAPSHOT_FILE_NAME))).size).toBeGreaterThan(stream.geometry.memoryBytes);
    await journal.close();

    const reopened = await expectRecovers(dir, 6);
    expect(reopened.recovered).toEqual({ txn: 6, fromSnapshotTxn: 6, replayedTxns: 0, droppedTailBytes: 0, refusedTxn: 0 });
    // The restored replica takes the next transactions (it sits at txn 6, with the events pending at 6).
    await serve(reopened.journal, reopened.replica, 6, 10);
    await reopened.journal.close();

    const last = await expectRecovers(dir, 10);
    expect(last.recovered).toEqual({ txn: 10, fromSnapshotTxn: 6, replayedTxns: 4, droppedTailBytes: 0, refusedTxn: 0 });
    expect(await readdir(dir)).toEqual([JOURNAL_FILE_NAME, SNAPSHOT_FILE_NAME].sort());
    await last.journal.close();
  });

  it('carries over the records newer than a replica that lags the journal', async () => {
    const dir = await dirs.make();
    const { journal } = await Journal.open(dir, options());
    for (const txn of stream.txns.slice(0, 8)) await journal.append(txn);
    await journal.snapshot(replicaAt(stream, 5));
    expect(journal.stats()).toMatchObject({ records: 3, snapshotTxn: 5, lastTxn: 8 });
    await journal.close();
    const opened = await expectRecovers(dir, 8);
    expect(opened.recovered).toMatchObject({ fromSnapshotTxn: 5, replayedTxns: 3 });
    await opened.journal.close();
  });

  it('keeps only the events pending at the snapshot (releasedTxn drops the released ones)', async () => {
    const dir = await dirs.make();
    const { journal, replica } = await Journal.open(dir, options());
    await serve(journal, replica, 0, 6);
    const released = smallTxn(replicaAt(stream, 6), 4);
    await journal.append(released);
    replica.apply(released, { verify: true });
    const pending = replica.pendingEvents.map(copyEvent);
    expect(stream.pending[5]!.some((e) => e.txn <= 4)).toBe(true);
    expect(pending).toEqual([
      ...stream.pending[5]!.filter((e) => e.txn > 4),
      { txn: 7, id: 1007, channel: 'net0', payload: Uint8Array.of(9, 8, 7) },
    ]);
    await journal.snapshot();
    await journal.close();
    const opened = await Journal.open(dir, options());
    expect(opened.recovered).toMatchObject({ txn: 7, fromSnapshotTxn: 7 });
    expect(opened.replica.pendingEvents.map(copyEvent)).toEqual(pending);
    expect(hex(opened.replica.digest())).toBe(hex(released.stateDigest));
    await opened.journal.close();
    // The snapshot records the releasedTxn the replica committed with; a replica that keeps it gets it back.
    const file = await nodeJournalFs.open(join(dir, SNAPSHOT_FILE_NAME), 'read');
    const head = await readSnapshotHead(file, SNAPSHOT_FILE_NAME);
    await file.close();
    expect(head).toMatchObject({ txn: 7, releasedTxn: 4 });
    const kept = (opened.replica as unknown as Record<string, unknown>)['releasedTxn'];
    if (kept !== undefined) expect(kept).toBe(4);
  });

  it('compacts by itself once the records since the last snapshot exceed snapshotEveryBytes', async () => {
    const dir = await dirs.make();
    const { journal, replica } = await Journal.open(dir, options({ snapshotEveryBytes: 150_000 }));
    await serve(journal, replica, 0, 10);
    const stats = journal.stats();
    expect(stats.snapshots).toBeGreaterThanOrEqual(3);
    expect(stats.bytesSinceSnapshot).toBeLessThanOrEqual(150_000 + 120_000);
    expect(stats.snapshotTxn).toBeGreaterThanOrEqual(7);
    await journal.close();
    const opened = await expectRecovers(dir, 10, { snapshotEveryBytes: 150_000 });
    expect(opened.recovered.fromSnapshotTxn).toBe(stats.snapshotTxn);
    await opened.journal.close();
  });

  it('does not compact automatically while the replica is not applied (nothing to gain)', async () => {
    const dir = await dirs.make();
    const { journal } = await Journal.open(dir, options({ snapshotEveryBytes: 1 }));
    for (const txn of stream.txns.slice(0, 4)) await journal.append(txn);
    expect(journal.stats()).toMatchObject({ snapshots: 0, records: 4 });
    await journal.close();
  });

  it('refuses to snapshot a replica that has no epoch, is ahead of the journal, or has another geometry', async () => {
    const dir = await dirs.make();
    const { journal, replica } = await Journal.open(dir, options());
    expect(await codeOf(journal.snapshot())).toBe('KEMARI_INVALID_ARGUMENT');
    await serve(journal, replica, 0, 5);
    expect(await codeOf(journal.snapshot(replicaAt(stream, 6)))).toBe('KEMARI_INVALID_ARGUMENT');
    const other = new Replica({ ...stream.geometry, memoryBytes: stream.geometry.memoryBytes * 2 });
    expect(await codeOf(journal.snapshot(other))).toBe('KEMARI_INVALID_ARGUMENT');
    expect(journal.stats()).toMatchObject({ snapshots: 0, records: 5 });
    await journal.snapshot();
    // A replica older than the snapshot the journal follows cannot be snapshotted either.
    expect(await codeOf(journal.snapshot(replicaAt(stream, 3)))).toBe('KEMARI_INVALID_ARGUMENT');
    expect(journal.stats()).toMatchObject({ snapshots: 1, snapshotTxn: 5 });
    await journal.close();
    await (await expectRecovers(dir, 5)).journal.close();
  });

  it('refuses a damaged snapshot, a snapshot without its journal, and a journal without its snapshot', async () => {
    const dir = await dirs.make();
    const { journal, replica } = await Journal.open(dir, options());
    await serve(journal, replica, 0, 6);
    await journal.snapshot();
    await serve(journal, replica, 6, 8);
    await journal.close();
    const snapshotPath = join(dir, SNAPSHOT_FILE_NAME);
    const journalPath = join(dir, JOURNAL_FILE_NAME);
    const snapshotBytes = await readFile(snapshotPath);
    const journalBytes = await readFile(journalPath);
    for (const at of [0, 20, 40, 1000, 300_000, snapshotBytes.byteLength - 40, snapshotBytes.byteLength - 1]) {
      const damaged = Buffer.from(snapshotBytes);
      damaged[at] = damaged[at]! ^ 0x10;
      await writeFile(snapshotPath, damaged);
      expect(await codeOf(Journal.open(dir, options())), `flip at ${at}`).toBe('KEMARI_JOURNAL_CORRUPT');
    }
    await writeFile(snapshotPath, snapshotBytes.subarray(0, snapshotBytes.byteLength - 1));
    expect(await codeOf(Journal.open(dir, options()))).toBe('KEMARI_JOURNAL_CORRUPT');
    await writeFile(snapshotPath, snapshotBytes);
    await rm(journalPath);
    expect(await codeOf(Journal.open(dir, options()))).toBe('KEMARI_JOURNAL_CORRUPT');
    await writeFile(journalPath, journalBytes);
    await rm(snapshotPath);
    expect(await codeOf(Journal.open(dir, options()))).toBe('KEMARI_JOURNAL_CORRUPT');
    await writeFile(snapshotPath, snapshotBytes);
    await (await expectRecovers(dir, 8)).journal.close();
  });

  it('refuses a snapshot of another session with KEMARI_HELLO_MISMATCH', async () => {
    const mine = await dirs.make();
    const theirs = await dirs.make();
    const a = await Journal.open(mine, options());
    await serve(a.journal, a.replica, 0, 3);
    await a.journal.close();
    const b = await Journal.open(theirs, options({ sessionId: 'their-session' }));
    await serve(b.journal, b.replica, 0, 2);
    await b.journal.snapshot();
    await b.journal.close();
    await copyFile(join(theirs, SNAPSHOT_FILE_NAME), join(mine, SNAPSHOT_FILE_NAME));
    expect(await codeOf(Journal.open(mine, options()))).toBe('KEMARI_HELLO_MISMATCH');
    expect(await codeOf(Journal.open(theirs, options()))).toBe('KEMARI_HELLO_MISMATCH');
  });
});

describe('journal snapshot crash points', () => {
  /**
   * Journals txns 1..8 (with a first snapshot at `previousAt` when given), then snapshots the replica at
   * `snapshotAt` (records after it are carried into the new journal) with a crash at operation `crashAt` of that
   * snapshot; returns the operation log.
   */
  async function crashDuringSnapshot(dir: string, crashAt: number, previousAt: number | undefined, snapshotAt: number): Promise<string[]> {
    const fs = new CrashingFs();
    const { journal, replica } = await Journal.open(dir, options({ fs }));
    if (previousAt !== undefined) {
      await serve(journal, replica, 0, previousAt);
      await journal.snapshot();
    }
    await serve(journal, replica, previousAt ?? 0, 8);
    fs.arm(crashAt);
    const outcome = await codeOf(journal.snapshot(snapshotAt === 8 ? replica : replicaAt(stream, snapshotAt)));
    expect(outcome).toBe(Number.isFinite(crashAt) ? 'KEMARI_JOURNAL_IO' : 'resolved');
    if (Number.isFinite(crashAt)) expect(await codeOf(journal.append(stream.txns[8]!))).toBe('KEMARI_JOURNAL_IO');
    await journal.close();
    return [...fs.log];
  }

  for (const [previousAt, snapshotAt] of [[undefined, 8], [4, 8], [4, 6]] as const) {
    const what = `${previousAt === undefined ? 'the first' : 'replacing one at txn 4'}, at txn ${snapshotAt}`;
    it(`recovers txn 8 after a crash at every operation of a snapshot (${what})`, async () => {
      const steps = await crashDuringSnapshot(await dirs.make(), Number.POSITIVE_INFINITY, previousAt, snapshotAt);
      // open snapshot tmp, writes, sync, rename, directory sync; open journal tmp, writes, datasync, rename, directory sync.
      expect(steps.length).toBeGreaterThanOrEqual(10);
      const snapshotRenamedAt = steps.indexOf(`rename ${SNAPSHOT_FILE_NAME}.tmp -> ${SNAPSHOT_FILE_NAME}`) + 1;
      const journalRenamedAt = steps.indexOf(`rename ${JOURNAL_FILE_NAME}.tmp -> ${JOURNAL_FILE_NAME}`) + 1;
      expect(snapshotRenamedAt).toBeGreaterThan(0);
      expect(journalRenamedAt).toBeGreaterThan(snapshotRenamedAt);
      for (let k = 1; k <= steps.length; k++) {
        const step = `crash at ${k}: ${steps[k - 1]}`;
        const dir = await dirs.make();
        await crashDuringSnapshot(dir, k, previousAt, snapshotAt);
        if (k === snapshotRenamedAt) expect(await readdir(dir), `temp snapshot written, not renamed (${step})`).toContain(`${SNAPSHOT_FILE_NAME}.tmp`);
        const opened = await expectRecovers(dir, 8);
        // Before the snapshot's rename the old state stands; from it on, the new snapshot does.
        const fromSnapshotTxn = k > snapshotRenamedAt ? snapshotAt : (previousAt ?? 0);
        expect(opened.recovered, step).toMatchObject({ fromSnapshotTxn, replayedTxns: 8 - fromSnapshotTxn, droppedTailBytes: 0 });
        // Recovery leaves the journal consistent with the snapshot (finishing a half-done compaction: renamed but
        // the journal not yet replaced).
        expect(opened.journal.stats(), step).toMatchObject({ snapshotTxn: fromSnapshotTxn, records: 8 - fromSnapshotTxn, lastTxn: 8 });
        expect((await readdir(dir)).filter((f) => f.endsWith('.tmp')), step).toEqual([]);
        await opened.journal.append(stream.txns[8]!);
        await opened.journal.close();
        const next = await expectRecovers(dir, 9);
        await next.journal.close();
      }
    });
  }
});
