/**
 * The typed frame model: a frame is its header fields plus a typed body, discriminated by `type`.
 *
 * `encodeFrame` takes a {@link Frame}; `FrameDecoder` hands on {@link DecodedFrame}s, which add what only the wire
 * knows (flags, body length and body CRC; the receiver needs the CRCs to check COMMIT's digest).
 */
import type { Ack } from './bodies/ack.js';
import { decodeAck, encodeAck } from './bodies/ack.js';
import type { Begin } from './bodies/begin.js';
import { decodeBegin, encodeBegin } from './bodies/begin.js';
import type { Commit } from './bodies/commit.js';
import { decodeCommit, encodeCommit } from './bodies/commit.js';
import type { DeviceState } from './bodies/device.js';
import { decodeDevice, encodeDevice } from './bodies/device.js';
import type { DiskWrite } from './bodies/disk.js';
import { decodeDisk, encodeDisk } from './bodies/disk.js';
import type { OutputEvent } from './bodies/event.js';
import { decodeEvent, encodeEvent } from './bodies/event.js';
import type { Failover } from './bodies/failover.js';
import { decodeFailover, encodeFailover } from './bodies/failover.js';
import type { Heartbeat } from './bodies/heartbeat.js';
import { decodeHeartbeat, encodeHeartbeat } from './bodies/heartbeat.js';
import type { Hello } from './bodies/hello.js';
import { decodeHello, encodeHello } from './bodies/hello.js';
import type { PageBatch } from './bodies/pages.js';
import { decodePages, encodePages } from './bodies/pages.js';
import type { Reason } from './bodies/reason.js';
import type { StandDown } from './bodies/stand-down.js';
import { decodeStandDown, encodeStandDown } from './bodies/stand-down.js';
import { decodeReason, encodeReason } from './bodies/reason.js';
import { FrameType } from './header.js';
import { invalid } from './validate.js';

interface FrameOf<T extends FrameType, B> {
  type: T;
  /** Epoch number; 0 for frames outside any transaction (HELLO, HEARTBEAT). */
  txn: number;
  /** Frame index inside the transaction (BEGIN is 0, COMMIT is the frame count). */
  seq: number;
  body: B;
}

export type HelloFrame = FrameOf<typeof FrameType.HELLO, Hello>;
export type BeginFrame = FrameOf<typeof FrameType.BEGIN, Begin>;
export type PagesFrame = FrameOf<typeof FrameType.PAGES, PageBatch>;
export type DeviceFrame = FrameOf<typeof FrameType.DEVICE, DeviceState>;
export type DiskFrame = FrameOf<typeof FrameType.DISK, DiskWrite>;
export type EventFrame = FrameOf<typeof FrameType.EVENT, OutputEvent>;
export type CommitFrame = FrameOf<typeof FrameType.COMMIT, Commit>;
export type AckFrame = FrameOf<typeof FrameType.ACK, Ack>;
export type NackFrame = FrameOf<typeof FrameType.NACK, Reason>;
export type AbortFrame = FrameOf<typeof FrameType.ABORT, Reason>;
export type HeartbeatFrame = FrameOf<typeof FrameType.HEARTBEAT, Heartbeat>;
export type FailoverFrame = FrameOf<typeof FrameType.FAILOVER, Failover>;
export type StandDownFrame = FrameOf<typeof FrameType.STAND_DOWN, StandDown>;

/** Any frame, typed by its `type`. */
export type Frame =
  | HelloFrame
  | BeginFrame
  | PagesFrame
  | DeviceFrame
  | DiskFrame
  | EventFrame
  | CommitFrame
  | AckFrame
  | NackFrame
  | AbortFrame
  | HeartbeatFrame
  | FailoverFrame
  | StandDownFrame;

/** What the wire adds to a decoded frame. */
export interface WireFacts {
  flags: number;
  bodyBytes: number;
  bodyCrc: number;
}

/** A frame as the decoder hands it on: verified, with its wire facts. */
export type DecodedFrame = Frame & WireFacts;

/** Body parts and header flags of a frame. Parts are views where the body holds caller data (no copies). */
export function encodeBody(frame: Frame): { parts: Uint8Array[]; flags: number } {
  switch (frame.type) {
    case FrameType.HELLO:
      return { parts: encodeHello(frame.body), flags: 0 };
    case FrameType.BEGIN:
      return { parts: encodeBegin(frame.body), flags: 0 };
    case FrameType.PAGES:
      return encodePages(frame.body);
    case FrameType.DEVICE:
      return { parts: encodeDevice(frame.body), flags: 0 };
    case FrameType.DISK:
      return { parts: encodeDisk(frame.body), flags: 0 };
    case FrameType.EVENT:
      return { parts: encodeEvent(frame.body), flags: 0 };
    case FrameType.COMMIT:
      return { parts: encodeCommit(frame.body), flags: 0 };
    case FrameType.ACK:
      return { parts: encodeAck(frame.body), flags: 0 };
    case FrameType.NACK:
    case FrameType.ABORT:
      return { parts: encodeReason(frame.body), flags: 0 };
    case FrameType.HEARTBEAT:
      return { parts: encodeHeartbeat(frame.body), flags: 0 };
    case FrameType.FAILOVER:
      return { parts: encodeFailover(frame.body), flags: 0 };
    case FrameType.STAND_DOWN:
      return { parts: encodeStandDown(frame.body), flags: 0 };
    default:
      return invalid('frame.type', 'unknown frame type', (frame as { type: unknown }).type);
  }
}

/** Decodes a verified body of `type`; throws KemariError (KEMARI_BAD_BODY, KEMARI_RESERVED_NONZERO) on bad input. */
export function decodeBody(type: FrameType, flags: number, body: Uint8Array): Frame['body'] {
  switch (type) {
    case FrameType.HELLO:
      return decodeHello(body);
    case FrameType.BEGIN:
      return decodeBegin(body);
    case FrameType.PAGES:
      return decodePages(body, flags);
    case FrameType.DEVICE:
      return decodeDevice(body);
    case FrameType.DISK:
      return decodeDisk(body);
    case FrameType.EVENT:
      return decodeEvent(body);
    case FrameType.COMMIT:
      return decodeCommit(body);
    case FrameType.ACK:
      return decodeAck(body);
    case FrameType.NACK:
      return decodeReason(body, 'NACK');
    case FrameType.ABORT:
      return decodeReason(body, 'ABORT');
    case FrameType.HEARTBEAT:
      return decodeHeartbeat(body);
    case FrameType.FAILOVER:
      return decodeFailover(body);
    case FrameType.STAND_DOWN:
      return decodeStandDown(body);
  }
}
