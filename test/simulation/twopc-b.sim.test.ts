// The second half of the default 2PC mesh seeds (see twopc.sim.test.ts), in a file of its own so
// the test runner gives it another worker. Skipped when SIM_SEEDS or SIM_SEED chooses the seeds.
import { describe, it } from 'vitest'
import { envInt } from './seeds.js'
import { DEFAULT_SEEDS, runSeeds, seedsFromEnv } from './twopc-seeds.js'

describe('2PC on the shipped drivers (mesh simulation, second half)', () => {
  it.runIf(seedsFromEnv() === undefined && envInt('SIM_SEED') === undefined)(
    'keeps atomicity, agreement and progress for every seed (second half)',
    async () => {
      await runSeeds(DEFAULT_SEEDS / 2 + 1, DEFAULT_SEEDS / 2, 'twopc-b.sim.test.ts')
    },
    1_800_000,
  )
})
