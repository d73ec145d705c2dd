/**
 * Loads the kemari_pages addon (native/, built by node-gyp through binding.gyp) if it can.
 *
 * Why it never throws: kemari must work where the addon did not build (no compiler, an unusual platform), only
 * slower, so a missing or stale addon leaves {@link nativeBinding} undefined and implementation.ts selects the
 * TypeScript fallback; {@link nativeLoadError} keeps the reason for logs. Set KEMARI_PAGES_IMPLEMENTATION=js to
 * force the fallback (for comparisons, and to run an application on the fallback on purpose).
 *
 * The addon is found through node-gyp-build from the package root (the nearest directory above this file holding
 * package.json: the repository when running from src/, the installed package when running from dist/src/), which
 * looks in build/Release, build/Debug and prebuilds/<platform>-<arch>/.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { NativePagesBinding } from './backend.js';
import { NATIVE_ABI_VERSION } from './backend.js';

const require = createRequire(import.meta.url);

function packageRoot(): string | undefined {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    const parent = dirname(dir);
    if (parent === dir) return undefined;
    dir = parent;
  }
}

/** The outcome of loading the addon: the binding, or why there is none. */
export interface NativeLoadResult {
  binding: NativePagesBinding | undefined;
  error: unknown;
}

/**
 * Loads the addon with node-gyp-build from package root `root`; never throws (a missing build, a stale one, or no
 * root at all give `binding: undefined` and the reason). Exported for the test that a missing addon is harmless.
 */
export function loadNativeBinding(root: string | undefined): NativeLoadResult {
  try {
    if (root === undefined) throw new Error('no package.json above ' + fileURLToPath(import.meta.url));
    const nodeGypBuild = require('node-gyp-build') as (dir: string) => unknown;
    const binding = nodeGypBuild(root) as NativePagesBinding;
    if (binding.abiVersion !== NATIVE_ABI_VERSION) {
      throw new Error(`stale kemari_pages build: abiVersion ${String(binding.abiVersion)}, expected ${NATIVE_ABI_VERSION}; rebuild it`);
    }
    return { binding, error: undefined };
  } catch (error) {
    return { binding: undefined, error };
  }
}

function load(): NativeLoadResult {
  if (process.env.KEMARI_PAGES_IMPLEMENTATION === 'js') {
    return { binding: undefined, error: new Error('KEMARI_PAGES_IMPLEMENTATION=js forces the TypeScript fallback') };
  }
  return loadNativeBinding(packageRoot());
}

const loaded = load();

/** The addon, or undefined when it did not load. Internal: callers use the validated functions of src/pages/. */
export const nativeBinding: NativePagesBinding | undefined = loaded.binding;

/** Why the addon did not load (undefined when it did): for logs and for the CI check that it built. */
export const nativeLoadError: unknown = loaded.error;
