/**
 * A byte-stream connection between primary and secondary, as the protocol drivers see it. TCP, Unix sockets,
 * TLS and the in-memory pair all look like this, so the drivers above do not care which one carries the frames.
 */
import type { KemariError } from '../errors.js';

/** Events of a {@link Connection}. */
export interface ConnectionEvents {
  /** Bytes arrived. The chunk is the connection's to give away: it is never reused or modified afterwards. */
  data: (chunk: Uint8Array) => void;
  /** The write buffer drained below its high-water mark after `write` returned false. */
  drain: () => void;
  /** The connection is closed (by either side, or on error). Emitted exactly once. */
  close: (error: KemariError | undefined) => void;
}

/** One duplex byte stream. */
export interface Connection {
  /**
   * Writes the chunks in order as one batch (corked, so a frame's header and body parts leave together).
   * Returns false when the write buffer is above its high-water mark: wait for 'drain' before writing more.
   * Chunks must not be modified until written (they are not copied). The primary reuses a chunk's memory once
   * {@link bufferedBytes} says its bytes were handed over: a connection that keeps references to written chunks
   * must count them in `bufferedBytes` until it no longer reads them (or copy them on write).
   */
  write(chunks: readonly Uint8Array[]): boolean;
  /**
   * Optional: holds the writes that follow until {@link uncork}, so several writes (an epoch's frames) leave in one
   * system call. Each write still answers for the buffer as it stands; calls nest, one uncork per cork.
   */
  cork?(): void;
  /** Optional: ends a {@link cork}, handing the held writes over at once. */
  uncork?(): void;
  /** Closes gracefully after pending writes (`error` undefined) or at once (with `error`). Idempotent. */
  close(error?: KemariError): void;
  /**
   * Bytes written and not yet handed to the OS: every byte of a written chunk the connection may still read (see
   * {@link write}).
   */
  readonly bufferedBytes: number;
  /** True once closed. */
  readonly closed: boolean;
  /** A description of the peer for logs (address:port, socket path, "memory"). */
  readonly peer: string;
  on<E extends keyof ConnectionEvents>(event: E, listener: ConnectionEvents[E]): this;
  off<E extends keyof ConnectionEvents>(event: E, listener: ConnectionEvents[E]): this;
}
