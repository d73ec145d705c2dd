/**
 * Client-side NBD encoders and decoders for tests: what a client sends (flags, options, requests) and how to read
 * what the server sends back (option replies, simple replies). Written from the spec, independently of the server's
 * own encoders, so a shared misunderstanding does not hide a bug.
 */
import { NBD_MAGIC } from '../../src/qemu/nbd/nbd-constants.js';

const encoder = new TextEncoder();

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Concatenates byte arrays. */
export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** The client's 32-bit flags. */
export function clientFlags(flags: number): Uint8Array {
  const bytes = new Uint8Array(4);
  view(bytes).setUint32(0, flags);
  return bytes;
}

/** An option: IHAVEOPT, option, length, data. `magic` overrides IHAVEOPT (to test a bad one). */
export function option(opt: number, data: Uint8Array = new Uint8Array(0), magic: bigint = NBD_MAGIC.OPTION): Uint8Array {
  const bytes = new Uint8Array(16 + data.length);
  const v = view(bytes);
  v.setBigUint64(0, magic);
  v.setUint32(8, opt);
  v.setUint32(12, data.length);
  bytes.set(data, 16);
  return bytes;
}

/** The data of NBD_OPT_INFO / NBD_OPT_GO: name length, name, request count, requests. */
export function infoData(name: string, infos: number[] = []): Uint8Array {
  const nameBytes = encoder.encode(name);
  const bytes = new Uint8Array(4 + nameBytes.length + 2 + 2 * infos.length);
  const v = view(bytes);
  v.setUint32(0, nameBytes.length);
  bytes.set(nameBytes, 4);
  v.setUint16(4 + nameBytes.length, infos.length);
  infos.forEach((info, i) => v.setUint16(6 + nameBytes.length + 2 * i, info));
  return bytes;
}

/** A request header (plus payload): magic, flags, type, handle, offset, length. */
export function request(
  type: number,
  handle: bigint,
  offset: bigint | number,
  length: number,
  options: { flags?: number; data?: Uint8Array; magic?: number } = {},
): Uint8Array {
  const data = options.data ?? new Uint8Array(0);
  const bytes = new Uint8Array(28 + data.length);
  const v = view(bytes);
  v.setUint32(0, options.magic ?? NBD_MAGIC.REQUEST);
  v.setUint16(4, options.flags ?? 0);
  v.setUint16(6, type);
  v.setBigUint64(8, handle);
  v.setBigUint64(16, BigInt(offset));
  v.setUint32(24, length);
  bytes.set(data, 28);
  return bytes;
}

/** One decoded option reply. */
export interface OptionReply {
  option: number;
  type: number;
  data: Uint8Array;
}

/** Decodes consecutive option replies; throws on a bad magic or a truncated reply. */
export function decodeOptionReplies(bytes: Uint8Array): OptionReply[] {
  const replies: OptionReply[] = [];
  let at = 0;
  while (at < bytes.length) {
    if (bytes.length - at < 20) throw new Error(`truncated option reply at ${at}`);
    const v = view(bytes.subarray(at));
    if (v.getBigUint64(0) !== NBD_MAGIC.OPTION_REPLY) throw new Error(`bad option reply magic at ${at}`);
    const length = v.getUint32(16);
    if (bytes.length - at - 20 < length) throw new Error(`truncated option reply data at ${at}`);
    replies.push({ option: v.getUint32(8), type: v.getUint32(12), data: bytes.slice(at + 20, at + 20 + length) });
    at += 20 + length;
  }
  return replies;
}

/** One decoded simple reply header. */
export interface SimpleReply {
  error: number;
  handle: bigint;
}

/** Decodes a 16-byte simple reply header; throws on a bad magic. */
export function decodeSimpleReply(bytes: Uint8Array): SimpleReply {
  if (bytes.length < 16) throw new Error('truncated simple reply');
  const v = view(bytes);
  if (v.getUint32(0) !== NBD_MAGIC.SIMPLE_REPLY) throw new Error(`bad simple reply magic 0x${v.getUint32(0).toString(16)}`);
  return { error: v.getUint32(4), handle: v.getBigUint64(8) };
}

/** Parses NBD_INFO_EXPORT data: size and transmission flags. */
export function decodeInfoExport(data: Uint8Array): { type: number; sizeBytes: bigint; flags: number } {
  const v = view(data);
  return { type: v.getUint16(0), sizeBytes: v.getBigUint64(2), flags: v.getUint16(10) };
}

/** Parses NBD_INFO_BLOCK_SIZE data. */
export function decodeInfoBlockSize(data: Uint8Array): { type: number; minimum: number; preferred: number; maximum: number } {
  const v = view(data);
  return { type: v.getUint16(0), minimum: v.getUint32(2), preferred: v.getUint32(6), maximum: v.getUint32(10) };
}

/** Hex of bytes, for readable assertions. */
export function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex');
}
