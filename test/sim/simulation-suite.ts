/** One CI half of the simulation campaign: the same run and the same checks for each range of seeds. */
import { describe, expect, it } from 'vitest';
import { runCampaign, seedRange } from './campaign.js';

/**
 * Runs seeds `from` .. `from + count - 1` (and `extra`) and checks that every invariant held (a violation throws
 * with its seed) and that the campaign exercised what it claims to.
 */
export function describeCampaign(from: number, count: number, extra: readonly number[] = []): void {
  describe(`deterministic simulation, seeds ${from}..${from + count - 1}`, () => {
    it('keeps every invariant under partitions, loss, crashes, hangs, fatal faults and slow disks', async () => {
      const totals = await runCampaign([...seedRange(from, count), ...extra]);
      console.log(`simulation: ${totals.seeds} seeds, ${totals.steps} steps, ${totals.commits} commits, ${totals.failovers} failovers, ${totals.secondaryRestarts} secondary restarts, ${totals.resumedIncrementally} incremental resumes, ${totals.resyncedFully} full resyncs, ${totals.standDowns} stand-downs`);
      // The campaign must exercise what it claims to: every fault, failovers, restarts, both kinds of resume.
      for (const fault of ['partition', 'witness-partition', 'loss', 'secondary-crash', 'primary-crash', 'fatal-fault', 'primary-hang', 'slow-disk', 'slow-link', 'secondary-power-loss']) {
        expect(totals.faults[fault], fault).toBeGreaterThan(0);
      }
      expect(totals.failovers).toBeGreaterThan(20);
      expect(totals.secondaryRestarts).toBeGreaterThan(20);
      expect(totals.resumedIncrementally).toBeGreaterThan(20);
      expect(totals.resyncedFully).toBeGreaterThan(0);
      expect(totals.releases).toBeGreaterThan(totals.seeds);
      expect(totals.withArbiter).toBeGreaterThan(0);
      expect(totals.withArbiter).toBeLessThan(totals.seeds);
      expect(totals.withJournal).toBeGreaterThan(0);
      expect(totals.withDelta).toBeGreaterThan(0);
      expect(totals.deltaPages).toBeGreaterThan(totals.seeds);
      expect(totals.resumedInPlace).toBeGreaterThan(5);
      expect(totals.standDowns).toBeGreaterThan(10);
    }, 300_000);
  });
}
