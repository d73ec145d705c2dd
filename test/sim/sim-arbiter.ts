/**
 * The witness in the simulation: one {@link WitnessCore} on its own node, reached over the simulated network. A
 * request travels to the witness (a seeded delay), is decided there on virtual time, and the answer travels back;
 * when the path is cut either way, or the witness is down, the caller hears nothing and its request fails with
 * KEMARI_ARBITER_UNAVAILABLE after `timeoutMs` (the request itself may still have been granted, as on a real
 * network).
 */
import { KemariError } from '../../src/errors.js';
import type { Arbiter, Lease } from '../../src/failover/arbiter.js';
import { WitnessCore } from '../../src/failover/witness-core.js';
import type { SimNetwork } from './network.js';
import type { NodeClock } from './scheduler.js';

export const WITNESS_NODE = 'witness';

export class SimWitness {
  readonly core = new WitnessCore();

  constructor(private readonly network: SimNetwork) {}

  /** An Arbiter for `node`, on that node's clock. */
  arbiterFor(node: string, clock: NodeClock, timeoutMs = 100): Arbiter {
    const call = <T>(decide: (nowMs: number) => T): Promise<T> =>
      new Promise<T>((resolve, reject) => {
        let answered = false;
        clock.setTimeout(() => {
          if (!answered) reject(new KemariError('KEMARI_ARBITER_UNAVAILABLE', `the witness did not answer ${node} within ${timeoutMs} ms`));
          answered = true;
        }, timeoutMs);
        if (!this.network.reachable(node, WITNESS_NODE)) return;
        this.network.scheduler.at(this.network.delayOf(node, WITNESS_NODE), () => {
          if (!this.network.reachable(node, WITNESS_NODE)) return;
          const result = decide(this.network.scheduler.now);
          this.network.scheduler.at(this.network.delayOf(WITNESS_NODE, node), () => {
            if (answered || clock.crashed || !this.network.reachable(node, WITNESS_NODE)) return;
            answered = true;
            resolve(result);
          });
        });
      });
    return {
      acquire: (sessionId, holder, ttlMs) => call((nowMs) => this.core.acquire(sessionId, holder, ttlMs, nowMs)),
      renew: (lease: Lease) => call((nowMs) => this.core.renew(lease, nowMs)),
      release: (lease: Lease) => call((nowMs) => this.core.release(lease, nowMs)),
      close: async () => {},
    };
  }
}
