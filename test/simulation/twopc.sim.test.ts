// Deterministic simulation of presumed-abort 2PC (STYLE.md "Pure core, thin drivers"): the real
// coordinator and participant machines, wired through a simulated network, logs and apps with
// message loss, duplication, reordering, delays, crashes and restarts, all from one seed.
//
//   npx vitest run test/simulation                       50,000 seeds (about 3 s)
//   SIM_SEEDS=200000 npx vitest run test/simulation      more seeds
//   SIM_SEED=4242 npx vitest run test/simulation         replay one seed and print its trace
import { describe, expect, it } from 'vitest'
import { checkInvariants } from './invariants.js'
import { envInt, expectNoFailures, expectReplayClean, failure } from './seeds.js'
import { emptyStats, simulate } from './world.js'

const DEFAULT_SEEDS = 50_000

const replay = envInt('SIM_SEED')

describe('2PC simulation', () => {
  it.runIf(replay !== undefined)('replays one seed with its trace', () => {
    const seed = replay as number
    const lines: string[] = []
    const report = simulate(seed, (l) => lines.push(l))
    expectReplayClean(seed, `seed ${seed} faults ${JSON.stringify(report.faults)}\n`, lines, checkInvariants(report))
  })

  it.runIf(replay === undefined)('keeps atomicity, agreement and progress under faults for every seed', () => {
    const seeds = envInt('SIM_SEEDS') ?? DEFAULT_SEEDS
    const failures: string[] = []
    const totals = emptyStats()
    const outcomes = { committed: 0, aborted: 0, unknown: 0 }
    let events = 0
    const started = performance.now()
    for (let seed = 1; seed <= seeds; seed++) {
      const report = simulate(seed)
      const problems = checkInvariants(report)
      if (problems.length > 0) failures.push(failure(seed, `SIM_SEED=${seed} npx vitest run test/simulation`, problems))
      for (const k of Object.keys(totals) as (keyof typeof totals)[]) totals[k] += report.stats[k]
      outcomes[report.appOutcome ?? 'unknown']++
      events += report.events
    }
    const ms = Math.round(performance.now() - started)
    process.stdout.write(
      `2PC simulation: ${seeds} seeds, ${events} events in ${ms} ms; app outcomes ${JSON.stringify(outcomes)}; ${JSON.stringify(totals)}\n`,
    )
    expectNoFailures(failures, 'seeds')
    // The schedules must actually exercise the hard paths, or the run proves little.
    if (seeds >= DEFAULT_SEEDS) {
      expect(outcomes.committed).toBeGreaterThan(seeds / 10)
      expect(outcomes.aborted).toBeGreaterThan(seeds / 10)
      expect(totals.coordinatorRecoveries).toBeGreaterThan(0)
      expect(totals.participantRecoveries).toBeGreaterThan(0)
      expect(totals.orphansResolved).toBeGreaterThan(0)
      expect(totals.lateEnlistments).toBeGreaterThan(0)
      expect(totals.duplicated).toBeGreaterThan(0)
      // One participant takes one phase: both outcomes, restarts after PREPARED(onePhase), and
      // retries that reach a sidecar which no longer holds the branch.
      expect(totals.onePhaseCommits).toBeGreaterThan(seeds / 50)
      expect(totals.onePhaseAborts).toBeGreaterThan(seeds / 1000)
      expect(totals.onePhaseRecoveries).toBeGreaterThan(0)
      expect(totals.onePhaseUnknown).toBeGreaterThan(0)
      expect(totals.onePhaseCrashes).toBeGreaterThan(0)
    }
  })
})
