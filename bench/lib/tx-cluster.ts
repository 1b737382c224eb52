// What the transaction benchmarks run on: one real Postgres (fsync on) with a database per
// service, a participant app per database (bench/tx-app.ts by default, txmesh/pg helper), a txmesh
// sidecar beside each app, and one coordinator sidecar for the benchmark driver (the initiating
// app). Also the measurements taken around each run: sidecar stats and CPU time per process group.
// On request a second coordinator sidecar, identical but for its store (the Postgres store, in a
// database of the same Postgres), so the file log and the Postgres store are measured in one run.
// The saga benchmark (bench/saga.ts) runs on the same cluster with two services, its own app and
// routes on the coordinator.
import { execFileSync } from 'node:child_process'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import pg from 'pg'
import { request } from 'undici'
import { startPostgres, type PostgresInstance } from '../../harness/pg.js'
import {
  childPids,
  clockTicksPerSecond,
  cpuUse,
  firstJsonLine,
  readCpuTimes,
  startSidecarService,
  type CpuTimes,
  type ProcessGroup,
} from './procs.js'

export const SERVICES = ['a', 'b', 'c'] as const
export type ServiceName = (typeof SERVICES)[number]

/** The benchmark's mesh key (any ≥ 16 bytes; the sidecars only talk to each other). */
const MESH_KEY = 'txmesh-bench-mesh-key-0123456789'

export interface ClusterOptions {
  readonly root: string
  /** Scratch directory (sidecar configs and logs); removed by the caller. */
  readonly dir: string
  readonly accounts: number
  readonly initialBalance: number
  /** Highest concurrency of the run: sizes pools, maxOpen and Postgres limits. */
  readonly maxConcurrency: number
  /** When set, apps and sidecars write V8 CPU profiles here on exit. */
  readonly cpuProfileDir: string | undefined
  /** CPU list for Postgres (postmaster and every backend), undefined: not pinned. */
  readonly postgresCpu: string | undefined
  /** CPU list for the apps and sidecars, undefined: not pinned. */
  readonly nodeCpu: string | undefined
  /** taskset, needed when a CPU is given. */
  readonly taskset: string | undefined
  /** Service names, one database, app and sidecar each (default SERVICES). */
  readonly services?: readonly string[]
  /** The participant app, a file under bench/ (default tx-app.ts). */
  readonly appScript?: string
  /** YAML appended to the coordinator sidecar's config after its `services:` map (routes, steps). */
  readonly coordinatorExtra?: string
  /** Also start a coordinator on the Postgres store (database PG_STORE_DATABASE), Cluster.pgCoordinator. */
  readonly pgStoreCoordinator?: boolean
}

/** The database of the second coordinator's Postgres store, on the cluster's Postgres. */
export const PG_STORE_DATABASE = 'txmesh_store'
/** Its store.instance: the log is `driver/bench`. */
const PG_STORE_INSTANCE = 'bench'
// What the Postgres store holds open: its writer pool (LIMITS.pgStoreConnections, 2) and the
// takeover scanner (1), with one to spare.
const PG_STORE_CONNECTIONS = 4

/** Where a coordinator sidecar keeps its records. */
export type StoreKind = 'file' | 'postgres'

export interface AppProc {
  readonly name: string
  readonly port: number
  readonly pid: number
}

export interface SidecarPorts {
  readonly egress: number
  readonly ingress: number
  readonly control: number
  readonly admin: number
}

export interface SidecarProc {
  /** a, b, c, or "coordinator" (either coordinator: the role, as the stats are keyed). */
  readonly name: string
  readonly pid: number
  readonly ports: SidecarPorts
  readonly store: StoreKind
  /** The file log's directory (the Postgres store's sidecar has its config file there only). */
  readonly storeDir: string
}

export interface Cluster {
  readonly pg: PostgresInstance
  readonly apps: readonly AppProc[]
  readonly participants: readonly SidecarProc[]
  readonly coordinator: SidecarProc
  /** The same coordinator on the Postgres store, when ClusterOptions.pgStoreCoordinator asked for it. */
  readonly pgCoordinator: SidecarProc | undefined
  /** Sizes the helper and the pools were given (printed with the results). */
  readonly sizing: {
    readonly appPoolMax: number
    readonly maxOpen: number
    readonly maxPreparedTransactions: number
    readonly maxConnections: number
  }
  /** Sum of all balances over the databases right after seeding. */
  readonly initialTotal: bigint
}

interface Listening {
  event: 'listening'
  pid: number
  port: number
}
function isListening(v: unknown): v is Listening {
  const o = v as Record<string, unknown> | null
  return (
    typeof o === 'object' &&
    o !== null &&
    o.event === 'listening' &&
    typeof o.port === 'number' &&
    typeof o.pid === 'number'
  )
}

function childEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, ...extra }
  delete env.NODE_OPTIONS
  delete env.TXMESH_LOG_LEVEL
  delete env.TXMESH_CONFIG
  delete env.TXMESH_FAILPOINTS
  return env
}

function profileFlags(o: ClusterOptions, name: string): string[] {
  if (o.cpuProfileDir === undefined) return []
  // One directory per process: an app started with --import tsx has a loader thread that writes
  // its own profile, which a fixed --cpu-prof-name would overwrite.
  return ['--cpu-prof', `--cpu-prof-dir=${join(o.cpuProfileDir, name)}`]
}

export async function startCluster(
  group: ProcessGroup,
  o: ClusterOptions,
  onPostgres: (p: PostgresInstance) => void,
): Promise<Cluster> {
  const c = o.maxConcurrency
  const services = o.services ?? SERVICES
  // Each open branch holds a connection, and COMMIT PREPARED takes another: maxOpen above the
  // concurrency, the pool above maxOpen (README, Postgres helper).
  const maxOpen = Math.max(64, 2 * c)
  const appPoolMax = maxOpen + 16
  // Prepared transactions are a cluster-wide pool: up to 3 per transfer in flight (one per
  // database), with room to spare.
  const maxPreparedTransactions = 4 * c + 16
  // An app pool per service, three driver pools for mode (b), and a few for setup and checks.
  const maxConnections =
    services.length * appPoolMax + 3 * c + 20 + (o.pgStoreCoordinator === true ? PG_STORE_CONNECTIONS : 0)
  if (o.cpuProfileDir !== undefined) mkdirSync(o.cpuProfileDir, { recursive: true })

  const pgi = await startPostgres({
    maxPreparedTransactions,
    extraFlags: [
      // Durability is part of what is measured: every COMMIT, PREPARE TRANSACTION and COMMIT
      // PREPARED waits for its WAL flush, as in production.
      '-c',
      'fsync=on',
      '-c',
      'synchronous_commit=on',
      '-c',
      'full_page_writes=on',
      '-c',
      `max_connections=${maxConnections}`,
    ],
  })
  onPostgres(pgi)
  // Backends are forked by the postmaster and inherit its affinity; the helper processes that
  // already run (checkpointer, WAL writer, ...) are pinned one by one.
  if (o.postgresCpu !== undefined) {
    const pm = postmasterPid(pgi)
    for (const pid of [pm, ...childPids(pm)]) pinPid(o.taskset, pid, o.postgresCpu)
  }

  let initialTotal = 0n
  for (const name of services) {
    await pgi.createDatabase(name)
    const client = new pg.Client({ connectionString: pgi.connectionString(name) })
    await client.connect()
    try {
      await client.query('CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL)')
      await client.query('INSERT INTO accounts SELECT g, $1 FROM generate_series(1, $2) g', [
        o.initialBalance,
        o.accounts,
      ])
      await client.query('VACUUM ANALYZE accounts')
      const r = await client.query<{ s: string }>('SELECT sum(balance)::text AS s FROM accounts')
      initialTotal += BigInt(r.rows[0]?.s ?? '0')
    } finally {
      await client.end()
    }
  }

  const apps: AppProc[] = []
  for (const name of services) {
    const svc = group.start(
      `app ${name}`,
      o.nodeCpu,
      process.execPath,
      [...profileFlags(o, `app-${name}`), '--import', 'tsx', join(o.root, 'bench', o.appScript ?? 'tx-app.ts')],
      {
        cwd: o.root,
        env: childEnv({
          DATABASE_URL: pgi.connectionString(name),
          SERVICE: name,
          POOL_MAX: String(appPoolMax),
          MAX_OPEN: String(maxOpen),
        }),
      },
    )
    const l = await firstJsonLine(svc, isListening)
    apps.push({ name, port: l.port, pid: svc.pid })
  }

  const participants: SidecarProc[] = []
  for (const app of apps) participants.push(await startSidecar(group, o, app.name, app.port, ''))
  const addresses = participants.map((p) => `  ${p.name}: {address: "127.0.0.1:${p.ports.ingress}"}`).join('\n')
  // The coordinator's app is the driver, which serves nothing: ingress is never used, the port
  // only has to be valid.
  const coordinatorConfig = `services:\n${addresses}\n${o.coordinatorExtra ?? ''}`
  const coordinator = await startSidecar(group, o, 'coordinator', 9, coordinatorConfig)
  let pgCoordinator: SidecarProc | undefined
  if (o.pgStoreCoordinator === true) {
    // Its own database: the store's tables and WAL traffic are the coordinator's, the apps'
    // databases stay as the other modes see them (the server, its WAL and its disk are shared).
    await pgi.createDatabase(PG_STORE_DATABASE)
    const store = `{kind: postgres, url: ${JSON.stringify(pgi.connectionString(PG_STORE_DATABASE))}, schema: txmesh, instance: ${PG_STORE_INSTANCE}}`
    pgCoordinator = await startSidecar(group, o, 'coordinator', 9, coordinatorConfig, store)
  }

  return {
    pg: pgi,
    apps,
    participants,
    coordinator,
    pgCoordinator,
    sizing: { appPoolMax, maxOpen, maxPreparedTransactions, maxConnections },
    initialTotal,
  }
}

async function startSidecar(
  group: ProcessGroup,
  o: ClusterOptions,
  name: string,
  appPort: number,
  extra: string,
  /** The Postgres store's `store:` value; undefined: the file log in the scratch dir. */
  pgStore?: string,
): Promise<SidecarProc> {
  const store: StoreKind = pgStore === undefined ? 'file' : 'postgres'
  const label = store === 'file' ? name : `${name}-pg`
  const storeDir = join(o.dir, `store-${label}`)
  const file = join(o.dir, `sidecar-${label}.yaml`)
  writeFileSync(
    file,
    [
      `service: ${name === 'coordinator' ? 'driver' : name}`,
      `app: {host: 127.0.0.1, port: ${appPort}}`,
      `store: ${pgStore ?? `{dir: ${JSON.stringify(storeDir)}}`}`,
      'log: {level: warn}',
      'listeners:',
      '  egress: {host: 127.0.0.1, port: 0}',
      '  ingress: {host: 127.0.0.1, port: 0}',
      '  control: {host: 127.0.0.1, port: 0}',
      '  admin: {host: 127.0.0.1, port: 0}',
      // txmesh/pg serves the batch hook: prepare/commit/abort calls that meet share a request.
      ...(name === 'coordinator' ? [] : ['hooks: {batch: /.well-known/txmesh/batch}']),
      extra,
    ].join('\n'),
  )
  const { svc, listening: l } = await startSidecarService(group, `sidecar ${label}`, o.nodeCpu, {
    configFile: file,
    args: ['--egress-port', '0', '--ingress-port', '0', '--control-port', '0', '--admin-port', '0'],
    nodeFlags: profileFlags(o, `sidecar-${label}`),
    cwd: o.root,
    env: childEnv({ TXMESH_MESH_KEY: MESH_KEY }),
  })
  return { name, pid: svc.pid, ports: l.ports, store, storeDir }
}

/** Sets the CPU affinity of every thread of a running process (taskset -a -p). */
export function pinPid(taskset: string | undefined, pid: number, cpu: string): void {
  if (taskset === undefined) throw new Error('pinning needs taskset, which is not on PATH')
  execFileSync(taskset, ['-a', '-p', '-c', cpu, String(pid)], { stdio: ['ignore', 'ignore', 'pipe'] })
}

/** The current CPU affinity of a process as a list ("0-1"). */
export function affinityOf(taskset: string, pid: number): string {
  const out = execFileSync(taskset, ['-c', '-p', String(pid)], { encoding: 'utf8' })
  return out.slice(out.lastIndexOf(':') + 1).trim()
}

// ---- sidecar stats ----

export interface LogStats {
  readonly kind: StoreKind
  readonly appends: number
  /** File log: fsyncs. Postgres store: 0 (it forces writes by committing). */
  readonly fsyncs: number
  /** Postgres store: the Postgres transactions that made batches durable (src/store/pg-log.ts PgLogStats). */
  readonly commits: number
  /** END records (not counted in appends by the Postgres store). */
  readonly ends: number
}

/** What made the log's records durable: a file log's fsyncs, a Postgres store's commits. */
export function forcedWrites(l: LogStats): number {
  return l.kind === 'postgres' ? l.commits : l.fsyncs
}

/** Messages sent batched and the requests that carried them (src/control/batcher.ts). */
export interface BatchStats {
  readonly controlItems: number
  readonly controlBatches: number
  readonly hookItems: number
  readonly hookBatches: number
}

export interface SidecarStats {
  readonly log: LogStats
  readonly batches: BatchStats
  /** 2PC transactions this sidecar coordinates. */
  readonly committed: number
  readonly aborted: number
  readonly active: number
  /** Step transactions (saga, tcc) this sidecar coordinates. */
  readonly steps: {
    readonly committed: number
    readonly aborted: number
    readonly active: number
    readonly stuck: number
  }
}

function num(v: unknown): number {
  return typeof v === 'number' && Number.isFinite(v) ? v : 0
}

/** GET /v1/stats of a sidecar's admin listener. */
export async function sidecarStats(adminPort: number): Promise<SidecarStats> {
  const r = await request(`http://127.0.0.1:${adminPort}/v1/stats`, { headersTimeout: 5_000, bodyTimeout: 5_000 })
  const body: unknown = await r.body.json()
  if (r.statusCode !== 200 || typeof body !== 'object' || body === null) {
    throw new Error(`GET /v1/stats on admin port ${adminPort}: ${r.statusCode} ${JSON.stringify(body).slice(0, 200)}`)
  }
  const o = body as Record<string, unknown>
  const log = (o.log ?? {}) as Record<string, unknown>
  const tx = (o.transactions ?? {}) as Record<string, unknown>
  const st = (o.steps ?? {}) as Record<string, unknown>
  const b = (o.batches ?? {}) as { control?: Record<string, unknown>; hooks?: Record<string, unknown> }
  return {
    log: {
      kind: log.kind === 'postgres' ? 'postgres' : 'file',
      appends: num(log.appends),
      fsyncs: num(log.fsyncs),
      commits: num(log.commits),
      ends: num(log.ends),
    },
    batches: {
      controlItems: num(b.control?.items),
      controlBatches: num(b.control?.batches),
      hookItems: num(b.hooks?.items),
      hookBatches: num(b.hooks?.batches),
    },
    committed: num(tx.committed),
    aborted: num(tx.aborted),
    active: num(tx.active),
    steps: { committed: num(st.committed), aborted: num(st.aborted), active: num(st.active), stuck: num(st.stuck) },
  }
}

// ---- CPU time per process group ----

/** CPU seconds (user + system) of each group, plus /proc/stat for the whole machine. */
export interface CpuSnapshot {
  readonly postgres: number
  readonly apps: number
  readonly participantSidecars: number
  readonly coordinatorSidecar: number
  readonly driver: number
  readonly machine: CpuTimes
}

export type CpuGroup = Exclude<keyof CpuSnapshot, 'machine'>
export const CPU_GROUPS: readonly CpuGroup[] = [
  'postgres',
  'apps',
  'participantSidecars',
  'coordinatorSidecar',
  'driver',
]

/** utime+stime (and, with `children`, cutime+cstime of reaped children) in clock ticks. */
function ticks(pid: number, children: boolean): number {
  let text: string
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'latin1')
  } catch {
    return 0
  }
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ')
  // rest[0] is field 3; utime, stime, cutime, cstime are fields 14-17.
  const f = (i: number): number => Number(rest[i] ?? 0) || 0
  return f(11) + f(12) + (children ? f(13) + f(14) : 0)
}

function postmasterPid(p: PostgresInstance): number {
  const first = readFileSync(join(p.dataDir, 'postmaster.pid'), 'latin1').split('\n')[0] ?? ''
  const pid = Number(first.trim())
  if (!Number.isInteger(pid) || pid <= 0)
    throw new Error(`cannot read the postmaster pid from ${p.dataDir}/postmaster.pid`)
  return pid
}

export function cpuSnapshot(c: Cluster): CpuSnapshot {
  const hz = clockTicksPerSecond()
  const pm = postmasterPid(c.pg)
  // Backends that exited count through the postmaster's cutime/cstime (it reaps them).
  let pgTicks = ticks(pm, true)
  for (const pid of childPids(pm)) pgTicks += ticks(pid, false)
  const sum = (pids: readonly number[]): number => pids.reduce((s, pid) => s + ticks(pid, false), 0) / hz
  const u = process.cpuUsage()
  return {
    postgres: pgTicks / hz,
    apps: sum(c.apps.map((a) => a.pid)),
    participantSidecars: sum(c.participants.map((p) => p.pid)),
    coordinatorSidecar: sum([c.coordinator.pid]),
    driver: (u.user + u.system) / 1e6,
    machine: readCpuTimes(),
  }
}

export interface CpuDelta {
  /** CPU seconds per group over the run. */
  readonly seconds: Readonly<Record<CpuGroup, number>>
  /** Busy CPU seconds of the whole machine (every process and kernel thread: fsync, softirq). */
  readonly machineSeconds: number | undefined
  /** Busy share of all CPUs over the run, %. */
  readonly busyPct: number | undefined
  readonly stealPct: number | undefined
}

export function cpuDelta(before: CpuSnapshot, after: CpuSnapshot): CpuDelta {
  const seconds = {} as Record<CpuGroup, number>
  for (const g of CPU_GROUPS) seconds[g] = Math.max(0, after[g] - before[g])
  const use = cpuUse(before.machine, after.machine, ['cpu'])
  const a = after.machine.get('cpu')
  const b = before.machine.get('cpu')
  let machineSeconds: number | undefined
  if (a !== undefined && b !== undefined) {
    // user nice system idle iowait irq softirq steal: busy = all but idle, iowait and steal.
    const d = (i: number): number => (a[i] ?? 0) - (b[i] ?? 0)
    machineSeconds = (d(0) + d(1) + d(2) + d(5) + d(6)) / clockTicksPerSecond()
  }
  return { seconds, machineSeconds, busyPct: use?.busyPct, stealPct: use?.stealPct }
}

// ---- consistency ----

export interface Consistency {
  readonly total: bigint
  readonly expectedTotal: bigint
  readonly preparedLeft: number
  readonly ok: boolean
}

/** Balances must still sum to the seeded total (every transfer nets 0) and no prepared rows remain. */
export async function checkConsistency(c: Cluster): Promise<Consistency> {
  let total = 0n
  let prepared = 0
  for (const { name } of c.apps) {
    const client = new pg.Client({ connectionString: c.pg.connectionString(name) })
    await client.connect()
    try {
      total += BigInt(
        (await client.query<{ s: string }>('SELECT sum(balance)::text AS s FROM accounts')).rows[0]?.s ?? '0',
      )
      prepared += Number(
        (
          await client.query<{ n: string }>(
            'SELECT count(*) AS n FROM pg_prepared_xacts WHERE database = current_database()',
          )
        ).rows[0]?.n ?? 0,
      )
    } finally {
      await client.end()
    }
  }
  return {
    total,
    expectedTotal: c.initialTotal,
    preparedLeft: prepared,
    ok: total === c.initialTotal && prepared === 0,
  }
}
