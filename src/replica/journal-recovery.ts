/**
 * Recovery: from whatever a crash left in the journal directory to a replica at the newest durable epoch.
 *
 * 1. Leftover temporary files are deleted: they are a snapshot or journal that was never renamed into place.
 * 2. The journal and snapshot headers are read and their identity checked against the caller's
 *    (KEMARI_HELLO_MISMATCH) before anything is loaded. The only states a crash can leave are: nothing; a journal
 *    following no snapshot; a snapshot and a journal following it or an older one. Anything else (a snapshot
 *    without a journal, a journal following a snapshot that is missing or older than it names) is
 *    KEMARI_JOURNAL_CORRUPT.
 * 3. The records are scanned (journal-file.ts): a torn tail is cut off, and the file is synced either way (what was
 *    read may sit only in the page cache of a process that died before its fdatasync);
 *    damage followed by good records is KEMARI_JOURNAL_CORRUPT.
 * 4. The replica is built from the snapshot (or empty), then every record newer than the snapshot is applied in
 *    order with `apply(staged, { verify: false })`, one record in memory at a time.
 * 5. The last record is checked against the state digest it carries, when it carries one. If it does not match,
 *    or the replica refuses it, that transaction failed its apply before the crash and was never acked (an ack
 *    follows only a verified apply, and apply is deterministic): it is cut off like a torn tail and recovery
 *    starts over without it (reported as `refusedTxn`). Only the last record gets this treatment, and only once;
 *    any other failure to apply is KEMARI_JOURNAL_CORRUPT.
 * 6. If the journal still holds records the snapshot already covers (a crash between the two renames of a
 *    snapshot), the new journal is written now, completing that compaction.
 */
import { KemariError } from '../errors.js';
import type { JournalContext } from './journal-context.js';
import { closeQuietly, openIfExists, removeIfExists, syncData } from './journal-context.js';
import { readJournalHead, readRecord, scanRecords } from './journal-file.js';
import type { RecordLocation } from './journal-file.js';
import type { JournalFile } from './journal-fs.js';
import { checkIdentity } from './journal-identity.js';
import { writeJournalFile } from './journal-rewrite.js';
import type { OpenJournal } from './journal-rewrite.js';
import { loadSnapshot, readSnapshotHead } from './journal-snapshot.js';
import type { SnapshotHead } from './journal-snapshot.js';
import type { Replica } from './replica.js';
import { digestHex } from './state-digest.js';

/** What recovery found and did. */
export interface JournalRecovery {
  /** The replica's committed txn after recovery (0: no epoch yet). */
  txn: number;
  /** The txn of the snapshot recovery started from (0: none). */
  fromSnapshotTxn: number;
  /** Journaled transactions re-applied on top of it. */
  replayedTxns: number;
  /** Bytes cut off the end of the journal: a torn record, plus a refused last record (see `refusedTxn`). */
  droppedTailBytes: number;
  /**
   * A last transaction the replica refused or that did not reproduce its state digest, and was dropped: it had
   * failed its apply before the crash, so it was never acked. 0 when none.
   */
  refusedTxn: number;
}

/** The result of {@link recoverJournal}. */
export interface RecoveryOutcome {
  replica: Replica;
  journal: OpenJournal;
  /** The releasedTxn recorded with the snapshot the journal follows (0: none). */
  snapshotReleasedTxn: number;
  recovered: JournalRecovery;
}

type Attempt = { kind: 'done'; outcome: RecoveryOutcome } | { kind: 'refused'; txn: number; bytes: number };

/** Recovers the directory of `ctx` (which must exist). */
export async function recoverJournal(ctx: JournalContext): Promise<RecoveryOutcome> {
  const first = await attempt(ctx, true);
  if (first.kind === 'done') return first.outcome;
  const second = await attempt(ctx, false);
  if (second.kind !== 'done') {
    // Not reached: a second attempt never refuses, it reports corruption instead.
    throw new KemariError('KEMARI_JOURNAL_CORRUPT', `${ctx.journalPath}: txn ${second.txn} refused after txn ${first.txn}`);
  }
  const { recovered } = second.outcome;
  recovered.refusedTxn = first.txn;
  recovered.droppedTailBytes += first.bytes;
  return second.outcome;
}

async function attempt(ctx: JournalContext, mayRefuse: boolean): Promise<Attempt> {
  await removeIfExists(ctx, ctx.snapshotTemporaryPath);
  await removeIfExists(ctx, ctx.journalTemporaryPath);
  let journalFile: JournalFile | undefined;
  let snapshotFile: JournalFile | undefined;
  let keepJournalFile = false;
  try {
    journalFile = await openIfExists(ctx, ctx.journalPath, 'readwrite');
    snapshotFile = await openIfExists(ctx, ctx.snapshotPath, 'read');
    const fileBytes = journalFile === undefined ? 0 : await journalFile.sizeBytes();
    const head = journalFile === undefined ? undefined : await readJournalHead(journalFile, ctx.journalPath, fileBytes);
    if (head !== undefined) checkIdentity(head.identity, ctx.identity, ctx.journalPath);
    let snapshotHead: SnapshotHead | undefined;
    if (snapshotFile !== undefined) {
      snapshotHead = await readSnapshotHead(snapshotFile, ctx.snapshotPath);
      checkIdentity(snapshotHead.identity, ctx.identity, ctx.snapshotPath);
    }
    const snapshotTxn = snapshotHead?.txn ?? 0;
    if (journalFile === undefined || head === undefined) {
      if (snapshotHead !== undefined) {
        throw new KemariError('KEMARI_JOURNAL_CORRUPT', `${ctx.snapshotPath} has no journal beside it: transactions after txn ${snapshotTxn} may be lost`, {
          details: { file: ctx.journalPath, snapshotTxn },
        });
      }
      const journal = await writeJournalFile(ctx, 0, undefined);
      return done({ replica: ctx.newReplica(ctx.identity.geometry), journal, snapshotReleasedTxn: 0, recovered: recovery(0, 0, 0, 0) });
    }
    if (head.baseTxn > snapshotTxn) {
      throw new KemariError('KEMARI_JOURNAL_CORRUPT', `${ctx.journalPath} follows snapshot txn ${head.baseTxn}, but the snapshot holds ${snapshotHead === undefined ? 'nothing' : `txn ${snapshotTxn}`}`, {
        details: { file: ctx.journalPath, baseTxn: head.baseTxn, snapshotTxn },
      });
    }
    const scan = await scanRecords(journalFile, { path: ctx.journalPath, head, fileBytes, firstTxn: head.baseTxn + 1, recordBytesMax: ctx.recordBytesMax });
    if (scan.tornBytes > 0) await journalFile.truncate(scan.goodEnd);
    // What was read may sit only in the page cache (the previous process died between write and fdatasync): sync
    // it before its epochs are reported as committed, or a power loss now could take back what a primary was told.
    await syncData(ctx, journalFile);
    const replica =
      snapshotFile !== undefined && snapshotHead !== undefined
        ? await loadSnapshot(snapshotFile, snapshotHead, ctx.snapshotPath, ctx.newReplica)
        : ctx.newReplica(ctx.identity.geometry);
    await closeQuietly(snapshotFile);
    snapshotFile = undefined;
    const replay = scan.records.filter((r) => r.txn > snapshotTxn);
    const refused = await replayRecords(ctx, journalFile, head.salt, replica, replay, mayRefuse);
    if (refused !== undefined) {
      await journalFile.truncate(refused.offset);
      await syncData(ctx, journalFile);
      return { kind: 'refused', txn: refused.txn, bytes: refused.recordBytes };
    }
    let journal: OpenJournal;
    if (head.baseTxn !== snapshotTxn) {
      // A crash between the snapshot's rename and the new journal's: finish that compaction now.
      journal = await writeJournalFile(ctx, snapshotTxn, { file: journalFile, salt: head.salt, records: replay });
    } else {
      keepJournalFile = true;
      journal = { file: journalFile, salt: head.salt, baseTxn: head.baseTxn, recordsOffset: head.recordsOffset, records: scan.records, endOffset: scan.goodEnd };
    }
    const recovered = recovery(replica.committedTxn, snapshotTxn, replay.length, scan.tornBytes);
    return done({ replica, journal, snapshotReleasedTxn: snapshotHead?.releasedTxn ?? 0, recovered });
  } finally {
    await closeQuietly(snapshotFile);
    if (!keepJournalFile) await closeQuietly(journalFile);
  }
}

/**
 * Applies `records` in order. Resolves to the last record when it must be refused (see the file comment), else
 * undefined.
 */
async function replayRecords(
  ctx: JournalContext,
  file: JournalFile,
  salt: number,
  replica: Replica,
  records: readonly RecordLocation[],
  mayRefuse: boolean,
): Promise<RecordLocation | undefined> {
  if (records.length === 0) return undefined;
  const buffer = new Uint8Array(records.reduce((n, r) => Math.max(n, r.recordBytes), 0));
  for (let i = 0; i < records.length; i++) {
    const location = records[i]!;
    const last = i === records.length - 1;
    const staged = await readRecord(file, location, salt, buffer, ctx.journalPath);
    location.releasedTxn = staged.releasedTxn;
    try {
      replica.apply(staged, { verify: false, delta: true });
    } catch (error) {
      if (last && mayRefuse && error instanceof KemariError) return location;
      throw new KemariError('KEMARI_JOURNAL_CORRUPT', `${ctx.journalPath}: the replica refuses journaled txn ${location.txn}`, {
        cause: error,
        details: { file: ctx.journalPath, offset: location.offset, txn: location.txn },
      });
    }
    if (last && staged.stateDigest.byteLength > 0) {
      const digest = replica.digest();
      if (!Buffer.from(digest).equals(Buffer.from(staged.stateDigest))) {
        if (mayRefuse) return location;
        throw new KemariError('KEMARI_JOURNAL_CORRUPT', `${ctx.journalPath}: replaying up to txn ${location.txn} does not reproduce its state digest`, {
          details: { file: ctx.journalPath, txn: location.txn, expected: digestHex(staged.stateDigest), actual: digestHex(digest) },
        });
      }
    }
  }
  return undefined;
}

function done(outcome: RecoveryOutcome): Attempt {
  return { kind: 'done', outcome };
}

function recovery(txn: number, fromSnapshotTxn: number, replayedTxns: number, droppedTailBytes: number): JournalRecovery {
  return { txn, fromSnapshotTxn, replayedTxns, droppedTailBytes, refusedTxn: 0 };
}
