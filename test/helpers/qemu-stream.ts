/** Helpers for migration-stream tests: parse at a chunk size, summarise records for comparison, find bytes. */
import { createHash } from 'node:crypto';
import { KemariError } from '../../src/errors.js';
import { MigrationStreamParser } from '../../src/qemu/migration/stream-parser.js';
import type { MigrationStreamParserOptions } from '../../src/qemu/migration/stream-parser.js';
import type { MigrationRecord } from '../../src/qemu/migration/records.js';

/** Parses `stream` fed in chunks of `chunkBytes` (Infinity: one push), then ends it. */
export function parseStream(stream: Uint8Array, chunkBytes = Number.POSITIVE_INFINITY, options: MigrationStreamParserOptions = {}): MigrationRecord[] {
  const parser = new MigrationStreamParser(options);
  const records: MigrationRecord[] = [];
  if (!Number.isFinite(chunkBytes)) {
    records.push(...parser.push(stream));
  } else {
    for (let at = 0; at < stream.byteLength; at += chunkBytes) {
      for (const record of parser.push(stream.subarray(at, at + chunkBytes))) records.push(record);
    }
  }
  records.push(...parser.end());
  return records;
}

/** The KemariError parsing throws, or undefined if the stream parsed. Any other exception propagates (a bug). */
export function parseError(stream: Uint8Array, options: MigrationStreamParserOptions = {}, chunkBytes = Number.POSITIVE_INFINITY): KemariError | undefined {
  try {
    parseStream(stream, chunkBytes, options);
    return undefined;
  } catch (error) {
    if (error instanceof KemariError) return error;
    throw error;
  }
}

function digest(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex').slice(0, 16);
}

/** Records with byte payloads replaced by digests: comparable with toEqual, printable on failure. */
export function summarize(records: readonly MigrationRecord[]): unknown[] {
  return records.map((record) => {
    switch (record.type) {
      case 'page':
        return { ...record, data: digest(record.data) };
      case 'device':
        return { ...record, data: digest(record.data) };
      case 'vmdesc':
        return { type: 'vmdesc', json: digest(record.json) };
      case 'command':
        return { ...record, data: digest(record.data) };
      default:
        return record;
    }
  });
}

/** Index of `needle` in `haystack` at or after `from`, or -1. */
export function indexOfBytes(haystack: Uint8Array, needle: readonly number[], from = 0): number {
  return Buffer.from(haystack.buffer, haystack.byteOffset, haystack.byteLength).indexOf(Buffer.from(needle), from);
}

/** A deterministic PRNG (mulberry32) so fuzz cases replay from their seed. */
export function prng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
