// Deterministic simulation of 2PC on the code that ships (./mesh.ts, ./twopc-mesh.ts): the real
// CoordinatorDriver, ParticipantDriver, plane hooks and FileLog on a simulated network, clock and
// disk, with crashes at any await, all from one seed. Half the default seeds run here, half in
// twopc-b.sim.test.ts (another worker).
//
//   npx vitest run test/simulation/twopc                                     50,000 seeds
//   SIM_SEEDS=1000000 npx vitest run test/simulation/twopc.sim.test.ts       the night run (one file, all seeds)
//   SIM_SEED=4242 npx vitest run test/simulation/twopc.sim.test.ts           replay one seed with its trace
import { describe, expect, it } from 'vitest'
import { envInt, expectReplayClean } from './seeds.js'
import { simulateMesh } from './twopc-mesh.js'
import { DEFAULT_SEEDS, runSeeds, seedsFromEnv } from './twopc-seeds.js'

const replay = envInt('SIM_SEED')

describe('2PC on the shipped drivers (mesh simulation)', () => {
  it.runIf(replay !== undefined)('replays one seed with its trace', async () => {
    const seed = replay as number
    const lines: string[] = []
    const report = await simulateMesh(seed, (l) => lines.push(l))
    expectReplayClean(
      seed,
      `seed ${seed} (${report.quiesced} at t=${report.endTime}, ${report.events} events)\n`,
      lines,
      [...report.violations],
    )
  })

  it.runIf(replay === undefined)('runs the same for the same seed', async () => {
    for (const seed of [7, 270, 1234]) {
      const runs: string[][] = [[], []]
      for (const lines of runs) await simulateMesh(seed, (l) => lines.push(l))
      expect(runs[1]).toEqual(runs[0])
      expect(runs[0]?.length).toBeGreaterThan(5)
    }
  })

  it.runIf(replay === undefined)(
    'keeps atomicity, agreement and progress for every seed (first half)',
    async () => {
      await runSeeds(1, seedsFromEnv() ?? DEFAULT_SEEDS / 2, 'twopc.sim.test.ts')
    },
    1_800_000,
  )
})
