/**
 * The numbers of the NBD protocol (NetworkBlockDevice/nbd `doc/proto.md`) that kemari's NBD server speaks.
 *
 * Why a file of its own: the sans-I/O core, the tests and any future client encode the same magics and codes, and a
 * wrong constant is an interop bug that only a real peer finds. Keeping them in one reviewed table (with the spec's
 * names) makes that review one read. Everything on the wire is big-endian.
 */

/** Magic numbers that open NBD messages; a wrong one means the peer is not speaking NBD or the stream lost sync. */
export const NBD_MAGIC = {
  /** "NBDMAGIC": the first 8 bytes the server sends. */
  INIT: 0x4e42444d41474943n,
  /** "IHAVEOPT": follows INIT in newstyle negotiation, and opens every option the client sends. */
  OPTION: 0x49484156454f5054n,
  /** Opens every option reply of fixed newstyle negotiation. */
  OPTION_REPLY: 0x3e889045565a9n,
  /** Opens every transmission request. */
  REQUEST: 0x25609513,
  /** Opens every simple reply. */
  SIMPLE_REPLY: 0x67446698,
} as const;

/** Handshake flags the server sends after the magics (16 bits). */
export const NBD_HANDSHAKE_FLAG = {
  /** The server speaks fixed newstyle: options other than EXPORT_NAME, and structured option replies. */
  FIXED_NEWSTYLE: 1 << 0,
  /** The server can leave out the 124 zero bytes after an NBD_OPT_EXPORT_NAME reply. */
  NO_ZEROES: 1 << 1,
} as const;

/** Client flags (32 bits) the client answers with; any other bit set closes the connection. */
export const NBD_CLIENT_FLAG = {
  /** The client speaks fixed newstyle too. */
  FIXED_NEWSTYLE: 1 << 0,
  /** The client does not want the 124 zero bytes after an NBD_OPT_EXPORT_NAME reply. */
  NO_ZEROES: 1 << 1,
} as const;

/** Option types of the handshake phase (32 bits). Options not listed here are answered NBD_REP_ERR_UNSUP. */
export const NBD_OPT = {
  /** Choose an export and enter transmission at once (old-style entry: cannot report errors). */
  EXPORT_NAME: 1,
  /** The client gives up the negotiation. */
  ABORT: 2,
  /** List the exports. */
  LIST: 3,
  /** Begin TLS (this server does not: NBD_REP_ERR_UNSUP). */
  STARTTLS: 5,
  /** Describe an export without entering transmission. */
  INFO: 6,
  /** Describe an export and enter transmission: EXPORT_NAME that can report errors. */
  GO: 7,
  /** Ask for structured replies (declined: simple replies only). */
  STRUCTURED_REPLY: 8,
  /** List metadata contexts (needs structured replies: declined). */
  LIST_META_CONTEXT: 9,
  /** Select metadata contexts such as base:allocation (needs structured replies: declined). */
  SET_META_CONTEXT: 10,
} as const;

/** Option reply types (32 bits); error types have bit 31 set. */
export const NBD_REP = {
  /** The option succeeded (or a list ended). */
  ACK: 1,
  /** One export of an NBD_OPT_LIST reply. */
  SERVER: 2,
  /** One piece of export information (NBD_INFO_*) of an NBD_OPT_INFO/GO reply. */
  INFO: 3,
  /** The option is not supported by this server. */
  ERR_UNSUP: 0x8000_0001,
  /** The option is known but forbidden by policy. */
  ERR_POLICY: 0x8000_0002,
  /** The option is known but its data is malformed. */
  ERR_INVALID: 0x8000_0003,
  /** The requested export does not exist. */
  ERR_UNKNOWN: 0x8000_0006,
  /** The option (or its reply) is too large to process. */
  ERR_TOO_BIG: 0x8000_0009,
} as const;

/** Information types of NBD_REP_INFO replies (16 bits). */
export const NBD_INFO = {
  /** Export size and transmission flags (always sent before an ACK). */
  EXPORT: 0,
  /** The export's canonical name. */
  NAME: 1,
  /** A human-readable description of the export. */
  DESCRIPTION: 2,
  /** Minimum, preferred and maximum block sizes. */
  BLOCK_SIZE: 3,
} as const;

/** Transmission flags (16 bits) that describe the export and advertise optional commands. */
export const NBD_FLAG = {
  /** Always set: the field is meaningful. */
  HAS_FLAGS: 1 << 0,
  /** The export refuses writes (NBD_EPERM). */
  READ_ONLY: 1 << 1,
  /** NBD_CMD_FLUSH is supported. */
  SEND_FLUSH: 1 << 2,
  /** NBD_CMD_FLAG_FUA is supported. */
  SEND_FUA: 1 << 3,
  /** NBD_CMD_TRIM is supported. */
  SEND_TRIM: 1 << 5,
  /** NBD_CMD_WRITE_ZEROES (and NBD_CMD_FLAG_NO_HOLE) are supported. */
  SEND_WRITE_ZEROES: 1 << 6,
  /** Flushes and FUA are visible across all connections: clients may use several connections at once. */
  CAN_MULTI_CONN: 1 << 8,
} as const;

/** Request types of the transmission phase (16 bits). */
export const NBD_CMD = {
  READ: 0,
  WRITE: 1,
  /** Soft disconnect: no reply, the server closes after the earlier requests. */
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  /** Not supported here (NBD_EINVAL). */
  CACHE: 5,
  WRITE_ZEROES: 6,
  /** Not supported here (needs structured replies: NBD_EINVAL). */
  BLOCK_STATUS: 7,
} as const;

/** Command flags of a request (16 bits). */
export const NBD_CMD_FLAG = {
  /** Force unit access: the reply waits until the data is on stable storage. */
  FUA: 1 << 0,
  /** WRITE_ZEROES must allocate, not punch a hole. */
  NO_HOLE: 1 << 1,
  /** Do not fragment a structured read reply (never valid here: no structured replies). */
  DF: 1 << 2,
  /** BLOCK_STATUS: one extent only (never valid here). */
  REQ_ONE: 1 << 3,
  /** WRITE_ZEROES must fail fast if not faster than a write (not advertised here). */
  FAST_ZERO: 1 << 4,
} as const;

/** Error values of a simple reply (32 bits); errno-like but fixed by the spec, not by the host OS. */
export const NBD_ERROR = {
  /** Success. */
  NONE: 0,
  /** Operation not permitted: a write to a read-only export. */
  EPERM: 1,
  /** Input/output error: the backend failed. */
  EIO: 5,
  /** Cannot allocate memory. */
  ENOMEM: 12,
  /** Invalid argument: bad range, length, flags or command. */
  EINVAL: 22,
  /** No space left: a write beyond the end of the export, or a write kemari refused until the epoch is captured. */
  ENOSPC: 28,
  /** Value too large. */
  EOVERFLOW: 75,
  /** Operation not supported. */
  ENOTSUP: 95,
  /** The server is shutting down. */
  ESHUTDOWN: 108,
} as const;

/** Sizes of the fixed-length messages, in bytes. */
export const NBD_SIZE = {
  /** NBDMAGIC + IHAVEOPT + 16-bit handshake flags. */
  GREETING_BYTES: 18,
  /** The client's 32-bit flags. */
  CLIENT_FLAGS_BYTES: 4,
  /** IHAVEOPT + 32-bit option + 32-bit length. */
  OPTION_HEADER_BYTES: 16,
  /** Reply magic + option + reply type + length. */
  OPTION_REPLY_HEADER_BYTES: 20,
  /** Magic + flags + type + handle + offset + length. */
  REQUEST_HEADER_BYTES: 28,
  /** Magic + error + handle. */
  SIMPLE_REPLY_HEADER_BYTES: 16,
  /** The reserved zeroes after an NBD_OPT_EXPORT_NAME reply (unless NO_ZEROES was agreed). */
  EXPORT_NAME_ZEROES_BYTES: 124,
  /** Longest string (export name, message) the spec allows. */
  STRING_BYTES_MAX: 4096,
} as const;
