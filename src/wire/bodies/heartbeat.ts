/**
 * HEARTBEAT: liveness plus what the failure detector and the arbiter need to reason about the peer.
 *
 * Body (32 bytes): u64 timeMs (sender's clock, echoed for round-trip time), u64 committedTxn, u64 generation (the
 * lease generation the sender holds; 0 when none), u32 state ({@link PeerState}), 4 reserved bytes.
 */
import { BodyReader, BodyWriter } from '../bytes.js';
import { checkInteger, checkU53 } from '../validate.js';

/** What a side says it is doing. */
export const PeerState = {
  STARTING: 0,
  SYNCING: 1,
  PROTECTED: 2,
  UNPROTECTED: 3,
  QUIESCED: 4,
  STANDBY: 5,
} as const;
/** A peer state number. */
export type PeerState = (typeof PeerState)[keyof typeof PeerState];

const STATE_MAX = PeerState.STANDBY;

/** HEARTBEAT body. */
export interface Heartbeat {
  timeMs: number;
  committedTxn: number;
  generation: number;
  state: PeerState;
}

export function encodeHeartbeat(heartbeat: Heartbeat): Uint8Array[] {
  return [
    new BodyWriter(32)
      .u64(checkU53('heartbeat.timeMs', heartbeat.timeMs))
      .u64(checkU53('heartbeat.committedTxn', heartbeat.committedTxn))
      .u64(checkU53('heartbeat.generation', heartbeat.generation))
      .u32(checkInteger('heartbeat.state', heartbeat.state, 0, STATE_MAX))
      .zeros(4).bytes,
  ];
}

export function decodeHeartbeat(body: Uint8Array): Heartbeat {
  const r = new BodyReader(body, 'HEARTBEAT');
  const timeMs = r.u64();
  const committedTxn = r.u64();
  const generation = r.u64();
  const state = r.u32();
  if (state > STATE_MAX) r.fail(`unknown state ${state}`);
  r.reserved(4);
  r.end();
  return { timeMs, committedTxn, generation, state: state as PeerState };
}
