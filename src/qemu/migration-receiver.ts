/**
 * Receives checkpoint streams from a running QEMU: `migrate` to a unix socket we listen on, parse the stream as it
 * arrives, wait until QEMU reports the migration completed.
 *
 * Why a class of its own: the QMP side of a checkpoint has more ways to fail than the parsing (QEMU refuses the
 * migrate, never connects, fails halfway, exits, or the stream is malformed) and every one of them must end with
 * QEMU's migration finished and our socket closed, so the next checkpoint starts clean. The listener stays open for
 * the life of the VM, so a checkpoint costs no socket setup.
 *
 * The caller sees page records one at a time (`onPage`, a reused record with views into the received chunks: copy
 * what you keep) and gets the rest of the stream (configuration, block list, RAM section ids, device blob) at the
 * end.
 */
import { rmSync } from 'node:fs';
import net from 'node:net';
import { isAbsolute } from 'node:path';
import { KemariError, isKemariError } from '../errors.js';
import type { QmpClient } from './qmp-client.js';
import { MigrationStreamParser } from './migration/stream-parser.js';
import type { ConfigurationRecord, MigrationRecord, RamBlockInfo, RamPage } from './migration/records.js';
import type { QemuRamSectionIds } from './qemu-device-state.js';
import { watchMigrationEnd } from './migration-end.js';

/** Default time one checkpoint stream may take, from `migrate` to completion (30 s). */
export const MIGRATION_TIMEOUT_MS_DEFAULT = 30_000;

/** How long a cancelled checkpoint migration is given to report its end. */
const CANCEL_GRACE_MS = 1000;

/** What one stream carried besides its pages. */
export interface ReceivedStream {
  configuration: ConfigurationRecord;
  /** The RAM blocks of the setup record, in order. */
  blocks: RamBlockInfo[];
  ramSection: QemuRamSectionIds;
  /** The device sections (a copy). */
  device: Uint8Array;
  /** Bytes QEMU sent. */
  streamBytes: number;
  /** Page records received (data and fill). */
  pageRecords: number;
}

/** Options of one {@link MigrationReceiver.receive}. */
export interface ReceiveOptions {
  /** Sees the RAM block list as soon as it arrived, before any page; throw to refuse the stream. */
  onBlocks?: (blocks: RamBlockInfo[]) => void;
  /**
   * Sees every page record in stream order, valid during the call only: `data` views the received chunk, and the
   * record object is reused for the next page.
   */
  onPage: (page: RamPage) => void;
  /** Whether `x-ignore-shared` is on (the parser must know). */
  xIgnoreShared: boolean;
  /** Time allowed from `migrate` to completion. Default {@link MIGRATION_TIMEOUT_MS_DEFAULT}. */
  timeoutMs?: number;
}

/** A unix socket QEMU migrates checkpoints to; see the module comment. */
export class MigrationReceiver {
  /** The socket path (absolute). */
  readonly path: string;
  private readonly server: net.Server;
  private waiting: ((socket: net.Socket) => void) | undefined;
  private closed = false;

  private constructor(path: string, server: net.Server) {
    this.path = path;
    this.server = server;
    server.on('connection', (socket) => {
      const take = this.waiting;
      this.waiting = undefined;
      if (take === undefined) socket.destroy();
      else take(socket);
    });
  }

  /**
   * Listens on `path` (absolute; a stale file there is removed). Rejects with KEMARI_INVALID_ARGUMENT for a
   * relative path and KEMARI_LISTEN_FAILED when the socket cannot be bound.
   */
  static async listen(path: string): Promise<MigrationReceiver> {
    if (typeof path !== 'string' || !isAbsolute(path)) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', 'the migration socket path must be absolute', { details: { path } });
    }
    rmSync(path, { force: true });
    const server = net.createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', (cause) => reject(new KemariError('KEMARI_LISTEN_FAILED', `cannot listen on ${path}: ${cause.message}`, { cause, details: { path } })));
      server.listen(path, () => resolve());
    });
    return new MigrationReceiver(path, server);
  }

  /**
   * Runs one checkpoint migration of the (stopped) VM behind `qmp` and parses it. Rejects with KEMARI_QMP_ERROR when
   * QEMU refuses or fails the migration, KEMARI_MIGRATION_FORMAT for a malformed stream, KEMARI_TIMEOUT after
   * `timeoutMs` (the migration is cancelled) and KEMARI_QEMU_EXITED when QEMU goes away. In every case QEMU's
   * migration has ended (or QEMU is gone) when it settles.
   */
  async receive(qmp: QmpClient, options: ReceiveOptions): Promise<ReceivedStream> {
    if (this.closed) throw new KemariError('KEMARI_CLOSED', 'the migration receiver is closed');
    if (this.waiting !== undefined) throw new KemariError('KEMARI_INVALID_ARGUMENT', 'a checkpoint migration is already running');
    const timeoutMs = options.timeoutMs ?? MIGRATION_TIMEOUT_MS_DEFAULT;
    const watch = watchMigrationEnd(qmp);
    const finished = watch.promise;
    let socket: net.Socket | undefined;
    const connected = new Promise<net.Socket>((resolve) => {
      this.waiting = (s) => {
        socket = s;
        resolve(s);
      };
    });

    let configuration: ConfigurationRecord | undefined;
    let blocks: RamBlockInfo[] | undefined;
    let ramSection: QemuRamSectionIds | undefined;
    let device: Uint8Array | undefined;
    let streamBytes = 0;
    let pageRecords = 0;
    let failure: KemariError | undefined;
    const take = (record: MigrationRecord): void => {
      switch (record.type) {
        case 'page':
        case 'fill-page':
          pageRecords += 1;
          options.onPage(record);
          break;
        case 'configuration':
          configuration = record;
          break;
        case 'ram-blocks':
          blocks = record.blocks;
          options.onBlocks?.(record.blocks);
          break;
        case 'ram-section':
          if (record.kind === 'start') ramSection = { sectionId: record.sectionId, instanceId: record.instanceId, versionId: record.versionId };
          break;
        case 'device':
          device = Uint8Array.from(record.data);
          break;
        default:
          break;
      }
    };
    // Records go straight from the parser to `take`, in stream order. A stream has a page record for every guest
    // page: those are two reused objects, so no record object (only a view, for a data page) is made per page.
    const parser = new MigrationStreamParser({ xIgnoreShared: options.xIgnoreShared, keepVmdesc: false, onRecord: take });

    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new KemariError('KEMARI_TIMEOUT', `the checkpoint migration took over ${timeoutMs} ms`, { details: { timeoutMs } })), timeoutMs);
    });
    deadline.catch(() => {});
    try {
      await Promise.race([qmp.execute('migrate', { uri: `unix:${this.path}` }), deadline]);
      // QEMU connects at once; a migration that fails before connecting ends with a MIGRATION event instead. A
      // 'completed' event may be handled before our server's 'connection' event: then the connection is still coming.
      const s = await Promise.race([connected, finished.then((event) => (event.data['status'] === 'completed' ? connected : undefined)), deadline]);
      const streamDone = new Promise<void>((resolve) => {
        if (s === undefined) return resolve();
        s.on('data', (chunk: Buffer) => {
          if (failure !== undefined) return;
          streamBytes += chunk.byteLength;
          try {
            parser.push(chunk);
          } catch (error) {
            failure = asKemariError(error);
            s.destroy();
          }
        });
        s.once('end', () => {
          if (failure !== undefined) return;
          try {
            parser.end();
          } catch (error) {
            failure = asKemariError(error);
          }
        });
        s.once('error', () => {});
        s.once('close', () => resolve());
      });
      const event = await Promise.race([finished, deadline]);
      await Promise.race([streamDone, deadline]);
      const status = String(event.data['status']);
      if (status !== 'completed') {
        if (failure !== undefined) throw failure;
        const info = await qmp.execute<{ 'error-desc'?: string }>('query-migrate').catch(() => ({}) as { 'error-desc'?: string });
        throw new KemariError('KEMARI_QMP_ERROR', `the checkpoint migration ${status}${info['error-desc'] ? `: ${info['error-desc']}` : ''}`, {
          details: { command: 'migrate', status, desc: info['error-desc'] },
        });
      }
      if (failure !== undefined) throw failure;
      if (configuration === undefined || blocks === undefined || ramSection === undefined || device === undefined || !parser.progress.eof) {
        throw new KemariError('KEMARI_MIGRATION_FORMAT', 'the checkpoint stream ended without configuration, RAM blocks or device state', {
          details: { streamBytes },
        });
      }
      return { configuration, blocks, ramSection, device, streamBytes, pageRecords };
    } catch (error) {
      // Leave QEMU with no migration running: cancel it and give it a moment to say so.
      if (isKemariError(error, 'KEMARI_TIMEOUT') || (failure !== undefined && error === failure)) {
        await qmp.execute('migrate_cancel').catch(() => {});
        let grace: NodeJS.Timeout | undefined;
        await Promise.race([finished.catch(() => {}), new Promise((resolve) => (grace = setTimeout(resolve, CANCEL_GRACE_MS)))]);
        clearTimeout(grace);
      }
      throw error;
    } finally {
      clearTimeout(timer);
      watch.cancel();
      this.waiting = undefined;
      socket?.destroy();
    }
  }

  /** Stops listening. Idempotent. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.server.close();
    rmSync(this.path, { force: true });
  }
}

/**
 * Sets what every checkpoint migration of `qmp`'s QEMU needs (also on a standby before `migrate-incoming`):
 * MIGRATION events on (completion is learned from them), `x-ignore-shared` as asked, and the bandwidth cap raised
 * from QEMU's default 128 MiB/s, which would otherwise stretch every checkpoint of a stopped VM.
 */
export async function configureCheckpointMigration(qmp: QmpClient, xIgnoreShared: boolean): Promise<void> {
  await qmp.execute('migrate-set-capabilities', {
    capabilities: [
      { capability: 'events', state: true },
      { capability: 'x-ignore-shared', state: xIgnoreShared },
    ],
  });
  await qmp.execute('migrate-set-parameters', { 'max-bandwidth': MIGRATION_BANDWIDTH_BYTES_PER_S });
}

/** The bandwidth cap set for checkpoints: 100 GiB/s, i.e. none (the stream stays on this host). */
export const MIGRATION_BANDWIDTH_BYTES_PER_S = 100 * 1024 * 1024 * 1024;

function asKemariError(error: unknown): KemariError {
  return error instanceof KemariError ? error : new KemariError('KEMARI_MIGRATION_FORMAT', `checkpoint stream: ${String(error)}`, { cause: error });
}
