/**
 * Waits for QEMU to report that a migration ended (MIGRATION event with status `completed`, `failed` or
 * `cancelled`), with a way to stop waiting.
 *
 * Why not `QmpClient.waitForEvent`: its only way out is its timeout, so a migration that never started (QEMU refused
 * the command) would leave a timer running for the whole migration timeout. A checkpoint path that runs every few
 * milliseconds, and a CLI that should exit at once, need the listener gone as soon as the caller gives up.
 */
import type { KemariError } from '../errors.js';
import type { QmpClient, QmpEvent } from './qmp-client.js';

/** The MIGRATION statuses after which QEMU runs no migration any more. */
export const MIGRATION_END_STATUSES: readonly string[] = Object.freeze(['completed', 'failed', 'cancelled']);

/** A pending wait; see {@link watchMigrationEnd}. */
export interface MigrationEndWatch {
  /** Resolves with the ending MIGRATION event; rejects with the close reason if the QMP session closes first. */
  promise: Promise<QmpEvent>;
  /** Stops listening (the promise then never settles). Idempotent. */
  cancel: () => void;
}

/**
 * Starts listening for the end of a migration. Call it before the command that starts the migration: QEMU may send
 * the event before that command's reply. The MIGRATION events need the `events` capability.
 */
export function watchMigrationEnd(qmp: QmpClient): MigrationEndWatch {
  let cancel = (): void => {};
  const promise = new Promise<QmpEvent>((resolve, reject) => {
    const onEvent = (event: QmpEvent): void => {
      if (event.event !== 'MIGRATION' || !MIGRATION_END_STATUSES.includes(String(event.data['status']))) return;
      cancel();
      resolve(event);
    };
    const onClose = (reason: KemariError): void => {
      cancel();
      reject(reason);
    };
    cancel = () => {
      qmp.off('event', onEvent);
      qmp.off('close', onClose);
    };
    if (qmp.isClosed) {
      qmp.closed.then(reject, reject);
      return;
    }
    qmp.on('event', onEvent);
    qmp.on('close', onClose);
  });
  promise.catch(() => {});
  return { promise, cancel: () => cancel() };
}
