// The bank's processes: per service an app (test/torture/bank-app.ts on txmesh/pg, or in the
// `contract` run test/torture/contract-app.ts on pg alone) and its sidecar, each a
// real child process on fixed loopback ports so a restart comes back where its peers expect it
// (with the same durable log directory), a fault proxy in front of the sidecar's ingress and
// control listeners, and the coordinator sidecar the client begins transactions on.
//
//   client --admin/egress--> coordinator sidecar --(proxy)--> ingress of bank-x sidecar --> app x
//                                              --(proxy)--> control of bank-x sidecar (prepare,
//                                                           commit, abort, confirm, cancel)
// The participants advertise their proxy's control port (mesh.advertise), so every control call
// of the coordinator crosses a proxy; compensations go to the proxied ingress (the `services:`
// address the step's call was forwarded to).
import { spawn, type ChildProcess } from 'node:child_process'
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { createInterface } from 'node:readline'
import { startFaultProxy, type FaultProxy } from '../helpers/fault-proxy.js'
import { freePort } from '../../harness/ports.js'
import { spawnSidecar, type Exit } from '../../harness/sidecar.js'
import { MESH_KEY } from '../helpers/servers.js'
import type { Mode } from './schema.js'

export const SERVICES = ['bank-a', 'bank-b', 'bank-c'] as const
export type Service = (typeof SERVICES)[number]

/** Which app each bank service runs: on the txmesh/pg helper, or from the hook contract alone. */
export type Participant = 'helper' | 'contract'
const APP: Readonly<Record<Participant, string>> = {
  helper: join(import.meta.dirname, 'bank-app.ts'),
  contract: join(import.meta.dirname, 'contract-app.ts'),
}
const ROOT = join(import.meta.dirname, '../..')

// Bounds of the processes, each with its reason.
// From spawn to the "listening" line: a sidecar replays its log, an app loads tsx and runs
// recover() (3 attempts of 2 s per prepared row when its sidecar is down). Slower is a hang.
export const PROCESS_START_TIMEOUT_MS = 30_000
// A restart on a fixed port can meet the port still held for an instant; a few tries cover it.
const START_ATTEMPTS = 3
const START_RETRY_DELAY_MS = 200
// After SIGKILL the exit event follows at once; longer means the process is not ours to wait on.
const EXIT_WAIT_MS = 5_000
// A process that died on its own (a failpoint fired, or an unexpected exit) is restarted after
// this pause, like a kubelet restarting a container.
export const SELF_EXIT_RESTART_DELAY_MS = 300

// Egress policy of the client's calls: a stuck call fails (504) rather than hold a transfer.
export const CALL_TIMEOUT_MS = 4_000
// Participant ingress: how long its app may take.
const INGRESS_TIMEOUT_MS = 6_000
// Saga/tcc finishing ops: retried quickly and for long (about 40 s) before a step is stuck, so
// a participant down for a few seconds during the load never leaves one stuck.
const STEPS_POLICY = 'steps: {attempts: 60, backoffBaseMs: 50, backoffCapMs: 1000}'

// Shared run: coordinator instances of the client's service on the one store (the issue's three).
export const SHARED_COORDINATORS = 3

export type ProcessKind = 'app' | 'participant-sidecar' | 'coordinator'
export type Failpoint = 'coordinator-after-decision' | 'participant-after-prepared' | 'participant-after-app-prepared'

export interface ExitNote {
  readonly name: string
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
  readonly failpoint: Failpoint | undefined
  readonly at: number
}

/** What a Managed process runs: a built sidecar (harness/sidecar.ts), or node with these arguments. */
export type Command =
  | { readonly kind: 'sidecar'; readonly configFile: string; readonly args: readonly string[] }
  | { readonly kind: 'node'; readonly args: readonly string[] }

/** One restartable child process that prints a JSON "listening" line on stdout when ready. */
export class Managed {
  private child: ChildProcess | undefined
  private exited: Promise<void> = Promise.resolve()
  private expectExit = false
  private armed: Failpoint | undefined
  private starting: Promise<void> | undefined
  private restartTimer: NodeJS.Timeout | undefined
  private stopped = false

  constructor(
    readonly name: string,
    readonly kind: ProcessKind,
    private command: Command,
    private readonly env: Readonly<Record<string, string>>,
    private logFile: string,
    private readonly onSelfExit: (n: ExitNote) => void,
  ) {}

  /** Runs before a restart after an exit of its own (the shared run may replace the instance). */
  beforeSelfRestart: ((n: ExitNote) => Promise<void>) | undefined

  /** While down: what the next start runs (a new instance in place of one killed for good). */
  reconfigure(command: Command, logFile: string): void {
    if (this.child !== undefined) throw new Error(`${this.name} is up: it cannot be reconfigured`)
    this.command = command
    this.logFile = logFile
  }

  get up(): boolean {
    return this.child !== undefined && this.starting === undefined
  }

  get failpoint(): Failpoint | undefined {
    return this.armed
  }

  /** Starts the process (armed with a failpoint if given) and waits for its listening line. */
  start(failpoint?: Failpoint): Promise<void> {
    if (this.stopped || (this.child !== undefined && this.starting === undefined)) return Promise.resolve()
    clearTimeout(this.restartTimer)
    this.restartTimer = undefined
    this.starting ??= this.startWithRetries(failpoint).finally(() => (this.starting = undefined))
    return this.starting
  }

  private async startWithRetries(failpoint: Failpoint | undefined): Promise<void> {
    let last: unknown
    for (let attempt = 1; attempt <= START_ATTEMPTS; attempt++) {
      try {
        await this.spawnOnce(failpoint)
        return
      } catch (err) {
        last = err
        await sleep(START_RETRY_DELAY_MS)
      }
    }
    throw new Error(`${this.name} did not start after ${START_ATTEMPTS} attempts: ${(last as Error).message}`)
  }

  private async spawnOnce(failpoint: Failpoint | undefined): Promise<void> {
    const fd = openSync(this.logFile, 'a')
    writeFileSync(fd, `--- ${new Date().toISOString()} start${failpoint === undefined ? '' : ` armed ${failpoint}`}\n`)
    const env: NodeJS.ProcessEnv = { ...process.env, ...this.env }
    delete env.NODE_OPTIONS
    delete env.TXMESH_LOG_LEVEL
    delete env.TXMESH_CONFIG
    delete env.TXMESH_FAILPOINTS
    if (failpoint !== undefined) env.TXMESH_FAILPOINTS = failpoint
    this.armed = failpoint
    this.expectExit = false
    let started: { child: ChildProcess; exited: Promise<Exit> }
    try {
      started =
        this.command.kind === 'sidecar'
          ? await spawnSidecar({
              configFile: this.command.configFile,
              args: this.command.args,
              cwd: ROOT,
              env,
              stderr: fd,
              startTimeoutMs: PROCESS_START_TIMEOUT_MS,
              describe: () => `log: ${this.logFile}`,
            })
          : await this.spawnNode(this.command.args, env, fd)
    } finally {
      // The child has its own copy of the log's descriptor.
      closeSync(fd)
    }
    const { child, exited } = started
    this.child = child
    this.exited = exited.then((e) => {
      if (this.child === child) this.child = undefined
      if (this.expectExit || this.stopped) return
      // Died on its own: a failpoint fired (it SIGKILLs itself), or a crash worth reporting.
      const note: ExitNote = { name: this.name, code: e.code, signal: e.signal, failpoint: this.armed, at: Date.now() }
      this.armed = undefined
      this.onSelfExit(note)
      this.restartTimer = setTimeout(() => {
        this.restartTimer = undefined
        const before = this.beforeSelfRestart?.(note) ?? Promise.resolve()
        before
          .then(() => this.start())
          .catch((err: unknown) =>
            process.stderr.write(`torture: restarting ${this.name} failed: ${(err as Error).message}\n`),
          )
      }, SELF_EXIT_RESTART_DELAY_MS)
    })
  }

  /** An app (`node --import tsx app.ts`): waits for the first line it prints on stdout. */
  private async spawnNode(
    args: readonly string[],
    env: NodeJS.ProcessEnv,
    fd: number,
  ): Promise<{ child: ChildProcess; exited: Promise<Exit> }> {
    const child = spawn(process.execPath, [...args], { cwd: ROOT, env, stdio: ['ignore', 'pipe', fd] })
    const exited = new Promise<Exit>((r) => child.once('exit', (code, signal) => r({ code, signal })))
    const stdout = child.stdout
    if (stdout === null) throw new Error('no stdout pipe')
    const lines = createInterface({ input: stdout })
    let timer: NodeJS.Timeout | undefined
    try {
      await new Promise<void>((resolve, reject) => {
        timer = setTimeout(
          () => reject(new Error(`no listening line within ${PROCESS_START_TIMEOUT_MS} ms (log: ${this.logFile})`)),
          PROCESS_START_TIMEOUT_MS,
        )
        lines.once('line', () => resolve())
        void exited.then((e) =>
          reject(new Error(`exited during start (code ${e.code}, signal ${e.signal}; log: ${this.logFile})`)),
        )
      })
    } catch (err) {
      child.kill('SIGKILL')
      await exited
      throw err
    } finally {
      clearTimeout(timer)
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    lines.on('line', () => undefined)
    return { child, exited }
  }

  /** SIGKILL (the process gets no chance to clean up) and wait for the exit. */
  async kill(): Promise<boolean> {
    if (this.starting !== undefined) await this.starting.catch(() => undefined)
    const child = this.child
    if (child === undefined) return false
    this.expectExit = true
    child.kill('SIGKILL')
    await withTimeout(this.exited, EXIT_WAIT_MS, `${this.name} to exit after SIGKILL`)
    this.armed = undefined
    return true
  }

  /** For good (end of the run): no restarts any more. */
  async stop(): Promise<void> {
    this.stopped = true
    clearTimeout(this.restartTimer)
    if (this.starting !== undefined) await this.starting.catch(() => undefined)
    const child = this.child
    if (child === undefined) return
    this.expectExit = true
    child.kill('SIGKILL')
    await withTimeout(this.exited, EXIT_WAIT_MS, `${this.name} to exit`).catch(() => undefined)
  }
}

export interface SidecarPorts {
  readonly egress: number
  readonly ingress: number
  readonly control: number
  readonly admin: number
}

export interface ServiceNode {
  readonly service: Service
  readonly db: string
  readonly appPort: number
  readonly sidecarPorts: SidecarPorts
  readonly app: Managed
  readonly sidecar: Managed
  readonly ingressProxy: FaultProxy
  readonly controlProxy: FaultProxy
}

export interface BankCluster {
  readonly mode: Mode
  readonly participant: Participant
  readonly dir: string
  readonly nodes: readonly ServiceNode[]
  /** The first coordinator (the only one but in the shared run), and its ports. */
  readonly coordinator: Managed
  readonly coordinatorPorts: SidecarPorts
  /** Every coordinator instance slot (one, or SHARED_COORDINATORS on the shared store). */
  readonly coordinators: readonly CoordinatorSlot[]
  /**
   * Shared run: the coordinator `name` (down) is replaced for good: its directory deleted, a new
   * instance name and new ports; its next start is that new instance. Returns the new instance name.
   */
  replaceCoordinator(name: string): Promise<string>
  /** Shared run: the store and the group balancer's port. */
  readonly shared: (SharedStore & { readonly group: number }) | undefined
  readonly proxies: readonly { readonly name: string; readonly proxy: FaultProxy }[]
  /** Every managed process, by name. */
  readonly processes: ReadonlyMap<string, Managed>
  stop(): Promise<void>
}

/** One coordinator of the client: a process whose instance (and ports) a kill for good replaces. */
export interface CoordinatorSlot {
  readonly process: Managed
  ports: SidecarPorts
  /** store.instance of the instance running there (shared run). */
  instance: string
  /** Replacements so far. */
  generation: number
  dir: string
  /** Logs the instances replaced so far claimed by takeover (read from their log before it went). */
  takeoversBefore: number
}

/** Logs claimed by takeover, as the sidecar's log file says (its `takeover` events). */
export function takeoversLogged(slot: CoordinatorSlot): number {
  const file = join(slot.dir, 'sidecar.log')
  if (!existsSync(file)) return 0
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.includes('"event":"takeover"')).length
}

/** The shared run's store: the coordinators' Postgres database, schema and lease. */
export interface SharedStore {
  readonly url: string
  readonly schema: string
  readonly leaseMs: number
  /**
   * TORTURE_LEASE=kubernetes: the leases are Lease objects of an API server on loopback
   * (test/helpers/kube-api.ts); the coordinators' environment points at it, as a pod's would.
   */
  readonly kube?: { readonly env: Readonly<Record<string, string>> }
}

export interface ClusterOptions {
  readonly mode: Mode
  /** The bank services' app (default helper: bank-app.ts). */
  readonly participant?: Participant
  /** contract apps: Postgres's idle_in_transaction_session_timeout for their branches (0: none, the default). */
  readonly contractIdleMs?: number
  /** Scratch directory of this mode: configs, durable logs, process logs. */
  readonly dir: string
  readonly connectionString: (db: string) => string
  readonly dbOf: (s: Service) => string
  /** Seeded randomness for the proxies' drop choices. */
  readonly random: () => number
  readonly onSelfExit: (n: ExitNote) => void
  /** Shared run: SHARED_COORDINATORS coordinator instances of bank-client on this store. */
  readonly shared?: SharedStore
}

async function sidecarPorts(): Promise<SidecarPorts> {
  return { egress: await freePort(), ingress: await freePort(), control: await freePort(), admin: await freePort() }
}

function listenersYaml(p: SidecarPorts): string {
  return `listeners: {egress: {host: 127.0.0.1, port: ${p.egress}}, ingress: {host: 127.0.0.1, port: ${p.ingress}}, control: {host: 127.0.0.1, port: ${p.control}}, admin: {host: 127.0.0.1, port: ${p.admin}}}`
}

function sidecarCommand(file: string, p: SidecarPorts): Command {
  return {
    kind: 'sidecar',
    configFile: file,
    args: [
      '--egress-port',
      String(p.egress),
      '--ingress-port',
      String(p.ingress),
      '--control-port',
      String(p.control),
      '--admin-port',
      String(p.admin),
    ],
  }
}

/**
 * The coordinator's egress routes. saga: every service is undone by the route's compensation
 * template, which reads only the request, so the step's intent carries it before the call is
 * sent (bank-c used to name its undo in txmesh-compensate, which only the answer carries: a cut
 * answer left it with nothing to undo). tcc: bank-a and bank-b get the route's confirm/cancel
 * templates; bank-c's sidecar calls its default hooks (an intent's cancel reaches them through
 * its ingress, /.well-known/txmesh/cancel).
 */
function coordinatorRoutes(mode: Mode): string {
  if (mode === '2pc') return ''
  const lines = ['routes:']
  for (const s of mode === 'saga' ? SERVICES : (['bank-a', 'bank-b'] as const)) {
    lines.push(`  - name: ${s}-${mode}`, `    match: {direction: egress, host: ${s}}`)
    if (mode === 'saga')
      lines.push(
        '    compensation: {method: POST, path: "/saga/undo/{request.query.transfer}/{request.query.account}/{request.query.delta}"}',
      )
    else lines.push('    tcc: {confirm: {path: "/tcc/confirm/{step.id}"}, cancel: {path: "/tcc/cancel/{step.id}"}}')
  }
  return lines.join('\n')
}

export async function startBankCluster(o: ClusterOptions): Promise<BankCluster> {
  const participant = o.participant ?? 'helper'
  const processes = new Map<string, Managed>()
  const proxies: { name: string; proxy: FaultProxy }[] = []
  const nodes: ServiceNode[] = []
  const closers: (() => Promise<void>)[] = []
  const stopAll = async (): Promise<void> => {
    await Promise.all([...processes.values()].map((p) => p.stop()))
    await Promise.all(proxies.map((p) => p.proxy.close()))
    await Promise.all(closers.map((c) => c()))
  }
  try {
    for (const service of SERVICES) {
      const dir = join(o.dir, service)
      mkdirSync(dir, { recursive: true })
      const appPort = await freePort()
      const ports = await sidecarPorts()
      const ingressProxy = await startFaultProxy({
        port: await freePort(),
        targetPort: ports.ingress,
        random: o.random,
      })
      const controlProxy = await startFaultProxy({
        port: await freePort(),
        targetPort: ports.control,
        random: o.random,
      })
      proxies.push(
        { name: `${service}/ingress`, proxy: ingressProxy },
        { name: `${service}/control`, proxy: controlProxy },
      )
      const file = join(dir, 'sidecar.yaml')
      writeFileSync(
        file,
        [
          `service: ${service}`,
          `app: {host: 127.0.0.1, port: ${appPort}}`,
          `store: {dir: ${JSON.stringify(join(dir, 'store'))}}`,
          'log: {level: info}',
          listenersYaml(ports),
          `mesh: {advertise: "127.0.0.1:${controlProxy.port}"}`,
          `defaults: {timeoutMs: ${INGRESS_TIMEOUT_MS}}`,
          // bank-a and bank-b take their 2PC hook calls batched (txmesh/pg serves the batch hook),
          // bank-c one request per call: both paths go through the faults. The contract app
          // serves only the three required hooks: one request per call everywhere.
          ...(service === 'bank-c' || participant === 'contract' ? [] : ['hooks: {batch: /.well-known/txmesh/batch}']),
        ].join('\n'),
      )
      const sidecar = new Managed(
        `${service}/sidecar`,
        'participant-sidecar',
        sidecarCommand(file, ports),
        { TXMESH_MESH_KEY: MESH_KEY },
        join(dir, 'sidecar.log'),
        o.onSelfExit,
      )
      const db = o.dbOf(service)
      const app = new Managed(
        `${service}/app`,
        'app',
        { kind: 'node', args: ['--import', 'tsx', APP[participant]] },
        {
          DATABASE_URL: o.connectionString(db),
          SERVICE: service,
          PORT: String(appPort),
          // Only the helper app talks to its sidecar's admin API (its recover()).
          ...(participant === 'helper' ? { SIDECAR_ADMIN: `http://127.0.0.1:${ports.admin}` } : {}),
          ...(participant === 'contract' && o.contractIdleMs !== undefined
            ? { IDLE_IN_TRANSACTION_MS: String(o.contractIdleMs) }
            : {}),
        },
        join(dir, 'app.log'),
        o.onSelfExit,
      )
      processes.set(sidecar.name, sidecar)
      processes.set(app.name, app)
      nodes.push({ service, db, appPort, sidecarPorts: ports, app, sidecar, ingressProxy, controlProxy })
    }
    // Sidecars first: the helper apps' recover() asks them.
    await Promise.all(nodes.map((n) => n.sidecar.start()))
    await Promise.all(nodes.map((n) => n.app.start()))

    const services = ['services:', ...nodes.map((n) => `  ${n.service}: {address: "127.0.0.1:${n.ingressProxy.port}"}`)]
    const shared = o.shared
    const slots: CoordinatorSlot[] = []
    let group: FaultProxy | undefined
    if (shared !== undefined) {
      // store.group: a balancer standing for the coordinators' Service, in front of the control
      // listeners of the instances up now (round robin; a connection to one just killed fails and
      // the asker tries again).
      let turn = 0
      group = await startFaultProxy({
        port: await freePort(),
        targetPort: () => {
          const up = slots.filter((c) => c.process.up)
          const pick = up[turn++ % Math.max(1, up.length)] ?? slots[0]
          return pick === undefined ? 9 : pick.ports.control
        },
        random: o.random,
      })
      const g = group
      closers.push(() => g.close())
    }
    const configure = async (
      slot: number,
      generation: number,
    ): Promise<{ command: Command; ports: SidecarPorts; instance: string; logFile: string }> => {
      const name = shared === undefined ? 'coordinator' : `coordinator-${slot + 1}`
      const instance = `coord-${slot + 1}-g${generation}`
      // Each instance its own directory: one killed for good leaves nothing behind it (the
      // directory is deleted), and its replacement starts from an empty one.
      const dir = join(o.dir, shared === undefined ? name : `${name}-g${generation}`)
      mkdirSync(dir, { recursive: true })
      const ports = await sidecarPorts()
      const file = join(dir, 'sidecar.yaml')
      const store =
        shared === undefined || group === undefined
          ? `store: {dir: ${JSON.stringify(join(dir, 'store'))}}`
          : `store: {kind: postgres, url: ${JSON.stringify(shared.url)}, schema: ${shared.schema}, instance: ${instance}, leaseMs: ${shared.leaseMs}, group: "127.0.0.1:${group.port}"${shared.kube === undefined ? '' : ', lease: kubernetes'}}`
      writeFileSync(
        file,
        [
          'service: bank-client',
          // The client is the initiating app; nothing calls its ingress.
          'app: {host: 127.0.0.1, port: 9}',
          store,
          'log: {level: info}',
          listenersYaml(ports),
          ...services,
          `defaults: {timeoutMs: ${CALL_TIMEOUT_MS}}`,
          STEPS_POLICY,
          coordinatorRoutes(o.mode),
        ].join('\n'),
      )
      return { command: sidecarCommand(file, ports), ports, instance, logFile: join(dir, 'sidecar.log') }
    }
    for (let i = 0; i < (shared === undefined ? 1 : SHARED_COORDINATORS); i++) {
      const c = await configure(i, 0)
      const process = new Managed(
        shared === undefined ? 'coordinator' : `coordinator-${i + 1}`,
        'coordinator',
        c.command,
        { TXMESH_MESH_KEY: MESH_KEY, ...shared?.kube?.env },
        c.logFile,
        o.onSelfExit,
      )
      processes.set(process.name, process)
      slots.push({
        process,
        ports: c.ports,
        instance: c.instance,
        generation: 0,
        dir: dirname(c.logFile),
        takeoversBefore: 0,
      })
    }
    await Promise.all(slots.map((c) => c.process.start()))
    const replaceCoordinator = async (name: string): Promise<string> => {
      const slot = slots.find((c) => c.process.name === name)
      if (slot === undefined || shared === undefined) throw new Error(`${name} is not a coordinator of a shared store`)
      if (slot.process.up) throw new Error(`${name} is up: kill it before replacing it`)
      slot.takeoversBefore += takeoversLogged(slot)
      rmSync(slot.dir, { recursive: true, force: true })
      const c = await configure(slots.indexOf(slot), slot.generation + 1)
      slot.process.reconfigure(c.command, c.logFile)
      slot.generation++
      slot.ports = c.ports
      slot.instance = c.instance
      slot.dir = dirname(c.logFile)
      return c.instance
    }
    const first = slots[0] as CoordinatorSlot
    return {
      mode: o.mode,
      participant,
      dir: o.dir,
      nodes,
      coordinator: first.process,
      get coordinatorPorts() {
        return first.ports
      },
      coordinators: slots,
      replaceCoordinator,
      shared: shared === undefined ? undefined : { ...shared, group: group?.port ?? 0 },
      proxies,
      processes,
      stop: stopAll,
    }
  } catch (err) {
    await stopAll()
    throw err
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms))
}

export async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  try {
    return await Promise.race([
      p,
      new Promise<never>(
        (_, reject) =>
          (timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms)),
      ),
    ])
  } finally {
    clearTimeout(timer)
  }
}
