/**
 * HELLO opens a session in both directions (txn 0, seq 0). Body: one msgpack map.
 *
 * It carries what both sides must agree on before a single page moves: protocol versions, the VM's geometry
 * (memory and page size), the device and disk inventory, and where the replica stands (`committedTxn`), so a
 * reconnect resumes with an incremental epoch instead of a full sync. Unknown keys are ignored (a newer peer may
 * add some); missing or mistyped known keys are KEMARI_BAD_BODY.
 */
import { KemariError } from '../../errors.js';
import { isRecord, pack, unpack } from '../msgpack.js';
import { checkInteger, checkU53, invalid } from '../validate.js';

/** One disk of the VM as announced in HELLO. */
export interface DiskInfo {
  id: number;
  bytes: number;
}

/** HELLO body. */
export interface Hello {
  /** Identifies the protected VM's replication session; both sides must name the same one. */
  sessionId: string;
  role: 'primary' | 'secondary';
  versionMin: number;
  versionMax: number;
  memoryBytes: number;
  pageBytes: number;
  /** Device names, in the order the VM adapter reports them. */
  devices: string[];
  disks: DiskInfo[];
  /** Last txn the sender knows as committed (0 when none). */
  committedTxn: number;
  /** Optional features offered or accepted, e.g. "delta", "verify". */
  features: string[];
  /** Opaque credential for the peer's authenticator; absent when none is used. */
  auth?: Uint8Array;
  /**
   * The primary's lease generation, with an arbiter (absent without one). A secondary refuses a primary whose
   * generation is older than one it has already served: a superseded primary never replicates over the standby of
   * the writer that replaced it.
   */
  generation?: number;
}

/** Limits on HELLO contents, so a hostile HELLO cannot make the receiver allocate without bound. */
export const HELLO_LIMITS = {
  nameBytesMax: 255,
  devicesMax: 1024,
  disksMax: 256,
  featuresMax: 64,
  authBytesMax: 4096,
} as const;

const ROLES = new Set(['primary', 'secondary']);

function checkName(field: string, value: unknown, fail: (field: string, message: string) => never): string {
  if (typeof value !== 'string' || value.length === 0 || Buffer.byteLength(value) > HELLO_LIMITS.nameBytesMax) {
    fail(field, `must be a string of 1..${HELLO_LIMITS.nameBytesMax} bytes`);
  }
  return value;
}

function checkList<T>(field: string, value: unknown, max: number, fail: (field: string, message: string) => never, item: (v: unknown, i: number) => T): T[] {
  if (!Array.isArray(value) || value.length > max) fail(field, `must be an array of at most ${max}`);
  return value.map(item);
}

/** Validates a HELLO-shaped value; `fail` decides the error code (sender: invalid argument; receiver: bad body). */
function validate(value: unknown, fail: (field: string, message: string) => never): Hello {
  if (!isRecord(value)) fail('hello', 'must be a map');
  const int = (field: string, v: unknown, min: number, max: number): number => {
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) fail(field, `must be an integer in [${min}, ${max}]`);
    return v;
  };
  const role = value.role;
  if (typeof role !== 'string' || !ROLES.has(role)) fail('hello.role', 'must be "primary" or "secondary"');
  const hello: Hello = {
    sessionId: checkName('hello.sessionId', value.sessionId, fail),
    role: role as Hello['role'],
    versionMin: int('hello.versionMin', value.versionMin, 1, 255),
    versionMax: int('hello.versionMax', value.versionMax, 1, 255),
    memoryBytes: int('hello.memoryBytes', value.memoryBytes, 0, Number.MAX_SAFE_INTEGER),
    pageBytes: int('hello.pageBytes', value.pageBytes, 1, 0xffff_ffff),
    devices: checkList('hello.devices', value.devices, HELLO_LIMITS.devicesMax, fail, (d, i) => checkName(`hello.devices[${i}]`, d, fail)),
    disks: checkList('hello.disks', value.disks, HELLO_LIMITS.disksMax, fail, (d, i) => {
      if (!isRecord(d)) fail(`hello.disks[${i}]`, 'must be a map');
      return { id: int(`hello.disks[${i}].id`, d.id, 0, 0xffff_ffff), bytes: int(`hello.disks[${i}].bytes`, d.bytes, 0, Number.MAX_SAFE_INTEGER) };
    }),
    committedTxn: int('hello.committedTxn', value.committedTxn, 0, Number.MAX_SAFE_INTEGER),
    features: checkList('hello.features', value.features, HELLO_LIMITS.featuresMax, fail, (f, i) => checkName(`hello.features[${i}]`, f, fail)),
  };
  if (hello.versionMin > hello.versionMax) fail('hello.versionMin', 'must not exceed versionMax');
  if (value.auth !== undefined) {
    if (!(value.auth instanceof Uint8Array) || value.auth.byteLength > HELLO_LIMITS.authBytesMax) {
      fail('hello.auth', `must be bytes, at most ${HELLO_LIMITS.authBytesMax}`);
    }
    hello.auth = value.auth;
  }
  if (value.generation !== undefined) hello.generation = int('hello.generation', value.generation, 0, Number.MAX_SAFE_INTEGER);
  return hello;
}

export function encodeHello(hello: Hello): Uint8Array[] {
  const checked = validate(hello, (field, message) => invalid(field, message));
  checkU53('hello.committedTxn', checked.committedTxn);
  checkInteger('hello.pageBytes', checked.pageBytes, 1, 0xffff_ffff);
  // Fixed key order keeps the encoding stable (golden fixtures depend on it).
  const ordered: Record<string, unknown> = {
    sessionId: checked.sessionId,
    role: checked.role,
    versionMin: checked.versionMin,
    versionMax: checked.versionMax,
    memoryBytes: checked.memoryBytes,
    pageBytes: checked.pageBytes,
    devices: checked.devices,
    disks: checked.disks.map((d) => ({ id: d.id, bytes: d.bytes })),
    committedTxn: checked.committedTxn,
    features: checked.features,
  };
  if (checked.auth !== undefined) ordered.auth = checked.auth;
  if (checked.generation !== undefined) ordered.generation = checked.generation;
  return [pack('HELLO', ordered)];
}

export function decodeHello(body: Uint8Array): Hello {
  return validate(unpack('HELLO', body), (field, message) => {
    throw new KemariError('KEMARI_BAD_BODY', `HELLO: ${field} ${message}`, { details: { field } });
  });
}
