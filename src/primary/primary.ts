/**
 * The primary: protects a running VM by checkpointing it to a secondary.
 *
 * This is the driver around {@link SenderCore}, {@link CheckpointController} and {@link EventTap}: it owns the
 * connection, the timer and the VM calls. Each checkpoint pauses the VM only to capture the epoch (dirty pages
 * copied into a send buffer, device states, disk writes) and seal the outputs tapped so far into it, resumes the
 * VM, then streams the transaction while the guest runs (asynchronous transfer), with at most `pipelineDepth`
 * transactions in flight. Outputs are released only when their epoch is acked.
 *
 * Events: 'progress' ({@link SyncProgress}, during the initial full sync), 'capture' ({@link PrimaryCapture}, an
 * epoch was captured and is about to be sent), 'commit' ({@link PrimaryCommit}),
 * 'release' ({@link ReleasedOutput}), 'disconnect' (KemariError), 'unprotected' ({ error, policy }: the secondary
 * was lost while protected), 'reprotected' ({@link Reprotection}: protected again after a loss), 'fault'
 * ({@link Fault}), 'quiesced' ({@link PostMortem}), 'stood-down' ({@link StoodDownPrimary}: the guest stopped on
 * its own and the secondary confirmed it will not resume it), 'error' (KemariError; emitted only when listened to,
 * and always recorded in `stats().lastError`).
 *
 * After a loss the primary reconnects by itself (`reconnectDelayMs`). The epochs captured since the last ack are
 * kept (at most `pipelineDepth` of them, plus one whose capture the loss interrupted): a secondary that comes back
 * with its replica (a restarted one recovers its journal) is resumed from its committed epoch with one incremental
 * transaction that merges them with a fresh capture; any other comes back through a full sync.
 */
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { KemariError } from '../errors.js';
import { CheckpointController } from '../checkpoint/controller.js';
import type { SyncPolicy } from '../checkpoint/controller.js';
import { LatencyWindow } from '../stats/latency-window.js';
import { EventTap } from '../tap/event-tap.js';
import type { EventTapOptions, ReleasedOutput } from '../tap/event-tap.js';
import type { Connection } from '../transport/connection.js';
import { connect } from '../transport/index.js';
import type { ConnectTlsOptions, Endpoint } from '../transport/index.js';
import { primaryHello } from '../txn/hello-for.js';
import { SenderCore } from '../txn/sender-core.js';
import { STAGED_PAGES_PER_GUEST_PAGE } from '../txn/receiver-core.js';
import { FailureDetector } from '../failover/failure-detector.js';
import type { Arbiter, Lease } from '../failover/arbiter.js';
import { LeaseKeeper } from '../failover/lease-keeper.js';
import { hostname } from 'node:os';
import { encodeFrame } from '../wire/encoder.js';
import { FrameType } from '../wire/header.js';
import { PeerState } from '../wire/bodies/heartbeat.js';
import { REASON_MESSAGE_BYTES_MAX } from '../wire/bodies/reason.js';
import type { SenderEvent } from '../txn/sender-core.js';
import type { VmAdapter } from '../vm/adapter.js';
import type { EncodedFrame } from '../wire/encoder.js';
import { DEFAULT_BODY_BYTES_MAX } from '../wire/decoder.js';
import { HeartbeatLink } from '../failover/heartbeat-link.js';
import { DeltaCache } from '../txn/delta-cache.js';
import type { PagesWorkerPool } from '../pages/worker-pool.js';
import { pagesImplementation } from '../pages/implementation.js';
import type { PagesImplementation } from '../pages/implementation.js';
import type { Hello } from '../wire/bodies/hello.js';
import type { EpochCapture, PrecopyChunk } from '../vm/adapter.js';
import { mergeCaptures } from '../vm/merge-captures.js';
import { CaptureBuffers } from '../vm/capture-buffers.js';
import { detachPages } from './detach-pages.js';
import type { DeltaEncoding } from '../txn/delta-cache.js';
import type { Page } from '../wire/bodies/pages.js';
import { realTimers } from '../time/timers.js';
import type { TimerHandle, Timers } from '../time/timers.js';

/** Options of {@link Primary.start}. */
export interface PrimaryOptions {
  /** The VM to protect. */
  vm: VmAdapter;
  /** Where the secondary listens (or give `connector`). */
  secondary?: Endpoint;
  /**
   * Opens a connection to the secondary instead of `secondary` (a custom transport; the deterministic
   * simulation's network). Called for the first connection and for every reconnection.
   */
  connector?: (signal?: AbortSignal) => Promise<Connection>;
  /**
   * After the secondary is lost, try to reconnect every `reconnectDelayMs` (default 1000; 0 turns reconnection
   * off). A secondary that kept its replica (it is still running, or it recovered its journal) is resumed
   * incrementally from its committed epoch; otherwise a full sync runs while the VM keeps running.
   */
  reconnectDelayMs?: number;
  /** The clock and timers (injectable: the deterministic simulation runs the primary on virtual time). */
  timers?: Timers;
  /**
   * Called at each checkpoint with the VM paused, before the epoch's outputs are sealed: output taps outside the
   * VM (QEMU's serial and network sockets) hand over what the guest wrote before the pause, so it belongs to this
   * epoch and is replayed if the secondary resumes from it (e.g. `() => serialTap.settle()`).
   */
  settleOutputs?: () => Promise<void> | void;
  /** Mutual TLS (host/port endpoints only). */
  tls?: ConnectTlsOptions;
  /** Checkpoint policy. Default `{ mode: 'event' }`. */
  sync?: SyncPolicy;
  /** Most transactions in flight. Default 2. */
  pipelineDepth?: number;
  /** End-to-end verification: COMMIT carries the VM state digest; the secondary checks it after applying. */
  verify?: boolean;
  /**
   * Send changed pages as deltas against the secondary's copy where that is at most half a page (negotiated in
   * HELLO; the secondary accepts them by default). The primary keeps up to `cacheBytes` (default 64 MiB) of page
   * copies to compute them against. Worth it when bandwidth is short and few bytes of a page change per epoch.
   */
  delta?: boolean | { cacheBytes?: number };
  /**
   * Worker threads for the page work of large epochs: a batch of deltas of at least the pool's `encodeDeltas`
   * threshold (measured; see PARALLEL_BYTES_MIN_DEFAULTS) is encoded by its threads in place (the delta cache and
   * the captures are then SharedArrayBuffers), keeping this thread free for heartbeats, acks and the event-tap.
   * Smaller epochs are encoded here. The pool is the caller's: started and closed by it, and may be shared.
   */
  pagesPool?: PagesWorkerPool;
  /**
   * Capture in place, when the VM can mark pages dirty again (VmAdapter.markDirty): each epoch's pages are read
   * from guest memory while it is paused, their deltas encoded there, and only the pages that go out whole copied;
   * the VM copies nothing. Less work for this thread (a page sent as a delta is never copied whole), and an epoch in
   * flight holds its deltas rather than its pages (less memory only when most pages go out as deltas), for a longer
   * pause: delta encoding moves into it. An epoch that must go out again after a reconnect is then taken from guest
   * memory again (its pages marked dirty), not from kept copies. Worth it when this thread, not the guest's pause, is what limits the epoch
   * rate. Ignored with a `pagesPool` (its threads encode after the VM resumes, from copies). Default false.
   */
  captureInPlace?: boolean;
  /** Names the replication session; the secondary refuses another session's primary. Default: a random UUID. */
  sessionId?: string;
  /** Largest frame body to send (must not exceed the secondary's bodyBytesMax). Default 16 MiB. */
  bodyBytesMax?: number;
  /** Most pages in one PAGES frame. Default 256 (1 MiB of 4 KiB pages). */
  pagesPerFrameMax?: number;
  /** Bounds of the event-tap. */
  tap?: EventTapOptions;
  /** Closes the primary when aborted. */
  signal?: AbortSignal;
  /** Connection timeout. Default 10 s. */
  connectTimeoutMs?: number;
  /** The clock, in milliseconds (injectable for tests). Default `timers.now`. */
  clock?: () => number;
  /**
   * Called as the initial full sync is written (also emitted as 'progress'): `start` resolves only after the full
   * sync is acked, so this is how a caller sees its progress.
   */
  onProgress?: (progress: SyncProgress) => void;
  /**
   * Called as each epoch is captured (also emitted as 'capture'): the first full sync is captured inside `start`,
   * before a caller could listen, so this is how a caller sees every epoch (and its digest, with `verify`).
   */
  onCapture?: (capture: PrimaryCapture) => void;
  /** Heartbeats: sent every `intervalMs` (default 100); the secondary is lost after `missedMax` (default 5) silent intervals. */
  heartbeat?: { intervalMs?: number; missedMax?: number };
  /**
   * A second, independent heartbeat path to the secondary (its `heartbeatPath` listener, ideally over another
   * network): with it, a quiet replication link while the secondary is heard here is reported as a broken link
   * (`details.verdict: 'link-down'`), not a dead secondary. Give an endpoint or a connector.
   */
  heartbeatPath?: Endpoint | { connector: (signal?: AbortSignal) => Promise<Connection> };
  /**
   * What to do when the secondary is lost (silent, or its connection broke):
   * - `'hold'` (default): the VM runs; outputs stay held (never released without an ack); the tap fills and
   *   refuses new outputs with KEMARI_TAP_FULL. Safe whatever happened to the secondary.
   * - `'pause'`: pause the VM until it is protected again.
   * - `'continue'`: run unprotected, as COLO's primary failover does: release every held output and pass new ones
   *   through at once. Only safe when the secondary is known not to promote (single writer): use it with an arbiter
   *   or when the secondary is known dead.
   */
  onSecondaryLoss?: 'hold' | 'pause' | 'continue';
  /**
   * Single writer: with an arbiter the primary takes the session's lease before it starts (KEMARI_LEASE_DENIED if
   * another holder has it), renews it every third of `leaseTtlMs`, releases output only while the lease is valid
   * on its own clock, and quiesces for good when the lease is superseded (KEMARI_LEASE_LOST).
   */
  arbiter?: Arbiter;
  /** Lease ttl. Default 3000 ms. */
  leaseTtlMs?: number;
  /** Adopt this lease (a promoted secondary's) instead of acquiring a new one. */
  lease?: Lease;
  /** Who holds the lease. Default 'primary:<host>:<pid>'. */
  holder?: string;
  /**
   * Most pre-copy rounds of a full sync when the VM adapter can pre-copy (SimulatedVm can): the guest keeps
   * running while its pages are copied and sent, round after round of what it dirtied, and is paused only to
   * capture the last few pages, its devices and its disks. Default 4; 0 syncs in one capture (one long pause).
   */
  precopyRoundsMax?: number;
  /** A pre-copy round this small (in pages) is the last. Default 64. */
  precopyStopPages?: number;
}

/** A fault learned from outside the protocol (hardware error events, QMP events, a watchdog). */
export interface Fault {
  /** Where it came from, e.g. 'qmp', 'mce', 'watchdog'. */
  source: string;
  /** `fatal` quiesces the primary and fails over at once; `warning` is recorded and reported only. */
  severity: 'fatal' | 'warning';
  detail?: string;
}

/** What a quiesced primary keeps for post-mortem. */
export interface PostMortem {
  fault: Fault;
  /** The newest epoch the secondary acked: what it resumes from (or later, if in-flight epochs committed). */
  ackedTxn: number;
  /** Transactions sent and not acked when the fault came. */
  inFlight: number;
  /** The VM, paused and kept in memory as it was. */
  vm: VmAdapter;
}

/** One acked epoch. */
export interface PrimaryCommit {
  txn: number;
  full: boolean;
  pages: number;
  /** Bytes of the transaction on the wire. */
  bytes: number;
  /** How long the VM was paused for the capture. */
  pauseMs: number;
  /** From the start of the capture to the ack. */
  latencyMs: number;
  /** Outputs released by this ack. */
  released: number;
  /** The VM state digest of the epoch, when verification is on. */
  digest?: Uint8Array;
}

/** Options of {@link Primary.standDown}. */
export interface StandDownOptions {
  /**
   * Take a last checkpoint of the (paused) VM first, so the outputs the guest produced last are released and the
   * standby holds its final state. Default true; false when the VM can no longer be captured (its QEMU exited):
   * then only the epochs already sent are awaited, and outputs tapped after the last capture are discarded.
   */
  finalEpoch?: boolean;
  /** How long to wait for the last acks and the secondary's confirmation. Default 10000 ms. */
  timeoutMs?: number;
}

/** What a confirmed {@link Primary.standDown} reports: the final epoch the standby holds, and why. */
export interface StoodDownPrimary {
  txn: number;
  reason: string;
}

/** One captured epoch, before it is sent: what the secondary will hold if it commits this txn. */
export interface PrimaryCapture {
  txn: number;
  full: boolean;
  pages: number;
  /** Outputs sealed into the epoch. */
  outputs: number;
  pauseMs: number;
  /** The VM state digest of the epoch, when verification is on. */
  digest?: Uint8Array;
}

/** Protection came back after a loss. */
export interface Reprotection {
  /** The first epoch acked in the new session. */
  txn: number;
  /** True when it was a full sync, false when the secondary was resumed from its committed epoch. */
  full: boolean;
  /** The secondary's committed epoch the session started from. */
  fromTxn: number;
}

/** Progress of a full sync. */
export interface SyncProgress {
  txn: number;
  bytesSent: number;
  bytesTotal: number;
}

/** Counters and latency summaries. */
export interface PrimaryStats {
  state: PrimaryState;
  epochs: number;
  ackedTxn: number;
  inFlight: number;
  pagesSent: number;
  bytesSent: number;
  outputsHeld: number;
  outputsReleased: number;
  /** Pages sent as deltas, and the page bytes that saved (delta frames). */
  deltaPages: number;
  deltaSavedBytes: number;
  /** Epochs whose deltas a worker pool's threads encoded (options.pagesPool; large epochs only). */
  parallelDeltaEpochs: number;
  /** Which page code runs: the native addon or the TypeScript fallback. */
  pagesImplementation: PagesImplementation;
  pauseMs: { p50: number; p99: number; max: number; count: number };
  latencyMs: { p50: number; p99: number; max: number; count: number };
  lastError: KemariError | undefined;
}

/** Page copies the primary keeps for delta frames by default. */
export const DELTA_CACHE_BYTES_DEFAULT = 64 << 20;

/** Pages one pre-copy call copies at most (16 MiB of 4 KiB pages). */
export const PRECOPY_CHUNK_PAGES = 4096;

/** Most bytes of queued frames written under one cork (one system call for an epoch's frames). */
const FLUSH_BATCH_BYTES = 4 << 20;

/** Where a primary stands. */
export type PrimaryState = 'connecting' | 'syncing' | 'protected' | 'unprotected' | 'paused' | 'quiesced' | 'closed';

interface Pending {
  txn: number;
  full: boolean;
  startMs: number;
  pauseMs: number;
  pages: number;
  bytes: number;
  digest: Uint8Array;
  /** The capture of an incremental epoch, kept until acked: a resumed session sends it again. */
  capture: EpochCapture | undefined;
  /** The VM's own capture of an incremental epoch, handed back to it (releaseCapture) once the epoch is acked. */
  release: EpochCapture | undefined;
  /**
   * An in-place epoch: its pages (it keeps no copies of them, `capture` has none), marked dirty again should it
   * have to go out again; and the send buffer of the pages it sent whole, reused once it is acked.
   */
  inPlace: { dirtyPages: Uint32Array; send: Uint8Array } | undefined;
}

/** An in-place capture made ready to send while the VM is still paused (see PrimaryOptions.captureInPlace). */
interface Detached {
  /** The pages to send: deltas, zero pages, and whole pages copied into `send`. */
  pages: Page[];
  send: Uint8Array;
  /** Every page of the capture, to mark dirty again if the epoch is not sent or not committed. */
  dirtyPages: Uint32Array;
  /** The delta encoding done (the cache now holds this epoch's pages), when deltas are on. */
  encoded: DeltaEncoding | undefined;
}

const NO_PAGES: Uint8Array = new Uint8Array(0);

export class Primary extends EventEmitter {
  /** The event-tap: `await primary.tap.output(channel, bytes)` resolves once the output is released. */
  readonly tap: EventTap;
  readonly sessionId: string;
  private readonly vm: VmAdapter;
  private readonly hello: Hello;
  private readonly pipelineDepth: number;
  private readonly bodyBytesMax: number;
  private readonly pagesPerFrameMax: number;
  /** The session's protocol state machine: a new one for every connection. */
  private core: SenderCore;
  private readonly controller: CheckpointController;
  private readonly timers: Timers;
  private readonly clock: () => number;
  private readonly pending: Pending[] = [];
  private readonly sendQueue: EncodedFrame[] = [];
  private readonly pauses = new LatencyWindow();
  private readonly latencies = new LatencyWindow();
  private connection: Connection | undefined;
  private timer: TimerHandle | undefined;
  private capturing = false;
  /** The next capture must be a full sync (first session, or the secondary's replica cannot be resumed). */
  private needFull = true;
  /** Captures whose epoch was never sent (a loss interrupted it): merged into the next transaction. */
  private carry: EpochCapture[] = [];
  /** The newest acked txn, across sessions. */
  private ackedTxnNow = 0;
  /** The newest txn given to a transaction. */
  private lastTxnNow = 0;
  /** A session is up (the secondary's HELLO arrived) on the current connection. */
  private sessionUp = false;
  /** A full sync was acked once: losses from then on follow the `onSecondaryLoss` policy and reconnect. */
  private everProtected = false;
  /** The secondary's committed epoch when the current session began, and whether it resumed from it. */
  private sessionFrom: { txn: number; resumed: boolean } = { txn: 0, resumed: false };
  private lostSince = false;
  private verifyActive = false;
  private deltaActive = false;
  private readonly deltaCache: DeltaCache | undefined;
  private deltaPages = 0;
  private deltaSavedBytes = 0;
  /** Epochs whose deltas the worker pool's threads encoded. */
  private parallelDeltaEpochs = 0;
  private readonly pagesPool: PagesWorkerPool | undefined;
  /** Ask the VM for captures in SharedArrayBuffers (a worker pool reads them in place). */
  private readonly sharedBuffers: boolean;
  /** Capture in place (PrimaryOptions.captureInPlace, and the VM has markDirty). */
  private readonly inPlace: boolean;
  /** Send buffers of the pages in-place epochs send whole, reused once acked (their sizes vary with cache hits). */
  private readonly sendBuffers = new CaptureBuffers({ capacity: 'power-of-two' });
  /** Pages of in-place epochs that must go out again: marked dirty before the next incremental capture. */
  private redirty: Uint32Array[] = [];
  /** A checkpoint paused the VM and has not yet decided to resume it: no one else may resume it meanwhile. */
  private captureHoldsVm = false;
  private stateNow: PrimaryState = 'connecting';
  private readonly detector: FailureDetector;
  private heartbeatTimer: TimerHandle | undefined;
  private helloTimer: TimerHandle | undefined;
  private reconnectTimer: TimerHandle | undefined;
  private readonly reconnectDelayMs: number;
  private readonly connectTimeoutMs: number;
  private readonly connector: (signal?: AbortSignal) => Promise<Connection>;
  private readonly lossPolicy: 'hold' | 'pause' | 'continue';
  private postMortemNow: PostMortem | undefined;
  private readonly keeper: LeaseKeeper | undefined;
  /** The newest acked txn whose outputs wait for the lease to be valid again. */
  private deferredReleaseTxn = 0;
  private epochs = 0;
  private pagesSent = 0;
  private bytesSent = 0;
  private lastError: KemariError | undefined;
  private fullSync: { txn: number; sent: number; total: number; closed: boolean } | undefined;
  private readonly precopyRoundsMax: number;
  private readonly precopyStopPages: number;
  private readonly abortListener: (() => void) | undefined;
  private readonly signal: AbortSignal | undefined;
  private readonly settleOutputs: (() => Promise<void> | void) | undefined;
  private readonly heartbeatConnector: ((signal?: AbortSignal) => Promise<Connection>) | undefined;
  private heartbeatLink: HeartbeatLink | undefined;
  private heartbeatPathTimer: TimerHandle | undefined;
  /** The checkpoint running now (settled when none is). */
  private checkpointRun: Promise<void> = Promise.resolve();
  /** Once a stand-down began, the VM is never resumed again (its guest stopped on its own). */
  private vmHeld = false;
  /** A stand-down in progress: no checkpoint starts by itself; settled by the confirmation, a loss or its timeout. */
  private standing:
    | { reason: string; wake: (() => void) | undefined; confirmed: (txn: number) => void; failed: (error: KemariError) => void }
    | undefined;
  /** The epoch a STAND_DOWN was last sent at: a confirmation arriving after its stand-down timed out still counts. */
  private standDownSentTxn: number | undefined;

  private constructor(options: PrimaryOptions, connection: Connection, keeper: LeaseKeeper | undefined) {
    super();
    this.keeper = keeper;
    this.vm = options.vm;
    this.timers = options.timers ?? realTimers;
    const timers = this.timers;
    this.clock = options.clock ?? (() => timers.now());
    this.sessionId = options.sessionId ?? randomUUID();
    this.tap = new EventTap(options.tap);
    this.pipelineDepth = options.pipelineDepth ?? 2;
    this.controller = new CheckpointController(options.sync ?? { mode: 'event' }, this.pipelineDepth, this.clock());
    const generation = keeper?.current?.generation;
    const offered = [...(options.verify === true ? ['verify'] : []), ...(options.delta === undefined || options.delta === false ? [] : ['delta'])];
    this.pagesPool = options.pagesPool;
    this.sharedBuffers = options.pagesPool !== undefined && options.delta !== undefined && options.delta !== false;
    this.inPlace = options.captureInPlace === true && typeof options.vm.markDirty === 'function' && options.pagesPool === undefined;
    if (options.delta !== undefined && options.delta !== false) {
      const cacheBytes = typeof options.delta === 'object' ? (options.delta.cacheBytes ?? DELTA_CACHE_BYTES_DEFAULT) : DELTA_CACHE_BYTES_DEFAULT;
      this.deltaCache = new DeltaCache(options.vm.pageBytes, cacheBytes, { shared: options.pagesPool !== undefined });
    }
    this.hello = {
      ...primaryHello(options.vm, this.sessionId, offered),
      ...(generation === undefined ? {} : { generation }),
    };
    this.bodyBytesMax = options.bodyBytesMax ?? DEFAULT_BODY_BYTES_MAX;
    this.pagesPerFrameMax = options.pagesPerFrameMax ?? 256;
    this.core = this.newCore();
    this.connector = Primary.connectorOf(options);
    this.connectTimeoutMs = options.connectTimeoutMs ?? 10_000;
    this.reconnectDelayMs = options.reconnectDelayMs ?? 1000;
    this.settleOutputs = options.settleOutputs;
    if (options.onProgress !== undefined) this.on('progress', options.onProgress);
    if (options.onCapture !== undefined) this.on('capture', options.onCapture);
    this.precopyRoundsMax = options.precopyRoundsMax ?? 4;
    this.precopyStopPages = options.precopyStopPages ?? 64;
    this.lossPolicy = options.onSecondaryLoss ?? 'hold';
    this.detector = new FailureDetector({
      intervalMs: options.heartbeat?.intervalMs ?? 100,
      missedMax: options.heartbeat?.missedMax ?? 5,
      secondPath: options.heartbeatPath !== undefined,
      nowMs: this.clock(),
    });
    const path = options.heartbeatPath;
    this.heartbeatConnector =
      path === undefined
        ? undefined
        : 'connector' in path
          ? path.connector
          : (signal) => connect(path, { ...(options.tls === undefined ? {} : { tls: options.tls }), ...(signal === undefined ? {} : { signal }), timeoutMs: this.connectTimeoutMs });
    this.tap.on('output', () => this.pump());
    this.tap.on('release', (output: ReleasedOutput) => this.emit('release', output));
    this.attach(connection);
    this.signal = options.signal;
    if (options.signal !== undefined) {
      this.abortListener = () => this.close(new KemariError('KEMARI_ABORTED', 'the primary was aborted', { cause: options.signal?.reason }));
      options.signal.addEventListener('abort', this.abortListener, { once: true });
    }
  }

  private newCore(): SenderCore {
    return new SenderCore({ hello: this.hello, pipelineDepth: this.pipelineDepth, bodyBytesMax: this.bodyBytesMax, pagesPerFrameMax: this.pagesPerFrameMax });
  }

  /** How this primary opens connections: the caller's connector, or the `secondary` endpoint. */
  private static connectorOf(options: PrimaryOptions): (signal?: AbortSignal) => Promise<Connection> {
    if (options.connector !== undefined) return options.connector;
    const endpoint = options.secondary;
    if (endpoint === undefined) throw new KemariError('KEMARI_INVALID_ARGUMENT', 'a primary needs a secondary endpoint or a connector');
    return (signal) =>
      connect(endpoint, {
        ...(options.tls === undefined ? {} : { tls: options.tls }),
        ...(signal === undefined ? {} : { signal }),
        timeoutMs: options.connectTimeoutMs ?? 10_000,
      });
  }

  /** Makes `connection` the current one, with a fresh session core; events of older connections are ignored. */
  private attach(connection: Connection): void {
    this.connection = connection;
    this.core = this.newCore();
    this.sessionUp = false;
    const core = this.core;
    connection.on('data', (chunk) => {
      if (this.connection !== connection) return;
      this.detector.heardOnLink(this.clock());
      this.onEvents(core.receive(chunk));
    });
    connection.on('drain', () => {
      if (this.connection === connection) this.flush();
    });
    connection.on('close', (error) => {
      if (this.connection === connection) this.onClose(error);
    });
  }

  /**
   * Connects to the secondary, establishes the session, and runs the initial full sync. Resolves once the full
   * sync is acked: from then on the VM is protected. Rejects with the KemariError that prevented it.
   */
  static async start(options: PrimaryOptions): Promise<Primary> {
    if (options.signal?.aborted) throw new KemariError('KEMARI_ABORTED', 'aborted before start', { cause: options.signal.reason });
    Primary.validate(options);
    const base = options.timers ?? realTimers;
    const timers: Timers = options.clock === undefined ? base : { ...base, now: options.clock };
    let keeper: LeaseKeeper | undefined;
    if (options.arbiter !== undefined) {
      const sessionId = options.sessionId;
      if (sessionId === undefined) throw new KemariError('KEMARI_INVALID_ARGUMENT', 'an arbiter needs an explicit sessionId (both sides name the same lease)');
      keeper = new LeaseKeeper(options.arbiter, sessionId, options.holder ?? `primary:${hostname()}:${process.pid}`, options.leaseTtlMs ?? 3000, timers);
      await keeper.acquire(options.lease);
    }
    let connection: Connection;
    try {
      connection = await Primary.connectorOf(options)(options.signal);
    } catch (error) {
      await keeper?.release();
      throw error;
    }
    let primary: Primary;
    try {
      primary = new Primary(options, connection, keeper);
    } catch (error) {
      connection.close();
      await keeper?.release();
      throw error;
    }
    primary.openHeartbeatPath();
    keeper?.start(
      () => primary.releaseDeferred(),
      (error) => void primary.reportFault({ source: 'arbiter', severity: 'fatal', detail: error.message }),
    );
    try {
      await primary.run();
    } catch (error) {
      // Nobody gets this primary to close it: close it here (stops renewals, gives the lease back).
      primary.close(error instanceof KemariError ? error : undefined);
      throw error;
    }
    return primary;
  }

  /** Checks the options that need no connection, so bad ones cost the secondary nothing. */
  private static validate(options: PrimaryOptions): void {
    const depth = options.pipelineDepth ?? 2;
    if (!Number.isInteger(depth) || depth < 1) throw new KemariError('KEMARI_INVALID_ARGUMENT', 'pipelineDepth must be an integer >= 1', { details: { pipelineDepth: depth } });
    new CheckpointController(options.sync ?? { mode: 'event' }, depth, 0);
    for (const name of ['precopyRoundsMax', 'precopyStopPages'] as const) {
      const value = options[name];
      if (value !== undefined && (!Number.isSafeInteger(value) || value < 0)) {
        throw new KemariError('KEMARI_INVALID_ARGUMENT', `${name} must be a non-negative integer`, { details: { [name]: value } });
      }
    }
    if (options.captureInPlace !== undefined && typeof options.captureInPlace !== 'boolean') {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', 'captureInPlace must be a boolean', { details: { field: 'captureInPlace' } });
    }
    const policy = options.onSecondaryLoss ?? 'hold';
    if (!['hold', 'pause', 'continue'].includes(policy)) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', "onSecondaryLoss must be 'hold', 'pause' or 'continue'", { details: { onSecondaryLoss: policy } });
    }
    new FailureDetector({ intervalMs: options.heartbeat?.intervalMs ?? 100, missedMax: options.heartbeat?.missedMax ?? 5, nowMs: 0 });
    const reconnect = options.reconnectDelayMs;
    if (reconnect !== undefined && (!Number.isFinite(reconnect) || reconnect < 0)) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', 'reconnectDelayMs must be a non-negative number', { details: { reconnectDelayMs: reconnect } });
    }
    Primary.connectorOf(options);
  }

  /** Where the primary stands. */
  get state(): PrimaryState {
    return this.stateNow;
  }

  /** May outputs leave now? Always without an arbiter; with one, only while the lease is valid (single writer). */
  private mayRelease(): boolean {
    return this.keeper === undefined || this.keeper.holds(this.clock());
  }

  /** The lease was renewed: outputs acked while it had lapsed may leave now. */
  private releaseDeferred(): void {
    if (this.stateNow === 'unprotected') this.tap.flushPassThrough();
    if (this.deferredReleaseTxn === 0 || !this.mayRelease()) return;
    if (this.stateNow !== 'syncing' && this.stateNow !== 'protected') return;
    this.tap.release(this.deferredReleaseTxn);
    this.deferredReleaseTxn = 0;
  }

  /** What a quiesced primary kept for post-mortem (undefined unless quiesced). */
  get postMortem(): PostMortem | undefined {
    return this.postMortemNow;
  }

  /**
   * Reports a fault learned from outside (seed 000: event-driven notification instead of polling). A `fatal`
   * fault quiesces the primary into a failover-safe state: the VM is paused and kept for post-mortem
   * ({@link postMortem}), the outputs of unacked epochs are discarded with KEMARI_QUIESCED (never released), and
   * FAILOVER is sent behind the transactions already queued, so the secondary takes over at once, without waiting
   * for heartbeats and without fencing: this side is known not to run or release anything any more. Resolves once
   * FAILOVER is queued behind the frames already queued (a `close()` right after still hands it over), or at once
   * when there is no session. A `warning` is only reported ('fault').
   */
  async reportFault(fault: Fault): Promise<void> {
    if (fault === null || typeof fault !== 'object' || typeof fault.source !== 'string' || (fault.severity !== 'fatal' && fault.severity !== 'warning')) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', "a fault needs a source and a severity of 'fatal' or 'warning'", { details: { fault } });
    }
    this.emit('fault', fault);
    if (fault.severity !== 'fatal' || this.stateNow === 'quiesced' || this.stateNow === 'closed') return;
    const previous = this.stateNow;
    this.stateNow = 'quiesced';
    this.stopTimers();
    this.closeHeartbeatPath();
    const error = new KemariError('KEMARI_QUIESCED', `the primary quiesced after a fatal fault from ${fault.source}${fault.detail === undefined ? '' : `: ${fault.detail}`}`, {
      details: { source: fault.source, ackedTxn: this.ackedTxnNow },
    });
    this.tap.discard(error);
    this.standing?.failed(error);
    this.postMortemNow = { fault, ackedTxn: this.ackedTxnNow, inFlight: this.pending.length, vm: this.vm };
    // A VM that died (QEMU killed) cannot be paused, and need not be: the handover goes out regardless.
    await this.onVm(() => this.vm.pause()).catch(() => {});
    // Known not to write any more: the lease goes back at once, so the secondary need not wait for it to expire.
    void this.keeper?.release();
    const connection = this.connection;
    if (connection !== undefined && previous !== 'syncing' && previous !== 'protected') {
      // A reconnection attempt without a session yet: nothing to hand over on it, and it must not become one.
      this.connection = undefined;
      this.core.connectionLost();
      this.sendQueue.length = 0;
      this.chunksWriting.length = 0;
      connection.close(error);
    }
    if (connection !== undefined && (previous === 'syncing' || previous === 'protected')) {
      this.write([
        encodeFrame({
          type: FrameType.FAILOVER,
          txn: 0,
          seq: 0,
          body: { committedTxn: this.ackedTxnNow, generation: 0, reason: `${fault.source}${fault.detail === undefined ? '' : `: ${fault.detail}`}` },
        }),
      ]);
      this.closeAfterFlush = true;
      this.flush();
    }
    this.emit('quiesced', this.postMortemNow);
    this.settleStart?.(error);
  }

  /**
   * Ends protection because the guest stopped on its own (it powered itself off), so that the standby does not
   * resume it: without this, a guest shut down on purpose looks like a dead primary (its QEMU exits), and the
   * standby brings it back to life from its last epoch.
   *
   * From the call on, the VM is never resumed again and no checkpoint starts by itself. Then: a last checkpoint of
   * the paused VM (unless `finalEpoch: false`), every epoch acked (their outputs released: the guest's last words
   * leave), STAND_DOWN to the secondary, and its confirmation, after which it never promotes by itself. Resolves
   * with the final epoch once confirmed; the primary is then closed ('stood-down' is emitted first). A capture that
   * finds the VM gone meanwhile (KEMARI_QEMU_EXITED: a QEMU that exits with its guest) is no failover: the stand-down
   * goes on without that epoch.
   *
   * Called while the session is down (syncing, unprotected, paused: a loss just before the guest stopped), or losing
   * it meanwhile, it waits for protection to come back (the resync runs, of the held VM) and goes on; STAND_DOWN is
   * sent again after a loss. `timeoutMs` bounds the whole of it: the waits, the last capture and its transfer, the
   * confirmation (for a large guest over a slow link, give more than the default).
   *
   * Rejects, leaving the primary protecting (or reconnecting) with its VM held paused, when it was never protected
   * or is quiesced or closed (KEMARI_NOT_PROTECTED: the VM is held all the same), when it is not confirmed within
   * `timeoutMs` (KEMARI_TIMEOUT; a secondary that does not know STAND_DOWN ends the session instead), when a fatal
   * fault quiesces it meanwhile (KEMARI_QUIESCED), or when closed (KEMARI_CLOSED). Until a stand-down is confirmed, the
   * standby may still take over (a FAILOVER, or the lease). A confirmation arriving after the timeout still closes
   * the primary and emits 'stood-down'.
   */
  async standDown(reason: string, options: StandDownOptions = {}): Promise<StoodDownPrimary> {
    if (typeof reason !== 'string') throw new KemariError('KEMARI_INVALID_ARGUMENT', 'standDown needs a reason string', { details: { reason } });
    const reasonBytes = Buffer.byteLength(reason, 'utf8');
    if (reasonBytes > REASON_MESSAGE_BYTES_MAX) throw new KemariError('KEMARI_INVALID_ARGUMENT', `the stand-down reason is at most ${REASON_MESSAGE_BYTES_MAX} bytes`, { details: { reasonBytes } });
    const timeoutMs = options.timeoutMs ?? 10_000;
    if (!Number.isSafeInteger(timeoutMs) || timeoutMs <= 0) throw new KemariError('KEMARI_INVALID_ARGUMENT', 'standDown timeoutMs must be a positive integer', { details: { timeoutMs } });
    if (this.standing !== undefined) throw new KemariError('KEMARI_BUSY', 'a stand-down is already in progress');
    if (this.stateNow === 'closed' || this.stateNow === 'quiesced') {
      throw new KemariError('KEMARI_NOT_PROTECTED', `cannot stand down a primary that is ${this.stateNow}`, { details: { state: this.stateNow } });
    }
    // Held whatever comes next: the guest stopped on its own, and nothing here runs it again.
    this.vmHeld = true;
    if (this.stateNow !== 'protected') void this.onVm(() => this.vm.pause()).catch(() => {});
    if (!this.everProtected) {
      throw new KemariError('KEMARI_NOT_PROTECTED', `cannot stand down a primary that is ${this.stateNow} and was never protected`, { details: { state: this.stateNow } });
    }
    let timer: TimerHandle | undefined;
    const settled = new Promise<number>((resolve, reject) => {
      const end = (): void => {
        this.timers.clear(timer);
        const wake = this.standing?.wake;
        this.standing = undefined;
        wake?.();
      };
      this.standing = {
        reason,
        wake: undefined,
        confirmed: (txn) => {
          end();
          resolve(txn);
          // Closed at once, before the secondary's end of the connection can look like a loss.
          this.close();
          this.emit('stood-down', { txn, reason } satisfies StoodDownPrimary);
        },
        failed: (error) => {
          end();
          reject(error);
          this.pump();
        },
      };
      timer = this.timers.setTimeout(
        () => this.standing?.failed(new KemariError('KEMARI_TIMEOUT', `the stand-down was not confirmed within ${timeoutMs} ms`, { details: { timeoutMs } })),
        timeoutMs,
      );
    });
    settled.catch(() => {}); // observed below; a failure before that point must not go unhandled
    const standing = this.standing!;
    // Still this stand-down (not settled meanwhile): read through a function, as the callbacks change it.
    const current = (): boolean => this.standing === standing;
    const over = settled.then(
      () => {},
      () => {},
    );
    // Sleeps until an ack, a change of state or the end of the stand-down, while `cond` does not hold.
    const until = async (cond: () => boolean): Promise<void> => {
      while (current() && !cond()) await new Promise<void>((resolve) => (standing.wake = resolve));
    };
    this.timers.clear(this.timer);
    this.timer = undefined;
    let lastTaken = options.finalEpoch === false;
    while (current()) {
      // Protected (after a loss, the session's resync runs: checkpoints of the held VM), nothing in flight.
      await until(() => this.stateNow === 'protected');
      await Promise.race([this.checkpointRun, over]);
      await until(() => this.stateNow !== 'protected' || this.pending.length === 0);
      if (!current() || this.stateNow !== 'protected') continue;
      if (!lastTaken) {
        lastTaken = true;
        this.checkpointRun = this.checkpoint();
        await Promise.race([this.checkpointRun, over]);
        await until(() => this.stateNow !== 'protected' || this.pending.length === 0);
        if (!current() || this.stateNow !== 'protected') continue;
      }
      this.standDownSentTxn = this.ackedTxnNow;
      this.write([encodeFrame({ type: FrameType.STAND_DOWN, txn: 0, seq: 0, body: { committedTxn: this.ackedTxnNow, reason } })]);
      // The confirmation settles it; a loss first sends it again once protected again.
      await until(() => this.stateNow !== 'protected');
    }
    return { txn: await settled, reason };
  }

  /** Counters and latency summaries. */
  stats(): PrimaryStats {
    return {
      state: this.stateNow,
      epochs: this.epochs,
      ackedTxn: this.ackedTxnNow,
      inFlight: this.pending.length,
      pagesSent: this.pagesSent,
      bytesSent: this.bytesSent,
      outputsHeld: this.tap.heldCount,
      outputsReleased: this.tap.released,
      deltaPages: this.deltaPages,
      deltaSavedBytes: this.deltaSavedBytes,
      parallelDeltaEpochs: this.parallelDeltaEpochs,
      pagesImplementation: pagesImplementation(),
      pauseMs: this.pauses.summary(),
      latencyMs: this.latencies.summary(),
      lastError: this.lastError,
    };
  }

  /**
   * Stops protecting: closes the connection and discards every held output with KEMARI_CLOSED (an output of an
   * unacked epoch is never released). The VM is left as it is (running or paused). Idempotent.
   */
  close(error?: KemariError): void {
    if (this.stateNow === 'closed') return;
    this.stateNow = 'closed';
    this.standing?.failed(error ?? new KemariError('KEMARI_CLOSED', 'the primary was closed'));
    this.stopTimers();
    this.closeHeartbeatPath();
    void this.keeper?.release();
    if (this.abortListener !== undefined) this.signal?.removeEventListener('abort', this.abortListener);
    this.tap.discard(error ?? new KemariError('KEMARI_CLOSED', 'the primary was closed'));
    this.core.connectionLost();
    for (const resolve of this.drainWaiters.splice(0)) resolve();
    this.chunksWriting.length = 0;
    const connection = this.connection;
    this.connection = undefined;
    if (connection !== undefined && this.closeAfterFlush) {
      // A quiesced primary's FAILOVER may still wait behind queued frames: hand them all over and close gracefully
      // (after the writes), so the secondary hears it.
      for (const frame of this.sendQueue.splice(0)) connection.write([frame.header, ...frame.body]);
      connection.close();
    } else {
      connection?.close(error);
    }
    this.settleStart?.(error ?? new KemariError('KEMARI_CLOSED', 'the primary was closed before protection began'));
  }

  private settleStart: ((error?: KemariError) => void) | undefined;

  private run(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.settleStart = (error) => {
        this.settleStart = undefined;
        if (error === undefined) resolve();
        else reject(error);
      };
      this.write(this.core.start());
      this.startHeartbeats();
      this.armHelloTimer(this.connection!);
    });
  }

  /** Opens the second heartbeat path, and opens it again whenever it breaks, until closed or quiesced. */
  private openHeartbeatPath(): void {
    const connector = this.heartbeatConnector;
    if (connector === undefined || this.stateNow === 'closed' || this.stateNow === 'quiesced') return;
    const retry = (): void => {
      this.heartbeatLink = undefined;
      if (this.stateNow === 'closed' || this.stateNow === 'quiesced' || this.heartbeatPathTimer !== undefined) return;
      this.heartbeatPathTimer = this.timers.setTimeout(() => {
        this.heartbeatPathTimer = undefined;
        this.openHeartbeatPath();
      }, this.detector.intervalMs);
    };
    connector(this.signal).then(
      (connection) => {
        if (this.stateNow === 'closed' || this.stateNow === 'quiesced') return void connection.close();
        connection.on('close', retry);
        this.heartbeatLink = new HeartbeatLink(connection, {
          hello: this.hello,
          intervalMs: this.detector.intervalMs,
          timers: this.timers,
          onHeard: () => this.detector.heardOnSecondPath(this.clock()),
          state: () => ({ committedTxn: this.ackedTxnNow, state: this.stateNow === 'protected' ? PeerState.PROTECTED : PeerState.UNPROTECTED }),
        });
      },
      retry,
    );
  }

  private startHeartbeats(): void {
    this.timers.clear(this.heartbeatTimer);
    this.heartbeatTimer = this.timers.setInterval(() => this.onHeartbeatTick(), this.detector.intervalMs);
  }

  /** Sends a heartbeat when due; declares the secondary lost when it stayed silent too long. */
  private onHeartbeatTick(): void {
    if (this.connection === undefined) return;
    const nowMs = this.clock();
    this.detector.ticked(nowMs);
    // Until the session is established the connect and HELLO path governs (a large standby allocates its replica
    // before it answers); liveness is judged from then on.
    if (!this.sessionUp) return;
    const verdict = this.detector.verdict(nowMs);
    if (verdict !== 'alive') {
      const message =
        verdict === 'dead'
          ? `the secondary was silent for ${this.detector.timeoutMs} ms`
          : `the replication link was silent for ${this.detector.timeoutMs} ms while the secondary is heard on the heartbeat path`;
      this.fail(new KemariError('KEMARI_PEER_LOST', message, { details: { timeoutMs: this.detector.timeoutMs, verdict } }));
      return;
    }
    if (this.detector.heartbeatDue(nowMs) && this.sendQueue.length === 0) {
      this.detector.sent(nowMs);
      this.write([
        encodeFrame({
          type: FrameType.HEARTBEAT,
          txn: 0,
          seq: 0,
          body: { timeMs: Date.now(), committedTxn: this.ackedTxnNow, generation: 0, state: this.stateNow === 'protected' ? PeerState.PROTECTED : PeerState.SYNCING },
        }),
      ]);
    }
  }

  private closeHeartbeatPath(): void {
    this.timers.clear(this.heartbeatPathTimer);
    this.heartbeatPathTimer = undefined;
    this.heartbeatLink?.close();
    this.heartbeatLink = undefined;
  }

  private stopTimers(): void {
    for (const timer of [this.timer, this.heartbeatTimer, this.helloTimer, this.reconnectTimer]) this.timers.clear(timer);
    this.timer = undefined;
    this.heartbeatTimer = undefined;
    this.helloTimer = undefined;
    this.reconnectTimer = undefined;
  }

  private closeAfterFlush = false;
  private vmControl: Promise<unknown> = Promise.resolve();

  /**
   * Runs a VM operation after every earlier one, so a pause ordered by a loss or a fault can never be overtaken by
   * the resume of a capture that was still in progress.
   */
  private onVm<T>(op: () => T | Promise<T>): Promise<T> {
    const run = this.vmControl.then(op, op);
    this.vmControl = run.catch(() => {});
    return run;
  }

  private onEvents(events: SenderEvent[]): void {
    for (const event of events) {
      // Quiesced (a fatal fault) or closed: a session or an ack arriving now changes nothing.
      if (this.stateNow === 'quiesced' || this.stateNow === 'closed') return;
      switch (event.type) {
        case 'session':
          this.onSession(event.peer.committedTxn, event.features);
          break;
        case 'ack':
          this.onAck(event.txn);
          break;
        case 'heartbeat':
          break;
        case 'stood-down':
          if (this.standing !== undefined) this.standing.confirmed(event.standDown.committedTxn);
          else if (this.standDownSentTxn === event.standDown.committedTxn) {
            // Its stand-down timed out here, but the standby did stand down: it will not take over, and refuses us.
            this.close();
            this.emit('stood-down', { txn: event.standDown.committedTxn, reason: event.standDown.reason } satisfies StoodDownPrimary);
          } else this.fail(new KemariError('KEMARI_PROTOCOL', 'STAND_DOWN confirmed, but none was asked for'));
          return;
        case 'refused':
          this.fail(event.error);
          break;
      }
    }
  }

  /**
   * The secondary's HELLO arrived, naming its committed epoch X. Epochs up to X that were never acked are committed
   * there (their acks were lost with the connection): they count as acked. When this primary still holds every
   * epoch after X (their captures; of an in-place epoch, its devices and disk writes, its pages marked dirty again
   * so the next capture takes them from the guest), the secondary resumes from X with one incremental transaction
   * that merges them with the next capture; otherwise (a new secondary, or one that lost epochs) a full sync runs.
   */
  private onSession(committedTxn: number, features: string[]): void {
    this.detector.heardOnLink(this.clock());
    this.timers.clear(this.helloTimer);
    this.helloTimer = undefined;
    this.sessionUp = true;
    this.verifyActive = features.includes('verify');
    this.deltaActive = features.includes('delta') && this.deltaCache !== undefined;
    // Whatever the secondary holds now, this side cannot vouch for its copies of pages.
    this.deltaCache?.clear();
    const x = committedTxn;
    const known = this.everProtected && x >= this.ackedTxnNow && x <= this.lastTxnNow;
    if (known) while (this.pending.length > 0 && this.pending[0]!.txn <= x) this.completed(this.pending.shift()!);
    const resumable = known && !this.needFull && this.pending.every((p) => p.capture !== undefined);
    if (resumable) {
      this.carry = [...this.pending.map((p) => p.capture!), ...this.carry];
      for (const p of this.pending) if (p.inPlace !== undefined) this.redirty.push(p.inPlace.dirtyPages);
      this.core.resumeIncremental();
    } else {
      this.carry = [];
      this.redirty = [];
      this.needFull = true;
    }
    this.pending.length = 0;
    if (known) {
      // Epochs up to X stay sealed until released (the lease may defer it); the rest go out again.
      this.tap.unseal(x + 1);
    } else {
      // Another history: every output goes out again with the full sync, numbered from X on.
      this.tap.unseal();
      this.deferredReleaseTxn = 0;
      if (x < this.tap.releasedTxn) this.tap.rebase(x);
    }
    this.tap.endPassThrough();
    this.ackedTxnNow = x;
    this.lastTxnNow = x;
    this.sessionFrom = { txn: x, resumed: resumable };
    this.stateNow = 'syncing';
    this.pump();
  }

  private onAck(txn: number): void {
    const pending = this.pending.shift();
    if (pending === undefined || pending.txn !== txn) {
      this.fail(new KemariError('KEMARI_PROTOCOL', `ack for txn ${txn} does not match the oldest pending transaction`));
      return;
    }
    this.completed(pending);
    // Committed, and its frames were all received: no one reads the capture's pages any more.
    if (pending.release !== undefined) this.vm.releaseCapture?.(pending.release);
    if (pending.inPlace !== undefined) this.sendBuffers.give(pending.inPlace.send);
    this.standing?.wake?.();
    this.pump();
  }

  /**
   * An epoch captured but not sent on this session: its outputs are unsealed, its pages carried to the next (an
   * in-place capture's by number, `dirtyPages`: they are marked dirty again, and its `capture` holds no pages).
   */
  private keepUnsent(capture: EpochCapture, full: boolean, sealedTxn: number, dirtyPages?: Uint32Array): void {
    this.tap.unseal(sealedTxn);
    if (full) {
      this.needFull = true;
      return;
    }
    // Merged at once: however often the link flaps, one carried capture at most.
    this.carry = [mergeCaptures([...this.carry, capture])];
    if (dirtyPages !== undefined) this.redirty.push(dirtyPages);
  }

  /**
   * Makes an in-place capture ready to send before the VM resumes: deltas encoded from guest memory (the cache
   * updated), the pages that go out whole copied. A capture this session will not send keeps only its page numbers.
   */
  private detach(capture: EpochCapture, core: SenderCore): Detached {
    const dirtyPages = new Uint32Array(capture.pages.length);
    for (let i = 0; i < dirtyPages.length; i++) dirtyPages[i] = capture.pages[i]!.index;
    if (!this.live(core)) return { pages: [], send: NO_PAGES, dirtyPages, encoded: undefined };
    // The pages new to the cache are copied into it after the resume, from their send-buffer copies (same bytes).
    const encoded = this.deltaActive && this.deltaCache !== undefined ? this.deltaCache.encode(capture.pages, { deferRemember: true }) : undefined;
    const { pages, send } = detachPages(encoded?.pages ?? capture.pages, this.vm.pageBytes, (bytes) => this.sendBuffers.take(bytes, false));
    return { pages, send, dirtyPages, encoded };
  }

  /** Marks the pages of unsent or uncommitted in-place epochs dirty again (the VM is paused). */
  private async markRedirty(): Promise<void> {
    if (this.redirty.length === 0) return;
    const lists = this.redirty;
    this.redirty = [];
    try {
      await this.onVm(() => this.vm.markDirty!(concatPages(lists)));
    } catch (error) {
      this.redirty = [...lists, ...this.redirty];
      throw error;
    }
  }

  /** An epoch is committed on the secondary: its outputs may leave, and the first one of a session protects. */
  private completed(pending: Pending): void {
    const txn = pending.txn;
    this.ackedTxnNow = txn;
    const latencyMs = this.clock() - pending.startMs;
    this.latencies.add(latencyMs);
    let released: unknown[] = [];
    if (this.mayRelease()) released = this.tap.release(txn);
    else this.deferredReleaseTxn = txn;
    const commit: PrimaryCommit = {
      txn,
      full: pending.full,
      pages: pending.pages,
      bytes: pending.bytes,
      pauseMs: pending.pauseMs,
      latencyMs,
      released: released.length,
      ...(this.verifyActive ? { digest: pending.digest } : {}),
    };
    const first = this.stateNow === 'syncing';
    if (first) this.stateNow = 'protected';
    this.emit('commit', commit);
    if (!first) return;
    if (!this.everProtected) {
      this.everProtected = true;
      this.settleStart?.();
      return;
    }
    // Protected again after a loss: a VM paused by the 'pause' policy runs again, unless a checkpoint holds it paused
    // now (its capture is yet to come; it resumes the VM itself when done).
    if (this.lossPolicy === 'pause') {
      void this.onVm(() => (this.stateNow === 'protected' && !this.vmHeld && !this.captureHoldsVm ? this.vm.resume() : undefined)).catch(() => {});
    }
    const reprotection: Reprotection = { txn, full: pending.full, fromTxn: this.sessionFrom.txn };
    this.emit('reprotected', reprotection);
  }

  /** Starts a checkpoint if the controller says so; (re)arms the timer otherwise. */
  private pump(): void {
    if (this.stateNow !== 'syncing' && this.stateNow !== 'protected') return;
    // A stand-down takes its own last epoch; a resync after a loss during it still runs (of the held VM).
    if (this.capturing || !this.core.canBegin || (this.standing !== undefined && this.stateNow === 'protected')) return;
    const input = { nowMs: this.clock(), inFlight: this.core.inFlightCount, openOutputs: this.tap.openCount };
    if (this.needFull || this.controller.shouldCapture(input)) {
      this.checkpointRun = this.checkpoint();
      return;
    }
    const next = this.controller.nextCheckMs(input);
    this.timers.clear(this.timer);
    this.timer = next === undefined ? undefined : this.timers.setTimeout(() => this.pump(), Math.max(0, next - input.nowMs));
  }

  /** True while `core`'s session may send: it is the current one and it is syncing or protected. */
  private live(core: SenderCore): boolean {
    return this.core === core && (this.stateNow === 'syncing' || this.stateNow === 'protected');
  }

  /** The VM stays paused while a 'pause' policy waits for protection to come back. */
  private holdsVmPaused(): boolean {
    return this.vmHeld || this.stateNow === 'quiesced' || this.stateNow === 'paused' || (this.lossPolicy === 'pause' && this.everProtected && this.stateNow === 'syncing');
  }

  private async checkpoint(): Promise<void> {
    this.capturing = true;
    const core = this.core;
    const full = this.needFull;
    this.needFull = false;
    const startMs = this.clock();
    this.controller.captureStarted(startMs);
    try {
      const precopied = full && (await this.precopy(core));
      if (precopied === undefined) {
        this.needFull = true;
        return;
      }
      const pauseStartMs = this.clock();
      await this.onVm(async () => {
        await this.vm.pause();
        this.captureHoldsVm = true;
      });
      let capture: EpochCapture;
      let events;
      let detached: Detached | undefined;
      const sealedTxn = core.captureTxn;
      try {
        if (this.settleOutputs !== undefined) await this.settleOutputs();
        // Pages of epochs that must go out again are taken from the guest once more (a full sync takes all anyway).
        if (full) this.redirty = [];
        else await this.markRedirty();
        capture = await this.onVm(() =>
          this.vm.capture(
            precopied
              ? { full: false, wholeDisks: true, digest: this.verifyActive, sharedBuffers: this.sharedBuffers }
              : { full, digest: this.verifyActive, sharedBuffers: this.sharedBuffers, ...(this.inPlace && !full ? { inPlace: true } : {}) },
          ),
        );
        events = this.tap.seal(sealedTxn);
        // Its pages are guest memory: encoded and copied now, before the guest runs again.
        if (capture.inPlace === true) {
          if (!this.inPlace) throw new KemariError('KEMARI_INVALID_ARGUMENT', 'the VM returned an in-place capture it was not asked for');
          detached = this.detach(capture, core);
        }
      } finally {
        // The VM runs on unless a fault (quiesced) or a loss under 'pause' stopped it during the capture; closing
        // stops protection, not the guest.
        await this.onVm(() => {
          this.captureHoldsVm = false;
          return this.holdsVmPaused() ? undefined : this.vm.resume();
        });
      }
      const pauseMs = this.clock() - pauseStartMs;
      this.pauses.add(pauseMs);
      // Lost, quiesced or closed during the capture: this epoch is not sent on this session. Its outputs go back to
      // the running epoch (or were already discarded); its changes are kept for the next session, since the VM's
      // dirty tracking was reset by the capture.
      if (!this.live(core)) {
        // An in-place epoch encoded before the loss: the cache holds its unsent pages, so it starts over (a safeguard:
        // whatever ended the session cleared it already, or ended this primary).
        if (detached?.encoded !== undefined) this.deltaCache?.clear();
        this.keepUnsent(detached === undefined ? capture : withPages(capture, []), full, sealedTxn, detached?.dirtyPages);
        return;
      }
      if (full) this.carry = [];
      const carried = !full && this.carry.length > 0;
      const taken = detached === undefined ? capture : withPages(capture, detached.pages);
      // A carried copy of a page this in-place capture took must not win the merge (the page may have been dropped
      // here as unchanged against the cache). Cannot happen today (a session starts with an empty cache and
      // consumes its carry at once), but the merge must not depend on that.
      const carry = detached === undefined ? this.carry : withoutPages(this.carry, detached.dirtyPages);
      const send = carried ? mergeCaptures([...carry, taken]) : taken;
      this.carry = [];
      // Deltas only go out against copies the secondary holds for sure: never in a full sync (the cache starts over).
      let wire = send;
      if (full) this.deltaCache?.clear();
      else if (detached !== undefined) {
        if (detached.encoded !== undefined) {
          this.deltaCache?.rememberSent(detached.pages, detached.encoded.unremembered ?? []);
          this.deltaPages += detached.encoded.deltaPages;
          this.deltaSavedBytes += detached.encoded.savedBytes;
        }
      } else if (this.deltaActive && this.deltaCache !== undefined) {
        const encoded = await this.deltaCache.encodeAsync(send.pages, this.pagesPool);
        if (!this.live(core)) {
          // Lost while threads encoded: the cache holds this unsent epoch's pages now (and a new session may
          // already have cleared it), so it starts over here too; the pages go as carry.
          this.deltaCache.clear();
          this.keepUnsent(send, full, sealedTxn);
          return;
        }
        wire = { ...send, pages: encoded.pages };
        this.deltaPages += encoded.deltaPages;
        this.deltaSavedBytes += encoded.savedBytes;
        if (encoded.parallel) this.parallelDeltaEpochs += 1;
      }
      const out = precopied ? core.closeTransaction(wire, events) : core.encodeTransaction(wire, events, this.tap.releasedTxn);
      this.lastTxnNow = out.txn;
      this.epochs += 1;
      this.pagesSent += out.pageCount;
      this.pending.push({
        txn: out.txn,
        full: out.full,
        startMs,
        pauseMs,
        pages: out.pageCount,
        bytes: out.wireBytes,
        digest: out.stateDigest,
        // An in-place epoch keeps no pages (its deltas are against a cache a new session clears): they are taken
        // from the guest again should it go out again, every page it sends (carried ones too) marked dirty.
        capture: out.full ? undefined : detached === undefined ? send : withPages(send, []),
        release: out.full || detached !== undefined ? undefined : capture,
        inPlace: detached === undefined ? undefined : { dirtyPages: send === taken ? detached.dirtyPages : concatPages([pageNumbers(send.pages), detached.dirtyPages]), send: detached.send },
      });
      if (full && !precopied) this.fullSync = { txn: out.txn, sent: 0, total: out.wireBytes, closed: true };
      if (full && precopied && this.fullSync !== undefined) {
        this.fullSync.total = out.wireBytes;
        this.fullSync.closed = true;
      }
      const captured: PrimaryCapture = {
        txn: out.txn,
        full,
        pages: out.pageCount,
        outputs: events.length,
        pauseMs,
        ...(this.verifyActive ? { digest: out.stateDigest } : {}),
      };
      this.emit('capture', captured);
      this.write(out.frames);
    } catch (error) {
      // Whatever the capture took is gone: only a full sync is sure to bring the secondary back in step.
      this.needFull = true;
      this.carry = [];
      if (error instanceof KemariError && error.code === 'KEMARI_QEMU_EXITED' && this.standing !== undefined) {
        // A guest that stopped on its own, whose QEMU ended during the last capture: the stand-down goes on without
        // that epoch (as with finalEpoch: false), not a failover.
        return;
      }
      if (error instanceof KemariError && error.code === 'KEMARI_QEMU_EXITED') {
        // The VM itself is gone: a fatal fault, handed over at once, not a lost secondary (unless a guard that saw the
        // death first quiesced this primary already).
        if (this.stateNow === 'quiesced') return;
        void this.reportFault({ source: 'vm', severity: 'fatal', detail: error.message });
        return;
      }
      this.fail(error instanceof KemariError ? error : new KemariError('KEMARI_INVALID_ARGUMENT', 'the VM failed to capture an epoch', { cause: error }));
    } finally {
      this.capturing = false;
      this.controller.captureFinished();
      // On every way out: a new session may have begun while this capture ran (its own pump found one running).
      this.pump();
    }
  }

  /**
   * The pre-copy part of a full sync, while the guest runs: opens the transaction and sends every page, then the
   * pages dirtied meanwhile, round after round, each written out before the next is copied. Resolves true when it
   * pre-copied (the final capture then takes only dirty pages), false when the adapter cannot pre-copy or it is
   * turned off, undefined when the session ended meanwhile.
   */
  private async precopy(core: SenderCore): Promise<boolean | undefined> {
    const precopy = this.vm.precopy?.bind(this.vm);
    if (precopy === undefined || this.precopyRoundsMax === 0) return false;
    const pageCount = this.vm.memoryBytes / this.vm.pageBytes;
    const begin = core.openTransaction(true, this.tap.releasedTxn);
    // Progress counts from the BEGIN frame on, so the last event says bytesSent === bytesTotal.
    this.fullSync = { txn: core.captureTxn, sent: 0, total: this.vm.memoryBytes, closed: false };
    this.write(begin);
    let staged = 0;
    for (let round = 0; round < this.precopyRoundsMax; round++) {
      let roundPages = 0;
      // One bounded chunk at a time, each written out before the next is copied: memory stays at one chunk, and
      // bytes keep flowing, so the secondary never hears a long silence while a big guest is copied.
      for (let fromIndex: number | undefined = 0; fromIndex !== undefined; ) {
        const from: number = fromIndex;
        const chunk = await this.onVm(() => precopy({ all: round === 0, fromIndex: from, pagesMax: PRECOPY_CHUNK_PAGES }));
        if (!this.live(core)) return undefined;
        this.write(core.addPages(chunk.pages));
        this.chunksWriting.push({ chunk, endBytes: this.bytesSent + this.queuedBytes() });
        roundPages += chunk.pages.length;
        fromIndex = chunk.nextIndex;
        await this.drained();
        if (!this.live(core)) return undefined;
        this.releaseWrittenChunks();
      }
      staged += roundPages;
      // Stop when little is left, or before the receiver's page budget (the final capture may add a full guest).
      if (roundPages <= this.precopyStopPages || staged + 2 * pageCount > STAGED_PAGES_PER_GUEST_PAGE * pageCount) break;
    }
    return true;
  }

  private drainWaiters: Array<() => void> = [];

  /**
   * Pre-copied chunks whose frames are queued or being written, oldest first, each with the count of bytes sent
   * (this.bytesSent) by which its last frame is handed over.
   */
  private readonly chunksWriting: Array<{ chunk: PrecopyChunk; endBytes: number }> = [];

  /** Bytes of the frames queued and not yet handed to the connection. */
  private queuedBytes(): number {
    let bytes = 0;
    for (const frame of this.sendQueue) bytes += frame.header.byteLength + frame.bodyBytes;
    return bytes;
  }

  /**
   * Hands back to the VM the pre-copied chunks whose frames the connection has handed to the operating system (a
   * Connection does not copy what it is given, and its `bufferedBytes` are what it has not handed over yet), so
   * the next chunk reuses their buffers. Only on a live connection: a chunk of a lost session is left to the
   * garbage collector.
   */
  private releaseWrittenChunks(): void {
    const connection = this.connection;
    if (this.chunksWriting.length === 0 || connection === undefined || connection.closed) return;
    const handedBytes = this.bytesSent - connection.bufferedBytes;
    while (this.chunksWriting.length > 0 && this.chunksWriting[0]!.endBytes <= handedBytes) {
      this.vm.releasePrecopy?.(this.chunksWriting.shift()!.chunk);
    }
  }

  /** Resolves once queued frames are handed to the connection and its buffer is below 1 MiB (or it is gone). */
  private drained(): Promise<void> {
    const connection = this.connection;
    if (connection === undefined || (this.sendQueue.length === 0 && connection.bufferedBytes < 1 << 20)) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push(resolve));
  }

  private write(frames: EncodedFrame[]): void {
    for (const frame of frames) this.sendQueue.push(frame);
    this.flush();
  }

  /** Writes queued frames until the connection pushes back; resumes on 'drain'. */
  private flush(): void {
    const connection = this.connection;
    if (connection === undefined) return;
    while (this.sendQueue.length > 0) {
      // Queued frames leave in batches of up to FLUSH_BATCH_BYTES under one cork, so an epoch's frames (BEGIN,
      // PAGES, ..., COMMIT) cost one system call, not one each: the socket's 16 KiB high-water mark would otherwise
      // end the batch after any frame larger than that. Still one write per frame, so a connection without cork (the
      // in-memory pair) sees frames as before, and stops at the first push-back.
      const corks = connection.cork !== undefined && connection.uncork !== undefined;
      const progress: SyncProgress[] = [];
      let batchBytes = 0;
      let ok = true;
      if (corks) connection.cork!();
      try {
        while (this.sendQueue.length > 0 && (batchBytes === 0 || (corks ? batchBytes < FLUSH_BATCH_BYTES : ok))) {
          const frame = this.sendQueue.shift()!;
          ok = connection.write([frame.header, ...frame.body]);
          const bytes = frame.header.byteLength + frame.bodyBytes;
          batchBytes += bytes;
          this.bytesSent += bytes;
          const sync = this.fullSync;
          if (sync !== undefined) {
            sync.sent += bytes;
            // While pre-copying, the total is an estimate (the guest's size) that grows with what was sent.
            progress.push({ txn: sync.txn, bytesSent: sync.sent, bytesTotal: sync.closed ? sync.total : Math.max(sync.total, sync.sent) });
            if (sync.closed && sync.sent >= sync.total) this.fullSync = undefined;
          }
        }
      } finally {
        if (corks) connection.uncork!();
      }
      // After the writes: a listener that writes (and so flushes) again must find this batch already handed over.
      for (const p of progress) this.emit('progress', p);
      if (!ok || this.connection !== connection) return;
    }
    this.releaseWrittenChunks();
    if (connection.bufferedBytes < 1 << 20) for (const resolve of this.drainWaiters.splice(0)) resolve();
    if (this.closeAfterFlush) {
      this.closeAfterFlush = false;
      this.connection = undefined;
      connection.close();
    }
  }

  private onClose(error: KemariError | undefined): void {
    if (this.stateNow === 'closed' || this.stateNow === 'quiesced') return;
    const reason = error ?? new KemariError('KEMARI_CONNECTION_CLOSED', 'the secondary closed the connection');
    this.fail(reason);
  }

  /**
   * The session is over (refused, lost), or a reconnection attempt failed. Before the first full sync was acked,
   * `start` fails. After it, the VM is unprotected: what happens to outputs and the VM is the `onSecondaryLoss`
   * policy's (held, the VM paused, or everything released and passed through), and the primary reconnects.
   */
  private fail(error: KemariError): void {
    if (this.stateNow === 'closed' || this.stateNow === 'quiesced') return;
    const hadSession = this.sessionUp;
    const wasProtected = this.stateNow === 'protected';
    // A resumed session the secondary refused (its merged transaction too large, say) must not be tried the same way
    // again: the next session brings the secondary back with a full sync.
    if (this.stateNow === 'syncing' && this.sessionFrom.resumed && error.code === 'KEMARI_NACKED') {
      this.needFull = true;
      this.carry = [];
    }
    this.lastError = error;
    this.sessionUp = false;
    this.stopTimers();
    this.core.connectionLost();
    this.sendQueue.length = 0;
    this.chunksWriting.length = 0;
    this.fullSync = undefined;
    // Epochs sent on this session may never be applied: the secondary's copies are unknown from here on.
    this.deltaCache?.clear();
    // Forgotten before it is closed: its own 'close' event is then ignored.
    const connection = this.connection;
    this.connection = undefined;
    connection?.close(error);
    for (const resolve of this.drainWaiters.splice(0)) resolve();
    if (!this.everProtected) {
      this.stateNow = this.lossPolicy === 'pause' ? 'paused' : 'unprotected';
      this.emit('disconnect', error);
      if (this.listenerCount('error') > 0) this.emit('error', error);
      this.settleStart?.(error);
      return;
    }
    if (hadSession) {
      this.emit('disconnect', error);
      if (this.listenerCount('error') > 0) this.emit('error', error);
    }
    if (this.stateNow === 'syncing' || this.stateNow === 'protected') {
      this.stateNow = this.lossPolicy === 'pause' ? 'paused' : 'unprotected';
      if (this.lossPolicy === 'pause') void this.onVm(() => this.vm.pause()).catch(() => {});
      // Running unprotected releases output: only while this side may write, checked at every output (with an
      // arbiter, while the lease is valid; without one, the policy is the caller's word that nobody else promotes).
      if (this.lossPolicy === 'continue') this.tap.passThrough(() => this.mayRelease());
      if (wasProtected) this.emit('unprotected', { error, policy: this.lossPolicy });
    }
    // A stand-down waits for protection to come back (within its timeout), and then goes on.
    this.standing?.wake?.();
    this.scheduleReconnect();
  }

  /** After a loss: tries to reach the secondary again in `reconnectDelayMs`, until closed or quiesced. */
  private scheduleReconnect(): void {
    if (this.reconnectDelayMs === 0 || this.reconnectTimer !== undefined) return;
    if (this.stateNow !== 'unprotected' && this.stateNow !== 'paused') return;
    this.reconnectTimer = this.timers.setTimeout(() => {
      this.reconnectTimer = undefined;
      void this.reconnect();
    }, this.reconnectDelayMs);
  }

  private async reconnect(): Promise<void> {
    let connection: Connection;
    try {
      connection = await this.connector(this.signal);
    } catch (error) {
      this.lastError = error instanceof KemariError ? error : new KemariError('KEMARI_CONNECT_FAILED', 'reconnecting failed', { cause: error });
      this.scheduleReconnect();
      return;
    }
    if ((this.stateNow !== 'unprotected' && this.stateNow !== 'paused') || this.connection !== undefined) {
      connection.close();
      return;
    }
    this.attach(connection);
    this.write(this.core.start());
    this.startHeartbeats();
    this.armHelloTimer(connection);
  }

  /** A secondary that accepts the connection but never answers HELLO must not hold up start or the next attempt. */
  private armHelloTimer(connection: Connection): void {
    this.timers.clear(this.helloTimer);
    this.helloTimer = this.timers.setTimeout(() => {
      if (this.connection === connection && !this.sessionUp) {
        connection.close(new KemariError('KEMARI_TIMEOUT', `the secondary did not answer HELLO within ${this.connectTimeoutMs} ms`));
      }
    }, this.connectTimeoutMs);
  }
}

/** A capture's devices, disk writes and digest, with other pages (an in-place capture's copies, or none). */
function withPages(capture: EpochCapture, pages: Page[]): EpochCapture {
  return { full: capture.full, pages, devices: capture.devices, diskWrites: capture.diskWrites, stateDigest: capture.stateDigest };
}

/** The page numbers of `pages`. */
function pageNumbers(pages: readonly Page[]): Uint32Array {
  const numbers = new Uint32Array(pages.length);
  for (let i = 0; i < pages.length; i++) numbers[i] = pages[i]!.index;
  return numbers;
}

/** Page numbers one after the other (duplicates kept: marking a page dirty twice is marking it once). */
function concatPages(lists: readonly Uint32Array[]): Uint32Array {
  let count = 0;
  for (const pages of lists) count += pages.length;
  const all = new Uint32Array(count);
  let at = 0;
  for (const pages of lists) {
    all.set(pages, at);
    at += pages.length;
  }
  return all;
}

/** `captures` without their copies of the pages in `pages` (kept in order, their devices and disk writes kept). */
function withoutPages(captures: readonly EpochCapture[], pages: Uint32Array): EpochCapture[] {
  if (captures.every((c) => c.pages.length === 0)) return [...captures];
  const taken = new Set(pages);
  return captures.map((c) => withPages(c, c.pages.filter((p) => !taken.has(p.index))));
}
