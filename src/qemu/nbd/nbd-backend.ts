/**
 * What the NBD server serves: a fixed-size range of bytes that can be read, written and flushed.
 *
 * Why an interface: kemari's disk may be a file (the primary's real disk), a copy in memory (tests, the secondary's
 * replica) or something layered on either; the protocol code must not care. Methods may answer synchronously or
 * with a promise, so an in-memory backend costs no microtask per request.
 */

/** A block device as the NBD server sees it. */
export interface NbdBackend {
  /** Size of the export in bytes; fixed while served (a safe integer). */
  readonly sizeBytes: number;
  /**
   * Returns exactly `length` bytes from `offset`. The server has checked the range against `sizeBytes`. The result
   * is sent as is, so it must not be modified afterwards (return a copy, not a view of live state that changes).
   * A result of any other length, or a throw, is answered NBD_EIO.
   */
  read(offset: number, length: number): Uint8Array | Promise<Uint8Array>;
  /**
   * Writes `data` at `offset` (range already checked). `data` belongs to the server and the write observer, which
   * may keep it: a backend must copy what it keeps and never modify it. A throw is answered NBD_EIO.
   */
  write(offset: number, data: Uint8Array): void | Promise<void>;
  /** Makes every completed write durable (fdatasync for a file). A throw is answered NBD_EIO. */
  flush(): void | Promise<void>;
}
