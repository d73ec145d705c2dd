/**
 * One NBD client connection at work: feeds the socket's bytes to an {@link NbdServerCore} and executes its actions
 * one after another against the backend.
 *
 * Why a class of its own: ordering and backpressure are the driver's half of the protocol and deserve one place.
 * - Order: the actions of one client run strictly in sequence, so replies leave in request order and a flush runs
 *   after the writes before it. Writes and flushes of *all* clients additionally pass one server-wide lane
 *   (`exclusive`), so the write observer sees writes in exactly the order the backend applied them: the log kemari
 *   builds from the observer replays to the same disk.
 * - Backpressure: reading from the socket stops while the queue holds `queueActionsMax` actions or `queueBytesMax`
 *   bytes, and resumes once it has drained to half; a reply waits for the socket's 'drain' before the next action
 *   runs. So one client holds at most about two requests' worth of memory (the queue plus the core's partial
 *   payload), however fast it sends or however slowly it reads.
 *
 * @internal Created by {@link NbdServer}; not part of the public API.
 */
import { isKemariError } from '../../errors.js';
import type { KemariError } from '../../errors.js';
import type { Connection } from '../../transport/connection.js';
import type { NbdBackend } from './nbd-backend.js';
import { NBD_ERROR } from './nbd-constants.js';
import type { NbdAction, NbdRequest, NbdResult, NbdServerCore } from './nbd-server-core.js';

/**
 * Sees every write the server accepts, in order, before the backend applies it and before the client hears of it.
 * `data` is the server's own copy: the observer may keep it but must not modify it. Throwing (or rejecting) refuses
 * the write: the backend is not touched and the client gets NBD_ENOSPC for a KemariError KEMARI_DISK_LOG_FULL (QEMU
 * then pauses the VM by default, werror=enospc, and retries after `cont`) or NBD_EIO for anything else.
 */
export type NbdWriteObserver = (offset: number, data: Uint8Array) => void | Promise<void>;

/** Counters of an NBD server, for logs and tests. */
export interface NbdServerStats {
  /** Connections served. */
  clientsAccepted: number;
  /** Connections closed at once because `clientsMax` were open. */
  clientsRefused: number;
  /** Connections closed because the client broke the protocol. */
  protocolErrors: number;
  /** READ requests answered successfully. */
  reads: number;
  /** Bytes returned by those reads. */
  readBytes: number;
  /** WRITE and WRITE_ZEROES requests applied. */
  writes: number;
  /** Bytes written by them. */
  writtenBytes: number;
  /** FLUSH requests completed. */
  flushes: number;
}

/** What a session shares with its server. */
export interface NbdSessionContext {
  readonly backend: NbdBackend;
  /** Runs `task` alone among all writes and flushes of the server. */
  readonly exclusive: <T>(task: () => Promise<T>) => Promise<T>;
  readonly onWrite: NbdWriteObserver | undefined;
  readonly onClientError: ((error: KemariError) => void) | undefined;
  readonly stats: NbdServerStats;
  /** Stop reading while this many actions wait. */
  readonly queueActionsMax: number;
  /** Stop reading while this many payload bytes wait. */
  readonly queueBytesMax: number;
  /** Largest zero buffer one WRITE_ZEROES step hands to the observer and backend. */
  readonly zeroChunkBytes: number;
}

/** Drives one client connection; `done` settles once it is closed and its last backend operation finished. */
export class NbdSession {
  /** Resolves when the connection closed and no action of this session runs any more. */
  readonly done: Promise<void>;
  private readonly connection: Connection;
  private readonly core: NbdServerCore;
  private readonly context: NbdSessionContext;
  private readonly queue: NbdAction[] = [];
  private queuedBytes = 0;
  private running = false;
  private reading = false;
  private closed = false;
  private resolveDone!: () => void;

  constructor(connection: Connection, core: NbdServerCore, context: NbdSessionContext) {
    this.connection = connection;
    this.core = core;
    this.context = context;
    this.done = new Promise<void>((resolve) => {
      this.resolveDone = resolve;
    });
    connection.on('close', this.onClose);
    this.enqueue(core.start());
    this.startReading();
  }

  private readonly onData = (chunk: Uint8Array): void => {
    if (this.closed) return;
    this.enqueue(this.core.receive(chunk));
  };

  private readonly onClose = (error: KemariError | undefined): void => {
    if (this.closed) return;
    this.closed = true;
    this.stopReading();
    // A clean end while the core is mid-message is a truncated message; an aborted socket is not the client's
    // protocol error (it may be our own close, or a reset), so only the clean case is judged.
    if (error === undefined) {
      for (const action of this.core.end()) if (action.kind === 'close' && action.error !== undefined) this.report(action.error);
    }
    this.queue.length = 0;
    this.queuedBytes = 0;
    if (!this.running) this.resolveDone();
  };

  private enqueue(actions: NbdAction[]): void {
    for (const action of actions) {
      this.queue.push(action);
      this.queuedBytes += sizeOf(action);
    }
    if (this.queue.length >= this.context.queueActionsMax || this.queuedBytes >= this.context.queueBytesMax) this.stopReading();
    void this.pump();
  }

  private startReading(): void {
    if (this.reading || this.closed) return;
    this.reading = true;
    this.connection.on('data', this.onData);
  }

  private stopReading(): void {
    if (!this.reading) return;
    this.reading = false;
    this.connection.off('data', this.onData);
  }

  private async pump(): Promise<void> {
    if (this.running) return;
    this.running = true;
    try {
      while (!this.closed) {
        const action = this.queue.shift();
        if (action === undefined) break;
        this.queuedBytes -= sizeOf(action);
        if (!this.reading && this.queue.length < this.context.queueActionsMax / 2 && this.queuedBytes < this.context.queueBytesMax / 2) {
          this.startReading();
        }
        await this.execute(action);
      }
    } finally {
      this.running = false;
      if (this.closed) this.resolveDone();
    }
  }

  private async execute(action: NbdAction): Promise<void> {
    switch (action.kind) {
      case 'send':
        await this.send(action.chunks);
        return;
      case 'close':
        if (action.error !== undefined) {
          this.report(action.error);
          this.connection.close(action.error);
        } else {
          this.connection.close();
        }
        return;
      case 'request':
        await this.send(this.core.reply(action.request, await this.run(action.request)));
        return;
    }
  }

  /** Runs one backend operation; never throws (failures become NBD error codes). */
  private async run(request: NbdRequest): Promise<NbdResult> {
    const { backend, stats } = this.context;
    switch (request.command) {
      case 'read': {
        if (request.length === 0) return { data: new Uint8Array(0) };
        try {
          const data = await backend.read(request.offset, request.length);
          stats.reads += 1;
          stats.readBytes += request.length;
          return { data };
        } catch {
          return { error: NBD_ERROR.EIO };
        }
      }
      case 'write':
        return this.context.exclusive(async () => {
          const error = await this.apply(request.offset, request.data, request.fua);
          if (error === NBD_ERROR.NONE) {
            stats.writes += 1;
            stats.writtenBytes += request.data.length;
          }
          return { error };
        });
      case 'write-zeroes':
        return this.context.exclusive(async () => {
          // Zeroes reach the observer and backend as ordinary writes of zero chunks: one rule for every change.
          const step = this.context.zeroChunkBytes;
          for (let done = 0; done < request.length; done += step) {
            const n = Math.min(step, request.length - done);
            const last = done + n >= request.length;
            const error = await this.apply(request.offset + done, new Uint8Array(n), request.fua && last);
            if (error !== NBD_ERROR.NONE) return { error };
          }
          stats.writes += 1;
          stats.writtenBytes += request.length;
          return { error: NBD_ERROR.NONE };
        });
      case 'flush':
        return this.context.exclusive(async () => {
          try {
            await backend.flush();
            stats.flushes += 1;
            return { error: NBD_ERROR.NONE };
          } catch {
            return { error: NBD_ERROR.EIO };
          }
        });
    }
  }

  /** Observer first (it may refuse), then the backend, then a flush for FUA. Returns an NBD error code. */
  private async apply(offset: number, data: Uint8Array, fua: boolean): Promise<number> {
    const { backend, onWrite } = this.context;
    if (onWrite !== undefined) {
      try {
        await onWrite(offset, data);
      } catch (error) {
        return isKemariError(error, 'KEMARI_DISK_LOG_FULL') ? NBD_ERROR.ENOSPC : NBD_ERROR.EIO;
      }
    }
    try {
      await backend.write(offset, data);
      if (fua) await backend.flush();
      return NBD_ERROR.NONE;
    } catch {
      return NBD_ERROR.EIO;
    }
  }

  /** Writes one batch; waits for 'drain' (or the close) when the socket's buffer is full. */
  private async send(chunks: readonly Uint8Array[]): Promise<void> {
    if (this.connection.closed) return;
    if (this.connection.write(chunks)) return;
    if (this.connection.closed) return;
    await new Promise<void>((resolve) => {
      const finish = (): void => {
        this.connection.off('drain', finish);
        this.connection.off('close', finish);
        resolve();
      };
      this.connection.on('drain', finish);
      this.connection.on('close', finish);
    });
  }

  private report(error: KemariError): void {
    this.context.stats.protocolErrors += 1;
    try {
      this.context.onClientError?.(error);
    } catch {
      // A failing logger must not take the server down.
    }
  }
}

/** Payload bytes an action holds while queued (what backpressure counts). */
function sizeOf(action: NbdAction): number {
  if (action.kind === 'send') {
    let bytes = 0;
    for (const chunk of action.chunks) bytes += chunk.length;
    return bytes;
  }
  if (action.kind === 'request' && action.request.command === 'write') return action.request.data.length;
  return 0;
}
