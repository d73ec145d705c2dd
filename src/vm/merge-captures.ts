/**
 * Merges consecutive epoch captures into one, as if the epochs had been a single epoch.
 *
 * Why: a primary whose secondary restarted (and recovered its journal) resumes from the secondary's committed
 * epoch, not from a full sync. The epochs captured after that one never committed there, and the VM's dirty
 * tracking has already been reset for them, so their changes must go out again: merged with the next capture into
 * the first transaction of the new session. Applying the merge to the committed epoch gives exactly the state of
 * the newest capture.
 */
import { KemariError } from '../errors.js';
import type { EpochCapture } from './adapter.js';
import type { Page } from '../wire/bodies/pages.js';
import type { DeviceState } from '../wire/bodies/device.js';

/**
 * One capture holding the changes of `captures` (oldest first, all incremental): the newest copy of every page,
 * the newest state of every device, every disk write in order, and the newest state digest.
 */
export function mergeCaptures(captures: readonly EpochCapture[]): EpochCapture {
  const newest = captures.at(-1);
  if (newest === undefined) throw new KemariError('KEMARI_INVALID_ARGUMENT', 'mergeCaptures needs at least one capture');
  if (captures.some((c) => c.full)) throw new KemariError('KEMARI_INVALID_ARGUMENT', 'only incremental captures merge (a full capture replaces what came before)');
  if (captures.length === 1) return newest;
  const byIndex = new Map<number, Page>();
  for (const capture of captures) for (const page of capture.pages) byIndex.set(page.index, page);
  const pages = [...byIndex.values()].sort((a, b) => a.index - b.index);
  // By name, newest wins, in the order first seen (an adapter may report only the devices that changed).
  const devices = new Map<string, DeviceState>();
  for (const capture of captures) for (const device of capture.devices) devices.set(device.name, device);
  return {
    full: false,
    pages,
    devices: [...devices.values()],
    diskWrites: captures.flatMap((c) => c.diskWrites),
    stateDigest: newest.stateDigest,
  };
}
