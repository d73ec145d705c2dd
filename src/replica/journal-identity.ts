/**
 * What a journal directory belongs to: one replication session of one VM shape.
 *
 * Both the journal file and the snapshot file carry it, so a directory can never be replayed into a replica of
 * another session or another geometry: that would produce a VM that never existed. A mismatch is
 * KEMARI_HELLO_MISMATCH, the same code as two peers disagreeing on these facts in HELLO; the caller decides
 * whether to discard the directory and start over with a full sync.
 */
import { KemariError } from '../errors.js';
import { isRecord, pack, unpack } from '../wire/msgpack.js';
import type { ReplicaGeometry } from './replica.js';

/** The session and geometry a journal directory belongs to. */
export interface JournalIdentity {
  sessionId: string;
  geometry: ReplicaGeometry;
}

/** The identity as a plain msgpack-able value (also embedded in the snapshot's metadata). */
export function identityValue(identity: JournalIdentity): Record<string, unknown> {
  const { geometry } = identity;
  return {
    sessionId: identity.sessionId,
    memoryBytes: geometry.memoryBytes,
    pageBytes: geometry.pageBytes,
    deviceNames: [...geometry.deviceNames],
    disks: geometry.disks.map((d) => ({ id: d.id, bytes: d.bytes })),
  };
}

/** msgpack bytes of the identity. */
export function encodeIdentity(identity: JournalIdentity): Uint8Array {
  return pack('journal identity', identityValue(identity));
}

/** Parses a stored identity value; a malformed one is KEMARI_JOURNAL_CORRUPT (its bytes passed a CRC check). */
export function parseIdentity(value: unknown, file: string): JournalIdentity {
  const corrupt = (what: string): never => {
    throw new KemariError('KEMARI_JOURNAL_CORRUPT', `${file}: malformed identity (${what})`, { details: { file } });
  };
  if (!isRecord(value)) return corrupt('not a map');
  const int = (v: unknown, what: string): number =>
    typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? v : corrupt(what);
  if (typeof value.sessionId !== 'string') corrupt('sessionId');
  const deviceNames = Array.isArray(value.deviceNames) ? value.deviceNames : corrupt('deviceNames');
  const disks = Array.isArray(value.disks) ? value.disks : corrupt('disks');
  return {
    sessionId: value.sessionId as string,
    geometry: {
      memoryBytes: int(value.memoryBytes, 'memoryBytes'),
      pageBytes: int(value.pageBytes, 'pageBytes'),
      deviceNames: deviceNames.map((n) => (typeof n === 'string' ? n : corrupt('device name'))),
      disks: disks.map((d) => (isRecord(d) ? { id: int(d.id, 'disk id'), bytes: int(d.bytes, 'disk bytes') } : corrupt('disk'))),
    },
  };
}

/** Decodes identity bytes (see {@link encodeIdentity}). */
export function decodeIdentity(bytes: Uint8Array, file: string): JournalIdentity {
  let value: unknown;
  try {
    value = unpack('journal identity', bytes);
  } catch (cause) {
    throw new KemariError('KEMARI_JOURNAL_CORRUPT', `${file}: identity is not msgpack`, { cause, details: { file } });
  }
  return parseIdentity(value, file);
}

/** The first field in which two identities differ, or undefined when they are the same. */
export function identityDifference(a: JournalIdentity, b: JournalIdentity): string | undefined {
  if (a.sessionId !== b.sessionId) return 'sessionId';
  if (a.geometry.memoryBytes !== b.geometry.memoryBytes) return 'memoryBytes';
  if (a.geometry.pageBytes !== b.geometry.pageBytes) return 'pageBytes';
  const an = a.geometry.deviceNames;
  const bn = b.geometry.deviceNames;
  if (an.length !== bn.length || an.some((n, i) => n !== bn[i])) return 'deviceNames';
  const ad = a.geometry.disks;
  const bd = b.geometry.disks;
  if (ad.length !== bd.length || ad.some((d, i) => d.id !== bd[i]!.id || d.bytes !== bd[i]!.bytes)) return 'disks';
  return undefined;
}

/** Throws KEMARI_HELLO_MISMATCH when the identity stored in `file` is not the one the caller runs with. */
export function checkIdentity(stored: JournalIdentity, expected: JournalIdentity, file: string): void {
  const field = identityDifference(stored, expected);
  if (field === undefined) return;
  throw new KemariError('KEMARI_HELLO_MISMATCH', `${file} belongs to another session or VM geometry (${field} differs)`, {
    details: { file, field, stored: identityValue(stored), expected: identityValue(expected) },
  });
}
