/** The NBD backends: a disk in memory and a disk in a file. */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FileNbdBackend } from '../../src/qemu/nbd/file-nbd-backend.js';
import { MemoryNbdBackend } from '../../src/qemu/nbd/memory-nbd-backend.js';
import { tempDir } from '../helpers/nbd-tools.js';

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

describe('MemoryNbdBackend', () => {
  it('reads copies, writes in place, and refuses ranges outside the disk', () => {
    const backend = new MemoryNbdBackend(16);
    expect(backend.sizeBytes).toBe(16);
    backend.write(4, Uint8Array.of(1, 2, 3));
    const read = backend.read(3, 5);
    expect([...read]).toEqual([0, 1, 2, 3, 0]);
    backend.write(4, Uint8Array.of(9));
    expect([...read]).toEqual([0, 1, 2, 3, 0]); // a read result never changes afterwards
    expect([...backend.bytes.subarray(3, 8)]).toEqual([0, 9, 2, 3, 0]);
    expect(() => backend.read(10, 7)).toThrow(expect.objectContaining({ code: 'KEMARI_INVALID_ARGUMENT' }));
    expect(() => backend.write(-1, Uint8Array.of(1))).toThrow(expect.objectContaining({ code: 'KEMARI_INVALID_ARGUMENT' }));
    expect(() => new MemoryNbdBackend(-5)).toThrow(expect.objectContaining({ code: 'KEMARI_INVALID_ARGUMENT' }));
    backend.flush();
  });

  it('serves a given image in place', () => {
    const image = Uint8Array.of(5, 6, 7);
    const backend = new MemoryNbdBackend(image);
    backend.write(0, Uint8Array.of(1));
    expect([...image]).toEqual([1, 6, 7]);
  });
});

describe('FileNbdBackend', () => {
  function image(bytes: Uint8Array): string {
    const { dir, remove } = tempDir();
    cleanups.push(remove);
    const path = join(dir, 'disk.img');
    writeFileSync(path, bytes);
    return path;
  }

  it('reads and writes with positioned I/O and flushes with fdatasync', async () => {
    const path = image(new Uint8Array(8192).fill(0x11));
    const backend = await FileNbdBackend.open(path);
    cleanups.push(() => backend.close());
    expect(backend.sizeBytes).toBe(8192);
    await Promise.all([backend.write(0, new Uint8Array(4096).fill(0xaa)), backend.write(4096, new Uint8Array(4096).fill(0xbb))]);
    await backend.flush();
    const file = readFileSync(path);
    expect(file.subarray(0, 4096).every((b) => b === 0xaa)).toBe(true);
    expect(file.subarray(4096).every((b) => b === 0xbb)).toBe(true);
    expect([...(await backend.read(4094, 4))]).toEqual([0xaa, 0xaa, 0xbb, 0xbb]);
    await expect(backend.read(8190, 3)).rejects.toMatchObject({ code: 'KEMARI_INVALID_ARGUMENT' });
  });

  it('a read-only file refuses writes; a closed one refuses everything; a missing one does not open', async () => {
    const path = image(new Uint8Array(512));
    const readOnly = await FileNbdBackend.open(path, { readOnly: true });
    await expect(readOnly.write(0, Uint8Array.of(1))).rejects.toThrow();
    await readOnly.close();
    await readOnly.close();
    await expect(readOnly.read(0, 1)).rejects.toMatchObject({ code: 'KEMARI_CLOSED' });
    await expect(FileNbdBackend.open(`${path}.missing`)).rejects.toMatchObject({ code: 'KEMARI_INVALID_ARGUMENT', details: { errno: 'ENOENT' } });
  });
});
