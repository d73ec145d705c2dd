import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { ERROR_CODES, KemariError, isKemariError } from '../src/index.js';

describe('KemariError', () => {
  it('carries a stable code and details', () => {
    const error = new KemariError('KEMARI_BAD_MAGIC', 'x', { details: { a: 1 }, cause: new Error('inner') });
    expect(error).toBeInstanceOf(Error);
    expect(error.name).toBe('KemariError');
    expect(error.code).toBe('KEMARI_BAD_MAGIC');
    expect(error.details).toEqual({ a: 1 });
    expect((error.cause as Error).message).toBe('inner');
    expect(isKemariError(error, 'KEMARI_BAD_MAGIC')).toBe(true);
    expect(isKemariError(error, 'KEMARI_TRUNCATED')).toBe(false);
    expect(isKemariError(new Error('plain'))).toBe(false);
  });

  it('every code is documented in the README error table, and the table names no code that does not exist', () => {
    const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
    const documented = new Set([...readme.matchAll(/^\|\s*`(KEMARI_[A-Z_]+)`\s*\|/gm)].map((m) => m[1]));
    const codes = Object.keys(ERROR_CODES);
    expect(codes.length).toBeGreaterThan(5);
    for (const code of codes) expect(documented, `README lacks ${code}`).toContain(code);
    for (const code of documented) expect(codes, `README documents unknown ${code}`).toContain(code);
  });

  it('every code follows the KEMARI_ naming rule', () => {
    for (const code of Object.keys(ERROR_CODES)) expect(code).toMatch(/^KEMARI_[A-Z][A-Z_]*[A-Z]$/);
  });
});
