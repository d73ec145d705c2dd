/**
 * GuestMemory's zero pages, without QEMU: a capture sends a page as ZERO exactly when its bytes are all zero,
 * whatever wrote it (fill and data records of streams, ranges read from a file, a load), although captures and loads
 * take a page known to be zero as zero without reading it. These tests hold the result, not the reads saved.
 */
import { describe, expect, it } from 'vitest';
import { GuestMemory } from '../../src/qemu/guest-memory.js';
import type { SharedBlockSource } from '../../src/qemu/guest-memory.js';
import { PageKind } from '../../src/wire/bodies/pages.js';
import { prng } from '../helpers/qemu-stream.js';

const PAGE = 4096;

/** A page of random bytes, or of zeros, or zero but for one byte (the cases a zero test can get wrong). */
function pageBytes(random: () => number): Uint8Array {
  const page = new Uint8Array(PAGE);
  const kind = Math.floor(random() * 3);
  if (kind === 1) for (let i = 0; i < PAGE; i += 97) page[i] = 1 + Math.floor(random() * 255);
  if (kind === 2) page[Math.floor(random() * PAGE)] = 1;
  return page;
}

/** Checks one capture against the model: ZERO exactly for the all-zero pages, RAW with their bytes otherwise. */
function expectCapture(memory: GuestMemory, model: Uint8Array, all: boolean, step: number): void {
  const { pages } = memory.takePages(all);
  if (all) expect(pages.length).toBe(model.byteLength / PAGE);
  for (const page of pages) {
    const bytes = model.subarray(page.index * PAGE, (page.index + 1) * PAGE);
    const zero = bytes.every((b) => b === 0);
    expect(page.kind, `step ${step}, page ${page.index}`).toBe(zero ? PageKind.ZERO : PageKind.RAW);
    if (!zero) expect(Buffer.from(page.data).equals(Buffer.from(bytes)), `step ${step}, page ${page.index}`).toBe(true);
  }
}

describe('GuestMemory zero pages', () => {
  it('sends ZERO exactly for all-zero pages after fill and data records, ranges and loads (shadow of every block)', () => {
    const blocks = [
      { name: 'pc.ram', offsetBytes: 0, lengthBytes: 320 * PAGE, shared: false },
      { name: 'pc.bios', offsetBytes: 320 * PAGE, lengthBytes: 16 * PAGE, shared: false },
    ];
    const memoryBytes = 336 * PAGE;
    const memory = new GuestMemory(blocks);
    const model = new Uint8Array(memoryBytes);
    const random = prng(11);
    for (let step = 0; step < 300; step++) {
      const op = Math.floor(random() * 10);
      if (op < 4) {
        // A fill record (zero, as QEMU writes them, or another value) of a random page of a random block.
        const block = blocks[Math.floor(random() * 2)]!;
        const offset = Math.floor(random() * (block.lengthBytes / PAGE)) * PAGE;
        const fill = random() < 0.8 ? 0 : 1 + Math.floor(random() * 255);
        memory.receivePage({ block: block.name, offset, fill });
        model.fill(fill, block.offsetBytes + offset, block.offsetBytes + offset + PAGE);
      } else if (op < 8) {
        // A data record: random bytes, or a page of zeros sent as data.
        const block = blocks[Math.floor(random() * 2)]!;
        const offset = Math.floor(random() * (block.lengthBytes / PAGE)) * PAGE;
        const data = pageBytes(random);
        memory.receivePage({ block: block.name, offset, data });
        model.set(data, block.offsetBytes + offset);
      } else if (op === 8) {
        // A range read from a file (how shared blocks in shadow mode are checked).
        const first = Math.floor(random() * 332);
        const count = 1 + Math.floor(random() * 4);
        const bytes = new Uint8Array(count * PAGE);
        for (let k = 0; k < count; k++) bytes.set(pageBytes(random), k * PAGE);
        memory.receiveRange(first * PAGE, bytes);
        model.set(bytes, first * PAGE);
      } else {
        // A load of a whole memory (a restored replica).
        const whole = new Uint8Array(memoryBytes);
        for (let p = 0; p < 336; p++) whole.set(pageBytes(random), p * PAGE);
        memory.load(whole);
        model.set(whole);
      }
      if (step % 7 === 0) expectCapture(memory, model, true, step);
      else if (step % 3 === 0) expectCapture(memory, model, false, step);
    }
    expectCapture(memory, model, true, 300);
  });

  it('sends ZERO exactly for all-zero pages of the blocks it shadows beside a block kept outside (fingerprints)', () => {
    const shared = new Uint8Array(32 * PAGE);
    const source: SharedBlockSource = { readInto: (target, at, position, length) => target.set(shared.subarray(position, position + length), at) };
    const blocks = [
      { name: 'pc.bios', offsetBytes: 0, lengthBytes: 16 * PAGE, shared: false },
      { name: 'mem', offsetBytes: 16 * PAGE, lengthBytes: 32 * PAGE, shared: true },
    ];
    const memory = new GuestMemory(blocks, { changeDetection: 'fingerprints', sharedSources: new Map([['mem', source]]) });
    const model = new Uint8Array(48 * PAGE);
    const random = prng(23);
    for (let step = 0; step < 200; step++) {
      // The stream carries the shadowed block's pages; the shared block is scanned from its file.
      const offset = Math.floor(random() * 16) * PAGE;
      if (random() < 0.5) {
        memory.receivePage({ block: 'pc.bios', offset, fill: 0 });
        model.fill(0, offset, offset + PAGE);
      } else {
        const data = pageBytes(random);
        memory.receivePage({ block: 'pc.bios', offset, data });
        model.set(data, offset);
      }
      const sharedPage = Math.floor(random() * 32);
      const bytes = pageBytes(random);
      shared.set(bytes, sharedPage * PAGE);
      model.set(bytes, (16 + sharedPage) * PAGE);
      memory.scanRange(16 * PAGE, shared);
      if (step % 5 === 0) expectCapture(memory, model, true, step);
      else expectCapture(memory, model, false, step);
    }
  });
});
