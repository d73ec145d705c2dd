/**
 * Heartbeat failure detection, sans I/O: the driver reports when it heard from the peer on each path and asks,
 * at any time, what to conclude. Time is a number of milliseconds the driver passes in, never read here.
 *
 * A peer is suspected on a path when nothing arrived on it for `intervalMs * missedMax`. The replication link and
 * an optional second, independent path (e.g. a separate heartbeat connection or the arbiter) are judged apart,
 * so that a broken replication link is not mistaken for a dead host:
 * - both paths quiet (or the link quiet and no second path configured): `dead`;
 * - only the link quiet: `link-down`: the peer runs but cannot replicate; nobody may promote on that alone.
 */
import { KemariError } from '../errors.js';

/** What the detector concludes about the peer. */
export type PeerVerdict = 'alive' | 'link-down' | 'dead';

/** Options of a {@link FailureDetector}. */
export interface FailureDetectorOptions {
  /** How often heartbeats are sent. */
  intervalMs: number;
  /** How many intervals may pass without a word before the peer is suspected on a path. */
  missedMax: number;
  /** Whether a second path exists (without one, a quiet link means a dead peer). */
  secondPath?: boolean;
  /** The time the detector starts at; the peer counts as heard then. */
  nowMs: number;
}

export class FailureDetector {
  readonly intervalMs: number;
  readonly missedMax: number;
  private readonly secondPath: boolean;
  private lastLinkMs: number;
  private lastSecondMs: number;
  private lastSentMs: number;

  constructor(options: FailureDetectorOptions) {
    if (!(options.intervalMs > 0) || !Number.isFinite(options.intervalMs)) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', 'heartbeat intervalMs must be a positive number', { details: { intervalMs: options.intervalMs } });
    }
    if (!Number.isInteger(options.missedMax) || options.missedMax < 1) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', 'heartbeat missedMax must be an integer >= 1', { details: { missedMax: options.missedMax } });
    }
    this.intervalMs = options.intervalMs;
    this.missedMax = options.missedMax;
    this.secondPath = options.secondPath === true;
    this.lastLinkMs = options.nowMs;
    this.lastSecondMs = options.nowMs;
    this.lastSentMs = Number.NEGATIVE_INFINITY;
    this.lastTickMs = options.nowMs;
  }

  /** How long a path may stay quiet before the peer is suspected on it. */
  get timeoutMs(): number {
    return this.intervalMs * this.missedMax;
  }

  /** Something (any bytes) arrived from the peer on the replication link. */
  heardOnLink(nowMs: number): void {
    if (nowMs > this.lastLinkMs) this.lastLinkMs = nowMs;
  }

  /** Something arrived from the peer on the second path. */
  heardOnSecondPath(nowMs: number): void {
    if (nowMs > this.lastSecondMs) this.lastSecondMs = nowMs;
  }

  /** The verdict at `nowMs`. */
  verdict(nowMs: number): PeerVerdict {
    const linkQuiet = nowMs - this.lastLinkMs >= this.timeoutMs;
    if (!linkQuiet) return 'alive';
    if (!this.secondPath) return 'dead';
    return nowMs - this.lastSecondMs >= this.timeoutMs ? 'dead' : 'link-down';
  }

  /**
   * The driver's timer fired at `nowMs`. A tick much later than scheduled means this side was stalled (a long
   * synchronous step, a paused process): the peer's bytes may be waiting unread in the socket, so its silence is
   * not counted against it; it gets a full timeout from now.
   */
  ticked(nowMs: number): void {
    if (nowMs - this.lastTickMs > 2 * this.intervalMs) {
      this.lastLinkMs = Math.max(this.lastLinkMs, nowMs);
      this.lastSecondMs = Math.max(this.lastSecondMs, nowMs);
    }
    this.lastTickMs = nowMs;
  }

  private lastTickMs: number;

  /** Is a heartbeat due at `nowMs`? */
  heartbeatDue(nowMs: number): boolean {
    return nowMs - this.lastSentMs >= this.intervalMs;
  }

  /** A heartbeat was sent at `nowMs`. */
  sent(nowMs: number): void {
    this.lastSentMs = nowMs;
  }

  /** When the driver should look again: the next heartbeat or the next possible change of verdict. */
  nextCheckMs(nowMs: number): number {
    const nextBeat = this.lastSentMs + this.intervalMs;
    const linkDeadline = this.lastLinkMs + this.timeoutMs;
    const secondDeadline = this.secondPath ? this.lastSecondMs + this.timeoutMs : Number.POSITIVE_INFINITY;
    const candidates = [nextBeat, linkDeadline, secondDeadline].filter((t) => t > nowMs);
    return candidates.length === 0 ? nowMs + this.intervalMs : Math.min(...candidates);
  }
}
