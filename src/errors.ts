/**
 * Every error kemari raises is a {@link KemariError} with a stable `code`.
 *
 * Callers branch on `code`, never on the message: messages explain, codes are the contract. The table below is the
 * single list of codes; the README's error table is checked against it by a test, so a new code cannot ship
 * undocumented.
 */
export const ERROR_CODES = {
  KEMARI_BAD_MAGIC: 'A frame does not start with the magic "KMRI": the peer is not speaking kemari or the stream lost sync.',
  KEMARI_UNSUPPORTED_VERSION: 'A frame carries a protocol version this build does not speak.',
  KEMARI_HEADER_CHECKSUM: 'The CRC32C of a frame header does not match: the header cannot be trusted.',
  KEMARI_BODY_CHECKSUM: 'The CRC32C of a frame body does not match the one in its header.',
  KEMARI_UNKNOWN_TYPE: 'A frame type byte names no known frame type.',
  KEMARI_RESERVED_NONZERO: 'A reserved header flag or reserved body field is not zero.',
  KEMARI_FRAME_TOO_LARGE: 'A frame body is larger than the configured bodyBytesMax (checked before anything is buffered).',
  KEMARI_BAD_HEADER: 'A header field is out of range (for example a txn beyond 2^53 - 1).',
  KEMARI_BAD_BODY: 'A frame body is malformed for its type (lengths, counts, order or field types do not add up).',
  KEMARI_TRUNCATED: 'The stream ended in the middle of a frame.',
  KEMARI_INVALID_ARGUMENT: 'An API was called with a value it cannot accept.',
  KEMARI_PROTOCOL: 'The peer sent a valid frame that is not allowed in the current protocol state.',
  KEMARI_HELLO_MISMATCH: 'The peers disagree on something they must share: session, versions, VM geometry or inventory.',
  KEMARI_TXN_TOO_LARGE: 'A transaction grew beyond txnBytesMax or txnFramesMax before its COMMIT.',
  KEMARI_TXN_OUT_OF_ORDER: 'A txn number was old, repeated or skipped, a frame seq was out of order, or BEGIN named another base.',
  KEMARI_TXN_INCOMPLETE: "COMMIT's frame count, byte count or CRC digest disagrees with what was staged.",
  KEMARI_VERIFY_FAILED: "After applying, the replica's state digest differed from COMMIT's; the epoch was rolled back.",
  KEMARI_NACKED: 'The secondary refused a transaction (the NACK reason is in details).',
  KEMARI_CONNECT_FAILED: 'A connection to the peer could not be established.',
  KEMARI_LISTEN_FAILED: 'A listener could not be bound (address in use, a live socket at the path, no permission).',
  KEMARI_CONNECTION_CLOSED: 'The connection closed before the operation completed.',
  KEMARI_TLS_REFUSED: 'The TLS handshake failed: the peer presented no certificate or one not signed by the trusted CA.',
  KEMARI_BUSY: 'The secondary already serves a primary (single writer), or a bounded queue is full: the request is refused, not queued.',
  KEMARI_TAP_FULL: 'The event-tap holds its maximum of events or bytes; the output was refused, not queued.',
  KEMARI_VM_PAUSED: 'The VM was written to while paused.',
  KEMARI_DISK_LOG_FULL: "The epoch's disk write log reached diskLogBytesMax; the write was refused: capture the epoch first.",
  KEMARI_NO_REPLICA: 'There is no committed epoch to promote from.',
  KEMARI_JOURNAL_CORRUPT: 'The journal holds a damaged record before its tail (a torn tail is dropped, damage earlier is not).',
  KEMARI_JOURNAL_IO: 'Reading, writing or syncing the journal failed.',
  KEMARI_PEER_LOST: 'The peer was silent for intervalMs * missedMax, or its connection broke: it is suspected dead.',
  KEMARI_NOT_PROTECTED: 'The operation needs a protected primary (a session up, its secondary holding a committed epoch of it).',
  KEMARI_QUIESCED: 'The primary quiesced after a fatal fault: the VM is paused for post-mortem, outputs of unacked epochs discarded.',
  KEMARI_ARBITER_UNAVAILABLE: 'The arbiter did not answer in time or its connection broke: no lease can be granted or renewed.',
  KEMARI_LEASE_DENIED: "The arbiter granted the session's lease to another holder.",
  KEMARI_LEASE_LOST: 'The lease was superseded by another holder: this side quiesced and never releases output again.',
  KEMARI_QMP_ERROR: 'QEMU answered a QMP command with an error (its class and description are in details).',
  KEMARI_QEMU_EXITED: 'The QEMU process exited or its QMP socket closed; commands still pending fail with this.',
  KEMARI_TIMEOUT: 'An operation did not complete within its timeout (a QMP command, a migration, a process start).',
  KEMARI_MIGRATION_FORMAT: 'A QEMU migration stream is malformed, or uses a capability or record this parser does not support.',
  KEMARI_NBD_PROTOCOL: 'An NBD client broke the protocol (bad magic, unknown option or command, out-of-range request).',
  KEMARI_WORKER_FAILED: 'A page worker thread could not start, crashed or exited; its operation failed (the pool replaces the thread).',
  KEMARI_CLOSED: 'The object was closed; pending outputs are discarded, never released.',
  KEMARI_ABORTED: 'The operation was aborted through its AbortSignal.',
} as const satisfies Record<string, string>;

/** A stable error code; see {@link ERROR_CODES} for what each means. */
export type ErrorCode = keyof typeof ERROR_CODES;

/** Options for {@link KemariError}: the underlying cause, if any, and structured details for logs. */
export interface KemariErrorOptions {
  cause?: unknown;
  details?: Record<string, unknown>;
}

/**
 * The one error class of kemari. `code` is stable across releases; `details` carries the numbers that explain the
 * failure (offsets, lengths, expected and actual checksums) so logs say what happened without parsing messages.
 */
export class KemariError extends Error {
  /** Stable machine-readable code, one of {@link ERROR_CODES}. */
  readonly code: ErrorCode;
  /** Structured facts about the failure (never secrets). */
  readonly details: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, options: KemariErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'KemariError';
    this.code = code;
    this.details = options.details ?? {};
  }
}

/** True when `value` is a {@link KemariError}, optionally with the given code. */
export function isKemariError(value: unknown, code?: ErrorCode): value is KemariError {
  return value instanceof KemariError && (code === undefined || value.code === code);
}
