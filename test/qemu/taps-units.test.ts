/**
 * The taps' pure parts, without QEMU: the `-netdev stream` frame splitter at every split point and with bad lengths,
 * the output pipeline against a real EventTap (nothing out before release, order kept through KEMARI_TAP_FULL
 * refusals of mixed sizes, a discard is fatal), and the replay ledger (each event handed out once).
 */
import { describe, expect, it } from 'vitest';
import { KemariError, isKemariError } from '../../src/errors.js';
import { EventTap } from '../../src/tap/event-tap.js';
import { OutputPipeline } from '../../src/qemu/taps/output-pipeline.js';
import type { OutputPipelineOptions } from '../../src/qemu/taps/output-pipeline.js';
import { PendingReplay } from '../../src/qemu/taps/replay.js';
import { StreamFrameSplitter, encodeStreamFrameHeader } from '../../src/qemu/taps/stream-frame-splitter.js';

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
const bytes = (text: string): Uint8Array => Uint8Array.from(Buffer.from(text));
const text = (data: Uint8Array): string => Buffer.from(data).toString('latin1');

async function until(what: string, probe: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!probe()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(2);
  }
}

function framed(...frames: Uint8Array[]): Uint8Array {
  return Buffer.concat(frames.flatMap((frame) => [encodeStreamFrameHeader(frame.byteLength), frame]));
}

describe('StreamFrameSplitter', () => {
  it('splits be32-length frames at every split point, and returns copies', () => {
    const a = bytes('first frame');
    const b = Uint8Array.from({ length: 300 }, (_, i) => i & 0xff);
    const c = bytes('x');
    const stream = framed(a, b, c);
    for (let cut = 0; cut <= stream.byteLength; cut++) {
      const splitter = new StreamFrameSplitter(1024);
      const frames = [...splitter.push(stream.subarray(0, cut)), ...splitter.push(stream.subarray(cut))];
      expect(frames).toEqual([a, b, c]);
      expect(splitter.bufferedBytes).toBe(0);
    }
    const splitter = new StreamFrameSplitter(1024);
    const input = framed(a);
    const [frame] = splitter.push(input);
    input.fill(0);
    expect(frame).toEqual(a);
  });

  it('byte by byte', () => {
    const frames = [bytes('a'), bytes('bb'), bytes('ccc')];
    const stream = framed(...frames);
    const splitter = new StreamFrameSplitter(16);
    const out: Uint8Array[] = [];
    for (let i = 0; i < stream.byteLength; i++) out.push(...splitter.push(stream.subarray(i, i + 1)));
    expect(out).toEqual(frames);
  });

  it.each([
    ['zero', 0],
    ['one above the bound', 65],
    ['2^32 - 1', 0xffff_ffff],
  ])('refuses a length of %s before buffering, and everything after it', (_name, length) => {
    const splitter = new StreamFrameSplitter(64);
    const header = Buffer.alloc(4);
    header.writeUInt32BE(length);
    let error: unknown;
    try {
      splitter.push(Buffer.concat([framed(bytes('ok')), header, Buffer.alloc(8)]));
    } catch (caught) {
      error = caught;
    }
    expect(isKemariError(error, 'KEMARI_PROTOCOL')).toBe(true);
    expect((error as KemariError).details['length']).toBe(length);
    expect(() => splitter.push(framed(bytes('ok')))).toThrow(KemariError);
  });

  it('accepts exactly frameBytesMax', () => {
    const frame = new Uint8Array(64).fill(7);
    expect(new StreamFrameSplitter(64).push(framed(frame))).toEqual([frame]);
  });
});

describe('OutputPipeline', () => {
  type Harness = { pipeline: OutputPipeline; out: Uint8Array[]; flows: boolean[]; errors: KemariError[]; ready: { value: boolean } };
  function harness(tap: EventTap, options: Partial<OutputPipelineOptions> = {}): Harness {
    const out: Uint8Array[] = [];
    const flows: boolean[] = [];
    const errors: KemariError[] = [];
    const ready = { value: true };
    const pipeline = new OutputPipeline({
      channel: 'c0',
      sink: (channel, data) => tap.output(channel, data),
      coalesce: false,
      outsideReady: () => ready.value,
      deliver: (data) => out.push(data),
      onFlow: (paused) => flows.push(paused),
      onError: (error) => errors.push(error),
      retryDelayMs: 2,
      ...options,
    });
    return { pipeline, out, flows, errors, ready };
  }

  it('delivers nothing before its epoch is released, then everything in order', async () => {
    const tap = new EventTap();
    const { pipeline, out } = harness(tap);
    for (let i = 0; i < 10; i++) pipeline.push(bytes(`f${i}`));
    await until('all tapped', () => tap.heldCount === 10);
    tap.seal(1);
    await sleep(10);
    expect(out).toEqual([]);
    tap.release(1);
    await until('delivered', () => out.length === 10);
    expect(out.map(text)).toEqual(Array.from({ length: 10 }, (_, i) => `f${i}`));
  });

  it('settle() returns once everything pushed has been handed to the tap, so the next seal takes it', async () => {
    const tap = new EventTap();
    const { pipeline } = harness(tap, { coalesce: true });
    pipeline.push(bytes('before the stop, part 1'));
    pipeline.push(bytes(', part 2'));
    expect(tap.openCount).toBe(0); // not yet offered: a seal now would leave it to a later epoch
    await pipeline.settle();
    expect(tap.openCount).toBe(1);
    expect(text(tap.seal(1)[0]!.payload)).toBe('before the stop, part 1, part 2');
    await pipeline.settle(); // nothing pending: returns at once
  });

  it('coalesces a byte stream read in one turn into one output, bounded by outputBytesMax', async () => {
    const tap = new EventTap();
    const { pipeline, out } = harness(tap, { coalesce: true, outputBytesMax: 8, waitingBytesMax: 64 });
    for (const part of ['ab', 'cd', 'efghij', 'k']) pipeline.push(bytes(part));
    await until('tapped', () => tap.heldCount === 2);
    expect(tap.seal(1).map((e) => text(e.payload))).toEqual(['abcdefgh', 'ijk']);
    tap.release(1);
    await until('delivered', () => out.length === 2);
    expect(out.map(text).join('')).toBe('abcdefghijk');
  });

  it('keeps the order through KEMARI_TAP_FULL refusals of mixed sizes, pauses reading, loses nothing', async () => {
    // Byte-bounded tap: a large frame is refused while smaller later ones would fit; none may overtake it.
    const tap = new EventTap({ heldBytesMax: 100, heldEventsMax: 1000 });
    const { pipeline, out, flows, errors } = harness(tap, { outputBytesMax: 100 });
    const sizes = Array.from({ length: 200 }, (_, i) => [90, 3, 40, 7, 64, 2][i % 6] as number);
    let sent = 0;
    let txn = 0;
    // The reader: pushes while the pipeline is not paused (as a socket driver would).
    const reader = setInterval(() => {
      for (let n = 0; n < 5 && sent < sizes.length && !pipeline.paused; n++) {
        const frame = new Uint8Array(sizes[sent] as number).fill(sent & 0xff);
        frame[0] = sent & 0xff;
        frame[frame.byteLength - 1] = sent >> 8;
        pipeline.push(frame);
        sent += 1;
      }
    }, 1);
    const epochs = setInterval(() => {
      tap.seal(++txn);
      tap.release(txn);
    }, 4);
    try {
      await until('all delivered', () => out.length === sizes.length, 20_000);
    } finally {
      clearInterval(reader);
      clearInterval(epochs);
    }
    expect(errors).toEqual([]);
    expect(out.map((f) => f.byteLength)).toEqual(sizes);
    out.forEach((frame, i) => {
      expect(frame[0]).toBe(i & 0xff);
      expect(frame[frame.byteLength - 1]).toBe(i >> 8);
    });
    expect(pipeline.stats.refusals).toBeGreaterThan(0);
    expect(flows).toContain(true);
    expect(pipeline.stats.outputsInFlight).toBe(0);
  });

  it('holds released outputs while the outside is not ready, then delivers them on flush', async () => {
    const tap = new EventTap();
    const { pipeline, out, ready } = harness(tap, { outputsInFlightMax: 3 });
    ready.value = false;
    for (let i = 0; i < 3; i++) pipeline.push(bytes(`${i}`));
    await until('tapped', () => tap.heldCount === 3);
    expect(pipeline.paused).toBe(true);
    tap.seal(1);
    tap.release(1);
    await sleep(5);
    expect(out).toEqual([]);
    ready.value = true;
    pipeline.flush();
    expect(out.map(text)).toEqual(['0', '1', '2']);
    expect(pipeline.paused).toBe(false);
  });

  it('delivers replayed outputs first, before new ones, even if the outside was not ready for them', async () => {
    const tap = new EventTap();
    const { pipeline, out, ready } = harness(tap, { replay: [bytes('r1'), bytes('r2')] });
    ready.value = false;
    pipeline.flush();
    pipeline.push(bytes('new'));
    await until('tapped', () => tap.heldCount === 1);
    tap.seal(1);
    tap.release(1);
    await sleep(5);
    expect(out).toEqual([]);
    ready.value = true;
    pipeline.flush();
    expect(out.map(text)).toEqual(['r1', 'r2', 'new']);
    expect(pipeline.stats.replayed).toBe(2);
    pipeline.flush();
    expect(out).toHaveLength(3);
  });

  it('a discard of held outputs is fatal: the pipeline closes with that error', async () => {
    const tap = new EventTap();
    const { pipeline, out, errors } = harness(tap);
    pipeline.push(bytes('x'));
    await until('tapped', () => tap.heldCount === 1);
    tap.discard(new KemariError('KEMARI_QUIESCED', 'quiesced'));
    await until('error', () => errors.length === 1);
    expect(errors[0]?.code).toBe('KEMARI_QUIESCED');
    expect(pipeline.closed).toBe(true);
    pipeline.push(bytes('y'));
    expect(out).toEqual([]);
  });
});

describe('PendingReplay', () => {
  it('hands each channel its events once, in order, without duplicates', () => {
    const replay = new PendingReplay([
      { txn: 3, id: 1, channel: 'serial0', payload: bytes('a') },
      { txn: 3, id: 2, channel: 'net0', payload: bytes('n') },
      { txn: 4, id: 3, channel: 'serial0', payload: bytes('b') },
      { txn: 3, id: 1, channel: 'serial0', payload: bytes('a') },
    ]);
    expect(replay.remaining).toBe(3);
    expect(replay.channels().sort()).toEqual(['net0', 'serial0']);
    expect(replay.take('serial0').map(text)).toEqual(['a', 'b']);
    expect(replay.take('serial0')).toEqual([]);
    expect(replay.remaining).toBe(1);
    expect(replay.take('net0').map(text)).toEqual(['n']);
    expect(replay.remaining).toBe(0);
  });

  it('refuses an event without a channel or payload', () => {
    expect(() => new PendingReplay([{ txn: 1, id: 1, channel: '', payload: bytes('a') }])).toThrow(KemariError);
    expect(() => new PendingReplay([{ txn: 1, id: 1, channel: 'c', payload: 'a' as unknown as Uint8Array }])).toThrow(KemariError);
  });
});
