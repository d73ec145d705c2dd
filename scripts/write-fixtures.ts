/**
 * Writes test/fixtures/frames/<name>.hex from the sample frames. Run it only when the wire format changes on
 * purpose (and bump PROTOCOL_VERSION then): the golden test compares the encoder against these files.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { encodeFrameToBytes } from '../src/index.js';
import { SAMPLE_FRAMES } from '../test/helpers/sample-frames.js';
import { toHexLines } from '../test/helpers/hex.js';

const dir = new URL('../test/fixtures/frames/', import.meta.url);
mkdirSync(dir, { recursive: true });
for (const [name, frame] of Object.entries(SAMPLE_FRAMES)) {
  const bytes = encodeFrameToBytes(frame);
  writeFileSync(new URL(`${name}.hex`, dir), `# ${name}: ${bytes.byteLength} bytes\n` + toHexLines(bytes));
  console.log(`${name}.hex ${bytes.byteLength} bytes`);
}
