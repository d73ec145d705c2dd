/**
 * A sans-I/O replication session in one process: SimulatedVm + Workload + SenderCore on one side, ReceiverCore +
 * Replica on the other, bytes passed by hand. Used by crash-point tests to record a stream once and replay any
 * prefix of it deterministically.
 */
import type { KemariError } from '../../src/index.js';
import { primaryHello } from '../../src/txn/hello-for.js';
import { DeltaCache } from '../../src/txn/delta-cache.js';
import type { Hello } from '../../src/index.js';
import { Replica } from '../../src/replica/replica.js';
import { ReceiverCore } from '../../src/txn/receiver-core.js';
import type { ReceiverAction } from '../../src/txn/receiver-core.js';
import { SenderCore } from '../../src/txn/sender-core.js';
import { SimulatedVm } from '../../src/vm/simulated-vm.js';
import { Workload } from '../../src/vm/workload.js';
import { EventTap } from '../../src/tap/event-tap.js';
import { StagingArena } from '../../src/txn/staging-arena.js';

export function helloOf(vm: SimulatedVm, features: string[] = ['verify']): Hello {
  return primaryHello(vm, 'test-session', features);
}

export function joinFrames(frames: ReadonlyArray<{ header: Uint8Array; body: Uint8Array[] }>): Buffer {
  return Buffer.concat(frames.flatMap((f) => [f.header, ...f.body]));
}

/** A receiver with its replica; `feed` carries out the apply/ack duties synchronously, like the Secondary. */
export class ReceiverSide {
  /** Accept delta pages (as a secondary that negotiated them). */
  readonly delta: boolean;
  replica: Replica | undefined;
  readonly core: ReceiverCore;
  readonly sent: Buffer[] = [];
  readonly errors: KemariError[] = [];
  readonly applied: number[] = [];
  closed = false;

  constructor(options: { txnBytesMax?: number; txnFramesMax?: number; verify?: boolean; committedTxn?: number; replica?: Replica; stagingBytes?: number; delta?: boolean } = {}) {
    this.delta = options.delta ?? false;
    this.replica = options.replica;
    this.core = new ReceiverCore({
      // Small on purpose: the full sync overflows it and later epochs reuse it, as a standby's would be reused.
      arena: new StagingArena(options.stagingBytes ?? 96 * 1024),
      bodyBytesMax: 16 << 20,
      txnBytesMax: options.txnBytesMax ?? 1 << 30,
      txnFramesMax: options.txnFramesMax ?? 1 << 20,
      committedTxn: options.committedTxn ?? options.replica?.committedTxn ?? 0,
      acceptHello: (hello) => {
        this.replica ??= new Replica({ memoryBytes: hello.memoryBytes, pageBytes: hello.pageBytes, deviceNames: hello.devices, disks: hello.disks });
        return { ...hello, role: 'secondary', committedTxn: this.replica.committedTxn };
      },
    });
    this.verify = options.verify ?? true;
  }

  private readonly verify: boolean;

  feed(bytes: Uint8Array): void {
    this.act(this.core.receive(bytes));
  }

  lose(): void {
    this.act(this.core.connectionLost());
  }

  private act(actions: ReceiverAction[]): void {
    for (const action of actions) {
      if (action.type === 'send') this.sent.push(joinFrames([action.frame]));
      else if (action.type === 'close') {
        this.closed = true;
        if (action.error !== undefined) this.errors.push(action.error);
      } else if (action.type === 'apply') {
        try {
          const digest = this.replica!.apply(action.txn, { verify: this.verify, delta: this.delta });
          this.applied.push(action.txn.txn);
          this.act(this.core.applied(action.txn.txn, digest));
        } catch (error) {
          this.act(this.core.applyFailed(action.txn.txn, error as KemariError));
        }
      }
    }
  }
}

/** One recorded epoch of a stream. */
export interface RecordedEpoch {
  txn: number;
  /** Offset in the stream just past this transaction's COMMIT. */
  endOffset: number;
  digest: Uint8Array;
  /** Offsets of every frame boundary inside the transaction (start of each frame). */
  frameOffsets: number[];
}

/** A recorded primary-to-secondary stream: the HELLO, then the transactions. */
export interface RecordedStream {
  hello: Buffer;
  stream: Buffer;
  epochs: RecordedEpoch[];
  /** The stream carries delta pages (replay it into a receiver that accepts them). */
  delta: boolean;
  /** How many pages went as deltas. */
  deltaPages: number;
}

/**
 * Runs a workload for `epochs` epochs and records the stream a primary would send (the first epoch a full sync).
 * `beforeCapture(vm, epoch)` may change the VM further before each capture.
 */
export function recordStream(options: {
  memoryBytes?: number;
  epochs: number;
  stepsPerEpoch?: number;
  seed?: number;
  pagesPerFrameMax?: number;
  beforeCapture?: (vm: SimulatedVm, epoch: number) => void;
  /** Send pages as deltas against what the receiver holds (a DeltaCache, as the primary does). */
  delta?: boolean;
}): RecordedStream {
  const deltaCache = options.delta === true ? new DeltaCache(4096, 64 << 20) : undefined;
  let deltaPages = 0;
  const vm = new SimulatedVm({ memoryBytes: options.memoryBytes ?? 1 << 20, seed: options.seed ?? 1, disks: [{ id: 0, bytes: 256 * 1024 }] });
  const tap = new EventTap();
  const workload = new Workload(vm, {
    seed: options.seed ?? 1,
    pagesPerStep: 8,
    outputEvery: 2,
    output: (channel, data) => void tap.output(channel, data).catch(() => {}),
  });
  const sender = new SenderCore({ hello: helloOf(vm), pipelineDepth: options.epochs + 1, bodyBytesMax: 1 << 20, pagesPerFrameMax: options.pagesPerFrameMax ?? 64 });
  const receiver = new ReceiverSide({ delta: options.delta === true });
  const hello = joinFrames(sender.start());
  receiver.feed(hello);
  for (const reply of receiver.sent.splice(0)) sender.receive(reply);
  const parts: Buffer[] = [];
  let offset = 0;
  const epochs: RecordedEpoch[] = [];
  for (let epoch = 0; epoch < options.epochs; epoch++) {
    if (epoch > 0) for (let s = 0; s < (options.stepsPerEpoch ?? 3); s++) workload.step();
    options.beforeCapture?.(vm, epoch);
    vm.pause();
    const capture = vm.capture({ full: epoch === 0, digest: true });
    const events = tap.seal(sender.nextTxn);
    vm.resume();
    let wire = capture;
    if (deltaCache !== undefined && !capture.full) {
      const encoded = deltaCache.encode(capture.pages);
      deltaPages += encoded.deltaPages;
      wire = { ...capture, pages: encoded.pages };
    }
    const out = sender.encodeTransaction(wire, events, 0);
    const frameOffsets: number[] = [];
    for (const frame of out.frames) {
      frameOffsets.push(offset);
      const bytes = joinFrames([frame]);
      parts.push(bytes);
      offset += bytes.byteLength;
    }
    epochs.push({ txn: out.txn, endOffset: offset, digest: capture.stateDigest, frameOffsets });
  }
  return { hello, stream: Buffer.concat(parts), epochs, delta: deltaCache !== undefined, deltaPages };
}
