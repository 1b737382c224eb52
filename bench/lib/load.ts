// Load generators: wrk (preferred; latencies in µs through a Lua `done` hook) or autocannon (a
// Node fallback; its latencies have 1 ms resolution). Each run is a child process pinned to the
// load generator's CPU.
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { createRequire } from 'node:module'
import { findExecutable, runToEnd, type ProcessGroup } from './procs.js'

export interface LoadResult {
  /** Responses completed. */
  readonly requests: number
  readonly seconds: number
  readonly rps: number
  readonly p50Us: number
  readonly p99Us: number
  readonly maxUs: number
  /** Responses with status >= 400 (wrk) / outside 2xx (autocannon). */
  readonly non2xx: number
  /** Socket errors: connect, read, write, timeouts. */
  readonly errors: number
}

export interface LoadGenerator {
  readonly name: 'wrk' | 'autocannon'
  readonly detail: string
  /** Latency resolution in µs (wrk 1, autocannon 1000). */
  readonly resolutionUs: number
  run(url: string, connections: number, seconds: number): Promise<LoadResult>
}

const here = dirname(fileURLToPath(import.meta.url))
const WRK_SCRIPT = join(here, 'wrk-report.lua')
const WRK_MARK = 'WRKJSON '

interface WrkJson {
  requests: number
  duration_us: number
  connect: number
  read: number
  write: number
  status: number
  timeout: number
  p50: number
  p99: number
  max: number
}

function isWrkJson(v: unknown): v is WrkJson {
  if (typeof v !== 'object' || v === null) return false
  const o = v as Record<string, unknown>
  return ['requests', 'duration_us', 'connect', 'read', 'write', 'status', 'timeout', 'p50', 'p99', 'max'].every(
    (k) => typeof o[k] === 'number',
  )
}

class Wrk implements LoadGenerator {
  readonly name = 'wrk'
  readonly resolutionUs = 1
  constructor(
    private readonly bin: string,
    private readonly group: ProcessGroup,
    private readonly cpu: string | undefined,
    readonly detail: string,
  ) {}

  async run(url: string, connections: number, seconds: number): Promise<LoadResult> {
    const args = ['-t1', `-c${connections}`, `-d${seconds}s`, '--timeout', '5s', '-s', WRK_SCRIPT, url]
    const out = await runToEnd(this.group.start(`wrk c=${connections}`, this.cpu, this.bin, args, { transient: true }))
    const line = out.split('\n').find((l) => l.startsWith(WRK_MARK))
    if (line === undefined) throw new Error(`wrk printed no ${WRK_MARK.trim()} line:\n${out}`)
    const j: unknown = JSON.parse(line.slice(WRK_MARK.length))
    if (!isWrkJson(j)) throw new Error(`unexpected wrk report: ${line}`)
    const secs = j.duration_us / 1e6
    return {
      requests: j.requests,
      seconds: secs,
      rps: secs > 0 ? j.requests / secs : 0,
      p50Us: j.p50,
      p99Us: j.p99,
      maxUs: j.max,
      non2xx: j.status,
      errors: j.connect + j.read + j.write + j.timeout,
    }
  }
}

interface AutocannonJson {
  duration: number
  errors: number
  timeouts: number
  non2xx: number
  latency: { p50: number; p99: number; max: number }
  requests: { total: number }
}

function isAutocannonJson(v: unknown): v is AutocannonJson {
  if (typeof v !== 'object' || v === null) return false
  const o = v as Record<string, unknown>
  const lat = o.latency as Record<string, unknown> | undefined
  const req = o.requests as Record<string, unknown> | undefined
  return (
    typeof o.duration === 'number' &&
    typeof o.errors === 'number' &&
    typeof o.timeouts === 'number' &&
    typeof o.non2xx === 'number' &&
    typeof lat?.p50 === 'number' &&
    typeof lat.p99 === 'number' &&
    typeof lat.max === 'number' &&
    typeof req?.total === 'number'
  )
}

class Autocannon implements LoadGenerator {
  readonly name = 'autocannon'
  readonly resolutionUs = 1000
  constructor(
    private readonly script: string,
    private readonly group: ProcessGroup,
    private readonly cpu: string | undefined,
    readonly detail: string,
  ) {}

  async run(url: string, connections: number, seconds: number): Promise<LoadResult> {
    const args = [this.script, '--json', '--no-progress', '-c', String(connections), '-d', String(seconds), url]
    const out = await runToEnd(
      this.group.start(`autocannon c=${connections}`, this.cpu, process.execPath, args, { transient: true }),
    )
    const j: unknown = JSON.parse(out)
    if (!isAutocannonJson(j)) throw new Error(`unexpected autocannon report: ${out.slice(0, 500)}`)
    return {
      requests: j.requests.total,
      seconds: j.duration,
      rps: j.duration > 0 ? j.requests.total / j.duration : 0,
      p50Us: j.latency.p50 * 1000,
      p99Us: j.latency.p99 * 1000,
      maxUs: j.latency.max * 1000,
      non2xx: j.non2xx,
      errors: j.errors + j.timeouts,
    }
  }
}

/**
 * wrk when installed (BENCH_LOADGEN=autocannon forces the fallback), else autocannon from
 * node_modules.
 */
export function pickLoadGenerator(
  group: ProcessGroup,
  cpu: string | undefined,
  prefer: string | undefined,
): LoadGenerator {
  const wrk = prefer === 'autocannon' ? undefined : findExecutable('wrk')
  if (wrk !== undefined) return new Wrk(wrk, group, cpu, `${wrk} -t1 (1 thread)`)
  if (prefer === 'wrk') throw new Error('BENCH_LOADGEN=wrk but wrk is not on PATH')
  const require = createRequire(import.meta.url)
  const script = join(dirname(require.resolve('autocannon/package.json')), 'autocannon.js')
  return new Autocannon(script, group, cpu, `autocannon (node ${process.version}, 1 thread; latency resolution 1 ms)`)
}
