/**
 * Plain TCP transport: `connectTcp` for the primary, `listenTcp` for the secondary, and the {@link Listener} every
 * socket transport returns (the Unix socket and TLS transports reuse {@link SocketListener}).
 *
 * Plain TCP carries replication in the clear and authenticates nobody: use it on a dedicated link or loopback,
 * and TLS (see `tls.ts`) anywhere else.
 */
import { createConnection, createServer } from 'node:net';
import type { AddressInfo, ListenOptions, Server, Socket } from 'node:net';
import { KemariError } from '../errors.js';
import type { Connection } from './connection.js';
import { SocketConnection, establishConnection, formatHostPort } from './socket-connection.js';

/** Where {@link connectTcp} connects, and how long it may take. */
export interface TcpConnectOptions {
  /** Host name or IP address of the listener. */
  host: string;
  /** TCP port of the listener (1 to 65535). */
  port: number;
  /** Aborts the connect: the promise rejects with KEMARI_ABORTED. It has no effect once connected. */
  signal?: AbortSignal;
  /** Gives up with KEMARI_CONNECT_FAILED after this long. Default 10 000 ms. */
  timeoutMs?: number;
}

/** Where {@link listenTcp} listens. */
export interface TcpListenOptions {
  /** Address to bind, e.g. "127.0.0.1", "::" or "0.0.0.0". */
  host: string;
  /** Port to bind; 0 picks a free one (read it back from {@link Listener.port}). */
  port: number;
}

/** A listening server of any socket transport: what it is bound to, and how to stop it. */
export interface Listener {
  /** The bound TCP port (the one picked when 0 was asked for); 0 for Unix sockets. */
  readonly port: number;
  /** The bound address (IP address, or the socket path for Unix sockets). */
  readonly address: string;
  /**
   * Stops accepting, closes every connection this listener handed out (each emits 'close' with
   * KEMARI_CONNECTION_CLOSED) and drops handshakes in progress. Resolves when the server is fully closed.
   * Idempotent: later calls return the same promise.
   */
  close(): Promise<void>;
}

/**
 * Connects to a TCP listener. Resolves with the connection once the TCP handshake completed.
 *
 * Rejects with KEMARI_INVALID_ARGUMENT for a bad host, port or timeout, KEMARI_CONNECT_FAILED when the connection is
 * refused, unreachable or not established within `timeoutMs`, and KEMARI_ABORTED when `signal` fires first.
 */
export async function connectTcp(options: TcpConnectOptions): Promise<Connection> {
  checkHost(options.host);
  checkPort(options.port, 1);
  const { host, port } = options;
  return establishConnection({
    open: () => createConnection({ host, port }),
    readyEvent: 'connect',
    peer: formatHostPort(host, port),
    signal: options.signal,
    timeoutMs: options.timeoutMs,
  });
}

/**
 * Listens for TCP connections; `onConnection` receives each accepted one (paused until it gets a 'data' listener).
 *
 * Rejects with KEMARI_INVALID_ARGUMENT for a bad host or port and KEMARI_LISTEN_FAILED when the address cannot be
 * bound (in use, not local, no permission; `details.socketCode` says which).
 */
export async function listenTcp(options: TcpListenOptions, onConnection: (connection: Connection) => void): Promise<Listener> {
  checkHost(options.host);
  checkPort(options.port, 0);
  checkCallback(onConnection, 'onConnection');
  const server = createServer();
  const listener = new SocketListener(server);
  server.on('connection', (socket: Socket) => listener.adopt(new SocketConnection(socket), onConnection));
  await listener.listen({ host: options.host, port: options.port }, formatHostPort(options.host, options.port));
  return listener;
}

/**
 * The {@link Listener} of the socket transports: binds a `net.Server` (or `tls.Server`), tracks every accepted socket
 * and every connection handed out, and tears them all down on close.
 *
 * @internal Used by the TCP, Unix socket and TLS transports.
 */
export class SocketListener implements Listener {
  private boundPort = 0;
  private boundAddress = '';
  private readonly server: Server;
  private readonly sockets = new Set<Socket>();
  private readonly connections = new Set<Connection>();
  private closing: Promise<void> | undefined;
  private readonly afterClose: (() => Promise<void>) | undefined;

  /** Tracks the server's raw sockets from now on; `afterClose` runs once the server closed (Unix: unlink the path). */
  constructor(server: Server, afterClose?: () => Promise<void>) {
    this.server = server;
    this.afterClose = afterClose;
    server.on('connection', (socket: Socket) => this.track(socket));
  }

  /** The bound TCP port; 0 for Unix sockets. */
  get port(): number {
    return this.boundPort;
  }

  /** The bound address, or the socket path. */
  get address(): string {
    return this.boundAddress;
  }

  /** True once {@link close} was called. */
  get closed(): boolean {
    return this.closing !== undefined;
  }

  /**
   * Binds the server. Rejects with KEMARI_LISTEN_FAILED when it cannot (`details.socketCode` says why).
   * Later server errors (accept failures such as EMFILE) are absorbed: the listener keeps serving.
   */
  listen(options: ListenOptions, description: string): Promise<void> {
    const server = this.server;
    return new Promise<void>((resolve, reject) => {
      const onError = (error: NodeJS.ErrnoException): void => {
        server.off('listening', onListening);
        reject(
          new KemariError('KEMARI_LISTEN_FAILED', `cannot listen on ${description}: ${error.message}`, {
            cause: error,
            details: { endpoint: description, ...(error.code === undefined ? {} : { socketCode: error.code }) },
          }),
        );
      };
      const onListening = (): void => {
        server.off('error', onError);
        server.on('error', () => {});
        const address = server.address();
        if (address !== null && typeof address === 'object') {
          this.boundPort = (address as AddressInfo).port;
          this.boundAddress = (address as AddressInfo).address;
        } else {
          this.boundPort = 0;
          this.boundAddress = address ?? '';
        }
        resolve();
      };
      server.once('error', onError);
      server.once('listening', onListening);
      server.listen(options);
    });
  }

  /** Tracks a socket so {@link close} destroys it, until it closes by itself. */
  track(socket: Socket): void {
    if (this.closing !== undefined) {
      socket.destroy();
      return;
    }
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
  }

  /** Hands a connection to `onConnection` and tracks it until it closes; after {@link close} it is closed instead. */
  adopt(connection: Connection, onConnection: (connection: Connection) => void): void {
    if (this.closing !== undefined) {
      connection.close(listenerClosedError(this.boundAddress));
      return;
    }
    this.connections.add(connection);
    connection.on('close', () => this.connections.delete(connection));
    onConnection(connection);
  }

  /** Stops accepting, closes every connection and socket, resolves when the server closed. Idempotent. */
  close(): Promise<void> {
    this.closing ??= new Promise<void>((resolve) => {
      const error = listenerClosedError(this.boundAddress);
      for (const connection of this.connections) connection.close(error);
      for (const socket of this.sockets) socket.destroy();
      this.server.close(() => resolve());
    }).then(async () => {
      if (this.afterClose !== undefined) await this.afterClose();
    });
    return this.closing;
  }
}

function listenerClosedError(address: string): KemariError {
  return new KemariError('KEMARI_CONNECTION_CLOSED', `the listener on ${address} was closed`, { details: { address } });
}

/** Throws KEMARI_INVALID_ARGUMENT unless `host` is a non-empty string. */
export function checkHost(host: unknown): asserts host is string {
  if (typeof host !== 'string' || host.length === 0) {
    throw new KemariError('KEMARI_INVALID_ARGUMENT', 'host must be a non-empty string', { details: { host } });
  }
}

/** Throws KEMARI_INVALID_ARGUMENT unless `port` is an integer in [min, 65535]. */
export function checkPort(port: unknown, min: 0 | 1): asserts port is number {
  if (typeof port !== 'number' || !Number.isInteger(port) || port < min || port > 65_535) {
    throw new KemariError('KEMARI_INVALID_ARGUMENT', `port must be an integer in [${min}, 65535]`, { details: { port } });
  }
}

/** Throws KEMARI_INVALID_ARGUMENT unless `callback` is a function. */
export function checkCallback(callback: unknown, name: string): void {
  if (typeof callback !== 'function') {
    throw new KemariError('KEMARI_INVALID_ARGUMENT', `${name} must be a function`, { details: { [name]: typeof callback } });
  }
}
