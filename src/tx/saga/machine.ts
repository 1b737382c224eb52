// Pure state machine of step transactions: sagas and TCC (DESIGN.md "saga", "tcc"; STYLE.md
// "Pure core, thin drivers"). One state per transaction, held by the coordinator sidecar.
//
// Every call made in the transaction is a step, recorded durably by the driver before the
// call is sent (an *intent*: what undoes it, worked out from the request alone; DTM records its
// branches the same way) and again once it answered (the *resolution*, same id, replacing the
// intent while nothing was sent for it), before the response reaches the app, with what
// finishes it:
//   saga  commit: nothing; abort: its compensation, run in reverse order of the steps, one at a
//         time (a later step may depend on an earlier one, so it is undone first);
//   tcc   commit: its confirm hook; abort: its cancel hook, all steps at once.
// Commit force-writes a decision before anything runs (a restarted coordinator must not undo a
// committed saga, and must confirm a committed TCC); abort needs no forced write: steps found in
// the log without a COMMIT decision are undone (presumed abort). Each op is retried with capped
// exponential backoff and full jitter; past its attempt budget the step is `stuck`: visible to
// operators with its last error, retried again only when an operator asks (or after a restart).
// An intent that never got its resolution is undone whatever the outcome, like a late step: the
// app never saw the call's answer. A call refused outright (saga 4xx) voids its intent.
import assert from 'node:assert/strict'
import { fullJitterMs } from '../../backoff.js'
import { LIMITS } from '../../limits.js'
import type { BranchId, Env, Outcome, Transition, TxId } from '../core.js'

export type StepMode = 'saga' | 'tcc'
export type StepOpName = 'compensate' | 'confirm' | 'cancel'

/** A request that finishes a step; opaque to the machine (the driver sends it). */
export interface StepOp {
  readonly method: string
  readonly path: string
  readonly headers?: Readonly<Record<string, string>>
  readonly body?: string
}

export interface StepRecord {
  /** Step id; also the branch id the target saw (`txmesh-branch-id`), which its barrier keys on. */
  readonly id: BranchId
  readonly service: string
  /** saga: origin the compensation is sent to (http://host:port). tcc: the participant sidecar's control address. */
  readonly target: string
  readonly compensate?: StepOp
  readonly confirm?: StepOp
  readonly cancel?: StepOp
  /** TCC through the target's sidecar: that sidecar's log incarnation (ParticipantRef.holder). */
  readonly holder?: string
  /** Set when the step's undo could not be worked out (e.g. a template field missing): it goes stuck at once. */
  readonly unresolved?: string
  /** Answered after commit or abort was asked: its caller was told it failed, so it is always undone. */
  readonly late?: boolean
  /**
   * Recorded before its call was sent, from the request alone: until its resolution (the record
   * of the answered call, same id) replaces it, it is undone whatever the outcome.
   */
  readonly intent?: boolean
  /**
   * TCC: confirm/cancel go over HTTP to `target`, the step's ingress origin, with a signed
   * context, as a saga compensation does (an intent does not know the participant sidecar's
   * control address yet). Otherwise `target` is that control address.
   */
  readonly viaIngress?: boolean
}

export type StepStatus = 'recorded' | 'running' | 'waiting' | 'finished' | 'stuck'

export interface StepEntry {
  readonly step: StepRecord
  readonly status: StepStatus
  readonly attempts: number
  readonly lastError: string | undefined
}

export type StepTxStatus = 'active' | 'committing' | 'aborting' | 'committed' | 'aborted'

export interface StepPolicy {
  /** Sends of one op before the step is stuck. */
  readonly attempts: number
  readonly backoffBaseMs: number
  readonly backoffCapMs: number
}

export interface StepTxState {
  readonly id: TxId
  readonly mode: StepMode
  readonly deadline: number
  readonly status: StepTxStatus
  readonly steps: readonly StepEntry[]
  /** COMMIT decision durable. */
  readonly decisionLogged: boolean
  readonly reason: string | undefined
  readonly policy: StepPolicy
}

export type StepEvent =
  /**
   * A step is durable in the log: an intent (before its call is sent), the resolution of one
   * (same id, once the call answered), or a step recorded only once it answered.
   */
  | { readonly type: 'step'; readonly step: StepRecord }
  /** The call of an intent was refused outright (it did nothing): nothing to undo. */
  | { readonly type: 'step-void'; readonly step: BranchId }
  | { readonly type: 'commit-requested' }
  | { readonly type: 'abort-requested'; readonly reason: string }
  | { readonly type: 'deadline' }
  | { readonly type: 'decision-logged' }
  /**
   * The COMMIT decision was refused before any of it was written (a record over the log's
   * limit, say): nothing decided commit, so the transaction aborts.
   */
  | { readonly type: 'decision-refused'; readonly reason: string }
  | { readonly type: 'op-done'; readonly step: BranchId }
  | { readonly type: 'op-failed'; readonly step: BranchId; readonly error: string }
  | { readonly type: 'retry-due'; readonly step: BranchId }
  /** An operator asks to try the stuck steps again. */
  | { readonly type: 'retry-stuck' }

export type StepAction =
  /** committed: force-write, then feed decision-logged. aborted: a lazy record (presumed abort). */
  | { readonly type: 'log-decision'; readonly outcome: Outcome }
  | { readonly type: 'run'; readonly step: StepRecord; readonly op: StepOpName; readonly attempt: number }
  /** The step is finished: a lazy record so a restart does not run it again (it would be harmless). */
  | { readonly type: 'log-step-done'; readonly step: BranchId }
  | { readonly type: 'schedule-retry'; readonly step: BranchId; readonly delayMs: number }
  | { readonly type: 'stuck'; readonly step: StepRecord; readonly op: StepOpName; readonly error: string }
  | { readonly type: 'outcome'; readonly outcome: Outcome; readonly reason?: string }
  /** Every step finished: END may be written lazily and the state dropped. */
  | { readonly type: 'log-end' }

type SagaTransition = Transition<StepTxState, StepAction>

export function newSagaTx(id: TxId, mode: StepMode, deadline: number, policy: StepPolicy): StepTxState {
  return { id, mode, deadline, status: 'active', steps: [], decisionLogged: false, reason: undefined, policy }
}

export function sagaTransition(state: StepTxState, event: StepEvent, env: Env): SagaTransition {
  const out = dispatch(state, event, env)
  checkInvariants(out.state)
  return out
}

/**
 * Rebuilds a transaction from its log records after a restart: with a COMMIT decision a TCC
 * confirms its unfinished steps (a saga has nothing left to do); without one every unfinished
 * step is undone (presumed abort). A step recorded twice (intent, then resolution) is its last
 * record, in the place of its first. Intents still unresolved are undone either way.
 */
export function recoverSagaTx(
  id: TxId,
  mode: StepMode,
  steps: readonly StepRecord[],
  finished: ReadonlySet<BranchId>,
  committed: boolean,
  policy: StepPolicy,
  env: Env,
): SagaTransition {
  const entries: StepEntry[] = unique(steps).map((step) => ({
    step,
    status: finished.has(step.id) ? 'finished' : 'recorded',
    attempts: 0,
    lastError: undefined,
  }))
  const state: StepTxState = {
    id,
    mode,
    deadline: env.now,
    status: committed ? 'committing' : 'aborting',
    steps: entries,
    decisionLogged: committed,
    reason: committed ? undefined : 'recovered without a commit decision',
    policy,
  }
  return advance(state, [])
}

/** What a participant or an operator is told about this transaction. */
export function sagaOutcome(state: StepTxState | undefined): Outcome | 'unknown' {
  if (state === undefined) return 'aborted'
  if (state.status === 'committed' || (state.status === 'committing' && state.decisionLogged)) return 'committed'
  if (state.status === 'aborting' || state.status === 'aborted') return 'aborted'
  return 'unknown'
}

/** The op that finishes a step in this state (undefined: nothing to send). */
export function opFor(state: StepTxState, step: StepRecord): StepOpName | undefined {
  const undo = state.mode === 'tcc' ? 'cancel' : 'compensate'
  // Its caller never saw it succeed (late: told the transaction was over; intent: no answer).
  if (step.late === true || step.intent === true) return undo
  if (state.status === 'committing' || state.status === 'committed') return state.mode === 'tcc' ? 'confirm' : undefined
  return undo
}

function dispatch(state: StepTxState, event: StepEvent, env: Env): SagaTransition {
  switch (event.type) {
    case 'step':
      return onStep(state, event.step)
    case 'step-void':
      return withStep(state, event.step, ['recorded', 'stuck'], (e, s) =>
        intentUnsent(e)
          ? advance(replace(s, { ...e, status: 'finished', lastError: undefined }), [
              { type: 'log-step-done', step: e.step.id },
            ])
          : same(s),
      )
    case 'commit-requested':
      if (state.status !== 'active') return same(state)
      return { state: { ...state, status: 'committing' }, actions: [{ type: 'log-decision', outcome: 'committed' }] }
    case 'abort-requested':
      return abort(state, event.reason)
    case 'deadline':
      return state.status === 'active' ? abort(state, 'deadline passed') : same(state)
    case 'decision-logged':
      if (state.status !== 'committing' || state.decisionLogged) return same(state)
      return advance({ ...state, decisionLogged: true }, [{ type: 'outcome', outcome: 'committed' }])
    case 'decision-refused':
      if (state.status !== 'committing' || state.decisionLogged) return same(state)
      return abort({ ...state, status: 'active' }, event.reason)
    case 'op-done':
      return withStep(state, event.step, ['running'], (e, s) =>
        advance(replace(s, { ...e, status: 'finished', lastError: undefined }), [
          { type: 'log-step-done', step: e.step.id },
        ]),
      )
    case 'op-failed':
      return withStep(state, event.step, ['running'], (e, s) => onFailed(s, e, event.error, env))
    case 'retry-due':
      return withStep(state, event.step, ['waiting'], (e, s) => run(s, e))
    case 'retry-stuck': {
      if (!state.steps.some((e) => e.status === 'stuck')) return same(state)
      const steps = state.steps.map((e) =>
        e.status === 'stuck' ? { ...e, status: 'recorded' as const, attempts: 0 } : e,
      )
      return advance({ ...state, steps }, [])
    }
  }
}

function same(state: StepTxState): SagaTransition {
  return { state, actions: [] }
}

/** An intent nothing was sent for yet: waiting its turn, or stuck without a request (unresolved). */
export function intentUnsent(e: StepEntry): boolean {
  return (
    e.step.intent === true && (e.status === 'recorded' || (e.status === 'stuck' && e.step.unresolved !== undefined))
  )
}

function onStep(state: StepTxState, answered: StepRecord): SagaTransition {
  const known = state.steps.find((e) => e.step.id === answered.id)
  if (known !== undefined) return onResolution(state, known, answered)
  // A step that answered after the transaction ended (a slow call racing an abort) must still
  // be undone: it joins the queue like the others.
  assert(state.steps.length < LIMITS.maxSteps, `${state.id}: more than ${LIMITS.maxSteps} steps`)
  // A step whose record was still being written when the abort came (its call answered while
  // the transaction was active, so the driver did not mark it late) is undone like a late one:
  // the undo of the steps before it may be under way already, so it cannot take its turn in
  // reverse order (before, checkInvariants threw here and the driver dropped the step, never
  // undoing it; test/simulation/steps.sim.test.ts found it).
  const step =
    answered.late !== true && (state.status === 'aborting' || state.status === 'aborted')
      ? { ...answered, late: true }
      : answered
  const entry: StepEntry = { step, status: 'recorded', attempts: 0, lastError: undefined }
  const s = { ...state, steps: [...state.steps, entry] }
  if (state.status === 'active' || (state.status === 'committing' && !state.decisionLogged)) return same(s)
  if (state.status === 'committed') return advance({ ...s, status: 'committing' }, [])
  // (late steps are undone whatever the outcome: opFor)
  if (state.status === 'aborted') return advance({ ...s, status: 'aborting' }, [])
  return advance(s, [])
}

/**
 * The answered call of an intent: its record takes the intent's place (and its turn in a saga's
 * reverse order) while nothing was sent for the intent. Once its undo is under way or done, the
 * resolution changes nothing: the target's barrier sees to an undo that raced its call.
 */
function onResolution(state: StepTxState, known: StepEntry, answered: StepRecord): SagaTransition {
  if (answered.intent === true || !intentUnsent(known)) return same(state)
  // As for a new step: one fed while the abort runs is undone like a late one.
  const step =
    answered.late !== true && (state.status === 'aborting' || state.status === 'aborted')
      ? { ...answered, late: true }
      : answered
  const s = replace(state, { step, status: 'recorded', attempts: 0, lastError: undefined })
  if (state.status === 'active' || (state.status === 'committing' && !state.decisionLogged)) return same(s)
  if (state.status === 'committed') return advance({ ...s, status: 'committing' }, [])
  if (state.status === 'aborted') return advance({ ...s, status: 'aborting' }, [])
  return advance(s, [])
}

function abort(state: StepTxState, reason: string): SagaTransition {
  if (state.status !== 'active') return same(state)
  return advance({ ...state, status: 'aborting', reason }, [
    { type: 'log-decision', outcome: 'aborted' },
    { type: 'outcome', outcome: 'aborted', reason },
  ])
}

function onFailed(state: StepTxState, e: StepEntry, error: string, env: Env): SagaTransition {
  const op = opFor(state, e.step) as StepOpName
  if (e.attempts >= state.policy.attempts) {
    const stuck: StepEntry = { ...e, status: 'stuck', lastError: error }
    return advance(replace(state, stuck), [{ type: 'stuck', step: e.step, op, error }])
  }
  const delayMs = fullJitterMs(e.attempts, state.policy.backoffBaseMs, state.policy.backoffCapMs, env.random)
  return {
    state: replace(state, { ...e, status: 'waiting', lastError: error }),
    actions: [{ type: 'schedule-retry', step: e.step.id, delayMs }],
  }
}

function run(state: StepTxState, e: StepEntry): SagaTransition {
  const op = opFor(state, e.step) as StepOpName
  const next: StepEntry = { ...e, status: 'running', attempts: e.attempts + 1 }
  return { state: replace(state, next), actions: [{ type: 'run', step: e.step, op, attempt: next.attempts }] }
}

/**
 * Starts what may start now and ends the transaction when every step is finished. Sagas undo
 * one step at a time from the last; TCC confirms or cancels all at once. A stuck step of a saga
 * blocks the steps before it (undoing them first could break what the stuck one relies on).
 */
function advance(state: StepTxState, actions: StepAction[]): SagaTransition {
  if (state.status === 'active' || (state.status === 'committing' && !state.decisionLogged)) return { state, actions }
  let s = state
  const out = [...actions]
  const order = s.mode === 'saga' ? [...s.steps].reverse() : s.steps
  // A saga undoes one step at a time: a late step waits for the one under way.
  const busy = s.mode === 'saga' && s.steps.some((e) => e.status === 'running' || e.status === 'waiting')
  for (const e of busy ? [] : order) {
    if (e.status === 'finished') continue
    const op = opFor(s, e.step)
    if (e.status === 'recorded') {
      const request = op === undefined ? undefined : e.step[op]
      if (op !== undefined && e.step.unresolved !== undefined) {
        s = replace(s, { ...e, status: 'stuck', lastError: e.step.unresolved })
        out.push({ type: 'stuck', step: e.step, op, error: e.step.unresolved })
      } else if (request === undefined) {
        // Nothing to send: a committed saga's step, or nothing declared to undo it.
        s = replace(s, { ...e, status: 'finished' })
        out.push({ type: 'log-step-done', step: e.step.id })
        continue
      } else {
        const r = run(s, e)
        s = r.state
        out.push(...r.actions)
      }
    }
    if (s.mode === 'saga') break
  }
  if (s.steps.every((e) => e.status === 'finished')) {
    const done: StepTxStatus = s.status === 'committing' ? 'committed' : 'aborted'
    s = { ...s, status: done }
    out.push({ type: 'log-end' })
  }
  return { state: s, actions: out }
}

function withStep(
  state: StepTxState,
  id: BranchId,
  statuses: readonly StepStatus[],
  f: (e: StepEntry, s: StepTxState) => SagaTransition,
): SagaTransition {
  const e = state.steps.find((x) => x.step.id === id)
  // Late or duplicate answers (after a retry-stuck reset, or a restart) change nothing.
  if (e === undefined || !statuses.includes(e.status)) return same(state)
  return f(e, state)
}

function replace(state: StepTxState, entry: StepEntry): StepTxState {
  return { ...state, steps: state.steps.map((e) => (e.step.id === entry.step.id ? entry : e)) }
}

/** The last record of each step (an intent's resolution comes after it), in first-record order. */
function unique(steps: readonly StepRecord[]): StepRecord[] {
  const seen = new Map<BranchId, StepRecord>()
  // Map.set keeps a key's first insertion position: the intent's place, the resolution's record.
  for (const s of steps) seen.set(s.id, s)
  return [...seen.values()]
}

function checkInvariants(s: StepTxState): void {
  assert(s.steps.length <= LIMITS.maxSteps, `${s.id}: ${s.steps.length} steps`)
  assert(new Set(s.steps.map((e) => e.step.id)).size === s.steps.length, `${s.id}: a step is listed twice`)
  if (s.status === 'committed' || s.status === 'aborted')
    assert(
      s.steps.every((e) => e.status === 'finished'),
      `${s.id}: ${s.status} with unfinished steps`,
    )
  // (finished while active: a voided intent)
  const idle = (e: StepEntry): boolean => e.status === 'recorded' || (e.status === 'finished' && e.step.intent === true)
  if (s.status === 'active') assert(s.steps.every(idle), `${s.id}: a step ran while active`)
  if (s.status === 'committing' && !s.decisionLogged)
    assert(s.steps.every(idle), `${s.id}: a step ran before the decision`)
  if (s.mode === 'saga')
    assert(
      s.steps.filter((e) => e.status === 'running' || e.status === 'waiting').length <= 1,
      `${s.id}: saga undoes two steps at once`,
    )
  if (s.mode === 'saga' && s.status === 'aborting') {
    // Reverse order: no step runs while a later one is unfinished.
    let laterUnfinished = false
    for (let i = s.steps.length - 1; i >= 0; i--) {
      const e = s.steps[i] as StepEntry
      if ((e.status === 'running' || e.status === 'waiting') && laterUnfinished)
        assert.fail(`${s.id}: step ${e.step.id} undone before a later one`)
      // Late steps are undone as they come (after the one under way), outside the reverse order.
      if (e.status !== 'finished' && e.step.late !== true) laterUnfinished = true
    }
  }
}
