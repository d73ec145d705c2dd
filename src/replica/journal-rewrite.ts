/**
 * Puts a new journal file in place atomically: written under a temporary name, synced, renamed over the journal,
 * and the directory synced. Used to create the first journal, and after a snapshot to start a journal that
 * follows it, carrying over the records newer than the snapshot (the replica may lag the journal by the
 * transactions being applied).
 *
 * Why rename instead of truncating in place: at every instant the directory holds either the old journal or the
 * whole new one, so a crash anywhere leaves something recovery understands (see journal.ts for the sequence).
 */
import { KemariError } from '../errors.js';
import type { JournalContext } from './journal-context.js';
import { closeQuietly, newSalt, syncData, syncDirectory } from './journal-context.js';
import { copyChunk, copyRecord, encodeJournalHead } from './journal-file.js';
import type { RecordLocation } from './journal-file.js';
import type { JournalFile } from './journal-fs.js';

/** An open journal file and where its records are. */
export interface OpenJournal {
  file: JournalFile;
  salt: number;
  /** The snapshot txn this file follows (0: none). */
  baseTxn: number;
  recordsOffset: number;
  records: RecordLocation[];
  /** The file's length: where the next record goes. */
  endOffset: number;
}

/**
 * Writes a journal file following `baseTxn` with copies of `carry.records` (each must be newer than `baseTxn`,
 * consecutive from baseTxn + 1), renames it into place and opens it for appending. The caller still owns (and
 * closes) `carry.file`.
 */
export async function writeJournalFile(
  ctx: JournalContext,
  baseTxn: number,
  carry: { file: JournalFile; salt: number; records: readonly RecordLocation[] } | undefined,
): Promise<OpenJournal> {
  const records = carry?.records ?? [];
  records.forEach((r, i) => {
    if (r.txn !== baseTxn + 1 + i) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', `journal records to carry must follow txn ${baseTxn} without gaps`, { details: { baseTxn, txn: r.txn } });
    }
  });
  const salt = newSalt();
  const head = encodeJournalHead(baseTxn, salt, ctx.identityBytes);
  const recordsOffset = head.reduce((n, b) => n + b.byteLength, 0);
  const tmp = await ctx.fs.open(ctx.journalTemporaryPath, 'create');
  const locations: RecordLocation[] = [];
  let at = recordsOffset;
  try {
    await tmp.writeAll(head, 0);
    const chunk = records.length > 0 ? copyChunk() : new Uint8Array(0);
    for (const record of records) {
      await copyRecord(carry!.file, record, { from: carry!.salt, to: salt }, tmp, at, chunk, ctx.journalPath);
      locations.push({ txn: record.txn, offset: at, recordBytes: record.recordBytes, releasedTxn: record.releasedTxn });
      at += record.recordBytes;
    }
    await syncData(ctx, tmp);
  } finally {
    await closeQuietly(tmp);
  }
  await ctx.fs.rename(ctx.journalTemporaryPath, ctx.journalPath);
  await syncDirectory(ctx);
  const file = await ctx.fs.open(ctx.journalPath, 'readwrite');
  return { file, salt, baseTxn, recordsOffset, records: locations, endOffset: at };
}
