/**
 * Mutual-TLS transport: both ends present a certificate signed by one shared CA, and each refuses a peer whose
 * certificate is missing or signed by anyone else. Replication streams a VM's memory, so the secondary must know
 * the primary is genuine (and the other way round) before a byte of state moves.
 *
 * ## Confirmation byte: why, and what it guarantees
 *
 * With TLS 1.3 the client's handshake completes ('secureConnect') before the server has even looked at the client's
 * certificate: the server judges it afterwards and, if it refuses, just drops the connection (Node destroys the
 * socket without an alert). A client that resolved on 'secureConnect' would hand out a connection that is about to
 * die, and could write replication frames into it. Symmetrically, a client that refuses the server's certificate
 * does so after the server has already completed its side.
 *
 * So after its own TLS handshake succeeded, each end writes one confirmation byte ({@link TLS_CONFIRM_BYTE}) inside
 * the encrypted stream and waits for the other end's. An end only writes it once TLS accepted the peer, so receiving
 * it proves the peer accepted this end too. `connectTls` resolves, and a listener calls `onConnection`, only after
 * the exchange; the byte is consumed and never appears in the connection's data. Any failure before that
 * (handshake error, refusal, the peer closing, a wrong first byte) is KEMARI_TLS_REFUSED: the client's promise
 * rejects with it, the server reports it through `onRefused` and never hands the connection out. The exchange adds
 * no round trip for the client (both bytes cross at once) and half of one for the server. Both ends must be kemari:
 * a plain TLS client that never sends the byte is refused when the handshake timeout passes.
 */
import { connect as tlsConnect, createServer } from 'node:tls';
import type { Server, TLSSocket } from 'node:tls';
import type { Socket } from 'node:net';
import { KemariError } from '../errors.js';
import type { Connection } from './connection.js';
import { SocketConnection, checkTimeoutMs, describeRemote, establishConnection, formatHostPort } from './socket-connection.js';
import { SocketListener, checkCallback, checkHost, checkPort } from './tcp.js';
import type { Listener } from './tcp.js';

/** PEM material for mutual TLS. */
export interface TlsCredentials {
  /** PEM certificate(s) of the CA that must have signed the peer's certificate. Only this CA is trusted. */
  ca: string | Buffer;
  /** PEM certificate of this end (with intermediates, if any), signed by a CA the peer trusts. */
  cert: string | Buffer;
  /** PEM private key of `cert`. */
  key: string | Buffer;
}

/** Where and as whom {@link connectTls} connects. */
export interface TlsConnectOptions extends TlsCredentials {
  /** Host name or IP address of the listener. */
  host: string;
  /** TCP port of the listener (1 to 65535). */
  port: number;
  /**
   * The name the server's certificate must carry (also sent as SNI). Default: `host` (an IP address is then matched
   * against the certificate's IP subject alternative names).
   */
  servername?: string;
  /** Aborts the connect: the promise rejects with KEMARI_ABORTED. It has no effect once connected. */
  signal?: AbortSignal;
  /** Gives up with KEMARI_CONNECT_FAILED after this long, handshake and confirmation included. Default 10 000 ms. */
  timeoutMs?: number;
}

/** Where and as whom {@link listenTls} listens. */
export interface TlsListenOptions extends TlsCredentials {
  /** Address to bind, e.g. "127.0.0.1" or "::". */
  host: string;
  /** Port to bind; 0 picks a free one. */
  port: number;
  /** A client must complete the TLS handshake and the confirmation within this long, or it is refused. Default 10 000 ms. */
  handshakeTimeoutMs?: number;
}

/**
 * The byte each end sends, inside TLS, once it accepted the peer (see the module documentation). ASCII ACK.
 */
export const TLS_CONFIRM_BYTE = 0x06;

/** Handshake timeout of {@link listenTls} when none is given. */
export const DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS = 10_000;

const CONFIRM = Uint8Array.of(TLS_CONFIRM_BYTE);

/**
 * Connects with mutual TLS (TLS 1.2 or later). Resolves once the handshake succeeded and the server confirmed it
 * accepted this client's certificate (see the module documentation), so the connection is usable.
 *
 * Rejects with KEMARI_TLS_REFUSED when the server's certificate is not signed by `ca` or does not match
 * `servername`/`host`, when the server refuses this client's certificate, or when the handshake otherwise fails
 * after the TCP connection was made; KEMARI_CONNECT_FAILED when TCP cannot connect or `timeoutMs` passes;
 * KEMARI_ABORTED when `signal` fires first; KEMARI_INVALID_ARGUMENT for bad options (including unparsable PEM).
 */
export async function connectTls(options: TlsConnectOptions): Promise<Connection> {
  checkHost(options.host);
  checkPort(options.port, 1);
  checkCredentials(options);
  if (options.servername !== undefined && (typeof options.servername !== 'string' || options.servername.length === 0)) {
    throw new KemariError('KEMARI_INVALID_ARGUMENT', 'servername must be a non-empty string', {
      details: { servername: options.servername },
    });
  }
  const { host, port, ca, cert, key, servername } = options;
  const peer = formatHostPort(host, port);
  return establishConnection({
    open: () => {
      try {
        return tlsConnect({
          host,
          port,
          ca,
          cert,
          key,
          ...(servername === undefined ? {} : { servername }),
          rejectUnauthorized: true,
          minVersion: 'TLSv1.2',
        });
      } catch (error) {
        throw credentialsError(error);
      }
    },
    readyEvent: 'secureConnect',
    confirm: (socket) => new Promise<void>((resolve, reject) => exchangeConfirmation(socket, peer, (error) => (error === undefined ? resolve() : reject(error)))),
    handshakeFailureCode: 'KEMARI_TLS_REFUSED',
    peer,
    signal: options.signal,
    timeoutMs: options.timeoutMs,
  });
}

/**
 * Listens for mutual-TLS connections (TLS 1.2 or later; `requestCert` and `rejectUnauthorized` on).
 *
 * `onConnection` receives only clients whose certificate is signed by `ca` and that confirmed they accept the
 * server (see the module documentation); each connection is paused until it gets a 'data' listener. Every other
 * attempt (no certificate, a certificate from another CA, a client that refuses the server, a failed or timed-out
 * handshake) is closed and reported to `onRefused` as KEMARI_TLS_REFUSED, with `details.reason` when TLS gave one
 * (for example "UNABLE_TO_VERIFY_LEAF_SIGNATURE") and `details.peer`, the client's "address:port" (or "unknown" when
 * Node had already dropped the socket before reporting the failure, as it does for a rejected certificate). Attempts
 * cut short by closing the listener are not reported.
 *
 * Rejects with KEMARI_INVALID_ARGUMENT for bad options (including unparsable PEM) and KEMARI_LISTEN_FAILED when the
 * address cannot be bound.
 */
export async function listenTls(
  options: TlsListenOptions,
  onConnection: (connection: Connection) => void,
  onRefused?: (error: KemariError) => void,
): Promise<Listener> {
  checkHost(options.host);
  checkPort(options.port, 0);
  checkCredentials(options);
  checkCallback(onConnection, 'onConnection');
  if (onRefused !== undefined) checkCallback(onRefused, 'onRefused');
  const handshakeTimeoutMs = options.handshakeTimeoutMs ?? DEFAULT_TLS_HANDSHAKE_TIMEOUT_MS;
  checkTimeoutMs(handshakeTimeoutMs, 'handshakeTimeoutMs');
  let server: Server;
  try {
    server = createServer({
      ca: options.ca,
      cert: options.cert,
      key: options.key,
      requestCert: true,
      rejectUnauthorized: true,
      minVersion: 'TLSv1.2',
      handshakeTimeout: handshakeTimeoutMs,
    });
  } catch (error) {
    throw credentialsError(error);
  }
  const listener = new SocketListener(server);
  const refuse = (socket: TLSSocket, peer: string, cause: Error | undefined, message: string): void => {
    socket.destroy();
    if (listener.closed || onRefused === undefined) return;
    // Node reports a refused certificate as a bare hang-up; the verification result says why.
    const reason = socket.authorizationError ?? (cause as NodeJS.ErrnoException | undefined)?.code;
    onRefused(
      new KemariError('KEMARI_TLS_REFUSED', `refused TLS client ${peer}: ${message}`, {
        cause,
        details: { peer, ...(reason === undefined ? {} : { reason: String(reason) }) },
      }),
    );
  };
  server.on('tlsClientError', (error: Error, socket: TLSSocket) => {
    refuse(socket, describeRemote(socket), error, error.message);
  });
  server.on('secureConnection', (socket: TLSSocket) => {
    const peer = describeRemote(socket);
    if (!socket.authorized) {
      refuse(socket, peer, undefined, String(socket.authorizationError ?? 'certificate not authorized'));
      return;
    }
    listener.track(socket);
    let decided = false;
    const timer = setTimeout(() => {
      decided = true;
      refuse(socket, peer, undefined, `no confirmation within ${handshakeTimeoutMs} ms`);
    }, handshakeTimeoutMs);
    exchangeConfirmation(socket, peer, (error) => {
      clearTimeout(timer);
      if (decided) return;
      decided = true;
      if (error !== undefined) {
        refuse(socket, peer, error.cause instanceof Error ? error.cause : undefined, error.message);
        return;
      }
      listener.adopt(new SocketConnection(socket, { peer }), onConnection);
    });
  });
  await listener.listen({ host: options.host, port: options.port }, formatHostPort(options.host, options.port));
  return listener;
}

/**
 * Sends {@link TLS_CONFIRM_BYTE} and waits for the peer's; `done` is called exactly once, with nothing when the
 * peer's byte arrived (bytes after it are put back for the connection, and the socket is left paused), else with a
 * KEMARI_TLS_REFUSED error (the socket failed or closed first, or the first byte was wrong).
 */
function exchangeConfirmation(socket: Socket, peer: string, done: (error?: KemariError) => void): void {
  let finished = false;
  const finish = (error?: KemariError): void => {
    if (finished) return;
    finished = true;
    socket.off('data', onData);
    socket.off('error', onError);
    socket.off('close', onClose);
    if (error !== undefined) socket.on('error', () => {});
    done(error);
  };
  const onData = (chunk: Buffer): void => {
    if (chunk.length === 0) return;
    socket.pause();
    if (chunk[0] !== TLS_CONFIRM_BYTE) {
      finish(
        new KemariError('KEMARI_TLS_REFUSED', `TLS peer ${peer} did not confirm the handshake: it is not a kemari endpoint`, {
          details: { peer, firstByte: chunk[0] },
        }),
      );
      return;
    }
    if (chunk.length > 1) socket.unshift(chunk.subarray(1));
    finish();
  };
  const onError = (error: NodeJS.ErrnoException): void => {
    finish(
      new KemariError('KEMARI_TLS_REFUSED', `TLS peer ${peer} refused the handshake: ${error.message}`, {
        cause: error,
        details: { peer, ...(error.code === undefined ? {} : { reason: error.code }) },
      }),
    );
  };
  const onClose = (): void => {
    finish(
      new KemariError('KEMARI_TLS_REFUSED', `TLS peer ${peer} closed the connection before confirming the handshake`, {
        details: { peer },
      }),
    );
  };
  socket.on('data', onData);
  socket.on('error', onError);
  socket.once('close', onClose);
  socket.write(CONFIRM);
}

function checkCredentials(options: TlsCredentials): void {
  for (const name of ['ca', 'cert', 'key'] as const) {
    const value: unknown = options[name];
    const ok = (typeof value === 'string' || Buffer.isBuffer(value)) && value.length > 0;
    if (!ok) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', `${name} must be non-empty PEM text (a string or Buffer)`, {
        details: { [name]: typeof value },
      });
    }
  }
}

function credentialsError(error: unknown): KemariError {
  return new KemariError('KEMARI_INVALID_ARGUMENT', `the TLS credentials were rejected: ${String(error)}`, { cause: error });
}
