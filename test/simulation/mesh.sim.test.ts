// Deterministic simulation of 2PC across a mesh that runs the shipped drivers, plane and log
// (./mesh.ts, ./twopc-mesh.ts): the real CoordinatorDriver, ParticipantDriver and FileLog on
// simulated network, clock and disk, with crashes at any await, all from one seed.
//
//   npx vitest run test/simulation/mesh.sim.test.ts                       default seeds
//   SIM_SEEDS=1000000 npx vitest run test/simulation/mesh.sim.test.ts     the long (night) run
//   SIM_SEED=4242 npx vitest run test/simulation/mesh.sim.test.ts         replay one seed with its trace
import { describe, expect, it } from 'vitest'
import { envInt, expectNoFailures, expectReplayClean, failure } from './seeds.js'
import { emptyMeshStats } from './mesh.js'
import { simulateMesh } from './twopc-mesh.js'

const DEFAULT_SEEDS = envInt('SIM_MESH_DEFAULT') ?? 2_000
const replay = envInt('SIM_SEED')
const first = envInt('SIM_FIRST_SEED') ?? 1

describe('2PC on the shipped drivers (mesh simulation)', () => {
  it.runIf(replay !== undefined)('replays one seed with its trace', async () => {
    const seed = replay as number
    const lines: string[] = []
    const report = await simulateMesh(seed, (l) => lines.push(l))
    expectReplayClean(seed, `seed ${seed} (${report.quiesced} at t=${report.endTime}, ${report.events} events)\n`, lines, [...report.violations])
  })

  it.runIf(replay === undefined)('keeps atomicity, agreement and progress for every seed', async () => {
    const seeds = envInt('SIM_SEEDS') ?? DEFAULT_SEEDS
    const failures: string[] = []
    const totals = emptyMeshStats()
    const outcomes = { committed: 0, aborted: 0, unknown: 0 }
    let events = 0
    const started = performance.now()
    for (let seed = first; seed < first + seeds; seed++) {
      const r = await simulateMesh(seed)
      if (r.violations.length > 0) failures.push(failure(seed, `SIM_SEED=${seed} npx vitest run test/simulation/mesh.sim.test.ts`, r.violations))
      for (const k of Object.keys(totals) as (keyof typeof totals)[]) totals[k] += r.stats[k]
      outcomes[r.appOutcome ?? 'unknown']++
      events += r.events
    }
    const ms = Math.round(performance.now() - started)
    process.stdout.write(`mesh 2PC simulation: ${seeds} seeds, ${events} events in ${ms} ms; app outcomes ${JSON.stringify(outcomes)}; ${JSON.stringify(totals)}\n`)
    expectNoFailures(failures, 'seeds')
    expect(outcomes.committed).toBeGreaterThan(seeds / 10)
    expect(outcomes.aborted).toBeGreaterThan(seeds / 20)
  }, 600_000)
})
