/**
 * The clock and timers a driver runs on, as an interface.
 *
 * Why: the drivers (primary, secondary, lease keeper) are the only places where time enters kemari. Behind this
 * seam the deterministic simulation (test/sim) runs them on a virtual clock, so a seed replays exactly the same
 * interleaving of heartbeats, checkpoints, lease renewals and faults. {@link realTimers} is the default: the
 * monotonic `performance.now()` and Node's timers, unref'd so a forgotten driver never keeps a process alive.
 */

/** An opaque handle returned by {@link Timers.setTimeout} and {@link Timers.setInterval}. */
export type TimerHandle = { readonly __timer: unique symbol } | object;

/** A clock and one-shot and repeating timers. */
export interface Timers {
  /** Monotonic milliseconds. */
  now(): number;
  /** Calls `callback` once after `delayMs`. */
  setTimeout(callback: () => void, delayMs: number): TimerHandle;
  /** Calls `callback` every `intervalMs` until cleared. */
  setInterval(callback: () => void, intervalMs: number): TimerHandle;
  /** Cancels a timer of either kind; undefined and already-fired handles are ignored. */
  clear(handle: TimerHandle | undefined): void;
}

/** Node's timers on the monotonic clock; timers are unref'd (they never keep the process alive). */
export const realTimers: Timers = {
  now: () => performance.now(),
  setTimeout(callback, delayMs) {
    const timer = setTimeout(callback, Math.max(0, delayMs));
    timer.unref();
    return timer;
  },
  setInterval(callback, intervalMs) {
    const timer = setInterval(callback, Math.max(1, intervalMs));
    timer.unref();
    return timer;
  },
  clear(handle) {
    if (handle !== undefined) clearTimeout(handle as NodeJS.Timeout);
  },
};
