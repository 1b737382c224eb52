// Deterministic simulation of sagas and TCC on the code that ships (./mesh.ts, ./saga-mesh.ts):
// the real SagaDriver, plane egress/ingress, TccParticipant hooks and FileLog on a
// simulated network, clock and disk, with crashes at any await, all from one seed. The seeds in
// REGRESSION_SEEDS (each once a failure of the shipped code, named in its fix) always run. A run
// prints its counts and why the steps it left stuck for good are stuck (allowed, reported).
//
//   npx vitest run test/simulation/saga-mesh.sim.test.ts                          10,000 seeds (about 16 s)
//   SIM_SEEDS=200000 npx vitest run test/simulation/saga-mesh.sim.test.ts         the long run (about 6 min)
//   SIM_SEED=4242 npx vitest run test/simulation/saga-mesh.sim.test.ts            replay one seed with its trace
import { describe, expect, it } from 'vitest'
import { envInt, expectNoFailures, expectReplayClean, failure } from './seeds.js'
import { emptySagaStats, simulateSaga, type SagaReport, type SagaStats } from './saga-mesh.js'

const DEFAULT_SEEDS = 10_000
/** Seeds that once failed because of the shipped code (see the commit that fixed each). */
const REGRESSION_SEEDS: readonly number[] = [25, 1771, 43538, 81139]

const replay = envInt('SIM_SEED')
const replayCommand = (seed: number): string => `SIM_SEED=${seed} npx vitest run test/simulation/saga-mesh.sim.test.ts`

describe('sagas and TCC on the shipped drivers (mesh simulation)', () => {
  it.runIf(replay !== undefined)('replays one seed with its trace', async () => {
    const seed = replay as number
    const lines: string[] = []
    const r = await simulateSaga(seed, (l) => lines.push(l))
    const head = `seed ${seed}: ${r.mode} on ${r.variant}, ${r.outcome} (app told ${r.appOutcome ?? 'nothing'}), ${r.quiesced} at t=${r.endTime}, ${r.events} events${r.stuck.length > 0 ? `; stuck for good: ${r.stuck.join('; ')}` : ''}\n`
    expectReplayClean(seed, head, lines, [...r.violations])
  })

  it.runIf(replay === undefined)('runs the same for the same seed', async () => {
    for (const seed of [3, 77, 2024]) {
      const runs: string[][] = [[], []]
      for (const lines of runs) await simulateSaga(seed, (l) => lines.push(l))
      expect(runs[1]).toEqual(runs[0])
      expect(runs[0]?.length).toBeGreaterThan(5)
    }
  })

  it.runIf(replay === undefined && REGRESSION_SEEDS.length > 0)('keeps the seeds that once failed clean', async () => {
    const failures: string[] = []
    for (const seed of REGRESSION_SEEDS) {
      const r = await simulateSaga(seed)
      if (r.violations.length > 0) failures.push(failure(seed, replayCommand(seed), r.violations))
    }
    expectNoFailures(failures, 'regression seeds')
  })

  it.runIf(replay === undefined)(
    'undoes, confirms or cancels every step as the outcome says, under faults, for every seed',
    async () => {
      const seeds = envInt('SIM_SEEDS') ?? DEFAULT_SEEDS
      const failures: string[] = []
      const totals: SagaStats = emptySagaStats()
      const outcomes = { saga: { committed: 0, aborted: 0 }, tcc: { committed: 0, aborted: 0 } }
      const variants: Record<string, number> = {}
      const stuckWhy = new Map<string, number>()
      let told = 0
      let events = 0
      const started = performance.now()
      for (let seed = 1; seed <= seeds; seed++) {
        const r: SagaReport = await simulateSaga(seed)
        if (r.violations.length > 0) failures.push(failure(seed, replayCommand(seed), r.violations))
        for (const k of Object.keys(totals) as (keyof SagaStats)[]) totals[k] += r.stats[k]
        outcomes[r.mode][r.outcome]++
        variants[r.variant] = (variants[r.variant] ?? 0) + 1
        if (r.appOutcome !== undefined) told++
        for (const s of r.stuck) {
          const why = s
            .slice(s.indexOf(': ') + 2)
            .replace(/\/(things|holds)\/[^/ ]+/g, '/$1/<id>')
            .replace(/svc\d+/g, 'svc<n>')
            .slice(0, 90)
          stuckWhy.set(why, (stuckWhy.get(why) ?? 0) + 1)
        }
        events += r.events
      }
      const ms = Math.round(performance.now() - started)
      process.stdout.write(
        `saga/TCC mesh: ${seeds} seeds, ${events} events in ${ms} ms; outcomes ${JSON.stringify(outcomes)}, app told ${told}; routes ${JSON.stringify(variants)}; ${JSON.stringify(totals)}\n` +
          `  stuck for good (allowed, reported): ${JSON.stringify([...stuckWhy.entries()].sort((a, b) => b[1] - a[1]))}\n`,
      )
      expectNoFailures(failures, 'seeds')
      if (seeds >= DEFAULT_SEEDS) {
        // The schedules must take the hard paths, or the run proves little.
        for (const mode of ['saga', 'tcc'] as const) {
          expect(outcomes[mode].committed, `${mode} commits`).toBeGreaterThan(seeds / 20)
          expect(outcomes[mode].aborted, `${mode} aborts`).toBeGreaterThan(seeds / 20)
        }
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
          'notActive',
          'compensations',
          'confirms',
          'cancels',
          'emptyUndos',
          'hangingRefused',
          'duplicateDeliveries',
          'refusals',
          'recoveries',
          'stuck',
          'operatorRetries',
        ] as const) {
          expect(totals[k], k).toBeGreaterThan(0)
        }
      }
    },
    1_800_000,
  )
})
