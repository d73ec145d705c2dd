/**
 * The witness's decisions, sans I/O: a table of leases, one per session, and the rules for granting them. Time is
 * passed in. The generation of each session only grows, and the table is what the witness persists (its
 * "generation file"), so a restarted witness never grants a generation twice.
 *
 * Rules, for a session:
 * - acquire by the current holder of an unexpired lease: renewed (same generation);
 * - acquire when nobody holds it, or its lease expired: granted to the asker with generation + 1;
 * - acquire while another holder's lease runs: refused;
 * - renew with the current holder and generation of an unexpired lease: extended; anything else: lost;
 * - release by the current holder and generation: the lease expires now (the generation stays).
 */
import { KemariError } from '../errors.js';
import type { Lease } from './arbiter.js';

/** One session's row. */
export interface LeaseRecord {
  holder: string;
  generation: number;
  ttlMs: number;
  expiresAtMs: number;
}

/** Bounds, so a hostile client cannot grow the table or hold leases forever. */
export interface WitnessLimits {
  sessionsMax: number;
  ttlMsMax: number;
  nameBytesMax: number;
}

export const DEFAULT_WITNESS_LIMITS: WitnessLimits = { sessionsMax: 4096, ttlMsMax: 60_000, nameBytesMax: 255 };

export class WitnessCore {
  private readonly leases = new Map<string, LeaseRecord>();
  private grants = 0;

  /** New generations granted so far: what must be persisted before a reply leaves. */
  get grantCount(): number {
    return this.grants;
  }

  constructor(
    private readonly limits: WitnessLimits = DEFAULT_WITNESS_LIMITS,
    initial: Iterable<[string, LeaseRecord]> = [],
  ) {
    for (const [sessionId, record] of initial) this.leases.set(sessionId, { ...record });
  }

  /** The table, for persistence. */
  snapshot(): Array<[string, LeaseRecord]> {
    return [...this.leases].map(([id, r]) => [id, { ...r }]);
  }

  acquire(sessionId: string, holder: string, ttlMs: number, nowMs: number): Lease | undefined {
    this.check(sessionId, holder, ttlMs);
    const current = this.leases.get(sessionId);
    if (current !== undefined && current.expiresAtMs > nowMs) {
      if (current.holder !== holder) return undefined;
      current.ttlMs = ttlMs;
      current.expiresAtMs = nowMs + ttlMs;
      return { sessionId, holder, generation: current.generation, ttlMs };
    }
    if (current === undefined && this.leases.size >= this.limits.sessionsMax) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', `the witness holds its maximum of ${this.limits.sessionsMax} sessions`);
    }
    const generation = (current?.generation ?? 0) + 1;
    this.grants += 1;
    this.leases.set(sessionId, { holder, generation, ttlMs, expiresAtMs: nowMs + ttlMs });
    return { sessionId, holder, generation, ttlMs };
  }

  renew(lease: Lease, nowMs: number): Lease | undefined {
    this.check(lease.sessionId, lease.holder, lease.ttlMs);
    const current = this.leases.get(lease.sessionId);
    if (current === undefined || current.holder !== lease.holder || current.generation !== lease.generation || current.expiresAtMs <= nowMs) {
      return undefined;
    }
    current.ttlMs = lease.ttlMs;
    current.expiresAtMs = nowMs + lease.ttlMs;
    return { ...lease };
  }

  release(lease: Lease, nowMs: number): void {
    const current = this.leases.get(lease.sessionId);
    if (current !== undefined && current.holder === lease.holder && current.generation === lease.generation) {
      current.expiresAtMs = Math.min(current.expiresAtMs, nowMs);
    }
  }

  private check(sessionId: string, holder: string, ttlMs: number): void {
    const { nameBytesMax, ttlMsMax } = this.limits;
    for (const [field, value] of [['sessionId', sessionId], ['holder', holder]] as const) {
      if (typeof value !== 'string' || value.length === 0 || Buffer.byteLength(value) > nameBytesMax) {
        throw new KemariError('KEMARI_INVALID_ARGUMENT', `${field} must be a string of 1..${nameBytesMax} bytes`, { details: { field } });
      }
    }
    if (!Number.isSafeInteger(ttlMs) || ttlMs <= 0 || ttlMs > ttlMsMax) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', `ttlMs must be an integer in [1, ${ttlMsMax}]`, { details: { ttlMs } });
    }
  }
}
