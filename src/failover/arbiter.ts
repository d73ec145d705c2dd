/**
 * Arbiters decide who may write (invariant 4, single writer). A side releases output, or promotes itself, only
 * while it holds the lease of its session; every grant carries a generation number that only grows, so an old
 * holder that wakes up (a SIGSTOPped host, a healed partition) finds its generation superseded and quiesces,
 * as VMware FT does with its generation file.
 */

/** A granted lease. */
export interface Lease {
  /** The replication session the lease is for. */
  sessionId: string;
  /** Who holds it (e.g. 'primary:host-a'). */
  holder: string;
  /** Grows by one with every grant to a new holder; renewals keep it. */
  generation: number;
  /** How long the lease lasts after its grant or last renewal, in milliseconds. */
  ttlMs: number;
}

/** The arbiter contract: a lease per session, granted to one holder at a time. */
export interface Arbiter {
  /**
   * Grants the session's lease to `holder` when nobody holds it (or its holder let it expire); resolves with the
   * lease, or with undefined when another holder has it. A holder that already holds it gets it renewed.
   */
  acquire(sessionId: string, holder: string, ttlMs: number): Promise<Lease | undefined>;
  /** Extends a held lease; resolves with undefined when it was lost (expired and taken, or superseded). */
  renew(lease: Lease): Promise<Lease | undefined>;
  /** Gives the lease up (a clean shutdown), so the other side need not wait for it to expire. */
  release(lease: Lease): Promise<void>;
  /** Closes the arbiter's connections. */
  close(): Promise<void>;
}
