/**
 * One seeded run of the deterministic simulation: a primary, a secondary, a witness and a guest workload on the
 * simulated network and clock, under a seeded plan of faults: lost and duplicated writes, partitions of either
 * direction, crashes and restarts of either side, hung hosts, fatal faults, slow journal disks. The real drivers
 * (Primary, Secondary, LeaseKeeper, Journal) run unchanged on injected timers, transport and file system.
 *
 * After every step the invariants are checked; a violation throws {@link InvariantViolation} naming the seed, and
 * `npm run sim -- --seed N` replays the run exactly.
 */
import { Primary } from '../../src/primary/primary.js';
import type { PrimaryCapture, PrimaryOptions } from '../../src/primary/primary.js';
import { Secondary } from '../../src/secondary/secondary.js';
import type { Promotion, SecondaryCommit } from '../../src/secondary/secondary.js';
import type { ReleasedOutput } from '../../src/tap/event-tap.js';
import { digestHex } from '../../src/replica/state-digest.js';
import { SimulatedVm } from '../../src/vm/simulated-vm.js';
import { Workload } from '../../src/vm/workload.js';
import { Prng } from '../../src/vm/prng.js';
import type { Reprotection } from '../../src/primary/primary.js';
import { Scheduler } from './scheduler.js';
import type { NodeClock } from './scheduler.js';
import { SimNetwork } from './network.js';
import { SimDisk } from './sim-disk.js';
import { SimWitness, WITNESS_NODE } from './sim-arbiter.js';

const SESSION = 'sim';
const FAULT_NAMES = ['partition', 'witness-partition', 'loss', 'secondary-crash', 'primary-crash', 'fatal-fault', 'primary-hang', 'slow-disk', 'slow-link', 'stale-primary-redirected'];
const JOURNAL_DIR = '/journal';

/** A broken invariant, with the seed that replays it. */
export class InvariantViolation extends Error {
  constructor(
    readonly seed: number,
    readonly atMs: number,
    message: string,
  ) {
    super(`seed ${seed} at ${atMs.toFixed(2)} ms: ${message}`);
    this.name = 'InvariantViolation';
  }
}

/** What one run did. */
export interface SimReport {
  seed: number;
  steps: number;
  virtualMs: number;
  config: SimConfig;
  commits: number;
  releases: number;
  failovers: number;
  secondaryRestarts: number;
  resumedIncrementally: number;
  resyncedFully: number;
  faults: Record<string, number>;
  network: SimNetwork['counters'];
  tornTails: number;
  /** Pages that went out as deltas. */
  deltaPages: number;
  /** Stand-downs (the guest powered off) that the secondary confirmed. */
  standDowns: number;
}

/** The shape of one run, drawn from its seed. */
export interface SimConfig {
  arbiter: boolean;
  journal: boolean;
  policy: 'hold' | 'pause' | 'continue';
  pipelineDepth: number;
  periodicMs: number | undefined;
  missedMax: number;
  leaseTtlMs: number;
  reconnectDelayMs: number;
  stepEveryMs: number;
  /** Pages as deltas against the secondary's copy (drawn from its own stream, so older seeds replay as before). */
  delta: boolean;
  /** In-place captures (PrimaryOptions.captureInPlace; its own stream too). */
  inPlace: boolean;
  /** When the guest powers itself off (Primary.standDown), if it does in this run (its own stream too). */
  standDownAtMs: number | undefined;
}

interface SecondaryIncarnation {
  id: number;
  node: string;
  clock: NodeClock;
  secondary: Secondary | undefined;
  /** Newest epoch it committed (or recovered). */
  committedMax: number;
  /** Newest epoch whose outputs a primary released on its word. */
  releasedMax: number;
  history: number;
  /** Histories of the primaries that opened connections to it: its replica holds an epoch of one of them. */
  servedHistories: Set<number>;
  alive: boolean;
  /** It confirmed a STAND_DOWN: from then on it must never promote. */
  stoodDown: boolean;
}

interface PrimaryIncarnation {
  node: string;
  clock: NodeClock;
  vm: SimulatedVm;
  primary: Primary | undefined;
  history: number;
  /** The secondary incarnation its current connection reaches. */
  peer: SecondaryIncarnation | undefined;
  /** The node it dials: its standby's, unless a fault points it elsewhere. */
  target: string;
  alive: boolean;
  /** The txn of its newest capture (txns restart from the secondary's epoch with each session). */
  lastCapturedTxn: number;
}

const HEARTBEAT_MS = 10;
const MEMORY_BYTES = 32 * 4096;
const DISK = { id: 0, bytes: 64 * 512 };

export class World {
  readonly scheduler = new Scheduler();
  private readonly rng: Prng;
  private readonly network: SimNetwork;
  private readonly witness: SimWitness;
  private readonly disks = new Map<string, SimDisk>();
  readonly config: SimConfig;
  private readonly secondaries: SecondaryIncarnation[] = [];
  private readonly primaries: PrimaryIncarnation[] = [];
  private current: PrimaryIncarnation | undefined;
  private standby: SecondaryIncarnation | undefined;
  /** Per history (a new one begins with every promotion): the state digest of every captured epoch. */
  private readonly digests = new Map<number, Map<number, string>>();
  private history = 0;
  private nextNode = 1;
  private nextIncarnation = 1;
  private commits = 0;
  private releases = 0;
  private failovers = 0;
  private restarts = 0;
  private resumed = 0;
  private resynced = 0;
  /** Stand-downs the secondary confirmed, and the history whose guest stopped for good. */
  private standDowns = 0;
  private stoppedHistory: number | undefined;
  private readonly faults: Record<string, number> = {};
  private violation: InvariantViolation | undefined;

  constructor(readonly seed: number) {
    this.rng = new Prng(seed);
    this.network = new SimNetwork(this.scheduler, new Prng(seed ^ 0x5eed));
    this.witness = new SimWitness(this.network);
    const r = this.rng;
    const standDown = new Prng(seed ^ 0x57a9d);
    const arbiter = r.nextFloat() < 0.6;
    const policies = arbiter ? (['hold', 'pause', 'continue'] as const) : (['hold', 'pause'] as const);
    this.config = {
      arbiter,
      journal: r.nextFloat() < 0.7,
      policy: policies[r.nextInt(policies.length)]!,
      pipelineDepth: 1 + r.nextInt(3),
      periodicMs: r.nextFloat() < 0.5 ? 5 + r.nextInt(25) : undefined,
      missedMax: 3 + r.nextInt(4),
      leaseTtlMs: 150 + r.nextInt(250),
      reconnectDelayMs: 10 + r.nextInt(60),
      stepEveryMs: 2 + r.nextInt(6),
      delta: new Prng(seed ^ 0xde17a).nextFloat() < 0.5,
      inPlace: new Prng(seed ^ 0x1a91ace).nextFloat() < 0.5,
      standDownAtMs: standDown.nextFloat() < 0.3 ? 200 + standDown.nextInt(1100) : undefined,
    };
  }

  /** Prints what happens, with virtual time, when tracing (`npm run sim -- --seed N --trace`). */
  traceOn = false;

  private trace(message: string): void {
    if (this.traceOn) console.log(`${this.scheduler.now.toFixed(2).padStart(9)} ms  ${message}`);
  }

  private fail(message: string): void {
    this.violation ??= new InvariantViolation(this.seed, this.scheduler.now, message);
  }

  private count(fault: string): void {
    this.faults[fault] = (this.faults[fault] ?? 0) + 1;
  }

  private newNode(): string {
    return `n${this.nextNode++}`;
  }

  private diskOf(node: string): SimDisk {
    let disk = this.disks.get(node);
    if (disk === undefined) {
      disk = new SimDisk(new Prng(this.seed * 31 + this.disks.size));
      this.disks.set(node, disk);
    }
    return disk;
  }

  /** Runs the plan for `durationMs` of virtual time; throws the first invariant violation. */
  async run(durationMs: number): Promise<SimReport> {
    const first = this.newNode();
    const second = this.newNode();
    this.history = 1;
    this.digests.set(1, new Map());
    this.scheduler.at(0, () => this.startSecondary(second, 1));
    this.scheduler.at(1, () => this.startPrimary(first, new SimulatedVm({ memoryBytes: MEMORY_BYTES, seed: this.seed, disks: [DISK] }), undefined));
    this.planFaults(durationMs);
    if (this.config.standDownAtMs !== undefined) this.scheduler.at(this.config.standDownAtMs, () => this.standDown());
    await this.scheduler.run(durationMs, () => {
      if (this.violation === undefined) this.check();
      if (this.violation !== undefined) throw this.violation;
    });
    if (this.violation !== undefined) throw this.violation;
    return {
      seed: this.seed,
      steps: this.scheduler.steps,
      virtualMs: this.scheduler.now,
      config: this.config,
      commits: this.commits,
      releases: this.releases,
      failovers: this.failovers,
      secondaryRestarts: this.restarts,
      resumedIncrementally: this.resumed,
      resyncedFully: this.resynced,
      faults: this.faults,
      network: this.network.counters,
      tornTails: [...this.disks.values()].reduce((n, d) => n + d.tornTails, 0),
      deltaPages: this.primaries.reduce((n, p) => n + (p.primary?.stats().deltaPages ?? 0), 0),
      standDowns: this.standDowns,
    };
  }

  // ---- the roles ----

  private startSecondary(node: string, history: number): void {
    const clock = this.scheduler.clockFor(node);
    this.trace(`${node} starts as secondary #${this.nextIncarnation} of history ${history}`);
    const incarnation: SecondaryIncarnation = { id: this.nextIncarnation++, node, clock, secondary: undefined, committedMax: 0, releasedMax: 0, history, servedHistories: new Set([history]), alive: true, stoodDown: false };
    this.secondaries.push(incarnation);
    this.standby = incarnation;
    this.network.restart(node);
    const c = this.config;
    Secondary.listen({
      sessionId: SESSION,
      verify: true,
      heartbeat: { intervalMs: HEARTBEAT_MS, missedMax: c.missedMax },
      helloTimeoutMs: 200,
      stagingBytes: 256 * 1024,
      timers: clock,
      acceptor: async (onConnection) => this.network.listen(node, onConnection),
      ...(c.journal ? { journalDir: JOURNAL_DIR, journalFs: this.diskOf(node).fsFor(clock), snapshotEveryBytes: 256 * 1024 } : {}),
      ...(c.arbiter ? { arbiter: this.witness.arbiterFor(node, clock), leaseTtlMs: c.leaseTtlMs, holder: node } : {}),
    }).then(
      (secondary) => {
        if (!incarnation.alive) return void secondary.close();
        incarnation.secondary = secondary;
        incarnation.committedMax = secondary.committedTxn;
        const previous = this.secondaries.filter((s) => s.node === node && s.id < incarnation.id && s.history === history).at(-1);
        // Nothing committed is lost across a restart with a journal: every epoch it acked was synced first.
        if (c.journal && previous !== undefined && secondary.committedTxn < previous.committedMax) {
          this.fail(`${node} restarted on its journal at txn ${secondary.committedTxn}, but had committed ${previous.committedMax}`);
        }
        secondary.on('commit', (commit: SecondaryCommit) => this.onCommit(incarnation, commit));
        // The network here loses and duplicates but never corrupts: a state that fails verification is a bug.
        secondary.on('error', (error: { code?: string; message: string }) => {
          if (error.code === 'KEMARI_VERIFY_FAILED') this.fail(`${node} failed verification: ${error.message}`);
        });
        secondary.on('promoted', (promotion: Promotion) => this.onPromoted(incarnation, promotion));
        secondary.on('stood-down', () => {
          this.trace(`${node} (secondary #${incarnation.id}) stood down at txn ${secondary.committedTxn}`);
          incarnation.stoodDown = true;
        });
      },
      (error: unknown) => this.fail(`secondary ${node} failed to start: ${String(error)}`),
    );
  }

  private startPrimary(node: string, vm: SimulatedVm, promotion: Promotion | undefined): void {
    this.trace(`${node} starts as primary of history ${this.history}${promotion === undefined ? '' : ` from txn ${promotion.txn}`}`);
    const clock = this.scheduler.clockFor(node);
    const incarnation: PrimaryIncarnation = { node, clock, vm, primary: undefined, history: this.history, peer: undefined, target: this.standby!.node, alive: true, lastCapturedTxn: 0 };
    this.primaries.push(incarnation);
    this.current = incarnation;
    const c = this.config;
    const workload = new Workload(vm, { seed: this.seed + this.primaries.length, outputEvery: 2, pagesPerStep: 3, output: (channel, data) => this.output(incarnation, channel, data) });
    clock.setInterval(() => {
      if (!vm.paused) workload.step();
    }, c.stepEveryMs);
    const options: PrimaryOptions = {
      vm,
      sessionId: SESSION,
      verify: true,
      pipelineDepth: c.pipelineDepth,
      sync: c.periodicMs === undefined ? { mode: 'event', idleIntervalMs: 20 } : { mode: 'periodic', intervalMs: c.periodicMs },
      heartbeat: { intervalMs: HEARTBEAT_MS, missedMax: c.missedMax },
      onSecondaryLoss: c.policy,
      reconnectDelayMs: c.reconnectDelayMs,
      connectTimeoutMs: 200,
      timers: clock,
      precopyStopPages: 4,
      ...(c.delta ? { delta: { cacheBytes: 16 * 4096 } } : {}),
      captureInPlace: c.inPlace,
      // Configured with its secondary's address: the node standing by when it starts (restarts come back there).
      connector: async () => {
        const target = incarnation.target;
        const connection = await this.network.connect(node, target);
        incarnation.peer = this.secondaries.filter((s) => s.node === target).at(-1);
        incarnation.peer?.servedHistories.add(incarnation.history);
        return connection;
      },
      onCapture: (capture: PrimaryCapture) => {
        this.trace(`${node} captured txn ${capture.txn}${capture.full ? ' (full)' : ''}${this.current === incarnation ? '' : ' (not the current primary)'}`);
        if (incarnation.alive) this.digests.get(incarnation.history)!.set(capture.txn, digestHex(capture.digest!));
        incarnation.lastCapturedTxn = capture.txn;
      },
      ...(c.arbiter ? { arbiter: this.witness.arbiterFor(node, clock), leaseTtlMs: c.leaseTtlMs, holder: node } : {}),
      ...(promotion?.lease === undefined ? {} : { lease: promotion.lease }),
    };
    const attempt = (): void => {
      if (!incarnation.alive) return;
      Primary.start(options).then(
        (primary) => {
          if (!incarnation.alive) return void primary.close();
          incarnation.primary = primary;
          primary.on('release', (output: ReleasedOutput) => this.onRelease(incarnation, output));
          primary.on('reprotected', (r: Reprotection) => (r.full ? (this.resynced += 1) : (this.resumed += 1)));
          // Outputs of committed epochs the old primary may not have released: the new writer releases them now.
          for (const event of promotion?.replay ?? []) this.onRelease(incarnation, { ...event, txn: 0 });
          promotion = undefined;
        },
        (error: { code?: string }) => {
          // Not protected yet (a fault during the first sync, a lease still held): try again, as an operator would.
          if (error.code === 'KEMARI_LEASE_LOST' || error.code === 'KEMARI_QUIESCED') return;
          clock.setTimeout(attempt, 50);
        },
      );
    };
    attempt();
  }

  /**
   * The guest powers itself off: the current primary stands down (a last epoch, then STAND_DOWN). Faults may make it
   * fail (then protection goes on, the VM held); once confirmed, that history must never be promoted again.
   */
  private standDown(): void {
    const incarnation = this.current;
    const primary = incarnation?.primary;
    if (incarnation === undefined || primary === undefined || !incarnation.alive) return;
    this.trace(`${incarnation.node} stands down (guest powered off)`);
    primary.standDown('guest powered off', { timeoutMs: 400 }).then(
      (stood) => {
        this.trace(`${incarnation.node} stood down at txn ${stood.txn}`);
        this.standDowns += 1;
        this.stoppedHistory = incarnation.history;
        // The standby holds the final epoch: the one the primary captured last.
        if (stood.txn !== incarnation.lastCapturedTxn) {
          this.fail(`${incarnation.node} stood down at txn ${stood.txn}, not at its last capture`);
        }
      },
      (error: { code?: string }) => this.trace(`${incarnation.node}'s stand-down failed: ${error.code}`),
    );
  }

  private output(incarnation: PrimaryIncarnation, channel: string, data: Uint8Array): void {
    const primary = incarnation.primary;
    if (primary === undefined) return; // still syncing the first time: the guest's output goes nowhere yet
    primary.tap.output(channel, data).catch(() => {});
  }

  // ---- what the roles report ----

  private onCommit(incarnation: SecondaryIncarnation, commit: SecondaryCommit): void {
    this.commits += 1;
    incarnation.committedMax = Math.max(incarnation.committedMax, commit.txn);
  }

  private onRelease(incarnation: PrimaryIncarnation, output: ReleasedOutput): void {
    this.releases += 1;
    const now = this.scheduler.now;
    // Single writer: only the holder of a live lease releases; without an arbiter, no other primary may be running.
    if (this.config.arbiter) {
      const record = this.witness.core.snapshot().find(([id]) => id === SESSION)?.[1];
      if (record === undefined || record.holder !== incarnation.node || record.expiresAtMs <= now) {
        this.fail(`${incarnation.node} released output ${output.id} without a live lease (witness: ${JSON.stringify(record)})`);
      }
    } else {
      for (const other of this.primaries) {
        if (other !== incarnation && other.alive && other.primary !== undefined && other.primary.state !== 'quiesced' && other.primary.state !== 'closed') {
          this.fail(`${incarnation.node} released output ${output.id} while ${other.node} still runs as a primary`);
        }
      }
    }
    // Output commit: an output of epoch N leaves only once the secondary it replicates to committed N.
    if (output.txn > 0) {
      const peer = incarnation.peer;
      if (peer === undefined || output.txn > peer.committedMax) {
        this.fail(`${incarnation.node} released output ${output.id} of txn ${output.txn}; its secondary committed only ${peer?.committedMax}`);
      } else {
        peer.releasedMax = Math.max(peer.releasedMax, output.txn);
      }
    }
  }

  private onPromoted(incarnation: SecondaryIncarnation, promotion: Promotion): void {
    this.trace(`${incarnation.node} (secondary #${incarnation.id}) promoted at txn ${promotion.txn}`);
    this.failovers += 1;
    // A guest that powered itself off stays off: neither the secondary that confirmed it nor any other takes over.
    if (incarnation.stoodDown) this.fail(`${incarnation.node} promoted after it confirmed a stand-down`);
    if (this.stoppedHistory === incarnation.history) this.fail(`${incarnation.node} promoted a guest of history ${incarnation.history}, which stood down`);
    const digests = this.digests.get(incarnation.history)!;
    // The resumed VM is exactly a committed epoch, and no released output came from a later one.
    const expected = digests.get(promotion.txn);
    const actual = digestHex(promotion.vm.digest());
    if (expected !== actual) this.fail(`${incarnation.node} promoted to txn ${promotion.txn} with digest ${actual}, captured ${expected}`);
    if (promotion.txn < incarnation.releasedMax) {
      this.fail(`${incarnation.node} promoted to txn ${promotion.txn}, but outputs of txn ${incarnation.releasedMax} were released`);
    }
    if (this.config.arbiter && promotion.lease === undefined) this.fail(`${incarnation.node} promoted without a lease`);
    const old = this.current;
    if (old !== undefined && !this.config.arbiter && old.alive && old.primary?.state !== 'quiesced') {
      this.fail(`${incarnation.node} promoted without an arbiter while ${old.node} had not quiesced`);
    }
    // The promoted side is the new primary (a new history); protection resumes with a fresh secondary.
    this.history += 1;
    this.digests.set(this.history, new Map([[promotion.txn, actual]]));
    incarnation.alive = false;
    this.startSecondary(this.newNode(), this.history);
    this.startPrimary(incarnation.node, promotion.vm, promotion);
  }

  // ---- the invariants checked after every step ----

  private check(): void {
    for (const s of this.secondaries) {
      const secondary = s.secondary;
      if (!s.alive || secondary === undefined || secondary.state === 'promoted' || secondary.state === 'closed') continue;
      const replica = secondary.replica;
      if (replica === undefined || !replica.hasCommittedEpoch) continue;
      // The replica is exactly one committed epoch: the state a primary it served captured for that txn.
      const actual = digestHex(replica.digest());
      const expected = [...s.servedHistories].map((h) => this.digests.get(h)?.get(replica.committedTxn));
      if (!expected.includes(actual)) this.fail(`${s.node}'s replica at txn ${replica.committedTxn} has digest ${actual}, its primaries captured ${expected.join(', ')}`);
    }
  }

  // ---- the fault plan ----

  private planFaults(durationMs: number): void {
    const r = this.rng;
    let at = 50 + r.nextInt(100);
    while (at < durationMs - 100) {
      const kind = r.nextInt(10);
      const lengthMs = 20 + r.nextInt(400);
      this.scheduler.at(at, () => this.inject(kind, lengthMs));
      at += 40 + r.nextInt(300);
    }
  }

  private inject(kind: number, lengthMs: number): void {
    const primary = this.current;
    const standby = this.standby;
    if (primary === undefined || standby === undefined) return;
    this.trace(`fault ${FAULT_NAMES[kind]} for ${lengthMs} ms (primary ${primary.node}, standby ${standby.node})`);
    const r = this.rng;
    const net = this.network;
    switch (kind) {
      case 0: {
        // A partition of the replication link, one direction or both.
        const which = r.nextInt(3);
        const links = [net.link(primary.node, standby.node), net.link(standby.node, primary.node)].filter((_, i) => which === 2 || i === which);
        for (const link of links) link.cut = true;
        this.count('partition');
        this.scheduler.at(lengthMs, () => {
          for (const link of links) link.cut = false;
        });
        return;
      }
      case 1: {
        if (!this.config.arbiter) return;
        const node = r.nextFloat() < 0.5 ? primary.node : standby.node;
        const links = [net.link(node, WITNESS_NODE), net.link(WITNESS_NODE, node)];
        for (const link of links) link.cut = true;
        this.count('witness-partition');
        this.scheduler.at(lengthMs, () => {
          for (const link of links) link.cut = false;
        });
        return;
      }
      case 2: {
        const links = [net.link(primary.node, standby.node), net.link(standby.node, primary.node)];
        for (const link of links) {
          link.lossRate = 0.02;
          link.dupRate = 0.02;
        }
        this.count('loss');
        this.scheduler.at(Math.min(lengthMs, 100), () => {
          for (const link of links) link.lossRate = link.dupRate = 0;
        });
        return;
      }
      case 3: {
        // The secondary crashes (its process, or its host) and comes back on the same disk.
        if (!standby.alive || standby.secondary === undefined) return;
        this.count('secondary-crash');
        this.crashSecondary(standby, r.nextFloat() < 0.5);
        this.scheduler.at(lengthMs, () => {
          this.restarts += 1;
          this.startSecondary(standby.node, standby.history);
        });
        return;
      }
      case 4: {
        // The primary crashes; with an arbiter the secondary takes over once the lease expires.
        if (this.failovers >= 3 || primary.primary === undefined || !primary.alive) return;
        this.count('primary-crash');
        primary.alive = false;
        primary.clock.crash();
        net.crash(primary.node, r.nextFloat() < 0.5);
        return;
      }
      case 5: {
        // A fatal fault reported from outside: quiesce and hand over at once.
        if (this.failovers >= 3 || primary.primary === undefined || !primary.alive) return;
        this.count('fatal-fault');
        void primary.primary.reportFault({ source: 'sim', severity: 'fatal', detail: 'injected' });
        return;
      }
      case 6: {
        // The primary's host hangs (SIGSTOP) and runs again later.
        if (primary.primary === undefined || !primary.alive) return;
        this.count('primary-hang');
        const untilMs = this.scheduler.now + lengthMs;
        primary.clock.frozenUntilMs = untilMs;
        net.frozen.set(primary.node, untilMs);
        return;
      }
      case 7: {
        if (!this.config.journal) return;
        const disk = this.diskOf(standby.node);
        disk.latencyMs = 5 + r.nextInt(40);
        this.count('slow-disk');
        this.scheduler.at(lengthMs, () => (disk.latencyMs = 0));
        // Often the host then dies while journal writes are in flight: what was acked must have been synced.
        if (r.nextFloat() < 0.5) {
          this.scheduler.at(r.nextInt(lengthMs), () => {
            if (this.standby !== standby || !standby.alive || standby.secondary === undefined) return;
            this.count('secondary-power-loss');
            this.crashSecondary(standby, true);
            this.scheduler.at(20 + r.nextInt(200), () => {
              this.restarts += 1;
              this.startSecondary(standby.node, standby.history);
            });
          });
        }
        return;
      }
      case 9: {
        // A superseded primary that is still alive (hung, or cut off) is pointed at the new writer's standby, as a
        // stale configuration would: the standby must refuse it once it served the newer generation.
        const stale = this.primaries.filter((p) => p !== primary && p.alive && p.primary !== undefined && p.primary.state !== 'quiesced' && p.primary.state !== 'closed');
        if (stale.length === 0) return;
        this.count('stale-primary-redirected');
        for (const p of stale) p.target = standby.node;
        return;
      }
      case 8: {
        for (const [a, b] of [[primary.node, standby.node], [standby.node, primary.node]] as const) net.link(a, b).delayMs = 5 + r.nextInt(30);
        this.count('slow-link');
        this.scheduler.at(lengthMs, () => {
          for (const [a, b] of [[primary.node, standby.node], [standby.node, primary.node]] as const) net.link(a, b).delayMs = 1;
        });
        return;
      }
    }
  }

  private crashSecondary(incarnation: SecondaryIncarnation, hostDied: boolean): void {
    incarnation.alive = false;
    incarnation.clock.crash();
    this.network.crash(incarnation.node, !hostDied);
    // A dead process leaves what it wrote in the kernel's cache; a dead host keeps only what was synced (and
    // perhaps a torn tail).
    if (hostDied) this.diskOf(incarnation.node).crash();
  }
}

/** Runs one seed; resolves with its report, rejects with the first {@link InvariantViolation}. */
export function simulate(seed: number, durationMs = 1500, trace = false): Promise<SimReport> {
  const world = new World(seed);
  world.traceOn = trace;
  return world.run(durationMs);
}
