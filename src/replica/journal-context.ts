/**
 * What every part of the journal shares: the directory and its file names, the options in force, and the two
 * rules for touching the disk (failures become KEMARI_JOURNAL_IO; syncs happen only when `fsync` is on).
 */
import { randomBytes } from 'node:crypto';
import { dirname, join, resolve } from 'node:path';
import { KemariError } from '../errors.js';
import { isMissingFile } from './journal-fs.js';
import type { JournalFile, JournalFs, JournalOpenMode } from './journal-fs.js';
import type { JournalIdentity } from './journal-identity.js';
import type { Replica, ReplicaGeometry } from './replica.js';

/** Name of the journal file inside the directory. */
export const JOURNAL_FILE_NAME = 'journal.kmj';
/** Name of the snapshot file inside the directory. */
export const SNAPSHOT_FILE_NAME = 'snapshot.kms';
/** Suffix of a file being written; such files are never read, and are deleted when the journal opens. */
export const TEMPORARY_SUFFIX = '.tmp';

/** The journal's fixed facts and options, resolved. */
export interface JournalContext {
  dir: string;
  fs: JournalFs;
  identity: JournalIdentity;
  identityBytes: Uint8Array;
  fsync: boolean;
  snapshotEveryBytes: number;
  recordBytesMax: number;
  /** Makes the empty replica recovery starts from (the caller's replica limits live there). */
  newReplica: (geometry: ReplicaGeometry) => Replica;
  journalPath: string;
  snapshotPath: string;
  journalTemporaryPath: string;
  snapshotTemporaryPath: string;
}

/** The paths of the files of `dir`. */
export function journalPaths(dir: string): Pick<JournalContext, 'journalPath' | 'snapshotPath' | 'journalTemporaryPath' | 'snapshotTemporaryPath'> {
  const journalPath = join(dir, JOURNAL_FILE_NAME);
  const snapshotPath = join(dir, SNAPSHOT_FILE_NAME);
  return { journalPath, snapshotPath, journalTemporaryPath: journalPath + TEMPORARY_SUFFIX, snapshotTemporaryPath: snapshotPath + TEMPORARY_SUFFIX };
}

/**
 * `error` as a KemariError: KemariErrors pass unchanged; anything else came from the file system and becomes
 * KEMARI_JOURNAL_IO saying what was being done.
 */
export function journalError(error: unknown, doing: string): KemariError {
  if (error instanceof KemariError) return error;
  const code = typeof error === 'object' && error !== null ? (error as { code?: unknown }).code : undefined;
  return new KemariError('KEMARI_JOURNAL_IO', `journal: ${doing} failed: ${error instanceof Error ? error.message : String(error)}`, {
    cause: error,
    details: { doing, ...(typeof code === 'string' ? { errno: code } : {}) },
  });
}

/**
 * Creates the journal directory (and missing parents) and makes their entries durable: a journal whose
 * directory vanishes in a crash would take acked transactions with it.
 */
export async function makeDirectory(ctx: JournalContext): Promise<void> {
  const created = await ctx.fs.mkdir(ctx.dir);
  if (created === undefined) return;
  // Every new directory's entry lives in its parent: sync the parents from the journal's up to the first created.
  const top = resolve(created);
  for (let dir = resolve(ctx.dir); ; dir = dirname(dir)) {
    const parent = dirname(dir);
    await syncDirectory(ctx, parent);
    if (dir === top || parent === dir) break;
  }
}

/** Opens `path`, or resolves to undefined when it does not exist. */
export async function openIfExists(ctx: Pick<JournalContext, 'fs'>, path: string, mode: JournalOpenMode): Promise<JournalFile | undefined> {
  try {
    return await ctx.fs.open(path, mode);
  } catch (error) {
    if (isMissingFile(error)) return undefined;
    throw error;
  }
}

/** Deletes `path` if it exists. */
export async function removeIfExists(ctx: JournalContext, path: string): Promise<void> {
  try {
    await ctx.fs.unlink(path);
  } catch (error) {
    if (!isMissingFile(error)) throw error;
  }
}

/** Makes `file`'s data and length durable (when `fsync` is on). */
export async function syncData(ctx: JournalContext, file: JournalFile): Promise<void> {
  if (ctx.fsync) await file.datasync();
}

/** Makes the names in directory `path` (default: the journal's) durable: creations, renames (when `fsync` is on). */
export async function syncDirectory(ctx: JournalContext, path = ctx.dir): Promise<void> {
  if (!ctx.fsync) return;
  const dir = await ctx.fs.open(path, 'directory');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}

/** Closes `file`, ignoring errors (used on paths that already fail). */
export async function closeQuietly(file: JournalFile | undefined): Promise<void> {
  try {
    await file?.close();
  } catch {
    // Already failing: the first error is the one reported.
  }
}

/** A fresh random salt for a new journal file. */
export function newSalt(): number {
  return randomBytes(4).readUInt32LE(0);
}
