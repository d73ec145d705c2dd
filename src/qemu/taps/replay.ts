/**
 * Replay on failover: the outputs of committed epochs that the dead primary may not have released
 * (`Promotion.replay`) must reach the outside from the new primary, in order, before anything the restored guest
 * produces now, and only once.
 *
 * Why a class and not just the array: a promotion's replay spans every channel (serial, each NIC), and each tap
 * takes its own channel's share. Taking removes them, so a tap that is created twice, or two taps on one channel,
 * can never deliver an event a second time. Events listed twice (same txn, id and channel) are kept once.
 * Delivery itself is the taps' job: they put the taken payloads ahead of every new output (the `replay` option of
 * SerialTap and NetTap).
 */
import { KemariError } from '../../errors.js';
import type { ReplayEvent } from '../../replica/replica.js';

/** The not yet delivered outputs of a promotion, by channel, each handed out once. */
export class PendingReplay {
  private readonly byChannel = new Map<string, Uint8Array[]>();
  private remainingCount = 0;

  /**
   * @param events `Promotion.replay`, in the order to deliver (the order the dead primary tapped them). Throws
   *   KEMARI_INVALID_ARGUMENT for an event without a channel name or a Uint8Array payload.
   */
  constructor(events: readonly ReplayEvent[]) {
    if (!Array.isArray(events)) throw new KemariError('KEMARI_INVALID_ARGUMENT', 'replay must be an array of ReplayEvent');
    const seen = new Set<string>();
    for (const event of events) {
      if (typeof event?.channel !== 'string' || event.channel.length === 0 || !(event.payload instanceof Uint8Array)) {
        throw new KemariError('KEMARI_INVALID_ARGUMENT', 'a replay event needs a channel name and a Uint8Array payload', {
          details: { txn: event?.txn, id: event?.id, channel: event?.channel },
        });
      }
      const key = `${event.txn}/${event.id}/${event.channel}`;
      if (seen.has(key)) continue;
      seen.add(key);
      let list = this.byChannel.get(event.channel);
      if (list === undefined) {
        list = [];
        this.byChannel.set(event.channel, list);
      }
      list.push(event.payload);
      this.remainingCount += 1;
    }
  }

  /** Removes and returns the payloads of `channel`, in order; later calls for the same channel return none. */
  take(channel: string): Uint8Array[] {
    const list = this.byChannel.get(channel) ?? [];
    this.byChannel.delete(channel);
    this.remainingCount -= list.length;
    return list;
  }

  /** Events not taken yet (a channel without a tap still has its events here: a sign of a missing tap). */
  get remaining(): number {
    return this.remainingCount;
  }

  /** Channels with events not taken yet. */
  channels(): string[] {
    return [...this.byChannel.keys()];
  }
}
