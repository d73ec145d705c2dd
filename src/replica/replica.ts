/**
 * The secondary's copy of the VM: memory, devices and disks of exactly one committed epoch.
 *
 * Nothing it keeps refers to the staged transaction's memory (device states and events are copied), so the
 * receiver may reuse that memory once `apply` returns.
 *
 * `apply` moves it from one epoch to the next atomically: the whole transaction is validated before the first
 * byte changes (page indices, sizes, device names, disk ids and ranges), then memory, devices and disks are
 * written together in one synchronous step. There is no moment at which memory of one epoch sits beside disk of
 * another (the Remus bug of seed 003). When verification is on, the old contents of everything touched are kept
 * in an undo log first, and a digest mismatch restores them: the replica is back at the previous epoch, exactly.
 */
import { KemariError } from '../errors.js';
import type { DeviceState } from '../wire/bodies/device.js';
import type { DiskInfo } from '../wire/bodies/hello.js';
import type { OutputEvent } from '../wire/bodies/event.js';
import { PageKind } from '../wire/bodies/pages.js';
import { decodeDelta, validateDelta } from '../pages/delta.js';
import { pack, unpack } from '../wire/msgpack.js';
import type { StagedTxn } from '../txn/staged-txn.js';
import { PageCrcTable } from '../vm/page-crc-table.js';
import { touchPages } from './prefault.js';
import { DISK_DIGEST_BLOCK_BYTES, computeStateDigest, digestHex } from './state-digest.js';

/** The shape of the VM a replica mirrors; fixed for the life of the replica. */
export interface ReplicaGeometry {
  memoryBytes: number;
  pageBytes: number;
  deviceNames: readonly string[];
  disks: readonly DiskInfo[];
}

/** Bounds on what a replica keeps for replay (outputs of committed epochs the primary has not released). */
export interface ReplicaLimits {
  /** Default 65,536. */
  replayEventsMax?: number;
  /** Default 64 MiB. */
  replayBytesMax?: number;
}

/** A committed event kept for replay, with the epoch that produced it. */
export interface ReplayEvent extends OutputEvent {
  txn: number;
}

/** A copy-free view of the committed state, for promotion and checks. */
export interface ReplicaSnapshot {
  txn: number;
  memoryBytes: number;
  pageBytes: number;
  memory: Uint8Array;
  devices: ReadonlyMap<string, unknown>;
  disks: ReadonlyArray<{ id: number; bytes: number; data: Uint8Array }>;
}

interface ReplicaDisk {
  id: number;
  bytes: number;
  data: Uint8Array;
  table: PageCrcTable;
}

interface UndoLog {
  pages: Array<{ index: number; old: Uint8Array }>;
  memoryAll?: Uint8Array;
  disks: Array<{ disk: ReplicaDisk; offset: number; old: Uint8Array }>;
  disksAll?: Array<{ disk: ReplicaDisk; old: Uint8Array }>;
  devices: Map<string, unknown>;
  events: ReplayEvent[];
  releasedTxn: number;
  txn: number;
}

export class Replica {
  readonly geometry: ReplicaGeometry;
  readonly memory: Uint8Array;
  private readonly pageTable: PageCrcTable;
  private readonly deviceStates = new Map<string, unknown>();
  private readonly disks = new Map<number, ReplicaDisk>();
  private committed = 0;
  private hasEpoch = false;
  private replayEvents: ReplayEvent[] = [];
  private releasedTxn = 0;
  private readonly replayEventsMax: number;
  private readonly replayBytesMax: number;
  /** Device states of the transaction being applied, encoded during validation (so writing cannot fail). */
  private encodedDevices: Array<[string, Uint8Array]> = [];

  constructor(geometry: ReplicaGeometry, limits: ReplicaLimits = {}, allocation: { prefault?: boolean } = {}) {
    const prefault = allocation.prefault === false ? (b: Uint8Array) => b : (b: Uint8Array) => (touchPages(b), b);
    this.replayEventsMax = limits.replayEventsMax ?? 65_536;
    this.replayBytesMax = limits.replayBytesMax ?? 64 << 20;
    this.geometry = { ...geometry, deviceNames: [...geometry.deviceNames], disks: geometry.disks.map((d) => ({ ...d })) };
    this.memory = prefault(new Uint8Array(geometry.memoryBytes));
    this.pageTable = new PageCrcTable(this.memory, geometry.pageBytes);
    for (const { id, bytes } of geometry.disks) {
      const data = prefault(new Uint8Array(bytes));
      this.disks.set(id, { id, bytes, data, table: new PageCrcTable(data, DISK_DIGEST_BLOCK_BYTES) });
    }
  }

  /** The memory and disk buffers, for a caller that faults them in itself (constructed with `prefault: false`). */
  get buffers(): Uint8Array[] {
    return [this.memory, ...[...this.disks.values()].map((d) => d.data)];
  }

  /** The committed epoch (0 before the first full sync). */
  get committedTxn(): number {
    return this.committed;
  }

  /** True once a full sync has been applied: the replica holds a whole VM state. */
  get hasCommittedEpoch(): boolean {
    return this.hasEpoch;
  }

  /** Events of committed epochs the primary may not have released: what failover replays. */
  get pendingEvents(): readonly ReplayEvent[] {
    return this.replayEvents;
  }

  /** Device states by name (committed). */
  get devices(): ReadonlyMap<string, unknown> {
    return this.deviceStates;
  }

  /** Digest of the committed state (see computeStateDigest). */
  digest(): Uint8Array {
    return computeStateDigest({
      memoryBytes: this.geometry.memoryBytes,
      pageBytes: this.geometry.pageBytes,
      pageCrcs: this.pageTable.refresh(),
      devices: this.deviceStates,
      disks: [...this.disks.values()].map((d) => ({ id: d.id, bytes: d.bytes, blockBytes: DISK_DIGEST_BLOCK_BYTES, blockCrcs: d.table.refresh() })),
    });
  }

  /**
   * Sets the committed facts `apply` cannot: the txn a restored replica stands at, the last releasedTxn, and the
   * events pending replay (copied). Used by journal recovery after it restored memory, devices and disks through
   * `apply`. Only on a replica that holds an epoch.
   */
  restoreCommitted(state: { txn: number; releasedTxn: number; pendingEvents: readonly ReplayEvent[] }): void {
    if (!this.hasEpoch || !Number.isSafeInteger(state.txn) || state.txn < 1 || state.releasedTxn < 0 || state.releasedTxn > state.txn) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', 'restoreCommitted needs a replica holding an epoch and a txn >= 1', { details: { txn: state.txn } });
    }
    this.committed = state.txn;
    this.releasedTxn = state.releasedTxn;
    this.replayEvents = state.pendingEvents.map((e) => ({ txn: e.txn, id: e.id, channel: e.channel, payload: Uint8Array.from(e.payload) }));
  }

  /** The committed state as views (not copies): valid until the next apply. */
  snapshot(): ReplicaSnapshot {
    return {
      txn: this.committed,
      memoryBytes: this.geometry.memoryBytes,
      pageBytes: this.geometry.pageBytes,
      memory: this.memory,
      devices: this.deviceStates,
      disks: [...this.disks.values()].map((d) => ({ id: d.id, bytes: d.bytes, data: d.data })),
    };
  }

  /**
   * Applies a verified transaction as one step. Throws before changing anything if the transaction does not fit
   * this replica (KEMARI_TXN_OUT_OF_ORDER, KEMARI_BAD_BODY). With `verify`, compares the resulting digest with the
   * transaction's; on mismatch restores the previous epoch and throws KEMARI_VERIFY_FAILED. Returns the digest of
   * the new state when verifying, else an empty array. DELTA pages are accepted only with `delta` (negotiated).
   */
  apply(staged: StagedTxn, options: { verify: boolean; delta?: boolean }): Uint8Array {
    this.validate(staged, options.delta === true);
    const undo = options.verify ? this.undoFor(staged) : undefined;
    this.write(staged);
    if (!options.verify) return new Uint8Array(0);
    const digest = this.digest();
    if (staged.stateDigest.byteLength === 0 || !Buffer.from(digest).equals(Buffer.from(staged.stateDigest))) {
      this.rollback(undo!);
      throw new KemariError('KEMARI_VERIFY_FAILED', `epoch ${staged.txn} does not match the primary's state digest; rolled back to ${this.committed}`, {
        details: { txn: staged.txn, expected: digestHex(staged.stateDigest), actual: digestHex(digest), committedTxn: this.committed },
      });
    }
    return digest;
  }

  private validate(staged: StagedTxn, delta: boolean): void {
    const { geometry } = this;
    if (staged.txn !== this.committed + 1 || staged.baseTxn !== this.committed) {
      throw new KemariError('KEMARI_TXN_OUT_OF_ORDER', `txn ${staged.txn} on base ${staged.baseTxn} does not follow committed ${this.committed}`, {
        details: { txn: staged.txn, baseTxn: staged.baseTxn, committedTxn: this.committed },
      });
    }
    if (!staged.full && !this.hasEpoch) {
      throw new KemariError('KEMARI_TXN_OUT_OF_ORDER', 'an incremental epoch needs a full sync first', { details: { txn: staged.txn } });
    }
    const bad = (message: string, details: Record<string, unknown> = {}): never => {
      throw new KemariError('KEMARI_BAD_BODY', `txn ${staged.txn}: ${message}`, { details: { txn: staged.txn, ...details } });
    };
    if (staged.pages.length > 0 && staged.pageBytes !== geometry.pageBytes) bad('page size differs from the session', { pageBytes: staged.pageBytes });
    const pageCount = geometry.memoryBytes / geometry.pageBytes;
    for (const page of staged.pages) {
      if (page.index >= pageCount) bad(`page ${page.index} beyond memory`, { pageCount });
      if (page.kind === PageKind.DELTA) {
        if (!delta) bad('delta pages were not negotiated');
        // Against the committed copy: a full sync has none to be relative to.
        if (staged.full) bad('a full sync carries no delta pages');
        const malformed = validateDelta(page.data, geometry.pageBytes);
        if (malformed !== undefined) throw malformed;
      }
    }
    if (staged.full) {
      const seen = new Uint8Array(pageCount);
      let count = 0;
      for (const page of staged.pages) if (seen[page.index] === 0) (seen[page.index] = 1), count++;
      if (count !== pageCount) bad(`full sync carries ${count} of ${pageCount} pages`);
      // A full sync describes every device exactly once, or a device of an older epoch could survive it.
      const named = new Set(staged.devices.map((d) => d.name));
      if (staged.devices.length !== geometry.deviceNames.length || named.size !== geometry.deviceNames.length) {
        bad('a full sync must carry every device exactly once');
      }
    }
    const names = new Set(geometry.deviceNames);
    for (const device of staged.devices) if (!names.has(device.name)) bad(`unknown device ${device.name}`);
    // Outputs of epochs not committed cannot have been released. A releasedTxn below the last one is taken as the
    // last one (a new primary session starts its count afresh): what is known released stays released.
    if (staged.releasedTxn > staged.baseTxn) {
      bad(`releasedTxn ${staged.releasedTxn} runs ahead of the committed epoch ${staged.baseTxn}`, { releasedTxn: staged.releasedTxn });
    }
    const releasedTxn = Math.max(this.releasedTxn, staged.releasedTxn);
    let replayEvents = staged.events.length;
    let replayBytes = 0;
    for (const e of staged.events) replayBytes += e.payload.byteLength;
    for (const e of this.replayEvents) {
      if (e.txn > releasedTxn) {
        replayEvents += 1;
        replayBytes += e.payload.byteLength;
      }
    }
    if (replayEvents > this.replayEventsMax || replayBytes > this.replayBytesMax) {
      throw new KemariError('KEMARI_TXN_TOO_LARGE', `txn ${staged.txn} would hold ${replayEvents} events (${replayBytes} bytes) for replay`, {
        details: { txn: staged.txn, replayEvents, replayBytes, replayEventsMax: this.replayEventsMax, replayBytesMax: this.replayBytesMax },
      });
    }
    // Encode device states now: a state that cannot be re-encoded fails the transaction before anything changed.
    const encoded: Array<[string, Uint8Array]> = [];
    for (const device of staged.devices) {
      try {
        encoded.push([device.name, pack('device state', device.state)]);
      } catch (cause) {
        bad(`device ${device.name} has a state that cannot be kept`, { cause: String(cause) });
      }
    }
    this.encodedDevices = encoded;
    for (const write of staged.diskWrites) {
      const disk = this.disks.get(write.diskId);
      if (disk === undefined) bad(`unknown disk ${write.diskId}`);
      else if (write.offset + write.data.byteLength > disk.bytes) bad(`write beyond disk ${write.diskId}`, { offset: write.offset, bytes: write.data.byteLength });
    }
  }

  private undoFor(staged: StagedTxn): UndoLog {
    const { pageBytes } = this.geometry;
    const undo: UndoLog = {
      pages: [],
      disks: [],
      devices: new Map([...this.deviceStates].map(([name, state]) => [name, unpack('device state', pack('device state', state))])),
      events: this.replayEvents,
      releasedTxn: this.releasedTxn,
      txn: this.committed,
    };
    if (staged.full) {
      undo.memoryAll = Uint8Array.from(this.memory);
      undo.disksAll = [...this.disks.values()].map((disk) => ({ disk, old: Uint8Array.from(disk.data) }));
    } else {
      for (const page of staged.pages) {
        const start = page.index * pageBytes;
        undo.pages.push({ index: page.index, old: this.memory.slice(start, start + pageBytes) });
      }
    }
    if (!staged.full) {
      for (const write of staged.diskWrites) {
        const disk = this.disks.get(write.diskId)!;
        undo.disks.push({ disk, offset: write.offset, old: disk.data.slice(write.offset, write.offset + write.data.byteLength) });
      }
    }
    undo.events = this.replayEvents;
    return undo;
  }

  private write(staged: StagedTxn): void {
    const { pageBytes } = this.geometry;
    for (const page of staged.pages) {
      const start = page.index * pageBytes;
      if (page.kind === PageKind.ZERO) this.memory.fill(0, start, start + pageBytes);
      // Validated above: decoding cannot fail, and it changes the page in place (its old bytes are in the undo log).
      else if (page.kind === PageKind.DELTA) decodeDelta(this.memory.subarray(start, start + pageBytes), page.data);
      else this.memory.set(page.data, start);
      this.pageTable.markPage(page.index);
    }
    // Copies (decoded from the bytes validated above): staged data live in receive memory reused for the next
    // transaction. A full sync replaces the device table whole.
    if (staged.full) this.deviceStates.clear();
    for (const [name, bytes] of this.encodedDevices) this.deviceStates.set(name, unpack('device state', bytes));
    this.encodedDevices = [];
    if (staged.full) {
      // A full sync describes each disk whole: blocks it does not write are zero.
      for (const disk of this.disks.values()) {
        disk.data.fill(0);
        disk.table.markRange(0, disk.bytes);
      }
    }
    for (const write of staged.diskWrites) {
      const disk = this.disks.get(write.diskId)!;
      disk.data.set(write.data, write.offset);
      disk.table.markRange(write.offset, write.data.byteLength);
    }
    // Events of epochs the primary has released need no replay; this epoch's join the ones still pending.
    const releasedTxn = Math.max(this.releasedTxn, staged.releasedTxn);
    const kept = this.replayEvents.filter((e) => e.txn > releasedTxn);
    for (const event of staged.events) kept.push({ ...event, payload: Uint8Array.from(event.payload), txn: staged.txn });
    this.replayEvents = kept;
    this.releasedTxn = releasedTxn;
    this.committed = staged.txn;
    this.hasEpoch = true;
  }

  private rollback(undo: UndoLog): void {
    const { pageBytes } = this.geometry;
    if (undo.memoryAll !== undefined) {
      this.memory.set(undo.memoryAll);
      this.pageTable.markRange(0, this.memory.byteLength);
    }
    for (let i = undo.pages.length - 1; i >= 0; i--) {
      const { index, old } = undo.pages[i]!;
      this.memory.set(old, index * pageBytes);
      this.pageTable.markPage(index);
    }
    if (undo.disksAll !== undefined) {
      for (const { disk, old } of undo.disksAll) {
        disk.data.set(old);
        disk.table.markRange(0, disk.bytes);
      }
    }
    for (let i = undo.disks.length - 1; i >= 0; i--) {
      const { disk, offset, old } = undo.disks[i]!;
      disk.data.set(old, offset);
      disk.table.markRange(offset, old.byteLength);
    }
    this.deviceStates.clear();
    for (const [name, state] of undo.devices) this.deviceStates.set(name, state);
    this.replayEvents = undo.events;
    this.releasedTxn = undo.releasedTxn;
    if (undo.txn === 0) this.hasEpoch = false;
    this.committed = undo.txn;
  }
}

/** Device states of a staged transaction by name (for tests and reports). */
export function devicesByName(devices: readonly DeviceState[]): Map<string, unknown> {
  return new Map(devices.map((d) => [d.name, d.state]));
}
