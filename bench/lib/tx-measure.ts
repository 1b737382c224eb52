// What the transaction and saga parts of the benchmark share: environment parsing, sidecar
// stats around a run, one measured closed-loop run (rates, latencies, CPU per process group),
// and the per-row summary (medians over rounds, CPU per counted transfer over all of them).
import { sleep } from './procs.js'
import {
  CPU_GROUPS,
  cpuDelta,
  cpuSnapshot,
  sidecarStats,
  type Cluster,
  type CpuGroup,
  type SidecarStats,
} from './tx-cluster.js'
import { percentile, type LoopResult } from './tx-loop.js'

export function intEnv(name: string, dflt: number, min: number): number {
  const raw = process.env[name]
  if (raw === undefined || raw === '') return dflt
  const n = Number(raw)
  if (!Number.isInteger(n) || n < min) throw new Error(`${name} must be an integer >= ${min}, got "${raw}"`)
  return n
}

export function median(xs: readonly number[]): number | undefined {
  if (xs.length === 0) return undefined
  const s = [...xs].sort((a, b) => a - b)
  const mid = s.length >> 1
  return s.length % 2 === 1 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2
}

export function defined<T>(xs: readonly (T | undefined)[]): T[] {
  return xs.filter((x): x is T => x !== undefined)
}

export async function allStats(c: Cluster): Promise<Map<string, SidecarStats>> {
  const sidecars = [c.coordinator, ...c.participants]
  const stats = await Promise.all(sidecars.map((s) => sidecarStats(s.ports.admin)))
  return new Map(sidecars.map((s, i) => [s.name, stats[i] as SidecarStats]))
}

/** Waits (bounded: 100 × 50 ms) until the coordinator has nothing left in flight. */
export async function quiesce(c: Cluster, inFlight: (s: SidecarStats) => number): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if (inFlight(await sidecarStats(c.coordinator.ports.admin)) === 0) return
    await sleep(50)
  }
}

/** One mode at one concurrency in one round, whatever the part. */
export interface RunFigures {
  readonly txPerSec: number
  readonly p50Us: number | undefined
  readonly p99Us: number | undefined
  /** Transfers that ended as the mode intends. */
  readonly count: number
  readonly aborted: number
  readonly errors: number
  /** CPU seconds per process group over the run (in-flight tail included). */
  readonly cpuSeconds: Readonly<Record<CpuGroup, number>>
  readonly machineCpuSeconds: number | undefined
  readonly busyPct: number | undefined
  readonly stealPct: number | undefined
  readonly reasons: Readonly<Record<string, number>>
}

export interface RunOptions<L> {
  /** Modes through the sidecars: diff the sidecars' log stats around the run. */
  readonly viaSidecars: boolean
  readonly inFlight: (s: SidecarStats) => number
  readonly logDelta: (before: Map<string, SidecarStats>, after: Map<string, SidecarStats>) => L
  readonly run: () => Promise<LoopResult>
}

export async function measureRun<L>(
  c: Cluster,
  o: RunOptions<L>,
): Promise<RunFigures & { readonly logs: L | undefined }> {
  // Whatever mode ran before (phase 2, compensations) finishes before this one is measured.
  await quiesce(c, o.inFlight)
  await sleep(200)
  const statsBefore = o.viaSidecars ? await allStats(c) : undefined
  const cpuBefore = cpuSnapshot(c)
  const r = await o.run()
  const cpuAfter = cpuSnapshot(c)
  let logs: L | undefined
  if (statsBefore !== undefined) {
    await quiesce(c, o.inFlight)
    logs = o.logDelta(statsBefore, await allStats(c))
  }
  const d = cpuDelta(cpuBefore, cpuAfter)
  return {
    txPerSec: r.committed / r.seconds,
    p50Us: percentile(r.latenciesUs, 50),
    p99Us: percentile(r.latenciesUs, 99),
    count: r.committed,
    aborted: r.aborted,
    errors: r.errors,
    cpuSeconds: d.seconds,
    machineCpuSeconds: d.machineSeconds,
    busyPct: d.busyPct,
    stealPct: d.stealPct,
    logs,
    reasons: r.reasons,
  }
}

/** A row: medians over rounds for rates and latencies, sums for counts, CPU µs per counted transfer. */
export function summarizeRuns(samples: readonly RunFigures[]) {
  const count = samples.reduce((n, x) => n + x.count, 0)
  let cpuUsPerTx: Record<CpuGroup, number> | undefined
  let total: number | undefined
  if (count > 0) {
    cpuUsPerTx = {} as Record<CpuGroup, number>
    total = 0
    for (const g of CPU_GROUPS) {
      const us = (samples.reduce((n, x) => n + x.cpuSeconds[g], 0) * 1e6) / count
      cpuUsPerTx[g] = us
      total += us
    }
  }
  const reasons: Record<string, number> = {}
  for (const x of samples) for (const [k, v] of Object.entries(x.reasons)) reasons[k] = (reasons[k] ?? 0) + v
  return {
    txPerSec: median(samples.map((x) => x.txPerSec)),
    p50Us: median(defined(samples.map((x) => x.p50Us))),
    p99Us: median(defined(samples.map((x) => x.p99Us))),
    count,
    aborted: samples.reduce((n, x) => n + x.aborted, 0),
    errors: samples.reduce((n, x) => n + x.errors, 0),
    cpuUsPerTx,
    totalCpuUsPerTx: total,
    machineCpuUsPerTx:
      count > 0 && samples.every((x) => x.machineCpuSeconds !== undefined)
        ? (samples.reduce((n, x) => n + (x.machineCpuSeconds ?? 0), 0) * 1e6) / count
        : undefined,
    busyPct: median(defined(samples.map((x) => x.busyPct))),
    stealPct: median(defined(samples.map((x) => x.stealPct))),
    reasons,
  }
}
