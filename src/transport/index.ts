/**
 * Transports: the byte streams that carry replication frames (TCP, Unix sockets, mutual TLS, in-memory pairs, and
 * a fault-injecting pair for crash tests), all as one {@link Connection} interface, plus {@link connect} and
 * {@link listen}, which pick the transport from an {@link Endpoint} so configuration can name any of them.
 */
import { KemariError } from '../errors.js';
import type { Connection } from './connection.js';
import { connectTcp, listenTcp } from './tcp.js';
import type { Listener } from './tcp.js';
import { connectTls, listenTls } from './tls.js';
import type { TlsCredentials } from './tls.js';
import { connectUnix, listenUnix } from './unix.js';

export type { Connection, ConnectionEvents } from './connection.js';
export { DEFAULT_CONNECT_TIMEOUT_MS, SocketConnection } from './socket-connection.js';
export type { SocketConnectionOptions } from './socket-connection.js';
export { connectTcp, listenTcp } from './tcp.js';
export type { Listener, TcpConnectOptions, TcpListenOptions } from './tcp.js';
export { connectUnix, listenUnix } from './unix.js';
export type { UnixConnectOptions, UnixListenOptions } from './unix.js';
export { DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS, TLS_CONFIRM_BYTE, connectTls, listenTls } from './tls.js';
export type { TlsConnectOptions, TlsCredentials, TlsListenOptions } from './tls.js';
export { DEFAULT_MEMORY_HIGH_WATER_MARK_BYTES, memoryPair } from './memory.js';
export type { MemoryPairOptions } from './memory.js';
export { faultyPair } from './faulty.js';
export type { FaultyPairOptions, PairDirection } from './faulty.js';

/** Where a peer is: a TCP host and port (plain or TLS), or a Unix socket path. */
export type Endpoint = { host: string; port: number } | { path: string };

/** Client TLS settings for {@link connect}: the credentials, and optionally the name the server's certificate must carry. */
export interface ConnectTlsOptions extends TlsCredentials {
  /** The name the server's certificate must carry (and SNI). Default: the endpoint's host. */
  servername?: string;
}

/** Options for {@link connect}. */
export interface ConnectOptions {
  /** Connect with mutual TLS (host/port endpoints only). */
  tls?: ConnectTlsOptions;
  /** Aborts the connect (KEMARI_ABORTED). */
  signal?: AbortSignal;
  /** Gives up with KEMARI_CONNECT_FAILED after this long. Default 10 000 ms. */
  timeoutMs?: number;
}

/** Options for {@link listen}. */
export interface ListenOptions {
  /** Serve mutual TLS (host/port endpoints only). */
  tls?: TlsCredentials;
  /** With `tls`: told about every refused client (KEMARI_TLS_REFUSED). Never called without `tls`. */
  onRefused?: (error: KemariError) => void;
}

/**
 * Connects to an endpoint over TCP, TLS (with `options.tls`) or a Unix socket (a `path` endpoint).
 *
 * Rejects with KEMARI_INVALID_ARGUMENT for an endpoint that is neither host/port nor path, or `tls` with a path;
 * otherwise as {@link connectTcp}, {@link connectTls} or {@link connectUnix}.
 */
export async function connect(endpoint: Endpoint, options: ConnectOptions = {}): Promise<Connection> {
  const { tls, signal, timeoutMs } = options;
  const common = { ...(signal === undefined ? {} : { signal }), ...(timeoutMs === undefined ? {} : { timeoutMs }) };
  const kind = endpointKind(endpoint, tls !== undefined);
  if (kind === 'unix') return connectUnix({ path: (endpoint as { path: string }).path, ...common });
  const { host, port } = endpoint as { host: string; port: number };
  if (tls !== undefined) return connectTls({ ...tls, host, port, ...common });
  return connectTcp({ host, port, ...common });
}

/**
 * Listens on an endpoint over TCP, TLS (with `options.tls`) or a Unix socket (a `path` endpoint); `onConnection`
 * receives each accepted connection.
 *
 * Rejects with KEMARI_INVALID_ARGUMENT for an endpoint that is neither host/port nor path, or `tls` with a path;
 * otherwise as {@link listenTcp}, {@link listenTls} or {@link listenUnix}.
 */
export async function listen(
  endpoint: Endpoint,
  onConnection: (connection: Connection) => void,
  options: ListenOptions = {},
): Promise<Listener> {
  const { tls, onRefused } = options;
  const kind = endpointKind(endpoint, tls !== undefined);
  if (kind === 'unix') return listenUnix({ path: (endpoint as { path: string }).path }, onConnection);
  const { host, port } = endpoint as { host: string; port: number };
  if (tls !== undefined) return listenTls({ ca: tls.ca, cert: tls.cert, key: tls.key, host, port }, onConnection, onRefused);
  return listenTcp({ host, port }, onConnection);
}

/** Which transport an endpoint names; throws KEMARI_INVALID_ARGUMENT if none or both, or TLS with a path. */
function endpointKind(endpoint: unknown, tls: boolean): 'unix' | 'tcp' {
  if (typeof endpoint !== 'object' || endpoint === null) {
    throw new KemariError('KEMARI_INVALID_ARGUMENT', 'an endpoint must be { host, port } or { path }', { details: { endpoint } });
  }
  const hasPath = 'path' in endpoint;
  const hasHost = 'host' in endpoint || 'port' in endpoint;
  if (hasPath === hasHost) {
    throw new KemariError('KEMARI_INVALID_ARGUMENT', 'an endpoint must have either host and port or a path', {
      details: { keys: Object.keys(endpoint) },
    });
  }
  if (hasPath && tls) {
    throw new KemariError('KEMARI_INVALID_ARGUMENT', 'TLS needs a host/port endpoint, not a Unix socket path', {
      details: { path: (endpoint as { path: unknown }).path },
    });
  }
  return hasPath ? 'unix' : 'tcp';
}
