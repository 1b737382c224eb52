// Result types of the transaction benchmark and their plain-text rendering: the table of modes
// and concurrencies, the ratios against the targets, and the durable logs' forced writes (file
// log: fsyncs; Postgres store: commits) per committed transaction.
import type { CpuGroup, StoreKind } from './tx-cluster.js'
import type { ModeName } from './tx-modes.js'

/** One mode at one concurrency in one round. */
export interface TxSample {
  readonly txPerSec: number
  readonly p50Us: number | undefined
  readonly p99Us: number | undefined
  readonly committed: number
  readonly aborted: number
  readonly errors: number
  /** CPU seconds per process group over the run (in-flight tail included). */
  readonly cpuSeconds: Readonly<Record<CpuGroup, number>>
  /** Busy CPU seconds of the whole machine, kernel threads included. */
  readonly machineCpuSeconds: number | undefined
  readonly busyPct: number | undefined
  readonly stealPct: number | undefined
  /** txmesh runs: what the sidecars' logs did over the run. */
  readonly logs: LogDelta | undefined
  readonly reasons: Readonly<Record<string, number>>
}

export interface SidecarLogDelta {
  readonly name: string
  readonly store: StoreKind
  readonly appends: number
  readonly ends: number
  /** What made records durable: the file log's fsyncs, the Postgres store's commits. */
  readonly forcedWrites: number
  /** Batched messages sent (control: prepare/commit/abort to peers; hooks: to the app) and the requests that carried them. */
  readonly controlItems: number
  readonly controlBatches: number
  readonly hookItems: number
  readonly hookBatches: number
}

export interface LogDelta {
  readonly sidecars: readonly SidecarLogDelta[]
  /** Transactions the coordinator committed over the run (in-flight tail included). */
  readonly coordinatorCommitted: number
}

/** One mode at one concurrency: medians over rounds for rates and latencies, sums for counts. */
export interface TxRow {
  readonly mode: ModeName
  readonly concurrency: number
  readonly txPerSec: number | undefined
  readonly p50Us: number | undefined
  readonly p99Us: number | undefined
  readonly committed: number
  readonly aborted: number
  readonly errors: number
  /** CPU µs per committed transfer, per group and in total (all rounds together). */
  readonly cpuUsPerTx: Readonly<Record<CpuGroup, number>> | undefined
  readonly totalCpuUsPerTx: number | undefined
  /** Busy CPU µs of the whole machine per committed transfer (kernel work such as fsync included). */
  readonly machineCpuUsPerTx: number | undefined
  readonly busyPct: number | undefined
  readonly stealPct: number | undefined
  readonly reasons: Readonly<Record<string, number>>
  readonly samples: readonly TxSample[]
}

export interface TxCheck {
  readonly name: string
  readonly value: number | undefined
  readonly goal: string
  /** undefined: not measurable in this run, or informational. */
  readonly pass: boolean | undefined
}

export interface FsyncRow {
  /** The txmesh mode (file-log or Postgres-store coordinator) whose runs these are. */
  readonly mode: ModeName
  readonly concurrency: number
  readonly committed: number
  readonly coordinatorStore: StoreKind | undefined
  /** Forced writes of the coordinator's log: fsyncs, or Postgres commits on the Postgres store. */
  readonly coordinatorForcedPerTx: number | undefined
  /** Records (appends and ENDs) the coordinator's log made durable per forced write: its batch size. */
  readonly coordinatorRecordsPerForced: number | undefined
  readonly allForcedPerTx: number | undefined
  readonly allAppendsPerTx: number | undefined
  /** 2PC control messages the coordinator sent per committed transfer, and the requests that carried them. */
  readonly controlMsgsPerTx: number | undefined
  readonly controlReqsPerTx: number | undefined
  /** Hook calls the participants made to their apps per committed transfer, and the requests that carried them. */
  readonly hookCallsPerTx: number | undefined
  readonly hookReqsPerTx: number | undefined
  readonly sidecars: readonly (SidecarLogDelta & { readonly forcedPerTx: number | undefined })[]
}

export interface TxReport {
  readonly date: string
  readonly node: string
  readonly layout: Readonly<Record<string, string>>
  readonly settings: Readonly<Record<string, string | number>>
  readonly modes: Readonly<Record<string, string>>
  readonly rows: readonly TxRow[]
  readonly checks: readonly TxCheck[]
  readonly fsync: readonly FsyncRow[]
  /** The concurrency of the fsync check and of the Postgres store's target (32 when measured). */
  readonly fsyncConcurrency: number
  /** The target: txmesh-pg tx/s ÷ txmesh tx/s at fsyncConcurrency; undefined: not both run. */
  readonly pgStoreTarget:
    { readonly concurrency: number; readonly goal: number; readonly value: number | undefined } | undefined
  readonly consistency: {
    readonly ok: boolean
    readonly total: string
    readonly expectedTotal: string
    readonly preparedLeft: number
  }
  readonly childOutput: Readonly<Record<string, string>>
}

const DASH = '—'

export function ms(us: number | undefined): string {
  if (us === undefined) return DASH
  if (us >= 100_000) return `${(us / 1000).toFixed(0)}ms`
  if (us >= 10_000) return `${(us / 1000).toFixed(1)}ms`
  return `${(us / 1000).toFixed(2)}ms`
}

export function num(v: number | undefined, digits = 0): string {
  return v === undefined ? DASH : v.toFixed(digits)
}

export function cpu(us: number | undefined): string {
  return us === undefined ? DASH : `${Math.round(us)}`
}

export type Align = 'l' | 'r'

export function table(
  header: readonly string[],
  align: readonly Align[],
  body: readonly (readonly string[])[],
): string {
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((r) => (r[i] ?? '').length)))
  const line = (cells: readonly string[]): string =>
    cells
      .map((c, i) => (align[i] === 'r' ? c.padStart(widths[i] ?? 0) : c.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd()
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...body.map(line)].join('\n')
}

/** Warnings (aborts, errors, steal), the tail of each child's output, then the ratio table. */
export function appendWarningsAndChecks<
  R extends {
    readonly concurrency: number
    readonly aborted: number
    readonly errors: number
    readonly stealPct: number | undefined
    readonly reasons: Readonly<Record<string, number>>
  },
>(
  out: string[],
  rows: readonly R[],
  title: (row: R) => string,
  childOutput: Readonly<Record<string, string>>,
  checks: readonly TxCheck[],
  goalHeader: string,
): void {
  for (const row of rows) {
    const reasons = Object.entries(row.reasons)
    if (reasons.length === 0) continue
    out.push(`WARNING: ${title(row)} c=${row.concurrency}: ${row.aborted} aborted, ${row.errors} errors:`)
    for (const [why, n] of reasons.slice(0, 5)) out.push(`    ${n} × ${why}`)
  }
  for (const row of rows.filter((x) => x.stealPct !== undefined && x.stealPct > 5)) {
    out.push(
      `WARNING: ${title(row)} c=${row.concurrency}: hypervisor steal ${Math.round(row.stealPct ?? 0)}%, figures are unreliable`,
    )
  }
  for (const [name, tail] of Object.entries(childOutput)) {
    const lines = tail.split('\n')
    out.push(
      `output of ${name} (${lines.length} line(s), last 5):`,
      ...lines.slice(-5).map((l) => `  ${l.slice(0, 300)}`),
    )
  }
  out.push('')
  const checkRows = checks.map((c) => [
    c.name,
    c.value === undefined ? 'n/a' : c.value.toFixed(2),
    c.goal,
    c.goal === 'info' ? '' : c.pass === undefined ? 'n/a' : c.pass ? 'PASS' : 'MISS',
  ])
  out.push(table(['ratio / figure (same run)', 'value', goalHeader, 'result'], ['l', 'r', 'l', 'l'], checkRows), '')
}

export const MODE_TITLES: Readonly<Record<ModeName, string>> = {
  txmesh: 'txmesh',
  'txmesh-pg': 'txmesh-pg',
  local: '(a) local',
  inproc: '(b) in-proc',
  mesh: '(c) mesh only',
}

/** Modes whose transfers go through the sidecars (their CPU columns apply). */
function throughSidecars(m: ModeName): boolean {
  return m === 'txmesh' || m === 'txmesh-pg' || m === 'mesh'
}

export function printTxReport(r: TxReport): void {
  const header = [
    'mode',
    'conc',
    'tx/s',
    'p50',
    'p99',
    'committed',
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
  ]
  const align: Align[] = header.map((_, i) => (i === 0 ? 'l' : 'r'))
  const body: string[][] = []
  let lastC: number | undefined
  for (const row of r.rows) {
    if (lastC !== undefined && row.concurrency !== lastC) body.push(header.map(() => ''))
    lastC = row.concurrency
    const g = row.cpuUsPerTx
    body.push([
      MODE_TITLES[row.mode],
      String(row.concurrency),
      num(row.txPerSec),
      ms(row.p50Us),
      ms(row.p99Us),
      String(row.committed),
      String(row.aborted),
      String(row.errors),
      cpu(row.machineCpuUsPerTx),
      cpu(row.totalCpuUsPerTx),
      cpu(g?.postgres),
      cpu(g?.apps),
      throughSidecars(row.mode) ? cpu(g?.participantSidecars) : '',
      throughSidecars(row.mode) ? cpu(g?.coordinatorSidecar) : '',
      cpu(g?.driver),
      row.busyPct === undefined ? DASH : `${Math.round(row.busyPct)}%`,
      row.stealPct === undefined ? DASH : `${Math.round(row.stealPct)}%`,
    ])
  }
  const out: string[] = [table(header, align, body), '']
  out.push(
    'machine µs/tx: busy CPU time of the whole machine per committed transfer (kernel threads included: fsync, softirq).',
  )
  out.push(
    "procs µs/tx: CPU time of the benchmark's processes per committed transfer, then by group: Postgres (postmaster and",
  )
  out.push(
    'backends), the 3 apps, the 3 participant sidecars, the coordinator sidecar, the driver (in (b) the driver is the',
  )
  out.push(
    'coordinator; for txmesh-pg its coordinator on the Postgres store, whose commits count under pg). busy: all CPUs, % of',
  )
  out.push('capacity. Transfers in flight at the end of a run add CPU but are not counted.')
  for (const [k, v] of Object.entries(r.modes)) out.push(`  ${k}: ${v}`)
  appendWarningsAndChecks(out, r.rows, (row) => MODE_TITLES[row.mode], r.childOutput, r.checks, 'target')

  if (r.fsync.length > 0) {
    const names = (r.fsync[0]?.sidecars.map((s) => s.name) ?? []).filter((n) => n !== 'coordinator')
    const fh = [
      'mode',
      'conc',
      'committed',
      'coord. forced writes/tx',
      'coord. records/forced write',
      ...names.map((n) => `participant ${n} fsyncs/tx`),
      'all logs forced writes/tx',
      'all logs appends/tx',
      'control msgs/tx',
      'in requests/tx',
      'hook calls/tx',
      'in requests/tx',
    ]
    const fb = r.fsync.map((f) => [
      MODE_TITLES[f.mode],
      String(f.concurrency),
      String(f.committed),
      num(f.coordinatorForcedPerTx, 3),
      num(f.coordinatorRecordsPerForced, 1),
      ...names.map((n) => num(f.sidecars.find((s) => s.name === n)?.forcedPerTx, 3)),
      num(f.allForcedPerTx, 3),
      num(f.allAppendsPerTx, 2),
      num(f.controlMsgsPerTx, 2),
      num(f.controlReqsPerTx, 2),
      num(f.hookCallsPerTx, 2),
      num(f.hookReqsPerTx, 2),
    ])
    out.push(
      table(
        fh,
        fh.map((_, i) => (i === 0 ? 'l' : 'r')),
        fb,
      ),
    )
    out.push(
      "(from GET /v1/stats before and after each txmesh run; committed = the coordinator's count, in-flight tail included; forced writes:",
      "a file log's fsyncs, the Postgres store's commits (txmesh-pg's coordinator; its participants keep file logs); records/forced write:",
      "the coordinator log's appends and ENDs per forced write (group commit's batch size); control msgs: the",
      "coordinator's prepare/commit/abort to participant sidecars; hook calls: the participants' prepare/commit/abort calls to their apps;",
      'each followed by the requests that carried them, batched: src/control/batcher.ts)',
      '',
    )
  }
  const t = r.pgStoreTarget
  if (t !== undefined) {
    const result = t.value === undefined ? 'n/a' : `${t.value >= t.goal ? 'PASS' : 'MISS'} (${t.value.toFixed(2)})`
    out.push(`Postgres store ÷ file log tx/s at c=${t.concurrency} >= ${t.goal.toFixed(2)}: ${result}`, '')
  }
  const c = r.consistency
  out.push(
    c.ok
      ? `consistency: OK (balances sum to ${c.total} as seeded; no prepared transactions left)`
      : `consistency: FAILED (balances sum to ${c.total}, seeded ${c.expectedTotal}; ${c.preparedLeft} prepared transactions left)`,
  )
  process.stdout.write(out.join('\n') + '\n')
}
