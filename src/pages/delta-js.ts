/**
 * The TypeScript fallback of the XOR-delta encoder and decoder: same bytes and same faults as native/page_delta.cc.
 * The wire form and the encoder's rules are in delta-format.ts. Byte loops: a fallback, about 1 GB/s or less.
 */
import { DELTA_GAP_BYTES_MIN, DELTA_VARINT_BYTES_MAX, DeltaFault, deltaFaultValue } from './delta-format.js';

function varintBytes(v: number): number {
  return v < 1 << 7 ? 1 : v < 1 << 14 ? 2 : v < 1 << 21 ? 3 : 4;
}

function putVarint(out: Uint8Array, at: number, v: number): number {
  while (v >= 0x80) {
    out[at++] = (v & 0x7f) | 0x80;
    v >>>= 7;
  }
  out[at++] = v;
  return at;
}

/** Encoded length (< budgetBytes), or -1; see PagesBackend.encodeDelta. */
export function encodeDeltaJs(oldPage: Uint8Array, newPage: Uint8Array, out: Uint8Array, budgetBytes: number): number {
  const n = oldPage.length;
  let pos = 0;
  let o = 0;
  for (;;) {
    let start = pos;
    while (start < n && oldPage[start] === newPage[start]) start++;
    if (start === n) break;
    let end = start;
    for (;;) {
      while (end < n && oldPage[end] !== newPage[end]) end++;
      if (end === n) break;
      let gap = 0;
      while (gap < DELTA_GAP_BYTES_MIN && end + gap < n && oldPage[end + gap] === newPage[end + gap]) gap++;
      if (gap >= DELTA_GAP_BYTES_MIN || end + gap === n) break;
      end += gap;
    }
    const skip = start - pos;
    const length = end - start;
    if (varintBytes(skip) + varintBytes(length) + length >= budgetBytes - o) return -1;
    o = putVarint(out, o, skip);
    o = putVarint(out, o, length);
    for (let i = start; i < end; i++) out[o++] = oldPage[i]! ^ newPage[i]!;
    pos = end;
  }
  return o >= budgetBytes ? -1 : o;
}

/** Bytes written to `out`; see PagesBackend.encodeDeltaBatch. Arguments are validated (delta.ts). */
export function encodeDeltaBatchJs(
  pages: Uint8Array,
  pageIndices: Uint32Array,
  bases: Uint8Array,
  baseIndices: Uint32Array,
  count: number,
  pageBytes: number,
  budgetBytes: number,
  out: Uint8Array,
  lengths: Int32Array,
  updateBases: boolean,
): number {
  let cursor = 0;
  for (let k = 0; k < count; k++) {
    const at = pageIndices[k]! * pageBytes;
    const baseAt = baseIndices[k]! * pageBytes;
    const page = pages.subarray(at, at + pageBytes);
    const base = bases.subarray(baseAt, baseAt + pageBytes);
    const n = encodeDeltaJs(base, page, out.subarray(cursor), budgetBytes);
    lengths[k] = n;
    if (n > 0) cursor += n;
    if (updateBases && n !== 0) base.set(page);
  }
  return cursor;
}

/** Value of the last varint read by readVarint. */
let varintValue = 0;

/** Reads a varint at `at`: returns the offset after it, or a negative fault number. */
function readVarint(d: Uint8Array, at: number): number {
  let v = 0;
  for (let k = 0; ; k++) {
    if (at >= d.length) return -DeltaFault.TRUNCATED;
    if (k === DELTA_VARINT_BYTES_MAX) return -DeltaFault.BAD_VARINT;
    const byte = d[at++]!;
    v += (byte & 0x7f) * 2 ** (7 * k);
    if ((byte & 0x80) === 0) {
      if (byte === 0 && k > 0) return -DeltaFault.BAD_VARINT;
      break;
    }
  }
  varintValue = v;
  return at;
}

/** Walks the runs, applying them to `out` when given. Returns 0 or the error value; checks every bound. */
function walk(delta: Uint8Array, pageBytes: number, out: Uint8Array | undefined): number {
  const d = delta.length;
  let at = 0;
  let pos = 0;
  while (at < d) {
    let start = at;
    at = readVarint(delta, at);
    if (at < 0) return deltaFaultValue(-at as DeltaFault, start);
    const skip = varintValue;
    if (skip > pageBytes - pos) return deltaFaultValue(DeltaFault.PAST_PAGE_END, start);
    pos += skip;
    start = at;
    at = readVarint(delta, at);
    if (at < 0) return deltaFaultValue(-at as DeltaFault, start);
    const length = varintValue;
    if (length === 0) return deltaFaultValue(DeltaFault.EMPTY_LITERAL, start);
    if (length > pageBytes - pos) return deltaFaultValue(DeltaFault.PAST_PAGE_END, start);
    if (length > d - at) return deltaFaultValue(DeltaFault.TRUNCATED, at);
    if (out !== undefined) {
      for (let i = 0; i < length; i++) out[pos + i]! ^= delta[at + i]!;
    }
    at += length;
    pos += length;
  }
  return 0;
}

/** 0 or the error value; see PagesBackend.validateDelta. */
export function validateDeltaJs(delta: Uint8Array, pageBytes: number): number {
  return walk(delta, pageBytes, undefined);
}

/** 0 or the error value, `out` untouched on error; see PagesBackend.decodeDelta. */
export function decodeDeltaJs(oldPage: Uint8Array, delta: Uint8Array, out: Uint8Array): number {
  const fault = walk(delta, oldPage.length, undefined);
  if (fault !== 0) return fault;
  // set() copies as if through a temporary when both views share a buffer, so overlapping pages are fine.
  if (out !== oldPage) out.set(oldPage);
  return walk(delta, oldPage.length, out);
}
