/**
 * `npm run sim -- --seed N [--trace]` replays one seed and prints its report (and, with --trace, what happened
 * when); `npm run sim -- --seeds 100000 [--from K]`
 * runs a campaign and stops at the first invariant violation, printing the seed that replays it.
 */
import { parseArgs } from 'node:util';
import { simulate } from './world.js';
import type { SimReport } from './world.js';

const { values } = parseArgs({
  options: {
    seed: { type: 'string' },
    seeds: { type: 'string', default: '100' },
    from: { type: 'string', default: '1' },
    'duration-ms': { type: 'string', default: '1500' },
    trace: { type: 'boolean', default: false },
  },
});
const durationMs = Number(values['duration-ms']);

let failed = false;
process.on('unhandledRejection', (error) => {
  failed = true;
  console.error('unhandled rejection:', error);
});

if (values.seed !== undefined) {
  const seed = Number(values.seed);
  try {
    const report = await simulate(seed, durationMs, values.trace);
    console.log(JSON.stringify(report, null, 2));
  } catch (error) {
    console.error(String(error));
    console.error(`replay: npm run sim -- --seed ${seed}`);
    process.exit(1);
  }
} else {
  const count = Number(values.seeds);
  const from = Number(values.from);
  const startedMs = performance.now();
  const totals = { steps: 0, commits: 0, releases: 0, failovers: 0, secondaryRestarts: 0, resumedIncrementally: 0, resyncedFully: 0, tornTails: 0, deltaPages: 0 };
  for (let seed = from; seed < from + count; seed++) {
    let report: SimReport;
    try {
      report = await simulate(seed, durationMs);
    } catch (error) {
      console.error(String(error));
      console.error(`replay: npm run sim -- --seed ${seed}`);
      process.exit(1);
    }
    if (failed) {
      console.error(`replay: npm run sim -- --seed ${seed}`);
      process.exit(1);
    }
    for (const key of Object.keys(totals) as Array<keyof typeof totals>) totals[key] += report[key];
    const done = seed - from + 1;
    if (done % 1000 === 0 || done === count) {
      const seconds = (performance.now() - startedMs) / 1000;
      console.log(`${done} seeds, ${totals.steps} steps, ${seconds.toFixed(1)} s: ${JSON.stringify(totals)}`);
    }
  }
  console.log(`all ${count} seeds (${from}..${from + count - 1}) kept every invariant`);
}
