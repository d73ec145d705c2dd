/**
 * Holds a lease from an {@link Arbiter}: acquires it, renews it every third of its ttl, and says at any moment
 * whether the holder may act as the writer.
 *
 * Validity is judged conservatively on the holder's own clock: a renewal sent at time t keeps the lease valid
 * until t + 90% of the ttl (the witness counts from when it received the request, which is later; the 10% absorbs
 * clock-rate differences). A renewal the arbiter does not answer changes nothing, so validity lapses and the
 * holder stops acting as writer until a renewal gets through; a renewal answered "lost" (superseded) is final.
 */
import { KemariError } from '../errors.js';
import type { Arbiter, Lease } from './arbiter.js';
import type { TimerHandle, Timers } from '../time/timers.js';

/** Share of the ttl a granted or renewed lease is trusted for, on the holder's clock. */
export const LEASE_TRUST_FRACTION = 0.9;

export class LeaseKeeper {
  private lease: Lease | undefined;
  private validUntilMs = Number.NEGATIVE_INFINITY;
  private timer: TimerHandle | undefined;
  private lost = false;

  constructor(
    private readonly arbiter: Arbiter,
    private readonly sessionId: string,
    private readonly holder: string,
    readonly ttlMs: number,
    private readonly timers: Timers,
  ) {}

  /** The lease held (undefined before it is acquired, or after it was lost). */
  get current(): Lease | undefined {
    return this.lease;
  }

  /** True when the lease is held and trusted at `nowMs`. */
  holds(nowMs: number): boolean {
    return this.lease !== undefined && !this.lost && nowMs < this.validUntilMs;
  }

  /** Acquires the lease, or adopts `lease` (a promoted secondary's) by renewing it. Throws KEMARI_LEASE_DENIED. */
  async acquire(adopt?: Lease): Promise<Lease> {
    const sentMs = this.timers.now();
    const lease = adopt !== undefined ? await this.arbiter.renew(adopt) : await this.arbiter.acquire(this.sessionId, this.holder, this.ttlMs);
    if (lease === undefined) {
      throw new KemariError('KEMARI_LEASE_DENIED', `the lease of session ${this.sessionId} is held by another holder`, { details: { sessionId: this.sessionId } });
    }
    this.lease = lease;
    this.validUntilMs = sentMs + this.ttlMs * LEASE_TRUST_FRACTION;
    return lease;
  }

  /** Renews every ttl/3; `onRenewed` after each renewal that got through, `onLost` once if the lease is superseded. */
  start(onRenewed: () => void, onLost: (error: KemariError) => void): void {
    this.stop();
    this.timer = this.timers.setInterval(() => {
      const lease = this.lease;
      if (lease === undefined || this.lost) return;
      const sentMs = this.timers.now();
      this.arbiter.renew(lease).then(
        (renewed) => {
          if (this.lost || this.lease !== lease) return;
          if (renewed === undefined) {
            this.lost = true;
            this.stop();
            onLost(new KemariError('KEMARI_LEASE_LOST', `the lease of session ${lease.sessionId} (generation ${lease.generation}) was superseded`, { details: { ...lease } }));
            return;
          }
          this.validUntilMs = Math.max(this.validUntilMs, sentMs + this.ttlMs * LEASE_TRUST_FRACTION);
          onRenewed();
        },
        () => {
          // Unanswered: validity lapses on its own; the next tick tries again.
        },
      );
    }, Math.max(1, Math.floor(this.ttlMs / 3)));
  }

  /** Stops renewing (the lease lapses at its time). */
  stop(): void {
    this.timers.clear(this.timer);
    this.timer = undefined;
  }

  /** Stops renewing and gives the lease back, so the other side need not wait for it to expire. */
  async release(): Promise<void> {
    this.stop();
    const lease = this.lease;
    this.lease = undefined;
    if (lease !== undefined) await this.arbiter.release(lease).catch(() => {});
  }
}
