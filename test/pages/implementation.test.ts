import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { pagesImplementation, pagesNativeLoadError } from '../../src/pages/index.js';
import { loadNativeBinding } from '../../src/pages/native-binding.js';
import { native } from './backends.js';

describe('page implementation selection', () => {
  it('reports which implementation loaded, and why the addon did not', () => {
    expect(pagesImplementation()).toBe(native === undefined ? 'js' : 'native');
    if (native === undefined) expect(pagesNativeLoadError()).toBeDefined();
    else expect(pagesNativeLoadError()).toBeUndefined();
  });

  // Skipped only when the fallback is forced on purpose (KEMARI_PAGES_IMPLEMENTATION=js); CI refuses skipped tests.
  it.skipIf(process.env.KEMARI_PAGES_IMPLEMENTATION === 'js')('loads the addon on this install (CI builds it; run npm run build:native locally)', () => {
    // Like crc32cImplementation: a fallback nobody noticed would only show as slow checkpoints.
    expect(pagesImplementation(), String(pagesNativeLoadError())).toBe('native');
  });

  it('a missing addon is not an error: the loader returns the reason', () => {
    const empty = mkdtempSync(join(tmpdir(), 'kemari-noaddon-'));
    try {
      const result = loadNativeBinding(empty);
      expect(result.binding).toBeUndefined();
      expect(result.error).toBeInstanceOf(Error);
      expect(loadNativeBinding(undefined).binding).toBeUndefined();
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  });

  it('KEMARI_PAGES_IMPLEMENTATION=js selects the fallback, which works', () => {
    const script = `
      import { pagesImplementation, mmapImplementation, scanChangedPages, encodeDelta } from './src/pages/index.ts';
      const region = new Uint8Array(8192); region[5000] = 1;
      const out = { changedPages: new Uint32Array(2), zeroFlags: new Uint8Array(2) };
      const n = scanChangedPages(region, 4096, new Uint8Array(8192), out);
      const d = encodeDelta(new Uint8Array(4096), region.subarray(4096), new Uint8Array(4096));
      console.log(JSON.stringify([pagesImplementation(), mmapImplementation(), n, out.changedPages[0], d]));
    `;
    const output = execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      cwd: join(import.meta.dirname, '..', '..'),
      env: { ...process.env, KEMARI_PAGES_IMPLEMENTATION: 'js' },
      encoding: 'utf8',
    });
    expect(JSON.parse(output.trim().split('\n').pop()!)).toEqual(['js', 'js', 1, 1, 4]);
  });
});
