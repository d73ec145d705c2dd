import { describe, expect, it } from 'vitest';
import { BackgroundPrefault, touchPages } from '../../src/replica/prefault.js';
import type { TimerHandle, Timers } from '../../src/time/timers.js';

/** Timers whose callbacks run only when the test says (one turn at a time). */
class ManualTimers implements Timers {
  readonly due: Array<{ callback: () => void; cancelled: boolean }> = [];
  now(): number {
    return 0;
  }
  setTimeout(callback: () => void): TimerHandle {
    const entry = { callback, cancelled: false };
    this.due.push(entry);
    return entry;
  }
  setInterval(): TimerHandle {
    throw new Error('not used');
  }
  clear(handle: TimerHandle | undefined): void {
    if (handle !== undefined) (handle as { cancelled: boolean }).cancelled = true;
  }
  /** Runs the next pending callback; false when none is left. */
  turn(): boolean {
    for (;;) {
      const entry = this.due.shift();
      if (entry === undefined) return false;
      if (entry.cancelled) continue;
      entry.callback();
      return true;
    }
  }
}

describe('prefault', () => {
  it('touchPages writes every byte back with its own value', () => {
    const buffer = new Uint8Array(5 * 4096 + 7);
    for (let i = 0; i < buffer.length; i++) buffer[i] = (i * 7 + 1) & 0xff;
    const before = Uint8Array.from(buffer);
    touchPages(buffer);
    touchPages(buffer, 4096, 3 * 4096);
    expect(Buffer.compare(buffer, before)).toBe(0);
  });

  it('the background pass goes slice by slice, one per timer turn, keeping what landed before it got there', () => {
    const timers = new ManualTimers();
    const a = new Uint8Array(10 * 4096);
    const b = new Uint8Array(3 * 4096);
    const pass = new BackgroundPrefault([a, b], timers, 4 * 4096).start();
    expect(pass.totalBytes).toBe(13 * 4096);
    expect(pass.doneBytes).toBe(0); // nothing before the first turn: HELLO is answered first
    // Frames land in memory the pass has not reached yet.
    a.fill(0xab, 9 * 4096, 10 * 4096);
    b[5000] = 0x5a;
    const progress: number[] = [];
    while (timers.turn()) progress.push(pass.doneBytes);
    expect(progress).toEqual([4, 8, 12, 13].map((pages) => pages * 4096));
    expect(pass.finished).toBe(true);
    expect(a.subarray(9 * 4096).every((x) => x === 0xab)).toBe(true);
    expect(a.subarray(0, 9 * 4096).every((x) => x === 0)).toBe(true);
    expect(b[5000]).toBe(0x5a);
  });

  it('ends a slice at its time limit, a MiB step past it at most, where page faults are slow', () => {
    // A clock that moves 6 ms each time it is read: the slice's deadline is 10 ms after its start, so it stops after
    // its second 1 MiB step, far below its 32 MiB byte limit.
    class SlowClock extends ManualTimers {
      private t = 0;
      override now(): number {
        this.t += 6;
        return this.t;
      }
    }
    const timers = new SlowClock();
    const pass = new BackgroundPrefault([new Uint8Array(5 << 20)], timers, 32 << 20, 10).start();
    const progress: number[] = [];
    while (timers.turn()) progress.push(pass.doneBytes / (1 << 20));
    expect(progress).toEqual([2, 4, 5]);
    expect(pass.finished).toBe(true);
  });

  it('stops at once when told (a promotion or close does not wait for it)', () => {
    const timers = new ManualTimers();
    const pass = new BackgroundPrefault([new Uint8Array(8 * 4096)], timers, 4096).start();
    expect(timers.turn()).toBe(true);
    pass.stop();
    expect(pass.finished).toBe(true);
    expect(timers.turn()).toBe(false); // the scheduled slice was cancelled
    expect(pass.doneBytes).toBe(4096);
  });
});
