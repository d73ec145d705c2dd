/**
 * A {@link Connection} over a Node stream socket (`net.Socket`, and `tls.TLSSocket`, which extends it), plus the
 * connect sequence the socket transports share (timeout, abort signal, error mapping).
 *
 * Why a wrapper: the protocol drivers need one small contract (batches in, chunks out, one 'close' that says whether
 * the end was clean) instead of Node's stream surface, where a failure is an 'error' then a 'close', half-closes
 * exist, and writes after the end throw asynchronously.
 *
 * Reading follows Node's own rule: the socket stays paused (bytes wait in the kernel and in the socket's buffer, and
 * TCP flow control holds the peer back) until the first 'data' listener is attached; removing the last one pauses
 * it again. So a connection handed out by a connect promise or a listener loses nothing before its owner listens.
 * Because a paused socket does not read, it does not notice the peer's close either: owners must listen for 'data'.
 */
import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import { KemariError } from '../errors.js';
import type { ErrorCode } from '../errors.js';
import type { Connection, ConnectionEvents } from './connection.js';

/** Options for {@link SocketConnection}. */
export interface SocketConnectionOptions {
  /** How logs name the other end. Default: the socket's remote "address:port" (unix sockets have none: pass the path). */
  peer?: string;
}

/**
 * {@link Connection} over a connected `net.Socket` or `tls.TLSSocket`.
 *
 * - `write` corks the socket, writes every chunk (no copies), uncorks: a frame's header and body parts leave in one
 *   batch. It returns the last `socket.write` result; 'drain' follows a false. `cork`/`uncork` around several
 *   writes make them one batch too.
 * - 'data' hands on the socket's chunks as they are (Node never reuses them).
 * - 'close' is emitted exactly once: `undefined` when the stream ended cleanly, the error given to `close(error)`
 *   when this side aborted, else a KEMARI_CONNECTION_CLOSED error whose cause is the socket error.
 * - `close()` ends gracefully after pending writes (`socket.end()`, destroyed after GRACEFUL_CLOSE_TIMEOUT_MS if the
 *   peer never ends its side); `close(error)` destroys at once, dropping
 *   unsent bytes. The peer cannot tell the two apart from the socket alone (it usually sees a clean end either way):
 *   a protocol that must know reports the error in-band first. A `close(error)` after `close()` turns the graceful
 *   end into an abort; anything after that is ignored.
 * - Writes after close (either side) are ignored and return false; they never throw.
 */
/** How long a graceful close waits for the peer's end before destroying the socket. */
export const GRACEFUL_CLOSE_TIMEOUT_MS = 5000;

export class SocketConnection implements Connection {
  /** How logs name the other end. */
  readonly peer: string;
  private readonly socket: Socket;
  private readonly events = new EventEmitter();
  /** close() was called or the socket ended: no more writes. */
  private ending = false;
  /** The error given to close(error): the socket was destroyed by this side. */
  private abortError: KemariError | undefined;
  /** The first error the socket reported. */
  private socketError: Error | undefined;
  /** 'close' was emitted. */
  private finished = false;
  /** The socket's 'data' is forwarded (the socket is flowing). */
  private reading = false;

  /** Wraps a connected socket; the wrapper owns it from now on (do not write to or listen on it directly). */
  constructor(socket: Socket, options: SocketConnectionOptions = {}) {
    this.socket = socket;
    this.peer = options.peer ?? describeRemote(socket);
    socket.setNoDelay(true);
    socket.on('drain', this.onDrain);
    socket.on('error', this.onError);
    socket.on('close', this.onClose);
    // A socket that died before it was wrapped may already have emitted 'close'.
    if (socket.destroyed) setImmediate(this.onClose);
  }

  /** Bytes queued in the socket and not yet handed to the OS. */
  get bufferedBytes(): number {
    return this.socket.writableLength;
  }

  /** True once `close` was called or the socket ended. */
  get closed(): boolean {
    return this.ending || this.finished || this.socket.destroyed || !this.socket.writable;
  }

  /** Writes the chunks as one corked batch; false means wait for 'drain' (or the connection is closed). */
  write(chunks: readonly Uint8Array[]): boolean {
    const socket = this.socket;
    if (this.closed) return false;
    if (chunks.length === 1) return socket.write(chunks[0] as Uint8Array);
    if (chunks.length === 0) return !socket.writableNeedDrain;
    let belowHighWaterMark = true;
    socket.cork();
    try {
      for (const chunk of chunks) belowHighWaterMark = socket.write(chunk);
    } finally {
      socket.uncork();
    }
    return belowHighWaterMark;
  }

  /** Holds the writes that follow until {@link uncork} (one system call for many frames). */
  cork(): void {
    if (!this.closed) this.socket.cork();
  }

  /** Ends a {@link cork}. */
  uncork(): void {
    if (this.socket.writableCorked > 0) this.socket.uncork();
  }

  /** Ends gracefully after pending writes (no `error`) or destroys at once (with `error`). Idempotent. */
  close(error?: KemariError): void {
    if (this.finished || this.abortError !== undefined) return;
    if (error === undefined) {
      if (this.ending) return;
      this.ending = true;
      this.socket.end();
      // The peer's end only arrives through the read side: read (and drop, if nobody listens) until it does. A
      // peer that never ends its side is cut off after GRACEFUL_CLOSE_TIMEOUT_MS, so no half-open socket lingers.
      this.startReading();
      setTimeout(() => {
        if (!this.finished) this.socket.destroy();
      }, GRACEFUL_CLOSE_TIMEOUT_MS).unref();
      return;
    }
    this.ending = true;
    this.abortError = error;
    this.socket.destroy();
  }

  /** Adds a listener; the first 'data' listener starts the flow of bytes. */
  on<E extends keyof ConnectionEvents>(event: E, listener: ConnectionEvents[E]): this {
    this.events.on(event, listener);
    if (event === 'data') this.startReading();
    return this;
  }

  /** Removes a listener; removing the last 'data' listener pauses the socket (unless closing). */
  off<E extends keyof ConnectionEvents>(event: E, listener: ConnectionEvents[E]): this {
    this.events.off(event, listener);
    if (event === 'data' && this.reading && !this.ending && this.events.listenerCount('data') === 0) {
      this.reading = false;
      this.socket.off('data', this.onData);
      this.socket.pause();
    }
    return this;
  }

  private startReading(): void {
    if (this.reading) return;
    this.reading = true;
    this.socket.on('data', this.onData);
    // A socket paused explicitly (as the TLS handshake leaves it) does not resume when a listener is added.
    this.socket.resume();
  }

  private readonly onData = (chunk: Buffer): void => {
    this.events.emit('data', chunk);
  };

  private readonly onDrain = (): void => {
    if (!this.finished) this.events.emit('drain');
  };

  private readonly onError = (error: Error): void => {
    this.socketError ??= error;
  };

  private readonly onClose = (): void => {
    if (this.finished) return;
    this.finished = true;
    this.ending = true;
    this.socket.off('drain', this.onDrain);
    this.socket.off('data', this.onData);
    // The 'error' listener stays: a late socket error must not become an uncaught exception.
    let error = this.abortError;
    if (error === undefined && this.socketError !== undefined) {
      const code = (this.socketError as NodeJS.ErrnoException).code;
      error = new KemariError('KEMARI_CONNECTION_CLOSED', `connection to ${this.peer} failed: ${this.socketError.message}`, {
        cause: this.socketError,
        details: { peer: this.peer, ...(code === undefined ? {} : { socketCode: code }) },
      });
    }
    this.events.emit('close', error);
  };
}

/** "address:port" of a socket's remote end ("[v6]:port" for IPv6), or "unknown" when it has none. */
export function describeRemote(socket: Socket): string {
  const address = socket.remoteAddress;
  if (address === undefined) return 'unknown';
  return formatHostPort(address, socket.remotePort ?? 0);
}

/** "host:port", with IPv6 literals in brackets. */
export function formatHostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/** Connect timeout used when the caller gives none. */
export const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;

/** Largest timeout `setTimeout` honours. */
const TIMEOUT_MS_MAX = 2 ** 31 - 1;

/** Throws KEMARI_INVALID_ARGUMENT unless `timeoutMs` is a usable timeout (finite, > 0, at most 2^31 - 1). */
export function checkTimeoutMs(timeoutMs: unknown, name = 'timeoutMs'): void {
  if (typeof timeoutMs !== 'number' || !(timeoutMs > 0) || timeoutMs > TIMEOUT_MS_MAX) {
    throw new KemariError('KEMARI_INVALID_ARGUMENT', `${name} must be a number of milliseconds in (0, ${TIMEOUT_MS_MAX}]`, {
      details: { [name]: timeoutMs },
    });
  }
}

/**
 * How {@link establishConnection} opens one socket transport.
 *
 * @internal Shared by the TCP, Unix socket and TLS transports.
 */
export interface EstablishOptions {
  /** Creates the connecting socket; called once, and only if the signal has not fired. May throw a KemariError. */
  open: () => Socket;
  /** The socket event after which it carries application bytes: 'connect' (TCP, Unix) or 'secureConnect' (TLS). */
  readyEvent: 'connect' | 'secureConnect';
  /**
   * Runs after `readyEvent`; the connection is handed out only once it resolves, and a rejection (a KemariError)
   * fails the connect. TLS uses it to wait for the peer's confirmation that it accepted this side.
   */
  confirm?: (socket: Socket) => Promise<void>;
  /** The code of failures after the transport connected and before the connection is usable (TLS: KEMARI_TLS_REFUSED). */
  handshakeFailureCode?: ErrorCode;
  /** How errors and the connection name the other end. */
  peer: string;
  signal?: AbortSignal | undefined;
  timeoutMs?: number | undefined;
}

/**
 * Opens a socket and resolves with a {@link SocketConnection} once it is usable.
 *
 * Rejects with KEMARI_ABORTED when the signal fires (or had fired), KEMARI_CONNECT_FAILED when the transport cannot
 * connect (refused, unreachable, no such socket file) or `timeoutMs` passes, and `handshakeFailureCode` when the
 * socket fails or closes after the transport connected but before `readyEvent` and `confirm` completed. On every
 * failure the socket is destroyed.
 *
 * @internal Shared by the TCP, Unix socket and TLS transports.
 */
export function establishConnection(options: EstablishOptions): Promise<SocketConnection> {
  const { peer, signal } = options;
  const timeoutMs = options.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
  try {
    checkTimeoutMs(timeoutMs);
  } catch (error) {
    return Promise.reject(error);
  }
  if (signal?.aborted === true) return Promise.reject(abortedError(peer, signal));
  return new Promise<SocketConnection>((resolve, reject) => {
    let socket: Socket;
    try {
      socket = options.open();
    } catch (error) {
      reject(
        error instanceof KemariError
          ? error
          : new KemariError('KEMARI_INVALID_ARGUMENT', `cannot connect to ${peer}: ${String(error)}`, { cause: error, details: { peer } }),
      );
      return;
    }
    let stage: 'connecting' | 'handshaking' = 'connecting';
    let settled = false;

    const cleanup = (): void => {
      settled = true;
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      socket.off('connect', onConnect);
      socket.off(options.readyEvent, onReady);
      socket.off('error', onError);
      socket.off('close', onClose);
    };
    const fail = (error: KemariError): void => {
      if (settled) return;
      cleanup();
      socket.on('error', ignore);
      socket.destroy();
      reject(error);
    };
    const failure = (cause: Error | undefined, what: string): KemariError => {
      const code: ErrorCode = stage === 'connecting' ? 'KEMARI_CONNECT_FAILED' : (options.handshakeFailureCode ?? 'KEMARI_CONNECT_FAILED');
      const socketCode = (cause as NodeJS.ErrnoException | undefined)?.code;
      return new KemariError(code, `${what} ${peer}${cause === undefined ? ': the connection closed' : `: ${cause.message}`}`, {
        cause,
        details: { peer, stage, ...(socketCode === undefined ? {} : { socketCode }) },
      });
    };
    const onConnect = (): void => {
      stage = 'handshaking';
    };
    const onReady = (): void => {
      stage = 'handshaking';
      if (options.confirm === undefined) {
        succeed();
        return;
      }
      options.confirm(socket).then(succeed, (error: unknown) => {
        fail(error instanceof KemariError ? error : failure(error instanceof Error ? error : undefined, 'handshake failed with'));
      });
    };
    const succeed = (): void => {
      if (settled) return;
      // Wrap before dropping this function's listeners, so the socket is never without an 'error' listener.
      const connection = new SocketConnection(socket, { peer });
      cleanup();
      resolve(connection);
    };
    const onError = (error: Error): void => fail(failure(error, stage === 'connecting' ? 'cannot connect to' : 'handshake failed with'));
    const onClose = (): void => fail(failure(undefined, stage === 'connecting' ? 'cannot connect to' : 'handshake failed with'));
    const onAbort = (): void => fail(abortedError(peer, signal));
    const timer = setTimeout(() => {
      fail(
        new KemariError('KEMARI_CONNECT_FAILED', `connecting to ${peer} timed out after ${timeoutMs} ms`, {
          details: { peer, stage, timeoutMs },
        }),
      );
    }, timeoutMs);

    socket.once('connect', onConnect);
    socket.once(options.readyEvent, onReady);
    socket.on('error', onError);
    socket.once('close', onClose);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

function abortedError(peer: string, signal: AbortSignal | undefined): KemariError {
  return new KemariError('KEMARI_ABORTED', `connecting to ${peer} was aborted`, { cause: signal?.reason, details: { peer } });
}

function ignore(): void {}
