// One simulated transaction: an initiator pod (app + coordinator sidecar) and 1–4 participant
// pods (sidecar + app), wired through a lossy network and durable logs, driven by one seed.
//
// The drivers here behave like the real ones must (src/tx/*/driver.ts):
// - prepare / commit / abort / outcome query / business call are request-response with a
//   timeout; a request either gets its answer or times out, exactly once.
// - a participant with no branch answers prepare "refused" and commit/abort "done"; commit for a
//   branch that never voted yes gets 409 (the coordinator counts that as a failed send).
// - the coordinator answers outcome queries from memory, else from its log; presumed abort:
//   no state and no live COMMIT record means aborted.
// - a crash loses memory, timers, waiters and in-flight calls; it keeps the durable log (and, for
//   a participant pod, the app's prepared/committed/aborted work, like a database would).
// - END of a committed branch is durable before the participant answers done; END of an abort
//   (and the coordinator's END) is lazy and may be lost in a crash.
// - one-phase commit (one participant at commit-requested): the coordinator sends
//   commit-one-phase and retries it until an outcome comes back; the participant answers a
//   finished branch from its in-memory `ended` map (lost in a crash, and expired after a while
//   like the real bounded map), and a branch it does not hold with the app's abort hook
//   ("aborted"; 404 when the app has nothing, or already committed it).
import { coordinatorOutcome, coordinatorStep, newCoordinator, recoverCoordinator } from '../../src/tx/coordinator/machine.js'
import type {
  CoordinatorAction,
  CoordinatorEvent,
  CoordinatorState,
  Outcome,
  ParticipantAction,
  ParticipantEvent,
  ParticipantRef,
  ParticipantState,
  Vote,
} from '../../src/tx/core.js'
import { newParticipant, participantStep, recoverParticipant, recoverUnvoted } from '../../src/tx/participant/machine.js'
import { SimWorld, type SimNode } from './sim-world.js'

/** Time after which no fault is injected any more and every node is up. */
export const FAULTS_END_MS = 3_000
/** After faults stop, the system must settle within this much simulated time. */
const QUIESCE_BOUND_MS = 30 * 60_000
const MAX_EVENTS = 1_000_000

const CONTROL_TIMEOUT_MS = 250
const BUSINESS_TIMEOUT_MS = 300
const HOOK_TIMEOUT_MS = 200

export type AppBranchStatus = 'none' | 'open' | 'prepared' | 'committed' | 'aborted' | 'read-only'

type Node = SimNode

type CoordinatorRecord = { readonly kind: 'decision'; readonly participants: readonly ParticipantRef[] } | { readonly kind: 'end' }
type ParticipantRecord =
  | { readonly kind: 'preparing'; readonly onePhase: boolean }
  | { readonly kind: 'prepared'; readonly onePhase: boolean }
  | { readonly kind: 'end'; readonly outcome: Outcome }

/** A node's durable log: records become durable in append order (one file, one queue). */
interface Logged<R> {
  readonly log: R[]
  /** When the last queued append becomes durable. */
  logTail: number
}

interface CoordinatorNode extends Node, Logged<CoordinatorRecord> {
  state: CoordinatorState | undefined
  /** The outcome this incarnation decided (answers an app that asks after it was emitted). */
  outcome: Outcome | undefined
}

interface ParticipantNode extends Node, Logged<ParticipantRecord> {
  readonly ref: ParticipantRef
  state: ParticipantState | undefined
  voteWaiters: ((v: Vote) => void)[]
  doneWaiters: ((o: Outcome) => void)[]
  /** The driver's in-memory `ended` map for this branch: lost in a crash, expires. */
  ended: Outcome | undefined
  /** The app's work for this branch; survives a crash once prepared (a database would keep it). */
  app: AppBranchStatus
  /** What the app will answer to prepare. */
  readonly plannedVote: Vote['kind']
  /** The initiator does not wait for this call (it may enlist late). */
  readonly awaited: boolean
}

type DecisionReply = 'done' | 'conflict'
type QueryReply = Outcome | 'unknown'
/** 'failed': 503, the outcome is not known yet. */
type OnePhaseReply = Outcome | 'failed'

export interface Faults {
  readonly loss: number
  readonly duplicate: number
  /** Chance that a message takes a long detour (reordering). */
  readonly slow: number
  readonly hookFailure: number
  readonly crashes: number
}

export interface Stats {
  coordinatorCrashes: number
  participantCrashes: number
  coordinatorRecoveries: number
  participantRecoveries: number
  orphansResolved: number
  lateEnlistments: number
  messages: number
  lost: number
  duplicated: number
  /** Transactions the coordinator finished in one phase, by outcome. */
  onePhaseCommits: number
  onePhaseAborts: number
  /** One-phase branches rebuilt from PREPARED(onePhase) at a restart (they commit alone). */
  onePhaseRecoveries: number
  /** commit-one-phase reaching a sidecar that does not hold the branch (answered by the abort hook). */
  onePhaseUnknown: number
  /** Crashes injected at one-phase points (before/after PREPARED(onePhase), around the app commit, before the answer). */
  onePhaseCrashes: number
}

/** Everything the invariants look at once the run is over. */
export interface Report {
  readonly seed: number
  readonly quiesced: 'idle' | 'time' | 'events'
  readonly endTime: number
  readonly events: number
  readonly violations: readonly string[]
  readonly participants: readonly {
    readonly branch: string
    readonly app: AppBranchStatus
    readonly sidecarOutcomes: readonly Outcome[]
    readonly stateLeft: ParticipantState['status'] | undefined
    readonly preparedLive: boolean
    readonly awaited: boolean
  }[]
  /** The branches the coordinator held when prepare began (undefined: it never did). */
  readonly preparedSet: readonly string[] | undefined
  /** Branches whose enlistment reached the coordinator before it decided. */
  readonly joinedBeforeDecision: readonly string[]
  /** Participants of the first COMMIT record that became durable. */
  readonly decision: readonly string[] | undefined
  readonly votedYes: readonly string[]
  readonly appRequested: 'commit' | 'abort' | 'none'
  readonly appOutcome: Outcome | undefined
  /** The initiator's pod crashed after the app asked (its answer was lost with it). */
  readonly appLostAnswer: boolean
  readonly coordinatorStateLeft: CoordinatorState['status'] | undefined
  /** The coordinator sent commit-one-phase (exactly one participant at commit-requested). */
  readonly onePhase: boolean
  /** Branches whose PREPARED(onePhase) became durable: they decided commit. */
  readonly onePhaseLogged: readonly string[]
  /** Every outcome any coordinator incarnation announced. */
  readonly coordinatorOutcomes: readonly Outcome[]
  readonly decisionLive: boolean
  readonly stats: Stats
  readonly faults: Faults
}

/** Every counter at zero: a world's start, and the totals of a run over many seeds. */
export function emptyStats(): Stats {
  return {
    coordinatorCrashes: 0,
    participantCrashes: 0,
    coordinatorRecoveries: 0,
    participantRecoveries: 0,
    orphansResolved: 0,
    lateEnlistments: 0,
    messages: 0,
    lost: 0,
    duplicated: 0,
    onePhaseCommits: 0,
    onePhaseAborts: 0,
    onePhaseRecoveries: 0,
    onePhaseUnknown: 0,
    onePhaseCrashes: 0,
  }
}

export function simulate(seed: number, trace?: (line: string) => void): Report {
  return new World(seed, trace).run()
}

class World extends SimWorld {
  protected readonly faults: Faults
  private readonly tx: string
  private readonly deadline: number
  private readonly coordinator: CoordinatorNode
  private readonly participants: ParticipantNode[] = []
  protected readonly stats: Stats = emptyStats()
  private onePhase = false
  private readonly onePhaseLogged = new Set<string>()
  private readonly coordinatorOutcomes: Outcome[] = []
  private preparedSet: string[] | undefined
  private readonly joinedBeforeDecision = new Set<string>()
  private decision: string[] | undefined
  private readonly votedYes = new Set<string>()
  private readonly sidecarOutcomes = new Map<string, Outcome[]>()
  private appRequested: 'commit' | 'abort' | 'none' = 'none'
  private appIncarnation = -1
  private appOutcome: Outcome | undefined
  private appLostAnswer = false
  private readonly callResults = new Map<string, 'ok' | 'failed'>()

  constructor(seed: number, trace: ((line: string) => void) | undefined) {
    super(seed, trace)
    const rng = this.rng
    // A quarter of the seeds run without faults, a third with a few, the rest with many.
    const tier = rng.next()
    const scale = tier < 0.25 ? 0 : tier < 0.6 ? 0.25 : 1
    this.faults = {
      loss: rng.next() * 0.2 * scale,
      duplicate: rng.next() * 0.3 * scale,
      slow: rng.next() * 0.2 * scale,
      hookFailure: rng.next() * 0.3 * scale,
      crashes: Math.min(0.9, rng.next() * 0.7 * scale * 2),
    }
    this.tx = `tx-${seed}`
    // Some deadlines are tight, so they strike while prepare or the decision write is running.
    this.deadline = rng.chance(0.3) ? rng.int(40, 200) : rng.int(200, 2_000)
    this.coordinator = { name: 'C', up: true, incarnation: 0, state: undefined, outcome: undefined, log: [], logTail: 0 }
    const n = rng.int(1, 4)
    const unawaited = n >= 2 && rng.chance(0.15) ? n - 1 : -1
    for (let i = 0; i < n; i++) {
      const r = rng.next()
      this.participants.push({
        name: `P${i}`,
        up: true,
        incarnation: 0,
        ref: { service: `svc${i}`, control: `p${i}:15010`, branch: `b${i}` },
        state: undefined,
        log: [],
        logTail: 0,
        voteWaiters: [],
        doneWaiters: [],
        ended: undefined,
        app: 'none',
        plannedVote: r < 0.82 ? 'prepared' : r < 0.92 ? 'read-only' : 'refused',
        awaited: i !== unawaited,
      })
    }
  }

  run(): Report {
    this.planCrashes()
    this.sched.after(FAULTS_END_MS, () => this.stopFaults())
    this.startInitiator()
    const quiesced = this.sched.run(FAULTS_END_MS + QUIESCE_BOUND_MS, MAX_EVENTS)
    return this.report(quiesced)
  }

  // -------------------------------------------------------------------------------------------
  // Faults, network, timers

  private planCrashes(): void {
    const nodes: Node[] = [this.coordinator, ...this.participants]
    for (const node of nodes) {
      let t = 0
      while (this.rng.chance(this.faults.crashes)) {
        // Most crashes land while the transaction is busy (its first few hundred ms).
        t += this.rng.chance(0.75) ? this.rng.int(0, 250) : this.rng.int(0, FAULTS_END_MS / 2)
        if (t >= FAULTS_END_MS) break
        const down = this.rng.chance(0.2) ? this.rng.int(500, 5_000) : this.rng.int(1, 400)
        const at = t
        const restartAt = Math.min(at + down, FAULTS_END_MS)
        this.sched.after(at, () => this.crash(node))
        this.sched.after(restartAt, () => this.restart(node))
        t = restartAt + 1
      }
    }
  }

  private stopFaults(): void {
    this.faultsOn = false
    this.log('faults stop')
  }

  private append<R>(node: Node & Logged<R>, record: R, delayMs: number, then?: () => void): void {
    const at = Math.max(this.sched.now + delayMs, node.logTail)
    node.logTail = at
    this.timer(node, at - this.sched.now, () => {
      node.log.push(record)
      then?.()
    })
  }

  private crash(node: Node): void {
    if (!node.up) return
    node.up = false
    node.incarnation++
    this.log(`CRASH ${node.name}`)
    if (node === this.coordinator) {
      this.stats.coordinatorCrashes++
      this.coordinator.logTail = 0
      this.coordinator.state = undefined
      this.coordinator.outcome = undefined
      if (this.appRequested !== 'none' && this.appOutcome === undefined && this.appIncarnation === node.incarnation - 1) this.appLostAnswer = true
      return
    }
    const p = node as ParticipantNode
    this.stats.participantCrashes++
    p.logTail = 0
    p.state = undefined
    p.voteWaiters = []
    p.doneWaiters = []
    p.ended = undefined
    // The pod died with its app: open (unprepared) work is rolled back by the database.
    if (p.app === 'open') p.app = 'aborted'
  }

  private restart(node: Node): void {
    if (node.up) return
    node.up = true
    this.log(`RESTART ${node.name}`)
    if (node === this.coordinator) {
      const live = liveDecision(this.coordinator.log)
      if (live === undefined) return
      this.stats.coordinatorRecoveries++
      const step = this.guard('recoverCoordinator', () => recoverCoordinator(this.tx, live, this.env))
      if (step === undefined) return
      this.coordinator.state = step.state
      this.log(`C recovered ${step.state.status}: ${step.actions.map(describe).join(', ')}`)
      this.performCoordinator(step.actions)
      return
    }
    const p = node as ParticipantNode
    const live = liveBranch(p.log)
    if (live !== undefined) {
      this.stats.participantRecoveries++
      if (live.onePhase) this.stats.onePhaseRecoveries++
      // PREPARING alone: the app may have prepared, but the branch never voted yes: abort alone.
      if (!live.voted) this.stats.orphansResolved++
      const step = this.guard('recoverParticipant', () =>
        live.voted ? recoverParticipant(this.tx, p.ref.branch, 'c:15010', this.deadline, this.env, live.onePhase) : recoverUnvoted(this.tx, p.ref.branch, 'c:15010', this.deadline, live.onePhase),
      )
      if (step === undefined) return
      p.state = step.state
      this.armDeadline(p)
      this.log(`${p.name} recovered ${step.state.status}: ${step.actions.map(describe).join(', ')}`)
      this.performParticipant(p, step.actions)
    } else if (p.app === 'prepared') {
      // The app prepared and its sidecar has no record of the branch: nothing would ever finish
      // it (an app written from the hook contract alone has no sweep of its own).
      this.violation(`${p.ref.branch}: the app holds a prepared branch its sidecar has no record of`)
    }
  }

  // -------------------------------------------------------------------------------------------
  // Initiator: its app and the coordinator sidecar (same pod)

  private startInitiator(): void {
    const c = this.coordinator
    c.state = newCoordinator(this.tx, this.deadline)
    this.timer(c, this.deadline, () => this.feedCoordinator({ type: 'deadline' }))
    for (const p of this.participants) {
      const at = p.awaited ? this.rng.int(0, 30) : this.rng.int(0, 400)
      this.timer(c, at, () => this.businessCall(p))
    }
    if (!this.participants.some((p) => p.awaited)) this.appDecides()
  }

  private businessCall(p: ParticipantNode): void {
    const c = this.coordinator
    this.request<ParticipantRef | 'rejected'>(
      c,
      p,
      BUSINESS_TIMEOUT_MS,
      (reply) => reply(this.ingress(p)),
      (r) => {
        if (!p.awaited) return
        this.callResults.set(p.ref.branch, r === undefined || r === 'rejected' ? 'failed' : 'ok')
        if (this.callResults.size === this.participants.filter((q) => q.awaited).length) this.appDecides()
      },
      {
        // A business request is not re-sent by the network (a retry would be a new request).
        duplicable: false,
        onEveryReply: (r) => {
          if (r === 'rejected' || c.state === undefined) return
          if (c.state.status !== 'active') this.stats.lateEnlistments++
          // Enlisted before the decision: its work belongs to the transaction's outcome.
          if (c.state.status === 'active' || c.state.status === 'preparing') this.joinedBeforeDecision.add(r.branch)
          this.feedCoordinator({ type: 'enlist', participants: [r] })
        },
      },
    )
  }

  private appDecides(): void {
    const c = this.coordinator
    this.timer(c, this.rng.int(0, 20), () => {
      const failed = [...this.callResults.values()].includes('failed')
      const r = this.rng.next()
      if (r < 0.03) {
        this.log('app never finishes (the deadline must abort)')
        return
      }
      const kind = failed || r < 0.1 ? 'abort' : 'commit'
      this.appRequested = kind
      this.appIncarnation = c.incarnation
      this.log(`app asks ${kind}`)
      this.feedCoordinator(kind === 'commit' ? { type: 'commit-requested' } : { type: 'abort-requested', reason: failed ? 'a call failed' : 'app chose to abort' })
      // Decided earlier (deadline, late enlistment): answer from what the sidecar remembers.
      if (c.outcome !== undefined) this.answerApp(c.outcome)
      // An impatient app asks to abort while its commit is still being decided: that must
      // neither take back a COMMIT record on its way to disk nor change the answer.
      if (kind === 'commit' && this.rng.chance(0.1)) {
        this.timer(c, this.rng.int(0, 60), () => {
          this.log('app asks abort while committing')
          this.feedCoordinator({ type: 'abort-requested', reason: 'app got impatient' })
        })
      }
    })
  }

  private answerApp(outcome: Outcome): void {
    if (this.appRequested === 'none' || this.appOutcome !== undefined) return
    if (this.coordinator.incarnation !== this.appIncarnation) return
    this.appOutcome = outcome
    this.log(`app hears ${outcome}`)
  }

  private feedCoordinator(event: CoordinatorEvent): void {
    const c = this.coordinator
    if (!c.up || c.state === undefined) return
    const before = c.state
    const step = this.guard(`coordinatorStep(${event.type})`, () => coordinatorStep(before, event, this.env))
    if (step === undefined) return
    if (event.type === 'commit-requested' && before.status === 'active') this.preparedSet = before.participants.map((p) => p.ref.branch)
    if (event.type === 'one-phase-result' && before.status === 'committing' && step.state.status !== 'committing') {
      if (step.state.status === 'committed') this.stats.onePhaseCommits++
      else this.stats.onePhaseAborts++
    }
    c.state = step.state
    this.log(`C ${describe(event)} -> ${step.state.status}${step.actions.length > 0 ? `: ${step.actions.map(describe).join(', ')}` : ''}`)
    this.performCoordinator(step.actions)
  }

  private performCoordinator(actions: readonly CoordinatorAction[]): void {
    const c = this.coordinator
    for (const a of actions) {
      switch (a.type) {
        case 'send-prepare': {
          const p = this.participantAt(a.to)
          this.request<Vote>(
            c,
            p,
            CONTROL_TIMEOUT_MS,
            (reply) => this.onPrepare(p, reply),
            (v) => this.feedCoordinator({ type: 'vote', branch: a.to.branch, vote: v ?? { kind: 'refused', reason: 'prepare timed out' } }),
          )
          break
        }
        case 'log-decision': {
          const participants = a.participants
          this.append(c, { kind: 'decision', participants }, this.diskLatency(), () => {
            this.decision ??= participants.map((r) => r.branch)
            this.log('C COMMIT record durable')
            // The sidecar may die between the fsync and acting on it.
            this.timer(c, this.rng.int(0, 3), () => this.feedCoordinator({ type: 'decision-logged' }))
          })
          break
        }
        case 'send-commit-one-phase': {
          this.onePhase = true
          const p = this.participantAt(a.to)
          this.request<OnePhaseReply>(
            c,
            p,
            CONTROL_TIMEOUT_MS,
            (reply) => this.onCommitOnePhase(p, reply),
            (r) =>
              this.feedCoordinator(
                r === 'committed' || r === 'aborted' ? { type: 'one-phase-result', branch: a.to.branch, outcome: r } : { type: 'send-failed', branch: a.to.branch },
              ),
          )
          break
        }
        case 'send-commit':
        case 'send-abort': {
          const p = this.participantAt(a.to)
          const outcome: Outcome = a.type === 'send-commit' ? 'committed' : 'aborted'
          this.request<DecisionReply>(
            c,
            p,
            CONTROL_TIMEOUT_MS,
            (reply) => this.onDecision(p, outcome, (o) => reply(o === undefined ? 'conflict' : 'done')),
            (r) => this.feedCoordinator(r === 'done' ? { type: 'ack', branch: a.to.branch } : { type: 'send-failed', branch: a.to.branch }),
          )
          break
        }
        case 'schedule-retry':
          this.timer(c, a.delayMs, () => this.feedCoordinator({ type: 'retry-due', branch: a.branch }))
          break
        case 'outcome':
          c.outcome = a.outcome
          this.coordinatorOutcomes.push(a.outcome)
          this.answerApp(a.outcome)
          break
        case 'log-end': {
          // END only closes a COMMIT record (presumed abort wrote nothing else); it is lazy.
          if (c.state?.decisionLogged === true) this.append(c, { kind: 'end' }, this.rng.int(1, 50))
          c.state = undefined
          break
        }
      }
    }
  }

  /** What the coordinator answers an outcome query. */
  private answerQuery(): QueryReply {
    const c = this.coordinator
    if (c.state !== undefined) return coordinatorOutcome(c.state)
    return liveDecision(c.log) !== undefined ? 'committed' : 'aborted'
  }

  private participantAt(ref: ParticipantRef): ParticipantNode {
    const p = this.participants.find((q) => q.ref.branch === ref.branch)
    if (p === undefined) throw new Error(`no participant ${ref.branch}`)
    return p
  }

  // -------------------------------------------------------------------------------------------
  // Participant sidecars and their apps

  /** The business call reaches the participant's ingress: the branch joins, the app works. */
  private ingress(p: ParticipantNode): ParticipantRef | 'rejected' {
    if (this.sched.now >= this.deadline) return 'rejected'
    if (p.state === undefined) {
      if (p.app !== 'none') return 'rejected'
      p.state = newParticipant(this.tx, p.ref.branch, 'c:15010', this.deadline)
      p.app = 'open'
      this.armDeadline(p)
      this.log(`${p.name} joins, app work open`)
      return p.ref
    }
    return p.state.status === 'active' ? p.ref : 'rejected'
  }

  private armDeadline(p: ParticipantNode): void {
    this.timer(p, Math.max(0, this.deadline - this.sched.now), () => this.feedParticipant(p, { type: 'deadline' }))
  }

  private onPrepare(p: ParticipantNode, reply: (v: Vote) => void): void {
    if (p.state === undefined) {
      reply({ kind: 'refused', reason: 'unknown branch' })
      return
    }
    p.voteWaiters.push(reply)
    this.feedParticipant(p, { type: 'prepare' })
  }

  /** `reply(undefined)`: 409, nothing under way will answer. */
  private onDecision(p: ParticipantNode, outcome: Outcome, reply: (r: Outcome | undefined) => void): void {
    if (p.state === undefined) {
      // Finished and forgotten, or never durable: either way there is nothing left to do.
      reply(outcome)
      return
    }
    const waiter = (o: Outcome): void => reply(o)
    p.doneWaiters.push(waiter)
    this.feedParticipant(p, { type: 'decision', outcome })
    const status = p.state?.status
    if (p.doneWaiters.includes(waiter) && status !== 'committing' && status !== 'aborting') {
      // Nothing under way will answer it (commit for a branch that never voted yes): 409.
      p.doneWaiters = p.doneWaiters.filter((w) => w !== waiter)
      reply(undefined)
    }
  }

  /** The control endpoint commit-one-phase of the participant's sidecar. */
  private onCommitOnePhase(p: ParticipantNode, reply: (r: OnePhaseReply) => void): void {
    if (p.state === undefined) {
      if (p.ended !== undefined) {
        reply(p.ended)
        return
      }
      // Not held here and no PREPARED(onePhase): this sidecar never decided commit. The app's
      // abort hook rolls back whatever it holds (404 for nothing, or for work already
      // committed), then the answer is aborted; a failing hook answers 503.
      this.stats.onePhaseUnknown++
      this.timer(p, this.rng.int(1, 20), () => {
        if (this.faultsOn && this.rng.chance(this.faults.hookFailure / 2)) {
          reply('failed')
          return
        }
        if (p.app === 'open' || p.app === 'prepared') p.app = 'aborted'
        reply('aborted')
      })
      return
    }
    const before = p.state.status
    p.doneWaiters.push(reply)
    this.feedParticipant(p, { type: 'commit-one-phase' })
    if (p.state !== undefined && !p.state.onePhase && before !== 'active' && p.doneWaiters.includes(reply)) {
      // A two-phase branch (the driver answers 409): the coordinator counts it as failed.
      p.doneWaiters = p.doneWaiters.filter((w) => w !== reply)
      reply('failed')
    }
  }

  /**
   * Crashes a one-phase participant right here now and then (the points that matter: before
   * and after PREPARED(onePhase) is durable, around the app's commit, before the answer).
   */
  private maybeCrashOnePhase(p: ParticipantNode, where: string): boolean {
    if (!this.faultsOn || p.state?.onePhase !== true || !this.rng.chance(this.faults.crashes * 0.3)) return false
    this.stats.onePhaseCrashes++
    this.log(`${p.name} crash point: ${where}`)
    this.crash(p)
    this.sched.after(this.rng.chance(0.2) ? this.rng.int(400, 3_000) : this.rng.int(1, 300), () => this.restart(p))
    return true
  }

  private feedParticipant(p: ParticipantNode, event: ParticipantEvent): void {
    if (!p.up || p.state === undefined) return
    const before = p.state
    const step = this.guard(`participantStep(${event.type})`, () => participantStep(before, event, this.env))
    if (step === undefined) return
    p.state = step.state
    this.log(`${p.name} ${describe(event)} -> ${step.state.status}${step.actions.length > 0 ? `: ${step.actions.map(describe).join(', ')}` : ''}`)
    this.performParticipant(p, step.actions)
  }

  private performParticipant(p: ParticipantNode, actions: readonly ParticipantAction[]): void {
    for (let i = 0; i < actions.length; i++) {
      const a = actions[i] as ParticipantAction
      // A crash point below may have killed the sidecar: the rest of the step dies with it.
      if (!p.up) return
      switch (a.type) {
        case 'call-app':
          if (a.hook !== 'abort' && this.maybeCrashOnePhase(p, `before the ${a.hook} hook`)) return
          this.callApp(p, a.hook)
          break
        case 'log-preparing': {
          const onePhase = p.state?.onePhase === true
          this.append(p, { kind: 'preparing', onePhase }, this.diskLatency(), () => {
            this.timer(p, this.rng.int(0, 3), () => this.feedParticipant(p, { type: 'preparing-logged', ok: true }))
          })
          break
        }
        case 'log-prepared': {
          const onePhase = p.state?.onePhase === true
          this.append(p, { kind: 'prepared', onePhase }, this.diskLatency(), () => {
            if (onePhase) this.onePhaseLogged.add(p.ref.branch)
            if (this.maybeCrashOnePhase(p, 'after PREPARED(onePhase) is durable')) return
            this.timer(p, this.rng.int(0, 3), () => this.feedParticipant(p, { type: 'prepared-logged' }))
          })
          break
        }
        case 'reply-vote':
          if (a.vote.kind !== 'refused') this.votedYes.add(p.ref.branch)
          for (const w of p.voteWaiters.splice(0)) w(a.vote)
          break
        case 'reply-done':
          if (this.maybeCrashOnePhase(p, `before answering ${a.outcome}`)) return
          for (const w of p.doneWaiters.splice(0)) w(a.outcome)
          break
        case 'query-outcome':
          this.request<QueryReply>(
            p,
            this.coordinator,
            CONTROL_TIMEOUT_MS,
            (reply) => reply(this.answerQuery()),
            (r) => this.feedParticipant(p, r === 'committed' || r === 'aborted' ? { type: 'decision', outcome: r } : { type: 'outcome-unknown' }),
          )
          break
        case 'schedule-retry':
          this.timer(p, a.delayMs, () => this.feedParticipant(p, { type: 'retry-due' }))
          break
        case 'log-end': {
          const seen = this.sidecarOutcomes.get(p.ref.branch) ?? []
          seen.push(a.outcome)
          this.sidecarOutcomes.set(p.ref.branch, seen)
          // A committed branch's END is durable before "done" goes back (the coordinator may
          // forget the transaction then); an aborted one's may be lazy (presumed abort).
          // A one-phase branch's END is lazy either way: a lost one only means committing again
          // (idempotent) and asking whether the coordinator still waits.
          // A read-only branch's END is durable too (a PREPARING alone would abort it at a
          // restart), and the answers that follow it go out only then, as in the driver.
          if (a.outcome === 'committed' && !(p.state?.onePhase === true && p.state.vote?.kind === 'prepared')) {
            // Nothing of this branch can still be queued: PREPARING/PREPARED were durable before.
            if (p.logTail > this.sched.now) this.violation(`${p.ref.branch}: END(committed) behind a pending append`)
            p.log.push({ kind: 'end', outcome: a.outcome })
            for (const r of actions.slice(i + 1)) {
              if (r.type === 'reply-vote') {
                if (r.vote.kind !== 'refused') this.votedYes.add(p.ref.branch)
                for (const w of p.voteWaiters.splice(0)) w(r.vote)
              }
              if (r.type === 'reply-done') for (const w of p.doneWaiters.splice(0)) w(r.outcome)
            }
          } else this.append(p, { kind: 'end', outcome: a.outcome }, this.rng.int(1, 50))
          p.state = undefined
          p.ended = a.outcome
          // The driver's `ended` map is bounded in time and size.
          this.timer(p, this.rng.int(50, 3_000), () => (p.ended = undefined))
          for (const w of p.voteWaiters.splice(0)) w({ kind: 'refused', reason: `branch ${a.outcome}` })
          for (const w of p.doneWaiters.splice(0)) w(a.outcome)
          break
        }
      }
    }
  }

  /** A hook call to the app in the same pod: it may fail before or after taking effect. */
  private callApp(p: ParticipantNode, hook: 'prepare' | 'commit' | 'abort'): void {
    const failed: ParticipantEvent = hook === 'prepare' ? { type: 'app-voted', vote: { kind: 'refused', reason: 'prepare hook failed' } } : { type: 'app-failed' }
    let settled = false
    const finish = (e: ParticipantEvent): void => {
      if (settled) return
      settled = true
      this.feedParticipant(p, e)
    }
    this.timer(p, HOOK_TIMEOUT_MS, () => finish(failed))
    const slowApp = this.faultsOn && this.rng.chance(this.faults.hookFailure / 3)
    this.timer(p, slowApp ? this.rng.int(HOOK_TIMEOUT_MS, 2 * HOOK_TIMEOUT_MS) : this.rng.int(1, 20), () => {
      if (this.faultsOn && this.rng.chance(this.faults.hookFailure / 2)) {
        // 5xx before doing anything.
        this.timer(p, this.rng.int(1, 5), () => finish(failed))
        return
      }
      const result = this.appHook(p, hook)
      // Done, but the answer is lost: the sidecar times out and retries.
      if (this.faultsOn && this.rng.chance(this.faults.hookFailure / 2)) return
      this.timer(p, this.rng.int(1, 5), () => finish(result))
    })
  }

  private appHook(p: ParticipantNode, hook: 'prepare' | 'commit' | 'abort'): ParticipantEvent {
    const b = p.ref.branch
    switch (hook) {
      case 'prepare':
        if (p.app === 'open') {
          p.app = p.plannedVote === 'prepared' ? 'prepared' : p.plannedVote === 'read-only' ? 'read-only' : 'aborted'
          if (p.plannedVote === 'refused') return { type: 'app-voted', vote: { kind: 'refused', reason: 'app says no' } }
          return { type: 'app-voted', vote: { kind: p.plannedVote } }
        }
        if (p.app === 'prepared') return { type: 'app-voted', vote: { kind: 'prepared' } }
        if (p.app === 'read-only') return { type: 'app-voted', vote: { kind: 'read-only' } }
        if (p.app === 'committed') this.violation(`${b}: prepare hook after the app committed`)
        return { type: 'app-voted', vote: { kind: 'refused', reason: 'no such work' } }
      case 'commit':
        if (p.app === 'prepared') p.app = 'committed'
        else if (p.app === 'open') this.violation(`${b}: commit hook on unprepared work`)
        else if (p.app === 'aborted') this.violation(`${b}: commit hook after the app aborted`)
        // The app committed; the sidecar may die before it hears so.
        this.maybeCrashOnePhase(p, 'after the app committed')
        return { type: 'app-done' }
      case 'abort':
        if (p.app === 'open' || p.app === 'prepared') p.app = 'aborted'
        else if (p.app === 'committed') this.violation(`${b}: abort hook on a committed branch`)
        return { type: 'app-done' }
    }
  }

  // -------------------------------------------------------------------------------------------

  private report(quiesced: 'idle' | 'time' | 'events'): Report {
    const c = this.coordinator
    return {
      seed: this.seed,
      quiesced,
      endTime: this.sched.now,
      events: this.sched.events,
      violations: this.violations,
      participants: this.participants.map((p) => ({
        branch: p.ref.branch,
        app: p.app,
        sidecarOutcomes: this.sidecarOutcomes.get(p.ref.branch) ?? [],
        stateLeft: p.state?.status,
        preparedLive: liveBranch(p.log)?.voted === true,
        awaited: p.awaited,
      })),
      preparedSet: this.preparedSet,
      joinedBeforeDecision: [...this.joinedBeforeDecision],
      decision: this.decision,
      votedYes: [...this.votedYes],
      appRequested: this.appRequested,
      appOutcome: this.appOutcome,
      appLostAnswer: this.appLostAnswer,
      coordinatorStateLeft: c.state?.status,
      onePhase: this.onePhase,
      onePhaseLogged: [...this.onePhaseLogged],
      coordinatorOutcomes: this.coordinatorOutcomes,
      decisionLive: liveDecision(c.log) !== undefined,
      stats: this.stats,
      faults: this.faults,
    }
  }
}

function liveDecision(log: readonly CoordinatorRecord[]): readonly ParticipantRef[] | undefined {
  let live: readonly ParticipantRef[] | undefined
  for (const r of log) live = r.kind === 'decision' ? r.participants : undefined
  return live
}

/** A PREPARED record not followed by an END: the branch is recovered after a restart. */
/** The branch a participant log still holds: voted (PREPARED) or not (PREPARING only). */
function liveBranch(log: readonly ParticipantRecord[]): { readonly onePhase: boolean; readonly voted: boolean } | undefined {
  let live: { readonly onePhase: boolean; readonly voted: boolean } | undefined
  for (const r of log) live = r.kind === 'end' ? undefined : { onePhase: r.onePhase, voted: r.kind === 'prepared' || live?.voted === true }
  return live
}

function describe(x: CoordinatorEvent | CoordinatorAction | ParticipantEvent | ParticipantAction): string {
  switch (x.type) {
    case 'vote':
      return `vote(${x.branch} ${x.vote.kind})`
    case 'app-voted':
    case 'reply-vote':
      return `${x.type}(${x.vote.kind})`
    case 'send-prepare':
    case 'send-commit-one-phase':
    case 'send-commit':
    case 'send-abort':
      return `${x.type}(${x.to.branch})`
    case 'ack':
    case 'send-failed':
    case 'retry-due':
      return 'branch' in x ? `${x.type}(${x.branch})` : x.type
    case 'schedule-retry':
      return `${x.type}(${'branch' in x ? `${x.branch} ` : ''}${x.delayMs}ms)`
    case 'enlist':
      return `enlist(${x.participants.map((r) => r.branch).join(',')})`
    case 'one-phase-result':
      return `${x.type}(${x.branch} ${x.outcome})`
    case 'decision':
    case 'outcome':
    case 'log-end':
    case 'reply-done':
      return 'outcome' in x ? `${x.type}(${x.outcome})` : x.type
    case 'call-app':
      return `call-app(${x.hook})`
    default:
      return x.type
  }
}
