/**
 * A transaction that arrived whole and verified against its COMMIT: everything the replica needs to move from
 * epoch `baseTxn` to epoch `txn` in one step. Data are views into the received frames.
 */
import type { DeviceState } from '../wire/bodies/device.js';
import type { DiskWrite } from '../wire/bodies/disk.js';
import type { OutputEvent } from '../wire/bodies/event.js';
import type { Page } from '../wire/bodies/pages.js';

export interface StagedTxn {
  txn: number;
  full: boolean;
  baseTxn: number;
  releasedTxn: number;
  pageBytes: number;
  /** Pages in frame order; indices increase within a frame, and a later frame's page wins over an earlier one. */
  pages: Page[];
  devices: DeviceState[];
  diskWrites: DiskWrite[];
  events: OutputEvent[];
  /** The sender's VM state digest, empty when verification is off. */
  stateDigest: Uint8Array;
  /** Total body bytes of the transaction's frames (COMMIT excluded). */
  bodyBytes: number;
}
