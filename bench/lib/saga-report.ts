// Result types of the saga benchmark and their plain-text rendering (the tx part's table helpers):
// modes by concurrency with CPU per process group, the ratio to the same calls without txmesh
// next to DTM's published one, and the coordinator log's work per saga.
import type { CpuGroup } from './tx-cluster.js'
import type { SagaModeName } from './saga-modes.js'
import { appendWarningsAndChecks, cpu, ms, num, table, type Align, type TxCheck } from './tx-report.js'

/** One mode at one concurrency in one round. */
export interface SagaSample {
  readonly txPerSec: number
  readonly p50Us: number | undefined
  readonly p99Us: number | undefined
  /** Transfers that ended as the mode intends (saga-abort: rolled back with both steps undone). */
  readonly done: number
  readonly aborted: number
  readonly errors: number
  readonly cpuSeconds: Readonly<Record<CpuGroup, number>>
  readonly machineCpuSeconds: number | undefined
  readonly busyPct: number | undefined
  readonly stealPct: number | undefined
  /** Saga modes: what the sidecars' logs did over the run, and the sagas the coordinator ended. */
  readonly logs: SagaLogDelta | undefined
  readonly reasons: Readonly<Record<string, number>>
}

export interface SagaLogDelta {
  /** Sagas the coordinator ended over the run (in-flight tail included). */
  readonly sagasEnded: number
  readonly coordinatorAppends: number
  readonly coordinatorFsyncs: number
  /** Every sidecar's log (the participant sidecars write nothing for a saga step). */
  readonly allFsyncs: number
}

export interface SagaRow {
  readonly mode: SagaModeName
  readonly concurrency: number
  readonly txPerSec: number | undefined
  readonly p50Us: number | undefined
  readonly p99Us: number | undefined
  readonly done: number
  readonly aborted: number
  readonly errors: number
  readonly cpuUsPerTx: Readonly<Record<CpuGroup, number>> | undefined
  readonly totalCpuUsPerTx: number | undefined
  readonly machineCpuUsPerTx: number | undefined
  readonly busyPct: number | undefined
  readonly stealPct: number | undefined
  /** Saga modes, all rounds together. */
  readonly coordinatorFsyncsPerSaga: number | undefined
  readonly coordinatorAppendsPerSaga: number | undefined
  readonly allFsyncsPerSaga: number | undefined
  readonly reasons: Readonly<Record<string, number>>
  readonly samples: readonly SagaSample[]
}

export interface BarrierCheck {
  readonly service: string
  readonly actionRows: number
  readonly expectedActionRows: number
  readonly compensateRows: number
  readonly expectedCompensateRows: number
}

export interface SagaConsistency {
  readonly ok: boolean
  readonly total: string
  readonly expectedTotal: string
  readonly preparedLeft: number
  readonly barrier: readonly BarrierCheck[]
  /** Coordinator step transactions still active or stuck after the run. */
  readonly activeLeft: number
  readonly stuckLeft: number
}

export interface SagaReport {
  readonly date: string
  readonly node: string
  readonly layout: Readonly<Record<string, string>>
  readonly settings: Readonly<Record<string, string | number>>
  readonly modes: Readonly<Record<string, string>>
  readonly rows: readonly SagaRow[]
  readonly checks: readonly TxCheck[]
  readonly consistency: SagaConsistency
  readonly childOutput: Readonly<Record<string, string>>
}

const DASH = '—'

export function printSagaReport(r: SagaReport): void {
  const header = [
    'mode',
    'conc',
    'tx/s',
    'p50',
    'p99',
    'done',
    'aborted',
    'errors',
    'machine µs/tx',
    'procs µs/tx:',
    'pg',
    'apps',
    'part.sc',
    'coord.sc',
    'driver',
    'busy',
    'steal',
    'coord fsyncs/saga',
  ]
  const align: Align[] = header.map((_, i) => (i === 0 ? 'l' : 'r'))
  const body: string[][] = []
  let lastC: number | undefined
  for (const row of r.rows) {
    if (lastC !== undefined && row.concurrency !== lastC) body.push(header.map(() => ''))
    lastC = row.concurrency
    const g = row.cpuUsPerTx
    const viaSidecars = row.mode !== 'direct'
    body.push([
      row.mode,
      String(row.concurrency),
      num(row.txPerSec),
      ms(row.p50Us),
      ms(row.p99Us),
      String(row.done),
      String(row.aborted),
      String(row.errors),
      cpu(row.machineCpuUsPerTx),
      cpu(row.totalCpuUsPerTx),
      cpu(g?.postgres),
      cpu(g?.apps),
      viaSidecars ? cpu(g?.participantSidecars) : '',
      viaSidecars ? cpu(g?.coordinatorSidecar) : '',
      cpu(g?.driver),
      row.busyPct === undefined ? DASH : `${Math.round(row.busyPct)}%`,
      row.stealPct === undefined ? DASH : `${Math.round(row.stealPct)}%`,
      viaSidecars ? num(row.coordinatorFsyncsPerSaga, 2) : '',
    ])
  }
  const out: string[] = [table(header, align, body), '']
  out.push(
    'tx/s: transfers per second that ended as the mode intends (saga-abort: rolled back, both steps compensated).',
  )
  out.push(
    'machine µs/tx: busy CPU time of the whole machine per transfer (kernel included: fsync, softirq). procs µs/tx:',
  )
  out.push(
    "the benchmark's processes, then by group: Postgres, the 2 apps, the 2 participant sidecars, the coordinator sidecar,",
  )
  out.push(
    "the driver. coord fsyncs/saga: fsyncs of the coordinator's log per saga it ended (group commit shares them).",
  )
  for (const [k, v] of Object.entries(r.modes)) out.push(`  ${k}: ${v}`)
  appendWarningsAndChecks(out, r.rows, (row) => row.mode, r.childOutput, r.checks, 'reference')

  const c = r.consistency
  const barrier = c.barrier
    .map(
      (b) =>
        `${b.service}: ${b.actionRows} action rows (expected ${b.expectedActionRows}), ${b.compensateRows} compensate rows (expected ${b.expectedCompensateRows})`,
    )
    .join('; ')
  out.push(
    c.ok
      ? `consistency: OK (balances sum to ${c.total} as seeded; no prepared transactions; no saga left active or stuck; barrier rows = steps: ${barrier})`
      : `consistency: FAILED (balances sum to ${c.total}, seeded ${c.expectedTotal}; ${c.preparedLeft} prepared transactions; ` +
          `${c.activeLeft} sagas active, ${c.stuckLeft} steps stuck; barrier: ${barrier})`,
  )
  process.stdout.write(out.join('\n') + '\n')
}
