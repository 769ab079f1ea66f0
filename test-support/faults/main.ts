// `npm run test:faults`: the fault suite's long form (test-support/faults/scenario.ts), about
// ten minutes on two cores. Prints the table README shows and exits 1 if any count that must
// be zero is not. `-- --quick` runs the size `npm test` runs.
import { pathToFileURL } from 'node:url';
import { findingsOf, formatReport, runScenario, type ScenarioOptions } from './scenario.ts';

/** The long form: the tester's mix of faults, in about ten minutes. */
export const LONG: Omit<ScenarioOptions, 'log'> = {
  sessions: 12,
  turnsPerSession: 60,
  workers: 2,
  faultGapMs: [2_000, 6_000],
  weights: { 'worker-kill': 6, 'redis-restart-with-data': 1, 'redis-restart-without-data': 1, 's3-freeze': 2, 's3-refuse': 2, 'edge-kill': 2 },
  maxFaults: 120,
  // The first freeze outlasts the turn deadline (TURN_TIMEOUT_MS below): turns then time out
  // while their commits wait on the store.
  s3FreezeMs: [2_500, 25_000],
  crashPoints: 'after-lease=0.01,mid-decode=0.002,before-commit=0.01,after-commit=0.03,after-done=0.01',
  deleteRaces: 10,
  fuzzRequests: 2_400,
  maxTokens: 24,
  env: { TURN_TIMEOUT_MS: '20000' },
};

/** The short form (`npm test`): every kind of fault at least once, in under a minute. */
export const SHORT: Omit<ScenarioOptions, 'log'> = {
  sessions: 4,
  turnsPerSession: 6,
  workers: 2,
  faultGapMs: [500, 1_000],
  weights: { 'worker-kill': 1, 'redis-restart-with-data': 1, 'redis-restart-without-data': 1, 's3-freeze': 1, 's3-refuse': 1, 'edge-kill': 1 },
  maxFaults: 9,
  s3FreezeMs: [1_500, 6_500],
  crashPoints: 'after-lease=0.02,before-commit=0.03,after-commit=0.08,after-done=0.02',
  deleteRaces: 2,
  fuzzRequests: 250,
  maxTokens: 16,
  env: { TURN_TIMEOUT_MS: '6000' },
};

async function main(): Promise<void> {
  const quick = process.argv.includes('--quick');
  const report = await runScenario({ ...(quick ? SHORT : LONG), log: (line) => process.stderr.write(`${line}\n`) });
  process.stdout.write(`${formatReport(report)}\n`);
  process.exit(findingsOf(report) === 0 ? 0 : 1);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) void main();
