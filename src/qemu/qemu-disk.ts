/**
 * A QEMU disk served by kemari's NBD server, with the epoch's write log: the disk half of {@link QemuVm}.
 *
 * Why: a checkpoint must carry the disk writes of its epoch together with memory and devices (atomic epochs), and
 * QEMU's own block layer tells nobody what it wrote. Serving the guest's drive over our {@link NbdServer} puts every
 * write through the write observer before QEMU hears it completed, so the log below holds exactly the writes of the
 * epoch, in the order the backend applied them. The log is bounded: a write that would overflow it is refused with
 * KEMARI_DISK_LOG_FULL, which the server answers NBD_ENOSPC; QEMU (IDE, `werror=enospc` by default) then stops the
 * VM and retries the write after the next `cont`, i.e. after the epoch was captured and the log emptied.
 *
 * The disk also keeps a CRC32C per {@link DISK_DIGEST_BLOCK_BYTES} block, refreshed lazily from the backend for the
 * blocks written since (the VM is stopped then, so every write has landed): the input the state digest needs, the
 * same way the secondary's replica computes it.
 *
 * The backend can be replaced while no guest runs on it ({@link QemuDisk.replaceBackend}): a standby QEMU connects
 * to its NBD server at start, long before failover says what the disk holds.
 */
import { isAbsolute } from 'node:path';
import { KemariError } from '../errors.js';
import { DISK_DIGEST_BLOCK_BYTES } from '../replica/state-digest.js';
import { crc32c } from '../wire/checksum.js';
import type { DiskWrite } from '../wire/bodies/disk.js';
import type { DiskInfo } from '../wire/bodies/hello.js';
import type { NbdBackend } from './nbd/nbd-backend.js';
import { NbdServer } from './nbd/nbd-server.js';

/** Default bound of one epoch's disk write log (64 MiB, as SimulatedVm's). */
export const QEMU_DISK_LOG_BYTES_MAX_DEFAULT = 64 * 1024 * 1024;

/** Bytes read from the backend per request when scanning or refreshing the disk (1 MiB). */
const READ_CHUNK_BYTES = 1 << 20;

/** Options of {@link QemuDisk.serve}. */
export interface QemuDiskOptions {
  /** What the disk holds. Its size is the disk's size (a positive multiple of 512). */
  backend: NbdBackend;
  /** Absolute path of the NBD unix socket QEMU's drive connects to. */
  socketPath: string;
  /** The disk's id in the VM's inventory. Default 0. */
  diskId?: number;
  /** Most bytes one epoch's write log may hold. Default {@link QEMU_DISK_LOG_BYTES_MAX_DEFAULT}. */
  logBytesMax?: number;
}

/** A disk served to QEMU over NBD, logging every write of the current epoch. See the module comment. */
export class QemuDisk {
  /** The disk's id (DiskInfo.id). */
  readonly id: number;
  /** The disk's size in bytes. */
  readonly sizeBytes: number;
  /** The NBD socket QEMU connects to. */
  readonly socketPath: string;
  /** Most bytes one epoch's write log may hold. */
  readonly logBytesMax: number;
  private server: NbdServer | undefined;
  private current: NbdBackend;
  private log: DiskWrite[] = [];
  private logBytesUsed = 0;
  private readonly crcs: Uint32Array;
  private readonly stale: Uint8Array;
  private staleCount: number;
  private closing: Promise<void> | undefined;

  private constructor(options: QemuDiskOptions, logBytesMax: number, diskId: number) {
    this.current = options.backend;
    this.sizeBytes = options.backend.sizeBytes;
    this.socketPath = options.socketPath;
    this.logBytesMax = logBytesMax;
    this.id = diskId;
    const blocks = Math.ceil(this.sizeBytes / DISK_DIGEST_BLOCK_BYTES);
    this.crcs = new Uint32Array(blocks);
    this.stale = new Uint8Array(blocks).fill(1);
    this.staleCount = blocks;
  }

  /**
   * Starts serving `backend` on `socketPath` (the socket must exist before QEMU starts, since QEMU connects to its
   * drive at start). Rejects with KEMARI_INVALID_ARGUMENT for bad options and KEMARI_LISTEN_FAILED when the socket
   * cannot be bound.
   */
  static async serve(options: QemuDiskOptions): Promise<QemuDisk> {
    if (typeof options !== 'object' || options === null) invalid('QemuDisk.serve needs options', {});
    const { backend, socketPath } = options;
    if (typeof backend !== 'object' || backend === null) invalid('backend must be an NbdBackend', {});
    const sizeBytes = backend.sizeBytes;
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % 512 !== 0) invalid('the disk size must be a positive multiple of 512', { sizeBytes });
    if (typeof socketPath !== 'string' || !isAbsolute(socketPath)) invalid('socketPath must be absolute (QEMU resolves paths against its own cwd)', { socketPath });
    const logBytesMax = options.logBytesMax ?? QEMU_DISK_LOG_BYTES_MAX_DEFAULT;
    if (!Number.isSafeInteger(logBytesMax) || logBytesMax < 512) invalid('logBytesMax must be an integer of at least 512', { logBytesMax });
    const diskId = options.diskId ?? 0;
    if (!Number.isInteger(diskId) || diskId < 0 || diskId > 0xffff_ffff) invalid('diskId must be a u32', { diskId });
    const disk = new QemuDisk(options, logBytesMax, diskId);
    // The server sees a fixed facade; the backend behind it can be replaced (standby restore).
    const facade: NbdBackend = {
      sizeBytes,
      read: (offset, length) => disk.current.read(offset, length),
      write: (offset, data) => disk.current.write(offset, data),
      flush: () => disk.current.flush(),
    };
    disk.server = await NbdServer.listen({ backend: facade, path: socketPath, onWrite: (offset, data) => disk.observe(offset, data) });
    return disk;
  }

  /** The disk as the VM's inventory lists it. */
  get info(): DiskInfo {
    return { id: this.id, bytes: this.sizeBytes };
  }

  /** The backend serving the disk now. */
  get backend(): NbdBackend {
    return this.current;
  }

  /** Bytes held by the current epoch's write log. */
  get logBytes(): number {
    return this.logBytesUsed;
  }

  /** The NBD server (its stats count reads and writes). */
  get nbd(): NbdServer {
    if (this.server === undefined) throw new KemariError('KEMARI_CLOSED', 'the disk is not served');
    return this.server;
  }

  /**
   * QEMU arguments for an IDE drive on this disk (`-machine pc`: the legacy IDE ports). The raw driver is named,
   * so QEMU does no format probing.
   */
  driveArgs(): string[] {
    const path = this.socketPath.replaceAll(',', ',,');
    return ['-drive', `driver=raw,file.driver=nbd,file.server.type=unix,file.server.path=${path},if=ide`];
  }

  /**
   * Serves `backend` from now on (same size, else KEMARI_INVALID_ARGUMENT); the write log is emptied and every
   * block CRC goes stale. Only while no guest writes (a standby before `cont`): a write in flight would land on
   * either backend.
   */
  replaceBackend(backend: NbdBackend): void {
    if (backend.sizeBytes !== this.sizeBytes) invalid('the new backend must have the disk size', { sizeBytes: backend.sizeBytes, expected: this.sizeBytes });
    this.current = backend;
    this.discardLog();
    this.stale.fill(1);
    this.staleCount = this.stale.length;
  }

  /** Hands over the epoch's write log, oldest first, and starts an empty one. */
  takeLog(): DiskWrite[] {
    const log = this.log;
    this.log = [];
    this.logBytesUsed = 0;
    return log;
  }

  /** Drops the epoch's write log (a full capture describes the disk whole instead). */
  discardLog(): void {
    this.log = [];
    this.logBytesUsed = 0;
  }

  /** A copy of `length` bytes at `offset`, read through the current backend. */
  async read(offset: number, length: number): Promise<Uint8Array> {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.sizeBytes) {
      invalid('read range outside the disk', { offset, length, sizeBytes: this.sizeBytes });
    }
    return Uint8Array.from(await this.current.read(offset, length));
  }

  /**
   * The whole disk as writes of its non-zero {@link DISK_DIGEST_BLOCK_BYTES} extents (copies): what a full capture
   * carries, since the replica zeroes its disks before applying one. Refreshes the block CRCs on the way.
   */
  async wholeDisk(): Promise<DiskWrite[]> {
    const writes: DiskWrite[] = [];
    const block = DISK_DIGEST_BLOCK_BYTES;
    let run: { offset: number; parts: Uint8Array[] } | undefined;
    const closeRun = (): void => {
      if (run === undefined) return;
      writes.push({ diskId: this.id, offset: run.offset, data: concat(run.parts) });
      run = undefined;
    };
    for (let offset = 0; offset < this.sizeBytes; offset += READ_CHUNK_BYTES) {
      const length = Math.min(READ_CHUNK_BYTES, this.sizeBytes - offset);
      const chunk = await this.readExactly(offset, length);
      for (let at = 0; at < length; at += block) {
        const data = chunk.subarray(at, Math.min(at + block, length));
        const index = (offset + at) / block;
        this.crcs[index] = crc32c(data);
        if (this.stale[index] === 1) {
          this.stale[index] = 0;
          this.staleCount -= 1;
        }
        if (isZero(data)) closeRun();
        else if (run === undefined) run = { offset: offset + at, parts: [data] };
        else run.parts.push(data);
      }
    }
    closeRun();
    return writes;
  }

  /** The CRC32C of every block, current: blocks written since the last refresh are read back from the backend. */
  async blockCrcs(): Promise<Uint32Array> {
    if (this.staleCount === 0) return this.crcs;
    const block = DISK_DIGEST_BLOCK_BYTES;
    const runBlocksMax = READ_CHUNK_BYTES / block;
    for (let first = 0; first < this.stale.length; ) {
      if (this.stale[first] === 0) {
        first += 1;
        continue;
      }
      let end = first + 1;
      while (end < this.stale.length && this.stale[end] === 1 && end - first < runBlocksMax) end += 1;
      const offset = first * block;
      const length = Math.min(end * block, this.sizeBytes) - offset;
      const data = await this.readExactly(offset, length);
      for (let index = first; index < end; index++) {
        const at = (index - first) * block;
        this.crcs[index] = crc32c(data.subarray(at, Math.min(at + block, length)));
        this.stale[index] = 0;
      }
      this.staleCount -= end - first;
      first = end;
    }
    return this.crcs;
  }

  /** Stops serving (QEMU's drive sees the connection drop). Idempotent; the backend is not closed. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      await this.server?.close();
    })();
    return this.closing;
  }

  /** The NBD write observer: log the write (bounded) and mark its blocks stale. */
  private observe(offset: number, data: Uint8Array): void {
    if (this.logBytesUsed + data.byteLength > this.logBytesMax) {
      throw new KemariError(
        'KEMARI_DISK_LOG_FULL',
        `disk ${this.id}: the epoch's write log is full (${this.logBytesUsed} + ${data.byteLength} > logBytesMax ${this.logBytesMax}); capture the epoch first`,
        { details: { diskId: this.id, diskLogBytes: this.logBytesUsed, length: data.byteLength, diskLogBytesMax: this.logBytesMax } },
      );
    }
    // `data` is the server's own copy, never modified afterwards: the log keeps it as is.
    this.log.push({ diskId: this.id, offset, data });
    this.logBytesUsed += data.byteLength;
    if (data.byteLength === 0) return;
    const first = Math.floor(offset / DISK_DIGEST_BLOCK_BYTES);
    const last = Math.floor((offset + data.byteLength - 1) / DISK_DIGEST_BLOCK_BYTES);
    for (let index = first; index <= last; index++) {
      if (this.stale[index] === 0) {
        this.stale[index] = 1;
        this.staleCount += 1;
      }
    }
  }

  private async readExactly(offset: number, length: number): Promise<Uint8Array> {
    const data = await this.current.read(offset, length);
    if (data.byteLength !== length) {
      throw new KemariError('KEMARI_INVALID_ARGUMENT', `disk ${this.id}: the backend returned ${data.byteLength} bytes for a read of ${length}`, {
        details: { diskId: this.id, offset, length, returned: data.byteLength },
      });
    }
    return data;
  }
}

function concat(parts: Uint8Array[]): Uint8Array {
  if (parts.length === 1) return Uint8Array.from(parts[0] as Uint8Array);
  const total = parts.reduce((sum, part) => sum + part.byteLength, 0);
  const out = new Uint8Array(total);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.byteLength;
  }
  return out;
}

const ZERO_BLOCK = Buffer.alloc(DISK_DIGEST_BLOCK_BYTES);

function isZero(data: Uint8Array): boolean {
  return ZERO_BLOCK.compare(data, 0, data.byteLength, 0, data.byteLength) === 0;
}

function invalid(message: string, details: Record<string, unknown>): never {
  throw new KemariError('KEMARI_INVALID_ARGUMENT', message, { details });
}
