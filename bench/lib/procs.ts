// Child processes of the benchmark and what /proc says about them: spawning (optionally pinned
// to a CPU with taskset), waiting for a service's "listening" JSON line, CPU time and RSS, and
// cleanup of everything started, also on errors and signals.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { accessSync, constants, readFileSync, readdirSync } from 'node:fs'
import { delimiter, join } from 'node:path'
import { createInterface } from 'node:readline'
import { accepts } from '../../harness/ports.js'
import { spawnSidecar, type SidecarListening, type SpawnSidecarOptions } from '../../harness/sidecar.js'

const TAIL_BYTES = 8 * 1024

/** Absolute path of an executable found on PATH (or at one of `extra`), else undefined. */
export function findExecutable(name: string, extra: readonly string[] = []): string | undefined {
  const dirs = (process.env.PATH ?? '').split(delimiter).filter((d) => d !== '')
  for (const candidate of [...dirs.map((d) => join(d, name)), ...extra]) {
    try {
      accessSync(candidate, constants.X_OK)
      return candidate
    } catch {
      // not here
    }
  }
  return undefined
}

/** How commands are pinned: `taskset -c CPU cmd args` when taskset exists and a CPU is given. */
export class Pinner {
  constructor(readonly taskset: string | undefined) {}

  wrap(cpu: string | undefined, cmd: string, args: readonly string[]): { cmd: string; args: string[] } {
    if (this.taskset === undefined || cpu === undefined) return { cmd, args: [...args] }
    // taskset execs the command: the child's pid is the command's own pid.
    return { cmd: this.taskset, args: ['-c', cpu, cmd, ...args] }
  }
}

export interface StartOptions {
  readonly cwd?: string
  readonly env?: NodeJS.ProcessEnv
  /** A short-lived command (a load run): forgotten once it exits. */
  readonly transient?: boolean
}

/** One started child process with the tail of its output kept for error messages. */
export class Service {
  private out = ''
  readonly exited: Promise<number | null>
  private exitCode: number | null | undefined

  constructor(
    readonly name: string,
    readonly child: ChildProcess,
  ) {
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.exitCode = code ?? (signal !== null ? -1 : null)
        resolve(this.exitCode)
      })
      child.once('error', (err) => {
        this.append(`spawn error: ${err.message}\n`)
        this.exitCode = -1
        resolve(-1)
      })
    })
    child.stderr?.on('data', (chunk: Buffer) => this.append(chunk.toString('utf8')))
  }

  get pid(): number {
    if (this.child.pid === undefined) throw new Error(`${this.name} has no pid (did it start?)`)
    return this.child.pid
  }

  get alive(): boolean {
    return this.exitCode === undefined && this.child.pid !== undefined
  }

  append(text: string): void {
    this.out = (this.out + text).slice(-TAIL_BYTES)
  }

  tail(): string {
    return this.out.trim()
  }
}

/** Everything the benchmark started; `stopAll` ends them (SIGTERM, then SIGKILL). */
export class ProcessGroup {
  private readonly services: Service[] = []
  /** Processes started indirectly (nginx's worker): killed by pid if still there at the end. */
  private readonly adopted = new Map<number, string>()

  constructor(private readonly pinner: Pinner) {}

  start(name: string, cpu: string | undefined, cmd: string, args: readonly string[], o: StartOptions = {}): Service {
    const w = this.pinner.wrap(cpu, cmd, args)
    const child = spawn(w.cmd, w.args, {
      cwd: o.cwd ?? process.cwd(),
      env: o.env ?? process.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    const svc = new Service(name, child)
    this.services.push(svc)
    if (o.transient === true) {
      void svc.exited.then(() => {
        const i = this.services.indexOf(svc)
        if (i >= 0) this.services.splice(i, 1)
      })
    }
    return svc
  }

  /** Names and stderr tails of the long-running services that wrote anything. */
  outputs(): { name: string; tail: string }[] {
    return this.services.map((s) => ({ name: s.name, tail: s.tail() })).filter((o) => o.tail !== '')
  }

  /** Remembers a process started by one of ours, to be killed by pid if its parent left it. */
  adopt(pid: number, comm: string): void {
    this.adopted.set(pid, comm)
  }

  async stopAll(graceMs = 3_000): Promise<void> {
    const live = this.services.filter((s) => s.alive)
    for (const s of live) s.child.kill('SIGTERM')
    await Promise.all(
      live.map(async (s) => {
        let timer: NodeJS.Timeout | undefined
        const killed = new Promise<void>((resolve) => {
          timer = setTimeout(() => {
            if (s.alive) s.child.kill('SIGKILL')
            resolve()
          }, graceMs)
        })
        await Promise.race([s.exited.then(() => undefined), killed])
        clearTimeout(timer)
        await s.exited
      }),
    )
    this.killAdoptedSync()
  }

  /** Last resort from a synchronous `exit` handler. */
  killAllSync(): void {
    for (const s of this.services) if (s.alive) s.child.kill('SIGKILL')
    this.killAdoptedSync()
  }

  private killAdoptedSync(): void {
    for (const [pid, comm] of this.adopted) {
      // Only if the pid still names the process we adopted (pids get reused).
      if (procStat(pid)?.comm === comm) {
        try {
          process.kill(pid, 'SIGKILL')
        } catch {
          // already gone
        }
      }
    }
    this.adopted.clear()
  }
}

/**
 * Resolves with the first stdout line of `svc` that parses as JSON and passes `check`; rejects if
 * the process exits first or nothing comes within `timeoutMs`. Later output goes to the tail.
 */
export function firstJsonLine<T>(svc: Service, check: (v: unknown) => v is T, timeoutMs = 15_000): Promise<T> {
  const stdout = svc.child.stdout
  if (stdout === null) return Promise.reject(new Error(`${svc.name}: no stdout pipe`))
  return new Promise<T>((resolve, reject) => {
    let settled = false
    const rl = createInterface({ input: stdout })
    const settle = (fn: () => void): void => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      fn()
    }
    const timer = setTimeout(
      () => settle(() => reject(new Error(`${svc.name}: no listening line within ${timeoutMs} ms\n${svc.tail()}`))),
      timeoutMs,
    )
    rl.on('line', (line) => {
      if (settled) {
        svc.append(line + '\n')
        return
      }
      let v: unknown
      try {
        v = JSON.parse(line)
      } catch {
        svc.append(line + '\n')
        return
      }
      if (check(v)) settle(() => resolve(v))
      else svc.append(line + '\n')
    })
    void svc.exited.then((code) =>
      settle(() => reject(new Error(`${svc.name} exited (code ${String(code)}) before listening\n${svc.tail()}`))),
    )
  })
}

/** What a benchmark says about a sidecar it starts (harness/sidecar.ts does the rest). */
export type BenchSidecarOptions = Pick<SpawnSidecarOptions, 'configFile' | 'args' | 'nodeFlags' | 'env' | 'cwd'>

/**
 * Starts a built sidecar as one of the group's services (pinned to `cpu` when given) and resolves
 * with it and its listening line; its stderr and any other stdout go to the service's tail.
 */
export async function startSidecarService(
  group: ProcessGroup,
  name: string,
  cpu: string | undefined,
  o: BenchSidecarOptions,
  timeoutMs = 15_000,
): Promise<{ svc: Service; listening: SidecarListening }> {
  let svc: Service | undefined
  const s = await spawnSidecar({
    ...o,
    name,
    startTimeoutMs: timeoutMs,
    launch: (cmd, args, lo) => {
      svc = group.start(name, cpu, cmd, args, { env: lo.env, ...(lo.cwd !== undefined ? { cwd: lo.cwd } : {}) })
      return svc.child
    },
    describe: () => svc?.tail() ?? '',
    onStdoutLine: (line) => svc?.append(line + '\n'),
  })
  if (svc === undefined) throw new Error(`${name}: not started`)
  return { svc, listening: s.listening }
}

export interface ProcStat {
  readonly comm: string
  readonly ppid: number
  /** utime + stime of all threads, in clock ticks. */
  readonly cpuTicks: number
}

/** Parses /proc/PID/stat; undefined if the process is gone. */
export function procStat(pid: number): ProcStat | undefined {
  let text: string
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'latin1')
  } catch {
    return undefined
  }
  // "pid (comm) state ppid ..."; comm may hold spaces and parentheses: split at the last ')'.
  const open = text.indexOf('(')
  const close = text.lastIndexOf(')')
  const rest = text.slice(close + 2).split(' ')
  // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
  const ppid = Number(rest[1])
  const utime = Number(rest[11])
  const stime = Number(rest[12])
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) return undefined
  return { comm: text.slice(open + 1, close), ppid, cpuTicks: utime + stime }
}

let clkTck: number | undefined
/** Clock ticks per second of /proc times (USER_HZ). */
export function clockTicksPerSecond(): number {
  if (clkTck === undefined) {
    try {
      clkTck = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim())
    } catch {
      clkTck = NaN
    }
    if (!Number.isFinite(clkTck) || clkTck <= 0) clkTck = 100
  }
  return clkTck
}

/** CPU seconds (user + system, all threads) used so far by `pid`. */
export function cpuSeconds(pid: number): number {
  const s = procStat(pid)
  if (s === undefined) throw new Error(`process ${pid} is gone`)
  return s.cpuTicks / clockTicksPerSecond()
}

/** Resident set size in bytes from /proc/PID/status, undefined if unreadable. */
export function rssBytes(pid: number): number | undefined {
  try {
    const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'latin1'))
    return m?.[1] !== undefined ? Number(m[1]) * 1024 : undefined
  } catch {
    return undefined
  }
}

/** Pids whose parent is `ppid` (scans /proc; works without CONFIG_PROC_CHILDREN). */
export function childPids(ppid: number): number[] {
  const out: number[] = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    const s = procStat(Number(entry))
    if (s !== undefined && s.ppid === ppid) out.push(Number(entry))
  }
  return out
}

/** Polls until 127.0.0.1:port accepts a TCP connection; rejects if `svc` exits or on timeout. */
export async function waitForPort(port: number, svc: Service, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (!svc.alive) throw new Error(`${svc.name} exited before listening on ${port}\n${svc.tail()}`)
    if (await accepts(port)) return
    if (Date.now() > deadline)
      throw new Error(`${svc.name}: port ${port} not accepting within ${timeoutMs} ms\n${svc.tail()}`)
    await sleep(50)
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

/** Runs a command to completion and returns its stdout (stderr in the error if it fails). */
export function runToEnd(svc: Service): Promise<string> {
  const chunks: Buffer[] = []
  svc.child.stdout?.on('data', (c: Buffer) => chunks.push(c))
  return svc.exited.then((code) => {
    const stdout = Buffer.concat(chunks).toString('utf8')
    if (code !== 0) throw new Error(`${svc.name} failed (exit ${String(code)})\n${svc.tail()}\n${stdout.slice(-2000)}`)
    return stdout
  })
}

/** Per-CPU jiffies from /proc/stat: key "cpu" (all) or "cpuN". */
export type CpuTimes = ReadonlyMap<string, readonly number[]>

export function readCpuTimes(): CpuTimes {
  const out = new Map<string, number[]>()
  for (const line of readFileSync('/proc/stat', 'latin1').split('\n')) {
    if (!line.startsWith('cpu')) continue
    const [name, ...fields] = line.trim().split(/\s+/)
    if (name !== undefined) out.set(name, fields.slice(0, 8).map(Number))
  }
  return out
}

/** "0", "1,3", "2-3" -> /proc/stat keys; undefined -> the "cpu" total line. */
export function cpuKeys(list: string | undefined): string[] {
  if (list === undefined) return ['cpu']
  const keys: string[] = []
  for (const part of list.split(',')) {
    const [a, b] = part.split('-').map((x) => Number(x.trim()))
    if (a === undefined || !Number.isInteger(a)) continue
    for (let i = a; i <= (b !== undefined && Number.isInteger(b) ? b : a); i++) keys.push(`cpu${i}`)
  }
  return keys
}

export interface CpuUse {
  /** Share of the interval the CPUs ran anything (user, system, irq, softirq), in %. */
  readonly busyPct: number
  /** Share of the interval the hypervisor gave the CPUs to someone else, in %. */
  readonly stealPct: number
}

/** Busy and steal percentages of `keys` between two /proc/stat readings. */
export function cpuUse(before: CpuTimes, after: CpuTimes, keys: readonly string[]): CpuUse | undefined {
  let busy = 0
  let steal = 0
  let total = 0
  for (const k of keys) {
    const a = before.get(k)
    const b = after.get(k)
    if (a === undefined || b === undefined) return undefined
    // user nice system idle iowait irq softirq steal
    const d = b.map((v, i) => v - (a[i] ?? 0))
    const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, st = 0] = d
    busy += user + nice + system + irq + softirq
    steal += st
    total += user + nice + system + idle + iowait + irq + softirq + st
  }
  return total > 0 ? { busyPct: (100 * busy) / total, stealPct: (100 * steal) / total } : undefined
}
