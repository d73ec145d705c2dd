import { describe, expect, it } from 'vitest';
import { REGRESSION_SEEDS, runCampaign, seedRange } from './campaign.js';

// The deterministic simulation, half of the CI campaign (the other half runs in parallel in another file).
describe('deterministic simulation, seeds 251..500', () => {
  it('keeps every invariant under partitions, loss, crashes, hangs, fatal faults and slow disks', async () => {
    const totals = await runCampaign([...seedRange(251, 250)]);
    console.log(`simulation: ${totals.seeds} seeds, ${totals.steps} steps, ${totals.commits} commits, ${totals.failovers} failovers, ${totals.secondaryRestarts} secondary restarts, ${totals.resumedIncrementally} incremental resumes, ${totals.resyncedFully} full resyncs`);
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
  }, 300_000);
});
