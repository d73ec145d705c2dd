/**
 * The NBD server protocol of one client connection, without I/O: bytes in, actions out.
 *
 * Why sans-I/O: the handshake and request parser is where a hostile or broken client attacks, so it must be testable
 * byte by byte, at every split point, with no socket or disk in the way (DESIGN.md section 3). The driver
 * (`nbd-server.ts`) owns the socket and the backend; this core owns the protocol state and every byte layout.
 *
 * The caller's duties, in order:
 *  1. Send the actions of {@link NbdServerCore.start} (the greeting) before anything else.
 *  2. Feed every received chunk to {@link NbdServerCore.receive}, in order; chunks may be split anywhere. The core
 *     copies what it keeps, so the caller may reuse its buffers.
 *  3. Execute the returned actions strictly in order, one after another: `send` writes bytes; `request` runs a
 *     backend operation and then sends the bytes of {@link NbdServerCore.reply}; `close` ends the connection (with a
 *     KEMARI_NBD_PROTOCOL error when the client broke the protocol). Executing in order is what keeps replies in
 *     request order and a flush after the writes it covers.
 *  4. When the peer's side ends, call {@link NbdServerCore.end}: it tells a clean end from a truncated message.
 *
 * What it speaks (NetworkBlockDevice/nbd doc/proto.md): fixed newstyle negotiation with NBD_FLAG_FIXED_NEWSTYLE and
 * NBD_FLAG_NO_ZEROES; options GO, INFO (NBD_INFO_EXPORT, NBD_INFO_NAME, NBD_INFO_BLOCK_SIZE), EXPORT_NAME, LIST and
 * ABORT; every other option (STRUCTURED_REPLY, STARTTLS, metadata contexts, ...) is answered NBD_REP_ERR_UNSUP, so
 * clients (QEMU, libnbd) fall back to simple replies. Transmission: READ, WRITE, FLUSH, DISC, TRIM (accepted as a
 * hint and ignored: the data stays as it was, which both sides of a replica agree on) and WRITE_ZEROES, with FUA.
 *
 * Bounds (DESIGN.md invariant 5): the core buffers at most one message: a 28-byte header, one option of at most
 * `optionBytesMax` bytes or one write payload of at most `requestBytesMax` bytes. Larger payloads are discarded as
 * they stream by (never buffered) and answered with an error; a handshake is limited to `optionsMax` options.
 *
 * Bad input never corrupts (invariant 6): a request that is malformed but still framed (out-of-range offset, bad
 * flags, unknown command, oversized length) gets an error reply and the connection stays usable; only input that
 * loses the framing (bad magic, unknown client flags) or that cannot be refused in-band closes the connection.
 * Error codes: NBD_EINVAL for bad flags, unknown commands, oversized requests and reads or trims past the end;
 * NBD_ENOSPC for writes and write-zeroes past the end (the spec's SHOULD, and what qemu-nbd answers); NBD_EPERM for
 * any write to a read-only export.
 */
import { KemariError } from '../../errors.js';
import {
  NBD_CLIENT_FLAG,
  NBD_CMD,
  NBD_CMD_FLAG,
  NBD_ERROR,
  NBD_FLAG,
  NBD_HANDSHAKE_FLAG,
  NBD_INFO,
  NBD_MAGIC,
  NBD_OPT,
  NBD_REP,
  NBD_SIZE,
} from './nbd-constants.js';

/** Default {@link NbdServerCoreOptions.requestBytesMax}: 32 MiB, the largest request the spec says clients may assume. */
export const NBD_REQUEST_BYTES_MAX_DEFAULT = 32 * 1024 * 1024;
/** Smallest accepted `requestBytesMax`: the preferred block size advertised, so the advertised sizes stay consistent. */
export const NBD_REQUEST_BYTES_MAX_MIN = 4096;
/** Largest accepted `requestBytesMax` (1 GiB): beyond it one request is a memory hazard, not a disk request. */
export const NBD_REQUEST_BYTES_MAX_LIMIT = 1024 * 1024 * 1024;
/** Default {@link NbdServerCoreOptions.optionBytesMax}: room for the longest export name plus info requests. */
export const NBD_OPTION_BYTES_MAX_DEFAULT = 8192;
/** Default {@link NbdServerCoreOptions.optionsMax}: real clients send fewer than ten options. */
export const NBD_OPTIONS_MAX_DEFAULT = 64;
/** Preferred block size advertised in NBD_INFO_BLOCK_SIZE: a page, the unit both file and memory disks like. */
export const NBD_PREFERRED_BLOCK_BYTES = 4096;

/** Configuration of one {@link NbdServerCore}. */
export interface NbdServerCoreOptions {
  /** Size of the export in bytes (a non-negative safe integer). */
  sizeBytes: number;
  /** The one export's name; clients asking for another get NBD_REP_ERR_UNKNOWN. Default '' (the default export). */
  exportName?: string;
  /** Advertise NBD_FLAG_READ_ONLY and refuse every write with NBD_EPERM. Default false. */
  readOnly?: boolean;
  /**
   * Longest READ or WRITE request in bytes, advertised as the maximum block size. Longer ones get NBD_EINVAL (a
   * write's payload is discarded, not buffered). WRITE_ZEROES and TRIM carry no payload and are not limited by it
   * (the driver zeroes in bounded chunks). Default {@link NBD_REQUEST_BYTES_MAX_DEFAULT}.
   */
  requestBytesMax?: number;
  /** Longest option payload in bytes; longer ones are discarded and answered NBD_REP_ERR_TOO_BIG. Default 8192. */
  optionBytesMax?: number;
  /** Most options in one handshake; one more closes the connection (a client haggling forever). Default 64. */
  optionsMax?: number;
}

/** A backend operation the driver must run, then answer with {@link NbdServerCore.reply}. */
export type NbdRequest =
  | { readonly command: 'read'; readonly handle: bigint; readonly offset: number; readonly length: number }
  | { readonly command: 'write'; readonly handle: bigint; readonly offset: number; readonly data: Uint8Array; readonly fua: boolean }
  | { readonly command: 'write-zeroes'; readonly handle: bigint; readonly offset: number; readonly length: number; readonly fua: boolean }
  | { readonly command: 'flush'; readonly handle: bigint };

/** What the driver must do next, in order. */
export type NbdAction =
  /** Write these bytes to the client (as one batch). */
  | { readonly kind: 'send'; readonly chunks: readonly Uint8Array[] }
  /** Run this backend operation, then send `reply(request, result)`. */
  | { readonly kind: 'request'; readonly request: NbdRequest }
  /** End the connection after the earlier actions; `error` is set when the client broke the protocol. */
  | { readonly kind: 'close'; readonly error?: KemariError };

/** How a backend operation ended: an NBD error code (0 or absent for success) and, for a read, the bytes. */
export interface NbdResult {
  /** One of NBD_ERROR; 0 or undefined for success. */
  readonly error?: number;
  /** The bytes read (READ only); must be exactly the requested length. */
  readonly data?: Uint8Array;
}

/** Where the connection stands. */
export type NbdPhase = 'handshake' | 'transmission' | 'closed';

type State = 'client-flags' | 'option-header' | 'option-data' | 'request-header' | 'write-data' | 'discard' | 'closed';

const ENCODER = new TextEncoder();
const EMPTY = new Uint8Array(0);

/** The protocol state of one NBD client connection. See the file comment for the caller's duties. */
export class NbdServerCore {
  /** Size of the export in bytes. */
  readonly sizeBytes: number;
  /** The export's name. */
  readonly exportName: string;
  /** True when the export refuses writes. */
  readonly readOnly: boolean;
  /** Longest READ/WRITE/WRITE_ZEROES request in bytes. */
  readonly requestBytesMax: number;
  /** Longest option payload in bytes. */
  readonly optionBytesMax: number;
  /** Most options in one handshake. */
  readonly optionsMax: number;
  /** The transmission flags advertised (NBD_FLAG_*). */
  readonly transmissionFlags: number;

  private readonly nameBytes: Uint8Array;
  private readonly sizeBig: bigint;
  private state: State = 'client-flags';
  /** The buffer being filled for the current state, and how much of it is. */
  private target: Uint8Array = new Uint8Array(NBD_SIZE.CLIENT_FLAGS_BYTES);
  private filled = 0;
  /** Scratch buffer for the fixed-size headers (never handed out). */
  private readonly header = new Uint8Array(NBD_SIZE.REQUEST_HEADER_BYTES);
  private discardLeft = 0;
  private afterDiscard: { actions: NbdAction[]; next: State } = { actions: [], next: 'closed' };
  private fixedNewstyle = false;
  private noZeroes = false;
  private optionCount = 0;
  private option = 0;
  private pendingWrite: { handle: bigint; offset: number; fua: boolean } | undefined;
  private started = false;

  /** Validates the options; throws KEMARI_INVALID_ARGUMENT for a value it cannot serve. */
  constructor(options: NbdServerCoreOptions) {
    if (typeof options !== 'object' || options === null) invalid('NbdServerCore needs options', { options });
    const { sizeBytes } = options;
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 0) invalid('sizeBytes must be a non-negative safe integer', { sizeBytes });
    const exportName = options.exportName ?? '';
    if (typeof exportName !== 'string' || exportName.includes('\0')) invalid('exportName must be a string without NUL', { exportName });
    const nameBytes = ENCODER.encode(exportName);
    if (nameBytes.length > NBD_SIZE.STRING_BYTES_MAX) {
      invalid(`exportName must be at most ${NBD_SIZE.STRING_BYTES_MAX} bytes of UTF-8`, { exportNameBytes: nameBytes.length });
    }
    const requestBytesMax = options.requestBytesMax ?? NBD_REQUEST_BYTES_MAX_DEFAULT;
    if (!Number.isSafeInteger(requestBytesMax) || requestBytesMax < NBD_REQUEST_BYTES_MAX_MIN || requestBytesMax > NBD_REQUEST_BYTES_MAX_LIMIT) {
      invalid(`requestBytesMax must be an integer in [${NBD_REQUEST_BYTES_MAX_MIN}, ${NBD_REQUEST_BYTES_MAX_LIMIT}]`, { requestBytesMax });
    }
    const optionBytesMax = options.optionBytesMax ?? NBD_OPTION_BYTES_MAX_DEFAULT;
    // GO/INFO for our own name must fit: name length (4) + name + request count (2) + a few info requests.
    const optionBytesMin = nameBytes.length + 32;
    if (!Number.isSafeInteger(optionBytesMax) || optionBytesMax < optionBytesMin || optionBytesMax > 1024 * 1024) {
      invalid(`optionBytesMax must be an integer in [${optionBytesMin}, 1048576]`, { optionBytesMax });
    }
    const optionsMax = options.optionsMax ?? NBD_OPTIONS_MAX_DEFAULT;
    if (!Number.isSafeInteger(optionsMax) || optionsMax < 1) invalid('optionsMax must be a positive integer', { optionsMax });
    this.sizeBytes = sizeBytes;
    this.sizeBig = BigInt(sizeBytes);
    this.exportName = exportName;
    this.nameBytes = nameBytes;
    this.readOnly = options.readOnly === true;
    this.requestBytesMax = requestBytesMax;
    this.optionBytesMax = optionBytesMax;
    this.optionsMax = optionsMax;
    // Multi-conn is honest: the backend has no per-connection cache, and the driver runs every write and flush of
    // all connections one at a time, so a flush on one connection covers the writes replied to on any other.
    this.transmissionFlags = this.readOnly
      ? NBD_FLAG.HAS_FLAGS | NBD_FLAG.READ_ONLY | NBD_FLAG.SEND_FLUSH | NBD_FLAG.CAN_MULTI_CONN
      : NBD_FLAG.HAS_FLAGS | NBD_FLAG.SEND_FLUSH | NBD_FLAG.SEND_FUA | NBD_FLAG.SEND_TRIM | NBD_FLAG.SEND_WRITE_ZEROES | NBD_FLAG.CAN_MULTI_CONN;
  }

  /** Where the connection stands: negotiating, serving requests, or closed. */
  get phase(): NbdPhase {
    if (this.state === 'closed') return 'closed';
    return this.state === 'request-header' || this.state === 'write-data' || (this.state === 'discard' && this.afterDiscard.next === 'request-header')
      ? 'transmission'
      : 'handshake';
  }

  /** The greeting: NBDMAGIC, IHAVEOPT and the handshake flags. Call once, before {@link receive}. */
  start(): NbdAction[] {
    if (this.started) return [];
    this.started = true;
    const bytes = new Uint8Array(NBD_SIZE.GREETING_BYTES);
    const view = viewOf(bytes);
    view.setBigUint64(0, NBD_MAGIC.INIT);
    view.setBigUint64(8, NBD_MAGIC.OPTION);
    view.setUint16(16, NBD_HANDSHAKE_FLAG.FIXED_NEWSTYLE | NBD_HANDSHAKE_FLAG.NO_ZEROES);
    return [{ kind: 'send', chunks: [bytes] }];
  }

  /** Consumes received bytes (any split) and returns the actions they call for, in order. */
  receive(input: Uint8Array): NbdAction[] {
    const actions: NbdAction[] = [];
    let position = 0;
    while (position < input.length && this.state !== 'closed') {
      if (this.state === 'discard') {
        const n = Math.min(this.discardLeft, input.length - position);
        position += n;
        this.discardLeft -= n;
        if (this.discardLeft === 0) this.finishDiscard(actions);
        continue;
      }
      const n = Math.min(this.target.length - this.filled, input.length - position);
      this.target.set(input.subarray(position, position + n), this.filled);
      position += n;
      this.filled += n;
      if (this.filled === this.target.length) this.complete(actions);
    }
    return actions;
  }

  /**
   * The client's side of the stream ended. Returns a clean close when it ended between messages, or a close with
   * KEMARI_NBD_PROTOCOL (`details.reason` "truncated") when it ended inside one; nothing when already closed.
   */
  end(): NbdAction[] {
    if (this.state === 'closed') return [];
    const atBoundary =
      this.filled === 0 && (this.state === 'client-flags' || this.state === 'option-header' || this.state === 'request-header');
    const actions: NbdAction[] = [];
    if (atBoundary) this.close(actions);
    else this.close(actions, protocolError('truncated', `the client closed in the middle of a message (${this.state})`, { state: this.state, filled: this.filled }));
    return actions;
  }

  /**
   * The bytes answering `request`: a simple reply with `result.error`, followed for a successful read by its data.
   * A read whose data is missing or of the wrong length is answered NBD_EIO instead: a wrong-length payload would
   * desynchronise the client.
   */
  reply(request: NbdRequest, result: NbdResult = {}): Uint8Array[] {
    let error = result.error ?? NBD_ERROR.NONE;
    if (!Number.isInteger(error) || error < 0 || error > 0xffff_ffff) error = NBD_ERROR.EIO;
    if (request.command === 'read' && error === NBD_ERROR.NONE) {
      const data = result.data;
      if (!(data instanceof Uint8Array) || data.length !== request.length) return [simpleReply(request.handle, NBD_ERROR.EIO)];
      return data.length === 0 ? [simpleReply(request.handle, error)] : [simpleReply(request.handle, error), data];
    }
    return [simpleReply(request.handle, error)];
  }

  // ---- parser plumbing ----

  /** Starts filling a buffer of `length` bytes for `state`; a zero-length one completes at once. */
  private expect(state: State, length: number, actions: NbdAction[]): void {
    this.state = state;
    this.filled = 0;
    // Headers reuse the scratch buffer; payloads get their own, because they are handed out in actions.
    this.target = state === 'option-data' || state === 'write-data' ? (length === 0 ? EMPTY : new Uint8Array(length)) : this.header.subarray(0, length);
    if (length === 0) this.complete(actions);
  }

  /** Skips `length` bytes of input, then emits `after` and continues in `next`. */
  private discard(length: number, after: NbdAction[], next: State, actions: NbdAction[]): void {
    this.afterDiscard = { actions: after, next };
    this.discardLeft = length;
    this.state = 'discard';
    this.filled = 0;
    if (length === 0) this.finishDiscard(actions);
  }

  private finishDiscard(actions: NbdAction[]): void {
    const { actions: after, next } = this.afterDiscard;
    this.afterDiscard = { actions: [], next: 'closed' };
    actions.push(...after);
    this.expectNext(next, actions);
  }

  private expectNext(next: State, actions: NbdAction[]): void {
    if (next === 'option-header') this.expect('option-header', NBD_SIZE.OPTION_HEADER_BYTES, actions);
    else if (next === 'request-header') this.expect('request-header', NBD_SIZE.REQUEST_HEADER_BYTES, actions);
    else this.state = 'closed';
  }

  private complete(actions: NbdAction[]): void {
    switch (this.state) {
      case 'client-flags':
        this.onClientFlags(actions);
        break;
      case 'option-header':
        this.onOptionHeader(actions);
        break;
      case 'option-data':
        this.onOptionData(this.target, actions);
        break;
      case 'request-header':
        this.onRequestHeader(actions);
        break;
      case 'write-data':
        this.onWriteData(this.target, actions);
        break;
      default:
        break;
    }
  }

  private close(actions: NbdAction[], error?: KemariError): void {
    this.state = 'closed';
    this.target = EMPTY;
    this.filled = 0;
    this.pendingWrite = undefined;
    actions.push(error === undefined ? { kind: 'close' } : { kind: 'close', error });
  }

  // ---- handshake ----

  private onClientFlags(actions: NbdAction[]): void {
    const flags = viewOf(this.target).getUint32(0);
    const known = NBD_CLIENT_FLAG.FIXED_NEWSTYLE | NBD_CLIENT_FLAG.NO_ZEROES;
    if ((flags & ~known) !== 0) {
      // The spec requires dropping the connection: the client expects something we never offered.
      this.close(actions, protocolError('client-flags', `unknown client flags 0x${flags.toString(16)}`, { clientFlags: flags }));
      return;
    }
    this.fixedNewstyle = (flags & NBD_CLIENT_FLAG.FIXED_NEWSTYLE) !== 0;
    this.noZeroes = (flags & NBD_CLIENT_FLAG.NO_ZEROES) !== 0;
    this.expect('option-header', NBD_SIZE.OPTION_HEADER_BYTES, actions);
  }

  private onOptionHeader(actions: NbdAction[]): void {
    const view = viewOf(this.target);
    const magic = view.getBigUint64(0);
    const option = view.getUint32(8);
    const length = view.getUint32(12);
    if (magic !== NBD_MAGIC.OPTION) {
      this.close(actions, protocolError('option-magic', `bad option magic 0x${magic.toString(16)}`, { magic: `0x${magic.toString(16)}` }));
      return;
    }
    this.optionCount += 1;
    if (this.optionCount > this.optionsMax) {
      this.close(actions, protocolError('options-max', `more than optionsMax (${this.optionsMax}) options in one handshake`, { optionsMax: this.optionsMax }));
      return;
    }
    if (!this.fixedNewstyle && option !== NBD_OPT.EXPORT_NAME) {
      // A client without fixed newstyle cannot parse option replies, so there is no way to refuse it in-band.
      this.close(actions, protocolError('not-fixed-newstyle', `option ${option} from a client that did not agree to fixed newstyle`, { option }));
      return;
    }
    if (length > this.optionBytesMax) {
      if (option === NBD_OPT.EXPORT_NAME) {
        this.close(actions, protocolError('option-too-big', `NBD_OPT_EXPORT_NAME of ${length} bytes`, { option, length, optionBytesMax: this.optionBytesMax }));
        return;
      }
      const refusal = optionReply(option, NBD_REP.ERR_TOO_BIG, message(`option of ${length} bytes exceeds ${this.optionBytesMax}`));
      this.discard(length, [send(refusal)], 'option-header', actions);
      return;
    }
    this.option = option;
    this.expect('option-data', length, actions);
  }

  private onOptionData(data: Uint8Array, actions: NbdAction[]): void {
    const option = this.option;
    switch (option) {
      case NBD_OPT.EXPORT_NAME:
        if (!sameBytes(data, this.nameBytes)) {
          // EXPORT_NAME cannot answer with an error: the spec says to terminate the session.
          this.close(actions, protocolError('unknown-export', 'NBD_OPT_EXPORT_NAME named an export that does not exist', { exportNameBytes: data.length }));
          return;
        }
        actions.push(send(this.exportNameReply()));
        this.expect('request-header', NBD_SIZE.REQUEST_HEADER_BYTES, actions);
        return;
      case NBD_OPT.ABORT:
        // The spec asks for an ACK, then the client drops the connection; we close after sending it either way.
        actions.push(send(optionReply(option, NBD_REP.ACK)));
        this.close(actions);
        return;
      case NBD_OPT.LIST: {
        if (data.length !== 0) {
          actions.push(send(optionReply(option, NBD_REP.ERR_INVALID, message('NBD_OPT_LIST carries no data'))));
          break;
        }
        const server = new Uint8Array(4 + this.nameBytes.length);
        viewOf(server).setUint32(0, this.nameBytes.length);
        server.set(this.nameBytes, 4);
        actions.push(send(optionReply(option, NBD_REP.SERVER, server), optionReply(option, NBD_REP.ACK)));
        break;
      }
      case NBD_OPT.INFO:
      case NBD_OPT.GO:
        if (this.onInfoOrGo(option, data, actions)) return;
        break;
      case NBD_OPT.STRUCTURED_REPLY:
        actions.push(send(optionReply(option, NBD_REP.ERR_UNSUP, message('structured replies are not supported: simple replies only'))));
        break;
      default:
        actions.push(send(optionReply(option, NBD_REP.ERR_UNSUP, message(`option ${option} is not supported`))));
        break;
    }
    this.expect('option-header', NBD_SIZE.OPTION_HEADER_BYTES, actions);
  }

  /** Answers NBD_OPT_INFO or NBD_OPT_GO; returns true when transmission began (GO accepted). */
  private onInfoOrGo(option: number, data: Uint8Array, actions: NbdAction[]): boolean {
    const view = viewOf(data);
    const invalidOption = (why: string): false => {
      actions.push(send(optionReply(option, NBD_REP.ERR_INVALID, message(why))));
      return false;
    };
    if (data.length < 6) return invalidOption('NBD_OPT_INFO/GO data is shorter than 6 bytes');
    const nameLength = view.getUint32(0);
    if (nameLength > data.length - 6) return invalidOption('the export name runs past the option data');
    const name = data.subarray(4, 4 + nameLength);
    const count = view.getUint16(4 + nameLength);
    if (data.length !== 6 + nameLength + 2 * count) return invalidOption('the information request list does not match the option length');
    if (!sameBytes(name, this.nameBytes)) {
      actions.push(send(optionReply(option, NBD_REP.ERR_UNKNOWN, message('no such export'))));
      return false;
    }
    const requested = new Set<number>();
    for (let i = 0; i < count; i += 1) requested.add(view.getUint16(6 + nameLength + 2 * i));
    const replies: Uint8Array[] = [];
    const exportInfo = new Uint8Array(12);
    const exportView = viewOf(exportInfo);
    exportView.setUint16(0, NBD_INFO.EXPORT);
    exportView.setBigUint64(2, this.sizeBig);
    exportView.setUint16(10, this.transmissionFlags);
    replies.push(optionReply(option, NBD_REP.INFO, exportInfo));
    if (requested.has(NBD_INFO.NAME)) {
      const nameInfo = new Uint8Array(2 + this.nameBytes.length);
      viewOf(nameInfo).setUint16(0, NBD_INFO.NAME);
      nameInfo.set(this.nameBytes, 2);
      replies.push(optionReply(option, NBD_REP.INFO, nameInfo));
    }
    if (requested.has(NBD_INFO.BLOCK_SIZE)) {
      const blockInfo = new Uint8Array(14);
      const blockView = viewOf(blockInfo);
      blockView.setUint16(0, NBD_INFO.BLOCK_SIZE);
      blockView.setUint32(2, 1); // any alignment: both backends address single bytes
      blockView.setUint32(6, NBD_PREFERRED_BLOCK_BYTES);
      blockView.setUint32(10, this.requestBytesMax);
      replies.push(optionReply(option, NBD_REP.INFO, blockInfo));
    }
    replies.push(optionReply(option, NBD_REP.ACK));
    actions.push(send(...replies));
    if (option !== NBD_OPT.GO) return false;
    this.expect('request-header', NBD_SIZE.REQUEST_HEADER_BYTES, actions);
    return true;
  }

  private exportNameReply(): Uint8Array {
    const bytes = new Uint8Array(10 + (this.noZeroes ? 0 : NBD_SIZE.EXPORT_NAME_ZEROES_BYTES));
    const view = viewOf(bytes);
    view.setBigUint64(0, this.sizeBig);
    view.setUint16(8, this.transmissionFlags);
    return bytes;
  }

  // ---- transmission ----

  private onRequestHeader(actions: NbdAction[]): void {
    const view = viewOf(this.target);
    const magic = view.getUint32(0);
    if (magic !== NBD_MAGIC.REQUEST) {
      // Without the magic the framing is lost: nothing after this point can be trusted to be a request.
      this.close(actions, protocolError('request-magic', `bad request magic 0x${magic.toString(16)}`, { magic: `0x${magic.toString(16)}` }));
      return;
    }
    const flags = view.getUint16(4);
    const type = view.getUint16(6);
    const handle = view.getBigUint64(8);
    const offset = view.getBigUint64(16);
    const length = view.getUint32(24);
    const fua = (flags & NBD_CMD_FLAG.FUA) !== 0;
    const next = (): void => this.expect('request-header', NBD_SIZE.REQUEST_HEADER_BYTES, actions);
    /** Answers at once, without the backend (an error, or a trim's success), and reads on. */
    const answer = (error: number): void => {
      actions.push(send(simpleReply(handle, error)));
      next();
    };
    switch (type) {
      case NBD_CMD.READ: {
        if (!this.flagsAllowed(flags, 0)) return answer(NBD_ERROR.EINVAL);
        if (length > this.requestBytesMax) return answer(NBD_ERROR.EINVAL);
        if (!this.inRange(offset, length)) return answer(NBD_ERROR.EINVAL);
        actions.push({ kind: 'request', request: { command: 'read', handle, offset: Number(offset), length } });
        return next();
      }
      case NBD_CMD.WRITE: {
        // The payload follows whatever we think of the request: refusals skip it, so the next header is found.
        let error: number = NBD_ERROR.NONE;
        if (!this.flagsAllowed(flags, 0)) error = NBD_ERROR.EINVAL;
        else if (this.readOnly) error = NBD_ERROR.EPERM;
        else if (length > this.requestBytesMax) error = NBD_ERROR.EINVAL;
        else if (!this.inRange(offset, length)) error = NBD_ERROR.ENOSPC;
        if (error !== NBD_ERROR.NONE) {
          this.discard(length, [send(simpleReply(handle, error))], 'request-header', actions);
          return;
        }
        this.pendingWrite = { handle, offset: Number(offset), fua };
        this.expect('write-data', length, actions);
        return;
      }
      case NBD_CMD.DISC:
        // No reply; the driver closes after the requests before this one (it runs actions in order).
        this.close(actions);
        return;
      case NBD_CMD.FLUSH:
        if (!this.flagsAllowed(flags, 0)) return answer(NBD_ERROR.EINVAL);
        actions.push({ kind: 'request', request: { command: 'flush', handle } });
        return next();
      case NBD_CMD.TRIM:
        if (!this.flagsAllowed(flags, 0)) return answer(NBD_ERROR.EINVAL);
        if (this.readOnly) return answer(NBD_ERROR.EPERM);
        if (!this.inRange(offset, length)) return answer(NBD_ERROR.EINVAL);
        // A trim is a hint the spec lets a server ignore; ignoring it changes nothing, so the replica agrees.
        return answer(NBD_ERROR.NONE);
      case NBD_CMD.WRITE_ZEROES:
        if (!this.flagsAllowed(flags, NBD_CMD_FLAG.NO_HOLE)) return answer(NBD_ERROR.EINVAL);
        if (this.readOnly) return answer(NBD_ERROR.EPERM);
        if (!this.inRange(offset, length)) return answer(NBD_ERROR.ENOSPC);
        actions.push({ kind: 'request', request: { command: 'write-zeroes', handle, offset: Number(offset), length, fua } });
        return next();
      default:
        // CACHE, BLOCK_STATUS and unknown commands carry no payload we could know of: refuse and read on.
        return answer(NBD_ERROR.EINVAL);
    }
  }

  private onWriteData(data: Uint8Array, actions: NbdAction[]): void {
    const pending = this.pendingWrite;
    this.pendingWrite = undefined;
    if (pending !== undefined) actions.push({ kind: 'request', request: { command: 'write', handle: pending.handle, offset: pending.offset, data, fua: pending.fua } });
    this.expect('request-header', NBD_SIZE.REQUEST_HEADER_BYTES, actions);
  }

  /** FUA is valid on every command once advertised (the spec says so, and clients set it on reads); `extra` adds more. */
  private flagsAllowed(flags: number, extra: number): boolean {
    const allowed = (this.readOnly ? 0 : NBD_CMD_FLAG.FUA) | extra;
    return (flags & ~allowed) === 0;
  }

  private inRange(offset: bigint, length: number): boolean {
    return offset <= this.sizeBig && BigInt(length) <= this.sizeBig - offset;
  }
}

/** A DataView over exactly `bytes`. */
function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function send(...chunks: Uint8Array[]): NbdAction {
  return { kind: 'send', chunks };
}

/** An option reply: magic, option, reply type, length, data. */
function optionReply(option: number, type: number, data: Uint8Array = EMPTY): Uint8Array {
  const bytes = new Uint8Array(NBD_SIZE.OPTION_REPLY_HEADER_BYTES + data.length);
  const view = viewOf(bytes);
  view.setBigUint64(0, NBD_MAGIC.OPTION_REPLY);
  view.setUint32(8, option);
  view.setUint32(12, type);
  view.setUint32(16, data.length);
  bytes.set(data, NBD_SIZE.OPTION_REPLY_HEADER_BYTES);
  return bytes;
}

/** A simple reply header: magic, error, handle. */
function simpleReply(handle: bigint, error: number): Uint8Array {
  const bytes = new Uint8Array(NBD_SIZE.SIMPLE_REPLY_HEADER_BYTES);
  const view = viewOf(bytes);
  view.setUint32(0, NBD_MAGIC.SIMPLE_REPLY);
  view.setUint32(4, error);
  view.setBigUint64(8, handle);
  return bytes;
}

/** An error reply's human-readable text. */
function message(text: string): Uint8Array {
  return ENCODER.encode(text);
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i += 1) if (a[i] !== b[i]) return false;
  return true;
}

function protocolError(reason: string, text: string, details: Record<string, unknown>): KemariError {
  return new KemariError('KEMARI_NBD_PROTOCOL', `NBD client broke the protocol: ${text}`, { details: { reason, ...details } });
}

function invalid(text: string, details: Record<string, unknown>): never {
  throw new KemariError('KEMARI_INVALID_ARGUMENT', text, { details });
}
