// Footprint benchmark (the `footprint` part of `npm run bench`): what one sidecar costs at rest
// and holding many open transactions, and how fast it comes back.
//
//   BENCH_PART=footprint npm run bench
//
// Measured, each against its target:
//   ready      spawn -> the listening line -> GET /readyz 200, median of BENCH_FP_STARTS starts
//   idle RSS   a sidecar that served nothing, BENCH_FP_IDLE_SECONDS after it was ready (V8
//              shrinks its young generation a few seconds into idleness: this is the steady state)
//   in-flight  a coordinator sidecar and a participant sidecar (in front of an app that answers
//              200 to every call and hook): BENCH_FP_INFLIGHT transactions begun on the admin API,
//              each enlisting the participant by one call through egress, all held open; the RSS
//              of both sidecars with every one open and the longest event-loop stall of each over
//              the whole phase (TXMESH_LOOP_MONITOR=1, /v1/stats `eventLoop`); then all committed
//   replay     FileLog.open of a log of BENCH_FP_REPLAY records (bench/lib/log-replay.ts), in a
//              child process started with the sidecar's V8 flags
//
// Environment:
//   BENCH_FP_STARTS        sidecar starts timed (default 5)
//   BENCH_FP_IDLE_SECONDS  idle time before the RSS reading (default 15)
//   BENCH_FP_INFLIGHT      open transactions (default 10000 = LIMITS.maxActiveTransactions)
//   BENCH_FP_CONCURRENCY   concurrent begin/enlist/commit requests while filling (default 64)
//   BENCH_FP_REPLAY        log records replayed (default 1000000)
// Output: a text table on stdout and bench/results/footprint-latest.json; exit 1 if a check fails
// to run (a target missed is reported, not an error).
import { execFileSync } from 'node:child_process'
import { mkdirSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { request, Agent } from 'undici'
import { SIDECAR_NODE_FLAGS } from '../src/runtime.js'
import type { ReplayResult } from './lib/log-replay.js'
import { rssBytes, sleep, startSidecarService, type Service } from './lib/procs.js'
import { intEnv, median } from './lib/tx-measure.js'
import type { TxPartContext } from './tx.js'

const MESH_KEY = 'footprint-bench-mesh-key-0123456789'
const READY_POLL_MS = 5
const READY_POLLS = 2_000
const MB = 1024 * 1024

const TARGETS = { readyMs: 300, idleRssMb: 60, inflightRssMb: 150, stallMs: 50, replayMs: 5_000 }

interface Ports {
  egress: number
  ingress: number
  control: number
  admin: number
}
interface Sidecar {
  svc: Service
  ports: Ports
  readyMs: number
}

interface LoopDelay {
  maxMs: number
  p99Ms: number
}

function yaml(name: string, storeDir: string, appPort: number, extra = ''): string {
  return [
    `service: ${name}`,
    `store: {dir: ${JSON.stringify(storeDir)}}`,
    `app: {host: 127.0.0.1, port: ${appPort}}`,
    'listeners: {egress: {host: 127.0.0.1, port: 0}, ingress: {host: 127.0.0.1, port: 0}, control: {host: 127.0.0.1, port: 0}, admin: {host: 127.0.0.1, port: 0}}',
    'log: {level: warn}',
    extra,
  ].join('\n')
}

async function startSidecar(
  ctx: TxPartContext,
  name: string,
  config: string,
  env: Record<string, string> = {},
): Promise<Sidecar> {
  const file = join(ctx.dir, `${name}.yaml`)
  writeFileSync(file, config)
  const t0 = performance.now()
  const { svc, listening } = await startSidecarService(ctx.group, name, undefined, {
    configFile: file,
    cwd: ctx.root,
    env: { ...process.env, TXMESH_MESH_KEY: MESH_KEY, ...env },
  })
  const ports = listening.ports
  for (let i = 0; i < READY_POLLS; i++) {
    const r = await request(`http://127.0.0.1:${ports.admin}/readyz`)
    await r.body.dump()
    if (r.statusCode === 200) return { svc, ports, readyMs: performance.now() - t0 }
    await sleep(READY_POLL_MS)
  }
  throw new Error(`${name} never became ready`)
}

async function stop(s: Sidecar): Promise<void> {
  s.svc.child.kill('SIGTERM')
  await s.svc.exited
}

async function loopDelay(adminPort: number): Promise<LoopDelay> {
  const r = await request(`http://127.0.0.1:${adminPort}/v1/stats`)
  const body = (await r.body.json()) as { eventLoop?: LoopDelay }
  if (body.eventLoop === undefined) throw new Error('the sidecar reports no eventLoop (TXMESH_LOOP_MONITOR=1 missing?)')
  return body.eventLoop
}

/** Runs `fn(i)` for i in [0, n) with at most `concurrency` at once. */
async function pool(n: number, concurrency: number, fn: (i: number) => Promise<void>): Promise<void> {
  let next = 0
  await Promise.all(
    Array.from({ length: Math.min(concurrency, n) }, async () => {
      while (next < n) await fn(next++)
    }),
  )
}

const mb = (pid: number): number => (rssBytes(pid) ?? NaN) / MB
const verdict = (ok: boolean): string => (ok ? 'PASS' : 'MISS')

export async function runFootprintPart(ctx: TxPartContext): Promise<number> {
  const starts = intEnv('BENCH_FP_STARTS', 5, 1)
  const idleSeconds = intEnv('BENCH_FP_IDLE_SECONDS', 15, 0)
  const inflight = intEnv('BENCH_FP_INFLIGHT', 10_000, 1)
  const concurrency = intEnv('BENCH_FP_CONCURRENCY', 64, 1)
  const replayRecords = intEnv('BENCH_FP_REPLAY', 1_000_000, 1)
  console.log(
    `txmesh footprint benchmark: node ${process.version}; ${starts} starts, ${idleSeconds}s idle, ${inflight} in-flight transactions, ${replayRecords} log records`,
  )

  // Ready time and idle RSS: fresh sidecars with empty logs, one at a time.
  const readies: number[] = []
  let idleRss = NaN
  let readyRss = NaN
  for (let i = 0; i < starts; i++) {
    const s = await startSidecar(ctx, `idle-${i}`, yaml(`idle${i}`, join(ctx.dir, `store-idle-${i}`), 9))
    readies.push(s.readyMs)
    if (i === starts - 1) {
      readyRss = mb(s.svc.pid)
      await sleep(idleSeconds * 1000)
      idleRss = mb(s.svc.pid)
    }
    await stop(s)
  }
  const readyMs = median(readies) ?? NaN

  // In-flight: an app that agrees to everything, its sidecar, and a coordinator sidecar.
  const app = createServer((req, res) => {
    req.resume()
    req.on('end', () => res.writeHead(200, { 'content-length': '0' }).end())
  })
  await new Promise<void>((r) => app.listen(0, '127.0.0.1', r))
  ctx.onCleanup(() => new Promise<void>((r) => app.close(() => r())))
  const appPort = (app.address() as AddressInfo).port
  const loopEnv = { TXMESH_LOOP_MONITOR: '1' }
  const part = await startSidecar(
    ctx,
    'participant',
    yaml('bank', join(ctx.dir, 'store-participant'), appPort),
    loopEnv,
  )
  const coord = await startSidecar(
    ctx,
    'coordinator',
    yaml(
      'teller',
      join(ctx.dir, 'store-coordinator'),
      9,
      `services: {bank: {address: "127.0.0.1:${part.ports.ingress}"}}`,
    ),
    loopEnv,
  )
  const agent = new Agent({ connections: concurrency })
  const admin = `http://127.0.0.1:${coord.ports.admin}`
  const rssBefore = { coordinator: mb(coord.svc.pid), participant: mb(part.svc.pid) }
  await loopDelay(coord.ports.admin)
  await loopDelay(part.ports.admin)
  const ids: string[] = new Array<string>(inflight)
  const tFill = performance.now()
  await pool(inflight, concurrency, async (i) => {
    const b = await request(`${admin}/v1/transactions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ mode: '2pc', timeoutMs: 600_000 }),
      dispatcher: agent,
    })
    if (b.statusCode !== 201) throw new Error(`begin ${i}: HTTP ${b.statusCode} ${await b.body.text()}`)
    const { id, context } = (await b.body.json()) as { id: string; context: string }
    ids[i] = id
    const c = await request(`http://127.0.0.1:${coord.ports.egress}/`, {
      method: 'POST',
      headers: { host: 'bank', 'txmesh-context': context, 'content-length': '0' },
      dispatcher: agent,
    }).catch((err: unknown) => {
      throw new Error(`call ${i}: ${String(err)}`)
    })
    await c.body.dump()
    if (c.statusCode !== 200) throw new Error(`call ${i}: HTTP ${c.statusCode}`)
  })
  const fillSeconds = (performance.now() - tFill) / 1000
  await sleep(1_000)
  const statsOpen = (await (await request(`${admin}/v1/stats`)).body.json()) as { transactions?: { active?: number } }
  const rssOpen = { coordinator: mb(coord.svc.pid), participant: mb(part.svc.pid) }
  let committed = 0
  const tCommit = performance.now()
  await pool(inflight, concurrency, async (i) => {
    const r = await request(`${admin}/v1/transactions/${ids[i]}/commit`, { method: 'POST', dispatcher: agent })
    const body = (await r.body.json()) as { outcome?: string }
    if (body.outcome === 'committed') committed++
  })
  const commitSeconds = (performance.now() - tCommit) / 1000
  const stall = { coordinator: await loopDelay(coord.ports.admin), participant: await loopDelay(part.ports.admin) }
  await agent.close()
  await stop(coord)
  await stop(part)

  // In a child with the sidecar's V8 flags: what a restarting sidecar pays.
  const replayOut = execFileSync(
    process.execPath,
    [
      ...SIDECAR_NODE_FLAGS,
      '--import',
      'tsx',
      join(ctx.root, 'bench/lib/log-replay.ts'),
      ctx.dir,
      String(replayRecords),
    ],
    {
      cwd: ctx.root,
      encoding: 'utf8',
      maxBuffer: 1024 * 1024,
    },
  )
  const replay = JSON.parse(replayOut) as ReplayResult

  const active = statsOpen.transactions?.active ?? 0
  const maxStall = Math.max(stall.coordinator.maxMs, stall.participant.maxMs)
  const maxRss = Math.max(rssOpen.coordinator, rssOpen.participant)
  const rows: [string, string, string, string][] = [
    [
      'ready (spawn -> /readyz 200)',
      `${readyMs.toFixed(0)} ms (median of ${starts}: ${readies.map((r) => r.toFixed(0)).join(', ')})`,
      `≤ ${TARGETS.readyMs} ms`,
      verdict(readyMs <= TARGETS.readyMs),
    ],
    [
      'idle RSS',
      `${idleRss.toFixed(1)} MB (at ready: ${readyRss.toFixed(1)} MB)`,
      `≤ ${TARGETS.idleRssMb} MB`,
      verdict(idleRss <= TARGETS.idleRssMb),
    ],
    [
      `RSS with ${active} open transactions`,
      `coordinator ${rssOpen.coordinator.toFixed(1)} MB (idle ${rssBefore.coordinator.toFixed(1)}), participant ${rssOpen.participant.toFixed(1)} MB (idle ${rssBefore.participant.toFixed(1)})`,
      `≤ ${TARGETS.inflightRssMb} MB`,
      verdict(active >= inflight && maxRss <= TARGETS.inflightRssMb),
    ],
    [
      'longest event-loop stall',
      `coordinator ${stall.coordinator.maxMs} ms (p99 ${stall.coordinator.p99Ms}), participant ${stall.participant.maxMs} ms (p99 ${stall.participant.p99Ms})`,
      `≤ ${TARGETS.stallMs} ms`,
      verdict(maxStall <= TARGETS.stallMs),
    ],
    [
      'fill / commit',
      `${inflight} begun+enlisted in ${fillSeconds.toFixed(1)} s, ${committed} committed in ${commitSeconds.toFixed(1)} s`,
      `all ${inflight} committed`,
      verdict(committed === inflight),
    ],
    [
      `replay of ${replayRecords} log records`,
      `${replay.replayMs.toFixed(0)} ms (${replay.replayed} read, heap +${replay.heapMiB.toFixed(0)} MiB)`,
      `< ${TARGETS.replayMs} ms`,
      verdict(replay.replayMs < TARGETS.replayMs),
    ],
  ]
  const w0 = Math.max(...rows.map((r) => r[0].length))
  const w1 = Math.max(...rows.map((r) => r[1].length))
  console.log('')
  for (const r of rows) console.log(`${r[0].padEnd(w0)}  ${r[1].padEnd(w1)}  ${r[2].padEnd(9)}  ${r[3]}`)
  const dir = join(ctx.root, 'bench', 'results')
  mkdirSync(dir, { recursive: true })
  const json = {
    node: process.version,
    readyMs,
    readies,
    idleRssMb: idleRss,
    readyRssMb: readyRss,
    rssOpen,
    rssBefore,
    active,
    stall,
    fillSeconds,
    committed,
    commitSeconds,
    replay,
    targets: TARGETS,
  }
  writeFileSync(join(dir, 'footprint-latest.json'), JSON.stringify(json, null, 2) + '\n')
  console.log(`\nJSON: ${join(dir, 'footprint-latest.json')}`)
  return committed === inflight ? 0 : 1
}
