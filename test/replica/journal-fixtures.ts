/**
 * Shared by the journal tests: a recorded replication stream turned into the StagedTxn objects a secondary would
 * journal, the digest and replay events after each, temporary directories, and a file system that "crashes"
 * (throws, after tearing a write in half) at a chosen operation.
 */
import { KemariError } from '../../src/errors.js';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { Replica } from '../../src/replica/replica.js';
import type { ReplayEvent, ReplicaGeometry } from '../../src/replica/replica.js';
import { nodeJournalFs } from '../../src/replica/journal-fs.js';
import type { JournalFile, JournalFs, JournalOpenMode } from '../../src/replica/journal-fs.js';
import { ReceiverCore } from '../../src/txn/receiver-core.js';
import type { StagedTxn } from '../../src/txn/staged-txn.js';
import { PageKind } from '../../src/wire/bodies/pages.js';
import { recordStream } from '../helpers/session.js';

/** A stream as the secondary's journal sees it. */
export interface StagedStream {
  sessionId: string;
  geometry: ReplicaGeometry;
  txns: StagedTxn[];
  /** digests[i]: state digest after txns[i]. */
  digests: Uint8Array[];
  /** pending[i]: the replica's pending replay events after txns[i]. */
  pending: ReplayEvent[][];
}

/**
 * Records `epochs` epochs of a SimulatedVm workload (recordStream), decodes them with a ReceiverCore (no staging
 * arena, so every StagedTxn stays valid), and replays them on a reference Replica with verification on.
 */
export function stagedStream(options: { epochs: number; seed?: number; memoryBytes?: number; stepsPerEpoch?: number }): StagedStream {
  const recorded = recordStream(options);
  let geometry: ReplicaGeometry | undefined;
  let sessionId = '';
  const core = new ReceiverCore({
    bodyBytesMax: 16 << 20,
    txnBytesMax: 1 << 30,
    txnFramesMax: 1 << 20,
    pendingAppliesMax: 1 << 20,
    committedTxn: 0,
    acceptHello: (hello) => {
      geometry = { memoryBytes: hello.memoryBytes, pageBytes: hello.pageBytes, deviceNames: hello.devices, disks: hello.disks };
      sessionId = hello.sessionId;
      return { ...hello, role: 'secondary', committedTxn: 0 };
    },
  });
  core.receive(recorded.hello);
  const txns: StagedTxn[] = [];
  for (const action of core.receive(recorded.stream)) {
    if (action.type === 'apply') txns.push(action.txn);
    if (action.type === 'close') throw action.error ?? new Error('receiver closed');
  }
  if (geometry === undefined || txns.length !== options.epochs) throw new Error('stream did not decode');
  const reference = new Replica(geometry);
  const digests: Uint8Array[] = [];
  const pending: ReplayEvent[][] = [];
  for (const [i, txn] of txns.entries()) {
    digests.push(reference.apply(txn, { verify: true }));
    if (!Buffer.from(digests[i]!).equals(Buffer.from(recorded.epochs[i]!.digest))) throw new Error('reference replica diverged');
    pending.push(reference.pendingEvents.map(copyEvent));
  }
  return { sessionId, geometry, txns, digests, pending };
}

/** A small incremental transaction on top of `replica` (applied to it), with the digest it leads to. */
export function smallTxn(replica: Replica, releasedTxn = 0): StagedTxn {
  const txn = replica.committedTxn + 1;
  const staged: StagedTxn = {
    txn,
    full: false,
    baseTxn: txn - 1,
    releasedTxn,
    pageBytes: replica.geometry.pageBytes,
    pages: [{ index: 3, kind: PageKind.ZERO, data: new Uint8Array(0) }],
    devices: [{ name: replica.geometry.deviceNames[0]!, state: { small: txn, bytes: Uint8Array.of(1, 2, 3) } }],
    diskWrites: [{ diskId: replica.geometry.disks[0]!.id, offset: 512, data: new Uint8Array(64).fill(txn & 0xff) }],
    events: [{ id: 1000 + txn, channel: 'net0', payload: Uint8Array.of(9, 8, 7) }],
    stateDigest: new Uint8Array(0),
    bodyBytes: 321,
  };
  staged.stateDigest = Uint8Array.from(applyAndDigest(replica, staged));
  return staged;
}

function applyAndDigest(replica: Replica, staged: StagedTxn): Uint8Array {
  replica.apply(staged, { verify: false });
  return replica.digest();
}

/** A plain copy of a replay event (Uint8Array payload), for comparisons. */
export function copyEvent(e: ReplayEvent): ReplayEvent {
  return { txn: e.txn, id: e.id, channel: e.channel, payload: Uint8Array.from(e.payload) };
}

/** A fresh replica holding `stream.txns[0..count)`. */
export function replicaAt(stream: StagedStream, count: number): Replica {
  const replica = new Replica(stream.geometry);
  for (const txn of stream.txns.slice(0, count)) replica.apply(txn, { verify: false });
  return replica;
}

/** Temporary directories, removed by `cleanup`. */
export class TempDirs {
  private readonly dirs: string[] = [];

  async make(prefix = 'kemari-journal-'): Promise<string> {
    const dir = await mkdtemp(join(tmpdir(), prefix));
    this.dirs.push(dir);
    return dir;
  }

  async cleanup(): Promise<void> {
    await Promise.all(this.dirs.splice(0).map((dir) => rm(dir, { recursive: true, force: true })));
  }
}

/**
 * A file system that counts every operation that changes something (open, write, truncate, sync, rename,
 * unlink) once armed, and at operation number `crashAt` "crashes": a write lands only its first half, then every
 * crashing operation throws. What completed before stays on disk, as after a power cut with the syncs honoured.
 */
export class CrashingFs implements JournalFs {
  /** Operations seen since armed, by description. */
  readonly log: string[] = [];
  private crashAt = Number.POSITIVE_INFINITY;
  private armed = false;

  constructor(private readonly real: JournalFs = nodeJournalFs) {}

  /** Starts counting; operation number `crashAt` (1-based) crashes. */
  arm(crashAt = Number.POSITIVE_INFINITY): void {
    this.log.length = 0;
    this.crashAt = crashAt;
    this.armed = true;
  }

  /** Counts an operation; true when it is the one that crashes. */
  private step(what: string): boolean {
    if (!this.armed) return false;
    this.log.push(what);
    return this.log.length === this.crashAt;
  }

  private crash(what: string): never {
    throw Object.assign(new Error(`simulated crash at ${what}`), { code: 'ESIMCRASH' });
  }

  mkdir(path: string): Promise<string | undefined> {
    return this.real.mkdir(path);
  }

  readdir(path: string): Promise<string[]> {
    return this.real.readdir(path);
  }

  async open(path: string, mode: JournalOpenMode): Promise<JournalFile> {
    const name = `open ${mode} ${basename(path)}`;
    if (mode !== 'read' && this.step(name)) this.crash(name);
    const file = await this.real.open(path, mode);
    const fs = this;
    const label = basename(path);
    return {
      read: (buffer, offset, length, position) => file.read(buffer, offset, length, position),
      async writeAll(buffers, position) {
        const what = `write ${label}@${position}`;
        if (fs.step(what)) {
          const all = Buffer.concat(buffers);
          await file.writeAll([all.subarray(0, all.byteLength >> 1)], position);
          fs.crash(what);
        }
        return file.writeAll(buffers, position);
      },
      async truncate(bytes) {
        if (fs.step(`truncate ${label}`)) fs.crash(`truncate ${label}`);
        return file.truncate(bytes);
      },
      async datasync() {
        if (fs.step(`datasync ${label}`)) fs.crash(`datasync ${label}`);
        return file.datasync();
      },
      async sync() {
        if (fs.step(`sync ${label}`)) fs.crash(`sync ${label}`);
        return file.sync();
      },
      sizeBytes: () => file.sizeBytes(),
      close: () => file.close(),
    };
  }

  async rename(from: string, to: string): Promise<void> {
    const what = `rename ${basename(from)} -> ${basename(to)}`;
    if (this.step(what)) this.crash(what);
    return this.real.rename(from, to);
  }

  async unlink(path: string): Promise<void> {
    const what = `unlink ${basename(path)}`;
    if (this.step(what)) this.crash(what);
    return this.real.unlink(path);
  }
}

/** Hex of a digest, for readable assertion failures. */
export function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString('hex');
}

/** The KemariError code a promise rejects with, or 'resolved'. Other errors propagate. */
export async function codeOf(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (error) {
    if (error instanceof KemariError) return error.code;
    throw error;
  }
  return 'resolved';
}
