// One saga or TCC transaction across a simulated mesh that runs the shipped sidecar code
// (./mesh.ts): the initiator pod's app begins it through its sidecar's SagaDriver, calls
// 1-4 step services through the real plane egress (each call a step: its intent force-written
// before the call leaves, its resolution before the answer reaches the app), and asks commit or
// abort; each service pod's sidecar takes the call through the real plane ingress to a
// contract-only app (./saga-apps.ts), and takes the coordinator's compensations (saga) and
// cancels of tries that never answered (TCC) the same way; the TCC confirm/cancel of an answered
// try goes over the control listener to the service's sidecar, which calls its app's hook.
// One seed draws the route (saga: a compensation template that reads only the request, one
// that reads the response, or none and the service names its undo in `txmesh-compensate`; TCC:
// the target's own hooks, hook templates that read only the request, or the response) and the
// faults: message loss, duplication, delay and reordering, late re-deliveries of a call;
// sidecar crashes at any await (process crash or power loss) and restarts from the log; app
// crashes, slow, failing and refusing apps, apps that do the work and then fail; disk latency
// and EIO; a service pod replaced by one with a fresh log at the same address; wall-clock
// jumps; operators retrying stuck steps.
//
// Checked once faults stopped and everything settled, against what the apps applied (the
// invariants the earlier model of the saga driver checked, restated): a committed saga compensated none of the
// steps the app heard succeed, an aborted one compensated every action that took effect, exactly
// once in effect, the steps the app heard succeed in reverse order of their calls; a committed
// TCC confirmed every try the app heard succeed and cancelled none, an aborted one cancelled
// every try that took effect and confirmed none; a step that answered late is undone whatever the
// outcome; the coordinator never announced both outcomes and the app was told the one it ended
// with; nothing is left at the coordinator unless a step is stuck past its budget and reported
// (tx-stuck); the logs keep nothing of it but what such a step needs. Allowed, and counted: a
// saga call without a template whose answer never came back (the limit docs/sagas-tcc.md states: nothing named
// its undo), or one answered 5xx whose undo the answer could not name; a saga step the app heard
// succeed whose record was still being written when the abort came, undone after the steps
// whose undo had started (as steps.sim.test.ts reports it); steps stuck for good, listed in the
// report: an intent whose compensation needs the answer it never got, a confirm or cancel
// refused by the new sidecar at a reused address (TXM_BRANCH_NOT_HERE), an op refused by a
// service whose clock runs more than LIMITS.stepOpContextTtlMs ahead (410 TXM_CONTEXT_EXPIRED;
// the control listener tolerates less skew than that anyway, LIMITS.controlClockSkewMs).
import { HookForbiddenError, InternalError, TxmeshError, UpstreamProtocolError } from '../../src/errors.js'
import { LIMITS } from '../../src/limits.js'
import { parseConfig } from '../../src/config/load.js'
import type { RoutePolicy } from '../../src/config/types.js'
import type { Outcome } from '../../src/tx/core.js'
import { ActiveTxPlane } from '../../src/proxy/tx-hook.js'
import type { EgressCall } from '../../src/proxy/types.js'
import { BRANCH_ID_HEADER, CONTEXT_HEADER, STEP_CANCEL_PATH } from '../../src/tx/protocol.js'
import type { StepTxView } from '../../src/tx/saga/driver.js'
import { ERROR_HEADER } from '../../src/errors.js'
import {
  header,
  MeshWorld,
  MESH_KEYS,
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
import { StepApp, type StepAppHost } from './saga-apps.js'

/** No fault after this; every process is up again soon after. */
const FAULTS_END_MS = 30_000
/** Once faults stop, everything must settle within this much simulated time. */
const SETTLE_MS = 20 * 60_000
const MAX_EVENTS = 400_000
/** After faults stop an operator looks this often for stuck steps and retries them, this many times. */
const OPERATOR_EVERY_MS = 90_000
const OPERATOR_LOOKS = 4

export type SagaVariant =
  'saga-request' | 'saga-response' | 'saga-header' | 'tcc-default' | 'tcc-template' | 'tcc-response'
type Mode = 'saga' | 'tcc'

// The egress routes a seed's calls take, as an operator writes them (docs/sagas-tcc.md).
const ROUTES_YAML = `service: sim
routes:
  - name: saga-request
    match: {direction: egress}
    compensation: {method: DELETE, path: "/things/{step.id}", headers: {x-reason: "saga {tx.id} aborted"}}
  - name: saga-response
    match: {direction: egress}
    compensation: {method: DELETE, path: "/things/{response.json.id}"}
  - name: saga-header
    match: {direction: egress}
  - name: tcc-default
    match: {direction: egress}
  - name: tcc-template
    match: {direction: egress}
    tcc: {confirm: {path: "/holds/{step.id}/capture"}, cancel: {method: DELETE, path: "/holds/{step.id}"}}
  - name: tcc-response
    match: {direction: egress}
    tcc: {confirm: {path: "/holds/{response.json.id}/capture"}, cancel: {method: DELETE, path: "/holds/{response.json.id}"}}
`
const ROUTES: ReadonlyMap<string, RoutePolicy> = new Map(
  parseConfig(ROUTES_YAML, 'saga-mesh.yaml').routes.map((r) => [r.name, r]),
)
const VARIANTS: Record<Mode, readonly SagaVariant[]> = {
  saga: ['saga-request', 'saga-response', 'saga-header'],
  tcc: ['tcc-default', 'tcc-template', 'tcc-response'],
}

export interface SagaStats extends MeshStats {
  calls: number
  /** Calls the app heard answered 409 TXM_TX_NOT_ACTIVE: an intent refused (not sent) or a step that answered late. */
  notActive: number
  compensations: number
  confirms: number
  cancels: number
  emptyUndos: number
  hangingRefused: number
  duplicateDeliveries: number
  refusals: number
  recoveries: number
  stuck: number
  operatorRetries: number
  /** Saga actions never undone because nothing recorded their undo (allowed, docs/sagas-tcc.md "Limits to know"). */
  unrecorded: number
  /** Saga actions answered 5xx whose undo the answer could not name (allowed). */
  undoUnknown: number
  /** Transactions left with steps stuck for good, reported (allowed). */
  stuckLeft: number
  /** Saga steps the app heard succeed whose record was fed after the abort began: undone out of order (reported). */
  inFlightAtAbort: number
  /** Sidecars left running on a log that failed (an injected disk fault): it refuses writes until a restart. */
  failedLogs: number
}

export function emptySagaStats(): SagaStats {
  return {
    ...emptyMeshStats(),
    calls: 0,
    notActive: 0,
    compensations: 0,
    confirms: 0,
    cancels: 0,
    emptyUndos: 0,
    hangingRefused: 0,
    duplicateDeliveries: 0,
    refusals: 0,
    recoveries: 0,
    stuck: 0,
    operatorRetries: 0,
    unrecorded: 0,
    undoUnknown: 0,
    stuckLeft: 0,
    inFlightAtAbort: 0,
    failedLogs: 0,
  }
}

export interface SagaReport {
  readonly seed: number
  readonly mode: Mode
  readonly variant: SagaVariant
  readonly quiesced: 'idle' | 'time' | 'events'
  readonly endTime: number
  readonly events: number
  readonly violations: readonly string[]
  readonly stats: SagaStats
  readonly outcome: Outcome
  readonly appOutcome: Outcome | undefined
  /** Steps left stuck for good, reported (allowed): "step (op): last error". */
  readonly stuck: readonly string[]
}

export interface SagaFaults extends MeshFaults {
  readonly crashes: number
  readonly stepCrashes: number
  readonly appFailure: number
  readonly appFailAfterWork: number
  readonly appSlow: number
  readonly refusals: number
  /** A late re-delivery of a call (a retrying client or proxy that drops the answer). */
  readonly redeliver: number
  readonly wipeService: boolean
  readonly clockJumps: number
  readonly operatorRetries: number
}

export function simulateSaga(seed: number, trace?: (line: string) => void): Promise<SagaReport> {
  return new SagaMesh(seed, trace).run()
}

/** What the initiating app heard of one of its calls. */
type Heard =
  /** 2xx: the step is recorded, not late. */
  | 'ok'
  /** 5xx the egress passed on (the step recorded, not late; or nothing could undo it). */
  | 'upstream-5xx'
  /** 4xx the service answered (saga: no step; TCC: a step). */
  | 'refused'
  /** 409 TXM_TX_NOT_ACTIVE: the intent was refused (not sent), or the step answered late. */
  | 'not-active'
  /** Another error of the sidecars (a log failure, a timeout, no sidecar). */
  | 'error'
  /** No answer reached the app. */
  | 'none'

interface Call {
  readonly index: number
  readonly target: Target
  /** The app waits for it before it decides. */
  readonly awaited: boolean
  stepId: string | undefined
  heard: Heard | undefined
  /** When the egress had recorded what the answer told (the coordinator fed the step), if it did. */
  recordedAt: number | undefined
}

interface Target {
  readonly pod: Pod
  readonly app: StepApp
}

/** The initiator pod's app: it drives the transaction through its sidecar's API and egress. */
class InitiatorApp implements App {
  proc = new SimProc('C.app')
  handle(): AppAnswer {
    return { status: 404 }
  }
}

/**
 * What the peer sidecars reach at a service pod's origin (http://<service>): its sidecar's
 * ingress, which checks the step op's context and hands it to the app. The app's own sidecar
 * calls the app directly (TCC confirm/cancel hooks): those requests carry no context.
 */
class PodFront implements App {
  constructor(
    readonly app: StepApp,
    private readonly viaIngress: (
      path: string,
      headers: readonly string[],
      body: string | undefined,
    ) => Promise<AppAnswer> | AppAnswer,
  ) {}
  get proc(): SimProc {
    return this.app.proc
  }
  set proc(p: SimProc) {
    this.app.proc = p
  }
  handle(path: string, headers: readonly string[], body: string | undefined): Promise<AppAnswer> | AppAnswer {
    return header(headers, CONTEXT_HEADER) === undefined
      ? this.app.handle(path, headers)
      : this.viaIngress(path, headers, body)
  }
}

class SagaMesh extends MeshWorld {
  protected readonly faults: SagaFaults
  protected readonly stats: SagaStats = emptySagaStats()
  private readonly mode: Mode
  private readonly variant: SagaVariant
  private readonly route: RoutePolicy
  private readonly c: Pod
  private readonly targets: Target[] = []
  private readonly calls: Call[] = []
  private readonly initiator = new InitiatorApp()
  private readonly appTimeoutMs: number
  private txId: string | undefined
  private token: string | undefined
  private started = false
  private decided = false
  private asked: 'commit' | 'abort' | undefined
  private appOutcome: Outcome | undefined
  private readonly stepCrashes = new Map<number, () => void>()
  /** Disk faults injected on each pod's disk before its running sidecar started. */
  private readonly diskFaultsAtStart = new Map<Pod, number>()
  /** When each of `events` was emitted (stamped after the scheduler event that emitted it). */
  private readonly eventTimes: number[] = []

  private readonly tracing: boolean

  constructor(seed: number, trace: ((line: string) => void) | undefined) {
    super(seed, trace)
    this.tracing = trace !== undefined
    const rng = this.rng
    this.mode = rng.chance(0.5) ? 'saga' : 'tcc'
    const variants = VARIANTS[this.mode]
    this.variant = variants[rng.int(0, variants.length - 1)] as SagaVariant
    this.route = ROUTES.get(this.variant) as RoutePolicy
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
      appFailAfterWork: rng.chance(0.3) ? rng.next() * 0.1 * scale : 0,
      appSlow: rng.chance(0.3) ? rng.next() * 0.05 * scale : 0,
      refusals: rng.chance(0.3) ? rng.next() * 0.3 * scale : 0,
      redeliver: rng.next() * 0.2 * scale,
      wipeService: scale > 0 && rng.chance(0.05),
      clockJumps: scale > 0 && rng.chance(0.1) ? rng.int(1, 3) : 0,
      operatorRetries: scale > 0 ? rng.int(0, 2) : 0,
    }
    // An app that gives up on a call before its egress does hears a failure of a step the egress
    // records: it aborts, and the step is undone.
    this.appTimeoutMs = rng.chance(0.2) ? rng.int(50, this.route.timeoutMs) : this.route.timeoutMs + 100
    this.c = this.addPod('C', 'orders', this.initiator)
    const host: StepAppHost = {
      rng,
      faultsOn: () => this.faultsOn,
      now: () => this.sched.now,
      after: (proc, ms, fn) => this.sched.after(ms, () => proc.up && fn()),
      violation: (what) => this.violation(what),
      log: (line) => this.log(line),
    }
    const n = rng.int(1, 4)
    for (let i = 0; i < n; i++) {
      const app = new StepApp(`P${i}`, host, {
        failure: this.faults.appFailure,
        failAfterWork: this.faults.appFailAfterWork,
        slow: this.faults.appSlow,
        refusal: this.faults.refusals,
      })
      let pod: Pod | undefined
      const front = new PodFront(app, (path, headers, body) =>
        this.stepOpAtIngress(pod as Pod, app, path, headers, body),
      )
      pod = this.addPod(`P${i}`, `svc${i}`, front)
      this.targets.push({ pod, app })
    }
  }

  async run(): Promise<SagaReport> {
    for (const pod of this.pods) this.startSidecar(pod)
    this.planFaults()
    this.sched.after(FAULTS_END_MS, () => {
      this.faultsOn = false
      for (const pod of this.pods) pod.disk.faults = this.diskFaults()
      this.log('faults stop')
    })
    for (let i = 1; i <= OPERATOR_LOOKS; i++)
      this.sched.after(FAULTS_END_MS + i * OPERATOR_EVERY_MS, () => this.operatorRetries())
    const quiesced = await this.sched.runAsync(FAULTS_END_MS + SETTLE_MS, MAX_EVENTS, settle, (n) => {
      while (this.eventTimes.length < this.events.length) {
        const e = this.events[this.eventTimes.length] as (typeof this.events)[number]
        this.eventTimes.push(this.sched.now)
        if (this.tracing && (e.type !== 'tx-begin' || e.data.recovered === true))
          this.log(`${e.pod} ${e.type} ${JSON.stringify(e.data)}`)
      }
      this.stepCrashes.get(n)?.()
    })
    const { outcome, stuck } = this.checkEnd(quiesced)
    for (const pod of this.pods) this.stats.diskFaults += injectedFaults(pod)
    for (const t of this.targets) {
      this.stats.emptyUndos += t.app.stats.emptyUndos
      this.stats.hangingRefused += t.app.stats.hangingRefused
      this.stats.duplicateDeliveries += t.app.stats.duplicateDeliveries
      this.stats.refusals += t.app.stats.refusals
    }
    return {
      seed: this.seed,
      mode: this.mode,
      variant: this.variant,
      quiesced,
      endTime: this.sched.now,
      events: this.sched.events,
      violations: this.violations,
      stats: this.stats,
      outcome,
      appOutcome: this.appOutcome,
      stuck,
    }
  }

  protected override sidecarStarted(pod: Pod): void {
    const s = pod.sidecar as Sidecar
    this.diskFaultsAtStart.set(pod, injectedFaults(pod))
    if (pod === this.c && !this.started) {
      this.started = true
      this.begin(s)
    }
  }

  private node(proc: SimProc): { name: string; up: boolean; incarnation: number } {
    return {
      name: proc.name,
      get up() {
        return proc.up
      },
      incarnation: 0,
    }
  }

  private readonly worldNode = { name: 'world', up: true, incarnation: 0 }

  // -------------------------------------------------------------------------------------------
  // Faults

  private planFaults(): void {
    const f = this.faults
    let wipes = f.wipeService ? 1 : 0
    for (const pod of this.pods) {
      const target = this.targets.find((t) => t.pod === pod)
      let t = 0
      while (this.rng.chance(f.crashes)) {
        t += this.rng.chance(0.7) ? this.rng.int(0, 300) : this.rng.int(0, FAULTS_END_MS / 3)
        if (t >= FAULTS_END_MS) break
        const at = t
        const back = at + this.downtime()
        const what = this.rng.next()
        const kind = this.rng.chance(0.3) ? 'power' : 'process'
        // A service pod replaced by another at its address, with a new log (a TCC step's holder changes).
        const wipe = target !== undefined && wipes > 0 && this.rng.chance(0.5)
        if (wipe) wipes--
        this.sched.after(at, () => {
          // The sidecar alone, the app alone (service pods), or the whole pod.
          if (what < 0.6 || target === undefined) this.crashSidecar(pod, kind)
          if (what >= 0.45 && target !== undefined) this.crashApp(target)
        })
        this.sched.after(back, () => {
          this.restartSidecar(pod, kind, wipe && pod.sidecarProc?.up !== true)
          if (target !== undefined) this.restartApp(target)
        })
        t = back + 1
      }
    }
    // Crashes at a step of the protocol rather than a time: after the n-th event, whichever
    // await each process is in.
    for (let i = 0; this.rng.chance(f.stepCrashes) && i < 4; i++) {
      const pod = this.pods[this.rng.int(0, this.pods.length - 1)] as Pod
      const target = this.targets.find((t) => t.pod === pod)
      const kind = this.rng.chance(0.3) ? 'power' : 'process'
      const whole = this.rng.chance(0.3)
      this.stepCrashes.set(this.rng.int(1, 220), () => {
        if (!this.faultsOn) return
        this.crashSidecar(pod, kind)
        if (whole && target !== undefined) this.crashApp(target)
        this.timer(this.worldNode, this.downtime(), () => {
          this.restartSidecar(pod, kind)
          if (target !== undefined) this.restartApp(target)
        })
      })
    }
    for (let i = 0; i < f.clockJumps; i++) {
      const pod = this.pods[this.rng.int(0, this.pods.length - 1)] as Pod
      this.sched.after(this.rng.int(0, FAULTS_END_MS), () => {
        const jump = this.rng.chance(0.5) ? this.rng.int(-5_000, -1) : this.rng.int(1, 90_000)
        pod.clockOffset += jump
        this.stats.clockJumps++
        this.log(`${pod.name} wall clock jumps ${jump} ms`)
      })
    }
    // An operator presses Retry now and then while faults still strike (often on nothing).
    for (let i = 0; i < f.operatorRetries; i++)
      this.sched.after(this.rng.int(0, FAULTS_END_MS), () => this.operatorRetries())
  }

  /** How long a process stays down: mostly a quick restart, sometimes a rescheduled pod (minutes). */
  private downtime(): number {
    const r = this.rng.next()
    return r < 0.06 ? this.rng.int(60_000, 180_000) : r < 0.25 ? this.rng.int(500, 8_000) : this.rng.int(1, 400)
  }

  private crashApp(t: Target): void {
    if (!t.app.proc.up) return
    this.stats.appCrashes++
    this.log(`CRASH ${t.pod.name} app`)
    t.app.crash()
  }

  private restartApp(t: Target): void {
    if (t.app.proc.up) return
    t.app.restart()
    this.log(`RESTART ${t.pod.name} app`)
  }

  /** The operator's Retry (POST /v1/transactions/{id}/retry) on a transaction with stuck steps. */
  private operatorRetries(): void {
    const s = this.c.sidecar
    if (s === undefined || this.txId === undefined || (s.steps.view(this.txId)?.stuck ?? 0) === 0) return
    const n = s.steps.retryStuck(this.txId)
    this.stats.operatorRetries++
    this.log(`operator retries the stuck steps: ${n instanceof TxmeshError ? n.code : n}`)
  }

  // -------------------------------------------------------------------------------------------
  // The initiator

  private begin(s: Sidecar): void {
    const tight = this.rng.chance(0.3)
    const timeoutMs = tight ? this.rng.int(40, 400) : this.rng.int(400, 30_000)
    const begun = s.steps.begin(this.mode, timeoutMs)
    if (begun instanceof TxmeshError) return this.violation(`begin refused: ${begun.code}`)
    this.txId = begun.id
    this.token = begun.context
    this.log(`begin ${this.mode} ${begun.id} on route ${this.variant} (${timeoutMs} ms)`)
    const n = this.targets.length
    // One call per service, and now and then a second step at one of them.
    const order = this.targets.map((t) => t)
    if (this.rng.chance(0.2)) order.push(this.targets[this.rng.int(0, n - 1)] as Target)
    for (const target of order)
      this.calls.push({
        index: this.calls.length,
        target,
        awaited: true,
        stepId: undefined,
        heard: undefined,
        recordedAt: undefined,
      })
    if (this.mode === 'saga') {
      // Saga calls go one after the other: a later one may rely on an earlier one.
      this.timer(this.node(this.initiator.proc), this.rng.int(0, 20), () => void this.sagaNext(0))
    } else {
      for (const call of this.calls)
        this.timer(this.node(this.initiator.proc), this.rng.int(0, 30), () => void this.call(call))
    }
  }

  private async sagaNext(i: number): Promise<void> {
    const call = this.calls[i] as Call
    await this.call(call)
    if (call.heard === 'ok' && i + 1 < this.calls.length)
      this.timer(this.node(this.initiator.proc), this.rng.int(0, 20), () => void this.sagaNext(i + 1))
    else this.decide()
  }

  /** The app's call through its sidecar's egress (loopback), forwarded to the service's ingress. */
  private async call(call: Call): Promise<void> {
    this.stats.calls++
    this.log(`app calls ${call.target.pod.name} (call ${call.index}${call.awaited ? '' : ', not waited for'})`)
    const r = await this.rpc(
      this.initiator.proc,
      this.appTimeoutMs,
      () => {
        const s = this.c.sidecar
        if (s === undefined) return 'refused'
        return { proc: s.proc, answer: this.egress(s, call) }
      },
      false,
      'pod',
    )
    const heard: Heard = typeof r !== 'object' ? 'none' : r.heard
    call.heard = heard
    if (heard === 'not-active') this.stats.notActive++
    this.log(
      `app: call ${call.index} (step ${call.stepId ?? '-'}) ${typeof r === 'object' ? `${r.status}${r.code === undefined ? '' : ` ${r.code}`}` : r}: ${heard}`,
    )
    if (this.mode === 'tcc' && call.awaited && this.calls.every((c) => !c.awaited || c.heard !== undefined))
      this.decide()
  }

  /** The initiator's sidecar forwards a call with the context: the real plane's egress hook. */
  private async egress(s: Sidecar, call: Call): Promise<{ status: number; code?: string; heard: Heard }> {
    const token = this.token as string
    const target = call.target.pod
    const ec: EgressCall = {
      origin: `http://${target.service}`,
      host: target.service,
      method: 'POST',
      path: '/work',
      headers: [CONTEXT_HEADER, token, 'content-type', 'application/json'],
    }
    const hook = s.plane.egress(token, this.route, ec)
    if (hook === undefined) return { status: 500, code: 'no hook', heard: 'error' }
    if (hook instanceof TxmeshError) return refusedBy(hook)
    call.stepId = header(ec.headers, BRANCH_ID_HEADER)
    const stepToken = header(ec.headers, CONTEXT_HEADER) as string
    if (hook.beforeSend !== undefined) {
      let err: TxmeshError | undefined
      try {
        err = await hook.beforeSend()
      } catch (e) {
        err = e instanceof TxmeshError ? e : new InternalError(`the request could not be prepared: ${String(e)}`)
      }
      if (err !== undefined) {
        hook.onEnd()
        return refusedBy(err)
      }
    }
    if (this.faultsOn && this.rng.chance(this.faults.redeliver)) {
      // A client or proxy that sends the request again, late, and drops the answer: the barrier
      // keeps it from taking effect twice, or after its undo.
      this.sched.after(this.rng.int(20, 3_000), () => {
        const ts = target.sidecar
        if (ts === undefined) return
        this.log(`${target.name}: a late copy of call ${call.index} arrives`)
        void this.ingress(ts, target, call.target.app, stepToken)
      })
    }
    const r = await this.rpc(
      s.proc,
      this.route.timeoutMs,
      () => this.toIngress(target, call.target.app, stepToken),
      true,
    )
    if (typeof r !== 'object') {
      hook.onEnd()
      return { status: r === 'timeout' ? 504 : 502, code: r, heard: 'error' }
    }
    const headers = [...r.headers]
    let err: TxmeshError | undefined
    try {
      err = await hook.onResponseHead(
        r.status,
        headers,
        hook.responseBodyLimit === undefined ? undefined : Buffer.from(r.text ?? ''),
      )
    } catch (e) {
      err = e instanceof TxmeshError ? e : new UpstreamProtocolError(`the response could not be handled: ${String(e)}`)
    }
    hook.onEnd()
    if (err !== undefined) return refusedBy(err)
    call.recordedAt = this.sched.now
    const code = header(headers, ERROR_HEADER)
    const heard: Heard = r.status >= 200 && r.status < 300 ? 'ok' : r.status >= 500 ? 'upstream-5xx' : 'refused'
    return { status: r.status, ...(code === undefined ? {} : { code }), heard }
  }

  private toIngress(
    target: Pod,
    app: StepApp,
    token: string,
  ): { readonly proc: SimProc; readonly answer: Promise<IngressAnswer> | IngressAnswer } | 'refused' {
    if (target.sidecarProc?.up !== true) return 'refused'
    const ts = target.sidecar
    // Listening, still recovering: the real listener answers 503 until the drivers exist.
    if (ts === undefined)
      return { proc: target.sidecarProc, answer: { status: 503, headers: [ERROR_HEADER, 'TXM_NOT_READY'] } }
    return { proc: ts.proc, answer: this.ingress(ts, target, app, token) }
  }

  /** The service's sidecar receives a step's call: the real plane's ingress hook, then its app. */
  private async ingress(s: Sidecar, pod: Pod, app: StepApp, token: string): Promise<IngressAnswer> {
    const headers = [CONTEXT_HEADER, token]
    const hook = s.plane.ingress(token, SIM_CONFIG.defaultRoute, headers)
    if (hook instanceof TxmeshError) {
      this.log(`${pod.name} ingress: ${hook.code}`)
      return coded(hook)
    }
    const r = await this.rpc(
      s.proc,
      this.route.timeoutMs,
      () => (app.proc.up ? { proc: app.proc, answer: app.handle('/work', headers) } : 'refused'),
      false,
      'pod',
    )
    if (typeof r !== 'object') {
      hook?.onEnd()
      return { status: 502, headers: [ERROR_HEADER, 'TXM_UPSTREAM_UNREACHABLE'] }
    }
    const out = [...(r.headers ?? [])]
    const err = hook === undefined ? undefined : await hook.onResponseHead(r.status, out)
    hook?.onEnd()
    return err === undefined
      ? { status: r.status, headers: out, ...(r.text === undefined ? {} : { text: r.text }) }
      : coded(err)
  }

  /**
   * A coordinator's compensation, or cancel of a try that never answered, reaching a service's
   * ingress (src/proxy/ingress/target.ts, ProxyServer.onRequest): the step context is checked,
   * `/.well-known/txmesh/cancel` goes to the app's own cancel hook only with a coordinator's
   * signed cancel, and the app gets the ids and op the ingress sets (never the caller's).
   */
  private stepOpAtIngress(
    pod: Pod,
    app: StepApp,
    path: string,
    headers: readonly string[],
    body: string | undefined,
  ): Promise<AppAnswer> | AppAnswer {
    if (pod.sidecarProc?.up !== true) return 'refused'
    const s = pod.sidecar
    if (s === undefined) return { status: 503, headers: [ERROR_HEADER, 'TXM_NOT_READY'] }
    const token = header(headers, CONTEXT_HEADER) as string
    const stepCancel = path.toLowerCase() === STEP_CANCEL_PATH
    if (!stepCancel && path.startsWith('/.well-known/txmesh/'))
      return coded(new HookForbiddenError(`${path} is a participant hook; only the app's own sidecar calls it`))
    const forwarded: string[] = []
    for (let i = 0; i + 1 < headers.length; i += 2)
      if (!(headers[i] as string).toLowerCase().startsWith('txmesh-'))
        forwarded.push(headers[i] as string, headers[i + 1] as string)
    forwarded.push(CONTEXT_HEADER, token)
    const hook = s.plane.ingress(token, SIM_CONFIG.defaultRoute, forwarded)
    if (hook instanceof TxmeshError) return coded(hook)
    if (stepCancel) {
      const refused = s.plane.stepHook(token, 'cancel')
      if (refused !== undefined) {
        hook?.onEnd()
        return coded(refused)
      }
    }
    const to = stepCancel ? SIM_CONFIG.hooks.cancel : path
    return this.rpc(
      s.proc,
      LIMITS.stepOpTimeoutMs,
      () => (app.proc.up ? { proc: app.proc, answer: app.handle(to, forwarded) } : 'refused'),
      false,
      'pod',
    ).then(async (r) => {
      if (typeof r !== 'object') {
        hook?.onEnd()
        return { status: 502, headers: [ERROR_HEADER, 'TXM_UPSTREAM_UNREACHABLE'] }
      }
      const out = [...(r.headers ?? [])]
      const err = hook === undefined ? undefined : await hook.onResponseHead(r.status, out)
      hook?.onEnd()
      return err === undefined ? { ...r, headers: out } : coded(err)
    })
  }

  private decide(): void {
    if (this.decided) return
    this.decided = true
    this.timer(this.node(this.initiator.proc), this.rng.int(0, 20), () => {
      const r = this.rng.next()
      if (r < 0.03) return this.log('app never finishes (the deadline must abort)')
      const failed = this.calls.some((c) => c.awaited && c.heard !== 'ok')
      const kind = failed || r < 0.1 ? 'abort' : 'commit'
      // A call sent as the app decides, that it does not wait for: its answer may come after
      // commit or abort was asked (a late step, undone whatever the outcome).
      let asksIn = 0
      if (this.rng.chance(0.15)) {
        const target = this.targets[this.rng.int(0, this.targets.length - 1)] as Target
        const call: Call = {
          index: this.calls.length,
          target,
          awaited: false,
          stepId: undefined,
          heard: undefined,
          recordedAt: undefined,
        }
        this.calls.push(call)
        void this.call(call)
        asksIn = this.rng.int(0, 60)
      }
      this.timer(this.node(this.initiator.proc), asksIn, () => {
        this.asked = kind
        this.log(`app asks ${kind}`)
        void this.finish(kind, 0)
        if (kind === 'commit' && this.rng.chance(0.1)) {
          this.timer(this.node(this.initiator.proc), this.rng.int(0, 60), () => {
            this.log('app asks abort while committing')
            void this.finish('abort', 0)
          })
        }
      })
    })
  }

  /** The app's commit/abort through its sidecar's API (loopback); asked again while the sidecar is down. */
  private async finish(kind: 'commit' | 'abort', attempt: number): Promise<void> {
    const id = this.txId as string
    const wait = this.rng.chance(0.3)
    const r = await this.rpc(
      this.initiator.proc,
      LIMITS.commitAckWaitMs + 60_000,
      () => {
        const s = this.c.sidecar
        if (s === undefined) return 'refused'
        return {
          proc: s.proc,
          answer: kind === 'commit' ? s.steps.commit(id, wait) : s.steps.abort(id, 'app chose to abort', wait),
        }
      },
      false,
      'pod',
    )
    if (r === 'refused' && attempt < 3) {
      this.timer(this.node(this.initiator.proc), this.rng.int(500, 5_000), () => void this.finish(kind, attempt + 1))
      return
    }
    if (typeof r !== 'object') return this.log(`app's ${kind}: ${r}`)
    if (r instanceof TxmeshError) return this.log(`app's ${kind}: ${r.code}`)
    if (this.appOutcome !== undefined && this.appOutcome !== r.outcome)
      this.violation(`the app was told ${this.appOutcome}, then ${r.outcome}`)
    this.appOutcome ??= r.outcome
    this.log(`app hears ${r.outcome} (asked ${kind})`)
  }

  // -------------------------------------------------------------------------------------------
  // What must hold

  private checkEnd(quiesced: 'idle' | 'time' | 'events'): { outcome: Outcome; stuck: string[] } {
    const stuck: string[] = []
    const id = this.txId
    if (id === undefined) {
      this.violation('the transaction never began')
      return { outcome: 'aborted', stuck }
    }
    if (quiesced === 'events') this.violation(`did not settle: ${this.sched.events} events`)
    const mine = this.events.filter((e) => e.pod === this.c.name && e.data.tx === id)
    this.stats.recoveries += mine.filter((e) => e.type === 'tx-begin' && e.data.recovered === true).length
    this.stats.stuck += mine.filter((e) => e.type === 'tx-stuck').length
    this.stats.compensations += mine.filter((e) => e.type === 'tx-compensated').length
    this.stats.confirms += mine.filter((e) => e.type === 'tx-confirmed').length
    this.stats.cancels += mine.filter((e) => e.type === 'tx-cancelled').length
    // The outcome: what the coordinator holds, else what it announced last; nothing: presumed abort.
    const announced = mine
      .filter((e) => e.type === 'tx-outcome' || e.type === 'tx-finished')
      .map((e) => e.data.outcome as Outcome | undefined)
    const distinct = new Set(announced.filter((o) => o !== undefined))
    if (distinct.size > 1) this.violation(`the coordinator announced both outcomes (${announced.join(', ')})`)
    const view = this.c.sidecar?.steps.view(id)
    const held = view !== undefined && view.status !== 'committed' && view.status !== 'aborted' ? view : undefined
    const outcome: Outcome =
      view !== undefined
        ? view.status === 'committed' || view.status === 'committing'
          ? 'committed'
          : 'aborted'
        : (announced.at(-1) ?? 'aborted')
    if (view !== undefined && announced.length > 0 && !distinct.has(outcome))
      this.violation(`the coordinator holds the transaction ${view.status} but announced ${announced.join(', ')}`)
    if (view?.status === 'committing' && this.c.sidecar?.steps.outcomeFor(id) !== 'committed')
      this.violation('the coordinator is committing without a durable decision')
    if (this.appOutcome !== undefined && this.appOutcome !== outcome)
      this.violation(`the app was told ${this.appOutcome}, the transaction ${outcome}`)
    if (this.asked === 'abort' && this.appOutcome === 'committed')
      this.violation('the app asked abort and was told committed without asking commit')

    // Left at the coordinator: only steps stuck past their budget, and reported.
    if (held !== undefined) {
      if (held.stuck === 0)
        this.violation(`the coordinator still holds the transaction (${held.status}): ${describeSteps(held)}`)
      for (const st of held.steps) {
        if (st.status !== 'stuck') continue
        if (!mine.some((e) => e.type === 'tx-stuck' && e.data.branch === st.id))
          this.violation(`step ${st.id} is stuck and was never reported`)
        // A try that failed has its intent's cancel (through the target's ingress): nothing
        // unresolved needs to stay behind for it.
        const call = this.calls.find((c) => c.stepId === st.id)
        if (
          this.mode === 'tcc' &&
          st.intent !== true &&
          call !== undefined &&
          (call.heard === 'refused' || call.heard === 'upstream-5xx') &&
          (st.lastError ?? '').includes('has no value')
        ) {
          this.violation(
            `step ${st.id}: its try failed (${call.heard}) and it is stuck unresolved (${st.lastError ?? ''}), though its intent's cancel could undo it`,
          )
        }
        stuck.push(`${st.id} (${st.service}): ${st.lastError ?? ''}`)
      }
      if (held.stuck > 0) this.stats.stuckLeft++
    }
    // The logs forget what finished: only a transaction held for its stuck steps keeps records
    // (and the log's incarnation record, never ended). A log that failed (an injected EIO since
    // its process started) refuses every write, ENDs too, until the sidecar restarts (docs/errors.md
    // TXM_LOG_FAILED): it keeps what it had.
    for (const pod of this.pods) {
      if (injectedFaults(pod) > (this.diskFaultsAtStart.get(pod) ?? 0)) {
        this.stats.failedLogs++
        continue
      }
      const live = (pod.sidecar?.log.stats().liveTransactions ?? 1) - 1
      const allowed = pod === this.c && held !== undefined && held.stuck > 0 ? 1 : 0
      if (live > allowed) this.violation(`${pod.name}: ${live} transaction(s) left in the log without END`)
    }
    const unfinished = (step: string | undefined): boolean =>
      held !== undefined && held.stuck > 0 && held.steps.some((st) => st.id === step && st.status !== 'finished')

    // Every step as the outcome says, in what the apps applied.
    const seen = new Set<string>()
    for (const call of this.calls) {
      if (call.stepId === undefined) continue
      if (seen.has(call.stepId)) continue
      seen.add(call.stepId)
      const w = call.target.app.work.get(call.stepId)
      const tag = `${call.target.app.name} step ${call.stepId} (call ${call.index}, heard ${call.heard ?? 'none'})`
      if (w?.appliedAt === undefined) {
        if (call.heard === 'ok') this.violation(`${tag}: the app heard it succeed, yet it took no effect`)
        continue
      }
      const heard = call.heard ?? 'none'
      const undone = w.undoneAt !== undefined
      const confirmed = w.confirmedAt !== undefined
      const blocked = unfinished(call.stepId)
      if (this.mode === 'saga') {
        const expect =
          outcome === 'aborted' || heard === 'not-active'
            ? 'undo'
            : heard === 'ok' || heard === 'upstream-5xx'
              ? 'keep'
              : 'either'
        if (expect === 'keep' && undone) this.violation(`${tag}: compensated in a committed saga`)
        if (expect === 'undo' && !undone && !blocked) {
          if (this.variant === 'saga-header' && heard !== 'ok') this.stats.unrecorded++
          else if (this.variant === 'saga-response' && heard === 'upstream-5xx') this.stats.undoUnknown++
          else
            this.violation(
              `${tag}: its action took effect and was never compensated in a ${outcome} saga (${w.history.join(' ')})`,
            )
        }
      } else {
        // A try that failed (the egress passed its 4xx/5xx on) is cancelled whatever the outcome.
        const expect =
          outcome === 'aborted' || heard === 'not-active' || heard === 'upstream-5xx' || heard === 'refused'
            ? 'cancel'
            : heard === 'ok'
              ? 'confirm'
              : 'either'
        if (expect === 'confirm' && undone) this.violation(`${tag}: cancelled in a committed TCC`)
        if (expect === 'cancel' && confirmed)
          this.violation(
            `${tag}: confirmed in ${outcome === 'aborted' ? 'an aborted TCC' : 'a committed TCC, though its try failed or answered late'}`,
          )
        if (!blocked) {
          if (expect === 'confirm' && !confirmed)
            this.violation(`${tag}: never confirmed in a committed TCC (${w.history.join(' ')})`)
          if (expect === 'cancel' && !undone)
            this.violation(
              `${tag}: its try took effect and was never cancelled in a ${outcome} TCC (${w.history.join(' ')})`,
            )
          if (expect === 'either' && !undone && !confirmed)
            this.violation(
              `${tag}: its try took effect and was neither confirmed nor cancelled (${w.history.join(' ')})`,
            )
        }
      }
    }
    // An app's work is a step of this transaction's calls, and nothing else.
    for (const t of this.targets)
      for (const [branch, w] of t.app.work)
        if (w.appliedAt !== undefined && !seen.has(branch))
          this.violation(`${t.app.name}: work of ${branch} that no call of the app made`)

    // Saga: the steps the app heard succeed are compensated in reverse order of their calls, but
    // for one whose record was still being written when the abort came: the machine undoes it
    // like a late step, after the undo under way (reported, as steps.sim.test.ts does).
    if (this.mode === 'saga' && outcome === 'aborted') {
      const abortedAt = this.events.findIndex(
        (e) =>
          e.pod === this.c.name &&
          e.data.tx === id &&
          ((e.type === 'tx-outcome' && e.data.outcome === 'aborted') ||
            (e.type === 'tx-begin' && e.data.recovered === true)),
      )
      const abortAt = abortedAt < 0 ? Infinity : (this.eventTimes[abortedAt] ?? Infinity)
      const ok = this.calls.filter((c) => c.heard === 'ok' && c.stepId !== undefined)
      for (const c of ok) if ((c.recordedAt ?? 0) >= abortAt) this.stats.inFlightAtAbort++
      for (let i = 0; i < ok.length; i++) {
        for (let j = i + 1; j < ok.length; j++) {
          const a = ok[i] as Call
          const b = ok[j] as Call
          const ta = a.target.app.work.get(a.stepId as string)?.undoneAt
          const tb = b.target.app.work.get(b.stepId as string)?.undoneAt
          if ((b.recordedAt ?? 0) >= abortAt) continue
          if (ta !== undefined && (tb === undefined || tb > ta))
            this.violation(
              `step ${a.stepId} (call ${a.index}) compensated at t=${ta} before the later step ${b.stepId} (call ${b.index})${tb === undefined ? ', which never was' : ` at t=${tb}`}`,
            )
        }
      }
    }
    return { outcome, stuck }
  }
}

function injectedFaults(pod: Pod): number {
  return pod.disk.injected.ioErrors + pod.disk.injected.shortWrites
}

type IngressAnswer = { readonly status: number; readonly headers: string[]; readonly text?: string }

function coded(err: TxmeshError): { status: number; headers: string[] } {
  return { status: err.status, headers: [ERROR_HEADER, err.code] }
}

function refusedBy(err: TxmeshError): { status: number; code: string; heard: Heard } {
  return { status: err.status, code: err.code, heard: err.code === 'TXM_TX_NOT_ACTIVE' ? 'not-active' : 'error' }
}

function describeSteps(v: StepTxView): string {
  return v.steps.map((s) => `${s.id}:${s.status}${s.lastError === undefined ? '' : ` (${s.lastError})`}`).join(', ')
}

/** One macrotask turn: every promise continuation of the last event has run. */
function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve))
}
