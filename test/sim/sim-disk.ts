/**
 * A simulated disk for the secondary's journal: a {@link JournalFs} in memory whose file contents are durable only
 * once synced. A crash keeps what was synced, plus a random prefix of what was appended since (a torn tail), and
 * drops everything else. Every operation can be slowed down by the scheduler (a slow or busy disk). Directory
 * changes (create, rename, unlink) are durable at once: the model is about data, not about directory entries.
 */
import type { JournalFile, JournalFs, JournalOpenMode } from '../../src/replica/journal-fs.js';
import type { Prng } from '../../src/vm/prng.js';
import type { NodeClock } from './scheduler.js';

/** A byte array that grows by doubling, so appends cost what they write. */
class Bytes {
  private buffer = new Uint8Array(4096);
  length = 0;

  view(): Uint8Array {
    return this.buffer.subarray(0, this.length);
  }

  write(at: number, bytes: Uint8Array): void {
    this.resize(Math.max(this.length, at + bytes.byteLength));
    this.buffer.set(bytes, at);
  }

  resize(length: number): void {
    if (length > this.buffer.byteLength) {
      const next = new Uint8Array(Math.max(length, 2 * this.buffer.byteLength));
      next.set(this.buffer.subarray(0, this.length));
      this.buffer = next;
    } else if (length < this.length) {
      this.buffer.fill(0, length, this.length);
    }
    this.length = length;
  }

  /** Makes this a copy of `other` from `from` on (and of its length). */
  copyFrom(other: Bytes, from: number): void {
    this.resize(other.length);
    if (from < other.length) this.buffer.set(other.view().subarray(from), from);
  }
}

interface SimFile {
  /** What reads see. */
  data: Bytes;
  /** What survives a crash. */
  durable: Bytes;
  /** The lowest offset written since the last sync. */
  dirtyFrom: number;
}

function newFile(): SimFile {
  return { data: new Bytes(), durable: new Bytes(), dirtyFrom: Number.POSITIVE_INFINITY };
}

function missing(path: string): Error {
  return Object.assign(new Error(`ENOENT: no such file, ${path}`), { code: 'ENOENT' });
}

export class SimDisk {
  private readonly files = new Map<string, SimFile>();
  private readonly dirs = new Set<string>();
  /** Each operation takes a random delay in [0, latencyMs). */
  latencyMs = 0;
  operations = 0;
  tornTails = 0;

  constructor(private readonly rng: Prng) {}

  /** The file system as one node (one incarnation of the secondary) sees it, on that node's clock. */
  fsFor(clock: NodeClock): JournalFs {
    const wait = async (): Promise<void> => {
      this.operations += 1;
      const ms = this.latencyMs > 0 ? this.rng.nextFloat() * this.latencyMs : 0;
      await new Promise<void>((resolve) => clock.setTimeout(resolve, ms));
    };
    const disk = this;
    return {
      async mkdir(path) {
        await wait();
        if (disk.dirs.has(path)) return undefined;
        disk.dirs.add(path);
        return path;
      },
      async open(path, mode: JournalOpenMode) {
        await wait();
        if (mode === 'directory') {
          if (!disk.dirs.has(path)) throw missing(path);
          return disk.handle(path, wait, true);
        }
        let file = disk.files.get(path);
        if (file === undefined) {
          if (mode !== 'create') throw missing(path);
          file = newFile();
          disk.files.set(path, file);
        } else if (mode === 'create') {
          file.data.resize(0);
          file.dirtyFrom = 0;
        }
        return disk.handle(path, wait, false);
      },
      async rename(from, to) {
        await wait();
        const file = disk.files.get(from);
        if (file === undefined) throw missing(from);
        disk.files.delete(from);
        disk.files.set(to, file);
      },
      async unlink(path) {
        await wait();
        if (!disk.files.delete(path)) throw missing(path);
      },
      async readdir(path) {
        await wait();
        if (!disk.dirs.has(path)) throw missing(path);
        const prefix = `${path}/`;
        return [...disk.files.keys()].filter((p) => p.startsWith(prefix) && !p.slice(prefix.length).includes('/')).map((p) => p.slice(prefix.length));
      },
    };
  }

  private handle(path: string, wait: () => Promise<void>, directory: boolean): JournalFile {
    const fileOf = (): SimFile => {
      const file = this.files.get(path);
      if (file === undefined) throw missing(path);
      return file;
    };
    return {
      async read(buffer, offset, length, position) {
        await wait();
        const data = fileOf().data.view();
        const n = Math.max(0, Math.min(length, data.byteLength - position));
        buffer.set(data.subarray(position, position + n), offset);
        return n;
      },
      async writeAll(buffers, position) {
        await wait();
        const file = fileOf();
        let at = position;
        for (const b of buffers) {
          file.data.write(at, b);
          at += b.byteLength;
        }
        file.dirtyFrom = Math.min(file.dirtyFrom, position);
      },
      async truncate(bytes) {
        await wait();
        const file = fileOf();
        file.data.resize(bytes);
        file.dirtyFrom = Math.min(file.dirtyFrom, bytes);
      },
      async datasync() {
        await wait();
        if (!directory) syncFile(fileOf());
      },
      async sync() {
        await wait();
        if (!directory) syncFile(fileOf());
      },
      async sizeBytes() {
        await wait();
        return fileOf().data.length;
      },
      async close() {
        await wait();
      },
    };
  }

  /**
   * Power loss: every file keeps its synced contents; a file that grew past them keeps a random prefix of the
   * growth (a torn tail), as a disk that wrote some of the sectors before the power went.
   */
  crash(): void {
    for (const file of this.files.values()) {
      const { data, durable } = file;
      const grewOnly = file.dirtyFrom >= durable.length && data.length > durable.length;
      if (grewOnly && this.rng.nextFloat() < 0.5) {
        // Some of the appended sectors made it to the platter before the power went.
        const keep = durable.length + this.rng.nextInt(data.length - durable.length + 1);
        if (keep > durable.length) this.tornTails += 1;
        data.resize(keep);
        durable.copyFrom(data, durable.length);
      } else {
        data.copyFrom(durable, 0);
      }
      file.dirtyFrom = Number.POSITIVE_INFINITY;
    }
  }
}

function syncFile(file: SimFile): void {
  file.durable.copyFrom(file.data, Math.min(file.dirtyFrom, file.durable.length, file.data.length));
  file.dirtyFrom = Number.POSITIVE_INFINITY;
}
