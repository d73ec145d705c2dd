/**
 * The second heartbeat path: a connection of its own between primary and secondary that carries nothing but
 * heartbeats, so a broken replication link (a failed NIC, a cut cable on the replication network) is not taken for
 * a dead host. Kemari, Remus and COLO judged liveness from the replication link alone.
 *
 * The primary dials and says HELLO (so the secondary knows the session); then both sides send a HEARTBEAT every
 * `intervalMs` and report every frame they receive with `onHeard`. Anything else, or a HELLO of another session,
 * closes the connection. The FailureDetector combines what this path hears with what the link hears.
 */
import { KemariError } from '../errors.js';
import type { Connection } from '../transport/connection.js';
import type { TimerHandle, Timers } from '../time/timers.js';
import { FrameDecoder } from '../wire/decoder.js';
import { encodeFrame } from '../wire/encoder.js';
import { FrameType } from '../wire/header.js';
import type { Hello } from '../wire/bodies/hello.js';
import { PeerState } from '../wire/bodies/heartbeat.js';

/** Options of a {@link HeartbeatLink}. */
export interface HeartbeatLinkOptions {
  /** The dialer's HELLO (primary side), sent first; the acceptor passes `expectSessionId` instead. */
  hello?: Hello;
  /** The session an acceptor serves: a HELLO naming another closes the link. */
  expectSessionId?: string | (() => string | undefined);
  intervalMs: number;
  timers: Timers;
  /** Called for every frame heard from the peer (after the HELLO, on the acceptor). */
  onHeard: () => void;
  /** What this side tells the peer in its heartbeats. */
  state: () => { committedTxn: number; state: PeerState };
  /** On the acceptor: a connection that has not said this session's HELLO within this is closed. */
  helloTimeoutMs?: number;
}

/** One heartbeat connection, either side. */
export class HeartbeatLink {
  private readonly decoder = new FrameDecoder({ bodyBytesMax: 64 * 1024 });
  private readonly timer: TimerHandle;
  private greeted: boolean;
  private helloTimer: TimerHandle | undefined;

  constructor(
    readonly connection: Connection,
    private readonly options: HeartbeatLinkOptions,
  ) {
    this.greeted = options.hello !== undefined;
    if (options.hello !== undefined) this.send(encodeFrame({ type: FrameType.HELLO, txn: 0, seq: 0, body: options.hello }));
    connection.on('data', (chunk) => this.receive(chunk));
    connection.on('close', () => {
      options.timers.clear(this.timer);
      options.timers.clear(this.helloTimer);
    });
    this.timer = options.timers.setInterval(() => this.beat(), options.intervalMs);
    if (!this.greeted && options.helloTimeoutMs !== undefined) {
      // An idle connection must not keep a place the real primary's heartbeat path needs.
      this.helloTimer = options.timers.setTimeout(() => {
        if (!this.greeted) this.close(new KemariError('KEMARI_PROTOCOL', 'no HELLO on the heartbeat path in time'));
      }, options.helloTimeoutMs);
    }
    this.beat();
  }

  private beat(): void {
    if (this.connection.closed || !this.greeted || this.connection.bufferedBytes > 64 * 1024) return;
    const { committedTxn, state } = this.options.state();
    this.send(encodeFrame({ type: FrameType.HEARTBEAT, txn: 0, seq: 0, body: { timeMs: Date.now(), committedTxn, generation: 0, state } }));
  }

  private send(frame: ReturnType<typeof encodeFrame>): void {
    this.connection.write([frame.header, ...frame.body]);
  }

  private receive(chunk: Uint8Array): void {
    try {
      this.decoder.push(chunk, (frame) => {
        if (!this.greeted) {
          const expected = typeof this.options.expectSessionId === 'function' ? this.options.expectSessionId() : this.options.expectSessionId;
          if (frame.type !== FrameType.HELLO || frame.body.role !== 'primary' || expected === undefined || frame.body.sessionId !== expected) {
            throw new KemariError('KEMARI_HELLO_MISMATCH', 'the heartbeat path was opened without a HELLO of this session');
          }
          this.greeted = true;
          this.beat();
        } else if (frame.type !== FrameType.HEARTBEAT) {
          throw new KemariError('KEMARI_PROTOCOL', `frame type ${frame.type} on the heartbeat path`);
        }
        this.options.onHeard();
      });
    } catch (error) {
      this.close(error instanceof KemariError ? error : new KemariError('KEMARI_PROTOCOL', 'bad heartbeat path data', { cause: error }));
    }
  }

  close(error?: KemariError): void {
    this.options.timers.clear(this.timer);
    this.options.timers.clear(this.helloTimer);
    this.connection.close(error);
  }
}
