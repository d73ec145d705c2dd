/**
 * The two page backends for tests that run the same inputs through both and compare every output byte. The native
 * one is undefined when the addon is not built; those tests are then skipped under a name that says so, and CI
 * (which builds the addon and refuses skipped tests) fails.
 */
import type { PagesBackend } from '../../src/pages/backend.js';
import { jsBackend } from '../../src/pages/js-backend.js';
import { nativeBinding } from '../../src/pages/native-binding.js';

/** The addon, or undefined when it is not built. */
export const native: PagesBackend | undefined = nativeBinding;

/** Suffix for describe() names of tests that need the addon. */
export const NATIVE_LABEL = native === undefined ? ' [SKIPPED: kemari_pages addon not loaded; build it with npm run build:native]' : '';

/** Every backend available in this process, by name. */
export const backends: Array<[string, PagesBackend]> = [['js', jsBackend], ...(native === undefined ? [] : [['native', native] as [string, PagesBackend]])];

export { jsBackend };
