/** The ft-transaction wire protocol: header, frame types, body codecs, encoder, streaming decoder, checksums. */
export { crc32c, crc32cImplementation, crc32cOfParts } from './checksum.js';
export {
  BODY_BYTES_LIMIT,
  FLAGS_ALLOWED,
  FRAME_TYPE_NAMES,
  FrameFlag,
  FrameType,
  HEADER_BYTES,
  HeaderOffset,
  MAGIC,
  PROTOCOL_VERSION,
  readHeader,
} from './header.js';
export type { FrameHeader } from './header.js';
export { encodeFrame, encodeFrameToBytes } from './encoder.js';
export type { EncodedFrame, EncodeOptions } from './encoder.js';
export { DEFAULT_BODY_BYTES_MAX, FrameDecoder } from './decoder.js';
export type { FrameDecoderOptions } from './decoder.js';
export type {
  AbortFrame,
  AckFrame,
  BeginFrame,
  CommitFrame,
  DecodedFrame,
  DeviceFrame,
  DiskFrame,
  EventFrame,
  FailoverFrame,
  Frame,
  HeartbeatFrame,
  HelloFrame,
  NackFrame,
  PagesFrame,
  StandDownFrame,
  WireFacts,
} from './frame.js';
export { TxnDigest } from './txn-digest.js';
export type { Ack } from './bodies/ack.js';
export type { Begin } from './bodies/begin.js';
export type { Commit } from './bodies/commit.js';
export { DIGEST_BYTES_MAX } from './bodies/digest.js';
export type { DeviceState } from './bodies/device.js';
export type { DiskWrite } from './bodies/disk.js';
export { CHANNEL_BYTES_MAX } from './bodies/event.js';
export type { OutputEvent } from './bodies/event.js';
export type { Failover } from './bodies/failover.js';
export { PeerState } from './bodies/heartbeat.js';
export type { Heartbeat } from './bodies/heartbeat.js';
export { HELLO_LIMITS } from './bodies/hello.js';
export type { DiskInfo, Hello } from './bodies/hello.js';
export { PAGE_BYTES_MAX, PAGE_BYTES_MIN, PageKind, isValidPageBytes } from './bodies/pages.js';
export type { Page, PageBatch } from './bodies/pages.js';
export { REASON_MESSAGE_BYTES_MAX, ReasonCode } from './bodies/reason.js';
export type { Reason } from './bodies/reason.js';
export type { StandDown } from './bodies/stand-down.js';
