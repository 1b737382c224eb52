// Participant driver: holds the branches this sidecar runs for its app, performs the actions of
// the pure participant machine (app hook calls, PREPARED log writes, outcome queries, timers)
// and answers the coordinator's prepare / commit / abort.
import { failpoint, failpointSoon } from '../../failpoints.js'
import { appendDurable } from '../durable.js'
import { participantKey, type BranchRecord, type LogRecord } from '../records.js'
import { RecentMap } from '../recent.js'
import {
  BranchNotInDoubtError,
  LogFailedError,
  ShuttingDownError,
  TxLimitError,
  TxNotActiveError,
  TxUnknownError,
  TxmeshError,
} from '../../errors.js'
import { LIMITS } from '../../limits.js'
import type { Logger } from '../../telemetry/logger.js'
import { sleep, type SidecarIo, type Timer } from '../io.js'
import type {
  BranchId,
  Env,
  Outcome,
  ParticipantAction,
  ParticipantEvent,
  ParticipantRef,
  ParticipantState,
  TxId,
  Vote,
} from '../core.js'
import {
  BRANCH_ID_HEADER,
  CONTEXT_HEADER,
  OP_HEADER,
  TX_ID_HEADER,
  coordinatorAllowed,
  contextGroup,
  coordinatorOfTx,
  heldByAnotherLog,
  isAddress,
  holderOfBranch,
  newBranchId,
  type TxContext,
} from '../protocol.js'
import { newParticipant, participantTransition, recoverParticipant, recoverUnvoted } from './machine.js'
import { Batcher } from '../../control/batcher.js'
import { parseJsonObject } from '../../http-json.js'

export interface Branch {
  state: ParticipantState
  readonly service: string
  /** Signed context token the branch was joined with (passed to app hooks). */
  readonly context: string
  voteWaiters: ((v: Vote) => void)[]
  doneWaiters: ((o: Outcome) => void)[]
  /**
   * Inbound requests of this branch still being answered (nested enlistments ride on them, and
   * hook calls wait for them: enter/leave).
   */
  inflight: number
  /** Hook calls waiting for inflight to reach 0. */
  idle: (() => void)[]
  /**
   * JOINED (the branch's first record) is durable: force-written before the branch's first
   * request reaches the app, so a sidecar that dies while its app holds open work of the branch
   * finds it at restart and aborts it. `joining`: that write, while it runs (false: it failed).
   */
  joinedDurable: boolean
  joining: Promise<boolean> | undefined
  /** Participants enlisted by this app's outgoing calls while a request of the branch ran. */
  nested: ParticipantRef[]
  timer: Timer | undefined
  deadlineTimer: Timer | undefined
  /** When this sidecar took the branch on (joined, or recovered from the log). */
  readonly since: number
  /**
   * The coordinator the branch names answered 'unknown-coordinator': the sidecar at that address
   * now runs another log (a reused pod IP, a wiped log), so nobody can say the outcome. The
   * branch stays prepared and is listed in doubt at once; an operator decides.
   */
  coordinatorUnknown: boolean
  /** The decision came from an outcome query, not from the coordinator's phase 2: tell it when done. */
  learnedByQuery: boolean
  /**
   * Where the next outcome query goes: the coordinator the context names, the context's group
   * address (store.group), or the owner a group answer named (the instance that holds the
   * coordinator's log now, a sibling that took it over). Queries go round while none gives the
   * outcome.
   */
  askNext: 'coordinator' | 'group' | 'owner'
  /** The owner the last group answer named (an address the mesh allows as a coordinator). */
  owner: string | undefined
  /**
   * An operator's resolution is being recorded: the coordinator's decision waits (answered
   * 'failed', it retries) so the resolution, once durable, is what the branch does and a decision
   * the other way is then reported as heuristic, never the reverse (a "resolved" answer for a
   * branch that committed meanwhile).
   */
  resolving: boolean
  /** The outcome an operator resolved the branch with (its END then keeps its records: resolvedEnded). */
  resolved: Outcome | undefined
}

export interface BranchView {
  readonly tx: TxId
  readonly branch: BranchId
  readonly status: ParticipantState['status']
  readonly coordinator: string
  readonly ageMs: number
  /** Voted yes and waiting past the in-doubt window (or its coordinator is gone): an operator may resolve it. */
  readonly inDoubt: boolean
  /** Its coordinator's address answered that it runs another log and cannot vouch for the id. */
  readonly coordinatorUnknown: boolean
}

export interface ParticipantDeps {
  /** Time, timers, the control transport, the app's hooks and the log (./io.ts). */
  readonly io: SidecarIo
  readonly service: string
  /** This sidecar's control address (its identity as a participant). */
  readonly self: string
  /** This sidecar's log incarnation: its 2PC branch ids carry it (protocol.ts newBranchId). */
  readonly incarnation?: string
  /** The app's origin, e.g. http://127.0.0.1:8080 (reached through io.app). */
  readonly appOrigin: string
  /** `batch`: the app's batch hook (config hooks.batch); prepare/commit/abort then go through it. */
  readonly hooks: {
    readonly prepare: string
    readonly commit: string
    readonly abort: string
    readonly confirm: string
    readonly cancel: string
    readonly batch?: string | undefined
  }
  readonly logger: Logger
  /** Coordinator allow-list (mesh.coordinators): who may be asked about unknown branches. */
  readonly coordinators: readonly string[]
  /** Branch events for the dashboard feed (src/admin/events.ts). */
  readonly onEvent?: ((type: string, data: Readonly<Record<string, unknown>>) => void) | undefined
}

const logKey = participantKey

/** A JOINED, PREPARING or PREPARED record: what recovery needs to rebuild the branch. */
function branchRecord(type: BranchRecord['type'], b: Branch): BranchRecord {
  const s = b.state
  return {
    type,
    tx: s.tx,
    branch: s.branch,
    coordinator: s.coordinator,
    deadline: s.deadline,
    context: b.context,
    ...(s.onePhase ? { onePhase: true } : {}),
  }
}

/** A 2PC hook call to the app, sent in a batch when hooks.batch is set. */
interface HookItem {
  readonly hook: 'prepare' | 'commit' | 'abort'
  readonly tx: TxId
  readonly branch: BranchId
  readonly context: string | undefined
}

/** The batch's single key: every hook call goes to the one app. */
const APP_KEY = 'app'

export class ParticipantDriver {
  /** One branch per transaction in this sidecar (DESIGN.md: a participant is a sidecar instance). */
  private readonly byTx = new Map<TxId, Branch>()
  private readonly ended: RecentMap<string, Outcome>
  private readonly endedTx: RecentMap<TxId, Outcome>
  /**
   * Branches an operator resolved (`${tx}:${branch}` -> outcome), kept, and their records kept in
   * the log, until their coordinator's decision reaches them: the answer then names the outcome
   * the branch has, and one against the decision is reported heuristic-mixed there, however long
   * the coordinator was away and whether or not this sidecar restarted meanwhile. Few: one per
   * operator resolution.
   */
  private readonly resolvedEnded = new Map<string, Outcome>()
  private readonly clock: () => number
  private readonly random: () => number
  /** Set by close() (drain): results arriving afterwards are dropped, no new timers start. */
  private closed = false
  /** Hook calls batched to the app (hooks.batch), else undefined: one request per call. */
  private readonly hookBatcher: Batcher<HookItem, number | Error> | undefined

  constructor(private readonly d: ParticipantDeps) {
    this.ended = new RecentMap(undefined, undefined, d.io.clock)
    this.endedTx = new RecentMap(undefined, undefined, d.io.clock)
    this.clock = d.io.clock
    this.random = d.io.random
    const batchPath = d.hooks.batch
    this.hookBatcher =
      batchPath === undefined
        ? undefined
        : new Batcher({
            maxItems: LIMITS.batchMaxItems,
            maxInFlight: LIMITS.batchMaxInFlight,
            holdMs: LIMITS.batchHoldMs,
            maxQueued: LIMITS.batchMaxQueued,
            flush: (_app, items) => this.flushHooks(batchPath, items),
            overloaded: (err) => err,
            failed: (err) => err,
          })
  }

  /** Hook calls and the requests that carried them (GET /v1/stats), when hooks.batch is set. */
  get hookBatchCounters(): { readonly items: number; readonly batches: number } | undefined {
    return this.hookBatcher?.counters
  }

  private env(): Env {
    return { now: this.clock(), random: this.random }
  }

  get branchCount(): number {
    return this.byTx.size
  }

  /** Every branch held here, in-doubt ones flagged (operators: CLI, dashboard). */
  list(): BranchView[] {
    const now = this.clock()
    return [...this.byTx.values()].map((b) => ({
      tx: b.state.tx,
      branch: b.state.branch,
      status: b.state.status,
      coordinator: b.state.coordinator,
      ageMs: now - b.since,
      inDoubt: this.isInDoubt(b, now),
      coordinatorUnknown: b.coordinatorUnknown,
    }))
  }

  /**
   * An operator's decision for a prepared branch whose coordinator cannot answer (heuristic
   * outcome, as XA and LRA call it). Only a branch in doubt (prepared past the in-doubt window,
   * or its coordinator gone) may be resolved: before that its coordinator may still decide the
   * other way. `force` overrides that, and the record says so. Audited durably in the log before
   * it is carried out.
   */
  async resolve(tx: TxId, outcome: Outcome, by: string, force = false): Promise<BranchView | TxmeshError> {
    const b = this.byTx.get(tx)
    if (b === undefined) return new TxUnknownError(`no branch of transaction ${tx} here`)
    if (b.state.status !== 'prepared')
      return new TxNotActiveError(
        `branch ${b.state.branch} is ${b.state.status}; only a prepared branch can be resolved`,
      )
    const inDoubt = this.isInDoubt(b, this.clock())
    if (!inDoubt && !force) {
      return new BranchNotInDoubtError(
        `branch ${b.state.branch} is not in doubt: its coordinator ${b.state.coordinator} may still decide it (prepared ${Math.round((this.clock() - b.since) / 1000)} s ago, in doubt after ${LIMITS.inDoubtWindowMs / 1000} s); force it only if you know the coordinator's decision`,
      )
    }
    const forced = !inDoubt
    if (b.resolving) return new TxNotActiveError(`branch ${b.state.branch} is being resolved already`)
    b.resolving = true
    try {
      await appendDurable(this.d.io, logKey(tx, b.state.branch), {
        type: 'resolved',
        outcome,
        by,
        at: new Date(this.clock()).toISOString(),
        ...(forced ? { forced: true } : {}),
      })
    } finally {
      b.resolving = false
    }
    this.d.logger.warn(forced ? 'branch_resolved_forced' : 'branch_resolved', {
      tx,
      branch: b.state.branch,
      outcome,
      by,
      coordinator: b.state.coordinator,
    })
    this.d.onEvent?.('branch-resolved', { tx, branch: b.state.branch, outcome, by, forced })
    const view = this.list().find((v) => v.tx === tx) as BranchView
    b.resolved = outcome
    this.feed(b, { type: 'decision', outcome })
    return view
  }

  private isInDoubt(b: Branch, now: number): boolean {
    return b.state.status === 'prepared' && (b.coordinatorUnknown || now - b.since >= LIMITS.inDoubtWindowMs)
  }

  /** Branches that voted yes and wait for the decision (metrics). */
  get inDoubtCount(): number {
    let n = 0
    for (const b of this.byTx.values()) if (b.state.status === 'prepared') n++
    return n
  }

  ref(b: Branch): ParticipantRef {
    return { service: this.d.service, control: this.d.self, branch: b.state.branch }
  }

  /** The branch of this transaction here, created on the first request that carries its context. */
  join(ctx: TxContext, token: string): Branch | TxmeshError {
    const existing = this.byTx.get(ctx.id)
    if (existing !== undefined) return existing
    const ended = this.endedTx.get(ctx.id)
    if (ended !== undefined) return new TxNotActiveError(`transaction ${ctx.id} already ${ended} here`)
    if (this.byTx.size >= LIMITS.maxBranches)
      return new TxLimitError(`this sidecar already holds ${this.byTx.size} branches`)
    const branch = newBranchId(this.d.incarnation, this.d.io.randomChars)
    const b = this.add(newParticipant(ctx.id, branch, ctx.coordinator, ctx.deadline), token)
    b.joining = appendDurable(this.d.io, logKey(ctx.id, branch), branchRecord('joined', b)).then(
      () => (b.joinedDurable = true),
      (err: unknown) => {
        this.d.logger.error('joined_log_failed', { tx: ctx.id, branch, error: String(err) })
        // Nothing reached the app: the branch aborts alone (as at a deadline before prepare).
        this.feed(b, { type: 'deadline' })
        return false
      },
    )
    return b
  }

  /**
   * Before a request of the branch is forwarded to the app: JOINED must be durable (undefined
   * once it is, so later requests pay nothing). An error refuses the request.
   */
  joinedBeforeSend(b: Branch): (() => Promise<TxmeshError | undefined>) | undefined {
    if (b.joinedDurable || b.joining === undefined) return undefined
    const joining = b.joining
    return async () =>
      (await joining)
        ? undefined
        : new LogFailedError(`branch ${b.state.branch} of ${b.state.tx} could not be recorded; the request is not sent`)
  }

  private add(state: ParticipantState, token: string): Branch {
    const b: Branch = {
      state,
      service: this.d.service,
      context: token,
      voteWaiters: [],
      doneWaiters: [],
      inflight: 0,
      idle: [],
      joinedDurable: false,
      joining: undefined,
      nested: [],
      timer: undefined,
      deadlineTimer: undefined,
      since: this.clock(),
      coordinatorUnknown: false,
      learnedByQuery: false,
      askNext: 'coordinator',
      owner: undefined,
      resolving: false,
      resolved: undefined,
    }
    this.byTx.set(state.tx, b)
    this.branchEvent(b)
    const left = Math.max(0, state.deadline - this.clock())
    b.deadlineTimer = this.d.io.timers.set(() => this.feed(b, { type: 'deadline' }), left)
    return b
  }

  branchOf(tx: TxId): Branch | undefined {
    return this.byTx.get(tx)
  }

  /** A request of the branch reached the app through the ingress. */
  enter(b: Branch): void {
    b.inflight++
  }

  /** That request's response head left the app (or its exchange ended): waiting hooks may go. */
  leave(b: Branch): void {
    b.inflight--
    if (b.inflight === 0) for (const w of b.idle.splice(0)) w()
  }

  /**
   * Resolves true once no request of the branch runs in the app, false after
   * LIMITS.hookHoldMs: a hook must not reach the app while the branch's own request still runs
   * there (an app that runs the hook on the branch's connection would leave the rest of that
   * request outside any transaction).
   */
  private whenIdle(b: Branch): Promise<boolean> | boolean {
    if (b.inflight === 0) return true
    return new Promise<boolean>((resolve) => {
      const done = (): void => {
        this.d.io.timers.clear(timer)
        resolve(true)
      }
      const timer = this.d.io.timers.set(() => {
        const i = b.idle.indexOf(done)
        if (i >= 0) b.idle.splice(i, 1)
        resolve(b.inflight === 0)
      }, LIMITS.hookHoldMs)
      b.idle.push(done)
    })
  }

  /** Coordinator's prepare. Unknown branch: the work is lost (e.g. restart before prepare) -> no. */
  prepare(tx: TxId, branch: BranchId): Promise<Vote> {
    const b = this.byTx.get(tx)
    if (b === undefined || b.state.branch !== branch) {
      return Promise.resolve({
        kind: 'refused',
        reason: this.ended.has(`${tx}:${branch}`) ? 'branch already finished' : 'unknown branch',
      })
    }
    const p = new Promise<Vote>((resolve) => b.voteWaiters.push(resolve))
    this.feed(b, { type: 'prepare' })
    // Prepared already (duplicate prepare) answers at once through reply-vote.
    return p
  }

  /** Coordinator's decision. 'unknown' when the branch is not here (already finished or never began: both are done). */
  decide(
    tx: TxId,
    branch: BranchId,
    outcome: Outcome,
  ): Promise<Outcome | 'unknown' | 'refused' | 'failed' | 'not-here'> {
    const b = this.byTx.get(tx)
    if (b === undefined || b.state.branch !== branch) {
      const resolved = this.resolvedEnded.get(`${tx}:${branch}`)
      if (resolved !== undefined) {
        // Resolved by hand: the coordinator hears the outcome the branch has (heuristic when it
        // is not its decision); its records may go now.
        this.resolvedEnded.delete(`${tx}:${branch}`)
        this.d.io.log.end(logKey(tx, branch))
        return Promise.resolve(resolved)
      }
      const ended = this.ended.get(`${tx}:${branch}`)
      if (ended !== undefined) return Promise.resolve(ended)
      // Not known here: finished long ago, or this sidecar lost its log (emptyDir) while the
      // app still holds a prepared row. Deliver the decision to the app anyway: its hooks are
      // idempotent (404 = nothing to do), so this is right in both cases. A branch another log
      // held (this address was its holder's, a pod IP now reused) is not here: the coordinator
      // must not take this answer for its holder's (the holder tells it: control op finished).
      return this.decideUnknown(tx, branch, outcome, this.heldElsewhere(branch))
    }
    if (b.state.onePhase) {
      // Its coordinator never sends commit or abort to a one-phase branch (it decides itself):
      // answer with what the branch decided, without feeding anything.
      if (b.state.status === 'committed') return Promise.resolve('committed')
      if (b.state.status === 'aborted' || b.state.status === 'aborting') return Promise.resolve('aborted')
      return Promise.resolve('refused')
    }
    // Commit reaches only a branch that voted yes; anything else is a protocol violation (409).
    if (
      outcome === 'committed' &&
      (b.state.status === 'active' ||
        b.state.status === 'recording' ||
        b.state.status === 'preparing' ||
        b.state.status === 'logging')
    ) {
      return Promise.resolve('refused')
    }
    // An operator's resolution is on its way to the log: it goes first (see Branch.resolving).
    if (b.resolving) return Promise.resolve('failed')
    // Bounded wait: an app that cannot finish yet gets 'failed' (503) and the coordinator's
    // retry asks again, instead of one parked request per retry.
    const p = new Promise<Outcome | 'failed'>((resolve) => {
      const waiter = (o: Outcome): void => {
        this.d.io.timers.clear(timer)
        resolve(o)
      }
      const timer = this.d.io.timers.set(() => {
        const i = b.doneWaiters.indexOf(waiter)
        if (i >= 0) b.doneWaiters.splice(i, 1)
        resolve('failed')
      }, LIMITS.decideWaitMs)
      b.doneWaiters.push(waiter)
    })
    this.feed(b, { type: 'decision', outcome })
    return p
  }

  /**
   * The coordinator's one-phase commit (this branch is the transaction's only participant): the
   * branch prepares, decides and finishes alone, and the answer is its outcome. 'failed': the
   * outcome is not known yet (the coordinator retries); 'refused': a two-phase branch (409).
   */
  commitOnePhase(tx: TxId, branch: BranchId): Promise<Outcome | 'failed' | 'refused'> {
    const b = this.byTx.get(tx)
    if (b === undefined || b.state.branch !== branch) {
      const ended = this.ended.get(`${tx}:${branch}`)
      if (ended !== undefined) return Promise.resolve(ended)
      // Another log's branch: its holder may have decided commit; nothing here may answer for it.
      if (this.heldElsewhere(branch)) return Promise.resolve('failed')
      return this.abortUnknownOnePhase(tx, branch)
    }
    const s = b.state
    if (!s.onePhase && s.status !== 'active' && s.status !== 'aborting' && s.status !== 'aborted')
      return Promise.resolve('refused')
    const p = new Promise<Outcome>((resolve) => b.doneWaiters.push(resolve))
    this.feed(b, { type: 'commit-one-phase' })
    return p
  }

  /**
   * A one-phase commit for a branch this sidecar does not hold. With no live PREPARED(onePhase)
   * record it never decided commit (a committed one-phase branch keeps its record until its
   * coordinator has the answer), so the answer is aborted, once the app's abort hook rolled
   * back whatever it may hold (404: nothing). Never decideUnknown: that would commit.
   */
  private async abortUnknownOnePhase(tx: TxId, branch: BranchId): Promise<'aborted' | 'failed'> {
    try {
      const s = await this.hookStatus(tx, branch, undefined, 'abort')
      if ((s >= 200 && s < 300) || s === 404) return 'aborted'
    } catch (err) {
      this.d.logger.warn('hook_failed', { tx, hook: 'abort', error: (err as { code?: string }).code ?? String(err) })
    }
    return 'failed'
  }

  /** For the app helper's recovery: what happened to this branch? */
  async outcomeFor(tx: TxId, branch: BranchId): Promise<Outcome | 'in-doubt'> {
    const ended = this.ended.get(`${tx}:${branch}`)
    if (ended !== undefined) return ended
    const b = this.byTx.get(tx)
    // Not ours (a sibling instance's branch, or a log that was lost): ask the coordinator the
    // id names. A prepared row with a committed coordinator voted yes, so it commits; a
    // coordinator that does not know the transaction aborted it (presumed abort: a committed
    // one is forgotten only after every branch acknowledged, i.e. no prepared row is left).
    if (b === undefined || b.state.branch !== branch) {
      const coordinator = coordinatorOfTx(tx)
      if (coordinator === undefined || !coordinatorAllowed(this.d.coordinators, coordinator)) return 'in-doubt'
      return this.askCoordinator(coordinator, tx, false)
    }
    if (b.state.status === 'committed' || b.state.status === 'committing') return 'committed'
    if (b.state.status === 'aborted' || b.state.status === 'aborting') return 'aborted'
    // Still voting: the decision is not made yet.
    if (b.state.status !== 'prepared') return 'in-doubt'
    return this.askCoordinator(b.state.coordinator, tx, true, this.groupOf(b))
  }

  /**
   * `held`: this sidecar holds the branch (else the coordinator may not presume abort for it).
   * Without an answer from the coordinator, the context's group address (if any) is asked.
   */
  private async askCoordinator(
    coordinator: string,
    tx: TxId,
    held: boolean,
    group?: string,
  ): Promise<Outcome | 'in-doubt'> {
    const path = `/v1/tx/${tx}/${held ? 'outcome' : 'lookup'}`
    const targets = group === undefined ? [coordinator] : [coordinator, group]
    // A group answer naming the owner of the coordinator's log (the id may name the group: a
    // shared store's ids do) adds one more to ask, at most one.
    for (let i = 0; i < targets.length && i < 3; i++) {
      const r = await this.d.io.control.call(targets[i] as string, 'GET', path)
      const o = r.ok ? r.body.outcome : undefined
      if (o === 'committed' || o === 'aborted') return o
      const owner = r.ok && targets.length < 3 ? this.allowedOwner(r.body.owner, targets) : undefined
      if (owner !== undefined) targets.push(owner)
    }
    return 'in-doubt'
  }

  /** An owner named by a group answer, when the mesh allows it as a coordinator and it is new here. */
  private allowedOwner(owner: unknown, known: readonly (string | undefined)[]): string | undefined {
    if (!isAddress(owner) || known.includes(owner)) return undefined
    return coordinatorAllowed(this.d.coordinators, owner) ? owner : undefined
  }

  /** The group address of the branch's context, when the mesh allows asking it. */
  private groupOf(b: Branch): string | undefined {
    const g = b.context === undefined ? undefined : contextGroup(b.context)
    return g !== undefined && coordinatorAllowed(this.d.coordinators, g) ? g : undefined
  }

  /**
   * Rebuilds the branches found in the log at start, per key: one with a durable END is over
   * (its END marker was lazy and did not land: end it again, never re-ask); one with PREPARED
   * voted yes and asks its coordinator (or, one-phase, commits); one with only JOINED (or
   * PREPARING) never voted, so it aborts alone; one resolved by hand keeps answering with its
   * resolution. Operator resolutions are carried out again if the branch did not finish before
   * the restart.
   */
  recover(records: readonly LogRecord[]): number {
    type Found = {
      preparing?: BranchRecord
      prepared?: BranchRecord
      ended: boolean
      resolved?: Outcome
      endResolved?: Outcome
    }
    const byKey = new Map<string, Found>()
    for (const r of records) {
      if (r.kind !== 'participant') continue
      let f = byKey.get(r.key)
      if (f === undefined) byKey.set(r.key, (f = { ended: false }))
      const rec = r.record
      if (rec.type === 'preparing' || rec.type === 'joined') f.preparing = rec
      else if (rec.type === 'prepared') f.prepared = rec
      else if (rec.type === 'end') {
        f.ended = true
        if (rec.resolved === true) f.endResolved = rec.outcome
      } else if (rec.type === 'resolved') f.resolved = rec.outcome
    }
    let n = 0
    for (const [key, f] of byKey) {
      const rec = f.prepared ?? f.preparing
      if (f.ended && f.endResolved !== undefined && rec !== undefined) {
        // Resolved by hand, its coordinator not heard from since: keep answering with it.
        this.resolvedEnded.set(`${rec.tx}:${rec.branch}`, f.endResolved)
        continue
      }
      if (f.ended || rec === undefined) {
        this.d.io.log.end(key)
        continue
      }
      const { tx, branch, coordinator, deadline, context, onePhase } = rec
      const voted = f.prepared !== undefined
      const next = voted
        ? recoverParticipant(tx, branch, coordinator, deadline, this.env(), onePhase === true)
        : recoverUnvoted(tx, branch, coordinator, deadline, onePhase === true)
      const b = this.add(next.state, context)
      b.joinedDurable = true
      if (!voted) {
        // A request or the prepare call of the branch may still run in the app (its connection
        // through this sidecar died with the old process, the app's handler need not have):
        // hold the abort as a running request would hold it.
        this.enter(b)
        void sleep(this.d.io.timers, LIMITS.hookHoldMs).then(() => this.leave(b))
      }
      this.d.logger.info('tx_recovered', { tx, branch, role: 'participant', onePhase: onePhase === true, voted })
      this.perform(b, next.actions)
      if (f.resolved !== undefined) this.feed(b, { type: 'decision', outcome: f.resolved })
      n++
    }
    return n
  }

  feed(b: Branch, event: ParticipantEvent): void {
    if (this.closed || this.byTx.get(b.state.tx) !== b) return
    const next = participantTransition(b.state, event, this.env())
    const before = b.state.status
    b.state = next.state
    if (next.state.status !== before) this.branchEvent(b)
    this.perform(b, next.actions)
  }

  private branchEvent(b: Branch, ended?: Outcome): void {
    const s = b.state
    this.d.onEvent?.(ended === undefined ? 'branch-status' : 'branch-ended', {
      tx: s.tx,
      branch: s.branch,
      service: this.d.service,
      status: ended ?? s.status,
      coordinator: s.coordinator,
    })
  }

  // Longer than most: log-end stays in this loop because it takes over the actions that follow it
  // (the replies go out once END is durable), which only the loop holds.
  private perform(b: Branch, actions: readonly ParticipantAction[]): void {
    const { tx, branch } = b.state
    for (let i = 0; i < actions.length; i++) {
      const a = actions[i] as ParticipantAction
      switch (a.type) {
        case 'call-app':
          void this.callHook(b, a.hook).then((ev) => this.feed(b, ev))
          break
        case 'log-preparing':
          this.logPreparing(b, a)
          break
        case 'log-prepared':
          this.logPrepared(b, a)
          break
        case 'reply-vote':
          for (const w of b.voteWaiters.splice(0)) w(a.vote)
          break
        case 'reply-done':
          for (const w of b.doneWaiters.splice(0)) w(a.outcome)
          break
        case 'query-outcome':
          this.queryOutcome(b, a)
          break
        case 'schedule-retry':
          this.d.io.timers.clear(b.timer)
          b.timer = this.d.io.timers.set(() => this.feed(b, { type: 'retry-due' }), a.delayMs)
          break
        case 'log-end': {
          if (b.resolved !== undefined) {
            // Resolved by hand: END is durable and the records stay until the coordinator's
            // decision reaches the branch (resolvedEnded). A lost END only means finishing the
            // resolution again.
            const outcome = a.outcome
            const rest = actions.slice(i + 1)
            this.resolvedEnded.set(`${tx}:${branch}`, outcome)
            appendDurable(this.d.io, logKey(tx, branch), { type: 'end', outcome, resolved: true }).then(
              () => this.retire(b, outcome, rest),
              (err: unknown) => {
                this.d.logger.error('end_log_failed', { tx, branch, error: String(err) })
                if (err instanceof ShuttingDownError) return
                this.retire(b, outcome, rest)
              },
            )
            return
          }
          if (a.outcome === 'aborted' || (b.state.onePhase && b.state.vote?.kind === 'prepared')) {
            // Presumed abort: a lost END only means asking the coordinator again (or, with only
            // PREPARING, aborting again). A one-phase branch's lost END only means committing
            // again (idempotent) and asking whether the coordinator still waits.
            this.d.io.log.end(logKey(tx, branch))
            this.retire(b, a.outcome)
            break
          }
          // A committed branch's END must be durable before it acknowledges: once acked the
          // coordinator forgets the transaction, and a PREPARED found on restart would be told
          // "aborted" (presumed abort) for work that committed. A read-only one's too: with
          // only PREPARING left, a restart would abort a branch that answered read-only.
          const rest = actions.slice(i + 1)
          appendDurable(this.d.io, logKey(tx, branch), { type: 'end', outcome: a.outcome }).then(
            () => {
              this.d.io.log.end(logKey(tx, branch))
              this.retire(b, 'committed', rest)
              failpointSoon('participant-after-end', LIMITS.failpointAfterAnswerMs)
            },
            (err: unknown) => {
              this.d.logger.error('end_log_failed', { tx, branch, error: String(err) })
              // Closing (drain): the branch stays PREPARED in the log and is finished again
              // after restart (the app's hooks are idempotent).
              if (err instanceof ShuttingDownError) return
              this.d.io.fatal('end_log_failed', { tx, branch })
            },
          )
          return
        }
      }
    }
  }

  private logPreparing(b: Branch, a: Extract<ParticipantAction, { type: 'log-preparing' }>): void {
    const { tx, branch } = b.state
    // Normally JOINED already is the record PREPARING would be (written before the
    // branch's first request reached the app): nothing more to write.
    ;(b.joinedDurable
      ? Promise.resolve()
      : appendDurable(this.d.io, logKey(tx, branch), branchRecord('preparing', b))
    ).then(
      () => this.feed(b, { type: 'preparing-logged', ok: true }),
      (err: unknown) => {
        // Safe either way: a PREPARING alone (landed or not) only ever means abort.
        this.d.logger.error('preparing_log_failed', { tx, branch, error: String(err) })
        this.feed(b, { type: 'preparing-logged', ok: false })
      },
    )
  }

  private logPrepared(b: Branch, a: Extract<ParticipantAction, { type: 'log-prepared' }>): void {
    const { tx, branch } = b.state
    appendDurable(this.d.io, logKey(tx, branch), branchRecord('prepared', b)).then(
      () => {
        failpoint('participant-after-prepared')
        this.feed(b, { type: 'prepared-logged' })
      },
      (err: unknown) => {
        this.d.logger.error('prepared_log_failed', { tx, branch, error: String(err) })
        if (b.state.onePhase && err instanceof LogFailedError) {
          // The write may have reached the disk, and a restart would commit it: neither
          // outcome is safe to announce. Stop; recovery decides from what the log holds.
          return this.d.io.fatal('prepared_log_failed', { tx, branch })
        }
        this.feed(b, { type: 'app-voted', vote: { kind: 'refused', reason: 'cannot log PREPARED' } })
      },
    )
  }

  private queryOutcome(b: Branch, a: Extract<ParticipantAction, { type: 'query-outcome' }>): void {
    const { tx, branch } = b.state
    const group = this.groupOf(b)
    const asked = group === undefined ? 'coordinator' : b.askNext
    const to = asked === 'group' ? group : asked === 'owner' ? b.owner : undefined
    void this.d.io.control.call(to ?? b.state.coordinator, 'GET', `/v1/tx/${tx}/outcome`).then((r) => {
      const answer = r.ok ? r.body.outcome : undefined
      if (asked === 'group' && r.ok) {
        // The group names the instance holding the coordinator's log: asked next.
        b.owner = this.allowedOwner(r.body.owner, [b.state.coordinator, group]) ?? b.owner
      }
      // No outcome here: the next query asks the next one (coordinator, group, owner).
      if (group !== undefined && answer !== 'committed' && answer !== 'aborted')
        b.askNext =
          asked === 'coordinator' ? 'group' : asked === 'group' && b.owner !== undefined ? 'owner' : 'coordinator'
      // Only the coordinator's own address not knowing the id says its log is gone: ask on.
      const got = asked !== 'coordinator' && answer === 'unknown-coordinator' ? undefined : answer
      // An operator's resolution being recorded goes first (Branch.resolving): ask again later.
      const o = b.resolving ? undefined : got
      if (o === 'unknown-coordinator' && b.state.onePhase && b.state.status === 'committed') {
        // A one-phase branch that committed waits only so that a retried commit-one-phase
        // finds its answer; its coordinator's log is no longer at that address, so no
        // retry can come from it: the branch is done (the mesh simulation held it, asking,
        // forever: test/simulation/twopc.sim.test.ts, seed 270 then; docs/simulation-reverts.md).
        return this.feed(b, { type: 'decision', outcome: 'committed' })
      }
      if (o === 'unknown-coordinator') this.coordinatorGone(b)
      if ((o === 'committed' || o === 'aborted') && !b.state.onePhase) b.learnedByQuery = true
      this.feed(
        b,
        o === 'committed' || o === 'aborted' ? { type: 'decision', outcome: o } : { type: 'outcome-unknown' },
      )
    })
  }

  /**
   * Once, best effort: the coordinator may still be sending phase 2 to where this branch was
   * (an address since reused, whose sidecar refuses it as not its own); tell it the branch is done.
   */
  private tellFinished(b: Branch, outcome: Outcome): void {
    const { tx, branch, coordinator } = b.state
    void this.d.io.control.call(coordinator, 'POST', `/v1/tx/${tx}/finished`, { branch, outcome }).then((r) => {
      if (!r.ok) this.d.logger.info('finished_not_told', { tx, branch, coordinator, error: r.error })
    })
  }

  /**
   * The branch's coordinator address is held by a sidecar of another log incarnation: the branch
   * stays prepared (asking on, in case the old log comes back there) and is in doubt for
   * operators now. Logged and announced once per branch.
   */
  private coordinatorGone(b: Branch): void {
    if (b.coordinatorUnknown) return
    b.coordinatorUnknown = true
    const { tx, branch, coordinator } = b.state
    this.d.logger.warn('branch_coordinator_unknown', { tx, branch, coordinator })
    this.d.onEvent?.('branch-in-doubt', {
      tx,
      branch,
      service: this.d.service,
      coordinator,
      reason: 'unknown-coordinator',
    })
  }

  private retire(b: Branch, outcome: Outcome, after: readonly ParticipantAction[] = []): void {
    this.d.io.timers.clear(b.timer)
    this.d.io.timers.clear(b.deadlineTimer)
    // Actions that followed log-end (reply-done) run while the branch is still registered.
    for (const a of after) {
      if (a.type === 'reply-vote') for (const w of b.voteWaiters.splice(0)) w(a.vote)
      if (a.type === 'reply-done') for (const w of b.doneWaiters.splice(0)) w(a.outcome)
    }
    this.byTx.delete(b.state.tx)
    this.branchEvent(b, outcome)
    if (b.learnedByQuery) this.tellFinished(b, outcome)
    const key = `${b.state.tx}:${b.state.branch}`
    const tx = b.state.tx
    this.ended.set(key, outcome)
    this.endedTx.set(tx, outcome)
    // Answer anyone still waiting (e.g. a prepare that raced the deadline).
    for (const w of b.voteWaiters.splice(0)) w({ kind: 'refused', reason: `branch ${outcome}` })
    for (const w of b.doneWaiters.splice(0)) w(outcome)
  }

  /** The branch id names another log incarnation than this sidecar's: not a branch of ours. */
  private heldElsewhere(branch: BranchId): boolean {
    return this.foreign(holderOfBranch(branch))
  }

  private foreign(holder: string | undefined): boolean {
    return heldByAnotherLog(this.d.incarnation, holder)
  }

  private async decideUnknown(
    tx: TxId,
    branch: BranchId,
    outcome: Outcome,
    elsewhere: boolean,
  ): Promise<Outcome | 'unknown' | 'failed' | 'not-here'> {
    const hook = outcome === 'committed' ? 'commit' : 'abort'
    try {
      const s = await this.hookStatus(tx, branch, undefined, hook)
      // A branch of another log: delivered (a sibling on the same database may apply it), but
      // never answered for its holder, whatever this app said (it may answer 2xx to anything).
      if ((s >= 200 && s < 300) || s === 404) return elsewhere ? 'not-here' : 'unknown'
    } catch (err) {
      this.d.logger.warn('hook_failed', { tx, hook, error: (err as { code?: string }).code ?? String(err) })
    }
    return 'failed'
  }

  private async hookStatus(
    tx: TxId,
    branch: BranchId,
    context: string | undefined,
    hook: 'prepare' | 'commit' | 'abort',
  ): Promise<number> {
    if (this.hookBatcher !== undefined) {
      const r = await this.hookBatcher.send(APP_KEY, { hook, tx, branch, context })
      if (r instanceof Error) throw r
      return r
    }
    const headers = [TX_ID_HEADER, tx, BRANCH_ID_HEADER, branch]
    if (context !== undefined) headers.push(CONTEXT_HEADER, context)
    const res = await this.d.io.app.exchange(this.d.appOrigin, {
      path: this.d.hooks[hook],
      method: 'POST',
      headers,
      timeoutMs: LIMITS.hookCallTimeoutMs,
      limit: LIMITS.controlBodyBytes,
    })
    return res.status
  }

  /**
   * One request to the app's batch hook: `{items: [{hook, tx, branch, context}]}`, answered
   * `{results: [{status}]}` in order. Any other answer fails every item (a prepare then votes
   * no, a commit or abort is retried), as a failed single hook call would.
   */
  private async flushHooks(path: string, items: readonly HookItem[]): Promise<(number | Error)[]> {
    const failAll = (why: string): Error[] => {
      this.d.logger.warn('hook_batch_failed', { items: items.length, error: why })
      const err = new Error(why)
      return items.map(() => err)
    }
    try {
      const res = await this.d.io.app.exchange(this.d.appOrigin, {
        path,
        method: 'POST',
        headers: ['content-type', 'application/json'],
        body: JSON.stringify({
          items: items.map((i) => ({
            hook: i.hook,
            tx: i.tx,
            branch: i.branch,
            ...(i.context === undefined ? {} : { context: i.context }),
          })),
        }),
        timeoutMs: LIMITS.hookCallTimeoutMs,
        limit: LIMITS.controlBodyBytes,
      })
      const text = res.text
      if (res.status !== 200) return failAll(`the batch hook ${path} answered ${res.status}`)
      if (text === undefined) return failAll(`the batch hook's answer is over ${LIMITS.controlBodyBytes} bytes`)
      const answer = parseJsonObject(text)
      const results = answer instanceof TxmeshError ? undefined : answer.results
      if (!Array.isArray(results) || results.length !== items.length)
        return failAll(`the batch hook's answer does not list ${items.length} results`)
      return results.map((r: unknown) => {
        const status = (r as { status?: unknown } | null)?.status
        return typeof status === 'number' && Number.isInteger(status) && status >= 100 && status <= 599
          ? status
          : new Error('a batch result has no status')
      })
    } catch (err) {
      return failAll((err as { code?: string }).code ?? String(err))
    }
  }

  private async callHook(b: Branch, hook: 'prepare' | 'commit' | 'abort'): Promise<ParticipantEvent> {
    if (!(await this.whenIdle(b))) {
      this.d.logger.warn('hook_held_too_long', { tx: b.state.tx, hook, inflight: b.inflight, ms: LIMITS.hookHoldMs })
      if (hook === 'prepare')
        return {
          type: 'app-voted',
          vote: { kind: 'refused', reason: `a request of the branch still ran after ${LIMITS.hookHoldMs} ms` },
        }
      return { type: 'app-failed' }
    }
    try {
      const s = await this.hookStatus(b.state.tx, b.state.branch, b.context, hook)
      if (hook === 'prepare') {
        if (s === 200) {
          failpoint('participant-after-app-prepared')
          return { type: 'app-voted', vote: { kind: 'prepared' } }
        }
        if (s === 204) return { type: 'app-voted', vote: { kind: 'read-only' } }
        return { type: 'app-voted', vote: { kind: 'refused', reason: `app answered prepare with ${s}` } }
      }
      return (s >= 200 && s < 300) || s === 404 ? { type: 'app-done' } : { type: 'app-failed' }
    } catch (err) {
      this.d.logger.warn('hook_failed', { tx: b.state.tx, hook, error: (err as { code?: string }).code ?? String(err) })
      if (hook === 'prepare')
        return { type: 'app-voted', vote: { kind: 'refused', reason: 'app unreachable at prepare' } }
      return { type: 'app-failed' }
    }
  }

  close(): void {
    this.closed = true
    for (const b of this.byTx.values()) {
      this.d.io.timers.clear(b.timer)
      this.d.io.timers.clear(b.deadlineTimer)
    }
  }
}
