import { execFileSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { mmapFile, mmapImplementation, scanChangedPages, unmap } from '../../src/pages/index.js';
import { NATIVE_LABEL, jsBackend, native } from './backends.js';

const dir = mkdtempSync(join(tmpdir(), 'kemari-mmap-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function memoryFile(name: string, bytes: number): string {
  const path = join(dir, name);
  writeFileSync(path, Buffer.alloc(bytes, 0x11));
  return path;
}

function writeAt(path: string, offset: number, data: Uint8Array): void {
  const fd = openSync(path, 'r+');
  try {
    writeSync(fd, data, 0, data.length, offset);
  } finally {
    closeSync(fd);
  }
}

describe('mmapFile', () => {
  it('reports its implementation: native exactly when the addon loaded', () => {
    expect(mmapImplementation()).toBe(native === undefined ? 'js' : 'native');
  });

  it('gives the first `bytes` bytes of the file, and unmap detaches the buffer', () => {
    const path = memoryFile('plain', 3 * 4096);
    const buffer = mmapFile(path, 2 * 4096);
    const view = new Uint8Array(buffer);
    expect(view.length).toBe(2 * 4096);
    expect(view.every((b) => b === 0x11)).toBe(true);
    expect(unmap(buffer)).toBe(true);
    expect(buffer.byteLength).toBe(0);
    expect(view.length).toBe(0); // no access to unmapped memory is possible
    expect(unmap(buffer)).toBe(false);
    expect(unmap(new ArrayBuffer(8))).toBe(false);
  });

  it('refuses a missing file, a file shorter than asked, a directory, and bad arguments', () => {
    const invalid = expect.objectContaining({ code: 'KEMARI_INVALID_ARGUMENT' });
    expect(() => mmapFile(join(dir, 'missing'), 4096)).toThrow(invalid);
    expect(() => mmapFile(memoryFile('short', 4096), 8192)).toThrow(invalid);
    expect(() => mmapFile(dir, 1)).toThrow(invalid);
    expect(() => mmapFile('', 1)).toThrow(invalid);
    expect(() => mmapFile(memoryFile('zero', 4096), 0)).toThrow(invalid);
  });

  it('the TypeScript fallback reads a snapshot: later writes to the file do not show', () => {
    const path = memoryFile('snapshot', 8192);
    const buffer = jsBackend.mmapFile(path, 8192);
    writeAt(path, 100, Uint8Array.of(0x99));
    expect(new Uint8Array(buffer)[100]).toBe(0x11);
    expect(jsBackend.unmap(buffer)).toBe(true);
    expect(buffer.byteLength).toBe(0);
  });
});

describe(`mmapFile: native MAP_SHARED mapping${NATIVE_LABEL}`, () => {
  it.skipIf(native === undefined)('sees writes made to the file after mapping, and the scan finds them', () => {
    const pageBytes = 4096;
    const path = memoryFile('shared', 16 * pageBytes);
    const region = new Uint8Array(mmapFile(path, 16 * pageBytes));
    const shadow = region.slice();
    const out = { changedPages: new Uint32Array(16), zeroFlags: new Uint8Array(16) };
    expect(scanChangedPages(region, pageBytes, shadow, out)).toBe(0);

    writeAt(path, 5 * pageBytes + 17, Uint8Array.of(1, 2, 3)); // another writer (QEMU) changes the file
    writeAt(path, 9 * pageBytes, new Uint8Array(pageBytes)); // and zeroes a page
    expect(region[5 * pageBytes + 18]).toBe(2);
    expect(scanChangedPages(region, pageBytes, shadow, out, { update: true })).toBe(2);
    expect([...out.changedPages.subarray(0, 2)]).toEqual([5, 9]);
    expect([...out.zeroFlags.subarray(0, 2)]).toEqual([0, 1]);
    expect(unmap(region.buffer as ArrayBuffer)).toBe(true);
  });

  it.skipIf(native === undefined)('a mapping nobody references is unmapped when it is garbage-collected', () => {
    // In a child with --expose-gc: count this file's lines in /proc/self/maps while 20 mappings are alive, then
    // after dropping them and collecting.
    const path = memoryFile('gc', 1 << 20);
    const script = `
      import { readFileSync } from 'node:fs';
      import { mmapFile } from './src/pages/index.ts';
      const path = ${JSON.stringify(path)};
      const count = () => readFileSync('/proc/self/maps', 'utf8').split('\\n').filter((l) => l.endsWith(path)).length;
      let held = Array.from({ length: 20 }, () => new Uint8Array(mmapFile(path, 1 << 20)));
      const alive = count();
      held = undefined;
      for (let i = 0; i < 5 && count() > 0; i++) { globalThis.gc(); await new Promise((r) => setTimeout(r, 20)); }
      console.log(JSON.stringify([alive, count()]));
    `;
    const output = execFileSync(process.execPath, ['--expose-gc', '--import', 'tsx', '--input-type=module', '-e', script], {
      cwd: join(import.meta.dirname, '..', '..'),
      encoding: 'utf8',
    });
    expect(JSON.parse(output.trim().split('\n').pop()!)).toEqual([20, 0]);
  });
});
