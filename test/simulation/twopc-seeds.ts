// Runs a range of 2PC mesh seeds (./twopc-mesh.ts) and checks the totals show the hard paths
// were taken. The default seeds are split over test files so the runner spreads them over cores:
// twopc.sim.test.ts (and its replay of one seed) and twopc-b.sim.test.ts.
import { expect } from 'vitest'
import { emptyMeshStats } from './mesh.js'
import { envInt, expectNoFailures, failure } from './seeds.js'
import { simulateMesh } from './twopc-mesh.js'

/** Seeds of one default run of `npm test`, over both files. */
export const DEFAULT_SEEDS = 50_000

/** Seeds `first` .. `first + count - 1`; SIM_SEEDS (in the first file only) overrides the count. */
export async function runSeeds(first: number, count: number, file: string): Promise<void> {
  const failures: string[] = []
  const totals = emptyMeshStats()
  const outcomes = { committed: 0, aborted: 0, unknown: 0 }
  let events = 0
  const started = performance.now()
  for (let seed = first; seed < first + count; seed++) {
    const r = await simulateMesh(seed)
    if (r.violations.length > 0)
      failures.push(failure(seed, `SIM_SEED=${seed} npx vitest run test/simulation/twopc.sim.test.ts`, r.violations))
    for (const k of Object.keys(totals) as (keyof typeof totals)[]) totals[k] += r.stats[k]
    outcomes[r.appOutcome ?? 'unknown']++
    events += r.events
  }
  const ms = Math.round(performance.now() - started)
  process.stdout.write(
    `${file}: 2PC mesh seeds ${first}..${first + count - 1}, ${events} events in ${ms} ms; app outcomes ${JSON.stringify(outcomes)}; ${JSON.stringify(totals)}\n`,
  )
  expectNoFailures(failures, 'seeds')
  if (count >= 1_000) {
    // The schedules must take the hard paths, or the run proves little.
    expect(outcomes.committed).toBeGreaterThan(count / 10)
    expect(outcomes.aborted).toBeGreaterThan(count / 20)
    for (const k of [
      'lost',
      'duplicated',
      'refused',
      'timeouts',
      'sidecarCrashes',
      'appCrashes',
      'powerLosses',
      'wipes',
      'clockJumps',
    ] as const)
      expect(totals[k], k).toBeGreaterThan(0)
  }
}

export const seedsFromEnv = (): number | undefined => envInt('SIM_SEEDS')
