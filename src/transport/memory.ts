/**
 * An in-memory {@link Connection} pair: both ends of a replication session in one process, with no sockets, for
 * tests and for the embedded default. It behaves like a socket where the protocol can tell: deliveries are
 * asynchronous and in order, writes are copied (a writer may reuse its buffers once `write` returns, and a receiver
 * may keep views of what it got), there is backpressure, and 'close' comes exactly once per end.
 */
import { EventEmitter } from 'node:events';
import { KemariError } from '../errors.js';
import type { Connection, ConnectionEvents } from './connection.js';

/** Options for {@link memoryPair}. */
export interface MemoryPairOptions {
  /**
   * Per direction: `write` returns false once more than this many written bytes are not yet delivered, and 'drain'
   * follows when no more than this many are left. Default 1 MiB.
   */
  highWaterMarkBytes?: number;
}

/** {@link MemoryPairOptions.highWaterMarkBytes} when none is given. */
export const DEFAULT_MEMORY_HIGH_WATER_MARK_BYTES = 1 << 20;

/**
 * Creates two connected in-memory ends.
 *
 * - A batch written on one end reaches the other as ONE new Uint8Array holding a copy of the batch (never aliasing
 *   the writer's buffers), in a later macrotask (`setImmediate`), in write order. Empty batches deliver nothing.
 *   Like a socket, an end receives nothing until it has a 'data' listener: batches wait (and count against the
 *   writer's high-water mark).
 * - `bufferedBytes` is the writer's undelivered bytes; `write` returns false above `highWaterMarkBytes` and 'drain'
 *   is emitted after deliveries bring them back to it or below.
 * - `close()` on either end stops writes on both, delivers every batch already written in both directions (to a
 *   'data' listener if there is one), then both ends emit 'close' with `undefined`.
 * - `close(error)` on either end drops undelivered batches and closes both at once: that end emits 'close' with
 *   `error`, the other with a KEMARI_CONNECTION_CLOSED error whose cause is `error` (both in a later macrotask).
 * - `peer` is "memory"; writes after close are ignored and return false.
 *
 * Throws KEMARI_INVALID_ARGUMENT if `highWaterMarkBytes` is not a non-negative safe integer.
 */
export function memoryPair(options: MemoryPairOptions = {}): [Connection, Connection] {
  const highWaterMarkBytes = options.highWaterMarkBytes ?? DEFAULT_MEMORY_HIGH_WATER_MARK_BYTES;
  if (!Number.isSafeInteger(highWaterMarkBytes) || highWaterMarkBytes < 0) {
    throw new KemariError('KEMARI_INVALID_ARGUMENT', 'highWaterMarkBytes must be a non-negative safe integer', {
      details: { highWaterMarkBytes },
    });
  }
  const a = new MemoryEnd(highWaterMarkBytes);
  const b = new MemoryEnd(highWaterMarkBytes);
  a.other = b;
  b.other = a;
  return [a, b];
}

type EndState = 'open' | 'closing' | 'closed';

/** One end of a {@link memoryPair}. Its outgoing queue holds what it wrote and the other end has not received. */
class MemoryEnd implements Connection {
  readonly peer = 'memory';
  /** The other end; set right after construction. */
  other!: MemoryEnd;
  state: EndState = 'open';
  readonly events = new EventEmitter();
  private readonly highWaterMarkBytes: number;
  private outgoing: Uint8Array[] = [];
  private outgoingBytes = 0;
  private needDrain = false;
  private deliveryScheduled = false;

  constructor(highWaterMarkBytes: number) {
    this.highWaterMarkBytes = highWaterMarkBytes;
  }

  get bufferedBytes(): number {
    return this.outgoingBytes;
  }

  get closed(): boolean {
    return this.state !== 'open';
  }

  write(chunks: readonly Uint8Array[]): boolean {
    if (this.state !== 'open') return false;
    let totalBytes = 0;
    for (const chunk of chunks) totalBytes += chunk.length;
    if (totalBytes > 0) {
      const batch = new Uint8Array(totalBytes);
      let offset = 0;
      for (const chunk of chunks) {
        batch.set(chunk, offset);
        offset += chunk.length;
      }
      this.outgoing.push(batch);
      this.outgoingBytes += totalBytes;
      this.scheduleDelivery();
    }
    if (this.outgoingBytes > this.highWaterMarkBytes) {
      this.needDrain = true;
      return false;
    }
    return true;
  }

  close(error?: KemariError): void {
    if (error !== undefined) {
      this.abort(error);
      return;
    }
    if (this.state !== 'open') return;
    this.state = 'closing';
    this.other.state = 'closing';
    // Both directions flush (with or without a listener), and the last flush closes both ends.
    this.scheduleDelivery();
    this.other.scheduleDelivery();
  }

  on<E extends keyof ConnectionEvents>(event: E, listener: ConnectionEvents[E]): this {
    this.events.on(event, listener);
    if (event === 'data' && this.events.listenerCount('data') === 1 && this.other.outgoing.length > 0) {
      this.other.scheduleDelivery();
    }
    return this;
  }

  off<E extends keyof ConnectionEvents>(event: E, listener: ConnectionEvents[E]): this {
    this.events.off(event, listener);
    return this;
  }

  private abort(error: KemariError): void {
    if (this.state === 'closed') return;
    const other = this.other;
    for (const end of [this, other]) {
      end.state = 'closed';
      end.outgoing = [];
      end.outgoingBytes = 0;
    }
    const otherError = new KemariError('KEMARI_CONNECTION_CLOSED', 'the other end of the memory pair closed with an error', {
      cause: error,
      details: { peer: 'memory' },
    });
    setImmediate(() => {
      this.events.emit('close', error);
      other.events.emit('close', otherError);
    });
  }

  private scheduleDelivery(): void {
    if (this.deliveryScheduled) return;
    this.deliveryScheduled = true;
    setImmediate(this.deliver);
  }

  /** Delivers the batches queued before this turn (later ones wait for the next turn, so echoes cannot spin). */
  private readonly deliver = (): void => {
    this.deliveryScheduled = false;
    if (this.isClosed()) return;
    const receiver = this.other;
    const batches = this.outgoing;
    this.outgoing = [];
    let index = 0;
    while (index < batches.length) {
      if (this.isClosed()) return;
      if (this.isOpen() && receiver.events.listenerCount('data') === 0) break;
      const batch = batches[index++] as Uint8Array;
      this.outgoingBytes -= batch.length;
      receiver.events.emit('data', batch);
    }
    if (this.isClosed()) return;
    if (index < batches.length) {
      // The receiver stopped listening: keep the rest, ahead of anything written since.
      this.outgoing = batches.slice(index).concat(this.outgoing);
    } else if (this.outgoing.length > 0) {
      this.scheduleDelivery();
    }
    if (this.needDrain && this.isOpen() && this.outgoingBytes <= this.highWaterMarkBytes) {
      this.needDrain = false;
      this.events.emit('drain');
    }
    if (!this.isOpen()) this.finishIfFlushed();
  };

  /** State reads through methods: a 'data' listener may close the pair in the middle of a delivery turn. */
  private isOpen(): boolean {
    return this.state === 'open';
  }

  private isClosed(): boolean {
    return this.state === 'closed';
  }

  /** Closes both ends cleanly once neither direction holds undelivered bytes. */
  private finishIfFlushed(): void {
    const other = this.other;
    if (this.state !== 'closing' || this.outgoing.length > 0 || other.outgoing.length > 0) return;
    this.state = 'closed';
    other.state = 'closed';
    this.events.emit('close', undefined);
    other.events.emit('close', undefined);
  }
}
