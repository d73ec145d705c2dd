/**
 * The secondary's durable journal (option `journalDir`): every transaction is on disk before the secondary
 * applies and acks it, so "ack means applied or durably journaled" holds across a crash of the secondary host.
 *
 * The directory holds two files (formats in journal-file.ts, journal-record.ts and journal-snapshot.ts):
 *   - `journal.kmj`: a header naming the session, the geometry, the snapshot it follows and a salt, then one
 *     record per transaction after that snapshot, in txn order, each with its own CRCs;
 *   - `snapshot.kms` (once compaction has run): the replica's whole committed state at one txn.
 * Files being written carry the suffix `.tmp` and are only ever renamed into place after an fsync.
 *
 * Use: `Journal.open` recovers (journal-recovery.ts) and returns the replica to serve from; then, for each
 * verified transaction, `await journal.append(staged)`, apply it to that replica, ack. If the apply fails, call
 * `abandon(txn)` (the transaction was never acked, so it must not be replayed).
 *
 * Compaction, when the records since the last snapshot exceed `snapshotEveryBytes` (checked on append, using the
 * replica returned by `open`, before the new record is written), or on `snapshot(replica)`:
 *   1. write `snapshot.kms.tmp` (the replica's state at its committed txn S) and fsync it;
 *   2. rename it over `snapshot.kms`, fsync the directory;
 *   3. write `journal.kmj.tmp` following S, holding copies of the records after S, and fsync it;
 *   4. rename it over `journal.kmj`, fsync the directory.
 * A crash before 2 leaves the old snapshot and the old journal; between 2 and 4, the new snapshot and the old
 * journal (whose records up to S recovery skips, and then completes step 3-4); after 4, the new pair. Every one
 * recovers to the same state.
 *
 * Failures: an I/O error during a write leaves the files in a state recovery handles but this object's view of
 * them unknown, so the journal fails: every later call rejects with that KEMARI_JOURNAL_IO error. Close it and
 * open the directory again. The replica must not be applied to while `snapshot` (or an `append` that compacts)
 * runs; both are awaited by a caller that applies after `append` resolves, as the secondary does.
 */
import { constants as bufferConstants } from 'node:buffer';
import { KemariError, isKemariError } from '../errors.js';
import type { StagedTxn } from '../txn/staged-txn.js';
import { closeQuietly, journalError, journalPaths, makeDirectory, openIfExists, syncData, syncDirectory } from './journal-context.js';
import type { JournalContext } from './journal-context.js';
import { nodeJournalFs } from './journal-fs.js';
import type { JournalFs } from './journal-fs.js';
import { encodeIdentity, identityDifference } from './journal-identity.js';
import type { JournalIdentity } from './journal-identity.js';
import { RECORD_HEADER_BYTES, encodeRecord } from './journal-record.js';
import { recoverJournal } from './journal-recovery.js';
import { readJournalHead } from './journal-file.js';
import type { JournalRecovery } from './journal-recovery.js';
import { writeJournalFile } from './journal-rewrite.js';
import type { OpenJournal } from './journal-rewrite.js';
import { readSnapshotHead, writeSnapshot } from './journal-snapshot.js';
import { Replica } from './replica.js';
import type { ReplicaGeometry } from './replica.js';

export type { JournalRecovery } from './journal-recovery.js';
export type { JournalFile, JournalFs, JournalOpenMode } from './journal-fs.js';

/** Default compaction threshold: journaled record bytes since the last snapshot. */
export const DEFAULT_SNAPSHOT_EVERY_BYTES = 256 * 1024 * 1024;
/** Default largest record (header plus encoded transaction). */
export const DEFAULT_RECORD_BYTES_MAX = 2 * 1024 * 1024 * 1024;
/** Largest `recordBytesMax` accepted: a record's length is a u32, and recovery reads one into one buffer. */
export const RECORD_BYTES_LIMIT = Math.min(0xffff_ffff, bufferConstants.MAX_LENGTH);

/** Options of {@link Journal.open}. */
export interface JournalOptions {
  /** The VM shape the replica mirrors; a directory of another geometry is KEMARI_HELLO_MISMATCH. */
  geometry: ReplicaGeometry;
  /** The replication session; a directory of another session is KEMARI_HELLO_MISMATCH. */
  sessionId: string;
  /** Compact when the journal's records exceed this many bytes since the last snapshot. Default 256 MiB. */
  snapshotEveryBytes?: number;
  /**
   * Sync each record (fdatasync) before `append` resolves, and files and the directory around renames. Default
   * true; false gives up durability and is meant only for tests and benchmarks.
   */
  fsync?: boolean;
  /** Largest record accepted by `append` (and read by recovery). Default 2 GiB. */
  recordBytesMax?: number;
  /** File operations (default: node:fs/promises); replaceable to inject crashes or a simulated disk. */
  fs?: JournalFs;
  /** Makes the replica recovery fills (for replica limits); default `new Replica(geometry)`. */
  newReplica?: (geometry: ReplicaGeometry) => Replica;
}

/** What {@link Journal.open} returns. */
export interface JournalOpenResult {
  journal: Journal;
  /** The replica at the newest durable epoch: serve from it, apply to it, and it is the one compaction snapshots. */
  replica: Replica;
  recovered: JournalRecovery;
}

/** Counters of a {@link Journal}. */
export interface JournalStats {
  /** Records in the journal file (transactions after the snapshot). */
  records: number;
  /** Length of the journal file. */
  bytes: number;
  /** Record bytes since the last snapshot (what `snapshotEveryBytes` is compared with). */
  bytesSinceSnapshot: number;
  /** Snapshots written by this object. */
  snapshots: number;
  /** The newest journaled txn (or the snapshot's, when no record follows it). */
  lastTxn: number;
  /** The txn of the snapshot the journal follows (0: none). */
  snapshotTxn: number;
}

export class Journal {
  private current: OpenJournal;
  private lastTxnValue: number;
  private snapshotsWritten = 0;
  /** releasedTxn of the transaction that committed the snapshot's txn. */
  private snapshotReleasedTxn: number;
  private closeRequested = false;
  private closing: Promise<void> | undefined;
  private failure: KemariError | undefined;
  private queue: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly ctx: JournalContext,
    private readonly recoveredReplica: Replica,
    journal: OpenJournal,
    snapshotReleasedTxn: number,
  ) {
    this.current = journal;
    this.snapshotReleasedTxn = snapshotReleasedTxn;
    this.lastTxnValue = journal.records.at(-1)?.txn ?? journal.baseTxn;
  }

  /**
   * The session and geometry a journal directory belongs to, read from its journal file (or its snapshot), or
   * undefined when the directory holds no journal: what a restarting secondary needs before any primary says
   * HELLO. Throws KEMARI_JOURNAL_CORRUPT for a damaged header, KEMARI_JOURNAL_IO when the disk fails.
   */
  static async identityOf(dir: string, fs: JournalFs = nodeJournalFs): Promise<JournalIdentity | undefined> {
    const { journalPath, snapshotPath } = journalPaths(dir);
    const ctx = { fs };
    try {
      const journalFile = await openIfExists(ctx, journalPath, 'read');
      if (journalFile !== undefined) {
        try {
          return (await readJournalHead(journalFile, journalPath, await journalFile.sizeBytes())).identity;
        } finally {
          await closeQuietly(journalFile);
        }
      }
      const snapshotFile = await openIfExists(ctx, snapshotPath, 'read');
      if (snapshotFile === undefined) return undefined;
      try {
        return (await readSnapshotHead(snapshotFile, snapshotPath)).identity;
      } finally {
        await closeQuietly(snapshotFile);
      }
    } catch (error) {
      throw journalError(error, `reading the identity of ${dir}`);
    }
  }

  /**
   * Opens (creating if needed) the journal in `dir` and recovers its replica. KEMARI_HELLO_MISMATCH when the
   * directory belongs to another session or geometry; KEMARI_JOURNAL_CORRUPT when it is damaged beyond a torn
   * tail; KEMARI_JOURNAL_IO when the disk fails; KEMARI_INVALID_ARGUMENT for bad options.
   */
  static async open(dir: string, options: JournalOptions): Promise<JournalOpenResult> {
    const ctx = resolveContext(dir, options);
    let outcome;
    try {
      await makeDirectory(ctx);
      outcome = await recoverJournal(ctx);
    } catch (error) {
      throw journalError(error, `recovering ${dir}`);
    }
    const journal = new Journal(ctx, outcome.replica, outcome.journal, outcome.snapshotReleasedTxn);
    return { journal, replica: outcome.replica, recovered: outcome.recovered };
  }

  /** The replica returned by `open` (the one automatic compaction snapshots). */
  get replica(): Replica {
    return this.recoveredReplica;
  }

  /** The newest journaled txn: the next `append` must be this plus one. */
  get lastTxn(): number {
    return this.lastTxnValue;
  }

  /**
   * Writes `staged` as one record and, with `fsync`, syncs it before resolving: after that the transaction
   * survives a crash. `staged.txn` must be `lastTxn + 1` (else KEMARI_INVALID_ARGUMENT, nothing written); a
   * record above `recordBytesMax` is KEMARI_INVALID_ARGUMENT too. May first compact (see the file comment).
   */
  append(staged: StagedTxn): Promise<void> {
    return this.run('append', async () => {
      if (staged.txn !== this.lastTxnValue + 1) {
        throw new KemariError('KEMARI_INVALID_ARGUMENT', `journal append of txn ${staged.txn}; txn ${this.lastTxnValue + 1} is next`, {
          details: { txn: staged.txn, expectedTxn: this.lastTxnValue + 1 },
        });
      }
      if (this.bytesSinceSnapshot() > this.ctx.snapshotEveryBytes) await this.compact(this.recoveredReplica, false);
      const record = encodeRecord(staged, this.current.salt, this.ctx.recordBytesMax);
      await this.mutate(`appending txn ${staged.txn}`, async () => {
        const { file, endOffset } = this.current;
        await file.writeAll([record.header, ...record.payload], endOffset);
        await syncData(this.ctx, file);
        this.current.records.push({ txn: staged.txn, offset: endOffset, recordBytes: record.recordBytes, releasedTxn: staged.releasedTxn });
        this.current.endOffset = endOffset + record.recordBytes;
        this.lastTxnValue = staged.txn;
      });
    });
  }

  /**
   * Removes the last journaled transaction, `txn`, because applying it failed: it was never acked, and a replay
   * must not apply it. KEMARI_INVALID_ARGUMENT unless `txn` is the last record after the snapshot.
   */
  abandon(txn: number): Promise<void> {
    return this.run('abandon', async () => {
      const last = this.current.records.at(-1);
      if (last === undefined || last.txn !== txn) {
        throw new KemariError('KEMARI_INVALID_ARGUMENT', `journal cannot abandon txn ${txn}: the last journaled record is ${String(last?.txn ?? 'none')}`, {
          details: { txn, lastRecordTxn: last?.txn },
        });
      }
      await this.mutate(`abandoning txn ${txn}`, async () => {
        await this.current.file.truncate(last.offset);
        await syncData(this.ctx, this.current.file);
        this.current.records.pop();
        this.current.endOffset = last.offset;
        this.lastTxnValue = txn - 1;
      });
    });
  }

  /**
   * Compacts now: snapshots `replica` (default: the one `open` returned) at its committed txn, then starts a
   * journal holding only the records after it. The replica must hold an epoch between the current snapshot and
   * `lastTxn`, have this journal's geometry, and not be applied to until this resolves (else
   * KEMARI_INVALID_ARGUMENT, and the files are left as they were).
   */
  snapshot(replica: Replica = this.recoveredReplica): Promise<void> {
    return this.run('snapshot', () => this.compact(replica, true));
  }

  /** Counters (synchronous; they reflect the operations that have completed). */
  stats(): JournalStats {
    const { records, endOffset, baseTxn } = this.current;
    return {
      records: records.length,
      bytes: endOffset,
      bytesSinceSnapshot: this.bytesSinceSnapshot(),
      snapshots: this.snapshotsWritten,
      lastTxn: this.lastTxnValue,
      snapshotTxn: baseTxn,
    };
  }

  /** Closes the journal file after the operations already called; later calls reject with KEMARI_CLOSED. Idempotent. */
  close(): Promise<void> {
    if (this.closing === undefined) {
      this.closeRequested = true;
      const closing = this.queue.then(() => this.current.file.close()).catch((error: unknown) => {
        if (this.failure === undefined) throw journalError(error, 'closing the journal');
      });
      this.closing = closing;
    }
    return this.closing;
  }

  private bytesSinceSnapshot(): number {
    return this.current.endOffset - this.current.recordsOffset;
  }

  /** Runs `op` after every operation called before it; refuses when closed or failed. */
  private run<T>(what: string, op: () => Promise<T>): Promise<T> {
    if (this.closeRequested) return Promise.reject(new KemariError('KEMARI_CLOSED', `journal ${what} after close`));
    const result = this.queue.then(() => {
      if (this.failure !== undefined) throw this.failure;
      return op();
    });
    this.queue = result.catch(() => {});
    return result;
  }

  /** Runs a step that changes files: any error from it fails the journal for good. */
  private async mutate(doing: string, step: () => Promise<void>): Promise<void> {
    try {
      await step();
    } catch (error) {
      const failure = journalError(error, doing);
      this.failure ??= failure;
      throw failure;
    }
  }

  /** The compaction sequence (file comment). `explicit` callers get errors for a replica that cannot be used. */
  private async compact(replica: Replica, explicit: boolean): Promise<void> {
    const { ctx } = this;
    const txn = replica.committedTxn;
    const problem = !replica.hasCommittedEpoch
      ? 'the replica holds no epoch'
      : identityDifference({ sessionId: ctx.identity.sessionId, geometry: replica.geometry }, ctx.identity) !== undefined
        ? 'the replica has another geometry'
        : txn < this.current.baseTxn || txn > this.lastTxnValue
          ? `the replica's txn ${txn} is outside the journal's ${this.current.baseTxn}..${this.lastTxnValue}`
          : !explicit && txn === this.current.baseTxn
            ? 'nothing to compact'
            : undefined;
    if (problem !== undefined) {
      if (!explicit) return;
      throw new KemariError('KEMARI_INVALID_ARGUMENT', `journal cannot snapshot: ${problem}`, {
        details: { txn, snapshotTxn: this.current.baseTxn, lastTxn: this.lastTxnValue },
      });
    }
    // 1. The snapshot under its temporary name. A replica applied to meanwhile makes it worthless, not harmful.
    // The releasedTxn that goes with txn: from its record, or the current snapshot's when txn is that snapshot.
    const record = this.current.records[txn - this.current.baseTxn - 1];
    const releasedTxn = txn === this.current.baseTxn ? this.snapshotReleasedTxn : Math.max(0, record?.releasedTxn ?? 0);
    let refusal: KemariError | undefined;
    await this.mutate('writing the snapshot', async () => {
      const tmp = await ctx.fs.open(ctx.snapshotTemporaryPath, 'create');
      try {
        await writeSnapshot(tmp, replica, ctx.identity, releasedTxn);
        if (ctx.fsync) await tmp.sync();
      } catch (error) {
        await closeQuietly(tmp);
        if (!isKemariError(error, 'KEMARI_INVALID_ARGUMENT')) throw error;
        refusal = error;
        await ctx.fs.unlink(ctx.snapshotTemporaryPath);
        return;
      }
      await tmp.close();
    });
    if (refusal !== undefined) {
      if (explicit) throw refusal;
      return;
    }
    // 2-4. Publish the snapshot, then the journal that follows it.
    await this.mutate('publishing the snapshot', async () => {
      await ctx.fs.rename(ctx.snapshotTemporaryPath, ctx.snapshotPath);
      await syncDirectory(ctx);
      const old = this.current;
      this.current = await writeJournalFile(ctx, txn, { file: old.file, salt: old.salt, records: old.records.filter((r) => r.txn > txn) });
      this.snapshotsWritten += 1;
      this.snapshotReleasedTxn = releasedTxn;
      await old.file.close();
    });
  }
}

function resolveContext(dir: string, options: JournalOptions): JournalContext {
  const invalid = (field: string, message: string, value: unknown): never => {
    throw new KemariError('KEMARI_INVALID_ARGUMENT', `journal ${field}: ${message}`, { details: { field, value } });
  };
  if (typeof dir !== 'string' || dir.length === 0) invalid('dir', 'must be a non-empty path', dir);
  if (typeof options.sessionId !== 'string' || options.sessionId.length === 0) invalid('sessionId', 'must be a non-empty string', options.sessionId);
  const { geometry } = options;
  if (
    !Number.isSafeInteger(geometry.pageBytes) || geometry.pageBytes <= 0 ||
    !Number.isSafeInteger(geometry.memoryBytes) || geometry.memoryBytes < 0 || geometry.memoryBytes % geometry.pageBytes !== 0
  ) {
    invalid('geometry', 'memoryBytes must be a multiple of a positive pageBytes', { memoryBytes: geometry.memoryBytes, pageBytes: geometry.pageBytes });
  }
  const snapshotEveryBytes = options.snapshotEveryBytes ?? DEFAULT_SNAPSHOT_EVERY_BYTES;
  if (typeof snapshotEveryBytes !== 'number' || Number.isNaN(snapshotEveryBytes) || snapshotEveryBytes < 0) {
    invalid('snapshotEveryBytes', 'must be a number >= 0 (Infinity: never automatically)', snapshotEveryBytes);
  }
  const recordBytesMax = options.recordBytesMax ?? DEFAULT_RECORD_BYTES_MAX;
  if (!Number.isSafeInteger(recordBytesMax) || recordBytesMax <= RECORD_HEADER_BYTES || recordBytesMax > RECORD_BYTES_LIMIT) {
    invalid('recordBytesMax', `must be an integer in (${RECORD_HEADER_BYTES}, ${RECORD_BYTES_LIMIT}]`, recordBytesMax);
  }
  const identity: JournalIdentity = { sessionId: options.sessionId, geometry };
  return {
    dir,
    fs: options.fs ?? nodeJournalFs,
    identity,
    identityBytes: encodeIdentity(identity),
    fsync: options.fsync ?? true,
    snapshotEveryBytes,
    recordBytesMax,
    newReplica: options.newReplica ?? ((g) => new Replica(g)),
    ...journalPaths(dir),
  };
}
