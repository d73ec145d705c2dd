/** Runs a range of seeds for the CI tests and adds up what they did. */
import { simulate } from './world.js';

export interface CampaignTotals {
  seeds: number;
  steps: number;
  commits: number;
  releases: number;
  failovers: number;
  secondaryRestarts: number;
  resumedIncrementally: number;
  resyncedFully: number;
  faults: Record<string, number>;
  withArbiter: number;
  withJournal: number;
  withDelta: number;
  deltaPages: number;
  /** Incremental resumes of runs with in-place captures (their lost epochs taken from the guest again). */
  resumedInPlace: number;
  /** Confirmed stand-downs (guests that powered themselves off). */
  standDowns: number;
}

/** Seeds that once broke an invariant: replayed in every CI run. */
export const REGRESSION_SEEDS: readonly number[] = [
  910, // a connection accepted before a promotion said HELLO after it: the secondary promoted twice
  1112, // a new session began while the last transaction of the previous one was still being journaled
  1783, // a restart recovered a record only in the page cache, reported it committed, then lost it to power loss
];

/** Runs `seeds` in order; rejects with the first invariant violation (its message names the seed). */
export async function runCampaign(seeds: readonly number[]): Promise<CampaignTotals> {
  const totals: CampaignTotals = {
    seeds: 0,
    steps: 0,
    commits: 0,
    releases: 0,
    failovers: 0,
    secondaryRestarts: 0,
    resumedIncrementally: 0,
    resyncedFully: 0,
    faults: {},
    withArbiter: 0,
    withJournal: 0,
    withDelta: 0,
    deltaPages: 0,
    resumedInPlace: 0,
    standDowns: 0,
  };
  for (const seed of seeds) {
    const report = await simulate(seed);
    totals.seeds += 1;
    totals.steps += report.steps;
    totals.commits += report.commits;
    totals.releases += report.releases;
    totals.failovers += report.failovers;
    totals.secondaryRestarts += report.secondaryRestarts;
    totals.resumedIncrementally += report.resumedIncrementally;
    totals.resyncedFully += report.resyncedFully;
    if (report.config.arbiter) totals.withArbiter += 1;
    if (report.config.journal) totals.withJournal += 1;
    if (report.config.delta) totals.withDelta += 1;
    totals.deltaPages += report.deltaPages;
    if (report.config.inPlace) totals.resumedInPlace += report.resumedIncrementally;
    totals.standDowns += report.standDowns;
    for (const [fault, n] of Object.entries(report.faults)) totals.faults[fault] = (totals.faults[fault] ?? 0) + n;
  }
  return totals;
}

/** Seeds `from` .. `from + count - 1`. */
export function seedRange(from: number, count: number): number[] {
  return Array.from({ length: count }, (_, i) => from + i);
}
