/**
 * The secondary: keeps a replica of the primary's VM, one committed epoch at a time, and can resume the VM from
 * it.
 *
 * This is the driver around {@link ReceiverCore} and {@link Replica}: it owns the listener and the connection.
 * One primary at a time (single writer): while a session is active, another primary is refused with
 * KEMARI_BUSY. The replica outlives connections: a primary that reconnects resumes from the committed epoch.
 *
 * Events: 'session' (the primary's Hello), 'commit' ({@link SecondaryCommit}), 'aborted' ({ txn, reason }),
 * 'disconnect' (KemariError | undefined), 'heartbeat', 'failover' (the primary handed over), 'stood-down'
 * ({@link StoodDown}: the guest stopped on its own; this secondary confirmed and will not promote by itself), 'promoted'
 * ({@link Promotion}, after an automatic promotion), 'recovered' (what a journal restart recovered), 'primaryLost' (KemariError: the primary went silent; the
 * session is ended, the replica kept), 'linkDown' (KemariError: the replication link went silent while the primary
 * is heard on the second heartbeat path; the session is ended, the replica kept), 'error' (KemariError; emitted only when listened to, and always recorded in
 * `stats().lastError`).
 */
import { EventEmitter } from 'node:events';
import { KemariError } from '../errors.js';
import { Replica } from '../replica/replica.js';
import type { ReplayEvent, ReplicaGeometry, ReplicaSnapshot } from '../replica/replica.js';
import { Journal } from '../replica/journal.js';
import type { StagedTxn } from '../txn/staged-txn.js';
import type { Connection } from '../transport/connection.js';
import { listen } from '../transport/index.js';
import type { Listener, TlsCredentials } from '../transport/index.js';
import { ReceiverCore } from '../txn/receiver-core.js';
import { FailureDetector } from '../failover/failure-detector.js';
import type { Arbiter, Lease } from '../failover/arbiter.js';
import { LeaseKeeper } from '../failover/lease-keeper.js';
import { constants as bufferConstants } from 'node:buffer';
import { hostname } from 'node:os';
import { encodeFrame } from '../wire/encoder.js';
import { FrameType } from '../wire/header.js';
import { PeerState } from '../wire/bodies/heartbeat.js';
import { StagingArena } from '../txn/staging-arena.js';
import { BackgroundPrefault, PREFAULT_SLICE_BYTES } from '../replica/prefault.js';
import type { ReceiverAction } from '../txn/receiver-core.js';
import { SimulatedVm } from '../vm/simulated-vm.js';
import type { VmAdapter } from '../vm/adapter.js';
import { DEFAULT_BODY_BYTES_MAX } from '../wire/decoder.js';
import { PROTOCOL_VERSION } from '../wire/header.js';
import type { Hello } from '../wire/bodies/hello.js';
import type { Failover } from '../wire/bodies/failover.js';
import type { StandDown } from '../wire/bodies/stand-down.js';
import { isValidPageBytes } from '../wire/bodies/pages.js';
import { HeartbeatLink } from '../failover/heartbeat-link.js';
import { realTimers } from '../time/timers.js';
import type { TimerHandle, Timers } from '../time/timers.js';
import type { JournalFs } from '../replica/journal-fs.js';

/** Options of {@link Secondary.listen}. Give `host` and `port` for TCP (and TLS), or `path` for a unix socket. */
export interface SecondaryOptions<V extends VmAdapter = SimulatedVm> {
  host?: string;
  port?: number;
  path?: string;
  /** Mutual TLS (TCP only). */
  tls?: TlsCredentials;
  /** Verify every epoch against the primary's state digest (the primary must enable it too). */
  verify?: boolean;
  /** Accept pages sent as deltas against the committed copy, when the primary offers them. Default true. */
  delta?: boolean;
  /** Accept only this session. Default: the first session seen; later ones must match it. */
  sessionId?: string;
  /** Largest frame body accepted. Default 16 MiB. */
  bodyBytesMax?: number;
  /** Largest transaction staged before its COMMIT. Default 1 GiB. */
  txnBytesMax?: number;
  /** Most frames in one transaction. Default 1,000,000. */
  txnFramesMax?: number;
  /** Largest guest memory a primary may announce (the replica allocates it). Default 8 GiB. */
  memoryBytesMax?: number;
  /** Largest total disk size a primary may announce. Default 64 GiB. */
  diskBytesMax?: number;
  /**
   * Receive staging memory, allocated and faulted in once when the first session starts and reused for every
   * transaction. Default: the guest's memory plus its disks plus 2 MiB (a full sync fits), capped at txnBytesMax.
   * 0 stages every frame body that spans socket reads in a fresh allocation instead.
   */
  stagingBytes?: number;
  /** Most connections at once (the session and those not yet past HELLO). Default 8. */
  connectionsMax?: number;
  /** A connection that has not said an accepted HELLO within this is closed. Default 5000 ms. */
  helloTimeoutMs?: number;
  /** Heartbeats: the primary is suspected after `missedMax` (default 5) silent `intervalMs` (default 100). */
  heartbeat?: { intervalMs?: number; missedMax?: number };
  /**
   * Promote at once when the primary sends FAILOVER (it quiesced after a fatal fault and is known not to run or
   * release output any more). Default true. The result is emitted as 'promoted'.
   */
  autoPromote?: boolean;
  /**
   * Automatic failover under single writer: with an arbiter, a secondary whose primary fell silent or went away
   * (or handed over with FAILOVER) tries to take the session's lease every half `leaseTtlMs`; once granted (the
   * primary stopped renewing it) it promotes itself ('promoted', with the lease to hand to the new primary).
   * A primary that still holds the lease (a broken link, not a dead host) keeps it: no promotion, no split brain.
   * Needs an explicit `sessionId`.
   */
  arbiter?: Arbiter;
  /** Lease ttl when taking over. Default 3000 ms. */
  leaseTtlMs?: number;
  /** Who takes the lease. Default 'secondary:<host>:<pid>'. */
  holder?: string;
  /**
   * Durability: every transaction is written to a journal in this directory and synced before it is applied and
   * acked ("ack means applied or durably journaled"). A secondary restarted on the same directory recovers its
   * replica (latest snapshot plus the journal after it; a torn tail is dropped) before any primary connects.
   */
  journalDir?: string;
  /** Sync journal records to disk. Default true; false only for tests and benchmarks. */
  journalFsync?: boolean;
  /** Compact the journal into a snapshot after this many journaled bytes. Default 256 MiB. */
  snapshotEveryBytes?: number;
  /** The journal's file system (injectable: the deterministic simulation gives a simulated disk). Default node:fs. */
  journalFs?: JournalFs;
  /**
   * Accepts connections instead of listening on `host`/`port`/`path` (a custom transport; the deterministic
   * simulation's network): call `onConnection` for each connection, resolve with something to close.
   */
  acceptor?: (onConnection: (connection: Connection) => void) => Promise<Pick<Listener, 'close'> & { port?: number }>;
  /** The clock and timers (injectable: the deterministic simulation runs the secondary on virtual time). */
  timers?: Timers;
  /**
   * Listen here for the primary's second heartbeat path (ideally on another network than the replication link):
   * while the primary is heard on it, a quiet replication link is a broken link ('linkDown'), not a dead primary
   * (a takeover is still the lease's decision). Give `host`/`port` or `path`, or an acceptor.
   */
  heartbeatPath?: { host?: string; port?: number; path?: string } | { acceptor: NonNullable<SecondaryOptions['acceptor']> };
  /**
   * Turns the committed replica into a running VM on promotion (a standby QEMU, say). Default: a SimulatedVm
   * restored from the snapshot. A restore that fails leaves the secondary promoted, with the error thrown.
   */
  restoreVm?: (snapshot: ReplicaSnapshot) => V | Promise<V>;
  /** Closes the secondary when aborted. */
  signal?: AbortSignal;
}

/** One applied epoch. */
export interface SecondaryCommit {
  txn: number;
  full: boolean;
  pages: number;
  bytes: number;
  /** The replica's state digest after applying, when verification is on. */
  digest?: Uint8Array;
}

/** What promotion hands back. */
export interface Promotion<V extends VmAdapter = SimulatedVm> {
  /** The VM restored from the last committed epoch, ready to run. */
  vm: V;
  /** The epoch it was restored from. */
  txn: number;
  /** Outputs of committed epochs the primary may not have released, in order: replay them. */
  replay: ReplayEvent[];
  /** With an arbiter: the lease taken; pass it to `Primary.start({ arbiter, lease })` within its ttl. */
  lease?: Lease;
}

/**
 * Where a secondary stands. 'stood-down': the primary's guest stopped on its own (STAND_DOWN) and this secondary
 * holds its final epoch; it accepts no primary and never promotes by itself (an explicit `promote()` still can,
 * to start the guest here on purpose).
 */
export type SecondaryState = 'listening' | 'replicating' | 'stood-down' | 'promoted' | 'closed';

/** What 'stood-down' reports: the final epoch the replica holds, and the primary's reason. */
export interface StoodDown {
  txn: number;
  reason: string;
}

/** Counters. */
export interface SecondaryStats {
  state: Secondary['state'];
  committedTxn: number;
  epochs: number;
  bytesApplied: number;
  pagesApplied: number;
  stagedBytes: number;
  pendingReplay: number;
  refusedConnections: number;
  lastError: KemariError | undefined;
}

interface Session {
  connection: Connection;
  core: ReceiverCore;
  detector: FailureDetector;
  timer: TimerHandle;
  /** Transactions this session committed. */
  commits: number;
  /** Whole transactions this session delivered (applied, or on their way through the journal): a FAILOVER is honoured only from a session that replicated. */
  received: number;
  /**
   * The peer proved who it is (mutual TLS) and resumed from the epoch this replica holds: its FAILOVER is honoured
   * before it delivers a transaction too (a primary whose guest fails right after a reconnection). Without mutual
   * TLS a connection that only said HELLO could claim to be that primary.
   */
  vouched: boolean;
  /** With a journal, applies run one after another, asynchronously (append, sync, apply, ack). */
  chain: Promise<void>;
}

export class Secondary<V extends VmAdapter = SimulatedVm> extends EventEmitter {
  private readonly options: SecondaryOptions<V>;
  private listener: (Pick<Listener, 'close'> & { port?: number }) | undefined;
  private readonly timers: Timers;
  private session: Session | undefined;
  private replicaNow: Replica | undefined;
  private arena: StagingArena | undefined;
  /** Faulting in a large replica and staging arena after HELLO was answered (undefined when done up front). */
  private prefault: BackgroundPrefault | undefined;
  private takeoverTimer: TimerHandle | undefined;
  private readonly connections = new Set<Connection>();
  private keeper: LeaseKeeper | undefined;
  private journal: Journal | undefined;
  private sessionId: string | undefined;
  private verifyActive = false;
  private deltaActive = false;
  private stateNow: SecondaryState = 'listening';
  private epochs = 0;
  private bytesApplied = 0;
  private pagesApplied = 0;
  private refused = 0;
  private heartbeatListener: (Pick<Listener, 'close'> & { port?: number }) | undefined;
  private readonly heartbeatLinks = new Set<HeartbeatLink>();
  /** When the primary was last heard on the second heartbeat path. */
  private heardOnPathMs = Number.NEGATIVE_INFINITY;
  /** The newest lease generation of a primary served (single writer: older ones are refused). */
  private generationSeen = 0;
  /** The newest session's journal work: a promotion waits for it, so it resumes a whole, settled epoch. */
  private journalQueue: Promise<void> = Promise.resolve();
  /** Transactions handed to the journal and not yet applied (or refused). */
  private journaling = 0;
  private lastError: KemariError | undefined;
  private abortListener: (() => void) | undefined;

  private constructor(options: SecondaryOptions<V>) {
    super();
    this.options = options;
    this.sessionId = options.sessionId;
    this.timers = options.timers ?? realTimers;
  }

  /** Starts listening for a primary. */
  static async listen<V extends VmAdapter = SimulatedVm>(options: SecondaryOptions<V> = {}): Promise<Secondary<V>> {
    if (options.signal?.aborted) throw new KemariError('KEMARI_ABORTED', 'aborted before listen', { cause: options.signal.reason });
    const staging = options.stagingBytes;
    if (staging !== undefined && (!Number.isSafeInteger(staging) || staging < 0)) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', 'stagingBytes must be a non-negative integer', { details: { stagingBytes: staging } });
    }
    for (const name of ['bodyBytesMax', 'txnBytesMax', 'txnFramesMax', 'memoryBytesMax', 'diskBytesMax'] as const) {
      const value = options[name];
      if (value !== undefined && (!Number.isSafeInteger(value) || value <= 0)) {
        throw new KemariError('KEMARI_INVALID_ARGUMENT', `${name} must be a positive integer`, { details: { [name]: value } });
      }
    }
    if (options.arbiter !== undefined && options.sessionId === undefined) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', 'an arbiter needs an explicit sessionId (both sides name the same lease)');
    }
    const secondary = new Secondary<V>(options);
    if (options.journalDir !== undefined) await secondary.recoverJournal(options.journalDir);
    const endpoint =
      options.path !== undefined ? { path: options.path } : { host: options.host ?? '127.0.0.1', port: options.port ?? 0 };
    secondary.listener =
      options.acceptor !== undefined
        ? await options.acceptor((connection) => secondary.accept(connection))
        : await listen(endpoint, (connection) => secondary.accept(connection), {
            ...(options.tls === undefined ? {} : { tls: options.tls }),
            onRefused: (error) => {
              secondary.refused += 1;
              secondary.report(error);
            },
          });
    if (options.heartbeatPath !== undefined) {
      try {
        await secondary.listenHeartbeatPath(options.heartbeatPath);
      } catch (error) {
        await secondary.close();
        throw error;
      }
    }
    if (options.signal !== undefined) {
      const signal = options.signal;
      secondary.abortListener = () => void secondary.close();
      signal.addEventListener('abort', secondary.abortListener, { once: true });
    }
    return secondary;
  }

  /** Reopens the journal of a previous run, if the directory holds one: the replica comes back before any HELLO. */
  private async recoverJournal(dir: string): Promise<void> {
    const identity = await Journal.identityOf(dir, this.options.journalFs);
    if (identity === undefined) return;
    if (this.options.sessionId !== undefined && identity.sessionId !== this.options.sessionId) {
      throw new KemariError('KEMARI_HELLO_MISMATCH', `journal ${dir} belongs to session ${identity.sessionId}, not ${this.options.sessionId}`);
    }
    const { journal, replica, recovered } = await this.openJournal(dir, identity.sessionId, identity.geometry);
    this.journal = journal;
    this.replicaNow = replica;
    this.sessionId = identity.sessionId;
    this.arena = this.newArena(identity.geometry);
    this.emit('recovered', recovered);
  }

  /** Opens (or creates) the journal; a fresh one may take `fresh` (a replica with no epoch) as its replica. */
  private openJournal(dir: string, sessionId: string, geometry: ReplicaGeometry, fresh?: Replica) {
    return Journal.open(dir, {
      sessionId,
      geometry,
      fsync: this.options.journalFsync ?? true,
      ...(this.options.journalFs === undefined ? {} : { fs: this.options.journalFs }),
      ...(this.options.snapshotEveryBytes === undefined ? {} : { snapshotEveryBytes: this.options.snapshotEveryBytes }),
      ...(fresh === undefined ? {} : { newReplica: () => fresh }),
    });
  }

  private newArena(geometry: ReplicaGeometry, prefault = true): StagingArena | undefined {
    const diskBytes = geometry.disks.reduce((n, d) => n + d.bytes, 0);
    const stagingBytes = this.options.stagingBytes ?? Math.min(this.options.txnBytesMax ?? 1 << 30, geometry.memoryBytes + diskBytes + (2 << 20));
    return stagingBytes > 0 ? new StagingArena(stagingBytes, { prefault }) : undefined;
  }

  private async listenHeartbeatPath(where: NonNullable<SecondaryOptions<V>['heartbeatPath']>): Promise<void> {
    const accept = (connection: Connection): void => {
      if (this.stateNow === 'closed' || this.stateNow === 'promoted' || this.stateNow === 'stood-down' || this.heartbeatLinks.size >= (this.options.connectionsMax ?? 8)) {
        connection.close(new KemariError('KEMARI_BUSY', 'no heartbeat path is served now'));
        return;
      }
      const intervalMs = this.options.heartbeat?.intervalMs ?? 100;
      const link = new HeartbeatLink(connection, {
        expectSessionId: () => this.sessionId,
        intervalMs,
        timers: this.timers,
        onHeard: () => {
          const nowMs = this.timers.now();
          this.heardOnPathMs = nowMs;
          this.session?.detector.heardOnSecondPath(nowMs);
        },
        state: () => ({ committedTxn: this.committedTxn, state: PeerState.STANDBY }),
        helloTimeoutMs: this.options.helloTimeoutMs ?? 5000,
      });
      this.heartbeatLinks.add(link);
      connection.on('close', () => this.heartbeatLinks.delete(link));
    };
    this.heartbeatListener =
      'acceptor' in where
        ? await where.acceptor(accept)
        : await listen(where.path !== undefined ? { path: where.path } : { host: where.host ?? '127.0.0.1', port: where.port ?? 0 }, accept, {
            ...(this.options.tls === undefined ? {} : { tls: this.options.tls }),
          });
  }

  /** The TCP port of the heartbeat path listener (0 when none, or a unix socket). */
  get heartbeatPort(): number {
    return this.heartbeatListener?.port ?? 0;
  }

  private pathWatch: TimerHandle | undefined;

  /**
   * After a broken link: the primary is still heard on the heartbeat path. If it falls silent there too before a
   * session comes back, it is lost after all ('primaryLost').
   */
  private watchPath(): void {
    if (this.pathWatch !== undefined) return;
    this.pathWatch = this.timers.setInterval(() => {
      if (this.session !== undefined || this.stateNow !== 'listening') return this.stopPathWatch();
      if (this.primaryHeardOnPath()) return;
      this.stopPathWatch();
      const error = new KemariError('KEMARI_PEER_LOST', 'the primary fell silent on the heartbeat path too, after the replication link', { details: { verdict: 'dead' } });
      this.report(error);
      this.emit('primaryLost', error);
    }, this.options.heartbeat?.intervalMs ?? 100);
  }

  private stopPathWatch(): void {
    this.timers.clear(this.pathWatch);
    this.pathWatch = undefined;
  }

  /** True while the primary is heard on the second heartbeat path. */
  private primaryHeardOnPath(): boolean {
    const heartbeat = this.options.heartbeat;
    const timeoutMs = (heartbeat?.intervalMs ?? 100) * (heartbeat?.missedMax ?? 5);
    return this.timers.now() - this.heardOnPathMs < timeoutMs;
  }

  /** The TCP port listened on (0 for unix sockets). */
  get port(): number {
    return this.listener?.port ?? 0;
  }

  /** Where the secondary stands. */
  get state(): SecondaryState {
    return this.stateNow;
  }

  /** The replica (undefined until a primary has said HELLO). */
  get replica(): Replica | undefined {
    return this.replicaNow;
  }

  /** The last committed epoch (0 when none). */
  get committedTxn(): number {
    return this.replicaNow?.committedTxn ?? 0;
  }

  /** Counters. */
  stats(): SecondaryStats {
    return {
      state: this.stateNow,
      committedTxn: this.committedTxn,
      epochs: this.epochs,
      bytesApplied: this.bytesApplied,
      pagesApplied: this.pagesApplied,
      stagedBytes: this.session?.core.stagedBytes ?? 0,
      pendingReplay: this.replicaNow?.pendingEvents.length ?? 0,
      refusedConnections: this.refused,
      lastError: this.lastError,
    };
  }

  /**
   * Takes over: stops listening, ends the session with the primary (a transaction being staged is discarded),
   * and returns a VM restored from the last committed epoch with the outputs to replay. Throws KEMARI_NO_REPLICA
   * when no epoch was ever committed.
   */
  async promote(): Promise<Promotion<V>> {
    if (this.stateNow === 'closed' || this.stateNow === 'promoted') {
      throw new KemariError('KEMARI_CLOSED', `cannot promote a secondary that is ${this.stateNow}`);
    }
    const replica = this.replicaNow;
    if (replica === undefined || !replica.hasCommittedEpoch) {
      throw new KemariError('KEMARI_NO_REPLICA', 'no epoch has been committed; there is nothing to resume');
    }
    this.stateNow = 'promoted';
    this.prefault?.stop();
    this.stopTakeover();
    this.endSession(new KemariError('KEMARI_CLOSED', 'the secondary was promoted'));
    for (const connection of this.connections) connection.close(new KemariError('KEMARI_CLOSED', 'the secondary was promoted'));
    for (const link of this.heartbeatLinks) link.close();
    await this.heartbeatListener?.close();
    this.heartbeatListener = undefined;
    await this.listener?.close();
    this.listener = undefined;
    // Transactions still on their way into the journal are applied first (nothing applies after): the snapshot and
    // the replay are then of one settled epoch, and stay so while the VM is restored from them.
    await this.journalQueue.catch(() => {});
    const replay = [...(this.replicaNow ?? replica).pendingEvents];
    const snapshot: ReplicaSnapshot = (this.replicaNow ?? replica).snapshot();
    const vm = this.options.restoreVm !== undefined ? await this.options.restoreVm(snapshot) : (SimulatedVm.restore(snapshot) as unknown as V);
    const lease = this.keeper?.current;
    this.keeper?.stop();
    return { vm, txn: snapshot.txn, replay, ...(lease === undefined ? {} : { lease }) };
  }

  /** Stops listening and ends the session; the replica is dropped. Idempotent. */
  async close(): Promise<void> {
    if (this.stateNow === 'closed') return;
    this.stateNow = 'closed';
    this.prefault?.stop();
    this.stopTakeover();
    this.stopPathWatch();
    if (this.abortListener !== undefined) this.options.signal?.removeEventListener('abort', this.abortListener);
    this.endSession(new KemariError('KEMARI_CLOSED', 'the secondary was closed'));
    for (const connection of this.connections) connection.close(new KemariError('KEMARI_CLOSED', 'the secondary was closed'));
    for (const link of this.heartbeatLinks) link.close();
    const heartbeatListener = this.heartbeatListener;
    this.heartbeatListener = undefined;
    await heartbeatListener?.close();
    this.replicaNow = undefined;
    this.arena = undefined;
    const journal = this.journal;
    this.journal = undefined;
    await journal?.close();
    const listener = this.listener;
    this.listener = undefined;
    await listener?.close();
  }

  private accept(connection: Connection): void {
    if (this.stateNow !== 'listening' && this.stateNow !== 'replicating') {
      connection.close(new KemariError('KEMARI_CLOSED', 'the secondary no longer accepts primaries'));
      return;
    }
    if (this.connections.size >= (this.options.connectionsMax ?? 8)) {
      this.refused += 1;
      connection.close(new KemariError('KEMARI_BUSY', 'too many connections'));
      return;
    }
    // A connection becomes the session only once its HELLO is accepted, so a silent or slow client never holds
    // the place of the real primary (nor blocks a takeover).
    const pending: Session = { connection, core: undefined as unknown as ReceiverCore, detector: undefined as unknown as FailureDetector, timer: undefined as unknown as NodeJS.Timeout, commits: 0, received: 0, vouched: false, chain: Promise.resolve() };
    const core = new ReceiverCore({
      arena: {
        // The arena exists once the first HELLO told the guest's size; only the session uses it.
        allocate: (bytes: number) => (this.arena !== undefined && this.session === pending ? this.arena.allocate(bytes) : new Uint8Array(bytes)),
        reset: () => {
          if (this.session === pending) this.arena?.reset();
        },
      },
      bodyBytesMax: this.options.bodyBytesMax ?? DEFAULT_BODY_BYTES_MAX,
      txnBytesMax: this.options.txnBytesMax ?? 1 << 30,
      txnFramesMax: this.options.txnFramesMax ?? 1_000_000,
      committedTxn: this.replicaNow?.committedTxn ?? 0,
      acceptHello: (hello) => {
        if (this.session !== undefined) {
          this.refused += 1;
          throw new KemariError('KEMARI_BUSY', 'another primary is being served');
        }
        const reply = this.acceptHello(hello);
        this.session = pending;
        pending.vouched = this.options.tls !== undefined && hello.committedTxn > 0 && hello.committedTxn === reply.committedTxn;
        return reply;
      },
    });
    const intervalMs = this.options.heartbeat?.intervalMs ?? 100;
    const detector = new FailureDetector({
      intervalMs,
      missedMax: this.options.heartbeat?.missedMax ?? 5,
      secondPath: this.options.heartbeatPath !== undefined,
      nowMs: this.timers.now(),
    });
    const helloDeadlineMs = this.timers.now() + (this.options.helloTimeoutMs ?? 5000);
    const timer = this.timers.setInterval(() => {
      const nowMs = this.timers.now();
      detector.ticked(nowMs);
      if (this.session !== pending) {
        // Not (or no longer) the session: it has until the HELLO deadline to become one.
        if (nowMs >= helloDeadlineMs) connection.close(new KemariError('KEMARI_PROTOCOL', 'no HELLO in time'));
        return;
      }
      const verdict = detector.verdict(nowMs);
      if (verdict !== 'alive') {
        const dead = verdict === 'dead';
        const error = new KemariError(
          'KEMARI_PEER_LOST',
          dead ? `the primary was silent for ${detector.timeoutMs} ms` : `the replication link was silent for ${detector.timeoutMs} ms; the primary is heard on the heartbeat path`,
          { details: { timeoutMs: detector.timeoutMs, verdict } },
        );
        this.report(error);
        this.emit(dead ? 'primaryLost' : 'linkDown', error);
        this.endSession(error);
        if (!dead) this.watchPath();
        this.startTakeover();
        return;
      }
      // Our own heartbeats, not replies: the primary hears us even while it streams a long transaction. Skipped
      // while the connection is backed up (the primary is not reading; piling up heartbeats would not help).
      if (connection.bufferedBytes < 64 * 1024) connection.write(this.heartbeatFrame());
    }, intervalMs);
    pending.core = core;
    pending.detector = detector;
    pending.timer = timer;
    this.connections.add(connection);
    connection.on('data', (chunk) => {
      detector.heardOnLink(this.timers.now());
      this.act(pending, core.receive(chunk));
    });
    connection.on('close', (error) => {
      this.timers.clear(timer);
      this.connections.delete(connection);
      this.act(pending, core.connectionLost());
      if (this.session === pending) {
        this.session = undefined;
        if (this.stateNow === 'replicating') this.stateNow = 'listening';
        this.emit('disconnect', error);
        this.startTakeover();
      }
    });
  }

  private acceptHello(hello: Hello): Hello {
    const mismatch = (message: string, details: Record<string, unknown> = {}): never => {
      throw new KemariError('KEMARI_HELLO_MISMATCH', message, { details });
    };
    // A connection accepted before a promotion (or a close) may say HELLO after it: it is never served.
    if (this.stateNow !== 'listening' && this.stateNow !== 'replicating') {
      throw new KemariError('KEMARI_CLOSED', `the secondary is ${this.stateNow} and serves no primary`);
    }
    // The last transactions of an ended session may still be on their way to the journal: the epoch this replica
    // holds is known only once they are applied, so a new session waits (the primary retries).
    if (this.journaling > 0) throw new KemariError('KEMARI_BUSY', 'the previous session is still journaling its last transaction');
    if (PROTOCOL_VERSION < hello.versionMin || PROTOCOL_VERSION > hello.versionMax) {
      mismatch(`protocol versions ${hello.versionMin}..${hello.versionMax} exclude ${PROTOCOL_VERSION}`);
    }
    // A replica that never committed an epoch holds nothing worth keeping: a new session may replace it.
    if (this.replicaNow !== undefined && !this.replicaNow.hasCommittedEpoch && this.journal === undefined) {
      this.replicaNow = undefined;
      this.arena = undefined;
      if (this.options.sessionId === undefined) this.sessionId = undefined;
    }
    if (this.sessionId !== undefined && hello.sessionId !== this.sessionId) {
      mismatch(`session ${hello.sessionId} is not this secondary's session ${this.sessionId}`);
    }
    // Single writer: a primary of an older lease generation than one already served was superseded.
    const generation = hello.generation ?? 0;
    if (generation < this.generationSeen) {
      mismatch(`the primary's lease generation ${generation} was superseded by generation ${this.generationSeen}`, { generation, generationSeen: this.generationSeen });
    }
    const replica = this.replicaNow;
    if (replica !== undefined) {
      const g = replica.geometry;
      const same =
        g.memoryBytes === hello.memoryBytes &&
        g.pageBytes === hello.pageBytes &&
        g.deviceNames.join('\0') === hello.devices.join('\0') &&
        g.disks.map((d) => `${d.id}:${d.bytes}`).join(',') === hello.disks.map((d) => `${d.id}:${d.bytes}`).join(',');
      if (!same) mismatch('the VM geometry or inventory differs from the replica');
    } else {
      if (!isValidPageBytes(hello.pageBytes) || hello.memoryBytes <= 0 || hello.memoryBytes % hello.pageBytes !== 0) {
        mismatch('invalid memory geometry', { memoryBytes: hello.memoryBytes, pageBytes: hello.pageBytes });
      }
      // One buffer per memory and per disk: none may exceed what this Node can allocate in one piece.
      const bufferMax = Math.min(bufferConstants.MAX_LENGTH, this.options.memoryBytesMax ?? 8 * 2 ** 30);
      if (hello.memoryBytes > bufferMax) mismatch(`guest memory exceeds ${bufferMax} bytes`, { memoryBytes: hello.memoryBytes });
      for (const disk of hello.disks) {
        if (disk.bytes > bufferConstants.MAX_LENGTH) mismatch(`disk ${disk.id} exceeds ${bufferConstants.MAX_LENGTH} bytes`, { diskBytes: disk.bytes });
      }
      const diskBytes = hello.disks.reduce((n, d) => n + d.bytes, 0);
      if (diskBytes > (this.options.diskBytesMax ?? 64 * 2 ** 30)) mismatch('disks exceed diskBytesMax', { diskBytes });
      if (new Set(hello.disks.map((d) => d.id)).size !== hello.disks.length) mismatch('duplicate disk ids');
      if (new Set(hello.devices).size !== hello.devices.length) mismatch('duplicate device names');
      // Allocated now, faulted in after HELLO is answered when large (see replica/prefault.ts): a guest of many GiB
      // takes seconds to fault in, longer than a primary waits for HELLO.
      const geometry = { memoryBytes: hello.memoryBytes, pageBytes: hello.pageBytes, deviceNames: hello.devices, disks: hello.disks };
      const inBackground = hello.memoryBytes + diskBytes > PREFAULT_SLICE_BYTES;
      this.replicaNow = new Replica(geometry, {}, { prefault: !inBackground });
      this.arena = this.newArena(this.replicaNow.geometry, !inBackground);
      this.prefault?.stop();
      this.prefault = inBackground ? new BackgroundPrefault([...this.replicaNow.buffers, ...(this.arena === undefined ? [] : [this.arena.memory])], this.timers).start() : undefined;
    }
    this.sessionId = hello.sessionId;
    this.generationSeen = generation;
    this.stopTakeover();
    const features = [...(this.options.verify === true ? ['verify'] : []), ...(this.options.delta === false ? [] : ['delta'])];
    this.verifyActive = features.includes('verify') && hello.features.includes('verify');
    this.deltaActive = features.includes('delta') && hello.features.includes('delta');
    this.stateNow = 'replicating';
    const r = this.replicaNow!;
    return {
      sessionId: hello.sessionId,
      role: 'secondary',
      versionMin: PROTOCOL_VERSION,
      versionMax: PROTOCOL_VERSION,
      memoryBytes: r.geometry.memoryBytes,
      pageBytes: r.geometry.pageBytes,
      devices: [...r.geometry.deviceNames],
      disks: r.geometry.disks.map((d) => ({ id: d.id, bytes: d.bytes })),
      committedTxn: r.committedTxn,
      features: features.filter((f) => hello.features.includes(f)),
    };
  }

  /** Carries out the core's actions in order (see ReceiverCore for the duties). */
  private act(session: Session, actions: ReceiverAction[]): void {
    let applyFailed = false;
    for (const action of actions) {
      if (applyFailed && action.type === 'apply') continue;
      switch (action.type) {
        case 'send':
          session.connection.write([action.frame.header, ...action.frame.body]);
          break;
        case 'session':
          session.detector.heardOnLink(this.timers.now());
          this.emit('session', action.hello);
          break;
        case 'apply': {
          session.received += 1;
          if (this.options.journalDir !== undefined) {
            const staged = action.txn;
            this.journaling += 1;
            session.chain = session.chain.then(() => this.applyDurably(session, staged)).finally(() => (this.journaling -= 1));
            this.journalQueue = session.chain;
            break;
          }
          const replica = this.replicaNow!;
          const staged = action.txn;
          let digest: Uint8Array;
          try {
            digest = replica.apply(staged, { verify: this.verifyActive, delta: this.deltaActive });
          } catch (error) {
            const e = error instanceof KemariError ? error : new KemariError('KEMARI_BAD_BODY', 'the transaction could not be applied', { cause: error });
            this.report(e);
            this.act(session, session.core.applyFailed(staged.txn, e));
            // The rest of the batch still runs (a NACK or close the core queued), but no later transaction applies.
            applyFailed = true;
            break;
          }
          this.committed(session, staged, digest);
          break;
        }
        case 'aborted':
          this.emit('aborted', { txn: action.txn, reason: action.reason });
          break;
        case 'heartbeat':
          this.emit('heartbeat', action.heartbeat);
          break;
        case 'stand-down': {
          // As FAILOVER: after the transactions received before it are journaled and applied.
          const standDown = action.standDown;
          session.chain = session.chain.then(() => this.onStandDown(session, standDown));
          this.journalQueue = session.chain;
          break;
        }
        case 'failover': {
          // Handled after the transactions received before it are journaled and applied (they are committed epochs
          // the primary may already count on), and only from the session being served, on a replica holding an epoch.
          const failover = action.failover;
          session.chain = session.chain.then(() => this.onFailover(session, failover));
          this.journalQueue = session.chain;
          break;
        }
        case 'close':
          if (action.error !== undefined) this.report(action.error);
          session.connection.close();
          break;
      }
    }
  }

  /**
   * The primary's guest stopped on its own: confirm (the same frame back) once the replica holds exactly the final
   * epoch, and from then on never promote by itself. Anything else (another epoch, a session no longer served) is
   * reported and not confirmed, so the primary knows this side may still take over.
   */
  private onStandDown(session: Session, standDown: StandDown): void {
    // As FAILOVER: only from the session being served, and one that replicated (a connection that only said HELLO
    // proves nothing), onto exactly the epoch it names.
    const superseded = this.session !== session;
    if (superseded || session.received === 0 || this.stateNow !== 'replicating' || standDown.committedTxn !== this.committedTxn || !(this.replicaNow?.hasCommittedEpoch ?? false)) {
      this.report(
        new KemariError('KEMARI_PROTOCOL', `STAND_DOWN at txn ${standDown.committedTxn} not confirmed: the replica holds txn ${this.committedTxn}, or the session replicated nothing or is no longer served`, {
          details: { txn: standDown.committedTxn, committedTxn: this.committedTxn },
        }),
      );
      return;
    }
    this.stateNow = 'stood-down';
    this.stopTakeover();
    this.stopPathWatch();
    const frame = encodeFrame({ type: FrameType.STAND_DOWN, txn: 0, seq: 0, body: { committedTxn: this.committedTxn, reason: standDown.reason } });
    session.connection.write([frame.header, ...frame.body]);
    // Ended without the NACK endSession sends: nothing is staged, and the confirmation is the last word.
    this.session = undefined;
    this.timers.clear(session.timer);
    session.core.shutdown(new KemariError('KEMARI_CLOSED', 'the primary stood down'));
    // Closed gracefully (the confirmation goes out first), and no longer ours: a close() right after must not
    // destroy it with the confirmation unsent.
    this.connections.delete(session.connection);
    session.connection.close();
    for (const link of this.heartbeatLinks) link.close();
    const stoodDown: StoodDown = { txn: standDown.committedTxn, reason: standDown.reason };
    this.emit('stood-down', stoodDown);
  }

  private onFailover(session: Session, failover: Failover): void {
    // The primary closes its side right after FAILOVER, so its session may be over by now; a newer one must not be.
    const superseded = this.session !== undefined && this.session !== session;
    const proven = session.received > 0 || session.vouched;
    if (superseded || !proven || (this.stateNow !== 'listening' && this.stateNow !== 'replicating') || !(this.replicaNow?.hasCommittedEpoch ?? false)) {
      this.report(new KemariError('KEMARI_PROTOCOL', 'FAILOVER from a session no longer served, one that neither replicated nor resumed over mutual TLS, or onto a replica without an epoch; ignored'));
      return;
    }
    this.emit('failover', failover);
    if (this.options.arbiter !== undefined) {
      this.endSession(new KemariError('KEMARI_CLOSED', 'the primary handed over'));
      this.startTakeover();
    } else if (this.options.autoPromote !== false) {
      this.promote().then(
        (promotion) => this.emit('promoted', promotion),
        (error: unknown) => this.report(error instanceof KemariError ? error : new KemariError('KEMARI_NO_REPLICA', 'promotion failed', { cause: error })),
      );
    }
  }

  /**
   * With an arbiter and a committed epoch: try to take the lease now and every half ttl while no primary is
   * served; promote once it is granted. Without an arbiter, silence never promotes.
   */
  private startTakeover(): void {
    const arbiter = this.options.arbiter;
    if (arbiter === undefined || this.options.autoPromote === false || this.takeoverTimer !== undefined) return;
    if (this.stateNow !== 'listening' || !(this.replicaNow?.hasCommittedEpoch ?? false)) return;
    const ttlMs = this.options.leaseTtlMs ?? 3000;
    this.keeper ??= new LeaseKeeper(arbiter, this.options.sessionId!, this.options.holder ?? `secondary:${hostname()}:${process.pid}`, ttlMs, this.timers);
    const keeper = this.keeper;
    let trying = false;
    const attempt = (): void => {
      // Tried even while the primary is heard on the heartbeat path: the lease decides. A primary that still holds it
      // keeps it (denied); one that lost the arbiter can no longer release output, and is taken over.
      if (trying || this.stateNow !== 'listening' || this.session !== undefined) return;
      trying = true;
      keeper.acquire().then(
        () => {
          trying = false;
          if (this.stateNow !== 'listening' || this.session !== undefined) return void keeper.release();
          this.promote().then(
            (promotion) => this.emit('promoted', promotion),
            (error: unknown) => this.report(error instanceof KemariError ? error : new KemariError('KEMARI_NO_REPLICA', 'promotion failed', { cause: error })),
          );
        },
        () => {
          trying = false; // denied or unreachable: the primary may still be the writer; try again later
        },
      );
    };
    this.takeoverTimer = this.timers.setInterval(attempt, Math.max(1, Math.floor(ttlMs / 2)));
    attempt();
  }

  private stopTakeover(): void {
    this.timers.clear(this.takeoverTimer);
    this.takeoverTimer = undefined;
  }

  private heartbeatFrame(): Uint8Array[] {
    const frame = encodeFrame({
      type: FrameType.HEARTBEAT,
      txn: 0,
      seq: 0,
      body: { timeMs: Date.now(), committedTxn: this.committedTxn, generation: 0, state: PeerState.STANDBY },
    });
    return [frame.header, ...frame.body];
  }

  /**
   * Journal, then apply, then ack: the record is synced before the replica changes and before the primary hears
   * of it. A transaction whose apply fails is taken back out of the journal before the NACK.
   */
  private async applyDurably(session: Session, staged: StagedTxn): Promise<void> {
    if (session.core.closed) return;
    const replica = this.replicaNow!;
    try {
      if (this.journal === undefined) {
        const dir = this.options.journalDir!;
        // A directory still without a journal gets one whose replica is the HELLO one (no epoch yet): no second
        // guest-sized allocation, and no synchronous fault-in of one in the middle of the first full sync.
        const fresh = !replica.hasCommittedEpoch && (await Journal.identityOf(dir, this.options.journalFs)) === undefined;
        const opened = await this.openJournal(dir, this.sessionId!, replica.geometry, fresh ? replica : undefined);
        if (opened.replica.committedTxn !== replica.committedTxn) {
          throw new KemariError('KEMARI_JOURNAL_CORRUPT', 'the journal directory holds another history than the replica');
        }
        this.journal = opened.journal;
        // The journal's replica is the one it snapshots: serve from it from now on (both hold no epoch yet).
        if (opened.replica !== replica) {
          // Made and faulted in by the journal: the background pass over the discarded one stops (and lets it go)
          // and goes on over the staging arena only.
          this.replicaNow = opened.replica;
          if (this.prefault !== undefined && !this.prefault.finished) {
            this.prefault.stop();
            this.prefault = this.arena === undefined ? undefined : new BackgroundPrefault([this.arena.memory], this.timers).start();
          }
        }
      }
      await this.journal.append(staged);
    } catch (error) {
      if (this.replicaNow === undefined) return; // closed meanwhile
      const e = error instanceof KemariError ? error : new KemariError('KEMARI_JOURNAL_IO', 'journaling failed', { cause: error });
      this.report(e);
      this.act(session, session.core.applyFailed(staged.txn, e));
      return;
    }
    // Journaled: applied now even if the session ended meanwhile, so the replica never lags its own journal (the
    // ack goes out only on a live session). A closed secondary has neither any more.
    const replicaNow = this.replicaNow;
    const journal = this.journal;
    if (replicaNow === undefined || journal === undefined) return;
    let digest: Uint8Array;
    try {
      digest = replicaNow.apply(staged, { verify: this.verifyActive, delta: this.deltaActive });
    } catch (error) {
      const e = error instanceof KemariError ? error : new KemariError('KEMARI_BAD_BODY', 'the transaction could not be applied', { cause: error });
      await journal.abandon(staged.txn).catch((abandonError: unknown) => this.report(abandonError as KemariError));
      this.report(e);
      this.act(session, session.core.applyFailed(staged.txn, e));
      return;
    }
    this.committed(session, staged, digest);
  }

  /** The epoch is applied (and journaled, when durable): count it, ack it (invariant 3), report it. */
  private committed(session: Session, staged: StagedTxn, digest: Uint8Array): void {
    session.commits += 1;
    this.epochs += 1;
    this.bytesApplied += staged.bodyBytes;
    this.pagesApplied += staged.pages.length;
    this.act(session, session.core.applied(staged.txn, digest));
    const commit: SecondaryCommit = { txn: staged.txn, full: staged.full, pages: staged.pages.length, bytes: staged.bodyBytes, ...(this.verifyActive ? { digest } : {}) };
    this.emit('commit', commit);
  }

  private endSession(error: KemariError): void {
    const session = this.session;
    if (session === undefined) return;
    this.session = undefined;
    this.timers.clear(session.timer);
    if (this.stateNow === 'replicating') this.stateNow = 'listening';
    const actions = session.core.shutdown(error);
    for (const action of actions) if (action.type === 'send') session.connection.write([action.frame.header, ...action.frame.body]);
    session.connection.close();
  }

  private report(error: KemariError): void {
    this.lastError = error;
    if (this.listenerCount('error') > 0) this.emit('error', error);
  }
}
