// What the simulation tests share: seed counts from the environment, the line naming the command
// that replays a failing seed, and the verdicts over one replayed seed and over a whole run.
import { expect } from 'vitest'

/** A non-negative integer from the environment; unset or empty is undefined. */
export function envInt(name: string): number | undefined {
  const raw = process.env[name]
  if (raw === undefined || raw === '') return undefined
  const n = Number(raw)
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`${name} must be a non-negative integer, got ${raw}`)
  return n
}

/** One failing seed: its problems and the command that replays it with its trace. */
export function failure(seed: number, replay: string, problems: readonly string[]): string {
  return `seed ${seed} (replay: ${replay}):\n    ${problems.join('\n    ')}`
}

/** Prints the first failing seeds of a run, and fails the test on them. */
export function expectNoFailures(failures: readonly string[], what: string): void {
  if (failures.length > 0)
    process.stdout.write(`${failures.length} failing ${what}; first ones:\n${failures.slice(0, 10).join('\n')}\n`)
  expect(failures.slice(0, 10)).toEqual([])
}

/** Prints a replayed seed's trace (after `header`) and verdict, and fails the test on its problems. */
export function expectReplayClean(
  seed: number,
  header: string,
  trace: readonly string[],
  problems: readonly string[],
): void {
  process.stdout.write(
    `${header}${trace.join('\n')}\nseed ${seed}: ${problems.length === 0 ? 'ok' : problems.join('\n  ')}\n`,
  )
  expect(problems).toEqual([])
}
