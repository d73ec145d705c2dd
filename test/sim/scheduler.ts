/**
 * Virtual time for the deterministic simulation: one queue of timed callbacks, run one at a time in (time, order
 * of scheduling) order, each followed by every promise continuation it caused. Nothing else runs: no real timers,
 * no real I/O, so a seed replays exactly.
 *
 * Each simulated node gets its own {@link Timers} view; crashing a node cancels its timers and refuses new ones, so
 * a crashed driver can never act again.
 */
import type { TimerHandle, Timers } from '../../src/time/timers.js';

interface Entry {
  atMs: number;
  order: number;
  callback: () => void;
  /** Repeat period, for intervals. */
  everyMs: number | undefined;
  cancelled: boolean;
  owner: NodeClock | undefined;
}

/** A binary min-heap of entries by (atMs, order). */
class Queue {
  private readonly heap: Entry[] = [];

  get size(): number {
    return this.heap.length;
  }

  push(entry: Entry): void {
    const heap = this.heap;
    heap.push(entry);
    let i = heap.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!before(heap[i]!, heap[parent]!)) break;
      [heap[i], heap[parent]] = [heap[parent]!, heap[i]!];
      i = parent;
    }
  }

  pop(): Entry | undefined {
    const heap = this.heap;
    const top = heap[0];
    const last = heap.pop();
    if (top === undefined || last === undefined || heap.length === 0) return top;
    heap[0] = last;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < heap.length && before(heap[l]!, heap[m]!)) m = l;
      if (r < heap.length && before(heap[r]!, heap[m]!)) m = r;
      if (m === i) break;
      [heap[i], heap[m]] = [heap[m]!, heap[i]!];
      i = m;
    }
    return top;
  }
}

function before(a: Entry, b: Entry): boolean {
  return a.atMs < b.atMs || (a.atMs === b.atMs && a.order < b.order);
}

/** Resolves after every promise continuation queued so far (and those they queue) has run. */
export function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

export class Scheduler {
  private readonly queue = new Queue();
  private order = 0;
  private nowMs = 0;
  /** Callbacks run so far. */
  steps = 0;

  get now(): number {
    return this.nowMs;
  }

  /** Schedules `callback` at `delayMs` from now (not owned by any node: network deliveries, the fault plan). */
  at(delayMs: number, callback: () => void, owner?: NodeClock, everyMs?: number): Entry {
    const entry: Entry = { atMs: this.nowMs + Math.max(0, delayMs), order: this.order++, callback, everyMs, cancelled: false, owner };
    this.queue.push(entry);
    return entry;
  }

  /**
   * Runs callbacks until virtual time passes `untilMs` or nothing is left; after each one, awaits every promise
   * continuation it caused, then calls `afterStep` (the invariant checkers).
   */
  async run(untilMs: number, afterStep: () => void): Promise<void> {
    for (;;) {
      const entry = this.queue.pop();
      if (entry === undefined) return;
      if (entry.cancelled) continue;
      if (entry.atMs > untilMs) {
        this.queue.push(entry);
        this.nowMs = untilMs;
        return;
      }
      this.nowMs = entry.atMs;
      if (entry.owner?.crashed === true) continue;
      if (entry.owner !== undefined && entry.owner.frozenUntilMs > this.nowMs) {
        // A hung node (SIGSTOP): its timers fire only once it runs again, in their order.
        entry.atMs = entry.owner.frozenUntilMs;
        entry.order = this.order++;
        this.queue.push(entry);
        continue;
      }
      if (entry.everyMs !== undefined) {
        entry.atMs += entry.everyMs;
        entry.order = this.order++;
        this.queue.push(entry);
      }
      this.steps += 1;
      entry.callback();
      await settle();
      afterStep();
    }
  }

  /** A node's clock and timers. */
  clockFor(name: string): NodeClock {
    return new NodeClock(this, name);
  }
}

/** One node's view of virtual time; {@link crash} silences it for good. */
export class NodeClock implements Timers {
  crashed = false;
  /** The node is hung until then: none of its timers fires before. */
  frozenUntilMs = 0;

  constructor(
    private readonly scheduler: Scheduler,
    readonly name: string,
  ) {}

  now(): number {
    return this.scheduler.now;
  }

  setTimeout(callback: () => void, delayMs: number): TimerHandle {
    return this.scheduler.at(delayMs, callback, this);
  }

  setInterval(callback: () => void, intervalMs: number): TimerHandle {
    const every = Math.max(1, intervalMs);
    return this.scheduler.at(every, callback, this, every);
  }

  clear(handle: TimerHandle | undefined): void {
    if (handle !== undefined) (handle as Entry).cancelled = true;
  }

  /** The node stops: none of its timers fires again. */
  crash(): void {
    this.crashed = true;
  }
}
