// Closed-loop load for the transaction benchmark: N workers, each starting its next transfer as
// soon as the previous one finished, for a fixed time. Only transfers that finish before the end
// count; those in flight at the end finish but are not counted.
import { describeError, randomTransfer, type Attempt, type Mode, type Outcome } from './tx-modes.js'

export interface LoopResult {
  readonly concurrency: number
  readonly seconds: number
  readonly committed: number
  readonly aborted: number
  readonly errors: number
  /** Latency of committed transfers, µs, sorted ascending. */
  readonly latenciesUs: Float64Array
  /** Why transfers aborted or failed, with counts (first 20 distinct reasons). */
  readonly reasons: Readonly<Record<string, number>>
}

const MAX_REASONS = 20

export function closedLoop(mode: Mode, concurrency: number, seconds: number, accounts: number): Promise<LoopResult> {
  return closedLoopOf(
    (t) => mode.transfer(t),
    () => randomTransfer(accounts),
    concurrency,
    seconds,
  )
}

/** The loop for any kind of work: `make` draws the next input, `run` performs it. */
export async function closedLoopOf<T>(
  run: (t: T) => Promise<Attempt>,
  make: () => T,
  concurrency: number,
  seconds: number,
): Promise<LoopResult> {
  const counts: Record<Outcome, number> = { committed: 0, aborted: 0, error: 0 }
  const latencies: number[] = []
  const reasons: Record<string, number> = {}
  const start = performance.now()
  const end = start + seconds * 1000
  const note = (reason: string): void => {
    if (reasons[reason] !== undefined || Object.keys(reasons).length < MAX_REASONS)
      reasons[reason] = (reasons[reason] ?? 0) + 1
  }

  const worker = async (): Promise<void> => {
    while (performance.now() < end) {
      const t0 = performance.now()
      let outcome: Outcome
      try {
        const a = await run(make())
        outcome = a.outcome
        if (a.detail !== undefined) note(`${a.outcome}: ${a.detail}`)
      } catch (err) {
        outcome = 'error'
        note(`error: ${describeError(err)}`)
      }
      const t1 = performance.now()
      if (t1 > end) break
      counts[outcome]++
      if (outcome === 'committed') latencies.push((t1 - t0) * 1000)
    }
  }
  await Promise.all(Array.from({ length: concurrency }, worker))
  const sorted = Float64Array.from(latencies).sort()
  return {
    concurrency,
    seconds,
    committed: counts.committed,
    aborted: counts.aborted,
    errors: counts.error,
    latenciesUs: sorted,
    reasons,
  }
}

/** Nearest-rank percentile of an ascending array; undefined when empty. */
export function percentile(sorted: Float64Array, p: number): number | undefined {
  if (sorted.length === 0) return undefined
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil((p / 100) * sorted.length)))
  return sorted[rank - 1]
}
