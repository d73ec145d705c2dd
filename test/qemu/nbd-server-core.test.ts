/** The sans-I/O NBD server core: handshake, options, requests, refusals and reassembly at every split point. */
import { fc, test as fcTest } from '@fast-check/vitest';
import { describe, expect, it } from 'vitest';
import { isKemariError } from '../../src/errors.js';
import { NBD_CLIENT_FLAG, NBD_CMD, NBD_CMD_FLAG, NBD_ERROR, NBD_FLAG, NBD_INFO, NBD_MAGIC, NBD_OPT, NBD_REP } from '../../src/qemu/nbd/nbd-constants.js';
import { NbdServerCore } from '../../src/qemu/nbd/nbd-server-core.js';
import type { NbdAction, NbdRequest, NbdServerCoreOptions } from '../../src/qemu/nbd/nbd-server-core.js';
import {
  clientFlags,
  concat,
  decodeInfoBlockSize,
  decodeInfoExport,
  decodeOptionReplies,
  decodeSimpleReply,
  hex,
  infoData,
  option,
  request,
} from '../helpers/nbd-wire.js';

const SIZE = 1 << 20;
const FIXED = NBD_CLIENT_FLAG.FIXED_NEWSTYLE | NBD_CLIENT_FLAG.NO_ZEROES;
const encoder = new TextEncoder();

function core(options: Partial<NbdServerCoreOptions> = {}): NbdServerCore {
  const c = new NbdServerCore({ sizeBytes: SIZE, ...options });
  c.start();
  return c;
}

/** A core already in transmission (GO accepted). */
function transmitting(options: Partial<NbdServerCoreOptions> = {}): NbdServerCore {
  const c = core(options);
  c.receive(concat(clientFlags(FIXED), option(NBD_OPT.GO, infoData(options.exportName ?? ''))));
  expect(c.phase).toBe('transmission');
  return c;
}

/** The bytes of every 'send' action, concatenated. */
function sent(actions: NbdAction[]): Uint8Array {
  return concat(...actions.flatMap((a) => (a.kind === 'send' ? [...a.chunks] : [])));
}

function requests(actions: NbdAction[]): NbdRequest[] {
  return actions.flatMap((a) => (a.kind === 'request' ? [a.request] : []));
}

function closeOf(actions: NbdAction[]): { error?: { code: string; reason: unknown } } | undefined {
  const close = actions.find((a) => a.kind === 'close');
  if (close === undefined || close.kind !== 'close') return undefined;
  return close.error === undefined ? {} : { error: { code: close.error.code, reason: close.error.details.reason } };
}

/** Simple replies (headers only) in sent bytes that carry no read data. */
function simpleReplies(bytes: Uint8Array): Array<{ error: number; handle: bigint }> {
  const out = [];
  for (let i = 0; i < bytes.length; i += 16) out.push(decodeSimpleReply(bytes.subarray(i, i + 16)));
  return out;
}

/** A comparable description of actions (hex for bytes, code and reason for errors). */
function describeActions(actions: NbdAction[]): unknown[] {
  return actions.map((a) => {
    if (a.kind === 'send') return { send: hex(concat(...a.chunks)) };
    if (a.kind === 'close') return { close: a.error === undefined ? null : [a.error.code, a.error.details.reason] };
    const r = a.request;
    return { request: { ...r, handle: r.handle.toString(), ...('data' in r ? { data: hex(r.data) } : {}) } };
  });
}

describe('handshake', () => {
  it('greets with NBDMAGIC, IHAVEOPT and FIXED_NEWSTYLE | NO_ZEROES, once', () => {
    const c = new NbdServerCore({ sizeBytes: SIZE });
    expect(hex(sent(c.start()))).toBe('4e42444d41474943' + '49484156454f5054' + '0003');
    expect(c.start()).toEqual([]);
    expect(c.phase).toBe('handshake');
  });

  it('NBD_OPT_GO answers INFO_EXPORT (and NAME, BLOCK_SIZE when asked) then ACK, and enters transmission', () => {
    const c = core({ exportName: 'disk0', requestBytesMax: 1 << 20 });
    const actions = c.receive(concat(clientFlags(FIXED), option(NBD_OPT.GO, infoData('disk0', [NBD_INFO.BLOCK_SIZE, NBD_INFO.NAME, 77]))));
    const replies = decodeOptionReplies(sent(actions));
    expect(replies.map((r) => [r.option, r.type])).toEqual([
      [NBD_OPT.GO, NBD_REP.INFO],
      [NBD_OPT.GO, NBD_REP.INFO],
      [NBD_OPT.GO, NBD_REP.INFO],
      [NBD_OPT.GO, NBD_REP.ACK],
    ]);
    expect(decodeInfoExport(replies[0]!.data)).toEqual({
      type: NBD_INFO.EXPORT,
      sizeBytes: BigInt(SIZE),
      flags: NBD_FLAG.HAS_FLAGS | NBD_FLAG.SEND_FLUSH | NBD_FLAG.SEND_FUA | NBD_FLAG.SEND_TRIM | NBD_FLAG.SEND_WRITE_ZEROES | NBD_FLAG.CAN_MULTI_CONN,
    });
    expect(hex(replies[1]!.data)).toBe('0001' + hex(encoder.encode('disk0')));
    expect(decodeInfoBlockSize(replies[2]!.data)).toEqual({ type: NBD_INFO.BLOCK_SIZE, minimum: 1, preferred: 4096, maximum: 1 << 20 });
    expect(c.phase).toBe('transmission');
  });

  it('NBD_OPT_INFO answers like GO but stays in the handshake', () => {
    const c = core();
    const replies = decodeOptionReplies(sent(c.receive(concat(clientFlags(FIXED), option(NBD_OPT.INFO, infoData(''))))));
    expect(replies.map((r) => r.type)).toEqual([NBD_REP.INFO, NBD_REP.ACK]);
    expect(c.phase).toBe('handshake');
  });

  it('an unknown export name is NBD_REP_ERR_UNKNOWN and the client may try again', () => {
    const c = core({ exportName: 'disk0' });
    const first = decodeOptionReplies(sent(c.receive(concat(clientFlags(FIXED), option(NBD_OPT.GO, infoData('other'))))));
    expect(first.map((r) => r.type)).toEqual([NBD_REP.ERR_UNKNOWN]);
    expect(c.phase).toBe('handshake');
    const second = decodeOptionReplies(sent(c.receive(option(NBD_OPT.GO, infoData('disk0')))));
    expect(second.at(-1)!.type).toBe(NBD_REP.ACK);
    expect(c.phase).toBe('transmission');
  });

  it('STRUCTURED_REPLY, STARTTLS, metadata contexts and unknown options are NBD_REP_ERR_UNSUP', () => {
    const c = core();
    c.receive(clientFlags(FIXED));
    for (const opt of [NBD_OPT.STRUCTURED_REPLY, NBD_OPT.STARTTLS, NBD_OPT.LIST_META_CONTEXT, NBD_OPT.SET_META_CONTEXT, 4, 999, 0xffff_ffff]) {
      const replies = decodeOptionReplies(sent(c.receive(option(opt, new Uint8Array(7)))));
      expect(replies.map((r) => [r.option, r.type])).toEqual([[opt, NBD_REP.ERR_UNSUP]]);
      expect(replies[0]!.data.length).toBeGreaterThan(0); // a message for humans
    }
    expect(c.phase).toBe('handshake');
  });

  it('NBD_OPT_LIST names the one export; with data it is NBD_REP_ERR_INVALID', () => {
    const c = core({ exportName: 'vm' });
    const replies = decodeOptionReplies(sent(c.receive(concat(clientFlags(FIXED), option(NBD_OPT.LIST)))));
    expect(replies.map((r) => r.type)).toEqual([NBD_REP.SERVER, NBD_REP.ACK]);
    expect(hex(replies[0]!.data)).toBe('00000002' + hex(encoder.encode('vm')));
    expect(decodeOptionReplies(sent(c.receive(option(NBD_OPT.LIST, new Uint8Array(1))))).map((r) => r.type)).toEqual([NBD_REP.ERR_INVALID]);
  });

  it('malformed INFO/GO data is NBD_REP_ERR_INVALID', () => {
    const c = core();
    c.receive(clientFlags(FIXED));
    const bad = [
      new Uint8Array(5), // shorter than 6
      concat(Uint8Array.of(0, 0, 0, 9), new Uint8Array(2)), // name runs past the data
      concat(infoData(''), Uint8Array.of(0)), // a stray byte after the requests
      Uint8Array.of(0, 0, 0, 0, 0, 2, 0, 3), // two requests announced, one present
    ];
    for (const data of bad) {
      expect(decodeOptionReplies(sent(c.receive(option(NBD_OPT.GO, data)))).map((r) => r.type)).toEqual([NBD_REP.ERR_INVALID]);
    }
    expect(c.phase).toBe('handshake');
  });

  it('NBD_OPT_EXPORT_NAME enters transmission with size and flags, plus 124 zeroes unless NO_ZEROES', () => {
    const withZeroes = core();
    const a = sent(withZeroes.receive(concat(clientFlags(NBD_CLIENT_FLAG.FIXED_NEWSTYLE), option(NBD_OPT.EXPORT_NAME))));
    expect(a.length).toBe(8 + 2 + 124);
    expect(hex(a.subarray(0, 10))).toBe('0000000000100000' + '016d');
    expect(a.subarray(10).every((b) => b === 0)).toBe(true);
    expect(withZeroes.phase).toBe('transmission');
    const without = core();
    expect(sent(without.receive(concat(clientFlags(FIXED), option(NBD_OPT.EXPORT_NAME)))).length).toBe(10);
  });

  it('NBD_OPT_EXPORT_NAME of an unknown export closes (it cannot answer an error)', () => {
    const c = core({ exportName: 'a' });
    const actions = c.receive(concat(clientFlags(FIXED), option(NBD_OPT.EXPORT_NAME, encoder.encode('b'))));
    expect(sent(actions).length).toBe(0);
    expect(closeOf(actions)).toEqual({ error: { code: 'KEMARI_NBD_PROTOCOL', reason: 'unknown-export' } });
    expect(c.phase).toBe('closed');
    expect(c.receive(new Uint8Array(100))).toEqual([]);
  });

  it('NBD_OPT_ABORT is acknowledged, then the connection closes cleanly', () => {
    const c = core();
    const actions = c.receive(concat(clientFlags(FIXED), option(NBD_OPT.ABORT)));
    expect(decodeOptionReplies(sent(actions)).map((r) => r.type)).toEqual([NBD_REP.ACK]);
    expect(closeOf(actions)).toEqual({});
  });

  it('unknown client flags close the connection', () => {
    const actions = core().receive(clientFlags(0x4));
    expect(closeOf(actions)).toEqual({ error: { code: 'KEMARI_NBD_PROTOCOL', reason: 'client-flags' } });
  });

  it('a client without fixed newstyle may only send EXPORT_NAME', () => {
    const refused = core().receive(concat(clientFlags(0), option(NBD_OPT.GO, infoData(''))));
    expect(closeOf(refused)).toEqual({ error: { code: 'KEMARI_NBD_PROTOCOL', reason: 'not-fixed-newstyle' } });
    const c = core();
    const accepted = c.receive(concat(clientFlags(0), option(NBD_OPT.EXPORT_NAME)));
    expect(sent(accepted).length).toBe(134);
    expect(c.phase).toBe('transmission');
  });

  it('a bad option magic closes the connection', () => {
    const actions = core().receive(concat(clientFlags(FIXED), option(NBD_OPT.GO, infoData(''), 0x1122334455667788n)));
    expect(closeOf(actions)).toEqual({ error: { code: 'KEMARI_NBD_PROTOCOL', reason: 'option-magic' } });
  });

  it('an option longer than optionBytesMax is discarded unread and answered NBD_REP_ERR_TOO_BIG', () => {
    const c = core({ optionBytesMax: 100 });
    const actions = c.receive(concat(clientFlags(FIXED), option(NBD_OPT.GO, new Uint8Array(100_000)), option(NBD_OPT.GO, infoData(''))));
    const replies = decodeOptionReplies(sent(actions));
    expect(replies.map((r) => [r.option, r.type])).toEqual([
      [NBD_OPT.GO, NBD_REP.ERR_TOO_BIG],
      [NBD_OPT.GO, NBD_REP.INFO],
      [NBD_OPT.GO, NBD_REP.ACK],
    ]);
    expect(c.phase).toBe('transmission');
  });

  it('an EXPORT_NAME longer than optionBytesMax closes', () => {
    const actions = core({ optionBytesMax: 100 }).receive(concat(clientFlags(FIXED), option(NBD_OPT.EXPORT_NAME, new Uint8Array(101))));
    expect(closeOf(actions)).toEqual({ error: { code: 'KEMARI_NBD_PROTOCOL', reason: 'option-too-big' } });
  });

  it('more than optionsMax options close the connection', () => {
    const c = core({ optionsMax: 3 });
    const actions = c.receive(concat(clientFlags(FIXED), ...Array.from({ length: 4 }, () => option(NBD_OPT.STRUCTURED_REPLY))));
    expect(decodeOptionReplies(sent(actions))).toHaveLength(3);
    expect(closeOf(actions)).toEqual({ error: { code: 'KEMARI_NBD_PROTOCOL', reason: 'options-max' } });
  });
});

describe('transmission', () => {
  it('READ, WRITE, FLUSH and WRITE_ZEROES become backend requests; the write data is the core\'s own copy', () => {
    const c = transmitting();
    const payload = Uint8Array.from({ length: 100 }, (_, i) => i);
    const input = concat(
      request(NBD_CMD.WRITE, 1n, 512, 100, { data: payload, flags: NBD_CMD_FLAG.FUA }),
      request(NBD_CMD.READ, 2n, 512, 100),
      request(NBD_CMD.FLUSH, 3n, 0, 0),
      request(NBD_CMD.WRITE_ZEROES, 4n, 4096, 8192, { flags: NBD_CMD_FLAG.NO_HOLE }),
    );
    const actions = c.receive(input);
    input.fill(0xee); // the caller reuses its buffer
    expect(sent(actions).length).toBe(0);
    const [write, read, flush, zeroes] = requests(actions);
    expect(write).toMatchObject({ command: 'write', handle: 1n, offset: 512, fua: true });
    expect(write?.command === 'write' && hex(write.data)).toBe(hex(payload));
    expect(read).toEqual({ command: 'read', handle: 2n, offset: 512, length: 100 });
    expect(flush).toEqual({ command: 'flush', handle: 3n });
    expect(zeroes).toEqual({ command: 'write-zeroes', handle: 4n, offset: 4096, length: 8192, fua: false });
  });

  it('reply() encodes a simple reply, with the data of a successful read', () => {
    const c = transmitting();
    const read: NbdRequest = { command: 'read', handle: 0x0102030405060708n, offset: 0, length: 4 };
    const chunks = c.reply(read, { data: Uint8Array.of(9, 8, 7, 6) });
    expect(chunks.map(hex)).toEqual(['67446698' + '00000000' + '0102030405060708', '09080706']);
    expect(c.reply(read, { error: NBD_ERROR.EIO }).map(hex)).toEqual(['67446698' + '00000005' + '0102030405060708']);
    // A backend that returns the wrong length must not desynchronise the client: EIO, no payload.
    expect(c.reply(read, { data: new Uint8Array(3) }).map(hex)).toEqual(['67446698' + '00000005' + '0102030405060708']);
    expect(c.reply({ command: 'flush', handle: 5n }).map(hex)).toEqual(['67446698' + '00000000' + '0000000000000005']);
  });

  it('TRIM in range is acknowledged at once (a hint, ignored); DISC closes cleanly', () => {
    const c = transmitting();
    const actions = c.receive(concat(request(NBD_CMD.TRIM, 7n, 0, SIZE), request(NBD_CMD.DISC, 8n, 0, 0), request(NBD_CMD.READ, 9n, 0, 1)));
    expect(simpleReplies(sent(actions))).toEqual([{ error: 0, handle: 7n }]);
    expect(requests(actions)).toEqual([]);
    expect(closeOf(actions)).toEqual({});
    expect(c.phase).toBe('closed');
  });

  it('framed but bad requests get an error reply and the connection stays usable', () => {
    const c = transmitting({ requestBytesMax: 4096 });
    const actions = c.receive(
      concat(
        request(NBD_CMD.READ, 1n, SIZE - 10, 11), // past the end
        request(NBD_CMD.READ, 2n, 0xffff_ffff_ffff_fff0n, 0x20), // offset + length overflows 64 bits
        request(NBD_CMD.READ, 3n, 0, 4097), // longer than requestBytesMax
        request(NBD_CMD.READ, 4n, 0, 16, { flags: NBD_CMD_FLAG.DF }), // DF needs structured replies
        request(NBD_CMD.WRITE, 5n, SIZE - 2, 4, { data: new Uint8Array(4) }), // write past the end: ENOSPC
        request(NBD_CMD.WRITE, 6n, 0, 5000, { data: new Uint8Array(5000).fill(0x55) }), // oversized: payload skipped
        request(NBD_CMD.WRITE, 7n, 0, 4, { data: new Uint8Array(4), flags: NBD_CMD_FLAG.NO_HOLE }), // flag of another command
        request(NBD_CMD.TRIM, 8n, SIZE, 1), // past the end
        request(NBD_CMD.WRITE_ZEROES, 9n, SIZE, 1), // past the end: ENOSPC
        request(NBD_CMD.WRITE_ZEROES, 10n, 0, 1, { flags: NBD_CMD_FLAG.FAST_ZERO }), // not advertised
        request(NBD_CMD.CACHE, 11n, 0, 1),
        request(NBD_CMD.BLOCK_STATUS, 12n, 0, 1),
        request(99, 13n, 0, 1),
        request(NBD_CMD.FLUSH, 14n, 0, 0, { flags: 0x8000 }), // unknown flag
        request(NBD_CMD.READ, 15n, 0, 8), // and a good one still works
      ),
    );
    expect(simpleReplies(sent(actions))).toEqual([
      { error: NBD_ERROR.EINVAL, handle: 1n },
      { error: NBD_ERROR.EINVAL, handle: 2n },
      { error: NBD_ERROR.EINVAL, handle: 3n },
      { error: NBD_ERROR.EINVAL, handle: 4n },
      { error: NBD_ERROR.ENOSPC, handle: 5n },
      { error: NBD_ERROR.EINVAL, handle: 6n },
      { error: NBD_ERROR.EINVAL, handle: 7n },
      { error: NBD_ERROR.EINVAL, handle: 8n },
      { error: NBD_ERROR.ENOSPC, handle: 9n },
      { error: NBD_ERROR.EINVAL, handle: 10n },
      { error: NBD_ERROR.EINVAL, handle: 11n },
      { error: NBD_ERROR.EINVAL, handle: 12n },
      { error: NBD_ERROR.EINVAL, handle: 13n },
      { error: NBD_ERROR.EINVAL, handle: 14n },
    ]);
    expect(requests(actions)).toEqual([{ command: 'read', handle: 15n, offset: 0, length: 8 }]);
    expect(closeOf(actions)).toBeUndefined();
  });

  it('an oversized write is skipped as it streams, never buffered', () => {
    const c = transmitting({ requestBytesMax: 4096 });
    const header = request(NBD_CMD.WRITE, 1n, 0, 0x7fff_ffff);
    expect(c.receive(header.subarray(0, 28))).toEqual([]);
    for (let i = 0; i < 100; i += 1) expect(c.receive(new Uint8Array(65536))).toEqual([]);
    expect(c.phase).toBe('transmission');
  });

  it('a bad request magic closes with KEMARI_NBD_PROTOCOL', () => {
    const c = transmitting();
    const actions = c.receive(concat(request(NBD_CMD.READ, 1n, 0, 1), request(NBD_CMD.READ, 2n, 0, 1, { magic: 0xdeadbeef })));
    expect(requests(actions)).toHaveLength(1);
    const close = actions.at(-1);
    expect(close?.kind === 'close' && isKemariError(close.error, 'KEMARI_NBD_PROTOCOL')).toBe(true);
    expect(close?.kind === 'close' && close.error?.details).toMatchObject({ reason: 'request-magic', magic: '0xdeadbeef' });
  });

  it('a read-only export advertises READ_ONLY, refuses writes with NBD_EPERM and serves reads', () => {
    const c = core({ readOnly: true });
    const replies = decodeOptionReplies(sent(c.receive(concat(clientFlags(FIXED), option(NBD_OPT.GO, infoData(''))))));
    expect(decodeInfoExport(replies[0]!.data).flags).toBe(NBD_FLAG.HAS_FLAGS | NBD_FLAG.READ_ONLY | NBD_FLAG.SEND_FLUSH | NBD_FLAG.CAN_MULTI_CONN);
    const actions = c.receive(
      concat(
        request(NBD_CMD.WRITE, 1n, 0, 3, { data: Uint8Array.of(1, 2, 3) }),
        request(NBD_CMD.TRIM, 2n, 0, 3),
        request(NBD_CMD.WRITE_ZEROES, 3n, 0, 3),
        request(NBD_CMD.READ, 4n, 0, 3, { flags: NBD_CMD_FLAG.FUA }), // FUA was not advertised
        request(NBD_CMD.READ, 5n, 0, 3),
      ),
    );
    expect(simpleReplies(sent(actions))).toEqual([
      { error: NBD_ERROR.EPERM, handle: 1n },
      { error: NBD_ERROR.EPERM, handle: 2n },
      { error: NBD_ERROR.EPERM, handle: 3n },
      { error: NBD_ERROR.EINVAL, handle: 4n },
    ]);
    expect(requests(actions)).toEqual([{ command: 'read', handle: 5n, offset: 0, length: 3 }]);
  });

  it('zero-length reads and writes are framed correctly', () => {
    const c = transmitting();
    const actions = c.receive(concat(request(NBD_CMD.WRITE, 1n, SIZE, 0), request(NBD_CMD.READ, 2n, SIZE, 0), request(NBD_CMD.FLUSH, 3n, 0, 0)));
    expect(requests(actions).map((r) => r.command)).toEqual(['write', 'read', 'flush']);
  });
});

describe('end of stream', () => {
  it('between messages is a clean close; inside one is KEMARI_NBD_PROTOCOL "truncated"', () => {
    expect(closeOf(core().end())).toEqual({});
    const halfFlags = core();
    halfFlags.receive(Uint8Array.of(0, 0));
    expect(closeOf(halfFlags.end())).toEqual({ error: { code: 'KEMARI_NBD_PROTOCOL', reason: 'truncated' } });
    const halfOption = core();
    halfOption.receive(concat(clientFlags(FIXED), option(NBD_OPT.GO, infoData('')).subarray(0, 20)));
    expect(closeOf(halfOption.end())).toEqual({ error: { code: 'KEMARI_NBD_PROTOCOL', reason: 'truncated' } });
    const idle = transmitting();
    expect(closeOf(idle.end())).toEqual({});
    const halfWrite = transmitting();
    halfWrite.receive(request(NBD_CMD.WRITE, 1n, 0, 100, { data: new Uint8Array(100) }).subarray(0, 50));
    expect(closeOf(halfWrite.end())).toEqual({ error: { code: 'KEMARI_NBD_PROTOCOL', reason: 'truncated' } });
    expect(halfWrite.end()).toEqual([]);
  });
});

describe('options', () => {
  it.each([
    [{ sizeBytes: -1 }],
    [{ sizeBytes: 1.5 }],
    [{ sizeBytes: Number.NaN }],
    [{ sizeBytes: 1, exportName: 'a\0b' }],
    [{ sizeBytes: 1, exportName: 'x'.repeat(4097) }],
    [{ sizeBytes: 1, requestBytesMax: 4095 }],
    [{ sizeBytes: 1, requestBytesMax: 2 ** 31 }],
    [{ sizeBytes: 1, optionBytesMax: 10 }],
    [{ sizeBytes: 1, optionsMax: 0 }],
  ])('rejects %j with KEMARI_INVALID_ARGUMENT', (options) => {
    expect(() => new NbdServerCore(options as NbdServerCoreOptions)).toThrow(expect.objectContaining({ code: 'KEMARI_INVALID_ARGUMENT' }));
  });
});

/** A whole session: every option kind, every request kind, good and bad, ending with DISC. */
const SESSION = concat(
  clientFlags(FIXED),
  option(NBD_OPT.STRUCTURED_REPLY),
  option(999, Uint8Array.of(1, 2, 3, 4, 5)),
  option(NBD_OPT.GO, infoData('nope', [NBD_INFO.BLOCK_SIZE])),
  option(NBD_OPT.LIST),
  option(NBD_OPT.GO, new Uint8Array(300)), // too big for optionBytesMax 200: skipped
  option(NBD_OPT.INFO, infoData('', [NBD_INFO.NAME])),
  option(NBD_OPT.GO, infoData('', [NBD_INFO.BLOCK_SIZE])),
  request(NBD_CMD.WRITE, 1n, 0, 100, { data: Uint8Array.from({ length: 100 }, (_, i) => i * 7) }),
  request(NBD_CMD.READ, 2n, 0, 100),
  request(NBD_CMD.WRITE, 3n, 0, 0),
  request(NBD_CMD.FLUSH, 4n, 0, 0),
  request(NBD_CMD.TRIM, 5n, 0, 4096),
  request(NBD_CMD.WRITE_ZEROES, 6n, 4096, 4096, { flags: NBD_CMD_FLAG.FUA }),
  request(NBD_CMD.READ, 7n, SIZE, 1),
  request(NBD_CMD.WRITE, 8n, 0, 5000, { data: new Uint8Array(5000).fill(3) }),
  request(NBD_CMD.WRITE, 9n, 8, 3, { data: Uint8Array.of(0xa, 0xb, 0xc), flags: NBD_CMD_FLAG.FUA }),
  request(42, 10n, 0, 0),
  request(NBD_CMD.DISC, 11n, 0, 0),
);
const SESSION_OPTIONS = { requestBytesMax: 4096, optionBytesMax: 200 };

function feed(chunks: Uint8Array[]): unknown[] {
  const c = core(SESSION_OPTIONS);
  return describeActions(chunks.flatMap((chunk) => c.receive(chunk)));
}

describe('reassembly', () => {
  const whole = feed([SESSION]);

  it('the reference session produces the expected outline', () => {
    const kinds = (whole as Array<Record<string, unknown>>).map((a) => Object.keys(a)[0]);
    expect(kinds.filter((k) => k === 'request')).toHaveLength(6); // write, read, write(0), flush, zeroes, write
    expect(whole.at(-1)).toEqual({ close: null });
  });

  it('gives the same actions when split at every offset', () => {
    for (let at = 0; at <= SESSION.length; at += 1) {
      expect(feed([SESSION.subarray(0, at), SESSION.subarray(at)])).toEqual(whole);
    }
  });

  it('gives the same actions fed byte by byte', () => {
    expect(feed(Array.from(SESSION, (b) => Uint8Array.of(b)))).toEqual(whole);
  });

  fcTest.prop([fc.array(fc.integer({ min: 0, max: SESSION.length }), { maxLength: 40 })], { numRuns: 200 })(
    'gives the same actions for random chunkings',
    (cuts) => {
      const points = [...new Set([0, ...cuts, SESSION.length])].sort((a, b) => a - b);
      const chunks = points.slice(1).map((end, i) => SESSION.subarray(points[i], end));
      expect(feed(chunks)).toEqual(whole);
    },
  );

  fcTest.prop([fc.uint8Array({ minLength: 0, maxLength: 400 })], { numRuns: 300 })('never throws on random bytes after the handshake', (junk) => {
    const c = transmitting({ requestBytesMax: 4096 });
    const actions = c.receive(junk);
    for (const a of actions) if (a.kind === 'close' && a.error !== undefined) expect(a.error.code).toBe('KEMARI_NBD_PROTOCOL');
    c.end();
  });

  fcTest.prop([fc.uint8Array({ minLength: 0, maxLength: 400 })], { numRuns: 300 })('never throws on random bytes in the handshake', (junk) => {
    const c = core();
    c.receive(concat(clientFlags(FIXED), junk));
    c.end();
  });

  it('the magic of a request is the spec\'s 0x25609513', () => {
    expect(NBD_MAGIC.REQUEST).toBe(0x25609513);
  });
});
