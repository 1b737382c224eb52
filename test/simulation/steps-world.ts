// One simulated saga or TCC transaction (steps.sim.test.ts): the real step machine
// (src/tx/saga/machine.ts) in a coordinator pod (the orchestrating app, its egress and the
// step coordinator with its log) and 1–5 step services (saga: the service itself; TCC: its
// sidecar and app), wired through a lossy network and driven by one seed.
//
// The coordinator's driver here does what src/tx/saga/driver.ts does with the machine's actions:
// - a step is recorded by the egress once the service answered (saga: 2xx or 5xx, not 4xx; TCC:
//   every try): force-written to the log ({type:'step'}), then fed to the machine, then the
//   answer goes to the app; a step recorded after commit or abort was asked is `late` and the
//   app hears 409. A finished (retired) transaction takes a late step back; one this process
//   does not know refuses it. That is the order of a call whose undo only its answer names.
// - in half the seeds (`intents`, the order of a call whose undo the request tells) the egress
//   first records the step's intent (refused, and the call not sent, unless the transaction is
//   active before and after the write), then sends the call; the answer is recorded as the
//   intent's resolution (written only while nothing was sent for the intent), or, for a saga
//   4xx, voids it (fed at once; its step-done record is lazy). Services then also refuse some
//   calls outright (4xx, nothing done).
// - log-decision committed is force-written, then decision-logged is fed; aborted is lazy;
//   log-step-done is lazy; log-end writes END lazily and retires the transaction.
// - run sends the op (saga: the compensation to the service; TCC: confirm/cancel through the
//   service's sidecar) with a timeout; 2xx is op-done, anything else or no answer op-failed.
// The log behaves as src/wal/file-log.ts promises (log.sim.test.ts checks it): records reach
// the disk in append order; a forced append resolves once it and everything before it is
// fsynced; lazy records are written (not fsynced) by a timer or ride with the next fsync; a
// process crash loses what was only queued, a power loss also an unsynced suffix of what was
// written; an END drops its transaction's earlier records at replay; and what a restart
// replays is durable from then on.
// Services keep their effects in a database behind a barrier like txm.barrier (src/helpers/
// pg/barrier.ts): duplicates are skipped, a compensate/cancel of an action/try that never ran
// is empty and stops that action/try from running later (hanging, answered 409). A service
// crash loses in-flight requests, not its database.
import type { Outcome } from '../../src/tx/core.js'
import {
  intentUnsent,
  newSagaTx,
  recoverSagaTx,
  sagaOutcome,
  sagaTransition,
  type StepAction,
  type StepEvent,
  type StepMode,
  type StepOpName,
  type StepPolicy,
  type StepRecord,
  type StepTxState,
} from '../../src/tx/saga/machine.js'
import { Prng } from './prng.js'
import { SimWorld, type SimNode } from './sim-world.js'

/** Time after which no fault is injected any more and every node is up. */
export const STEP_FAULTS_END_MS = 3_000
/** After faults stop, the system must settle within this much simulated time. */
const QUIESCE_BOUND_MS = 30 * 60_000
const MAX_EVENTS = 500_000
/** The egress gives up on a step call after this long (no response: no step). */
const EGRESS_TIMEOUT_MS = 300
const OP_TIMEOUT_MS = 250
/** LIMITS.logLazyFlushMs. */
const LAZY_FLUSH_MS = 200
/** An operator presses Retry this often while steps are stuck, once faults stopped. */
const OPERATOR_RETRY_MS = 1_000

export type BarrierOp = 'action' | 'compensate' | 'try' | 'confirm' | 'cancel'

type Node = SimNode

type LogBody =
  | { readonly type: 'step'; readonly mode: StepMode; readonly step: StepRecord }
  | { readonly type: 'decision'; readonly outcome: Outcome }
  | { readonly type: 'step-done'; readonly step: string }
  | { readonly type: 'end' }

interface LogRecord {
  readonly body: LogBody
  state: 'queued' | 'written' | 'synced'
  /** A forced append: runs once the record is fsynced, in the incarnation that appended it. */
  readonly then: (() => void) | undefined
  readonly incarnation: number
  /** `then` ran. */
  fed: boolean
}

interface CoordinatorNode extends Node {
  /** The transaction's state while this process holds it (in `txs` or retired to `finished`). */
  state: StepTxState | undefined
  /** Retired: log-end ran; feeds are dropped until a late step takes it back. */
  retired: boolean
  /** As the driver: step records being written, and an end held back until they are fed. */
  recording: number
  endHeld: boolean
  /** The outcome this process announced (the app asking after it hears it at once). */
  outcome: Outcome | undefined
  log: LogRecord[]
  /** A sync is scheduled for records up to this index (group commit). */
  syncScheduledAt: number
  lazyTimer: boolean
  /** Per step: the retry timer that counts (driver: clearTimeout of the previous one). */
  readonly retryTimers: Map<string, number>
}

interface Effects {
  /** Times each op took effect (the barrier makes more than one a bug). */
  readonly count: Record<BarrierOp, number>
  /** When the op took effect (first time). */
  readonly at: Partial<Record<BarrierOp, number>>
  /** Barrier rows: op -> the op whose call inserted it. */
  readonly rows: Map<BarrierOp, BarrierOp>
}

interface ServiceNode extends Node {
  readonly index: number
  /**
   * Chance of refusing an action/try outright (4xx, nothing done; intents seeds only). A 4xx
   * refuses the request as such: every delivery of it gets the same answer (RFC 9110 15.5).
   */
  readonly refusals: number
  readonly refused: Set<string>
  /** Windows of simulated time in which it answers 503 (sometimes after doing the work). */
  readonly failing: readonly (readonly [number, number])[]
  readonly effects: Map<string, Effects>
}

export interface StepFaults {
  readonly loss: number
  readonly duplicate: number
  /** Chance that a message takes a long detour (reordering). */
  readonly slow: number
  readonly crashes: number
  /** Chance per service of a window answering 503. */
  readonly serviceFailures: number
  /** A coordinator crash is a power loss (else a process kill) with this chance. */
  readonly powerLoss: number
}

export interface StepStats {
  coordinatorCrashes: number
  powerLosses: number
  serviceCrashes: number
  recoveries: number
  recoveredCommitted: number
  steps: number
  lateSteps: number
  lateRefused: number
  stuck: number
  operatorRetries: number
  opsSent: number
  failedOps: number
  duplicateDeliveries: number
  emptyUndos: number
  hangingRefused: number
  /** Effects of calls never durably recorded as steps (old order only: never undone). */
  unrecordedEffects: number
  /** Intents recorded (intents seeds), those refused (the call not sent), and voided by a 4xx. */
  intents: number
  intentsRefused: number
  voided: number
  lostLazyRecords: number
  messages: number
  lost: number
  duplicated: number
}

export interface StepInfo {
  readonly id: string
  /** Of its last durable record (an intent's resolution comes after it). */
  readonly late: boolean
  /** Its last durable record is an intent: the call's answer never was: undone whatever the outcome. */
  readonly intent: boolean
  /** Its intent was voided (the call was refused): nothing to undo. */
  readonly voided: boolean
  /** Position among the durable step records (log order). */
  readonly order: number
  /** First time any coordinator process held it in its machine. */
  readonly knownAt: number
}

export interface StepReport {
  readonly seed: number
  readonly mode: StepMode
  /** Steps recorded before their call (intents), or only once it answered. */
  readonly intents: boolean
  readonly quiesced: 'idle' | 'time' | 'events'
  readonly endTime: number
  readonly events: number
  readonly violations: readonly string[]
  /** Steps whose record became durable. */
  readonly steps: readonly StepInfo[]
  readonly effects: ReadonlyMap<string, Effects>
  /** When the first op of each step was sent (run action). */
  readonly firstRunAt: ReadonlyMap<string, number>
  /** Durable steps the driver dropped because the transaction retired while they were written. */
  readonly droppedAtRetire: ReadonlySet<string>
  readonly commitDurable: boolean
  readonly appRequested: 'commit' | 'abort' | 'none'
  readonly appOutcome: Outcome | undefined
  readonly appLostAnswer: boolean
  readonly coordinatorStateLeft: string | undefined
  readonly stuckLeft: number
  readonly liveRecordsLeft: number
  readonly announced: readonly Outcome[]
  readonly stats: StepStats
  readonly faults: StepFaults
}

export function simulateSteps(seed: number, trace?: (line: string) => void): StepReport {
  return new StepWorld(seed, trace).run()
}

function newEffects(): Effects {
  return { count: { action: 0, compensate: 0, try: 0, confirm: 0, cancel: 0 }, at: {}, rows: new Map() }
}

class StepWorld extends SimWorld {
  protected readonly faults: StepFaults
  private readonly mode: StepMode
  private readonly intents: boolean
  private readonly tx: string
  private readonly deadline: number
  private readonly policy: StepPolicy
  private readonly coordinator: CoordinatorNode
  private readonly services: ServiceNode[] = []
  protected readonly stats: StepStats = {
    coordinatorCrashes: 0,
    powerLosses: 0,
    serviceCrashes: 0,
    recoveries: 0,
    recoveredCommitted: 0,
    steps: 0,
    lateSteps: 0,
    lateRefused: 0,
    stuck: 0,
    operatorRetries: 0,
    opsSent: 0,
    failedOps: 0,
    duplicateDeliveries: 0,
    emptyUndos: 0,
    hangingRefused: 0,
    unrecordedEffects: 0,
    intents: 0,
    intentsRefused: 0,
    voided: 0,
    lostLazyRecords: 0,
    messages: 0,
    lost: 0,
    duplicated: 0,
  }
  /** Durable step records, by step in log order of their first record; flags of the last one. */
  private readonly durableSteps = new Map<string, { late: boolean; intent: boolean; order: number }>()
  private readonly voidedSteps = new Set<string>()
  private readonly knownAt = new Map<string, number>()
  private readonly firstRunAt = new Map<string, number>()
  private readonly droppedAtRetire = new Set<string>()
  private commitDurable = false
  private readonly announced: Outcome[] = []
  private appRequested: 'commit' | 'abort' | 'none' = 'none'
  private appIncarnation = -1
  private appOutcome: Outcome | undefined
  private appLostAnswer = false
  private appWaiting = false
  /** The app's calls: ok, failed, or still waiting. */
  private readonly calls: ('ok' | 'failed' | 'waiting')[] = []
  private readonly plannedCalls: number
  private nextStep = 0
  private decided = false

  constructor(seed: number, trace: ((line: string) => void) | undefined) {
    super(seed, trace)
    const rng = this.rng
    this.mode = rng.chance(0.5) ? 'saga' : 'tcc'
    // Drawn apart, so the seeds of the old order replay as they did before intents existed.
    this.intents = new Prng(seed ^ 0x5bd1e995).chance(0.5)
    // A quarter of the seeds run without faults, a third with a few, the rest with many.
    const tier = rng.next()
    const scale = tier < 0.25 ? 0 : tier < 0.6 ? 0.25 : 1
    this.faults = {
      loss: rng.next() * 0.2 * scale,
      duplicate: rng.next() * 0.3 * scale,
      slow: rng.next() * 0.2 * scale,
      crashes: Math.min(0.9, rng.next() * 0.7 * scale * 2),
      serviceFailures: rng.next() * scale,
      powerLoss: rng.next(),
    }
    this.tx = `tx-${seed}`
    // Some deadlines strike while steps or the decision are being written.
    this.deadline = rng.chance(0.3) ? rng.int(20, 250) : rng.int(250, 3_000)
    this.policy = { attempts: rng.int(1, 5), backoffBaseMs: rng.int(5, 60), backoffCapMs: rng.int(60, 600) }
    this.coordinator = {
      name: 'C',
      up: true,
      incarnation: 0,
      state: undefined,
      retired: false,
      recording: 0,
      endHeld: false,
      outcome: undefined,
      log: [],
      syncScheduledAt: 0,
      lazyTimer: false,
      retryTimers: new Map(),
    }
    const n = rng.int(1, 5)
    this.plannedCalls = n
    for (let i = 0; i < n; i++) {
      const failing: [number, number][] = []
      if (rng.chance(this.faults.serviceFailures)) {
        const from = rng.int(0, STEP_FAULTS_END_MS / 2)
        failing.push([from, from + rng.int(50, 1_500)])
      }
      const refusals = this.intents && rng.chance(0.3) ? rng.next() * 0.5 : 0
      this.services.push({
        name: `S${i}`,
        up: true,
        incarnation: 0,
        index: i,
        refusals,
        refused: new Set(),
        failing,
        effects: new Map(),
      })
    }
  }

  run(): StepReport {
    this.planCrashes()
    // An operator presses Retry now and then while faults still strike (often on nothing).
    for (let i = this.rng.int(0, 2); i > 0; i--) {
      this.sched.after(this.rng.int(0, STEP_FAULTS_END_MS), () => {
        const c = this.coordinator
        if (!c.up || c.state === undefined || c.retired || !c.state.steps.some((e) => e.status === 'stuck')) return
        this.stats.operatorRetries++
        this.log('operator retries the stuck steps')
        this.feed({ type: 'retry-stuck' })
      })
    }
    this.sched.after(STEP_FAULTS_END_MS, () => this.stopFaults())
    this.startApp()
    const quiesced = this.sched.run(STEP_FAULTS_END_MS + QUIESCE_BOUND_MS, MAX_EVENTS)
    return this.report(quiesced)
  }

  // -------------------------------------------------------------------------------------------
  // Faults, network, timers

  private planCrashes(): void {
    const nodes: Node[] = [this.coordinator, ...this.services]
    for (const node of nodes) {
      let t = 0
      while (this.rng.chance(this.faults.crashes)) {
        t += this.rng.chance(0.75) ? this.rng.int(0, 300) : this.rng.int(0, STEP_FAULTS_END_MS / 2)
        if (t >= STEP_FAULTS_END_MS) break
        const down = this.rng.chance(0.2) ? this.rng.int(500, 5_000) : this.rng.int(1, 400)
        const at = t
        const restartAt = Math.min(at + down, STEP_FAULTS_END_MS)
        const power = this.rng.chance(this.faults.powerLoss)
        this.sched.after(at, () => this.crash(node, power))
        this.sched.after(restartAt, () => this.restart(node))
        t = restartAt + 1
      }
    }
  }

  private stopFaults(): void {
    this.faultsOn = false
    this.log('faults stop')
    this.operatorLoop()
  }

  /** Once faults stopped, an operator retries stuck steps until none is left. */
  private operatorLoop(): void {
    const c = this.coordinator
    const stuck = c.up && c.state !== undefined && !c.retired && c.state.steps.some((e) => e.status === 'stuck')
    if (stuck) {
      this.stats.operatorRetries++
      this.log('operator retries the stuck steps')
      this.feed({ type: 'retry-stuck' })
    }
    if (stuck || !c.up || (c.state !== undefined && !c.retired))
      this.sched.after(OPERATOR_RETRY_MS, () => this.operatorLoop())
  }

  private crash(node: Node, power: boolean): void {
    if (!node.up) return
    node.up = false
    node.incarnation++
    if (node !== this.coordinator) {
      this.stats.serviceCrashes++
      this.log(`CRASH ${node.name}`)
      return
    }
    const c = this.coordinator
    this.stats.coordinatorCrashes++
    if (power) this.stats.powerLosses++
    // The queue dies with the process; a power loss also takes an unsynced suffix of what was
    // written (records reach the file in order, so what survives is a prefix).
    const kept: LogRecord[] = []
    let cut = false
    for (const r of c.log) {
      if (r.state === 'queued' || (power && r.state === 'written' && (cut || (cut = this.rng.chance(0.5))))) {
        if (r.then === undefined) this.stats.lostLazyRecords++
        continue
      }
      kept.push(r)
    }
    c.log = kept
    this.log(`CRASH C (${power ? 'power loss' : 'process'}; the log keeps ${kept.length} records)`)
    c.state = undefined
    c.retired = false
    c.recording = 0
    c.endHeld = false
    c.outcome = undefined
    c.lazyTimer = false
    c.syncScheduledAt = 0
    c.retryTimers.clear()
    if (this.appRequested !== 'none' && this.appOutcome === undefined && this.appIncarnation === c.incarnation - 1)
      this.appLostAnswer = true
    this.appWaiting = false
  }

  private restart(node: Node): void {
    if (node.up) return
    node.up = true
    this.log(`RESTART ${node.name}`)
    if (node !== this.coordinator) return
    const c = this.coordinator
    // Replay: what survived is durable from now on (FileLog.open fsyncs it); records before
    // the last END are not returned.
    for (const r of c.log) this.markSynced(r)
    const live = liveRecords(c.log)
    if (live.length === 0) return
    const steps: StepRecord[] = []
    const done = new Set<string>()
    let committed = false
    let mode: StepMode = 'saga'
    for (const b of live) {
      if (b.type === 'step') {
        mode = b.mode
        steps.push(b.step)
      } else if (b.type === 'decision' && b.outcome === 'committed') committed = true
      else if (b.type === 'step-done') done.add(b.step)
    }
    if (mode !== this.mode && steps.length > 0)
      this.violation(`recovered mode ${mode}, the transaction is ${this.mode}`)
    this.stats.recoveries++
    if (committed) this.stats.recoveredCommitted++
    // As the driver: the mode of the step records (a transaction with none recovers as a saga).
    const step = this.guard('recoverSagaTx', () =>
      recoverSagaTx(this.tx, mode, steps, done, committed, this.policy, this.env),
    )
    if (step === undefined) return
    c.state = step.state
    c.retired = false
    c.outcome = committed ? 'committed' : 'aborted'
    for (const e of step.state.steps) if (!this.knownAt.has(e.step.id)) this.knownAt.set(e.step.id, this.sched.now)
    this.log(
      `C recovered ${step.state.status} with ${steps.length} steps (${done.size} done)${step.actions.length > 0 ? `: ${step.actions.map(describe).join(', ')}` : ''}`,
    )
    this.perform(step.actions)
  }

  // -------------------------------------------------------------------------------------------
  // The coordinator's log

  private append(body: LogBody, then?: () => void): void {
    const c = this.coordinator
    c.log.push({ body, state: 'queued', then, incarnation: c.incarnation, fed: false })
    if (then !== undefined) {
      // Group commit: one fsync covers everything appended before it.
      const at = Math.max(this.sched.now + this.diskLatency(), c.syncScheduledAt)
      c.syncScheduledAt = at
      this.timer(c, at - this.sched.now, () => this.sync())
    } else if (!c.lazyTimer) {
      c.lazyTimer = true
      this.timer(c, LAZY_FLUSH_MS, () => {
        c.lazyTimer = false
        for (const r of c.log) if (r.state === 'queued') r.state = 'written'
      })
    }
  }

  private sync(): void {
    const c = this.coordinator
    const due: LogRecord[] = []
    for (const r of c.log) {
      if (r.state === 'synced') continue
      this.markSynced(r)
      if (r.then !== undefined && r.incarnation === c.incarnation) due.push(r)
    }
    for (const r of due) {
      if (!c.up) return
      r.fed = true
      r.then?.()
    }
  }

  private markSynced(r: LogRecord): void {
    if (r.state === 'synced') return
    r.state = 'synced'
    const b = r.body
    if (b.type === 'decision' && b.outcome === 'committed' && !this.commitDurable) {
      this.commitDurable = true
      this.log('C COMMIT decision durable')
    }
    if (b.type === 'step')
      this.durableSteps.set(b.step.id, {
        late: b.step.late === true,
        intent: b.step.intent === true,
        order: this.durableSteps.get(b.step.id)?.order ?? this.durableSteps.size,
      })
  }

  // -------------------------------------------------------------------------------------------
  // The coordinator: driver of the machine

  private feed(event: StepEvent): void {
    const c = this.coordinator
    if (!c.up || c.state === undefined || c.retired) return
    const before = c.state
    const step = this.guard(`sagaTransition(${event.type})`, () => sagaTransition(before, event, this.env))
    if (step === undefined) return
    c.state = step.state
    if (event.type === 'step' && !this.knownAt.has(event.step.id)) this.knownAt.set(event.step.id, this.sched.now)
    this.log(
      `C ${describe(event)} -> ${step.state.status}${step.actions.length > 0 ? `: ${step.actions.map(describe).join(', ')}` : ''}`,
    )
    this.perform(step.actions)
  }

  private perform(actions: readonly StepAction[]): void {
    const c = this.coordinator
    for (const a of actions) {
      if (!c.up) return
      switch (a.type) {
        case 'log-decision':
          if (a.outcome === 'aborted') this.append({ type: 'decision', outcome: 'aborted' })
          else this.append({ type: 'decision', outcome: 'committed' }, () => this.feed({ type: 'decision-logged' }))
          break
        case 'run':
          this.runOp(a.step, a.op)
          break
        case 'log-step-done':
          this.append({ type: 'step-done', step: a.step })
          break
        case 'schedule-retry': {
          const version = (c.retryTimers.get(a.step) ?? 0) + 1
          c.retryTimers.set(a.step, version)
          this.timer(c, a.delayMs, () => {
            if (c.retryTimers.get(a.step) === version) this.feed({ type: 'retry-due', step: a.step })
          })
          break
        }
        case 'stuck':
          this.stats.stuck++
          this.log(`C step ${a.step.id} stuck (${a.op}): ${a.error}`)
          break
        case 'outcome':
          c.outcome = a.outcome
          this.announced.push(a.outcome)
          this.answerApp(a.outcome)
          break
        case 'log-end':
          // As the driver: the end waits for step records being written (they are fed first).
          if (c.recording > 0) {
            c.endHeld = true
            break
          }
          this.endTx()
          break
      }
    }
  }

  /** SagaDriver.end: END (lazily) and retire. */
  private endTx(): void {
    const c = this.coordinator
    c.endHeld = false
    // A step record still being written would be ended by this END, queued behind it, and its
    // feed() would find nothing in `txs`: the driver holds the end back, so this stays empty.
    for (const r of c.log) {
      if (r.body.type === 'step' && r.then !== undefined && !r.fed && r.incarnation === c.incarnation)
        this.droppedAtRetire.add(r.body.step.id)
    }
    this.append({ type: 'end' })
    c.retired = true
  }

  private runOp(step: StepRecord, op: StepOpName): void {
    const c = this.coordinator
    if (!this.firstRunAt.has(step.id)) this.firstRunAt.set(step.id, this.sched.now)
    const s = this.serviceOf(step)
    this.stats.opsSent++
    this.request<boolean>(
      c,
      s,
      OP_TIMEOUT_MS,
      (reply) => this.serve(s, step.id, op, (status) => reply(status >= 200 && status < 300)),
      (ok) => {
        if (ok !== true) this.stats.failedOps++
        this.feed(
          ok === true
            ? { type: 'op-done', step: step.id }
            : { type: 'op-failed', step: step.id, error: ok === false ? `${op} answered 503` : `${op} timed out` },
        )
      },
      { duplicable: true },
    )
  }

  private serviceOf(step: StepRecord): ServiceNode {
    const s = this.services.find((x) => x.name === step.service)
    if (s === undefined) throw new Error(`no service ${step.service}`)
    return s
  }

  /**
   * SagaDriver.addStep: durable, then fed; `reply` gets what the egress tells the app
   * (an intent: 'ok' lets the call be sent, anything else keeps it back).
   */
  private addStep(step: StepRecord, reply: (r: 'ok' | 'late' | 'unknown') => void): void {
    const c = this.coordinator
    if (c.state === undefined) {
      reply('unknown')
      return
    }
    const known = c.state.steps.find((e) => e.step.id === step.id)
    if (step.intent === true) {
      if (c.retired || c.state.status !== 'active') {
        this.stats.intentsRefused++
        reply('late')
        return
      }
      if (known !== undefined) {
        reply('ok')
        return
      }
    } else if (known !== undefined) {
      // A resolution whose intent's undo started (or a duplicate): nothing to write.
      if (c.retired || !intentUnsent(known)) {
        reply(!c.retired && c.state.status === 'active' ? 'ok' : 'late')
        return
      }
    } else {
      // A retired transaction takes a late step back (RecentMap `finished`).
      c.retired = false
    }
    const late = c.state.status !== 'active'
    const recorded: StepRecord = late ? { ...step, late: true } : step
    if (known === undefined) this.stats.steps++
    if (step.intent === true) this.stats.intents++
    if (late) this.stats.lateSteps++
    this.log(
      `C records ${step.intent === true ? 'intent' : known !== undefined ? 'resolution' : 'step'} ${step.id}${late ? ' (late)' : ''}`,
    )
    c.recording++
    this.append({ type: 'step', mode: this.mode, step: recorded }, () => {
      c.recording--
      if (c.retired) this.log(`C drops step ${step.id}: the transaction was retired while its record was written`)
      this.feed({ type: 'step', step: recorded })
      // As the driver's releaseEnd: a duplicate changes nothing, so the held end happens now.
      if (
        c.endHeld &&
        c.recording === 0 &&
        !c.retired &&
        c.state !== undefined &&
        (c.state.status === 'committed' || c.state.status === 'aborted')
      )
        this.endTx()
      // An intent whose transaction ended while it was written: the call is not sent.
      if (step.intent === true && c.state?.status !== 'active') {
        this.stats.intentsRefused++
        reply('late')
        return
      }
      reply(late ? 'late' : 'ok')
    })
  }

  /** SagaDriver.voidStep: the intent's call was refused outright. */
  private voidStep(id: string): void {
    const c = this.coordinator
    if (c.state === undefined || c.retired) return
    const e = c.state.steps.find((x) => x.step.id === id)
    if (e === undefined || !intentUnsent(e)) return
    this.stats.voided++
    this.voidedSteps.add(id)
    this.feed({ type: 'step-void', step: id })
  }

  // -------------------------------------------------------------------------------------------
  // The orchestrating app and its egress

  private startApp(): void {
    const c = this.coordinator
    c.state = newSagaTx(this.tx, this.mode, this.deadline, this.policy)
    this.timer(c, this.deadline, () => this.feed({ type: 'deadline' }))
    // An app that gives up on a call before its egress does makes the egress record a step the
    // app already counts as failed: it aborts, and the step arrives late.
    const appTimeout = this.rng.chance(0.2) ? this.rng.int(20, EGRESS_TIMEOUT_MS) : EGRESS_TIMEOUT_MS + 100
    if (this.mode === 'saga') this.sagaCall(appTimeout)
    else
      for (let i = 0; i < this.plannedCalls; i++)
        this.timer(c, this.rng.int(0, 30), () => this.call(appTimeout, true, () => this.maybeDecide()))
  }

  /** Saga calls go one after the other: a later one may rely on an earlier one. */
  private sagaCall(appTimeout: number): void {
    this.call(appTimeout, true, (ok) => {
      if (ok && this.nextStep < this.plannedCalls)
        this.timer(this.coordinator, this.rng.int(0, 20), () => this.sagaCall(appTimeout))
      else this.maybeDecide()
    })
  }

  private maybeDecide(): void {
    if (this.decided) return
    const failed = this.calls.includes('failed')
    if (!failed && (this.calls.includes('waiting') || this.calls.length < this.plannedCalls)) return
    this.decide(failed)
  }

  private decide(failed: boolean): void {
    const c = this.coordinator
    this.decided = true
    const r = this.rng.next()
    if (r < 0.03) {
      this.log('app never finishes (the deadline must abort)')
      return
    }
    const kind = failed || r < 0.1 ? 'abort' : 'commit'
    // A call sent just as the app decides, that it does not wait for: its step is late.
    if (this.rng.chance(0.15)) this.call(EGRESS_TIMEOUT_MS, false, () => undefined)
    this.appRequested = kind
    this.appIncarnation = c.incarnation
    this.appWaiting = true
    this.log(`app asks ${kind}`)
    this.feed(
      kind === 'commit'
        ? { type: 'commit-requested' }
        : { type: 'abort-requested', reason: failed ? 'a call failed' : 'app chose to abort' },
    )
    if (c.outcome !== undefined) this.answerApp(c.outcome)
    if (kind === 'commit' && this.rng.chance(0.1)) {
      this.timer(c, this.rng.int(0, 60), () => {
        this.log('app asks abort while committing')
        this.feed({ type: 'abort-requested', reason: 'app got impatient' })
      })
    }
  }

  private answerApp(outcome: Outcome): void {
    if (!this.appWaiting || this.appOutcome !== undefined || this.coordinator.incarnation !== this.appIncarnation)
      return
    this.appOutcome = outcome
    this.appWaiting = false
    this.log(`app hears ${outcome}`)
  }

  /** One call through the egress: the service answers, the egress records the step, the app hears. */
  private call(appTimeout: number, awaited: boolean, then: (ok: boolean) => void): void {
    const c = this.coordinator
    const i = this.nextStep++
    const s = this.services[i % this.services.length] as ServiceNode
    const id = `b${i}`
    const slot = this.calls.length
    if (awaited) this.calls.push('waiting')
    let heard = false
    const hear = (ok: boolean): void => {
      if (heard) return
      heard = true
      if (awaited) this.calls[slot] = ok ? 'ok' : 'failed'
      this.log(`app: call ${id} ${ok ? 'ok' : 'failed'}`)
      then(ok)
    }
    this.timer(c, appTimeout, () => hear(false))
    this.log(`app calls ${s.name} (step ${id})`)
    const op: BarrierOp = this.mode === 'saga' ? 'action' : 'try'
    const record: StepRecord =
      this.mode === 'saga'
        ? {
            id,
            service: s.name,
            target: `http://svc${s.index}`,
            compensate: { method: 'DELETE', path: `/things/${id}` },
          }
        : {
            id,
            service: s.name,
            target: `svc${s.index}:15010`,
            confirm: { method: 'POST', path: '/confirm' },
            cancel: { method: 'POST', path: '/cancel' },
          }
    const send = (): void => {
      // Now and then a retrying proxy sends the request again, late, and drops the answer: the
      // barrier must keep it from taking effect twice, or after its compensation/cancel.
      if (this.faultsOn && this.rng.chance(this.faults.duplicate)) {
        this.sched.after(this.rng.int(20, 1_500), () => {
          if (s.up) this.serve(s, id, op, () => undefined)
        })
      }
      this.request<number>(
        c,
        s,
        EGRESS_TIMEOUT_MS,
        (reply) => this.serve(s, id, op, reply),
        (status) => {
          if (status === undefined) {
            // No answer: with intents, the intent stays and is undone whatever the outcome.
            hear(false)
            return
          }
          // The egress: saga records 2xx and 5xx (not 4xx, which voids an intent), TCC every try.
          if (this.mode === 'saga' && status >= 400 && status < 500) {
            if (this.intents) this.voidStep(id)
            hear(false)
            return
          }
          this.addStep(record, (r) => {
            if (r === 'late') this.stats.lateRefused++
            hear(r === 'ok' && status >= 200 && status < 300)
          })
        },
        { duplicable: false },
      )
    }
    if (!this.intents) return send()
    // The intent: what undoes the call, known from the request alone (TCC: a cancel through the
    // service's ingress), durable before the call is sent.
    const intent: StepRecord =
      this.mode === 'saga'
        ? { ...record, intent: true }
        : {
            id,
            service: s.name,
            target: `http://svc${s.index}`,
            cancel: { method: 'POST', path: '/.well-known/txmesh/cancel' },
            intent: true,
            viaIngress: true,
          }
    this.addStep(intent, (r) => (r === 'ok' ? send() : hear(false)))
  }

  // -------------------------------------------------------------------------------------------
  // Step services: the barrier and the effects

  /** A request reaching a service (or a TCC sidecar calling its app's hook); replies a status. */
  private serve(s: ServiceNode, branch: string, op: BarrierOp, reply: (status: number) => void): void {
    this.timer(s, this.rng.int(1, 20), () => {
      const failing = this.faultsOn && s.failing.some(([a, b]) => this.sched.now >= a && this.sched.now < b)
      if (failing && this.rng.chance(0.6)) {
        reply(503)
        return
      }
      // Refused outright (a 4xx, nothing done: the barrier row rolls back with the refusal).
      if (
        (op === 'action' || op === 'try') &&
        (s.refused.has(branch) ||
          (s.refusals > 0 && !s.effects.get(branch)?.rows.has(op) && this.rng.chance(s.refusals)))
      ) {
        s.refused.add(branch)
        reply(409)
        return
      }
      const status = this.barrier(s, branch, op)
      // Did the work, then failed answering: a 5xx the caller cannot tell from the first kind.
      reply(failing ? 503 : status)
    })
  }

  private barrier(s: ServiceNode, branch: string, op: BarrierOp): number {
    let e = s.effects.get(branch)
    if (e === undefined) {
      e = newEffects()
      s.effects.set(branch, e)
    }
    const apply = (o: BarrierOp): void => {
      e.count[o]++
      e.at[o] ??= this.sched.now
      this.log(`${s.name} ${o} ${branch} takes effect`)
      if (e.count[o] > 1) this.violation(`${s.name}: ${o} of ${branch} took effect twice`)
      this.checkEffect(branch, o)
    }
    if (e.rows.has(op)) {
      this.stats.duplicateDeliveries++
      // An action/try row a compensate/cancel inserted: this one came too late (hanging).
      if ((op === 'action' || op === 'try') && e.rows.get(op) !== op) {
        this.stats.hangingRefused++
        return 409
      }
      return 200
    }
    e.rows.set(op, op)
    if (op === 'compensate' || op === 'cancel') {
      const origin: BarrierOp = op === 'compensate' ? 'action' : 'try'
      if (!e.rows.has(origin)) {
        e.rows.set(origin, op)
        this.stats.emptyUndos++
        return 200
      }
    }
    apply(op)
    return 200
  }

  /** What must hold at the moment an effect happens. */
  private checkEffect(branch: string, op: BarrierOp): void {
    const d = this.durableSteps.get(branch)
    // Late steps and intents without an answer are undone whatever the outcome.
    const undoAlways = d?.late === true || d?.intent === true
    if (op === 'confirm' && !this.commitDurable)
      this.violation(`${branch} confirmed before the COMMIT decision was durable`)
    if (op === 'confirm' && d?.intent === true) this.violation(`${branch}: confirmed, yet its call never answered`)
    if ((op === 'compensate' || op === 'cancel') && this.commitDurable && !undoAlways)
      this.violation(`${branch}: ${op} in a committed transaction`)
  }

  // -------------------------------------------------------------------------------------------

  private report(quiesced: 'idle' | 'time' | 'events'): StepReport {
    const c = this.coordinator
    const steps: StepInfo[] = [...this.durableSteps.entries()].map(([id, d]) => ({
      id,
      late: d.late,
      intent: d.intent,
      voided: this.voidedSteps.has(id),
      order: d.order,
      knownAt: this.knownAt.get(id) ?? Infinity,
    }))
    const effects = new Map<string, Effects>()
    for (const s of this.services) for (const [b, e] of s.effects) effects.set(b, e)
    for (const [b, e] of effects) {
      if ((e.count.action > 0 || e.count.try > 0) && !this.durableSteps.has(b)) this.stats.unrecordedEffects++
    }
    return {
      seed: this.seed,
      mode: this.mode,
      intents: this.intents,
      quiesced,
      endTime: this.sched.now,
      events: this.sched.events,
      violations: this.violations,
      steps,
      effects,
      firstRunAt: this.firstRunAt,
      droppedAtRetire: this.droppedAtRetire,
      commitDurable: this.commitDurable,
      appRequested: this.appRequested,
      appOutcome: this.appOutcome,
      appLostAnswer: this.appLostAnswer,
      coordinatorStateLeft:
        c.state !== undefined && !c.retired ? `${c.state.status} (${sagaOutcome(c.state)})` : undefined,
      stuckLeft: c.state?.steps.filter((e) => e.status === 'stuck').length ?? 0,
      liveRecordsLeft: liveRecords(c.log).length,
      announced: this.announced,
      stats: this.stats,
      faults: this.faults,
    }
  }
}

/** The records a replay returns: those after the last END. */
function liveRecords(log: readonly LogRecord[]): LogBody[] {
  let from = 0
  for (const [i, r] of log.entries()) if (r.body.type === 'end') from = i + 1
  return log.slice(from).map((r) => r.body)
}

function describe(x: StepEvent | StepAction): string {
  switch (x.type) {
    case 'step':
      return `step(${x.step.id}${x.step.intent === true ? ' intent' : ''}${x.step.late === true ? ' late' : ''})`
    case 'step-void':
      return `step-void(${x.step})`
    case 'op-done':
    case 'retry-due':
    case 'log-step-done':
      return `${x.type}(${x.step})`
    case 'op-failed':
      return `op-failed(${x.step})`
    case 'schedule-retry':
      return `schedule-retry(${x.step} ${x.delayMs}ms)`
    case 'run':
      return `run(${x.op} ${x.step.id}#${x.attempt})`
    case 'stuck':
      return `stuck(${x.step.id})`
    case 'log-decision':
    case 'outcome':
      return `${x.type}(${x.outcome})`
    default:
      return x.type
  }
}
