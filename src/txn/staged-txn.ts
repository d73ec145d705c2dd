/**
 * A transaction that arrived whole and verified against its COMMIT: everything the replica needs to move from
 * epoch `baseTxn` to epoch `txn` in one step. Data are views into the received frames.
 */
import { KemariError } from '../errors.js';
import type { Commit } from '../wire/bodies/commit.js';
import type { DeviceState } from '../wire/bodies/device.js';
import type { DecodedFrame } from '../wire/frame.js';
import { FrameType } from '../wire/header.js';
import type { TxnDigest } from '../wire/txn-digest.js';
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

/** A transaction with nothing staged yet, as its BEGIN describes it. */
export function beginStagedTxn(txn: number, begin: { full: boolean; baseTxn: number; releasedTxn: number }, pageBytes = 0): StagedTxn {
  return {
    txn,
    full: begin.full,
    baseTxn: begin.baseTxn,
    releasedTxn: begin.releasedTxn,
    pageBytes,
    pages: [],
    devices: [],
    diskWrites: [],
    events: [],
    stateDigest: new Uint8Array(0),
    bodyBytes: 0,
  };
}

/**
 * Adds one body frame (PAGES, DEVICE, DISK, EVENT) of a transaction to what is staged. The one place frames
 * become a StagedTxn: the receiver stages the wire with it, the journal its records. Throws KEMARI_BAD_BODY when
 * a PAGES frame changes the page size inside the transaction, KEMARI_PROTOCOL for any other frame type.
 */
export function stageFrame(staged: StagedTxn, frame: DecodedFrame): void {
  switch (frame.type) {
    case FrameType.PAGES:
      if (staged.pageBytes !== 0 && staged.pageBytes !== frame.body.pageBytes) {
        throw new KemariError('KEMARI_BAD_BODY', `txn ${staged.txn}: page size ${frame.body.pageBytes} inside a transaction of ${staged.pageBytes}`, {
          details: { txn: staged.txn },
        });
      }
      staged.pageBytes = frame.body.pageBytes;
      for (const page of frame.body.pages) staged.pages.push(page);
      return;
    case FrameType.DEVICE:
      staged.devices.push(frame.body);
      return;
    case FrameType.DISK:
      staged.diskWrites.push(frame.body);
      return;
    case FrameType.EVENT:
      staged.events.push(frame.body);
      return;
    default:
      throw new KemariError('KEMARI_PROTOCOL', `frame type ${frame.type} carries nothing to stage`, { details: { txn: staged.txn } });
  }
}

/** Does COMMIT describe exactly the frames staged before it (count, body bytes, CRC digest)? */
export function commitMatches(commit: Commit, digest: TxnDigest): boolean {
  return commit.frameCount === digest.frameCount && commit.bodyBytes === digest.bodyBytes && commit.crcDigest === digest.crcDigest;
}
