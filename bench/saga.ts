// Saga benchmark (the `saga` part of `npm run bench`): a 2-step saga (a pays x, b gets x) on
// Postgres with the sub-transaction barrier in each service, through txmesh sidecars, against the
// same two calls made directly without txmesh. DTM publishes this shape (2-branch saga, SQL +
// barrier) at 0.43× of its "without DTM" rate; the ratio here is printed next to it.
//
//   BENCH_PART=saga npm run bench
//   BENCH_PART=saga BENCH_SAGA_SECONDS=10 BENCH_SAGA_ROUNDS=3 npm run bench
//
// Environment:
//   BENCH_SAGA_SECONDS          measured duration per mode and concurrency (default 5)
//   BENCH_SAGA_ABORT_SECONDS    duration of the aborting variant per concurrency (default 2; 0 skips it)
//   BENCH_SAGA_WARMUP_SECONDS   warm-up per mode at the highest concurrency, before measuring (default 2)
//   BENCH_SAGA_CONCURRENCY      comma-separated closed-loop worker counts (default 1,8,32)
//   BENCH_SAGA_ROUNDS           interleaved sweeps; rates and latencies are medians (default 1)
//   BENCH_SAGA_ACCOUNTS         accounts per database (default 1000)
//   BENCH_SAGA_CPU_PROFILE      directory: apps and sidecars run with --cpu-prof and write there on exit
//                               (npx tsx bench/cpuprofile-top.ts DIR/*/*.cpuprofile)
//
// The cluster is the tx part's (bench/lib/tx-cluster.ts): one embedded Postgres with fsync on,
// databases a and b, one app process per service (bench/saga-app.ts), a sidecar beside each app
// and a coordinator sidecar for the driver (this process), whose routes give each call its
// compensation. Nothing is pinned. Output: a text table on stdout and
// bench/results/saga-latest.json; the exit code is 1 when the consistency check fails.
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { availableParallelism, cpus } from 'node:os'
import { dirname, join } from 'node:path'
import pg from 'pg'
import type { PostgresInstance } from '../harness/pg.js'
import {
  SAGA_MODE_NAMES,
  SAGA_SERVICES,
  coordinatorRoutes,
  createSagaMode,
  newBarrierExpectation,
  randomSagaTransfer,
  type BarrierExpectation,
  type SagaMode,
  type SagaModeName,
} from './lib/saga-modes.js'
import {
  printSagaReport,
  type BarrierCheck,
  type SagaConsistency,
  type SagaLogDelta,
  type SagaReport,
  type SagaRow,
  type SagaSample,
} from './lib/saga-report.js'
import { checkConsistency, sidecarStats, startCluster, type Cluster, type SidecarStats } from './lib/tx-cluster.js'
import { closedLoopOf, type LoopResult } from './lib/tx-loop.js'
import { defined, intEnv, measureRun, quiesce, summarizeRuns } from './lib/tx-measure.js'
import type { TxCheck } from './lib/tx-report.js'
import type { TxPartContext } from './tx.js'

const INITIAL_BALANCE = 1_000_000
/** DTM's published ratio for this shape: 531 sagas/s vs 1,232/s without DTM (ANCHORS.md). */
const DTM_RATIO = 0.43

interface SagaSettings {
  readonly seconds: number
  readonly abortSeconds: number
  readonly warmupSeconds: number
  readonly concurrencies: readonly number[]
  readonly rounds: number
  readonly accounts: number
  readonly cpuProfileDir: string | undefined
}

function settings(): SagaSettings {
  const cs = (process.env.BENCH_SAGA_CONCURRENCY ?? '1,8,32').split(',').map((s) => Number(s.trim()))
  if (cs.length === 0 || cs.some((c) => !Number.isInteger(c) || c < 1))
    throw new Error('BENCH_SAGA_CONCURRENCY must list positive integers')
  const prof = process.env.BENCH_SAGA_CPU_PROFILE
  return {
    seconds: intEnv('BENCH_SAGA_SECONDS', 5, 1),
    abortSeconds: intEnv('BENCH_SAGA_ABORT_SECONDS', 2, 0),
    warmupSeconds: intEnv('BENCH_SAGA_WARMUP_SECONDS', 2, 0),
    concurrencies: cs,
    rounds: intEnv('BENCH_SAGA_ROUNDS', 1, 1),
    accounts: intEnv('BENCH_SAGA_ACCOUNTS', 1000, 2),
    cpuProfileDir: prof !== undefined && prof !== '' ? prof : undefined,
  }
}

function logDelta(before: Map<string, SidecarStats>, after: Map<string, SidecarStats>): SagaLogDelta {
  const cb = before.get('coordinator') as SidecarStats
  const ca = after.get('coordinator') as SidecarStats
  let allFsyncs = 0
  for (const [name, a] of after) allFsyncs += a.log.fsyncs - (before.get(name)?.log.fsyncs ?? 0)
  return {
    sagasEnded: ca.steps.committed + ca.steps.aborted - (cb.steps.committed + cb.steps.aborted),
    coordinatorAppends: ca.log.appends - cb.log.appends,
    coordinatorFsyncs: ca.log.fsyncs - cb.log.fsyncs,
    allFsyncs,
  }
}

function loop(m: SagaMode, concurrency: number, seconds: number, accounts: number): Promise<LoopResult> {
  return closedLoopOf(
    (t) => m.transfer(t),
    () => randomSagaTransfer(accounts),
    concurrency,
    seconds,
  )
}

async function measure(
  c: Cluster,
  m: SagaMode,
  concurrency: number,
  seconds: number,
  accounts: number,
): Promise<SagaSample> {
  const { count, ...rest } = await measureRun(c, {
    viaSidecars: m.name !== 'direct',
    inFlight: (x) => x.steps.active,
    logDelta,
    run: () => loop(m, concurrency, seconds, accounts),
  })
  return { ...rest, done: count }
}

function summarize(mode: SagaModeName, concurrency: number, samples: readonly SagaSample[]): SagaRow {
  const { count, ...row } = summarizeRuns(samples.map((x) => ({ ...x, count: x.done })))
  const logs = defined(samples.map((x) => x.logs))
  const ended = logs.reduce((n, l) => n + l.sagasEnded, 0)
  const perSaga = (f: (l: SagaLogDelta) => number): number | undefined =>
    logs.length === 0 || ended === 0 ? undefined : logs.reduce((n, l) => n + f(l), 0) / ended
  return {
    mode,
    concurrency,
    ...row,
    done: count,
    coordinatorFsyncsPerSaga: perSaga((l) => l.coordinatorFsyncs),
    coordinatorAppendsPerSaga: perSaga((l) => l.coordinatorAppends),
    allFsyncsPerSaga: perSaga((l) => l.allFsyncs),
    samples: [...samples],
  }
}

function checks(rows: readonly SagaRow[], concurrencies: readonly number[]): TxCheck[] {
  const row = (m: SagaModeName, c: number): SagaRow | undefined => rows.find((r) => r.mode === m && r.concurrency === c)
  const ratio = (a: number | undefined, b: number | undefined): number | undefined =>
    a === undefined || b === undefined || b <= 0 ? undefined : a / b
  const out: TxCheck[] = []
  for (const c of concurrencies) {
    const v = ratio(row('saga', c)?.txPerSec, row('direct', c)?.txPerSec)
    out.push({
      name: `saga tx/s ÷ direct tx/s (c=${c})`,
      value: v,
      goal: `≥ ${DTM_RATIO.toFixed(2)} (DTM, same shape)`,
      pass: v === undefined ? undefined : v >= DTM_RATIO,
    })
  }
  for (const c of concurrencies) {
    if (row('saga-abort', c) === undefined) continue
    out.push({
      name: `saga-abort tx/s ÷ direct tx/s (c=${c})`,
      value: ratio(row('saga-abort', c)?.txPerSec, row('direct', c)?.txPerSec),
      goal: 'info',
      pass: undefined,
    })
  }
  for (const c of concurrencies) {
    const s = row('saga', c)
    const d = row('direct', c)
    const added = s?.p50Us !== undefined && d?.p50Us !== undefined ? (s.p50Us - d.p50Us) / 1000 : undefined
    out.push({ name: `saga p50 − direct p50, ms (c=${c})`, value: added, goal: 'info', pass: undefined })
  }
  for (const c of concurrencies) {
    const s = row('saga', c)
    const d = row('direct', c)
    out.push({
      name: `saga machine CPU ÷ direct machine CPU per transfer (c=${c})`,
      value: ratio(s?.machineCpuUsPerTx, d?.machineCpuUsPerTx),
      goal: 'info',
      pass: undefined,
    })
  }
  for (const c of concurrencies) {
    const s = row('saga', c)
    out.push({
      name: `saga: coordinator log appends per saga (c=${c}); forced: 2 intents + 2 steps + commit`,
      value: s?.coordinatorAppendsPerSaga,
      goal: 'info',
      pass: undefined,
    })
  }
  return out
}

/** Balances as seeded, no prepared xacts, no saga left open, and one barrier row per step done. */
async function sagaConsistency(c: Cluster, expect: BarrierExpectation): Promise<SagaConsistency> {
  const base = await checkConsistency(c)
  const barrier: BarrierCheck[] = []
  for (const svc of SAGA_SERVICES) {
    const client = new pg.Client({ connectionString: c.pg.connectionString(svc) })
    await client.connect()
    try {
      const r = await client.query<{ op: string; n: string }>(
        'SELECT op, count(*) AS n FROM txmesh_barrier GROUP BY op',
      )
      const count = (op: string): number => Number(r.rows.find((x) => x.op === op)?.n ?? 0)
      barrier.push({
        service: svc,
        actionRows: count('action'),
        expectedActionRows: expect.actions[svc],
        compensateRows: count('compensate'),
        expectedCompensateRows: expect.compensations[svc],
      })
    } finally {
      await client.end()
    }
  }
  const st = await sidecarStats(c.coordinator.ports.admin)
  const barrierOk = barrier.every(
    (b) => b.actionRows === b.expectedActionRows && b.compensateRows === b.expectedCompensateRows,
  )
  return {
    ok: base.ok && barrierOk && st.steps.active === 0 && st.steps.stuck === 0,
    total: String(base.total),
    expectedTotal: String(base.expectedTotal),
    preparedLeft: base.preparedLeft,
    barrier,
    activeLeft: st.steps.active,
    stuckLeft: st.steps.stuck,
  }
}

export async function runSagaPart(ctx: TxPartContext): Promise<number> {
  const s = settings()
  const maxC = Math.max(...s.concurrencies)
  const names = SAGA_MODE_NAMES.filter((m) => m !== 'saga-abort' || s.abortSeconds > 0)
  let pgi: PostgresInstance | undefined
  const modes: SagaMode[] = []
  ctx.onCleanup(async () => {
    await Promise.allSettled(modes.map((m) => m.close()))
    await pgi?.stop()
  })
  ctx.onExit(() => {
    if (pgi !== undefined) rmSync(dirname(pgi.dataDir), { recursive: true, force: true })
  })

  process.stderr.write('saga: starting Postgres, 2 apps, 2 participant sidecars and a coordinator sidecar ...\n')
  const cluster = await startCluster(
    ctx.group,
    {
      root: ctx.root,
      dir: ctx.dir,
      accounts: s.accounts,
      initialBalance: INITIAL_BALANCE,
      maxConcurrency: maxC,
      cpuProfileDir: s.cpuProfileDir,
      postgresCpu: undefined,
      nodeCpu: undefined,
      taskset: ctx.taskset,
      services: SAGA_SERVICES,
      appScript: 'saga-app.ts',
      coordinatorExtra: coordinatorRoutes(),
    },
    (p) => (pgi = p),
  )
  const expect = newBarrierExpectation()
  for (const name of names) modes.push(createSagaMode(name, cluster, maxC, expect))

  const layout = {
    cpus: `${availableParallelism()} × ${cpus()[0]?.model ?? 'unknown CPU'}`,
    pinning: 'none: every process on every CPU',
    postgres: `embedded Postgres on 127.0.0.1:${cluster.pg.port}, fsync=on, synchronous_commit=on, full_page_writes=on, max_connections=${cluster.sizing.maxConnections}; databases a, b with ${s.accounts} accounts each`,
    apps: `node:http + pg.Pool(max ${cluster.sizing.appPoolMax}) + txmesh/pg barrier (bench/saga-app.ts), one process per service`,
    sidecars:
      'node --max-semi-space-size=2 dist/cli/index.js sidecar, log level warn, durable log in the scratch dir (same disk as Postgres)',
    coordinatorRoutes:
      'a, b: POST /transfer* is a step; compensation POST /transfer/undo?id={request.query.id}&amount={request.query.amount}',
    loadavgAtStart: readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' '),
    driver: 'this process: closed loop of N workers (undici Pools to the apps / the coordinator sidecar)',
  }
  process.stdout.write(
    [
      `txmesh saga benchmark — ${new Date().toISOString()}, node ${process.version}`,
      `CPUs: ${layout.cpus}; pinning: ${layout.pinning}; loadavg at start ${layout.loadavgAtStart}`,
      `Postgres: ${layout.postgres}`,
      `apps: ${layout.apps}`,
      `transfer: UPDATE accounts SET balance = balance + $1 WHERE id = $2 in a (-x), then in b (+x); concurrency ${s.concurrencies.join(', ')}; ` +
        `${s.seconds} s per point (saga-abort ${s.abortSeconds} s), ${s.warmupSeconds} s warm-up per mode, ${s.rounds} round(s) (medians)`,
      '',
    ].join('\n') + '\n',
  )

  // One transfer per mode must end as intended before anything is measured.
  for (const m of modes) {
    const a = await m.transfer(randomSagaTransfer(s.accounts))
    if (a.outcome !== 'committed')
      throw new Error(`probe transfer through ${m.name} did not end as intended: ${a.outcome} ${a.detail ?? ''}`)
  }
  if (s.warmupSeconds > 0) {
    for (const m of modes) {
      process.stderr.write(`saga warm-up: ${m.name} c=${maxC} ...`)
      const w = await loop(m, maxC, s.warmupSeconds, s.accounts)
      process.stderr.write(` ${Math.round(w.committed / w.seconds)} tx/s\n`)
    }
  }

  const samples = new Map<string, SagaSample[]>()
  const key = (m: SagaModeName, c: number): string => `${m}@${c}`
  for (let round = 1; round <= s.rounds; round++) {
    for (const c of s.concurrencies) {
      for (const m of modes) {
        process.stderr.write(`saga round ${round}/${s.rounds}: ${m.name} c=${c} ...`)
        const x = await measure(cluster, m, c, m.name === 'saga-abort' ? s.abortSeconds : s.seconds, s.accounts)
        process.stderr.write(` ${Math.round(x.txPerSec)} tx/s (${x.aborted} aborted, ${x.errors} errors)\n`)
        samples.set(key(m.name, c), [...(samples.get(key(m.name, c)) ?? []), x])
      }
    }
  }
  await quiesce(cluster, (x) => x.steps.active)

  const rows: SagaRow[] = []
  for (const c of s.concurrencies)
    for (const m of modes) rows.push(summarize(m.name, c, samples.get(key(m.name, c)) ?? []))
  const consistency = await sagaConsistency(cluster, expect)
  const childOutput: Record<string, string> = {}
  for (const o of ctx.group.outputs()) childOutput[o.name] = o.tail
  const report: SagaReport = {
    date: new Date().toISOString(),
    node: process.version,
    layout,
    settings: {
      seconds: s.seconds,
      abortSeconds: s.abortSeconds,
      warmupSeconds: s.warmupSeconds,
      concurrencies: s.concurrencies.join(','),
      rounds: s.rounds,
      accounts: s.accounts,
      modes: names.join(','),
    },
    modes: Object.fromEntries(modes.map((m) => [m.name, `${m.label}. Per transfer: ${m.work}`])),
    rows,
    checks: checks(rows, s.concurrencies),
    consistency,
    childOutput,
  }
  printSagaReport(report)
  const file = join(ctx.root, 'bench', 'results', 'saga-latest.json')
  mkdirSync(dirname(file), { recursive: true })
  writeFileSync(file, JSON.stringify(report, null, 2) + '\n')
  process.stdout.write(`\nJSON: ${file}\n`)
  if (s.cpuProfileDir !== undefined)
    process.stdout.write(`CPU profiles (written as the processes exit): ${s.cpuProfileDir}\n`)
  return consistency.ok ? 0 : 1
}
