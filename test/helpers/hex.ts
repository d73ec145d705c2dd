/** Hex fixtures: 32 bytes a line, '#' comments allowed, whitespace ignored. */
import { readFileSync } from 'node:fs';

export function toHexLines(bytes: Uint8Array): string {
  const lines: string[] = [];
  for (let i = 0; i < bytes.byteLength; i += 32) lines.push(Buffer.from(bytes.subarray(i, i + 32)).toString('hex'));
  return lines.join('\n') + '\n';
}

export function fromHex(text: string): Uint8Array {
  const hex = text
    .split('\n')
    .map((line) => line.replace(/#.*/, ''))
    .join('')
    .replace(/\s+/g, '');
  return Uint8Array.from(Buffer.from(hex, 'hex'));
}

export function readHexFixture(path: string): Uint8Array {
  return fromHex(readFileSync(path, 'utf8'));
}
