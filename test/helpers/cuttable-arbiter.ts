/** An Arbiter wrapper whose holder can be cut off from the arbiter: while cut, calls never answer (a partition). */
import { KemariError } from '../../src/errors.js';
import type { Arbiter, Lease } from '../../src/failover/arbiter.js';

export class CuttableArbiter implements Arbiter {
  cut = false;

  constructor(private readonly inner: Arbiter) {}

  private call<T>(f: () => Promise<T>): Promise<T> {
    if (!this.cut) return f();
    return new Promise((_resolve, reject) => setTimeout(() => reject(new KemariError('KEMARI_ARBITER_UNAVAILABLE', 'cut off')), 200));
  }

  acquire(sessionId: string, holder: string, ttlMs: number): Promise<Lease | undefined> {
    return this.call(() => this.inner.acquire(sessionId, holder, ttlMs));
  }

  renew(lease: Lease): Promise<Lease | undefined> {
    return this.call(() => this.inner.renew(lease));
  }

  release(lease: Lease): Promise<void> {
    return this.call(() => this.inner.release(lease));
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
