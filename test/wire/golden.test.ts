import { readdirSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { FrameDecoder, encodeFrameToBytes } from '../../src/index.js';
import type { DecodedFrame } from '../../src/index.js';
import { readHexFixture } from '../helpers/hex.js';
import { SAMPLE_FRAMES } from '../helpers/sample-frames.js';
import { decodeAll, stripWireFacts } from '../helpers/decode.js';

const dir = new URL('../fixtures/frames/', import.meta.url);

describe('golden fixtures', () => {
  it('has a fixture for every frame type', () => {
    const types = new Set(Object.values(SAMPLE_FRAMES).map((f) => f.type));
    expect(types.size).toBe(13);
    expect(readdirSync(dir).sort()).toEqual(Object.keys(SAMPLE_FRAMES).map((n) => `${n}.hex`).sort());
  });

  describe.each(Object.entries(SAMPLE_FRAMES))('%s', (name, frame) => {
    const fixture = readHexFixture(new URL(`${name}.hex`, dir).pathname);

    it('encodes to the fixture bytes', () => {
      expect(Buffer.from(encodeFrameToBytes(frame)).toString('hex')).toBe(Buffer.from(fixture).toString('hex'));
    });

    it('decodes the fixture to the frame', () => {
      const frames = decodeAll(fixture);
      expect(frames).toHaveLength(1);
      expect(stripWireFacts(frames[0]!)).toEqual(frame);
    });
  });

  it('reads the STAND_DOWN fixture field by field (independent of the encoder)', () => {
    const hex = Buffer.from(readHexFixture(new URL('stand-down.hex', dir).pathname)).toString('hex');
    expect(hex.slice(10, 12)).toBe('0d'); // STAND_DOWN (13)
    expect(hex.slice(40, 48)).toBe('21000000'); // 8 + 25 body bytes
    expect(hex.slice(64, 80)).toBe('0700000000000000'); // committedTxn 7
    expect(Buffer.from(hex.slice(80), 'hex').toString('utf8')).toBe('SHUTDOWN (guest-shutdown)');
  });

  it('reads the BEGIN fixture field by field (independent of the encoder)', () => {
    const bytes = readHexFixture(new URL('begin.hex', dir).pathname);
    const hex = Buffer.from(bytes).toString('hex');
    expect(hex.slice(0, 8)).toBe('4b4d5249'); // "KMRI"
    expect(hex.slice(8, 10)).toBe('01'); // version
    expect(hex.slice(10, 12)).toBe('02'); // BEGIN
    expect(hex.slice(12, 16)).toBe('0000'); // flags
    expect(hex.slice(16, 32)).toBe('0700000000000000'); // txn 7
    expect(hex.slice(32, 40)).toBe('00000000'); // seq 0
    expect(hex.slice(40, 48)).toBe('18000000'); // 24 body bytes
    expect(hex.slice(64)).toBe('00' + '00000000000000' + '0600000000000000' + '0500000000000000'); // incremental, base 6, released 5
    const frames: DecodedFrame[] = [];
    new FrameDecoder().push(bytes, (f) => frames.push(f));
    expect(frames[0]?.body).toEqual({ full: false, baseTxn: 6, releasedTxn: 5 });
  });
});
