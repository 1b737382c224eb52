// The one way tests, benchmarks, the torture and the demo run a built sidecar as a child process:
// `node SIDECAR_NODE_FLAGS [nodeFlags] dist/cli/index.js sidecar --config FILE [args]`, then the
// wait for the JSON line it prints on stdout once every listener is bound (src/cli/sidecar.ts).
// Its logs go to stderr; the listening line is all it writes to stdout.
import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { SIDECAR_NODE_FLAGS } from '../src/runtime.js'
import type { Ports } from '../src/sidecar.js'

/** The built CLI (npm run build). */
export const CLI = join(import.meta.dirname, '../dist/cli/index.js')

/** The line a sidecar prints on stdout once it listens. */
export interface SidecarListening {
  readonly event: 'listening'
  readonly service: string
  readonly pid: number
  readonly ports: Ports
}

export interface Exit {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
}

/** What a launcher is asked to start the command with. */
export interface LaunchOptions {
  readonly cwd: string | undefined
  readonly env: NodeJS.ProcessEnv
  readonly stdio: StdioOptions
}

/** Starts a command like child_process.spawn; bench passes its ProcessGroup's (pinning, tracking). */
export type Launch = (cmd: string, args: string[], options: LaunchOptions) => ChildProcess

const spawnChild: Launch = (cmd, args, o) =>
  spawn(cmd, args, { stdio: o.stdio, env: o.env, ...(o.cwd !== undefined ? { cwd: o.cwd } : {}) })

export interface SpawnSidecarOptions {
  /** The config file, written by the caller. */
  readonly configFile: string
  /** CLI arguments after `--config FILE` (port overrides and the like). */
  readonly args?: readonly string[]
  /** Node flags after SIDECAR_NODE_FLAGS (--cpu-prof ...). */
  readonly nodeFlags?: readonly string[]
  /** The child's whole environment (default: this process's). */
  readonly env?: NodeJS.ProcessEnv
  readonly cwd?: string
  /** The child's stdin (default 'ignore'). */
  readonly stdin?: 'ignore' | 'pipe'
  /** The child's stderr: 'pipe' (default; kept whole, see `stderr()`), 'inherit' or a file descriptor. */
  readonly stderr?: 'pipe' | 'inherit' | number
  /** Bound on the wait for the listening line; without it the wait lasts as long as the process. */
  readonly startTimeoutMs?: number
  /** Starts the command instead of child_process.spawn (it must pipe stdout; stderr is then its own). */
  readonly launch?: Launch
  /** Stdout lines other than the listening line (a sidecar prints none today). */
  readonly onStdoutLine?: (line: string) => void
  /** Names the child in start failures (default 'sidecar'). */
  readonly name?: string
  /** Appended to a start failure's message (default: the stderr kept, if any). */
  readonly describe?: () => string
}

export interface SpawnedSidecar {
  readonly child: ChildProcess
  readonly listening: SidecarListening
  readonly ports: Ports
  readonly exited: Promise<Exit>
  /** What the child wrote to stderr so far ('' unless stderr is 'pipe' and no launcher is given). */
  stderr(): string
}

/** `[...SIDECAR_NODE_FLAGS, ...nodeFlags, CLI, 'sidecar', '--config', file, ...args]`: node's arguments. */
export function sidecarArgv(o: Pick<SpawnSidecarOptions, 'configFile' | 'args' | 'nodeFlags'>): string[] {
  return [...SIDECAR_NODE_FLAGS, ...(o.nodeFlags ?? []), CLI, 'sidecar', '--config', o.configFile, ...(o.args ?? [])]
}

function isListening(v: unknown): v is SidecarListening {
  const o = v as Record<string, unknown> | null
  if (typeof o !== 'object' || o === null || o.event !== 'listening' || typeof o.pid !== 'number') return false
  const ports = o.ports as Record<string, unknown> | null
  return (
    typeof ports === 'object' &&
    ports !== null &&
    ['egress', 'ingress', 'control', 'admin'].every((k) => typeof ports[k] === 'number')
  )
}

/**
 * Spawns a sidecar and resolves once it printed its listening line. A child that exits first, or
 * stays silent past `startTimeoutMs` (then it is SIGKILLed), rejects the start.
 */
export async function spawnSidecar(o: SpawnSidecarOptions): Promise<SpawnedSidecar> {
  const name = o.name ?? 'sidecar'
  const child = (o.launch ?? spawnChild)(process.execPath, sidecarArgv(o), {
    cwd: o.cwd,
    env: o.env ?? process.env,
    stdio: [o.stdin ?? 'ignore', 'pipe', o.stderr ?? 'pipe'],
  })
  let err = ''
  if (o.launch === undefined) child.stderr?.on('data', (c: Buffer) => (err += c.toString()))
  let spawnError: Error | undefined
  const exited = new Promise<Exit>((r) => {
    child.once('exit', (code, signal) => r({ code, signal }))
    // A command that cannot be run (taskset missing) never exits: it counts as exited.
    child.once('error', (e) => {
      spawnError = e
      r({ code: null, signal: null })
    })
  })
  const stdout = child.stdout
  if (stdout === null) throw new Error(`${name}: no stdout pipe`)
  const detail = (): string => {
    const d = o.describe !== undefined ? o.describe() : err
    return d === '' ? '' : `: ${d}`
  }

  let timer: NodeJS.Timeout | undefined
  let listening: SidecarListening | undefined
  try {
    listening = await new Promise<SidecarListening>((resolve, reject) => {
      if (o.startTimeoutMs !== undefined) {
        const ms = o.startTimeoutMs
        timer = setTimeout(() => reject(new Error(`${name}: no listening line within ${ms} ms${detail()}`)), ms)
      }
      createInterface({ input: stdout }).on('line', (line) => {
        if (listening === undefined) {
          let v: unknown
          try {
            v = JSON.parse(line)
          } catch {
            v = undefined
          }
          if (isListening(v)) {
            listening = v
            resolve(v)
            return
          }
        }
        o.onStdoutLine?.(line)
      })
      void exited.then((e) =>
        reject(
          new Error(
            spawnError !== undefined
              ? `${name} could not be started: ${spawnError.message}${detail()}`
              : `${name} exited (code ${e.code}, signal ${e.signal}) before listening${detail()}`,
          ),
        ),
      )
    })
  } catch (e) {
    if (spawnError === undefined && child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL')
      await exited
    }
    throw e
  } finally {
    clearTimeout(timer)
  }
  return { child, listening, ports: listening.ports, exited, stderr: () => err }
}
