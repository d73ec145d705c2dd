/**
 * Argument helpers shared by the `kemari` subcommands: endpoints, numbers and arbiters from the command line, with
 * errors that say which flag was wrong (KEMARI_INVALID_ARGUMENT), so a typo fails before anything starts.
 */
import { KemariError } from '../errors.js';
import type { Arbiter } from '../failover/arbiter.js';
import { EtcdArbiter } from '../failover/etcd-arbiter.js';
import { WitnessArbiter } from '../failover/witness-arbiter.js';
import type { Endpoint } from '../transport/index.js';

/** `host:port` (TCP) or an absolute path (a unix socket). */
export function parseEndpoint(flag: string, value: string | undefined): Endpoint {
  if (value === undefined || value.length === 0) throw new KemariError('KEMARI_INVALID_ARGUMENT', `--${flag} is required (host:port or /path/to.sock)`);
  if (value.startsWith('/')) return { path: value };
  const at = value.lastIndexOf(':');
  const port = Number(value.slice(at + 1));
  if (at <= 0 || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new KemariError('KEMARI_INVALID_ARGUMENT', `--${flag} must be host:port or an absolute socket path, not ${JSON.stringify(value)}`);
  }
  return { host: value.slice(0, at).replace(/^\[(.*)\]$/, '$1'), port };
}

/** A non-negative integer flag, or its default. */
export function parseCount(flag: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 0) throw new KemariError('KEMARI_INVALID_ARGUMENT', `--${flag} must be a non-negative integer, not ${JSON.stringify(value)}`);
  return n;
}

/** The arbiter named by `--witness host:port` or `--etcd host:port[,host:port...]`, if any. */
export async function arbiterFrom(values: { witness?: string | undefined; etcd?: string | undefined }): Promise<Arbiter | undefined> {
  if (values.witness !== undefined && values.etcd !== undefined) throw new KemariError('KEMARI_INVALID_ARGUMENT', 'give --witness or --etcd, not both');
  if (values.witness !== undefined) {
    const endpoint = parseEndpoint('witness', values.witness);
    if (!('port' in endpoint)) throw new KemariError('KEMARI_INVALID_ARGUMENT', '--witness must be host:port');
    return WitnessArbiter.connect({ host: endpoint.host, port: endpoint.port });
  }
  if (values.etcd !== undefined) return new EtcdArbiter({ hosts: values.etcd.split(',') });
  return undefined;
}

/** The checkpoint policy from `--sync event` or `--sync periodic:MS`. */
export function parseSync(value: string | undefined): { mode: 'event' } | { mode: 'periodic'; intervalMs: number } {
  if (value === undefined || value === 'event') return { mode: 'event' };
  const match = /^periodic:(\d+)$/.exec(value);
  if (match === null) throw new KemariError('KEMARI_INVALID_ARGUMENT', `--sync must be 'event' or 'periodic:MS', not ${JSON.stringify(value)}`);
  return { mode: 'periodic', intervalMs: Number(match[1]) };
}
