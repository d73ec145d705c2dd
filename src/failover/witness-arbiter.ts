/**
 * The {@link Arbiter} backed by a witness process (see witness-server.ts): requests go out as JSON lines, replies
 * come back by id. A request unanswered within `timeoutMs`, or a broken connection, is KEMARI_ARBITER_UNAVAILABLE:
 * the caller must then act as if it had no lease (hold output, do not promote).
 */
import { connect } from 'node:net';
import type { Socket } from 'node:net';
import { KemariError } from '../errors.js';
import type { Arbiter, Lease } from './arbiter.js';
import { LineReader } from './line-reader.js';
import { WITNESS_LINE_BYTES_MAX } from './witness-server.js';

/** Options of {@link WitnessArbiter.connect}. */
export interface WitnessArbiterOptions {
  host?: string;
  port: number;
  /** How long a request may take. Default 1000 ms. */
  timeoutMs?: number;
}

interface Waiter {
  resolve(value: Lease | undefined): void;
  reject(error: KemariError): void;
  timer: NodeJS.Timeout;
}

export class WitnessArbiter implements Arbiter {
  private nextId = 1;
  private readonly waiters = new Map<number, Waiter>();
  private failure: KemariError | undefined;

  private constructor(
    private readonly socket: Socket,
    private readonly timeoutMs: number,
  ) {
    const reader = new LineReader(WITNESS_LINE_BYTES_MAX);
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => {
      try {
        for (const line of reader.push(chunk)) this.onReply(line);
      } catch (error) {
        this.fail(new KemariError('KEMARI_ARBITER_UNAVAILABLE', 'the witness sent a malformed reply', { cause: error }));
      }
    });
    socket.on('error', () => {});
    socket.on('close', () => this.fail(new KemariError('KEMARI_ARBITER_UNAVAILABLE', 'the connection to the witness closed')));
  }

  /** Connects to a witness. */
  static async connect(options: WitnessArbiterOptions): Promise<WitnessArbiter> {
    const socket = connect(options.port, options.host ?? '127.0.0.1');
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', (error) => reject(new KemariError('KEMARI_ARBITER_UNAVAILABLE', `cannot reach the witness: ${error.message}`, { cause: error })));
    });
    return new WitnessArbiter(socket, options.timeoutMs ?? 1000);
  }

  acquire(sessionId: string, holder: string, ttlMs: number): Promise<Lease | undefined> {
    return this.request({ op: 'acquire', sessionId, holder, ttlMs });
  }

  renew(lease: Lease): Promise<Lease | undefined> {
    return this.request({ op: 'renew', ...lease });
  }

  async release(lease: Lease): Promise<void> {
    await this.request({ op: 'release', ...lease });
  }

  async close(): Promise<void> {
    this.fail(new KemariError('KEMARI_CLOSED', 'the arbiter was closed'));
    this.socket.destroy();
  }

  private request(body: Record<string, unknown>): Promise<Lease | undefined> {
    if (this.failure !== undefined) return Promise.reject(this.failure);
    const id = this.nextId++;
    return new Promise<Lease | undefined>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.delete(id);
        reject(new KemariError('KEMARI_ARBITER_UNAVAILABLE', `the witness did not answer within ${this.timeoutMs} ms`, { details: { timeoutMs: this.timeoutMs } }));
      }, this.timeoutMs);
      this.waiters.set(id, { resolve, reject, timer });
      this.socket.write(JSON.stringify({ id, ...body }) + '\n');
    });
  }

  private onReply(line: string): void {
    const reply = JSON.parse(line) as { id: number; ok: boolean; lease?: Lease | null; code?: string; message?: string };
    const waiter = this.waiters.get(reply.id);
    if (waiter === undefined) return;
    this.waiters.delete(reply.id);
    clearTimeout(waiter.timer);
    if (reply.ok) waiter.resolve(reply.lease ?? undefined);
    else waiter.reject(new KemariError('KEMARI_INVALID_ARGUMENT', `the witness refused the request: ${reply.message ?? reply.code ?? ''}`, { details: { code: reply.code } }));
  }

  private fail(error: KemariError): void {
    if (this.failure !== undefined) return;
    this.failure = error;
    for (const waiter of this.waiters.values()) {
      clearTimeout(waiter.timer);
      waiter.reject(error);
    }
    this.waiters.clear();
  }
}
