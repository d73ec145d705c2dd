/**
 * Loads a migration stream into a QEMU started with `-incoming defer`: `migrate-incoming` on a unix socket, write
 * the stream with backpressure, wait for QEMU to report the migration completed.
 *
 * Why its own function: this is the failover path, so it must never hang. QEMU closes the connection (and, without
 * `exit-on-error` settings, stays up with the migration failed) when it rejects the stream; writing stops then
 * instead of waiting for a 'drain' that will not come, and the outcome is QEMU's own MIGRATION status.
 */
import { rmSync } from 'node:fs';
import net from 'node:net';
import { KemariError } from '../errors.js';
import type { QmpClient } from './qmp-client.js';
import { watchMigrationEnd } from './migration-end.js';

/** Default time a restore stream may take to load (30 s). */
export const INCOMING_TIMEOUT_MS_DEFAULT = 30_000;

/** How one load went. */
export interface IncomingResult {
  /** Bytes written to QEMU. */
  streamBytes: number;
}

/**
 * Loads `chunks` into the QEMU behind `qmp` (started with `-incoming defer`, MIGRATION events on) through a unix
 * socket at `socketPath` (absolute). Rejects with KEMARI_QMP_ERROR when QEMU refuses the command or fails the load
 * (its error description in details), KEMARI_TIMEOUT after `timeoutMs`, KEMARI_QEMU_EXITED when QEMU goes away,
 * and with the generator's error if producing the stream fails (the connection is then cut, so QEMU fails the load).
 */
export async function loadIncomingMigration(
  qmp: QmpClient,
  socketPath: string,
  chunks: Iterable<Uint8Array>,
  timeoutMs = INCOMING_TIMEOUT_MS_DEFAULT,
): Promise<IncomingResult> {
  rmSync(socketPath, { force: true });
  const watch = watchMigrationEnd(qmp);
  const finished = watch.promise;
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new KemariError('KEMARI_TIMEOUT', `loading the restore stream took over ${timeoutMs} ms`, { details: { timeoutMs } })), timeoutMs);
  });
  deadline.catch(() => {});
  let socket: net.Socket | undefined;
  let streamBytes = 0;
  try {
    await Promise.race([qmp.execute('migrate-incoming', { uri: `unix:${socketPath}` }), deadline]);
    const s = net.createConnection({ path: socketPath });
    socket = s;
    await Promise.race([
      new Promise<void>((resolve, reject) => {
        s.once('connect', resolve);
        s.once('error', (cause) => reject(new KemariError('KEMARI_QMP_ERROR', `cannot connect to QEMU's incoming socket: ${cause.message}`, { cause, details: { socketPath } })));
      }),
      deadline,
    ]);
    let closed = false;
    const closedPromise = new Promise<void>((resolve) => s.once('close', () => ((closed = true), resolve())));
    s.on('error', () => {});
    for (const chunk of chunks) {
      if (closed) break;
      streamBytes += chunk.byteLength;
      if (!s.write(chunk)) await Promise.race([new Promise((resolve) => s.once('drain', resolve)), closedPromise, deadline]);
    }
    s.end();
    const event = await Promise.race([finished, deadline]);
    const status = String(event.data['status']);
    if (status !== 'completed') {
      const info = await qmp.execute<{ 'error-desc'?: string }>('query-migrate').catch(() => ({}) as { 'error-desc'?: string });
      throw new KemariError('KEMARI_QMP_ERROR', `loading the restore stream ${status}${info['error-desc'] ? `: ${info['error-desc']}` : ''}`, {
        details: { command: 'migrate-incoming', status, desc: info['error-desc'] },
      });
    }
    return { streamBytes };
  } finally {
    clearTimeout(timer);
    watch.cancel();
    socket?.destroy();
  }
}
