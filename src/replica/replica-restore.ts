/**
 * Builds a {@link Replica} at a committed epoch from durable snapshot contents, without editing replica.ts.
 *
 * Why it works this way: Replica has no public way to be set to a state, only `apply`. So the contents go in
 * through `apply` itself, which validates them and keeps the replica's CRC tables (and so its digest) right:
 *   1. a synthetic full sync (txn 1 on base 0) whose pages are all ZERO and whose devices are the snapshot's,
 *      which also zero-fills the disks;
 *   2. synthetic incremental transactions (txn 2, 3, …), one per chunk the caller feeds through the
 *      {@link RestoreSink}: RAW pages of memory, or one disk write. Chunks are copied, so the caller reuses one
 *      buffer and the restore never holds more than one chunk beside the replica.
 * What `apply` cannot do (set the committed txn to the snapshot's, the last releasedTxn, and the pending replay
 * events with their original txns) goes through `Replica.restoreCommitted`.
 */
import { KemariError } from '../errors.js';
import type { StagedTxn } from '../txn/staged-txn.js';
import type { DeviceState } from '../wire/bodies/device.js';
import { PageKind } from '../wire/bodies/pages.js';
import type { Page } from '../wire/bodies/pages.js';
import { Replica } from './replica.js';
import type { ReplayEvent, ReplicaGeometry } from './replica.js';

/** The committed facts a restored replica gets besides memory and disks. */
export interface ReplicaRestoreState {
  /** The committed txn of the snapshot (>= 1). */
  txn: number;
  /** The releasedTxn of the transaction that committed `txn`. */
  releasedTxn: number;
  /** Every device's state (a full sync needs them all). */
  devices: readonly DeviceState[];
  /** The replay events pending at the snapshot, with their own txns. */
  pendingEvents: readonly ReplayEvent[];
}

/** Where the caller pours memory and disk contents; every call copies `data` into the replica. */
export interface RestoreSink {
  /** Memory bytes at `offset`: both a multiple of the page size. */
  memory(offset: number, data: Uint8Array): void;
  /** Disk bytes of disk `diskId` at `offset`. */
  disk(diskId: number, offset: number, data: Uint8Array): void;
}

const EMPTY = new Uint8Array(0);

/** A replica holding exactly the state `fill` pours in, committed at `state.txn`, with the given replay events. */
export async function restoreReplica(
  geometry: ReplicaGeometry,
  state: ReplicaRestoreState,
  fill: (sink: RestoreSink) => Promise<void>,
  newReplica: (geometry: ReplicaGeometry) => Replica = (g) => new Replica(g),
): Promise<Replica> {
  if (!Number.isSafeInteger(state.txn) || state.txn < 1) {
    throw new KemariError('KEMARI_INVALID_ARGUMENT', 'a restored replica needs a committed txn >= 1', { details: { txn: state.txn } });
  }
  const replica = newReplica(geometry);
  const { pageBytes, memoryBytes } = geometry;
  const pageCount = memoryBytes / pageBytes;
  let txn = 0;
  const apply = (part: Partial<StagedTxn>): void => {
    const staged: StagedTxn = {
      txn: txn + 1,
      full: false,
      baseTxn: txn,
      releasedTxn: 0,
      pageBytes,
      pages: [],
      devices: [],
      diskWrites: [],
      events: [],
      stateDigest: EMPTY,
      bodyBytes: 0,
      ...part,
    };
    replica.apply(staged, { verify: false });
    txn += 1;
  };
  const zeroPages: Page[] = new Array(pageCount);
  for (let i = 0; i < pageCount; i++) zeroPages[i] = { index: i, kind: PageKind.ZERO, data: EMPTY };
  apply({ full: true, pages: zeroPages, devices: [...state.devices] });
  zeroPages.length = 0;
  await fill({
    memory(offset, data) {
      if (offset % pageBytes !== 0 || data.byteLength % pageBytes !== 0) {
        throw new KemariError('KEMARI_INVALID_ARGUMENT', 'memory chunks must be whole pages', { details: { offset, bytes: data.byteLength, pageBytes } });
      }
      const first = offset / pageBytes;
      const pages: Page[] = [];
      for (let at = 0; at < data.byteLength; at += pageBytes) {
        pages.push({ index: first + at / pageBytes, kind: PageKind.RAW, data: data.subarray(at, at + pageBytes) });
      }
      if (pages.length > 0) apply({ pages });
    },
    disk(diskId, offset, data) {
      if (data.byteLength > 0) apply({ diskWrites: [{ diskId, offset, data }] });
    },
  });
  // The facts apply cannot set (see the file comment).
  replica.restoreCommitted({ txn: state.txn, releasedTxn: state.releasedTxn, pendingEvents: state.pendingEvents });
  return replica;
}
