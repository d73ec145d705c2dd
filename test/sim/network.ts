/**
 * The simulation's network: byte-stream connections between named nodes, delivered by the {@link Scheduler} with
 * seeded delays, in order per direction, through links that can lose or duplicate whole writes and be partitioned
 * in either direction. A crashed node's connections go dead: writes vanish and nothing reaches it; its peers hear
 * either a reset (a crashed process on a live host) or nothing at all (a dead or hung host).
 */
import { EventEmitter } from 'node:events';
import { KemariError } from '../../src/errors.js';
import type { Connection, ConnectionEvents } from '../../src/transport/connection.js';
import type { Prng } from '../../src/vm/prng.js';
import type { Scheduler } from './scheduler.js';

/** How one direction between two nodes behaves. */
export interface LinkState {
  /** Writes are dropped (a partition of this direction). */
  cut: boolean;
  /** Probability that a write is lost. */
  lossRate: number;
  /** Probability that a write is delivered twice. */
  dupRate: number;
  delayMs: number;
  jitterMs: number;
  /** When the last write in this direction is delivered (deliveries stay in order). */
  lastAtMs: number;
}

/** Counts of what the network did, for the run's report. */
export interface NetworkCounters {
  delivered: number;
  lost: number;
  duplicated: number;
  cutDrops: number;
  connections: number;
}

export class SimNetwork {
  private readonly links = new Map<string, LinkState>();
  private readonly listeners = new Map<string, (connection: Connection) => void>();
  private readonly down = new Set<string>();
  private readonly ends = new Set<SimEnd>();
  /** Hung nodes and when they run again. */
  readonly frozen = new Map<string, number>();
  readonly counters: NetworkCounters = { delivered: 0, lost: 0, duplicated: 0, cutDrops: 0, connections: 0 };

  constructor(
    readonly scheduler: Scheduler,
    private readonly rng: Prng,
  ) {}

  /** The state of the `from` → `to` direction (created with defaults on first use). */
  link(from: string, to: string): LinkState {
    const key = `${from}>${to}`;
    let link = this.links.get(key);
    if (link === undefined) {
      link = { cut: false, lossRate: 0, dupRate: 0, delayMs: 1, jitterMs: 2, lastAtMs: 0 };
      this.links.set(key, link);
    }
    return link;
  }

  /** True when both directions between the nodes carry traffic and both nodes are up. */
  reachable(a: string, b: string): boolean {
    return !this.down.has(a) && !this.down.has(b) && !this.link(a, b).cut && !this.link(b, a).cut;
  }

  /** The delay of one message from `from` to `to`, in order after the previous one. */
  delayOf(from: string, to: string): number {
    const link = this.link(from, to);
    const atMs = Math.max(this.scheduler.now + link.delayMs + this.rng.nextFloat() * link.jitterMs, link.lastAtMs);
    link.lastAtMs = atMs;
    return atMs - this.scheduler.now;
  }

  /** Runs `fn` on `node` in `delayMs`: later if the node is hung then, never if it is down. */
  runOn(node: string, delayMs: number, fn: () => void): void {
    const attempt = (): void => {
      if (this.down.has(node)) return;
      const thawMs = this.frozen.get(node) ?? 0;
      if (thawMs > this.scheduler.now) {
        this.scheduler.at(thawMs - this.scheduler.now, attempt);
        return;
      }
      fn();
    };
    this.scheduler.at(delayMs, attempt);
  }

  /** `node` accepts connections with `onConnection` until the returned close. */
  listen(node: string, onConnection: (connection: Connection) => void): { close(): Promise<void> } {
    this.listeners.set(node, onConnection);
    return {
      close: async () => {
        if (this.listeners.get(node) === onConnection) this.listeners.delete(node);
      },
    };
  }

  /** Opens a connection from `from` to `to`: refused when nobody listens, times out when the path is cut. */
  connect(from: string, to: string, timeoutMs = 200): Promise<Connection> {
    return new Promise((resolve, reject) => {
      const fail = (message: string) => reject(new KemariError('KEMARI_CONNECT_FAILED', message, { details: { from, to } }));
      if (!this.reachable(from, to)) {
        this.scheduler.at(timeoutMs, () => fail(`${to} unreachable from ${from}`));
        return;
      }
      const rtt = this.delayOf(from, to) + this.delayOf(to, from);
      this.scheduler.at(rtt, () => {
        const accept = this.listeners.get(to);
        if (this.down.has(from)) return; // the dialer crashed meanwhile: nobody waits for this
        if (accept === undefined || this.down.has(to)) return fail(`${to} refused the connection`);
        const a = new SimEnd(this, from, to);
        const b = new SimEnd(this, to, from);
        a.other = b;
        b.other = a;
        this.ends.add(a);
        this.ends.add(b);
        this.counters.connections += 1;
        accept(b);
        resolve(a);
      });
    });
  }

  /** Carries one write from `end` to its other end. */
  send(end: SimEnd, bytes: Uint8Array): void {
    if (this.down.has(end.node)) return;
    const link = this.link(end.node, end.remote);
    if (link.cut) {
      this.counters.cutDrops += 1;
      return;
    }
    if (this.rng.nextFloat() < link.lossRate) {
      this.counters.lost += 1;
      return;
    }
    const copies = this.rng.nextFloat() < link.dupRate ? 2 : 1;
    if (copies === 2) this.counters.duplicated += 1;
    for (let i = 0; i < copies; i++) {
      const delayMs = this.delayOf(end.node, end.remote);
      // A hung node reads nothing until it runs again; the bytes wait in its socket buffer, in order.
      this.runOn(end.remote, delayMs, () => {
        const to = end.other;
        if (to.isClosed) return;
        this.counters.delivered += 1;
        to.emitter.emit('data', Uint8Array.from(bytes));
      });
    }
  }

  /** The close of `end` reaches its other end (a FIN, or a reset), unless the path is cut or the peer is down. */
  sendClose(end: SimEnd, error: KemariError | undefined): void {
    if (this.down.has(end.node) || this.link(end.node, end.remote).cut) return;
    this.runOn(end.remote, this.delayOf(end.node, end.remote), () => {
      const to = end.other;
      to.closeLocally(error === undefined ? undefined : new KemariError('KEMARI_CONNECTION_CLOSED', 'the peer reset the connection', { cause: error }));
    });
  }

  /**
   * `node` stops. Its connections go dead; with `reset`, its peers see them closed (the process died, the host's
   * kernel answers), without it they hear nothing (the host died or hangs).
   */
  crash(node: string, reset: boolean): void {
    this.listeners.delete(node);
    for (const end of this.ends) {
      if (end.node !== node || end.isClosed) continue;
      if (reset) {
        const other = end.other;
        this.runOn(other.node, this.delayOf(node, end.remote), () => other.closeLocally(new KemariError('KEMARI_CONNECTION_CLOSED', `${node} reset the connection`)));
      }
      end.isClosed = true;
      this.ends.delete(end);
    }
    this.down.add(node);
  }

  /** `node` is back (a restarted process): it may listen and connect again. */
  restart(node: string): void {
    this.down.delete(node);
  }

  forget(end: SimEnd): void {
    this.ends.delete(end);
  }
}

/** One end of a simulated connection. */
export class SimEnd implements Connection {
  readonly emitter = new EventEmitter();
  other!: SimEnd;
  isClosed = false;

  constructor(
    private readonly network: SimNetwork,
    readonly node: string,
    readonly remote: string,
  ) {}

  get peer(): string {
    return this.remote;
  }

  get bufferedBytes(): number {
    return 0;
  }

  get closed(): boolean {
    return this.isClosed;
  }

  write(chunks: readonly Uint8Array[]): boolean {
    if (this.isClosed) return false;
    const bytes = Buffer.concat(chunks.map((c) => Buffer.from(c.buffer, c.byteOffset, c.byteLength)));
    if (bytes.byteLength > 0) this.network.send(this, new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength));
    return true;
  }

  close(error?: KemariError): void {
    if (this.isClosed) return;
    this.network.sendClose(this, error);
    this.closeLocally(error);
  }

  /** Closes this end and tells its listeners, in a later step. */
  closeLocally(error: KemariError | undefined): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.network.forget(this);
    this.network.runOn(this.node, 0, () => this.emitter.emit('close', error));
  }

  on<E extends keyof ConnectionEvents>(event: E, listener: ConnectionEvents[E]): this {
    this.emitter.on(event, listener);
    return this;
  }

  off<E extends keyof ConnectionEvents>(event: E, listener: ConnectionEvents[E]): this {
    this.emitter.off(event, listener);
    return this;
  }
}
