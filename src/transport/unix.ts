/**
 * Unix domain socket transport: for a primary and secondary on one host (tests, a local standby process), where
 * file permissions on the socket path are the access control and no TCP stack is involved.
 */
import { lstat, rm } from 'node:fs/promises';
import { createConnection, createServer } from 'node:net';
import type { Socket } from 'node:net';
import { KemariError } from '../errors.js';
import type { Connection } from './connection.js';
import { SocketConnection, establishConnection } from './socket-connection.js';
import { SocketListener, checkCallback } from './tcp.js';
import type { Listener } from './tcp.js';

/** Which socket {@link connectUnix} connects to, and how long it may take. */
export interface UnixConnectOptions {
  /** Path of the listening socket. */
  path: string;
  /** Aborts the connect: the promise rejects with KEMARI_ABORTED. It has no effect once connected. */
  signal?: AbortSignal;
  /** Gives up with KEMARI_CONNECT_FAILED after this long. Default 10 000 ms. */
  timeoutMs?: number;
}

/** Where {@link listenUnix} listens. */
export interface UnixListenOptions {
  /** Path of the socket file to create (at most about 100 bytes on Linux). */
  path: string;
}

/**
 * Connects to a Unix socket listener. Resolves with the connection (whose `peer` is the path) once connected.
 *
 * Rejects with KEMARI_INVALID_ARGUMENT for a bad path or timeout, KEMARI_CONNECT_FAILED when nothing listens there
 * (no such file, refused) or `timeoutMs` passes, and KEMARI_ABORTED when `signal` fires first.
 */
export async function connectUnix(options: UnixConnectOptions): Promise<Connection> {
  checkPath(options.path);
  const { path } = options;
  return establishConnection({
    open: () => createConnection({ path }),
    readyEvent: 'connect',
    peer: path,
    signal: options.signal,
    timeoutMs: options.timeoutMs,
  });
}

/**
 * Listens on a Unix socket; `onConnection` receives each accepted connection (`peer` is the path; paused until it
 * gets a 'data' listener). The returned listener's `port` is 0 and `address` is the path.
 *
 * A socket file left at `path` by a listener that died is removed first; a live listener at `path` (one that accepts
 * a connection) is left alone and the promise rejects with KEMARI_LISTEN_FAILED (`details.socketCode`
 * "EADDRINUSE"); a path that exists but is not a socket is never deleted (KEMARI_INVALID_ARGUMENT). Closing the
 * listener removes the socket file.
 */
export async function listenUnix(options: UnixListenOptions, onConnection: (connection: Connection) => void): Promise<Listener> {
  checkPath(options.path);
  checkCallback(onConnection, 'onConnection');
  const { path } = options;
  await removeStaleSocket(path);
  const server = createServer();
  const listener = new SocketListener(server, () => removeSocketFile(path));
  server.on('connection', (socket: Socket) => listener.adopt(new SocketConnection(socket, { peer: path }), onConnection));
  await listener.listen({ path }, path);
  return listener;
}

/** Linux abstract sockets (leading NUL byte) have no file to clean up. */
function isAbstract(path: string): boolean {
  return path.startsWith('\0');
}

async function removeSocketFile(path: string): Promise<void> {
  if (isAbstract(path)) return;
  // Node unlinks the file when the server closes; this covers servers that died before closing.
  await rm(path, { force: true });
}

/** Removes `path` if it is a socket nobody listens on; rejects if it is live or not a socket. */
async function removeStaleSocket(path: string): Promise<void> {
  if (isAbstract(path)) return;
  let isSocket: boolean;
  try {
    isSocket = (await lstat(path)).isSocket();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw new KemariError('KEMARI_LISTEN_FAILED', `cannot listen on ${path}: ${(error as Error).message}`, {
      cause: error,
      details: { endpoint: path, socketCode: (error as NodeJS.ErrnoException).code },
    });
  }
  if (!isSocket) {
    throw new KemariError('KEMARI_INVALID_ARGUMENT', `cannot listen on ${path}: the path exists and is not a socket`, {
      details: { path },
    });
  }
  const live = await new Promise<boolean | NodeJS.ErrnoException>((resolve) => {
    const probe = createConnection({ path });
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', (error: NodeJS.ErrnoException) => {
      probe.destroy();
      resolve(error.code === 'ECONNREFUSED' || error.code === 'ENOENT' ? false : error);
    });
  });
  if (live === true) {
    throw new KemariError('KEMARI_LISTEN_FAILED', `cannot listen on ${path}: another listener is live there`, {
      details: { endpoint: path, socketCode: 'EADDRINUSE' },
    });
  }
  if (live !== false) {
    throw new KemariError('KEMARI_LISTEN_FAILED', `cannot listen on ${path}: ${live.message}`, {
      cause: live,
      details: { endpoint: path, socketCode: live.code },
    });
  }
  await rm(path, { force: true });
}

/** Throws KEMARI_INVALID_ARGUMENT unless `path` is a non-empty string. */
function checkPath(path: unknown): asserts path is string {
  if (typeof path !== 'string' || path.length === 0) {
    throw new KemariError('KEMARI_INVALID_ARGUMENT', 'path must be a non-empty string', { details: { path } });
  }
}
