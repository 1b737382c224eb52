// Deterministic simulation of sagas and TCC (STYLE.md "Pure core, thin drivers"): the real step
// machine (src/tx/saga/machine.ts) in a simulated coordinator pod with its log, and step
// services behind a barrier, with message loss, duplication, reordering and delays, services
// answering 5xx for a while, crashes and restarts of the coordinator (process kills and power
// losses, recovery from what the log kept) and of services, deadlines, late steps, stuck steps
// and operator retries, all from one seed (steps-world.ts).
//
// Checked (steps-invariants.ts, and steps-world.ts at the moment an effect happens), after a
// healing phase with faults off: an aborted saga compensated every durable step that took
// effect exactly once in effect, in reverse order of the steps; a committed saga compensated
// none (but its late steps); a committed TCC confirmed every try and cancelled none (late ones
// are cancelled); an aborted one cancelled every try, failed ones included, and confirmed none;
// no confirm before the COMMIT decision was durable; no effect twice; the app was told the
// outcome the log decided; no durable step is lost across crashes; nothing left stuck, held or
// without END.
//
// Half the seeds record each step before its call (an intent, then its resolution or, for a
// refused saga call, a void; steps-world.ts): there no call takes effect without a durable step,
// an intent that never got its answer is undone whatever the outcome and never confirmed, and a
// voided one never took effect. The other half keep the order of a call whose undo only its
// answer names (a saga's txmesh-compensate header): a call that got no response there, or whose
// coordinator crashed before its step was durable, is never undone (`unrecordedEffects`,
// counted, as the README says).
//
// A step whose call answered while the transaction was active but whose record was still being
// written when the transaction finished used to be dropped (log-end retired the transaction, so
// feed() found nothing, and the END queued behind the record ended it at replay): the driver now
// holds the end until such records are fed, the world does the same, and the run fails on it.
//
// Reported, not failed on: a saga step whose record was still being written when the abort came
// is compensated after the earlier steps whose compensation had started (the machine undoes it
// like a late step; counted as "undone out of order"). Strict reverse order needs the driver to
// hold the abort's first compensation until the step records under way are written.
//
//   npx vitest run test/simulation/steps.sim.test.ts                       10,000 seeds (~1 s)
//   SIM_SEEDS=100000 npx vitest run test/simulation/steps.sim.test.ts       more seeds
//   SIM_SEED=4242 npx vitest run test/simulation/steps.sim.test.ts          replay one seed with its trace
import { describe, expect, it } from 'vitest'
import { checkStepInvariants, inFlightAtAbort } from './steps-invariants.js'
import { envInt, expectNoFailures, expectReplayClean, failure } from './seeds.js'
import { simulateSteps, type StepStats } from './steps-world.js'

const DEFAULT_SEEDS = 10_000

const replay = envInt('SIM_SEED')

describe('saga/TCC simulation', () => {
  it.runIf(replay !== undefined)('replays one seed with its trace', () => {
    const seed = replay as number
    const lines: string[] = []
    const report = simulateSteps(seed, (l) => lines.push(l))
    const verdict = checkStepInvariants(report)
    expectReplayClean(seed, `seed ${seed} ${report.mode} faults ${JSON.stringify(report.faults)}\n`, lines, [
      ...verdict.violations,
      ...verdict.known,
    ])
  })

  it.runIf(replay === undefined)(
    'undoes, confirms or cancels every durable step as the outcome says, under faults, for every seed',
    () => {
      const seeds = envInt('SIM_SEEDS') ?? DEFAULT_SEEDS
      const failures: string[] = []
      let totals: StepStats | undefined
      const outcomes = { saga: { committed: 0, aborted: 0 }, tcc: { committed: 0, aborted: 0 } }
      let told = 0
      let inFlight = 0
      let events = 0
      const started = performance.now()
      for (let seed = 1; seed <= seeds; seed++) {
        const report = simulateSteps(seed)
        const verdict = checkStepInvariants(report)
        const problems = [...verdict.violations, ...verdict.known]
        if (problems.length > 0)
          failures.push(failure(seed, `SIM_SEED=${seed} npx vitest run test/simulation/steps.sim.test.ts`, problems))
        if (totals === undefined) totals = { ...report.stats }
        else for (const k of Object.keys(totals) as (keyof StepStats)[]) totals[k] += report.stats[k]
        outcomes[report.mode][report.commitDurable ? 'committed' : 'aborted']++
        if (report.appOutcome !== undefined) told++
        inFlight += inFlightAtAbort(report)
        events += report.events
      }
      const ms = Math.round(performance.now() - started)
      process.stdout.write(
        `saga/TCC simulation: ${seeds} seeds, ${events} events in ${ms} ms; outcomes ${JSON.stringify(outcomes)}, app told ${told}; saga steps undone out of order because their record was in flight at the abort: ${inFlight}; ${JSON.stringify(totals)}\n`,
      )
      expectNoFailures(failures, 'seeds')
      if (seeds >= DEFAULT_SEEDS && totals !== undefined) {
        // The schedules must reach the hard paths, or the run proves little.
        for (const mode of ['saga', 'tcc'] as const) {
          expect(outcomes[mode].committed, `${mode} commits`).toBeGreaterThan(seeds / 20)
          expect(outcomes[mode].aborted, `${mode} aborts`).toBeGreaterThan(seeds / 20)
        }
        expect(totals.recoveries).toBeGreaterThan(seeds / 100)
        expect(totals.recoveredCommitted).toBeGreaterThan(0)
        expect(totals.powerLosses).toBeGreaterThan(0)
        expect(totals.lostLazyRecords).toBeGreaterThan(0)
        expect(totals.serviceCrashes).toBeGreaterThan(0)
        expect(totals.lateSteps).toBeGreaterThan(seeds / 100)
        expect(totals.stuck).toBeGreaterThan(seeds / 100)
        expect(totals.operatorRetries).toBeGreaterThan(seeds / 100)
        expect(totals.duplicateDeliveries).toBeGreaterThan(0)
        expect(totals.emptyUndos).toBeGreaterThan(0)
        expect(totals.hangingRefused).toBeGreaterThan(0)
        expect(totals.intents).toBeGreaterThan(seeds / 2)
        expect(totals.intentsRefused).toBeGreaterThan(seeds / 100)
        expect(totals.voided).toBeGreaterThan(seeds / 100)
      }
    },
  )
})
