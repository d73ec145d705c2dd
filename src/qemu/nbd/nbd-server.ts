/**
 * kemari's NBD server: serves one export from an {@link NbdBackend} over a Unix socket or TCP, so QEMU can use it as
 * a disk (`-drive driver=raw,file.driver=nbd,file.server.type=unix,file.server.path=/abs/nbd.sock`) and every write
 * of an epoch passes the write observer on its way to the disk.
 *
 * Why our own server (and not qemu-nbd): kemari must see each write before the guest is told it is done, to put it
 * into the epoch's ft-transaction (output commit for disks), and must be able to refuse it when the epoch's disk log
 * is full. The protocol lives in the sans-I/O {@link NbdServerCore}; each connection is driven by an
 * {@link NbdSession}; sockets come from kemari's transports (stale Unix socket files are removed, live ones are
 * never stolen).
 */
import { isAbsolute } from 'node:path';
import { KemariError } from '../../errors.js';
import type { Connection } from '../../transport/connection.js';
import { listenTcp } from '../../transport/tcp.js';
import type { Listener } from '../../transport/tcp.js';
import { listenUnix } from '../../transport/unix.js';
import type { NbdBackend } from './nbd-backend.js';
import { NbdServerCore } from './nbd-server-core.js';
import type { NbdServerCoreOptions } from './nbd-server-core.js';
import { NbdSession } from './nbd-session.js';
import type { NbdServerStats, NbdWriteObserver } from './nbd-session.js';

/** Default {@link NbdServerOptions.clientsMax}. */
export const NBD_CLIENTS_MAX_DEFAULT = 16;
/** Actions one client may have queued before the server stops reading from it. */
export const NBD_QUEUE_ACTIONS_MAX = 64;
/** Largest zero buffer a WRITE_ZEROES step hands to the observer and backend (1 MiB). */
export const NBD_ZERO_CHUNK_BYTES_MAX = 1024 * 1024;

/** Options of {@link NbdServer.listen}. Give either `path` (Unix socket) or `port` (TCP). */
export interface NbdServerOptions extends Omit<NbdServerCoreOptions, 'sizeBytes'> {
  /** The disk to serve; its `sizeBytes` is the export size. The server never closes it. */
  backend: NbdBackend;
  /** Absolute path of the Unix socket to create. */
  path?: string;
  /** TCP address to bind when `port` is given. Default "127.0.0.1" (an NBD disk has no authentication). */
  host?: string;
  /** TCP port; 0 picks a free one (see {@link NbdServer.port}). */
  port?: number;
  /** Most clients at once; more are closed as soon as they connect. Default {@link NBD_CLIENTS_MAX_DEFAULT}. */
  clientsMax?: number;
  /** Sees every accepted write, in order, before it is applied and replied to (see {@link NbdWriteObserver}). */
  onWrite?: NbdWriteObserver;
  /** Told about every client that broke the protocol (a KemariError KEMARI_NBD_PROTOCOL); the server goes on. */
  onClientError?: (error: KemariError) => void;
}

/** A listening NBD server. Close it before closing its backend. */
export class NbdServer {
  /** Counters since listen. */
  readonly stats: NbdServerStats = {
    clientsAccepted: 0,
    clientsRefused: 0,
    protocolErrors: 0,
    reads: 0,
    readBytes: 0,
    writes: 0,
    writtenBytes: 0,
    flushes: 0,
  };
  /** The export's name. */
  readonly exportName: string;
  /** The Unix socket path, or undefined for TCP. */
  readonly path: string | undefined;
  private listener: Listener | undefined;
  private readonly options: NbdServerOptions;
  private readonly coreOptions: NbdServerCoreOptions;
  private readonly clientsMax: number;
  private readonly sessions = new Set<NbdSession>();
  /** Tail of the server-wide chain every write and flush runs on. */
  private lane: Promise<unknown> = Promise.resolve();
  private closing: Promise<void> | undefined;

  private constructor(options: NbdServerOptions, coreOptions: NbdServerCoreOptions, clientsMax: number) {
    this.options = options;
    this.coreOptions = coreOptions;
    this.clientsMax = clientsMax;
    this.exportName = coreOptions.exportName ?? '';
    this.path = options.path;
  }

  /**
   * Validates the options and starts listening. Rejects with KEMARI_INVALID_ARGUMENT for bad options (a relative
   * socket path, both or neither of `path` and `port`, a bad limit, a backend without a usable size) and
   * KEMARI_LISTEN_FAILED when the address cannot be bound (in use, a live socket at the path, no permission).
   */
  static async listen(options: NbdServerOptions): Promise<NbdServer> {
    if (typeof options !== 'object' || options === null) invalid('NbdServer.listen needs options', {});
    const { backend } = options;
    if (
      typeof backend !== 'object' ||
      backend === null ||
      typeof backend.read !== 'function' ||
      typeof backend.write !== 'function' ||
      typeof backend.flush !== 'function'
    ) {
      invalid('backend must implement read, write and flush', {});
    }
    const coreOptions: NbdServerCoreOptions = {
      sizeBytes: backend.sizeBytes,
      exportName: options.exportName ?? '',
      readOnly: options.readOnly === true,
      ...(options.requestBytesMax === undefined ? {} : { requestBytesMax: options.requestBytesMax }),
      ...(options.optionBytesMax === undefined ? {} : { optionBytesMax: options.optionBytesMax }),
      ...(options.optionsMax === undefined ? {} : { optionsMax: options.optionsMax }),
    };
    new NbdServerCore(coreOptions); // validates the protocol options now, not at the first client
    const clientsMax = options.clientsMax ?? NBD_CLIENTS_MAX_DEFAULT;
    if (!Number.isSafeInteger(clientsMax) || clientsMax < 1) invalid('clientsMax must be a positive integer', { clientsMax });
    if (options.onWrite !== undefined && typeof options.onWrite !== 'function') invalid('onWrite must be a function', {});
    if (options.onClientError !== undefined && typeof options.onClientError !== 'function') invalid('onClientError must be a function', {});
    const hasPath = options.path !== undefined;
    const hasPort = options.port !== undefined;
    if (hasPath === hasPort) invalid('give either path (Unix socket) or port (TCP)', { path: options.path, port: options.port });
    if (hasPath && (typeof options.path !== 'string' || !isAbsolute(options.path))) {
      invalid('path must be an absolute path (QEMU resolves relative ones against its own directory)', { path: options.path });
    }
    const server = new NbdServer(options, coreOptions, clientsMax);
    const onConnection = (connection: Connection): void => server.accept(connection);
    server.listener = hasPath
      ? await listenUnix({ path: options.path as string }, onConnection)
      : await listenTcp({ host: options.host ?? '127.0.0.1', port: options.port as number }, onConnection);
    return server;
  }

  /** The bound TCP port (0 for a Unix socket). */
  get port(): number {
    return this.listener?.port ?? 0;
  }

  /** The bound address: the IP address, or the socket path. */
  get address(): string {
    return this.listener?.address ?? '';
  }

  /** Clients connected now. */
  get clientCount(): number {
    return this.sessions.size;
  }

  /** An NBD URI for clients (libnbd, qemu-img, qemu-io): `nbd+unix:///NAME?socket=PATH` or `nbd://HOST:PORT/NAME`. */
  get uri(): string {
    const name = encodeURIComponent(this.exportName);
    if (this.path !== undefined) return `nbd+unix:///${name}?socket=${encodeURIComponent(this.path).replaceAll('%2F', '/')}`;
    const host = this.address.includes(':') ? `[${this.address}]` : this.address;
    return `nbd://${host}:${this.port}/${name}`;
  }

  /**
   * Stops listening, disconnects every client and resolves once no backend operation of this server runs any more
   * (so the backend may be closed next). Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      await this.listener?.close();
      await Promise.all([...this.sessions].map((session) => session.done));
      await this.lane.catch(() => {});
    })();
    return this.closing;
  }

  private accept(connection: Connection): void {
    if (this.closing !== undefined || this.sessions.size >= this.clientsMax) {
      this.stats.clientsRefused += 1;
      connection.close(
        new KemariError('KEMARI_BUSY', `the NBD server already serves clientsMax (${this.clientsMax}) clients`, { details: { clientsMax: this.clientsMax } }),
      );
      return;
    }
    this.stats.clientsAccepted += 1;
    const core = new NbdServerCore(this.coreOptions);
    const session = new NbdSession(connection, core, {
      backend: this.options.backend,
      exclusive: (task) => this.exclusive(task),
      onWrite: this.options.onWrite,
      onClientError: this.options.onClientError,
      stats: this.stats,
      queueActionsMax: NBD_QUEUE_ACTIONS_MAX,
      queueBytesMax: core.requestBytesMax,
      zeroChunkBytes: Math.min(NBD_ZERO_CHUNK_BYTES_MAX, core.requestBytesMax),
    });
    this.sessions.add(session);
    void session.done.then(() => this.sessions.delete(session));
  }

  /** Runs `task` after every write and flush queued before it, across all clients. */
  private exclusive<T>(task: () => Promise<T>): Promise<T> {
    const result = this.lane.then(task);
    this.lane = result.catch(() => {});
    return result;
  }
}

function invalid(text: string, details: Record<string, unknown>): never {
  throw new KemariError('KEMARI_INVALID_ARGUMENT', text, { details });
}
