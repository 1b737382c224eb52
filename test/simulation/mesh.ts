// A simulated mesh of pods that run the code txmesh ships: each pod's sidecar is the real
// CoordinatorDriver, ParticipantDriver, SagaDriver and ActiveTxPlane over the real FileLog,
// given an io (src/tx/io.ts) made of this simulator's clock, timers, network and disk (./simfs.ts).
// Control messages reach the real control operations (src/control/server.ts answerOp); the data
// plane's calls go through the real plane hooks (ingress join, egress enlistment). What is
// simulated: the network (loss, duplication, delay, reordering, refused connections), time
// (one scheduler; each pod's wall clock may jump), the disk (latency, EIO, torn writes on power
// loss) and the apps (./mesh-apps.ts: they know only the documented hook contract).
//
// A crash stops a process between two events, i.e. at any await of the drivers or the log: its
// timers never fire, its calls never answer, its disk operations hang, and whatever it still had
// in memory is gone; the next process of the pod opens the log on the same disk (page cache kept
// after a process crash, only what was durable after a power loss) and recovers from it.
import { LIMITS } from '../../src/limits.js'
import { parseConfig } from '../../src/config/load.js'
import type { SidecarConfig } from '../../src/config/types.js'
import { answerOp, type ControlDeps } from '../../src/control/server.js'
import { resultOf, type BatchedCall, type ControlResult } from '../../src/control/client.js'
import { CoordinatorDriver } from '../../src/tx/coordinator/driver.js'
import { ParticipantDriver } from '../../src/tx/participant/driver.js'
import { SagaDriver } from '../../src/tx/saga/driver.js'
import { TccParticipant } from '../../src/tx/saga/participant.js'
import { ActiveTxPlane } from '../../src/proxy/tx-hook.js'
import { staticKeys, type MeshKeys } from '../../src/tx/keys.js'
import type { HttpTransport, SidecarIo, Timer, Timers } from '../../src/tx/io.js'
import type { ExchangeOptions, Exchanged } from '../../src/http-client.js'
import { FileLog, type LogFs } from '../../src/wal/file-log.js'
import { logIncarnation } from '../../src/wal/incarnation.js'
import { decodeRecords } from '../../src/tx/records.js'
import { silentLogger } from '../../src/telemetry/logger.js'
import { SimFs, type CrashKind, type FsFaults } from './simfs.js'
import { SimWorld } from './sim-world.js'

/** One OS process of a pod (a sidecar or an app): everything it started dies with it. */
export class SimProc {
  up = true
  constructor(readonly name: string) {}
}

export const MESH_KEYS: MeshKeys = staticKeys([Buffer.alloc(32, 42)])
export const SIM_CONFIG: SidecarConfig = parseConfig('service: sim\n', 'sim.yaml')
const URL_SAFE = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'
const ALNUM = URL_SAFE.slice(0, 62)
const LOG_DIR = '/data/txmesh'

/** A running sidecar: the shipped drivers on this pod's disk. */
export interface Sidecar {
  readonly proc: SimProc
  readonly log: FileLog
  readonly io: SidecarIo
  readonly coordinator: CoordinatorDriver
  readonly participant: ParticipantDriver
  readonly steps: SagaDriver
  readonly plane: ActiveTxPlane
  readonly control: ControlDeps
}

/** An app's answer to one HTTP request (or a refused connection: nothing listens). */
export type AppAnswer =
  { readonly status: number; readonly text?: string; readonly headers?: readonly string[] } | 'refused'

export interface App {
  proc: SimProc
  /** One request from the pod's sidecar; answers (maybe late, maybe never if the app dies). */
  handle(path: string, headers: readonly string[], body: string | undefined): Promise<AppAnswer> | AppAnswer
}

export interface Pod {
  readonly name: string
  /** Its sidecar's control address, as peers reach it (and its ids name). */
  readonly address: string
  readonly service: string
  disk: SimFs
  sidecar: Sidecar | undefined
  /** The process the sidecar runs as (set at start; its log opening may still be under way). */
  sidecarProc: SimProc | undefined
  app: App
  /** This pod's wall clock minus simulated time (clock jumps). */
  clockOffset: number
  /** Disk wiped at some restart (a new pod at the old address): a new log incarnation. */
  wiped: number
}

export interface MeshStats {
  messages: number
  lost: number
  duplicated: number
  refused: number
  timeouts: number
  sidecarCrashes: number
  appCrashes: number
  powerLosses: number
  wipes: number
  fatals: number
  clockJumps: number
  diskFaults: number
}

export function emptyMeshStats(): MeshStats {
  return {
    messages: 0,
    lost: 0,
    duplicated: 0,
    refused: 0,
    timeouts: 0,
    sidecarCrashes: 0,
    appCrashes: 0,
    powerLosses: 0,
    wipes: 0,
    fatals: 0,
    clockJumps: 0,
    diskFaults: 0,
  }
}

export interface MeshFaults {
  readonly loss: number
  readonly duplicate: number
  readonly slow: number
  /** EIO on a disk operation. */
  readonly diskError: number
}

const transportError = (code: string): Error => Object.assign(new Error(code), { code })

export abstract class MeshWorld extends SimWorld {
  protected abstract override readonly faults: MeshFaults
  protected abstract override readonly stats: MeshStats
  protected readonly pods: Pod[] = []
  /** Events the sidecars emitted (heuristics, resolutions), in order. */
  protected readonly events: {
    readonly pod: string
    readonly type: string
    readonly data: Readonly<Record<string, unknown>>
  }[] = []

  protected constructor(seed: number, trace: ((line: string) => void) | undefined) {
    super(seed, trace)
  }

  protected addPod(name: string, service: string, app: App): Pod {
    const pod: Pod = {
      name,
      address: `127.0.0.${this.pods.length + 1}:15010`,
      service,
      disk: this.newDisk(),
      sidecar: undefined,
      sidecarProc: undefined,
      app,
      clockOffset: 0,
      wiped: 0,
    }
    this.pods.push(pod)
    return pod
  }

  protected podAt(address: string): Pod | undefined {
    return this.pods.find((p) => p.address === address)
  }

  /** Every disk of the run (a wiped pod gets a new one): their injected faults go into the stats. */
  protected readonly disks: SimFs[] = []

  /** Faults the disks injected (EIO, short writes). */
  protected diskFaultCount(): number {
    return this.disks.reduce((n, d) => n + d.injected.ioErrors + d.injected.shortWrites, 0)
  }

  private newDisk(): SimFs {
    const disk = new SimFs(this.rng, process.env.SIM_DEBUG === undefined ? undefined : (l) => this.log(`disk: ${l}`))
    // Writes and syncs take the device's time (a crash can land between them); the rest of the
    // file system answers at once.
    disk.gate = (what) =>
      what === 'write' || what.startsWith('fsync') || what === 'truncate'
        ? new Promise<void>((resolve) => this.sched.after(this.diskLatency(), resolve))
        : Promise.resolve()
    this.disks.push(disk)
    return disk
  }

  protected diskFaults(): FsFaults {
    return this.faultsOn
      ? { ioError: this.faults.diskError, shortWrite: this.faults.diskError, lyingSync: 0 }
      : { ioError: 0, shortWrite: 0, lyingSync: 0 }
  }

  // -------------------------------------------------------------------------------------------
  // Processes

  /** Starts the pod's sidecar: opens its log, builds the drivers, recovers. Async like the real start. */
  protected startSidecar(pod: Pod): void {
    const proc = new SimProc(`${pod.name}.sidecar`)
    pod.sidecarProc = proc
    pod.disk.faults = this.diskFaults()
    void this.openSidecar(pod, proc).catch((err: unknown) => {
      // A log that cannot open (EIO during replay) stops the process, as the real start does.
      if (!proc.up) return
      this.log(`${pod.name} sidecar failed to start: ${String(err)}`)
      this.crashSidecar(pod, 'process')
      this.timer(this.world, this.rng.int(50, 500), () => this.restartSidecar(pod, 'process'))
    })
  }

  private readonly world = { name: 'world', up: true, incarnation: 0 }

  private async openSidecar(pod: Pod, proc: SimProc): Promise<void> {
    const timers = this.timersOf(proc)
    const logger =
      process.env.SIM_DEBUG === undefined
        ? silentLogger
        : {
            debug: () => undefined,
            info: () => undefined,
            warn: (e: string, f?: object) => this.log(`${pod.name} log warn ${e} ${JSON.stringify(f)}`),
            error: (e: string, f?: object) => this.log(`${pod.name} log error ${e} ${JSON.stringify(f)}`),
          }
    const opened = await FileLog.open(LOG_DIR, { fs: pod.disk.api as unknown as LogFs, timers, logger, sync: 'fsync' })
    if (!proc.up) return
    if (process.env.SIM_DEBUG)
      this.log(
        `${pod.name} log opened: ${opened.records.map((r) => `${r.txId}:${String(r.body.type)}`).join(' ')}; files ${JSON.stringify(pod.disk.list(LOG_DIR))}`,
      )
    const incarnation = await logIncarnation(opened.log, opened.records, {
      id: () => this.randomString(ALNUM, LIMITS.incarnationChars),
      now: () => this.sched.now + pod.clockOffset,
    })
    if (!proc.up) return
    const io = this.ioOf(pod, proc, opened.log)
    const run = this.randomString(ALNUM, LIMITS.runTagChars)
    const onEvent = (type: string, data: Readonly<Record<string, unknown>>): void => {
      if (proc.up) this.events.push({ pod: pod.name, type, data })
    }
    const common = {
      io,
      self: pod.address,
      incarnation: incarnation.id,
      keys: MESH_KEYS,
      logger: silentLogger,
      onEvent,
    }
    const coordinator = new CoordinatorDriver({ ...common, run })
    const participant = new ParticipantDriver({
      ...common,
      service: pod.service,
      appOrigin: 'http://app',
      hooks: SIM_CONFIG.hooks,
      coordinators: SIM_CONFIG.mesh.coordinators,
    })
    const steps = new SagaDriver({
      ...common,
      run,
      policy: SIM_CONFIG.steps,
      targets: {
        origins: new Set(this.pods.map((p) => `http://${p.service}`)),
        controls: SIM_CONFIG.mesh.coordinators,
      },
    })
    const tcc = new TccParticipant({
      ...common,
      service: pod.service,
      appOrigin: 'http://app',
      hooks: SIM_CONFIG.hooks,
    })
    const plane = new ActiveTxPlane({
      keys: MESH_KEYS,
      coordinators: SIM_CONFIG.mesh.coordinators,
      coordinator,
      participant,
      tcc,
      steps,
      control: io.control,
      clock: io.clock,
      timers,
      randomChars: io.randomChars,
    })
    const control: ControlDeps = {
      keys: MESH_KEYS,
      self: pod.address,
      coordinator,
      participant,
      tcc,
      steps,
      logger: silentLogger,
      clock: io.clock,
    }
    const replayed = decodeRecords(opened.records)
    const c = coordinator.recover(replayed)
    const p = participant.recover(replayed)
    const s = steps.recover(replayed)
    pod.sidecar = { proc, log: opened.log, io, coordinator, participant, steps, plane, control }
    this.log(
      `${pod.name} sidecar up (incarnation ${incarnation.id}${incarnation.created ? ', new' : ''}; recovered ${c}/${p}/${s})`,
    )
    this.sidecarStarted(pod)
  }

  /** Hook for worlds: the pod's sidecar finished starting. */
  protected sidecarStarted(_pod: Pod): void {}

  /** The sidecar process dies where it stands (SIGKILL, OOM, a failed fsync's exit 70). */
  protected crashSidecar(pod: Pod, kind: CrashKind): void {
    const proc = pod.sidecarProc
    if (proc === undefined || !proc.up) return
    proc.up = false
    pod.sidecar = undefined
    pod.disk.crashNow()
    this.stats.sidecarCrashes++
    if (kind === 'power') this.stats.powerLosses++
    this.log(
      `CRASH ${pod.name} sidecar (${kind})${process.env.SIM_DEBUG ? ` files ${JSON.stringify(pod.disk.list(LOG_DIR))} durable ${JSON.stringify(pod.disk.durableList(LOG_DIR))}` : ''}`,
    )
  }

  protected restartSidecar(pod: Pod, kind: CrashKind, wipe = false): void {
    if (pod.sidecarProc?.up === true) return
    if (wipe) {
      // Another pod at this address (a reused IP) or the same pod with its emptyDir gone.
      pod.disk = this.newDisk()
      pod.wiped++
      this.stats.wipes++
    } else pod.disk.restart(kind, this.rng.chance(0.5) ? 'prefix' : 'reorder')
    this.log(`RESTART ${pod.name} sidecar${wipe ? ' on a new disk' : ''}`)
    this.startSidecar(pod)
  }

  // -------------------------------------------------------------------------------------------
  // The io a sidecar process gets

  protected timersOf(proc: SimProc): Timers {
    return {
      set: (fn, ms) => {
        const t = { cancelled: false }
        this.sched.after(Math.max(0, ms), () => {
          if (proc.up && !t.cancelled) fn()
        })
        return t
      },
      clear: (t: Timer | undefined) => {
        if (t !== undefined) (t as { cancelled: boolean }).cancelled = true
      },
    }
  }

  protected randomString(alphabet: string, n: number): string {
    let s = ''
    for (let i = 0; i < n; i++) s += alphabet[this.rng.int(0, alphabet.length - 1)]
    return s
  }

  private ioOf(pod: Pod, proc: SimProc, log: FileLog): SidecarIo {
    const app: HttpTransport = { exchange: (_origin, o) => this.appExchange(proc, pod, o) }
    const http: HttpTransport = { exchange: (origin, o) => this.serviceExchange(proc, origin, o) }
    return {
      clock: () => this.sched.now + pod.clockOffset,
      random: () => this.rng.next(),
      randomChars: (n) => this.randomString(URL_SAFE, n),
      timers: this.timersOf(proc),
      control: {
        send: (address: string, call: BatchedCall) =>
          this.control(proc, address, call.tx, call.op, { branch: call.branch }),
        call: (address, _method, path, body) => {
          const m = /^\/v1\/tx\/([A-Za-z0-9_-]{1,64})\/([a-z-]+)$/.exec(path)
          if (m === null) return Promise.resolve({ ok: false, status: 404, error: 'TXM_NOT_FOUND' })
          return this.control(proc, address, m[1] as string, m[2] as string, body ?? {})
        },
      },
      app,
      http,
      log,
      fatal: (what) => {
        this.stats.fatals++
        this.log(`${pod.name} sidecar stops: ${what}`)
        if (pod.sidecarProc !== proc) return
        this.crashSidecar(pod, 'process')
        // Its supervisor (kubelet) starts it again.
        this.timer(this.world, this.rng.int(100, 2_000), () => this.restartSidecar(pod, 'process'))
      },
    }
  }

  /**
   * Request-response over the simulated network from `from`: `deliver` runs at the far end when
   * the request arrives and gives the process that answers and its answer. Loss means a timeout;
   * nothing listening means a refused connection; a duplicate runs the far end twice (harsher than
   * a real network: the control listener's replay cache refuses a second copy).
   */
  protected rpc<R>(
    from: SimProc,
    timeoutMs: number,
    deliver: () => { readonly proc: SimProc; readonly answer: Promise<R> | R } | 'refused',
    duplicable: boolean,
    /** 'pod': loopback inside a pod (no loss, no duplicates, short delays). */
    net: 'mesh' | 'pod' = 'mesh',
  ): Promise<R | 'timeout' | 'refused'> {
    const faulty = net === 'mesh' && this.faultsOn
    const latency = (): number => (net === 'pod' ? this.rng.int(0, 2) : this.latency())
    return new Promise((resolve) => {
      let settled = false
      const settle = (r: R | 'timeout' | 'refused'): void => {
        if (settled || !from.up) return
        settled = true
        if (r === 'timeout') this.stats.timeouts++
        resolve(r)
      }
      const t = this.timersOf(from)
      t.set(() => settle('timeout'), timeoutMs)
      this.stats.messages++
      if (faulty && this.rng.chance(this.faults.loss)) {
        this.stats.lost++
        return
      }
      const copies = duplicable && faulty && this.rng.chance(this.faults.duplicate) ? 2 : 1
      if (copies === 2) this.stats.duplicated++
      for (let i = 0; i < copies; i++) {
        this.sched.after(latency(), () => {
          const d = deliver()
          if (d === 'refused') {
            this.stats.refused++
            this.sched.after(latency(), () => settle('refused'))
            return
          }
          void Promise.resolve(d.answer).then((r) => {
            if (!d.proc.up) return
            // The answer may be lost on its way back too.
            if (faulty && this.rng.chance(this.faults.loss)) {
              this.stats.lost++
              return
            }
            this.sched.after(latency(), () => settle(r))
          })
        })
      }
    })
  }

  private async control(
    from: SimProc,
    address: string,
    tx: string,
    op: string,
    body: Record<string, unknown>,
  ): Promise<ControlResult> {
    const r = await this.rpc(
      from,
      LIMITS.controlCallTimeoutMs,
      () => {
        const pod = this.podAt(address)
        if (pod?.sidecarProc?.up !== true) return 'refused'
        const s = pod.sidecar
        // Listening, still recovering: the real listener answers 503 until the drivers exist.
        if (s === undefined)
          return { proc: pod.sidecarProc, answer: { status: 503, body: { error: { code: 'TXM_NOT_READY' } } } }
        return { proc: s.proc, answer: answerOp(s.control, tx, op, body) }
      },
      true,
    )
    if (r === 'timeout') return { ok: false, status: 0, error: 'UND_ERR_HEADERS_TIMEOUT' }
    if (r === 'refused') return { ok: false, status: 0, error: 'ECONNREFUSED' }
    return resultOf(r.status, r.body)
  }

  /** The sidecar's call to its own app (loopback in the pod): hooks, confirm/cancel. */
  private async appExchange(from: SimProc, pod: Pod, o: ExchangeOptions): Promise<Exchanged> {
    const r = await this.rpc(
      from,
      o.timeoutMs,
      () => {
        const app = pod.app
        if (!app.proc.up) return 'refused'
        return { proc: app.proc, answer: app.handle(o.path, o.headers, o.body) }
      },
      false,
      'pod',
    )
    return exchanged(r)
  }

  /** A compensation or other call to a service's origin (http://<service>): its pod's app. */
  private async serviceExchange(from: SimProc, origin: string, o: ExchangeOptions): Promise<Exchanged> {
    const pod = this.pods.find((p) => `http://${p.service}` === origin)
    const r = await this.rpc(
      from,
      o.timeoutMs,
      () => {
        if (pod === undefined || !pod.app.proc.up) return 'refused'
        return { proc: pod.app.proc, answer: pod.app.handle(o.path, o.headers, o.body) }
      },
      false,
    )
    return exchanged(r)
  }
}

function exchanged(r: AppAnswer | 'timeout'): Exchanged {
  if (r === 'timeout') throw transportError('UND_ERR_HEADERS_TIMEOUT')
  if (r === 'refused') throw transportError('ECONNREFUSED')
  return { status: r.status, text: r.text ?? '' }
}

/** The value of header `name` in a flat list. */
export function header(headers: readonly string[], name: string): string | undefined {
  for (let i = 0; i + 1 < headers.length; i += 2)
    if ((headers[i] as string).toLowerCase() === name) return headers[i + 1]
  return undefined
}
