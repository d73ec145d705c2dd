/**
 * Torn tails and damage: the journal file is cut or bit-flipped at many offsets, and recovery must land on
 * exactly the last complete record (a torn tail, dropped and truncated) or refuse (damage followed by good
 * records, KEMARI_JOURNAL_CORRUPT), never skip silently.
 */
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KemariError } from '../../src/errors.js';
import { Journal } from '../../src/replica/journal.js';
import { JOURNAL_FILE_NAME } from '../../src/replica/journal-context.js';
import { Prng } from '../../src/vm/prng.js';
import { TempDirs, hex, replicaAt, smallTxn, stagedStream } from './journal-fixtures.js';
import type { StagedStream } from './journal-fixtures.js';

const dirs = new TempDirs();
afterAll(() => dirs.cleanup());

let stream: StagedStream;
/** The whole journal file: 5 recorded epochs, then one small transaction (txn 6). */
let bytes: Buffer;
/** boundaries[k]: file offset just past record k (boundaries[0]: the first record's start). */
let boundaries: number[];
/** digests[k]: state digest after txn k (k >= 1). */
let digests: string[];
/** Directories recoveries run in, several at once. */
let works: string[];

beforeAll(async () => {
  stream = stagedStream({ epochs: 5, seed: 11, memoryBytes: 256 * 1024 });
  const reference = replicaAt(stream, 5);
  const last = smallTxn(reference);
  const template = await dirs.make();
  const { journal } = await Journal.open(template, { geometry: stream.geometry, sessionId: stream.sessionId, fsync: false });
  boundaries = [journal.stats().bytes];
  for (const txn of [...stream.txns, last]) {
    await journal.append(txn);
    boundaries.push(journal.stats().bytes);
  }
  await journal.close();
  bytes = await readFile(join(template, JOURNAL_FILE_NAME));
  digests = ['', ...stream.digests.map(hex), hex(last.stateDigest)];
  works = await Promise.all([1, 2, 3, 4].map(() => dirs.make()));
});

type Outcome = { txn: number; dropped: number; digest: string; fileBytes: number } | string;

/** Recovers a journal file holding `content` in `work`; resolves to the outcome or the error code. */
async function recover(content: Uint8Array, work = works[0]!): Promise<Outcome> {
  await writeFile(join(work, JOURNAL_FILE_NAME), content);
  try {
    const { journal, replica, recovered } = await Journal.open(work, { geometry: stream.geometry, sessionId: stream.sessionId, fsync: false });
    await journal.close();
    expect(recovered.txn).toBe(replica.committedTxn);
    const fileBytes = (await stat(join(work, JOURNAL_FILE_NAME))).size;
    return { txn: recovered.txn, dropped: recovered.droppedTailBytes, digest: replica.committedTxn > 0 ? hex(replica.digest()) : '', fileBytes };
  } catch (error) {
    if (error instanceof KemariError) return error.code;
    throw error;
  }
}

/** Recovers each of `contents` (several at a time, one per work directory), in order of the results. */
async function recoverAll(contents: readonly Uint8Array[]): Promise<Outcome[]> {
  const outcomes: Outcome[] = new Array(contents.length);
  let next = 0;
  await Promise.all(
    works.map(async (work) => {
      for (let i = next++; i < contents.length; i = next++) outcomes[i] = await recover(contents[i]!, work);
    }),
  );
  return outcomes;
}

/** The journal with the byte at `at` XORed with `mask`. */
function flipped(at: number, mask: number): Buffer {
  const damaged = Buffer.from(bytes);
  damaged[at] = damaged[at]! ^ mask;
  return damaged;
}

/** The number of whole records before `offset`. */
function recordsBefore(offset: number): number {
  let k = 0;
  while (k + 1 < boundaries.length && boundaries[k + 1]! <= offset) k++;
  return k;
}

describe('journal torn tail', () => {
  it('recovers the last complete record when the file is cut at every byte offset inside the last record', async () => {
    const start = boundaries[5]!;
    const end = boundaries[6]!;
    expect(end - start).toBeGreaterThan(200);
    const cuts = Array.from({ length: end - start - 1 }, (_, i) => start + 1 + i);
    const outcomes = await recoverAll(cuts.map((cut) => bytes.subarray(0, cut)));
    cuts.forEach((cut, i) => expect(outcomes[i], `cut at ${cut}`).toEqual({ txn: 5, dropped: cut - start, digest: digests[5], fileBytes: start }));
  });

  it('recovers exactly the complete records before a cut anywhere in the file', async () => {
    const prng = new Prng(99);
    const cuts = new Set<number>([...boundaries, ...boundaries.flatMap((b) => [b - 1, b + 1, b + 40, b + 41])]);
    while (cuts.size < 120) cuts.add(boundaries[0]! + prng.nextInt(bytes.byteLength - boundaries[0]!));
    const sorted = [...cuts].filter((c) => c >= boundaries[0]! && c <= bytes.byteLength).sort((a, b) => a - b);
    const outcomes = await recoverAll(sorted.map((cut) => bytes.subarray(0, cut)));
    sorted.forEach((cut, i) => {
      const k = recordsBefore(cut);
      expect(outcomes[i], `cut at ${cut}`).toEqual({ txn: k, dropped: cut - boundaries[k]!, digest: digests[k] ?? '', fileBytes: boundaries[k] });
    });
  });

  it('refuses a file cut inside its header as corrupt (headers are written whole, by rename)', async () => {
    for (const cut of [0, 1, 16, 31, 32, boundaries[0]! - 1]) {
      expect(await recover(bytes.subarray(0, cut)), `cut at ${cut}`).toBe('KEMARI_JOURNAL_CORRUPT');
    }
  });

  it('drops the last record as torn when any one of its bytes is flipped', async () => {
    const start = boundaries[5]!;
    const end = boundaries[6]!;
    const spots = Array.from({ length: end - start }, (_, i) => start + i);
    const outcomes = await recoverAll(spots.map((at) => flipped(at, 1 << (at % 8))));
    spots.forEach((at, i) => expect(outcomes[i], `flip at ${at}`).toEqual({ txn: 5, dropped: end - start, digest: digests[5], fileBytes: start }));
  });

  it('refuses damage to an earlier record that good records follow, with KEMARI_JOURNAL_CORRUPT', async () => {
    const prng = new Prng(5);
    const spots = new Set<number>();
    for (let k = 1; k <= 5; k++) {
      // The header of each earlier record, its first payload bytes, and random payload bytes.
      for (const d of [0, 4, 8, 20, 36, 39, 40, 41, 72]) spots.add(boundaries[k - 1]! + d);
      for (let i = 0; i < 8; i++) spots.add(boundaries[k - 1]! + prng.nextInt(boundaries[k]! - boundaries[k - 1]!));
    }
    const list = [...spots];
    const outcomes = await recoverAll(list.map((at) => flipped(at, 0x5a)));
    list.forEach((at, i) => expect(outcomes[i], `flip at ${at}`).toBe('KEMARI_JOURNAL_CORRUPT'));
  });

  it('refuses a file whose header is damaged', async () => {
    for (const at of [0, 5, 9, 17, 21, 29, boundaries[0]! - 1]) {
      expect(await recover(flipped(at, 0x01)), `flip at ${at}`).toBe('KEMARI_JOURNAL_CORRUPT');
    }
  });

  it('takes new appends after dropping a torn tail, and recovers them', async () => {
    const cut = boundaries[4]! + 100;
    expect(await recover(bytes.subarray(0, cut))).toMatchObject({ txn: 4 });
    const work = works[0]!;
    const { journal } = await Journal.open(work, { geometry: stream.geometry, sessionId: stream.sessionId, fsync: false });
    await journal.append(stream.txns[4]!);
    await journal.close();
    const outcome = await recover(await readFile(join(work, JOURNAL_FILE_NAME)));
    expect(outcome).toEqual({ txn: 5, dropped: 0, digest: digests[5], fileBytes: boundaries[5] });
  });
});
