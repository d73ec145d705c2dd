/**
 * The messages between {@link PagesWorkerPool} (worker-pool.ts) and its threads (worker-thread.ts).
 *
 * Why only numbers cross: the memory a job reads and writes (guest region, shadow copy or fingerprint table, delta
 * output area, the pool's result scratch) lives in SharedArrayBuffers that each thread received once, under a small
 * integer id ({@link BufferMessage}); a job names its memory as (buffer id, byte offset) pairs, so postMessage
 * carries a few dozen numbers per job whatever the size of the pages, and no page byte is ever cloned.
 */

/** Main thread to worker: from now on, `id` names `buffer` (sent once per buffer, before any job naming it). */
export interface BufferMessage {
  type: 'buffer';
  id: number;
  buffer: SharedArrayBuffer;
}

/**
 * Main thread to worker: from now on, `id` names this thread's own read-only MAP_SHARED mapping of the first `bytes`
 * bytes of the file at `path` (the main thread maps the same file: both see the same pages, e.g. QEMU's guest RAM).
 */
export interface FileMessage {
  type: 'file';
  id: number;
  path: string;
  bytes: number;
}

/** Main thread to worker: `id` is no longer used (its buffer was collected, or its file unshared: then unmapped). */
export interface ForgetMessage {
  type: 'forget';
  id: number;
}

/** A view of a registered buffer: buffer id and byte offset. */
export type SharedRef = readonly [bufferId: number, byteOffset: number];

/** The reference kinds of a scan: shadow copy, or fingerprints as one BigUint64 or two Uint32 words a page. */
export type ScanReferenceKind = 'shadow' | 'fingerprints64' | 'fingerprints32';

/**
 * Main thread to worker: scan pages [firstPage, firstPage + pageCount) of a region. The changed page indices (region
 * indices, not chunk-relative) go to the scratch Uint32Array at element `firstPage` on, their zero flags to the
 * scratch Uint8Array at byte `firstPage` on; the reply's value is how many.
 */
export interface ScanJobMessage {
  type: 'scan';
  /** Operation id and part index, echoed in the reply. */
  op: number;
  part: number;
  kind: ScanReferenceKind;
  pageBytes: number;
  firstPage: number;
  pageCount: number;
  update: boolean;
  seed: bigint;
  /** Byte 0 of the whole region (page 0), and of the whole reference. */
  region: SharedRef;
  reference: SharedRef;
  changedPages: SharedRef;
  zeroFlags: SharedRef;
}

/**
 * Main thread to worker: encode deltas of pages [first, first + count) of a batch. Page k's new and old pages are
 * named by the descriptor table (Float64Array, 4 numbers a page: page buffer id, page byte offset, base buffer id,
 * base byte offset); its delta goes to the output area at byte k * budgetBytes, its length (or -1) to lengths[k].
 * The reply's value is the sum of the non-negative lengths of this part.
 */
export interface EncodeJobMessage {
  type: 'encode';
  op: number;
  part: number;
  pageBytes: number;
  budgetBytes: number;
  first: number;
  count: number;
  descriptors: SharedRef;
  out: SharedRef;
  lengths: SharedRef;
}

/**
 * Main thread to worker, tests only: crash this thread (an uncaught exception, or process.exit, which ends just the
 * thread) when its next job arrives, so the tests can show that a crash rejects the operation and the pool recovers.
 */
export interface FaultMessage {
  type: 'fault';
  mode: 'throw' | 'exit';
}

/** Everything the main thread sends. */
export type ToWorker = BufferMessage | FileMessage | ForgetMessage | ScanJobMessage | EncodeJobMessage | FaultMessage;

/** Worker to main thread, once at start: which backend it loaded, and why not the addon if it did not. */
export interface ReadyMessage {
  type: 'ready';
  implementation: 'native' | 'js';
  nativeLoadError: string | undefined;
}

/** Worker to main thread: a part finished. */
export interface DoneMessage {
  type: 'done';
  op: number;
  part: number;
  value: number;
}

/** Worker to main thread: a part threw (the thread lives on). */
export interface FailedMessage {
  type: 'failed';
  op: number;
  part: number;
  message: string;
  code: string | undefined;
}

/** Everything a worker sends. */
export type FromWorker = ReadyMessage | DoneMessage | FailedMessage;
