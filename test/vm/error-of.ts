import { KemariError } from '../../src/errors.js';

/** The KemariError `fn` throws; fails the test when it returns normally or throws anything else. */
export function errorOf(fn: () => unknown): KemariError {
  try {
    fn();
  } catch (error) {
    if (error instanceof KemariError) return error;
    throw new Error(`expected a KemariError, got ${String(error)}`, { cause: error });
  }
  throw new Error('expected a KemariError, nothing was thrown');
}

/** The code of the KemariError `fn` throws. */
export function codeOf(fn: () => unknown): string {
  return errorOf(fn).code;
}
