// Driver of step transactions (sagas and TCC): performs the actions of the pure machine in
// ./machine.ts (log writes, compensation requests, confirm/cancel control calls, timers) and
// feeds the results back. One entry per transaction this sidecar coordinates.
//
// Log records, all under `s:<tx>`: {type:'step'} (force-written before the step's call is sent,
// as an intent, and again, resolved, before its response reaches the app; a call whose undo
// cannot be known before its answer only the second time), {type:'decision', outcome} (COMMIT
// force-written, abort lazy), {type:'step-done'} (lazy). END once every step is finished.
import {
  InternalError,
  LogFailedError,
  ShuttingDownError,
  StepTargetRefusedError,
  TxLimitError,
  TxNotActiveError,
  TxUnknownError,
  TxmeshError,
} from '../../errors.js'
import { LIMITS } from '../../limits.js'
import type { Logger } from '../../telemetry/logger.js'
import type { SidecarMetrics } from '../../telemetry/metrics.js'
import type { SidecarIo, Timer } from '../io.js'
import type { MeshKeys } from '../keys.js'
import type { BranchId, Env, Outcome, TxId } from '../core.js'
import { appendDurable } from '../durable.js'
import { body, stepsKey, type LogRecord, type StepDecisionRecord, type StepDoneRecord } from '../records.js'
import {
  BRANCH_ID_HEADER,
  CONTEXT_HEADER,
  OP_HEADER,
  TX_ID_HEADER,
  coordinatorAllowed,
  newTxId,
  signContext,
} from '../protocol.js'
import { ERROR_HEADER } from '../../errors.js'
import { RecentMap } from '../recent.js'
import type { TxMessage } from '../../events/types.js'
import {
  addMessage,
  endAfterPublishing,
  startPublishing,
  waitAtMost,
  type MessageHolder,
  type Publish,
} from '../messages.js'
import {
  intentUnsent,
  newSagaTx,
  recoverSagaTx,
  sagaOutcome,
  sagaTransition,
  type StepAction,
  type StepEvent,
  type StepMode,
  type StepOp,
  type StepOpName,
  type StepPolicy,
  type StepRecord,
  type StepTxState,
} from './machine.js'

export interface StepView {
  readonly id: BranchId
  readonly service: string
  readonly target: string
  readonly status: string
  readonly attempts: number
  readonly lastError: string | undefined
  readonly compensate?: StepOp
  readonly confirm?: StepOp
  readonly cancel?: StepOp
  /** Recorded before its call was sent and never resolved by an answer: undone whatever the outcome. */
  readonly intent?: boolean
}

export interface StepTxView {
  readonly id: TxId
  readonly mode: StepMode
  readonly status: StepTxState['status']
  readonly deadline: number
  readonly reason: string | undefined
  /** Steps whose op failed past its budget (operators: POST /v1/transactions/{id}/retry). */
  readonly stuck: number
  readonly steps: readonly StepView[]
}

export interface StepTxResult {
  readonly id: TxId
  readonly outcome: Outcome
  readonly reason: string | undefined
  readonly steps: readonly StepView[]
}

export interface SagaDeps {
  /**
   * Time, timers, the control transport, HTTP to step targets (compensations; over peer TLS to
   * https:// targets in production) and the log (./io.ts).
   */
  readonly io: SidecarIo
  readonly self: string
  /** This sidecar's log incarnation (src/wal/incarnation.ts): ids carry it. */
  readonly incarnation: string
  /** This process's run tag (protocol.ts newRunTag): ids start with it. */
  readonly run: string
  /** Mesh keys: contexts are signed with the current signing key (rotation, src/tx/keys.ts). */
  readonly keys: MeshKeys
  readonly logger: Logger
  readonly policy: StepPolicy
  readonly metrics?: SidecarMetrics | undefined
  readonly onEvent?: ((type: string, data: Readonly<Record<string, unknown>>) => void) | undefined
  /** Publishes a committed transaction's messages; resolves once the bus has them all. */
  readonly publish?: Publish | undefined
  /** Where a peer's step record may send its operations (addPeerStep). */
  readonly targets: StepTargets
}

/**
 * The targets this coordinator sends the steps of peers to. A step's own egress knows where it
 * forwarded the call (its record is taken as it is); a peer's record could name any address,
 * and the coordinator would send a signed request there from its own network position.
 */
export interface StepTargets {
  /** Origins of the `services` addresses, as the egress forwards to them (lower-case). */
  readonly origins: ReadonlySet<string>
  /** mesh.coordinators: the control addresses of the mesh's sidecars. */
  readonly controls: readonly string[]
}

// A control address as participants report theirs (host:port, bracketed IPv6).
const CONTROL_ADDRESS = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]{1,253}):\d{1,5}$/

interface Entry extends MessageHolder {
  state: StepTxState
  readonly route: string
  outcome: Outcome | undefined
  outcomeWaiters: ((o: Outcome) => void)[]
  doneWaiters: (() => void)[]
  deadlineTimer: Timer | undefined
  readonly retryTimers: Map<BranchId, Timer>
  finished: boolean
  /** Step records being written: the transaction may not end until they are fed. */
  recording: number
  /** The machine ended the transaction while step records were being written (see addStep). */
  endHeld: boolean
  /** Why the commit failed when its decision record was refused before anything was written. */
  commitError?: TxmeshError
}

const logKey = stepsKey

export class SagaDriver {
  private readonly txs = new Map<TxId, Entry>()
  private readonly finished: RecentMap<TxId, Entry>
  private readonly clock: () => number
  private readonly random: () => number
  private closed = false
  readonly outcomes = { committed: 0, aborted: 0 }

  constructor(private readonly d: SagaDeps) {
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

  /** Steps stuck past their budget, over every transaction held here (metric, dashboard). */
  get stuckCount(): number {
    let n = 0
    for (const e of this.txs.values()) for (const s of e.state.steps) if (s.status === 'stuck') n++
    return n
  }

  has(id: TxId): boolean {
    return this.txs.has(id) || this.finished.get(id) !== undefined
  }

  begin(
    mode: StepMode,
    timeoutMs: number,
    route = 'api',
  ): { id: TxId; context: string; deadline: number } | TxmeshError {
    if (this.txs.size >= LIMITS.maxActiveTransactions)
      return new TxLimitError(`this sidecar already coordinates ${this.txs.size} step transactions`)
    const id = newTxId(this.d.self, this.d.incarnation, this.d.run, this.d.io.randomChars)
    const deadline = this.clock() + timeoutMs
    const entry = this.newEntry(newSagaTx(id, mode, deadline, this.d.policy), route)
    entry.deadlineTimer = this.d.io.timers.set(() => this.feed(id, { type: 'deadline' }), timeoutMs)
    this.txs.set(id, entry)
    this.d.onEvent?.('tx-begin', { tx: id, mode, route, deadline })
    const context = signContext(this.d.keys.signing, {
      id,
      mode,
      coordinator: this.d.self,
      deadline,
      parent: undefined,
    })
    return { id, context, deadline }
  }

  private newEntry(state: StepTxState, route: string): Entry {
    return {
      state,
      route,
      outcome: undefined,
      outcomeWaiters: [],
      doneWaiters: [],
      deadlineTimer: undefined,
      retryTimers: new Map(),
      finished: false,
      recording: 0,
      endHeld: false,
      messages: [],
      messageBytes: 0,
      publishing: undefined,
    }
  }

  /**
   * Records a step durably, then hands it to the machine. Resolves once the record is on disk:
   * only then may the call be sent (an intent) or its response reach the app (a crash after
   * that still undoes it).
   * - An intent (recorded before its call is sent) is refused unless the transaction is active,
   *   before and after its write: a refused intent's call is not sent, so nothing needs undoing.
   * - The resolution of an intent (same id, once the call answered) replaces it while nothing
   *   was sent for it; otherwise there is nothing to write. It never takes a finished
   *   transaction back and does not count as a new step.
   * - Any other step is new; one recorded after commit or abort was asked is `late`.
   */
  async addStep(id: TxId, step: StepRecord): Promise<TxmeshError | undefined> {
    let e = this.txs.get(id)
    const known = (e ?? this.finished.get(id))?.state.steps.find((x) => x.step.id === step.id)
    if (step.intent === true) {
      if (e === undefined || e.state.status !== 'active')
        return new TxNotActiveError(`transaction ${id} is ${e?.state.status ?? 'over'}; the call is not sent`)
      if (known !== undefined) return undefined
    } else if (known !== undefined) {
      const status = (e ?? this.finished.get(id))?.state.status
      // Its undo is under way or done (the target's barrier orders it against the call), or a
      // duplicate: nothing to write.
      if (e === undefined || !intentUnsent(known))
        return status === 'active'
          ? undefined
          : new TxNotActiveError(`transaction ${id} is ${status ?? 'over'}; the step is undone`)
    } else if (e === undefined) {
      // Finished already: a step that answered late still has to be undone.
      e = this.finished.get(id)
      if (e === undefined) return new TxUnknownError(`transaction ${id} is not coordinated here`)
      e.finished = false
      this.txs.set(id, e)
      // Its END is queued or written, and a replay drops every record before it, the COMMIT
      // decision too: written again ahead of the step (the step's fsync covers it), or a restart
      // would recover the step alone and call the committed transaction aborted.
      if (e.outcome === 'committed') this.lazy(id, { type: 'decision', outcome: 'committed' })
    }
    if (known === undefined && e.state.steps.length >= LIMITS.maxSteps)
      return new TxLimitError(`transaction ${id} already has ${LIMITS.maxSteps} steps`)
    const late = e.state.status !== 'active'
    const recorded: StepRecord = late ? { ...step, late: true } : step
    // While the record is written the transaction may finish (an abort with nothing else to
    // undo): its end waits for this step, or the step would be dropped (feed finds nothing)
    // and ended at replay by the END queued behind it, never undone (found by
    // test/simulation/steps.sim.test.ts).
    e.recording++
    try {
      await appendDurable(this.d.io, logKey(id), { type: 'step', mode: e.state.mode, step: { ...recorded } })
    } catch (err) {
      e.recording--
      this.releaseEnd(id, e)
      throw err
    }
    e.recording--
    this.feed(id, { type: 'step', step: recorded })
    // A duplicate changes nothing and the machine says nothing more: end it now.
    this.releaseEnd(id, e)
    if (known === undefined) {
      this.d.onEvent?.('tx-step', {
        tx: id,
        service: step.service,
        branch: step.id,
        ...(step.intent === true ? { intent: true } : {}),
        ...(step.unresolved === undefined ? {} : { unresolved: step.unresolved }),
      })
    }
    // An intent whose transaction ended while it was written: its call is not sent (the
    // machine undoes the intent; the target's barrier makes that a no-op).
    if (step.intent === true && e.state.status !== 'active')
      return new TxNotActiveError(`transaction ${id} is ${e.state.status}; the call is not sent`)
    // A step that answered after the end still joins the undo queue, but the caller hears the
    // transaction is over.
    if (late) return new TxNotActiveError(`transaction ${id} is ${e.state.status}; the step will be undone`)
    return undefined
  }

  /**
   * A step a peer's egress recorded (control POST /steps): as addStep, once its target is one
   * this coordinator may send to: for an HTTP operation (saga compensation, TCC cancel through
   * the target's ingress) the origin of one of its `services` addresses; for a TCC confirm or
   * cancel through the participant's sidecar, a control address `mesh.coordinators` allows. A
   * step that can send nothing (unresolved, no target) needs neither.
   */
  async addPeerStep(id: TxId, step: StepRecord): Promise<TxmeshError | undefined> {
    const mode = (this.txs.get(id) ?? this.finished.get(id))?.state.mode
    let refused: TxmeshError | undefined
    if (mode !== undefined && !(step.target === '' && step.unresolved !== undefined)) {
      const target = JSON.stringify(step.target.slice(0, 80))
      if (mode === 'tcc' && step.viaIngress !== true) {
        if (!CONTROL_ADDRESS.test(step.target) || !coordinatorAllowed(this.d.targets.controls, step.target)) {
          refused = new StepTargetRefusedError(
            `step ${step.id} names the control address ${target}, which mesh.coordinators does not allow`,
          )
        }
      } else if (!this.d.targets.origins.has(step.target.toLowerCase())) {
        refused = new StepTargetRefusedError(
          `step ${step.id} names the origin ${target}, which is none of this sidecar's services addresses; its operations are not sent there`,
        )
      }
    }
    if (refused === undefined) return this.addStep(id, step)
    // A peer whose services map names an address this one does not: operators must hear of it.
    this.d.logger.warn('step_target_refused', {
      tx: id,
      step: step.id,
      service: step.service,
      target: step.target.slice(0, LIMITS.stepTargetChars),
      intent: step.intent === true,
    })
    return refused
  }

  /**
   * The call of an intent was refused outright (saga: 4xx): it did nothing, so its undo must
   * not be sent. A lazy step-done record (lost, the undo runs after a restart: the barrier
   * makes it a no-op). An undo already under way is left alone.
   */
  voidStep(id: TxId, step: BranchId): TxmeshError | undefined {
    if (this.txs.has(id)) this.feed(id, { type: 'step-void', step })
    else if (this.finished.get(id) === undefined) return new TxUnknownError(`transaction ${id} is not coordinated here`)
    return undefined
  }

  /** Attaches a message, published only if the transaction commits. */
  attach(id: TxId, m: TxMessage): TxmeshError | number {
    const n = addMessage(id, this.txs.get(id) ?? this.finished.get(id), m)
    return n
  }

  async commit(id: TxId, waitForSteps = false): Promise<StepTxResult | TxmeshError> {
    return this.finish(id, { type: 'commit-requested' }, waitForSteps)
  }

  async abort(id: TxId, reason: string, waitForSteps = false): Promise<StepTxResult | TxmeshError> {
    return this.finish(id, { type: 'abort-requested', reason }, waitForSteps)
  }

  private async finish(id: TxId, event: StepEvent, waitForSteps: boolean): Promise<StepTxResult | TxmeshError> {
    const e = this.txs.get(id) ?? this.finished.get(id)
    if (e === undefined) return new TxUnknownError(`transaction ${id} is not coordinated here`)
    if (e.outcome === undefined) {
      const outcome = new Promise<Outcome>((resolve) => e.outcomeWaiters.push(resolve))
      this.feed(id, event)
      await outcome
    }
    if (event.type === 'commit-requested' && e.commitError !== undefined) return e.commitError
    if (waitForSteps && !e.finished) {
      await waitAtMost(this.d.io.timers, (done) => e.doneWaiters.push(done), LIMITS.commitAckWaitMs)
    }
    return { id, outcome: e.outcome ?? 'aborted', reason: e.state.reason, steps: stepViews(e.state) }
  }

  /** Operator: try the stuck steps of a transaction again. */
  retryStuck(id: TxId): TxmeshError | number {
    const e = this.txs.get(id)
    if (e === undefined) return new TxUnknownError(`transaction ${id} has no unfinished steps here`)
    const n = e.state.steps.filter((s) => s.status === 'stuck').length
    this.feed(id, { type: 'retry-stuck' })
    return n
  }

  outcomeFor(id: TxId): Outcome | 'in-doubt' {
    const e = this.txs.get(id) ?? this.finished.get(id)
    const o = e === undefined ? 'aborted' : sagaOutcome(e.state)
    return o === 'unknown' ? 'in-doubt' : o
  }

  view(id: TxId): StepTxView | undefined {
    const e = this.txs.get(id) ?? this.finished.get(id)
    if (e === undefined) return undefined
    const s = e.state
    return {
      id,
      mode: s.mode,
      status: s.status,
      deadline: s.deadline,
      reason: s.reason,
      stuck: s.steps.filter((x) => x.status === 'stuck').length,
      steps: stepViews(s),
    }
  }

  list(): StepTxView[] {
    return [...this.txs.keys(), ...this.finished.keys()]
      .map((id) => this.view(id))
      .filter((v): v is StepTxView => v !== undefined)
  }

  /** Restarts every transaction whose steps are in the log and not ended. */
  recover(records: readonly LogRecord[]): number {
    const byTx = new Map<
      TxId,
      { mode: StepMode; steps: StepRecord[]; done: Set<BranchId>; committed: boolean; messages: TxMessage[] }
    >()
    for (const r of records) {
      if (r.kind !== 'steps') continue
      const id = r.tx
      const rec = r.record
      let t = byTx.get(id)
      if (t === undefined) {
        t = {
          mode: rec.type === 'step' ? rec.mode : 'saga',
          steps: [],
          done: new Set(),
          committed: false,
          messages: [],
        }
        byTx.set(id, t)
      }
      if (rec.type === 'step') {
        t.mode = rec.mode
        t.steps.push(rec.step)
      } else if (rec.type === 'decision') {
        if (rec.outcome === 'committed') {
          t.committed = true
          t.messages = [...(rec.messages ?? [])]
        }
      } else t.done.add(rec.step)
    }
    for (const [id, t] of byTx) {
      const next = recoverSagaTx(id, t.mode, t.steps, t.done, t.committed, this.d.policy, this.env())
      const entry = this.newEntry(next.state, 'recovered')
      entry.outcome = t.committed ? 'committed' : 'aborted'
      entry.messages.push(...t.messages)
      if (t.committed) startPublishing(id, entry, this.d.publish)
      this.txs.set(id, entry)
      this.d.onEvent?.('tx-begin', { tx: id, mode: t.mode, route: 'recovered', recovered: true })
      this.d.logger.info('tx_recovered', {
        tx: id,
        role: 'coordinator',
        mode: t.mode,
        steps: t.steps.length,
        committed: t.committed,
      })
      this.perform(id, entry, next.actions)
    }
    return byTx.size
  }

  private feed(id: TxId, event: StepEvent): void {
    const e = this.txs.get(id)
    if (e === undefined || this.closed) return
    const next = sagaTransition(e.state, event, this.env())
    e.state = next.state
    this.perform(id, e, next.actions)
  }

  private perform(id: TxId, e: Entry, actions: readonly StepAction[]): void {
    for (const a of actions) {
      switch (a.type) {
        case 'log-decision':
          this.logDecision(id, e, a)
          break
        case 'run':
          void this.runOp(id, e, a.step, a.op)
          break
        case 'log-step-done':
          this.lazy(id, { type: 'step-done', step: a.step })
          break
        case 'schedule-retry': {
          this.d.io.timers.clear(e.retryTimers.get(a.step))
          const t = this.d.io.timers.set(() => {
            e.retryTimers.delete(a.step)
            this.feed(id, { type: 'retry-due', step: a.step })
          }, a.delayMs)
          e.retryTimers.set(a.step, t)
          break
        }
        case 'stuck':
          this.d.metrics?.stepOp(a.op, 'stuck')
          this.d.logger.warn('step_stuck', {
            tx: id,
            step: a.step.id,
            service: a.step.service,
            op: a.op,
            error: a.error,
          })
          this.d.onEvent?.('tx-stuck', { tx: id, service: a.step.service, branch: a.step.id, op: a.op, error: a.error })
          break
        case 'outcome':
          e.outcome = a.outcome
          this.outcomes[a.outcome]++
          this.d.io.timers.clear(e.deadlineTimer)
          this.d.metrics?.transactions.inc({ mode: e.state.mode, outcome: a.outcome })
          for (const w of e.outcomeWaiters.splice(0)) w(a.outcome)
          this.d.onEvent?.('tx-outcome', { tx: id, outcome: a.outcome, reason: a.reason })
          this.d.logger.info('tx_outcome', { tx: id, mode: e.state.mode, outcome: a.outcome, reason: a.reason })
          if (a.outcome === 'committed') startPublishing(id, e, this.d.publish)
          break
        case 'log-end':
          if (e.recording > 0) {
            // A step record is being written: the machine hears of it, and ends again, first.
            e.endHeld = true
            break
          }
          this.end(id, e)
          break
      }
    }
  }

  private logDecision(id: TxId, e: Entry, a: Extract<StepAction, { type: 'log-decision' }>): void {
    if (a.outcome === 'aborted') {
      this.lazy(id, { type: 'decision', outcome: 'aborted' })
      return
    }
    appendDurable(this.d.io, logKey(id), {
      type: 'decision',
      outcome: 'committed',
      ...(e.messages.length === 0 ? {} : { messages: e.messages }),
    }).then(
      () => this.feed(id, { type: 'decision-logged' }),
      (err: unknown) => {
        this.d.logger.error('decision_log_failed', { tx: id, error: String(err) })
        if (err instanceof ShuttingDownError) return
        // Refused before anything was written (too large, not encodable, the queue full):
        // this commit fails alone, the transaction aborts.
        if (!(err instanceof LogFailedError)) {
          e.commitError =
            err instanceof TxmeshError
              ? err
              : new InternalError(`the decision record could not be written: ${String(err)}`)
          this.feed(id, {
            type: 'decision-refused',
            reason: `the decision record could not be logged: ${e.commitError.message}`,
          })
          return
        }
        // A write or fsync failed: neither outcome is safe to announce: stop, recovery decides from the log.
        this.d.io.fatal('decision_log_failed', { tx: id })
      },
    )
  }

  private lazy(id: TxId, record: StepDecisionRecord | StepDoneRecord): void {
    try {
      this.d.io.log.appendLazy(logKey(id), body(record))
    } catch (err) {
      // A lost lazy record only means the op runs again after a restart (ops are idempotent).
      this.d.logger.warn('log_lazy_failed', { tx: id, error: String(err) })
    }
  }

  private async runOp(id: TxId, e: Entry, step: StepRecord, op: StepOpName): Promise<void> {
    const request = step[op]
    let result: { ok: boolean; error: string }
    if (request === undefined) result = { ok: true, error: '' }
    else if (e.state.mode === 'tcc' && step.viaIngress !== true) result = await this.callHook(id, step, op, request)
    else result = await this.sendOp(id, e.state.mode, step, op, request)
    this.d.metrics?.stepOp(op, result.ok ? 'done' : 'failed')
    if (result.ok)
      this.d.onEvent?.(`tx-${op === 'compensate' ? 'compensated' : op === 'confirm' ? 'confirmed' : 'cancelled'}`, {
        tx: id,
        service: step.service,
        branch: step.id,
      })
    else this.d.logger.warn('step_op_failed', { tx: id, step: step.id, service: step.service, op, error: result.error })
    this.feed(
      id,
      result.ok ? { type: 'op-done', step: step.id } : { type: 'op-failed', step: step.id, error: result.error },
    )
  }

  /**
   * Saga: the compensation goes to the step's target like any call, with a context naming the
   * step and the op. TCC steps marked viaIngress: the cancel goes the same way to the target's
   * ingress, whose sidecar hands it to its app (docs/sagas-tcc.md).
   */
  private async sendOp(
    id: TxId,
    mode: StepMode,
    step: StepRecord,
    name: StepOpName,
    op: StepOp,
  ): Promise<{ ok: boolean; error: string }> {
    const context = signContext(this.d.keys.signing, {
      id,
      mode,
      coordinator: this.d.self,
      deadline: this.clock() + LIMITS.stepOpContextTtlMs,
      parent: undefined,
      branch: step.id,
      op: name,
    })
    const headers: Record<string, string> = {
      ...(op.headers ?? {}),
      [CONTEXT_HEADER]: context,
      [TX_ID_HEADER]: id,
      [BRANCH_ID_HEADER]: step.id,
      [OP_HEADER]: name,
    }
    if (op.body !== undefined && headers['content-type'] === undefined) headers['content-type'] = 'application/json'
    try {
      const url = new URL(`${step.target}${op.path}`)
      const res = await this.d.io.http.exchange(url.origin, {
        path: `${url.pathname}${url.search}`,
        method: op.method as 'POST',
        headers: Object.entries(headers).flat(),
        ...(op.body === undefined ? {} : { body: op.body }),
        timeoutMs: LIMITS.stepOpTimeoutMs,
        limit: LIMITS.controlBodyBytes,
        header: ERROR_HEADER,
      })
      const code = res.header
      // 404: nothing left to undo (already compensated, or never created).
      if ((res.status >= 200 && res.status < 300) || res.status === 404) return { ok: true, error: '' }
      return {
        ok: false,
        error: `${op.method} ${op.path} answered ${res.status}${typeof code === 'string' ? ` ${code}` : ''}`,
      }
    } catch (err) {
      return { ok: false, error: `${op.method} ${op.path} failed: ${(err as { code?: string }).code ?? String(err)}` }
    }
  }

  /** TCC: the participant's sidecar calls its app's confirm or cancel hook. */
  private async callHook(
    id: TxId,
    step: StepRecord,
    op: StepOpName,
    hook: StepOp,
  ): Promise<{ ok: boolean; error: string }> {
    const body: Record<string, unknown> = {
      branch: step.id,
      method: hook.method,
      path: hook.path,
      ...(step.holder === undefined ? {} : { holder: step.holder }),
    }
    if (hook.body !== undefined) body.body = hook.body
    if (hook.headers !== undefined) body.headers = hook.headers
    const r = await this.d.io.control.call(step.target, 'POST', `/v1/tx/${id}/${op}`, body)
    return r.ok ? { ok: true, error: '' } : { ok: false, error: `${op} via ${step.service} failed: ${r.error}` }
  }

  private end(id: TxId, e: Entry): void {
    e.endHeld = false
    // Messages not yet on the bus keep the record (a restart publishes them again).
    endAfterPublishing(this.d.io.log, logKey(id), e)
    this.retire(id, e)
  }

  /** Ends a transaction whose end waited for step records, once none is left and it is over. */
  private releaseEnd(id: TxId, e: Entry): void {
    if (!e.endHeld || e.recording > 0 || this.txs.get(id) !== e) return
    if (e.state.status === 'committed' || e.state.status === 'aborted') this.end(id, e)
  }

  private retire(id: TxId, e: Entry): void {
    e.finished = true
    this.d.io.timers.clear(e.deadlineTimer)
    for (const t of e.retryTimers.values()) this.d.io.timers.clear(t)
    e.retryTimers.clear()
    for (const w of e.doneWaiters.splice(0)) w()
    this.txs.delete(id)
    this.finished.set(id, e)
    this.d.onEvent?.('tx-finished', { tx: id, outcome: e.outcome, status: e.state.status })
  }

  close(): Promise<void> {
    this.closed = true
    for (const e of this.txs.values()) {
      this.d.io.timers.clear(e.deadlineTimer)
      for (const t of e.retryTimers.values()) this.d.io.timers.clear(t)
    }
    return this.d.io.http.close?.() ?? Promise.resolve()
  }
}

function stepViews(s: StepTxState): StepView[] {
  return s.steps.map((e) => ({
    id: e.step.id,
    service: e.step.service,
    target: e.step.target,
    status: e.status,
    attempts: e.attempts,
    lastError: e.lastError,
    ...(e.step.compensate === undefined ? {} : { compensate: e.step.compensate }),
    ...(e.step.confirm === undefined ? {} : { confirm: e.step.confirm }),
    ...(e.step.cancel === undefined ? {} : { cancel: e.step.cancel }),
    ...(e.step.intent === true ? { intent: true } : {}),
  }))
}
