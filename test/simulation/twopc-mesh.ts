// One 2PC transaction across a simulated mesh that runs the shipped sidecar code (./mesh.ts):
// an initiator pod (its app begins, calls 1-4 participant services through its sidecar, and asks
// commit or abort) and the participant pods (sidecar + a contract-only app, ./mesh-apps.ts), under
// one seed's faults: message loss, duplication, delay and reordering; sidecar crashes at any
// await (process crash or power loss) and restarts from the log; app crashes, slow and failing
// hooks, apps that prepare and die; disk latency and EIO; a coordinator pod replaced by one with a
// fresh log at the same address; operator resolutions at random moments; wall-clock jumps.
import type { TxmeshError } from '../../src/errors.js'
import { LIMITS } from '../../src/limits.js'
import type { Outcome } from '../../src/tx/core.js'
import { CONTEXT_HEADER } from '../../src/tx/protocol.js'
import { ERROR_HEADER } from '../../src/errors.js'
import { TxmeshError as TxmeshErrorClass } from '../../src/errors.js'
import { ContractApp, type AppHost, type BranchWork } from './mesh-apps.js'
import {
  MeshWorld,
  SIM_CONFIG,
  SimProc,
  emptyMeshStats,
  type App,
  type AppAnswer,
  type MeshFaults,
  type MeshStats,
  type Pod,
  type Sidecar,
} from './mesh.js'

/** No fault after this; every process is up again by then. */
const FAULTS_END_MS = 30_000
/** Once faults stop, everything must settle within this much simulated time. */
const SETTLE_MS = 20 * 60_000
const MAX_EVENTS = 400_000

export interface MeshReport {
  readonly seed: number
  readonly quiesced: 'idle' | 'time' | 'events'
  readonly endTime: number
  readonly events: number
  readonly violations: readonly string[]
  readonly stats: MeshStats
  readonly appOutcome: Outcome | undefined
}

export interface TwoPcFaults extends MeshFaults {
  readonly crashes: number
  /** Chance of each further crash planned at a protocol step (event count). */
  readonly stepCrashes: number
  readonly appFailure: number
  readonly appSlow: number
  readonly dieAfterPrepare: number
  readonly wipeCoordinator: boolean
  readonly resolutions: number
  readonly clockJumps: number
}

export function simulateMesh(seed: number, trace?: (line: string) => void): Promise<MeshReport> {
  return new TwoPcMesh(seed, trace).run()
}

/** The initiator pod's app: it drives the transaction through its sidecar's API and egress. */
class InitiatorApp implements App {
  proc = new SimProc('C.app')
  handle(): AppAnswer {
    return { status: 404 }
  }
}

class TwoPcMesh extends MeshWorld {
  protected readonly faults: TwoPcFaults
  protected readonly stats: MeshStats = emptyMeshStats()
  private readonly c: Pod
  private readonly ps: { pod: Pod; app: ContractApp; awaited: boolean }[] = []
  private readonly initiator = new InitiatorApp()
  private txId: string | undefined
  private token: string | undefined
  /** Participants whose business call the initiator saw succeed, and failed calls. */
  private readonly succeeded = new Set<ContractApp>()
  private readonly answered = new Set<ContractApp>()
  private failedCalls = 0
  private asked: 'commit' | 'abort' | undefined
  private appOutcome: Outcome | undefined
  /** Operator resolutions that were carried out: branch -> outcome. */
  private readonly resolved = new Map<string, Outcome>()
  private started = false
  private split = false
  /** Crashes planned at an event count: right after that step, at whatever await it left. */
  private readonly stepCrashes = new Map<number, () => void>()

  constructor(seed: number, trace: ((line: string) => void) | undefined) {
    super(seed, trace)
    const rng = this.rng
    const tier = rng.next()
    const scale = tier < 0.2 ? 0 : tier < 0.55 ? 0.25 : 1
    this.faults = {
      loss: rng.next() * 0.15 * scale,
      duplicate: rng.next() * 0.2 * scale,
      slow: rng.next() * 0.15 * scale,
      diskError: rng.chance(0.2) ? rng.next() * 0.01 * scale : 0,
      crashes: rng.next() * 0.4 * scale,
      stepCrashes: rng.next() * 0.8 * scale,
      appFailure: rng.next() * 0.1 * scale,
      appSlow: rng.chance(0.3) ? rng.next() * 0.05 * scale : 0,
      dieAfterPrepare: rng.chance(0.3) ? rng.next() * 0.3 * scale : 0,
      wipeCoordinator: scale > 0 && rng.chance(0.04),
      resolutions: scale > 0 && rng.chance(0.08) ? rng.int(1, 3) : 0,
      clockJumps: scale > 0 && rng.chance(0.1) ? rng.int(1, 3) : 0,
    }
    this.c = this.addPod('C', 'orders', this.initiator)
    const n = rng.int(1, 4)
    const unawaited = n >= 2 && rng.chance(0.15) ? n - 1 : -1
    const host: AppHost = {
      rng,
      faultsOn: () => this.faultsOn,
      after: (proc, ms, fn) => this.sched.after(ms, () => proc.up && fn()),
      // An operator who resolved the branch the other way asked for it (heuristic, reported).
      violation: (what, branch) =>
        branch !== undefined && this.resolved.has(branch) ? this.log(`heuristic: ${what}`) : this.violation(what),
      log: (line) => this.log(line),
      died: (app) =>
        this.timer({ name: 'w', up: true, incarnation: 0 }, rng.int(10, 3_000), () => this.restartApp(app)),
      applied: () => this.checkAtomicity(),
    }
    for (let i = 0; i < n; i++) {
      const r = rng.next()
      const vote = r < 0.82 ? 'prepared' : r < 0.92 ? 'read-only' : 'refused'
      const app = new ContractApp(
        `P${i}`,
        host,
        { failure: this.faults.appFailure, slow: this.faults.appSlow, dieAfterPrepare: this.faults.dieAfterPrepare },
        vote,
      )
      this.ps.push({ pod: this.addPod(`P${i}`, `svc${i}`, app), app, awaited: i !== unawaited })
    }
  }

  async run(): Promise<MeshReport> {
    for (const pod of this.pods) this.startSidecar(pod)
    this.planFaults()
    this.sched.after(FAULTS_END_MS, () => {
      this.faultsOn = false
      for (const pod of this.pods) pod.disk.faults = this.diskFaults()
      this.log('faults stop')
    })
    const quiesced = await this.sched.runAsync(FAULTS_END_MS + SETTLE_MS, MAX_EVENTS, settle, (n) =>
      this.stepCrashes.get(n)?.(),
    )
    this.checkEnd(quiesced)
    this.stats.diskFaults = this.diskFaultCount()
    return {
      seed: this.seed,
      quiesced,
      endTime: this.sched.now,
      events: this.sched.events,
      violations: this.violations,
      stats: this.stats,
      appOutcome: this.appOutcome,
    }
  }

  protected override sidecarStarted(pod: Pod): void {
    if (pod === this.c && !this.started) {
      this.started = true
      this.begin(pod.sidecar as Sidecar)
    }
  }

  // -------------------------------------------------------------------------------------------
  // Faults

  private planFaults(): void {
    const f = this.faults
    for (const pod of this.pods) {
      let t = 0
      while (this.rng.chance(f.crashes)) {
        t += this.rng.chance(0.7) ? this.rng.int(0, 300) : this.rng.int(0, FAULTS_END_MS / 3)
        if (t >= FAULTS_END_MS) break
        const down = this.downtime()
        const at = t
        const back = at + down
        const what = this.rng.next()
        const kind = this.rng.chance(0.3) ? 'power' : 'process'
        const wipe = pod === this.c && f.wipeCoordinator && this.stats.wipes === 0 && this.rng.chance(0.5)
        this.sched.after(at, () => {
          // The sidecar alone, the app alone (participant pods), or the whole pod.
          if (what < 0.6 || pod === this.c) this.crashSidecar(pod, kind)
          if (what >= 0.45 && pod !== this.c) this.crashApp(pod)
        })
        this.sched.after(back, () => {
          this.restartSidecar(pod, kind, wipe)
          const p = this.ps.find((q) => q.pod === pod)
          if (p !== undefined) this.restartApp(p.app)
        })
        t = back + 1
      }
    }
    // Crashes at a step of the protocol rather than a time: after the n-th event, whichever
    // await each process is in (most runs take 60-200 events).
    for (let i = 0; this.rng.chance(f.stepCrashes) && i < 4; i++) {
      const pod = this.pods[this.rng.int(0, this.pods.length - 1)] as Pod
      const kind = this.rng.chance(0.3) ? 'power' : 'process'
      const whole = this.rng.chance(0.3)
      this.stepCrashes.set(this.rng.int(1, 220), () => {
        if (!this.faultsOn) return
        this.crashSidecar(pod, kind)
        if (whole) this.crashApp(pod)
        this.timer({ name: 'w', up: true, incarnation: 0 }, this.downtime(), () => {
          this.restartSidecar(pod, kind)
          const p = this.ps.find((q) => q.pod === pod)
          if (p !== undefined) this.restartApp(p.app)
        })
      })
    }
    for (let i = 0; i < f.resolutions; i++)
      this.sched.after(this.rng.int(0, FAULTS_END_MS + 120_000), () => this.operatorResolves())
    for (let i = 0; i < f.clockJumps; i++) {
      const pod = this.pods[this.rng.int(0, this.pods.length - 1)] as Pod
      this.sched.after(this.rng.int(0, FAULTS_END_MS), () => {
        const jump = this.rng.chance(0.5) ? this.rng.int(-5_000, -1) : this.rng.int(1, 90_000)
        pod.clockOffset += jump
        this.stats.clockJumps++
        this.log(`${pod.name} wall clock jumps ${jump} ms`)
      })
    }
  }

  /** How long a process stays down: mostly a quick restart, sometimes a rescheduled pod (minutes). */
  private downtime(): number {
    const r = this.rng.next()
    return r < 0.06 ? this.rng.int(60_000, 180_000) : r < 0.25 ? this.rng.int(500, 8_000) : this.rng.int(1, 400)
  }

  private crashApp(pod: Pod): void {
    const p = this.ps.find((q) => q.pod === pod)
    if (p === undefined || !p.app.proc.up) return
    this.stats.appCrashes++
    this.log(`CRASH ${pod.name} app`)
    p.app.crash()
  }

  private restartApp(app: ContractApp): void {
    if (app.proc.up) return
    app.restart()
    this.log(`RESTART ${app.name} app`)
  }

  /** An operator resolves a prepared branch: refused unless in doubt, or forced. */
  private operatorResolves(): void {
    const candidates = this.ps.filter(
      (p) => p.pod.sidecar !== undefined && p.pod.sidecar.participant.list().some((b) => b.status === 'prepared'),
    )
    if (candidates.length === 0) return
    const p = candidates[this.rng.int(0, candidates.length - 1)] as (typeof this.ps)[number]
    const s = p.pod.sidecar as Sidecar
    const b = s.participant.list().find((v) => v.status === 'prepared')
    if (b === undefined) return
    const outcome: Outcome = this.rng.chance(0.5) ? 'committed' : 'aborted'
    const force = this.rng.chance(0.3)
    this.log(`operator resolves ${p.pod.name} ${b.branch} ${outcome}${force ? ' (forced)' : ''}`)
    void s.participant.resolve(b.tx, outcome, 'operator', force).then((r) => {
      if (r instanceof TxmeshErrorClass) {
        this.log(`operator refused: ${r.code}`)
        return
      }
      this.resolved.set(b.branch, outcome)
    })
  }

  // -------------------------------------------------------------------------------------------
  // The initiator

  private begin(s: Sidecar): void {
    const tight = this.rng.chance(0.3)
    const timeoutMs = tight ? this.rng.int(40, 400) : this.rng.int(400, 30_000)
    const begun = s.coordinator.begin('2pc', timeoutMs)
    if (begun instanceof TxmeshErrorClass) return this.violation(`begin refused: ${begun.code}`)
    this.txId = begun.id
    this.token = begun.context
    this.log(`begin ${begun.id} (${timeoutMs} ms)`)
    for (const p of this.ps) {
      const at = p.awaited ? this.rng.int(0, 30) : this.rng.int(0, 400)
      this.timer(this.procNode(this.initiator.proc), at, () => void this.businessCall(p))
    }
    if (!this.ps.some((p) => p.awaited)) this.decide()
  }

  private procNode(proc: SimProc): { name: string; up: boolean; incarnation: number } {
    return {
      name: proc.name,
      get up() {
        return proc.up
      },
      incarnation: 0,
    }
  }

  private async businessCall(p: (typeof this.ps)[number]): Promise<void> {
    const token = this.token as string
    // The app's request to its sidecar's egress (loopback), forwarded to the participant's ingress.
    const r = await this.rpc(
      this.initiator.proc,
      SIM_CONFIG.defaultRoute.timeoutMs,
      () => {
        const s = this.c.sidecar
        if (s === undefined) return 'refused'
        return { proc: s.proc, answer: this.egress(s, token, p.pod) }
      },
      false,
      'pod',
    )
    const ok = typeof r === 'object' && r.status >= 200 && r.status < 300
    this.log(
      `call to ${p.pod.name}: ${typeof r === 'object' ? `${r.status}${r.code === undefined ? '' : ` ${r.code}`}` : r}`,
    )
    if (!p.awaited) return
    this.answered.add(p.app)
    if (ok) this.succeeded.add(p.app)
    else this.failedCalls++
    if (this.answered.size === this.ps.filter((q) => q.awaited).length) this.decide()
  }

  /** The initiator's sidecar forwards a call with the context: the real plane's egress hook. */
  private async egress(s: Sidecar, token: string, target: Pod): Promise<{ status: number; code?: string }> {
    const route = SIM_CONFIG.defaultRoute
    const hook = s.plane.egress(token, route, {
      origin: `http://${target.service}`,
      host: target.service,
      method: 'POST',
      path: '/work',
      headers: [CONTEXT_HEADER, token],
    })
    if (hook instanceof TxmeshErrorClass) return { status: hook.status, code: hook.code }
    const r = await this.rpc(
      s.proc,
      route.timeoutMs,
      () => {
        if (target.sidecarProc?.up !== true) return 'refused'
        const ts = target.sidecar
        if (ts === undefined) return { proc: target.sidecarProc, answer: { status: 503, headers: [] as string[] } }
        return { proc: ts.proc, answer: this.ingress(ts, target, token) }
      },
      false,
    )
    if (typeof r !== 'object') {
      hook?.onEnd()
      return { status: 502, code: r }
    }
    const headers = [...r.headers]
    const err = hook === undefined ? undefined : await hook.onResponseHead(r.status, headers)
    hook?.onEnd()
    if (err !== undefined) return { status: err.status, code: err.code }
    return { status: r.status }
  }

  /** The participant's sidecar receives it: the real plane's ingress hook, then its app. */
  private async ingress(s: Sidecar, pod: Pod, token: string): Promise<{ status: number; headers: string[] }> {
    const headers = [CONTEXT_HEADER, token]
    const hook = s.plane.ingress(token, SIM_CONFIG.defaultRoute, headers)
    this.log(`${pod.name} ingress: ${hook instanceof TxmeshErrorClass ? hook.code : 'joined'}`)
    if (hook instanceof TxmeshErrorClass) return coded(hook)
    if (hook?.beforeSend !== undefined) {
      const err = await hook.beforeSend()
      if (err !== undefined) {
        hook.onEnd()
        return coded(err)
      }
    }
    const app = pod.app
    const r = await this.rpc(
      s.proc,
      SIM_CONFIG.defaultRoute.timeoutMs,
      () => (app.proc.up ? { proc: app.proc, answer: app.handle('/work', headers, undefined) } : 'refused'),
      false,
      'pod',
    )
    this.log(`${pod.name} app answered the call: ${typeof r === 'object' ? r.status : r}`)
    if (typeof r !== 'object') {
      hook?.onEnd()
      return { status: 502, headers: [] }
    }
    const out: string[] = []
    const err = hook === undefined ? undefined : await hook.onResponseHead(r.status, out)
    hook?.onEnd()
    return err === undefined ? { status: r.status, headers: out } : coded(err)
  }

  private decide(): void {
    this.timer(this.procNode(this.initiator.proc), this.rng.int(0, 20), () => {
      const r = this.rng.next()
      if (r < 0.03) return this.log('app never finishes (the deadline must abort)')
      const kind = this.failedCalls > 0 || r < 0.1 ? 'abort' : 'commit'
      this.asked = kind
      this.log(`app asks ${kind}`)
      void this.finish(kind).then((o) => {
        if (o === undefined) return
        this.appOutcome = o
        this.log(`app hears ${o}`)
      })
      if (kind === 'commit' && this.rng.chance(0.1)) {
        this.timer(this.procNode(this.initiator.proc), this.rng.int(0, 60), () => void this.finish('abort'))
      }
    })
  }

  /** The app's commit/abort through its sidecar's API (loopback); undefined if no answer came. */
  private async finish(kind: 'commit' | 'abort'): Promise<Outcome | undefined> {
    const id = this.txId as string
    const r = await this.rpc(
      this.initiator.proc,
      LIMITS.commitAckWaitMs + 60_000,
      () => {
        const s = this.c.sidecar
        if (s === undefined) return 'refused'
        return {
          proc: s.proc,
          answer: kind === 'commit' ? s.coordinator.commit(id) : s.coordinator.abort(id, 'app chose to abort'),
        }
      },
      false,
      'pod',
    )
    if (typeof r !== 'object' || r instanceof TxmeshErrorClass) return undefined
    return r.outcome
  }

  // -------------------------------------------------------------------------------------------
  // What must hold

  private checkEnd(quiesced: 'idle' | 'time' | 'events'): void {
    if (this.txId === undefined) return this.violation('the transaction never began')
    const status = (app: ContractApp): BranchWork | 'none' => [...app.work.values()][0]?.status ?? 'none'
    const branchOf = (app: ContractApp): string | undefined => [...app.work.keys()][0]
    const committed = this.ps.filter((p) => status(p.app) === 'committed')
    const resolvedTo = (app: ContractApp, o: Outcome): boolean => this.resolvedTo(app, o)
    this.checkAtomicity()
    // The outcome the initiator was told is what every app whose call succeeded applied.
    if (this.appOutcome === 'committed') {
      for (const p of this.ps) {
        if (!this.succeeded.has(p.app)) continue
        const s = status(p.app)
        if (
          s !== 'committed' &&
          s !== 'read-only' &&
          !resolvedTo(p.app, 'aborted') &&
          !(s === 'prepared' && this.inDoubtForOperator(p))
        )
          this.violation(`app was told committed but ${p.app.name} is ${s}`)
      }
    }
    if (this.appOutcome === 'aborted')
      for (const p of committed)
        if (!resolvedTo(p.app, 'committed')) this.violation(`app was told aborted but ${p.app.name} committed`)
    if (this.asked === 'abort' && this.appOutcome === 'committed')
      this.violation('app asked abort and was told committed without asking commit first')
    // Heuristic outcomes are reported where the coordinator heard them.
    const mixed =
      committed.length > 0 &&
      this.ps.some((p) => [...p.app.work.values()][0]?.wasPrepared === true && status(p.app) === 'aborted')
    const heard = this.events.some((e) => e.type === 'tx-heuristic')
    if (mixed && this.resolved.size === 0) this.violation('mixed outcome with no operator resolution')
    if (
      mixed &&
      !heard &&
      this.c.wiped === 0 &&
      this.c.sidecar?.coordinator.view(this.txId)?.status !== 'heuristic-mixed' &&
      this.coordinatorHeardEveryone()
    ) {
      this.violation('mixed outcome, and the coordinator that heard every branch reported no heuristic')
    }
    // Nothing left behind: no prepared or open work, no branch or transaction still held; only a
    // branch whose coordinator's log is gone may stay prepared, listed in doubt for an operator.
    for (const p of this.ps) {
      const s = status(p.app)
      const b = branchOf(p.app)
      const held = p.pod.sidecar?.participant.list().find((v) => v.branch === b)
      const inDoubtForOperator = this.inDoubtForOperator(p)
      if (s === 'open') this.violation(`${p.app.name}: work of ${b} left open`)
      if (s === 'prepared' && !inDoubtForOperator)
        this.violation(
          `${p.app.name}: branch ${b} left prepared${held === undefined ? ' and its sidecar holds no record of it' : ` (sidecar: ${held.status}, in doubt ${held.inDoubt})`}`,
        )
      if (held !== undefined && !inDoubtForOperator && quiesced !== 'idle')
        this.violation(`${p.pod.name} sidecar still holds ${held.branch} (${held.status})`)
    }
    const active = this.c.sidecar?.coordinator.view(this.txId)
    if (
      active !== undefined &&
      active.status !== 'committed' &&
      active.status !== 'aborted' &&
      active.status !== 'heuristic-mixed' &&
      this.c.sidecar?.coordinator.has(this.txId) === true
    ) {
      const stuckOnUnknown = this.ps.some((p) => p.pod.wiped > 0)
      if (!stuckOnUnknown) this.violation(`coordinator still holds the transaction (${active.status})`)
    }
    if (quiesced === 'events') this.violation(`did not settle: ${this.sched.events} events`)
  }

  /** The branch stays prepared because its coordinator's log is gone, and says so to operators. */
  private inDoubtForOperator(p: (typeof this.ps)[number]): boolean {
    const b = [...p.app.work.keys()][0]
    const held = p.pod.sidecar?.participant.list().find((v) => v.branch === b)
    return held?.inDoubt === true && held.coordinatorUnknown && this.c.wiped > 0
  }

  private resolvedTo(app: ContractApp, o: Outcome): boolean {
    const b = [...app.work.keys()][0]
    return b !== undefined && this.resolved.get(b) === o
  }

  /**
   * Atomicity, checked whenever an app changes what it holds: a branch that prepared never rolls
   * back while another commits, unless an operator resolved one of them that way (reported:
   * branch-resolved, heuristic-mixed). Reported once per run.
   */
  private checkAtomicity(): void {
    if (this.split) return
    const committed = this.ps.filter((p) => [...p.app.work.values()][0]?.status === 'committed')
    if (committed.length === 0) return
    for (const p of this.ps) {
      const w = [...p.app.work.values()][0]
      if (
        w?.status === 'aborted' &&
        w.wasPrepared &&
        !this.resolvedTo(p.app, 'aborted') &&
        !committed.every((c) => this.resolvedTo(c.app, 'committed'))
      ) {
        this.split = true
        this.violation(
          `${p.app.name} rolled back a prepared branch while ${committed.map((c) => c.app.name).join(',')} committed (${w.history.join(' ')})`,
        )
      }
    }
  }

  private coordinatorHeardEveryone(): boolean {
    return this.ps.every((p) => p.pod.sidecar !== undefined)
  }
}

function coded(err: TxmeshError): { status: number; headers: string[] } {
  return { status: err.status, headers: [ERROR_HEADER, err.code] }
}

/** One macrotask turn: every promise continuation of the last event has run. */
function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve))
}
