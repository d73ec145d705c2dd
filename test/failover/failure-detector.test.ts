import { describe, expect, it } from 'vitest';
import { FailureDetector } from '../../src/failover/failure-detector.js';

describe('FailureDetector', () => {
  it('suspects a peer only after missedMax intervals of silence, and any word resets it', () => {
    const d = new FailureDetector({ intervalMs: 100, missedMax: 3, nowMs: 0 });
    expect(d.verdict(299)).toBe('alive');
    expect(d.verdict(300)).toBe('dead');
    d.heardOnLink(250);
    expect(d.verdict(549)).toBe('alive');
    expect(d.verdict(550)).toBe('dead');
  });

  it('tells a broken link from a dead host when a second path exists', () => {
    const d = new FailureDetector({ intervalMs: 100, missedMax: 2, secondPath: true, nowMs: 0 });
    d.heardOnSecondPath(150);
    expect(d.verdict(200)).toBe('link-down'); // the link is quiet, the host answers elsewhere
    expect(d.verdict(349)).toBe('link-down');
    expect(d.verdict(350)).toBe('dead');
    d.heardOnLink(360);
    expect(d.verdict(361)).toBe('alive');
  });

  it('says when heartbeats are due and when to look again', () => {
    const d = new FailureDetector({ intervalMs: 50, missedMax: 4, nowMs: 1000 });
    expect(d.heartbeatDue(1000)).toBe(true);
    d.sent(1000);
    expect(d.heartbeatDue(1049)).toBe(false);
    expect(d.heartbeatDue(1050)).toBe(true);
    expect(d.nextCheckMs(1010)).toBe(1050);
    d.sent(1150);
    expect(d.nextCheckMs(1160)).toBe(1200); // the next beat comes before the link deadline (1000 + 200)
    d.sent(1190);
    expect(d.nextCheckMs(1195)).toBe(1200); // link deadline
  });

  it('ignores time going backwards', () => {
    const d = new FailureDetector({ intervalMs: 10, missedMax: 1, nowMs: 100 });
    d.heardOnLink(50);
    expect(d.verdict(110)).toBe('dead');
  });

  it('refuses nonsense parameters', () => {
    expect(() => new FailureDetector({ intervalMs: 0, missedMax: 3, nowMs: 0 })).toThrow(expect.objectContaining({ code: 'KEMARI_INVALID_ARGUMENT' }));
    expect(() => new FailureDetector({ intervalMs: 10, missedMax: 0, nowMs: 0 })).toThrow(expect.objectContaining({ code: 'KEMARI_INVALID_ARGUMENT' }));
  });
});

describe('FailureDetector and its own stalls', () => {
  it('a late timer tick (this side was stalled) gives the peer a full timeout from now', () => {
    const d = new FailureDetector({ intervalMs: 100, missedMax: 3, nowMs: 0 });
    d.ticked(100);
    d.ticked(200);
    d.ticked(1200); // stalled for a second: the peer's bytes may be unread in the socket
    expect(d.verdict(1200)).toBe('alive');
    expect(d.verdict(1499)).toBe('alive');
    expect(d.verdict(1500)).toBe('dead');
  });

  it('ticks on time change nothing', () => {
    const d = new FailureDetector({ intervalMs: 100, missedMax: 3, nowMs: 0 });
    for (let t = 100; t <= 300; t += 100) d.ticked(t);
    expect(d.verdict(300)).toBe('dead');
  });
});
