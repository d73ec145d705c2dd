/**
 * The serial checks of the real-QEMU failover tests, on text alone: a standby's first line is the tail of the line
 * the committed guest was printing (possibly empty: only its newline was left) or the next line whole, and the
 * lines after go on exactly.
 */
import { describe, expect, it } from 'vitest';
import { checkStandbySerial } from '../../examples/guest/failover-checks.js';

// 32 lines printed completely, line 33 ('tick 33') in progress; one line a tick.
const committed = { ticks: 33, diskWrites: 0, serialLines: 32 };

describe('checkStandbySerial', () => {
  it('accepts a tail of the line in progress, down to its bare newline, then the lines after it', () => {
    expect(checkStandbySerial('k 33\ntick 34\ntick 35\n', committed, 1)).toEqual([]);
    expect(checkStandbySerial('\ntick 34\ntick 35\n', committed, 1)).toEqual([]);
    // The line in progress was ended but not yet counted: the next line comes whole.
    expect(checkStandbySerial('tick 34\ntick 35\n', committed, 1)).toEqual([]);
  });

  it('refuses anything else: a line that is not such a tail, a line repeated or missed after it', () => {
    expect(checkStandbySerial('tick 3x\ntick 34\n', committed, 1)).not.toEqual([]);
    // An empty first line followed by the line in progress again: the standby started a line too early.
    expect(checkStandbySerial('\ntick 33\ntick 34\n', committed, 1)).not.toEqual([]);
    expect(checkStandbySerial('\ntick 35\n', committed, 1)).not.toEqual([]);
    expect(checkStandbySerial('tick 36\n', committed, 1)).not.toEqual([]);
    expect(checkStandbySerial('tick 3', committed, 1)).not.toEqual([]);
  });
});
