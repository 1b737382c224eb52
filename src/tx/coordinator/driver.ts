// Coordinator driver: performs the actions of the pure coordinator machine (control calls to
// participants, log writes, timers) and feeds their results back as events. One entry per
// transaction this sidecar coordinates.
import { failpoint } from '../../failpoints.js'
import { appendDurable } from '../durable.js'
import { coordinatorKey, type LogRecord } from '../records.js'
import { RecentMap } from '../recent.js'
import type { SidecarMetrics } from '../../telemetry/metrics.js'
import {
  InternalError,
  LogFailedError,
  ShuttingDownError,
  TxLimitError,
  TxNotActiveError,
  TxUnknownError,
  TxmeshError,
} from '../../errors.js'
import { LIMITS } from '../../limits.js'
import type { Logger } from '../../telemetry/logger.js'
import type { SidecarIo, Timer } from '../io.js'
import type { MeshKeys } from '../keys.js'
import type {
  CoordinatorAction,
  CoordinatorEvent,
  CoordinatorState,
  Env,
  Outcome,
  ParticipantRef,
  TxId,
  Vote,
} from '../core.js'
import { incarnationOfTx, isOfRun, newTxId, signContext, type TxMode } from '../protocol.js'
import {
  SpanKind,
  SpanStatusCode,
  childSpan,
  formatTraceparent,
  linkTo,
  type Context,
  type Span,
  type Tracing,
} from '../../telemetry/tracing.js'
import type { TxMessage } from '../../events/types.js'
import {
  addMessage,
  endAfterPublishing,
  startPublishing,
  waitAtMost,
  type MessageHolder,
  type Publish,
} from '../messages.js'
import { coordinatorOutcome, coordinatorTransition, newCoordinator, recoverCoordinator } from './machine.js'

export interface TxResult {
  readonly id: TxId
  readonly outcome: Outcome
  /** Set when a participant finished its branch the other way (see ParticipantView.heuristic). */
  readonly heuristic?: 'mixed'
  readonly reason: string | undefined
  readonly participants: readonly ParticipantView[]
}

export interface ParticipantView {
  readonly service: string
  readonly branch: string
  readonly control: string
  readonly vote: Vote['kind'] | undefined
  readonly acknowledged: boolean
  /** The branch finished with the other outcome (an operator's heuristic decision). */
  readonly heuristic?: Outcome
}

export interface TxView {
  readonly id: TxId
  readonly mode: TxMode
  /** 'heuristic-mixed': decided, but a participant finished its branch the other way. */
  readonly status: CoordinatorState['status'] | 'heuristic-mixed'
  readonly deadline: number
  readonly reason: string | undefined
  readonly participants: readonly ParticipantView[]
  /** Trace of the transaction's span, when tracing is on (dashboard links). */
  readonly traceId?: string
}

/** A transaction coordinated here; its messages ride in the decision record (../messages.ts). */
interface Entry extends MessageHolder {
  state: CoordinatorState
  readonly mode: TxMode
  /** Route that began it (implicit) or 'api' (admin API), for metrics. */
  readonly route: string
  /** performance.now() at commit/abort request and at the outcome, for phase durations. */
  requestedAt: number
  decidedAt: number
  outcome: Outcome | undefined
  outcomeWaiters: ((o: Outcome) => void)[]
  ackWaiters: (() => void)[]
  deadlineTimer: Timer | undefined
  readonly retryTimers: Map<string, Timer>
  finished: boolean
  /** `txmesh.transaction` span (tracing on): parent of the per-participant phase spans. */
  readonly span: Span | undefined
  spanEnded: boolean
  /** Why the commit failed when its decision record was refused before anything was written. */
  commitError?: TxmeshError
}

export interface CoordinatorDeps {
  /** Time, timers, the control transport and the log (./io.ts). */
  readonly io: SidecarIo
  /** This sidecar's control address as peers reach it (goes into contexts). */
  readonly self: string
  /** This sidecar's log incarnation (src/wal/incarnation.ts): ids carry it. */
  readonly incarnation: string
  /** store.group: where any live instance of this service answers outcomes (goes into contexts). */
  readonly group?: string | undefined
  /** This process's run tag (protocol.ts newRunTag): ids start with it. */
  readonly run: string
  /** Mesh keys: contexts are signed with the current signing key (rotation, src/tx/keys.ts). */
  readonly keys: MeshKeys
  readonly logger: Logger
  readonly metrics?: SidecarMetrics | undefined
  readonly tracing?: Tracing | undefined
  /** Transaction events for the dashboard feed (src/admin/events.ts). */
  readonly onEvent?: ((type: string, data: Readonly<Record<string, unknown>>) => void) | undefined
  /** Publishes a committed transaction's messages; resolves once the bus has them all. */
  readonly publish?: Publish | undefined
}

export class CoordinatorDriver {
  private readonly txs = new Map<TxId, Entry>()
  private readonly finished: RecentMap<TxId, Entry>
  private readonly clock: () => number
  private readonly random: () => number
  readonly outcomes = { committed: 0, aborted: 0 }
  /** Set by close() (drain): results arriving afterwards are dropped, no new timers start. */
  private closed = false

  constructor(private readonly d: CoordinatorDeps) {
    this.finished = new RecentMap(undefined, undefined, d.io.clock)
    this.clock = d.io.clock
    this.random = d.io.random
  }

  private env(): Env {
    return { now: this.clock(), random: this.random }
  }

  get activeCount(): number {
    return this.txs.size
  }

  /** `trace`: what the transaction's span continues (the request that began it), if traced. */
  begin(
    mode: TxMode,
    timeoutMs: number,
    route = 'api',
    trace?: Context | Span,
  ): { id: TxId; context: string; deadline: number } | TxmeshError {
    if (this.txs.size >= LIMITS.maxActiveTransactions)
      return new TxLimitError(`this sidecar already coordinates ${this.txs.size} transactions`)
    // On a shared store the id names the group: it is answered for after this instance is gone.
    const id = newTxId(this.d.group ?? this.d.self, this.d.incarnation, this.d.run, this.d.io.randomChars)
    const deadline = this.clock() + timeoutMs
    const entry: Entry = {
      state: newCoordinator(id, deadline),
      mode,
      route,
      requestedAt: 0,
      decidedAt: 0,
      outcome: undefined,
      outcomeWaiters: [],
      ackWaiters: [],
      deadlineTimer: undefined,
      retryTimers: new Map(),
      finished: false,
      messages: [],
      messageBytes: 0,
      publishing: undefined,
      span:
        this.d.tracing === undefined
          ? undefined
          : childSpan(this.d.tracing.tracer, 'txmesh.transaction', SpanKind.INTERNAL, trace, {
              'txmesh.tx.id': id,
              'txmesh.tx.mode': mode,
              'txmesh.route': route,
            }),
      spanEnded: false,
    }
    entry.deadlineTimer = this.d.io.timers.set(() => this.feed(id, { type: 'deadline' }), timeoutMs)
    this.txs.set(id, entry)
    const traceId = entry.span?.spanContext().traceId
    this.d.onEvent?.('tx-begin', { tx: id, mode, route, deadline, ...(traceId === undefined ? {} : { traceId }) })
    const context = signContext(this.d.keys.signing, {
      id,
      mode,
      coordinator: this.d.self,
      deadline,
      parent: undefined,
      ...(this.d.group === undefined ? {} : { group: this.d.group }),
    })
    return { id, context, deadline }
  }

  has(id: TxId): boolean {
    return this.txs.has(id)
  }

  enlist(id: TxId, refs: readonly ParticipantRef[]): TxmeshError | undefined {
    const e = this.txs.get(id)
    if (e === undefined) return new TxUnknownError(`transaction ${id} is not coordinated here`)
    if (e.state.status !== 'active')
      return new TxNotActiveError(`transaction ${id} is ${e.state.status}; it cannot enlist more participants`)
    if (e.span !== undefined)
      this.phaseSpan(e, 'txmesh.enlist', id, { 'txmesh.participant': refs.map((r) => r.service) }).end()
    this.feed(id, { type: 'enlist', participants: refs })
    this.d.onEvent?.('tx-enlist', { tx: id, participants: refs.map((r) => ({ service: r.service, branch: r.branch })) })
    return undefined
  }

  /**
   * A participant finished `branch` with `outcome` on its own, after an outcome query (control
   * op finished): taken as its phase-2 answer. False when the transaction is not in phase 2 here.
   */
  finishedBy(id: TxId, branch: string, outcome: Outcome): boolean {
    const e = this.txs.get(id)
    if (e === undefined || !e.state.participants.some((p) => p.ref.branch === branch)) return false
    this.feed(id, { type: 'ack', branch, outcome })
    return true
  }

  /** Attaches a message, published only if the transaction commits. */
  attach(id: TxId, m: TxMessage): TxmeshError | number {
    const n = addMessage(id, this.txs.get(id) ?? this.finished.get(id), m)
    if (n === 1) this.feed(id, { type: 'must-log' })
    return n
  }

  /**
   * Commits (or finds it aborted). Resolves once the outcome is durable; with `waitForAcks`
   * also waits (bounded) for phase 2 so the answer can say every participant acknowledged.
   */
  async commit(id: TxId, waitForAcks = false): Promise<TxResult | TxmeshError> {
    return this.finish(id, { type: 'commit-requested' }, waitForAcks)
  }

  async abort(id: TxId, reason: string, waitForAcks = false): Promise<TxResult | TxmeshError> {
    return this.finish(id, { type: 'abort-requested', reason }, waitForAcks)
  }

  private async finish(id: TxId, event: CoordinatorEvent, waitForAcks: boolean): Promise<TxResult | TxmeshError> {
    const e = this.txs.get(id) ?? this.finished.get(id)
    if (e === undefined) return new TxUnknownError(`transaction ${id} is not coordinated here`)
    if (e.outcome === undefined) {
      if (e.requestedAt === 0) e.requestedAt = performance.now()
      const outcome = new Promise<Outcome>((resolve) => e.outcomeWaiters.push(resolve))
      this.feed(id, event)
      await outcome
    }
    if (event.type === 'commit-requested' && e.commitError !== undefined) return e.commitError
    if (waitForAcks && !e.finished) {
      // The decision is durable; phase 2 runs on its own. Waiting is only for the answer.
      await waitAtMost(this.d.io.timers, (done) => e.ackWaiters.push(done), LIMITS.commitAckWaitMs)
    }
    return {
      id,
      outcome: e.outcome ?? 'aborted',
      reason: e.state.reason,
      participants: views(e.state),
      ...(mixed(e.state) ? { heuristic: 'mixed' as const } : {}),
    }
  }

  view(id: TxId): TxView | undefined {
    const e = this.txs.get(id) ?? this.finished.get(id)
    if (e === undefined) return undefined
    const traceId = e.span?.spanContext().traceId
    return {
      id,
      mode: e.mode,
      status: statusOf(e.state),
      deadline: e.state.deadline,
      reason: e.state.reason,
      participants: views(e.state),
      ...(traceId === undefined ? {} : { traceId }),
    }
  }

  list(): TxView[] {
    return [...this.txs.keys(), ...this.finished.keys()]
      .map((id) => this.view(id))
      .filter((v): v is TxView => v !== undefined)
  }

  /**
   * What a participant asking about `id` must do. Presumed abort: a transaction of this log's
   * incarnation that is neither active here nor has a durable COMMIT decision aborted. An id of
   * another incarnation (another log at this address: a new pod at a reused IP, a wiped log) is
   * none of this sidecar's to answer: 'unknown-coordinator', and the asker stays in doubt.
   * `holder` false: the asker does not hold the branch it asks for (control op lookup).
   */
  outcomeFor(id: TxId, holder = true): Outcome | 'in-doubt' | 'unknown-coordinator' {
    const e = this.txs.get(id) ?? this.finished.get(id)
    if (e === undefined && incarnationOfTx(id) !== this.d.incarnation) return 'unknown-coordinator'
    // Asked by a sidecar that found a prepared row it does not hold (a sibling's, or its own
    // lost log's), about an id an earlier run made: that transaction may have been a one-phase
    // commit, which logs nothing here and was decided (commit) by its participant. Presumed
    // abort would roll back committed work; only the branch's holder may hear it.
    if (e === undefined && !holder && !isOfRun(id, this.d.run)) return 'in-doubt'
    const o = coordinatorOutcome(e?.state)
    return o === 'unknown' ? 'in-doubt' : o
  }

  /**
   * outcomeFor's "aborted" for `id` is presumed (no entry here) for an id this process did not
   * make (another run of this log): sound only while this process still holds the log, which a
   * shared store must vouch for (a new process of the same instance may have claimed it and
   * decided COMMIT for that id).
   */
  presumesForOtherRun(id: TxId): boolean {
    if (this.txs.has(id) || this.finished.has(id)) return false
    return incarnationOfTx(id) === this.d.incarnation && !isOfRun(id, this.d.run)
  }

  /** Re-drives phase 2 of every COMMIT decision found in the log at start. */
  recover(records: readonly LogRecord[]): number {
    let n = 0
    for (const r of records) {
      if (r.kind !== 'coordinator') continue
      const id = r.tx
      const { participants, mode } = r.record
      const next = recoverCoordinator(id, participants, this.env())
      const messages = [...(r.record.messages ?? [])]
      const entry: Entry = {
        state: next.state,
        mode,
        route: 'recovered',
        requestedAt: 0,
        decidedAt: 0,
        outcome: 'committed',
        outcomeWaiters: [],
        ackWaiters: [],
        deadlineTimer: undefined,
        retryTimers: new Map(),
        finished: false,
        messages,
        messageBytes: 0,
        publishing: undefined,
        // A new trace (the original one ended with the process), linked to the original.
        span:
          this.d.tracing === undefined
            ? undefined
            : childSpan(
                this.d.tracing.tracer,
                'txmesh.transaction',
                SpanKind.INTERNAL,
                undefined,
                { 'txmesh.tx.id': id, 'txmesh.tx.mode': mode, 'txmesh.recovered': true, 'txmesh.outcome': 'committed' },
                linkTo(r.record.traceparent),
              ),
        spanEnded: false,
      }
      startPublishing(
        id,
        entry,
        this.d.publish,
        typeof r.record.traceparent === 'string' ? r.record.traceparent : undefined,
      )
      this.txs.set(id, entry)
      this.d.onEvent?.('tx-begin', {
        tx: id,
        mode,
        route: 'recovered',
        recovered: true,
        participants: participants.map((p) => ({ service: p.service, branch: p.branch })),
      })
      this.d.logger.info('tx_recovered', { tx: id, role: 'coordinator', participants: participants.length })
      this.perform(id, entry, next.actions)
      n++
    }
    return n
  }

  private feed(id: TxId, event: CoordinatorEvent): void {
    const e = this.txs.get(id)
    if (e === undefined || this.closed) return
    const next = coordinatorTransition(e.state, event, this.env())
    e.state = next.state
    this.perform(id, e, next.actions)
  }

  private perform(id: TxId, e: Entry, actions: readonly CoordinatorAction[]): void {
    for (const a of actions) {
      switch (a.type) {
        case 'send-prepare':
          this.sendPrepare(id, e, a)
          break
        case 'log-decision':
          this.logDecision(id, e, a)
          break
        case 'send-commit':
        case 'send-abort':
          this.sendDecision(id, e, a)
          break
        case 'send-commit-one-phase':
          this.sendOnePhase(id, e, a)
          break
        case 'schedule-retry':
          this.scheduleRetry(id, e, a)
          break
        case 'outcome':
          this.announce(id, e, a)
          break
        case 'heuristic':
          this.reportHeuristic(id, e, a)
          break
        case 'log-end':
          // Only a logged decision has records to end (presumed abort writes nothing).
          if (e.state.decisionLogged) {
            // Messages not yet on the bus keep the record (a restart publishes them again).
            endAfterPublishing(this.d.io.log, coordinatorKey(id), e)
          }
          this.retire(id, e)
          break
      }
    }
  }

  private sendPrepare(id: TxId, e: Entry, a: Extract<CoordinatorAction, { type: 'send-prepare' }>): void {
    const span =
      e.span === undefined ? undefined : this.phaseSpan(e, 'txmesh.prepare', id, { 'txmesh.participant': a.to.service })
    void this.d.io.control.send(a.to.control, { tx: id, op: 'prepare', branch: a.to.branch }).then((r) => {
      const vote = r.ok ? parseVote(r.body.vote) : ({ kind: 'refused', reason: `prepare failed: ${r.error}` } as const)
      if (span !== undefined) endPhaseSpan(span, r.ok, { 'txmesh.vote': vote.kind })
      // A refusal that follows our own early abort says nothing about the participant.
      const aborting = e.state.status === 'aborting' || e.state.status === 'aborted'
      if (!(aborting && vote.kind === 'refused')) this.d.metrics?.prepareResult(a.to.service, vote.kind !== 'refused')
      this.d.onEvent?.('tx-vote', {
        tx: id,
        service: a.to.service,
        branch: a.to.branch,
        vote: vote.kind,
        ...(vote.kind === 'refused' ? { reason: vote.reason } : {}),
      })
      this.feed(id, { type: 'vote', branch: a.to.branch, vote })
    })
  }

  private logDecision(id: TxId, e: Entry, a: Extract<CoordinatorAction, { type: 'log-decision' }>): void {
    appendDurable(this.d.io, coordinatorKey(id), {
      type: 'decision',
      mode: e.mode,
      participants: a.participants.map((p) => ({ ...p })),
      ...(e.messages.length === 0 ? {} : { messages: e.messages }),
      // Lets recovery after a restart link its span to this transaction's trace.
      ...(e.span === undefined ? {} : { traceparent: formatTraceparent(e.span.spanContext()) }),
    }).then(
      () => {
        failpoint('coordinator-after-decision')
        this.feed(id, { type: 'decision-logged' })
      },
      (err: unknown) => {
        this.d.logger.error('decision_log_failed', { tx: id, error: String(err) })
        // The log is closing (drain): the process is about to exit; recovery decides.
        if (err instanceof ShuttingDownError) return
        // Refused before anything was written (too large, not encodable, the queue full):
        // this commit fails alone.
        if (!(err instanceof LogFailedError)) return this.decisionRefused(id, e, err)
        // The write may or may not have reached the disk: neither commit nor abort is
        // safe to announce. Stop, as databases do on a failed fsync; recovery decides
        // from what the log holds.
        this.d.io.fatal('decision_log_failed', { tx: id })
      },
    )
  }

  private sendDecision(
    id: TxId,
    e: Entry,
    a: Extract<CoordinatorAction, { type: 'send-commit' } | { type: 'send-abort' }>,
  ): void {
    const op = a.type === 'send-commit' ? 'commit' : 'abort'
    const span =
      e.span === undefined ? undefined : this.phaseSpan(e, `txmesh.${op}`, id, { 'txmesh.participant': a.to.service })
    void this.d.io.control.send(a.to.control, { tx: id, op, branch: a.to.branch }).then((r) => {
      if (span !== undefined)
        endPhaseSpan(span, r.ok, r.ok ? { 'txmesh.acknowledged': true } : { 'error.type': 'send_failed' })
      if (r.ok) this.d.onEvent?.('tx-ack', { tx: id, service: a.to.service, branch: a.to.branch, op })
      // The answer names the branch's outcome ('unknown': finished long ago, or never here).
      const o = r.ok ? r.body.outcome : undefined
      const said: { outcome?: Outcome } = o === 'committed' || o === 'aborted' ? { outcome: o } : {}
      this.feed(id, r.ok ? { type: 'ack', branch: a.to.branch, ...said } : { type: 'send-failed', branch: a.to.branch })
    })
  }

  private sendOnePhase(id: TxId, e: Entry, a: Extract<CoordinatorAction, { type: 'send-commit-one-phase' }>): void {
    // Any answer but an outcome (unreachable, 5xx, timeout) leaves the outcome unknown:
    // the machine retries until the participant answers.
    const span =
      e.span === undefined
        ? undefined
        : this.phaseSpan(e, 'txmesh.commit', id, {
            'txmesh.participant': a.to.service,
            'txmesh.one_phase': true,
          })
    void this.d.io.control.send(a.to.control, { tx: id, op: 'commit-one-phase', branch: a.to.branch }).then((r) => {
      const o = r.ok ? r.body.outcome : undefined
      if (span !== undefined)
        endPhaseSpan(
          span,
          o === 'committed' || o === 'aborted',
          typeof o === 'string' ? { 'txmesh.outcome': o } : { 'error.type': 'send_failed' },
        )
      if (o === 'committed' || o === 'aborted')
        this.d.onEvent?.('tx-ack', {
          tx: id,
          service: a.to.service,
          branch: a.to.branch,
          op: 'commit-one-phase',
          outcome: o,
        })
      this.feed(
        id,
        o === 'committed' || o === 'aborted'
          ? { type: 'one-phase-result', branch: a.to.branch, outcome: o }
          : { type: 'send-failed', branch: a.to.branch },
      )
    })
  }

  private scheduleRetry(id: TxId, e: Entry, a: Extract<CoordinatorAction, { type: 'schedule-retry' }>): void {
    this.d.io.timers.clear(e.retryTimers.get(a.branch))
    const t = this.d.io.timers.set(() => {
      e.retryTimers.delete(a.branch)
      this.feed(id, { type: 'retry-due', branch: a.branch })
    }, a.delayMs)
    e.retryTimers.set(a.branch, t)
  }

  private announce(id: TxId, e: Entry, a: Extract<CoordinatorAction, { type: 'outcome' }>): void {
    e.outcome = a.outcome
    this.outcomes[a.outcome]++
    e.decidedAt = performance.now()
    if (this.d.metrics !== undefined) {
      this.d.metrics.transactions.inc({ mode: e.mode, outcome: a.outcome })
      if (e.requestedAt > 0) this.d.metrics.phase.observe({ phase: 'prepare' }, (e.decidedAt - e.requestedAt) / 1000)
      this.d.metrics.routeParticipants(
        e.route,
        e.state.participants.map((p) => p.ref.service),
      )
    }
    this.d.io.timers.clear(e.deadlineTimer)
    if (e.span !== undefined) {
      e.span.setAttribute('txmesh.outcome', a.outcome)
      if (a.reason !== undefined) e.span.setAttribute('txmesh.reason', a.reason)
      // Ended in retire(), after phase 2, so the commit/abort spans sit inside it.
    }
    for (const w of e.outcomeWaiters.splice(0)) w(a.outcome)
    if (a.outcome === 'committed')
      startPublishing(id, e, this.d.publish, e.span === undefined ? undefined : formatTraceparent(e.span.spanContext()))
    this.d.onEvent?.('tx-outcome', {
      tx: id,
      outcome: a.outcome,
      reason: a.reason,
      ...(e.requestedAt > 0 ? { prepareMs: e.decidedAt - e.requestedAt } : {}),
    })
    this.d.logger.info('tx_outcome', { tx: id, outcome: a.outcome, reason: a.reason })
  }

  private reportHeuristic(id: TxId, e: Entry, a: Extract<CoordinatorAction, { type: 'heuristic' }>): void {
    // An operator finished the branch the other way before the decision reached it.
    const decided = e.outcome ?? 'aborted'
    this.d.metrics?.heuristic.inc({ decision: decided, branch: a.outcome })
    this.d.logger.error('tx_heuristic', {
      tx: id,
      decision: decided,
      service: a.to.service,
      branch: a.to.branch,
      branchOutcome: a.outcome,
    })
    this.d.onEvent?.('tx-heuristic', {
      tx: id,
      decision: decided,
      service: a.to.service,
      branch: a.to.branch,
      outcome: a.outcome,
    })
    if (e.span !== undefined) e.span.setAttribute('txmesh.heuristic', 'mixed')
  }

  /**
   * The decision record was refused before any of it reached the log: nothing can have decided
   * commit, so the transaction is as undecided as before it was asked to (every vote in) and
   * aborts from there (presumed abort: the participants hear abort). The commit's caller gets
   * the coded error.
   */
  private decisionRefused(id: TxId, e: Entry, err: unknown): void {
    e.commitError =
      err instanceof TxmeshError ? err : new InternalError(`the decision record could not be written: ${String(err)}`)
    this.feed(id, {
      type: 'decision-refused',
      reason: `the decision record could not be logged: ${e.commitError.message}`,
    })
  }

  private retire(id: TxId, e: Entry): void {
    e.finished = true
    if (e.decidedAt > 0)
      this.d.metrics?.phase.observe(
        { phase: e.outcome === 'committed' ? 'commit' : 'abort' },
        (performance.now() - e.decidedAt) / 1000,
      )
    this.d.io.timers.clear(e.deadlineTimer)
    for (const t of e.retryTimers.values()) this.d.io.timers.clear(t)
    e.retryTimers.clear()
    for (const w of e.ackWaiters.splice(0)) w()
    this.endTxSpan(e)
    this.txs.delete(id)
    // Keep finished transactions visible for a while, bounded in count and age.
    this.finished.set(id, e)
    this.d.onEvent?.('tx-finished', {
      tx: id,
      outcome: e.outcome,
      status: statusOf(e.state),
      ...(e.decidedAt > 0 ? { phase2Ms: performance.now() - e.decidedAt } : {}),
    })
  }

  /** A per-participant span under the transaction's (only called when tracing is on). */
  private phaseSpan(e: Entry, name: string, id: TxId, attributes: Record<string, string | boolean | string[]>): Span {
    return childSpan((this.d.tracing as Tracing).tracer, name, SpanKind.INTERNAL, e.span, {
      'txmesh.tx.id': id,
      ...attributes,
    })
  }

  /** Ends the transaction's span once, when phase 2 is done (or at drain, marked interrupted). */
  private endTxSpan(e: Entry): void {
    if (e.span === undefined || e.spanEnded) return
    e.spanEnded = true
    e.span.end()
  }

  close(): void {
    this.closed = true
    for (const e of this.txs.values()) {
      if (e.span !== undefined && !e.spanEnded) {
        // Drain cut it short: export what is known, recovery continues it after the restart.
        e.span.setAttribute('txmesh.interrupted', true)
        this.endTxSpan(e)
      }
      this.d.io.timers.clear(e.deadlineTimer)
      for (const t of e.retryTimers.values()) this.d.io.timers.clear(t)
    }
  }
}

function endPhaseSpan(span: Span, ok: boolean, attributes: Record<string, string | boolean>): void {
  span.setAttributes(attributes)
  if (!ok) span.setStatus({ code: SpanStatusCode.ERROR })
  span.end()
}

function parseVote(v: unknown): Vote {
  if (v === 'prepared') return { kind: 'prepared' }
  if (v === 'read-only') return { kind: 'read-only' }
  return { kind: 'refused', reason: typeof v === 'string' ? v : 'no vote' }
}

/** Decided, but at least one participant finished its branch the other way. */
function mixed(s: CoordinatorState): boolean {
  return s.participants.some((p) => p.heuristic !== undefined)
}

/** The status operators see: the machine's, or heuristic-mixed once a branch disagreed. */
function statusOf(s: CoordinatorState): TxView['status'] {
  return mixed(s) ? 'heuristic-mixed' : s.status
}

function views(s: CoordinatorState): ParticipantView[] {
  return s.participants.map((p) => ({
    service: p.ref.service,
    branch: p.ref.branch,
    control: p.ref.control,
    vote: p.vote?.kind,
    // A heuristic answer finished the branch but is no acknowledgement of the decision.
    acknowledged: p.acked && p.heuristic === undefined,
    ...(p.heuristic === undefined ? {} : { heuristic: p.heuristic }),
  }))
}
