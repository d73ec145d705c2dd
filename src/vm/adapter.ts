/**
 * The contract between kemari and a virtual machine. `SimulatedVm` implements it in memory (the embedded default
 * and the reference), `QemuVm` (subpath `kemari/qemu`) for real QEMU.
 *
 * Kemari's transfer is asynchronous: the VM is paused only for {@link VmAdapter.capture}, which must copy what it
 * returns (dirty pages into a send buffer, disk writes, device state) so the VM can resume while the transaction
 * streams. Nothing returned by `capture` may change afterwards, with one exception the primary asks for: an
 * adapter that can mark pages dirty again ({@link VmAdapter.markDirty}) may return the pages of an in-place
 * capture ({@link CaptureOptions.inPlace}) as views of guest memory, which the primary encodes or copies itself
 * before it resumes the VM.
 */
import type { DeviceState } from '../wire/bodies/device.js';
import type { DiskWrite } from '../wire/bodies/disk.js';
import type { DiskInfo } from '../wire/bodies/hello.js';
import type { Page } from '../wire/bodies/pages.js';

/** Everything one epoch changed, captured while the VM was paused. */
export interface EpochCapture {
  /** True when `pages` holds every page of memory (the first transaction of a session). */
  full: boolean;
  /**
   * Changed pages (all pages when `full`), sorted by index. RAW pages carry a copy taken during the pause; pages
   * found to be all zero may be given as ZERO with empty data.
   */
  pages: Page[];
  /** State of every device, in `deviceNames` order. */
  devices: DeviceState[];
  /**
   * True when the RAW pages are views of guest memory ({@link CaptureOptions.inPlace} honoured): valid only until
   * the VM resumes. Absent or false: they are copies.
   */
  inPlace?: boolean;
  /** Disk writes since the previous capture, in the order they were issued (later writes win). */
  diskWrites: DiskWrite[];
  /** The VM state digest ({@link computeStateDigest}) at capture time when asked for, else empty. */
  stateDigest: Uint8Array;
}

/** Options for one capture. */
export interface CaptureOptions {
  /**
   * Copy the pages into SharedArrayBuffers, so a PagesWorkerPool's threads can read them in place (delta encoding
   * of a large epoch). A hint: an adapter may ignore it (the work then stays on the calling thread).
   */
  sharedBuffers?: boolean;
  /** Capture every page instead of the pages dirtied since the previous capture. */
  full: boolean;
  /**
   * Return the RAW pages as views of guest memory instead of copies (setting {@link EpochCapture.inPlace}): the
   * caller reads them before it resumes the VM, so a page that goes out as a small delta is never copied whole.
   * Asked only of an adapter with {@link VmAdapter.markDirty} (what the caller keeps of an epoch is then the page
   * numbers, not the pages). A hint: an adapter may copy anyway.
   */
  inPlace?: boolean;
  /** Also compute the state digest (end-to-end verification). */
  digest: boolean;
  /**
   * Describe every disk whole (as in a full capture) while taking only the dirty pages: the last step of a full
   * sync whose pages were pre-copied.
   */
  wholeDisks?: boolean;
}

/** Options of one pre-copy call. */
export interface PrecopyOptions {
  all: boolean;
  fromIndex: number;
  pagesMax: number;
}

/** One pre-copied chunk. */
export interface PrecopyChunk {
  pages: Page[];
  /** The page index to continue from, or undefined when the round is done. */
  nextIndex: number | undefined;
}

/** A VM kemari can protect. */
export interface VmAdapter {
  /** Guest memory size in bytes (a multiple of `pageBytes`). */
  readonly memoryBytes: number;
  /** Page size in bytes. */
  readonly pageBytes: number;
  /** Device names, stable for the life of the VM. */
  readonly deviceNames: readonly string[];
  /** The VM's disks. */
  readonly disks: readonly DiskInfo[];
  /** Stops the guest: no memory, device or disk change until {@link resume}. */
  pause(): void | Promise<void>;
  /** Lets the guest run again. */
  resume(): void | Promise<void>;
  /** Captures the epoch (the VM is paused) and starts a new one: dirty tracking and disk write log are reset. */
  capture(options: CaptureOptions): EpochCapture | Promise<EpochCapture>;
  /**
   * Optional pre-copy, for a full sync that does not stop the guest for long: while the guest runs, copies the
   * pages from `fromIndex` on (every page when `all`, else those dirtied since they were last copied), at most
   * `pagesMax` of them, and clears their dirty marks. Returns them and where to continue (undefined: the round is
   * done). Bounded chunks keep both memory and the time between two writes small. An adapter without it is fully
   * synced by one capture.
   */
  precopy?(options: PrecopyOptions): PrecopyChunk | Promise<PrecopyChunk>;
  /**
   * Optional: marks pages dirty again, so the next capture takes them (with what they hold then) whether or not the
   * guest wrote them since. Why: epochs the secondary never committed must go out again after a reconnect; with
   * this, the primary keeps their page numbers instead of copies of their pages, and it may capture in place
   * ({@link CaptureOptions.inPlace}). Indices must be below memoryBytes / pageBytes; called while the VM is paused.
   */
  markDirty?(pageIndices: Uint32Array): void | Promise<void>;
  /**
   * Optional: takes back a capture whose epoch the secondary committed; nothing refers to its pages any more (the
   * frames that carried them were received), so the adapter may reuse their buffers for a later capture instead
   * of leaving one buffer of garbage per epoch. Called at most once per capture, and only for captures this
   * adapter returned; a capture never handed back is simply collected.
   */
  releaseCapture?(capture: EpochCapture): void;
  /**
   * Optional: takes back a pre-copied chunk whose frames the connection has handed to the operating system, so the
   * adapter may copy the next chunk into its buffer. Without it a full sync leaves a guest's worth of chunk
   * buffers to the garbage collector, and the allocator keeps much of that resident long after the sync. Called
   * at most once per chunk, and only for chunks this adapter returned; a chunk never handed back is simply
   * collected (a session that ended while it was being written).
   */
  releasePrecopy?(chunk: PrecopyChunk): void;
}
