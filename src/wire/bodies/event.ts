/**
 * EVENT carries one output the event-tap held back during the epoch (a network packet, serial bytes, a write to
 * shared storage). The secondary keeps the events of its last committed epoch so that, on failover, it can replay
 * what the primary may not have released (Kemari's "last event replayed").
 *
 * Body: u64 event id, u16 channel name bytes (1..255), 6 reserved bytes, channel (UTF-8), payload (the rest; may
 * be empty). The payload is the caller's view on encode and a view into the body on decode.
 */
import { BodyReader, BodyWriter, utf8Bytes } from '../bytes.js';
import { checkBytes, checkU53, invalid } from '../validate.js';

/** EVENT body. */
export interface OutputEvent {
  id: number;
  channel: string;
  payload: Uint8Array;
}

/** Longest channel name in bytes. */
export const CHANNEL_BYTES_MAX = 255;
const PREFIX_BYTES = 16;

export function encodeEvent(event: OutputEvent): Uint8Array[] {
  if (typeof event.channel !== 'string') invalid('event.channel', 'must be a string', event.channel);
  const channel = utf8Bytes(event.channel);
  if (channel.byteLength === 0 || channel.byteLength > CHANNEL_BYTES_MAX) {
    invalid('event.channel', `must be 1..${CHANNEL_BYTES_MAX} bytes`, event.channel);
  }
  const payload = checkBytes('event.payload', event.payload);
  const prefix = new BodyWriter(PREFIX_BYTES + channel.byteLength)
    .u64(checkU53('event.id', event.id))
    .u16(channel.byteLength)
    .zeros(6)
    .raw(channel).bytes;
  return payload.byteLength === 0 ? [prefix] : [prefix, payload];
}

export function decodeEvent(body: Uint8Array): OutputEvent {
  const r = new BodyReader(body, 'EVENT');
  const id = r.u64();
  const channelBytes = r.u16();
  if (channelBytes === 0 || channelBytes > CHANNEL_BYTES_MAX) r.fail(`channel of ${channelBytes} bytes`);
  r.reserved(6);
  const channel = r.utf8(channelBytes);
  return { id, channel, payload: r.rest() };
}
