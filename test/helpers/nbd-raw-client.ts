/**
 * A raw NBD test client over a Unix socket or TCP: writes any bytes (valid or not) and reads exact byte counts back, so
 * tests can break the protocol on purpose and see what the server answers.
 */
import { createConnection } from 'node:net';
import type { Socket } from 'node:net';
import { NBD_CLIENT_FLAG, NBD_OPT, NBD_REP } from '../../src/qemu/nbd/nbd-constants.js';
import { clientFlags, concat, decodeOptionReplies, decodeSimpleReply, infoData, option } from './nbd-wire.js';
import type { OptionReply, SimpleReply } from './nbd-wire.js';

/** A connected raw client; every socket it opens is destroyed by {@link RawNbdClient.destroy}. */
export class RawNbdClient {
  private readonly socket: Socket;
  private buffered: Uint8Array = new Uint8Array(0);
  private waiter: (() => void) | undefined;
  private ended = false;
  /** Resolves when the server closed the connection. */
  readonly closed: Promise<void>;

  private constructor(socket: Socket) {
    this.socket = socket;
    socket.on('data', (chunk: Buffer) => {
      this.buffered = concat(this.buffered, chunk);
      this.waiter?.();
    });
    this.closed = new Promise((resolve) => {
      socket.on('close', () => {
        this.ended = true;
        this.waiter?.();
        resolve();
      });
    });
    socket.on('error', () => {});
  }

  /** Connects to the Unix socket at `path`, or to a TCP `{ host, port }`. */
  static connect(to: string | { host: string; port: number }): Promise<RawNbdClient> {
    return new Promise((resolve, reject) => {
      const socket = typeof to === 'string' ? createConnection({ path: to }) : createConnection({ host: to.host, port: to.port });
      socket.once('connect', () => resolve(new RawNbdClient(socket)));
      socket.once('error', reject);
    });
  }

  /** True once the server closed the connection. */
  get isClosed(): boolean {
    return this.ended;
  }

  /** Bytes received and not yet read. */
  get pendingBytes(): number {
    return this.buffered.length;
  }

  /** Bytes written by this client that the kernel has not taken yet (they wait because the server stopped reading). */
  get unsentBytes(): number {
    return this.socket.writableLength;
  }

  /** Sends bytes as they are. */
  write(bytes: Uint8Array): void {
    this.socket.write(bytes);
  }

  /** Sends bytes in chunks of `size` bytes, one event-loop turn apart (exercises the server's reassembly). */
  async writeChunked(bytes: Uint8Array, size: number): Promise<void> {
    for (let i = 0; i < bytes.length; i += size) {
      this.socket.write(bytes.subarray(i, i + size));
      await new Promise((r) => setImmediate(r));
    }
  }

  /** Stops reading from the socket: the kernel buffers fill and the server's writes back up. */
  pause(): void {
    this.socket.pause();
  }

  /** Reads from the socket again. */
  resume(): void {
    this.socket.resume();
  }

  /** Half-closes: the server sees the end of the stream. */
  end(): void {
    this.socket.end();
  }

  /** Destroys the socket. */
  destroy(): void {
    this.socket.destroy();
  }

  /** Reads exactly `n` bytes; rejects if the connection closes first or `timeoutMs` passes. */
  async read(n: number, timeoutMs = 5000): Promise<Uint8Array> {
    const deadline = Date.now() + timeoutMs;
    while (this.buffered.length < n) {
      if (this.ended) throw new Error(`connection closed with ${this.buffered.length} of ${n} bytes`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out with ${this.buffered.length} of ${n} bytes`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.waiter = undefined;
    }
    const out = this.buffered.slice(0, n);
    this.buffered = this.buffered.slice(n);
    return out;
  }

  /** Reads option replies until one with a final type (anything but NBD_REP_SERVER / NBD_REP_INFO). */
  async readOptionReplies(): Promise<OptionReply[]> {
    const replies: OptionReply[] = [];
    for (;;) {
      const header = await this.read(20);
      const length = new DataView(header.buffer, header.byteOffset).getUint32(16);
      const data = await this.read(length);
      const [reply] = decodeOptionReplies(concat(header, data));
      replies.push(reply!);
      if (reply!.type !== NBD_REP.SERVER && reply!.type !== NBD_REP.INFO) return replies;
    }
  }

  /** Reads one simple reply header (and `dataBytes` of payload when given and the reply is a success). */
  async readReply(dataBytes = 0): Promise<SimpleReply & { data: Uint8Array }> {
    const reply = decodeSimpleReply(await this.read(16));
    const data = reply.error === 0 && dataBytes > 0 ? await this.read(dataBytes) : new Uint8Array(0);
    return { ...reply, data };
  }

  /** Resolves true if the server closes within `timeoutMs`. */
  async closesWithin(timeoutMs: number): Promise<boolean> {
    return Promise.race([this.closed.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), timeoutMs))]);
  }

  /** Reads the greeting, agrees to fixed newstyle without zeroes, and enters transmission with NBD_OPT_GO. */
  async handshake(exportName = ''): Promise<OptionReply[]> {
    await this.read(18);
    this.write(concat(clientFlags(NBD_CLIENT_FLAG.FIXED_NEWSTYLE | NBD_CLIENT_FLAG.NO_ZEROES), option(NBD_OPT.GO, infoData(exportName))));
    const replies = await this.readOptionReplies();
    if (replies.at(-1)?.type !== NBD_REP.ACK) throw new Error(`NBD_OPT_GO failed with 0x${replies.at(-1)?.type.toString(16)}`);
    return replies;
  }
}
