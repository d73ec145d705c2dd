import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import { crc32c, crc32cImplementation, crc32cOfParts } from '../../src/index.js';

const require = createRequire(import.meta.url);
const jsImpl = require('fast-crc32c/impls/js_crc32c') as { calculate(data: Uint8Array, initial?: number): number };

// Check values from RFC 3720 (iSCSI) appendix B.4 and the CRC catalogue's "123456789".
const VECTORS: Array<[string, Uint8Array, number]> = [
  ['123456789', Uint8Array.from(Buffer.from('123456789')), 0xe3069283],
  ['32 zero bytes', new Uint8Array(32), 0x8a9136aa],
  ['32 0xff bytes', new Uint8Array(32).fill(0xff), 0x62a8ab43],
  ['0..31', Uint8Array.from({ length: 32 }, (_, i) => i), 0x46dd794e],
  ['31..0', Uint8Array.from({ length: 32 }, (_, i) => 31 - i), 0x113fdb5c],
  ['empty', new Uint8Array(0), 0],
];

describe('crc32c', () => {
  it.each(VECTORS)('matches the known value for %s', (_name, data, expected) => {
    expect(crc32c(data)).toBe(expected);
    expect(jsImpl.calculate(data) >>> 0).toBe(expected);
  });

  it('loads the native implementation on this install', () => {
    // .ci/run installs from scratch; if sse4_crc32 failed to build, this fails instead of running 10x slower.
    expect(crc32cImplementation()).toBe('native');
  });

  it('chains across parts exactly as over the joined bytes', () => {
    const data = Uint8Array.from({ length: 10_000 }, (_, i) => (i * 7919) & 0xff);
    const whole = crc32c(data);
    for (const cut of [0, 1, 7, 4096, 9999, 10_000]) {
      expect(crc32c(data.subarray(cut), crc32c(data.subarray(0, cut)))).toBe(whole);
    }
    expect(crc32cOfParts([data.subarray(0, 3), data.subarray(3, 5000), data.subarray(5000)])).toBe(whole);
  });

  it('agrees with the JavaScript implementation on random data', () => {
    for (let n = 0; n < 200; n++) {
      const data = Uint8Array.from({ length: n * 13 }, () => Math.floor(Math.random() * 256));
      expect(crc32c(data)).toBe(jsImpl.calculate(data) >>> 0);
    }
  });
});
