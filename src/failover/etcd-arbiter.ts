/**
 * An {@link Arbiter} backed by etcd: the lease of a session is the key `<prefix>/<sessionId>`, created (only if
 * absent, in one etcd transaction) with the holder's name and bound to an etcd lease of the requested ttl.
 *
 * - generation: the key's create_revision, which etcd only ever increases, so every new grant has a higher
 *   generation than any before it, across holders and restarts;
 * - renew: the key must still exist with this holder and this create_revision; then its etcd lease is kept alive
 *   (by lease id, so a lease adopted by another process, e.g. a promoted secondary's, renews too);
 * - release: revokes the etcd lease, which deletes the key at once.
 * etcd rounds ttls up to whole seconds and to its own minimum; a longer real ttl only makes the holder's own
 * (shorter) view of its lease more conservative. Any etcd error or a call slower than `timeoutMs` is
 * KEMARI_ARBITER_UNAVAILABLE.
 */
import { once } from 'node:events';
import { Etcd3 } from 'etcd3';
import { KemariError } from '../errors.js';
import type { Arbiter, Lease } from './arbiter.js';

/** Options of {@link EtcdArbiter}. */
export interface EtcdArbiterOptions {
  /** etcd endpoints, e.g. ['127.0.0.1:2379']. */
  hosts: string[];
  /** Key prefix. Default 'kemari/lease'. */
  prefix?: string;
  /** Longest an etcd call may take. Default 1000 ms. */
  timeoutMs?: number;
}

interface KeyState {
  holder: string;
  createRevision: number;
  leaseId: string;
}

export class EtcdArbiter implements Arbiter {
  private readonly client: Etcd3;
  private readonly prefix: string;
  private readonly timeoutMs: number;

  constructor(options: EtcdArbiterOptions) {
    if (!Array.isArray(options.hosts) || options.hosts.length === 0) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', 'EtcdArbiter needs at least one host');
    }
    this.client = new Etcd3({ hosts: options.hosts, dialTimeout: options.timeoutMs ?? 1000 });
    this.prefix = options.prefix ?? 'kemari/lease';
    this.timeoutMs = options.timeoutMs ?? 1000;
  }

  async acquire(sessionId: string, holder: string, ttlMs: number): Promise<Lease | undefined> {
    const key = this.key(sessionId);
    return this.call('acquire', async () => {
      const current = await this.read(key);
      if (current !== undefined) {
        if (current.holder !== holder) return undefined;
        const lease: Lease = { sessionId, holder, generation: current.createRevision, ttlMs };
        return (await this.keepAlive(current.leaseId)) ? lease : undefined;
      }
      const grant = await this.client.leaseClient.leaseGrant({ TTL: Math.max(1, Math.ceil(ttlMs / 1000)), ID: 0 });
      const result = await this.client.if(key, 'Create', '==', 0).then(this.client.put(key).value(holder).lease(grant.ID)).commit();
      if (!result.succeeded) {
        await this.client.leaseClient.leaseRevoke({ ID: grant.ID }).catch(() => {});
        return undefined;
      }
      const created = await this.read(key);
      if (created === undefined || created.holder !== holder) return undefined;
      return { sessionId, holder, generation: created.createRevision, ttlMs };
    });
  }

  async renew(lease: Lease): Promise<Lease | undefined> {
    return this.call('renew', async () => {
      const current = await this.read(this.key(lease.sessionId));
      if (current === undefined || current.holder !== lease.holder || current.createRevision !== lease.generation) return undefined;
      return (await this.keepAlive(current.leaseId)) ? { ...lease } : undefined;
    });
  }

  async release(lease: Lease): Promise<void> {
    await this.call('release', async () => {
      const current = await this.read(this.key(lease.sessionId));
      if (current !== undefined && current.holder === lease.holder && current.createRevision === lease.generation) {
        await this.client.leaseClient.leaseRevoke({ ID: current.leaseId });
      }
    });
  }

  async close(): Promise<void> {
    this.client.close();
  }

  private key(sessionId: string): string {
    return `${this.prefix}/${sessionId}`;
  }

  private async read(key: string): Promise<KeyState | undefined> {
    const response = await this.client.get(key).exec();
    const kv = response.kvs[0];
    if (kv === undefined) return undefined;
    return { holder: kv.value.toString(), createRevision: Number(kv.create_revision), leaseId: String(kv.lease) };
  }

  /** Keeps an etcd lease alive once, by id; false when etcd says it has expired. */
  private async keepAlive(leaseId: string): Promise<boolean> {
    const stream = await this.client.leaseClient.leaseKeepAlive();
    try {
      stream.write({ ID: leaseId });
      const [response] = (await once(stream as unknown as NodeJS.EventEmitter, 'data')) as [{ TTL: string }];
      return Number(response.TTL) > 0;
    } finally {
      stream.end();
    }
  }

  private async call<T>(what: string, op: () => Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => reject(new KemariError('KEMARI_ARBITER_UNAVAILABLE', `etcd did not answer ${what} within ${this.timeoutMs} ms`)), this.timeoutMs);
    });
    try {
      return await Promise.race([op(), timeout]);
    } catch (error) {
      if (error instanceof KemariError) throw error;
      throw new KemariError('KEMARI_ARBITER_UNAVAILABLE', `etcd failed to ${what}: ${(error as Error).message}`, { cause: error });
    } finally {
      clearTimeout(timer);
    }
  }
}
