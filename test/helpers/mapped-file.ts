/**
 * A temporary file mapped with the page addon's mmapFile, standing in for QEMU's shared RAM file: written with
 * positioned writes (as QEMU's vCPUs write guest RAM), read through the mapping.
 */
import { closeSync, ftruncateSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { mmapFile, unmap } from '../../src/pages/mmap.js';

/** The file, its mapping, and a positioned writer. */
export interface MappedFile {
  path: string;
  mapping: Uint8Array;
  write(offset: number, bytes: Uint8Array): void;
}

/** A zero-filled file of `bytes`, mapped; `cleanups` gets what unmaps and removes it. */
export function mappedTempFile(bytes: number, cleanups: Array<() => unknown>): MappedFile {
  const dir = mkdtempSync(join(tmpdir(), 'kemari-mapped-'));
  const path = join(dir, 'ram');
  const fd = openSync(path, 'w+');
  ftruncateSync(fd, bytes);
  const mapping = new Uint8Array(mmapFile(path, bytes));
  cleanups.push(() => {
    unmap(mapping.buffer as ArrayBuffer);
    closeSync(fd);
    rmSync(dir, { recursive: true, force: true });
  });
  return { path, mapping, write: (offset, data) => void writeSync(fd, data, 0, data.length, offset) };
}
