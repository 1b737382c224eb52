// The coordinator's pure state machine (STYLE.md "Pure core, thin drivers"): presumed-abort
// two-phase commit for one transaction (DESIGN.md "Commit protocol"). No I/O, no clock, no
// randomness of its own: the driver performs the returned actions and feeds their results back.
//
// Presumed abort: the only record the coordinator force-writes is the COMMIT decision (with the
// participants that must hear it). An abort writes nothing, and a transaction the coordinator has
// neither in memory nor in its log is answered "aborted".
//
// One-phase commit (DESIGN.md "One participant -> one-phase commit"): with exactly one
// participant at commit-requested, that participant prepares, decides and finishes alone. The
// coordinator writes nothing and only waits for the answer: while it waits the outcome is
// unknown (never "aborted" on a failed send: it retries until the participant answers), and
// neither the deadline nor an abort request can take the decision away from the participant.
// The participant set is fixed at commit-requested: a branch enlisted later hears abort.
import assert from 'node:assert/strict'
import { fullJitterMs } from '../../backoff.js'
import { LIMITS } from '../../limits.js'
import type {
  BranchId,
  CoordinatorAction,
  CoordinatorEvent,
  CoordinatorParticipant,
  CoordinatorState,
  Env,
  Outcome,
  ParticipantRef,
  Transition,
  TxId,
  Vote,
} from '../core.js'

type CoordinatorTransition = Transition<CoordinatorState, CoordinatorAction>

export function newCoordinator(id: TxId, deadline: number): CoordinatorState {
  return {
    id,
    deadline,
    status: 'active',
    participants: [],
    decisionLogged: false,
    reason: undefined,
    onePhase: false,
    mustLog: false,
  }
}

export function coordinatorTransition(
  state: CoordinatorState,
  event: CoordinatorEvent,
  env: Env,
): CoordinatorTransition {
  const step = dispatch(state, event, env)
  checkInvariants(step.state)
  return step
}

/**
 * Rebuilds a transaction from its logged COMMIT decision after a restart: phase 2 starts over
 * (commit is idempotent at the participants; one that already finished answers done).
 */
export function recoverCoordinator(id: TxId, participants: readonly ParticipantRef[], env: Env): CoordinatorTransition {
  const refs = uniqueByBranch(participants)
  assert(refs.length <= LIMITS.maxParticipants, `decision record of ${id} lists ${refs.length} participants`)
  const state: CoordinatorState = {
    id,
    // The deadline no longer matters once the decision is durable.
    deadline: env.now,
    status: refs.length === 0 ? 'committed' : 'committing',
    participants: refs.map((ref) => ({ ref, vote: { kind: 'prepared' }, acked: false, attempts: 1 })),
    decisionLogged: true,
    reason: undefined,
    onePhase: false,
    mustLog: false,
  }
  checkInvariants(state)
  if (refs.length === 0) return { state, actions: [{ type: 'log-end' }] }
  return { state, actions: refs.map((to) => ({ type: 'send-commit', to })) }
}

/**
 * What the coordinator answers a participant asking for the outcome (`undefined`: the
 * transaction is neither in memory nor in the log). Presumed abort: no record and not active
 * means aborted. A COMMIT record being written (committing, not yet logged) is still unknown:
 * the write may land. So is a one-phase commit whose participant has not answered yet (it decides).
 */
export function coordinatorOutcome(state: CoordinatorState | undefined): Outcome | 'unknown' {
  if (state === undefined) return 'aborted'
  switch (state.status) {
    case 'active':
    case 'preparing':
      return 'unknown'
    case 'committing':
      return state.decisionLogged ? 'committed' : 'unknown'
    case 'committed':
      return 'committed'
    case 'aborting':
    case 'aborted':
      return 'aborted'
  }
}

function dispatch(state: CoordinatorState, event: CoordinatorEvent, env: Env): CoordinatorTransition {
  switch (event.type) {
    case 'enlist':
      return onEnlist(state, event.participants)
    case 'must-log':
      return state.status === 'active' ? same({ ...state, mustLog: true }) : same(state)
    case 'commit-requested':
      return onCommitRequested(state)
    case 'abort-requested':
      // Once the COMMIT record may be on its way to disk, nobody can take the decision back:
      // an abort request then simply waits for (and gets) the commit outcome.
      return undecided(state) ? abort(state, event.reason) : same(state)
    case 'deadline':
      return undecided(state) ? abort(state, 'deadline') : same(state)
    case 'vote':
      return onVote(state, event.branch, event.vote)
    case 'decision-logged':
      return onDecisionLogged(state)
    case 'decision-refused':
      // Nothing reached the disk, so nobody can have been told commit: abort is still open.
      return state.status === 'committing' && !state.decisionLogged && !state.onePhase
        ? abort(state, event.reason)
        : same(state)
    case 'ack':
      return onAck(state, event.branch, event.outcome)
    case 'send-failed':
      return onSendFailed(state, event.branch, env)
    case 'retry-due':
      return onRetryDue(state, event.branch)
    case 'one-phase-result':
      return onOnePhaseResult(state, event.branch, event.outcome)
  }
}

function same(state: CoordinatorState): CoordinatorTransition {
  return { state, actions: [] }
}

function undecided(state: CoordinatorState): boolean {
  return state.status === 'active' || state.status === 'preparing'
}

/** Phase 2 is running: commits after the decision is durable, or aborts. */
function inPhase2(state: CoordinatorState): boolean {
  return (state.status === 'committing' && state.decisionLogged) || state.status === 'aborting'
}

/** A one-phase commit went out and its answer has not come back yet. */
function onePhasePending(state: CoordinatorState): boolean {
  return state.status === 'committing' && state.onePhase
}

function onEnlist(state: CoordinatorState, refs: readonly ParticipantRef[]): CoordinatorTransition {
  const known = new Set(state.participants.map((p) => p.ref.branch))
  // The same branch enlisted twice (a duplicated register, nested refs repeated) is one branch.
  const fresh = uniqueByBranch(refs).filter((r) => !known.has(r.branch))
  if (fresh.length === 0) return same(state)
  const room = LIMITS.maxParticipants - state.participants.length
  const fits = fresh.slice(0, Math.max(0, room))
  const overflow = fresh.slice(fits.length)
  // Branches that can be neither committed nor tracked still hold open work: tell them to abort
  // once (best effort; their own deadline aborts them if this send is lost).
  const untracked: CoordinatorAction[] = overflow.map((to) => ({ type: 'send-abort', to }))

  switch (state.status) {
    case 'active': {
      if (overflow.length > 0) {
        const step = abort(state, `more than ${LIMITS.maxParticipants} participants`)
        return {
          state: step.state,
          actions: [...step.actions, ...fresh.map((to): CoordinatorAction => ({ type: 'send-abort', to }))],
        }
      }
      return { state: { ...state, participants: [...state.participants, ...fits.map(newParticipant)] }, actions: [] }
    }
    case 'preparing': {
      // Prepare already went out: the new branch missed it and cannot join. Dropping it would
      // let the others commit without its work, so the whole transaction aborts, this one too.
      const grown = { ...state, participants: [...state.participants, ...fits.map(newParticipant)] }
      const step = abort(grown, 'late enlistment')
      return { state: step.state, actions: [...step.actions, ...untracked] }
    }
    case 'aborting': {
      const added = fits.map((ref): CoordinatorParticipant => ({ ref, vote: undefined, acked: false, attempts: 1 }))
      return {
        state: { ...state, participants: [...state.participants, ...added] },
        actions: [...fits.map((to): CoordinatorAction => ({ type: 'send-abort', to })), ...untracked],
      }
    }
    case 'committing':
    case 'committed':
    case 'aborted':
      // The outcome is fixed (or the state is about to be dropped): the late branch's work cannot
      // be part of it. Abort it, once; the driver should also refuse the enlistment to the caller.
      return { state, actions: fresh.map((to): CoordinatorAction => ({ type: 'send-abort', to })) }
  }
}

function newParticipant(ref: ParticipantRef): CoordinatorParticipant {
  return { ref, vote: undefined, acked: false, attempts: 0 }
}

function onCommitRequested(state: CoordinatorState): CoordinatorTransition {
  if (state.status !== 'active') return same(state)
  if (state.participants.length === 0 && state.mustLog)
    return { state: { ...state, status: 'committing' }, actions: [{ type: 'log-decision', participants: [] }] }
  if (state.participants.length === 0) {
    // Nothing to prepare: committed at once, nothing to log.
    return {
      state: { ...state, status: 'committed' },
      actions: [{ type: 'outcome', outcome: 'committed' }, { type: 'log-end' }],
    }
  }
  const only = state.participants.length === 1 && !state.mustLog ? state.participants[0] : undefined
  if (only !== undefined) {
    // One participant: it is the decider. Nothing to log here (its PREPARED is the record).
    return {
      state: { ...state, status: 'committing', onePhase: true, participants: [{ ...only, attempts: 1 }] },
      actions: [{ type: 'send-commit-one-phase', to: only.ref }],
    }
  }
  return {
    state: { ...state, status: 'preparing' },
    actions: state.participants.map((p): CoordinatorAction => ({ type: 'send-prepare', to: p.ref })),
  }
}

function onVote(state: CoordinatorState, branch: BranchId, vote: Vote): CoordinatorTransition {
  // A vote after the decision (or a second vote, or from a branch we do not know) changes nothing.
  if (state.status !== 'preparing') return same(state)
  const i = state.participants.findIndex((p) => p.ref.branch === branch)
  const p = state.participants[i]
  if (p === undefined || p.vote !== undefined) return same(state)
  const participants = state.participants.with(i, { ...p, vote, acked: vote.kind === 'read-only' })
  const next = { ...state, participants }
  if (vote.kind === 'refused') {
    // One no is enough: abort now rather than wait for the rest, so locks are released sooner.
    return abort(next, `${p.ref.service} (${branch}) voted no: ${vote.reason}`)
  }
  if (participants.some((q) => q.vote === undefined)) return same(next)
  const prepared = participants.filter((q) => q.vote?.kind === 'prepared').map((q) => q.ref)
  if (prepared.length === 0 && !next.mustLog) {
    // Every branch read-only: nothing to commit anywhere, nothing to log.
    return {
      state: { ...next, status: 'committed' },
      actions: [{ type: 'outcome', outcome: 'committed' }, { type: 'log-end' }],
    }
  }
  return { state: { ...next, status: 'committing' }, actions: [{ type: 'log-decision', participants: prepared }] }
}

function onDecisionLogged(state: CoordinatorState): CoordinatorTransition {
  if (state.status !== 'committing' || state.decisionLogged || state.onePhase) return same(state)
  const actions: CoordinatorAction[] = [{ type: 'outcome', outcome: 'committed' }]
  const participants = state.participants.map((p) => {
    if (p.acked) return p
    actions.push({ type: 'send-commit', to: p.ref })
    return { ...p, attempts: 1 }
  })
  return finishIfAcked({ ...state, participants, decisionLogged: true }, actions)
}

function onAck(state: CoordinatorState, branch: BranchId, outcome: Outcome | undefined): CoordinatorTransition {
  // A one-phase branch answers with its outcome (one-phase-result), never with a bare ack.
  if (!inPhase2(state)) return same(state)
  const i = state.participants.findIndex((p) => p.ref.branch === branch)
  const p = state.participants[i]
  if (p === undefined || p.acked) return same(state)
  const decision: Outcome = state.status === 'aborting' ? 'aborted' : 'committed'
  if (outcome !== undefined && outcome !== decision) {
    // The branch finished the other way: sending again cannot change it. Finished, reported.
    const participants = state.participants.with(i, { ...p, acked: true, heuristic: outcome })
    return finishIfAcked({ ...state, participants }, [{ type: 'heuristic', to: p.ref, outcome }])
  }
  return finishIfAcked({ ...state, participants: state.participants.with(i, { ...p, acked: true }) }, [])
}

function onSendFailed(state: CoordinatorState, branch: BranchId, env: Env): CoordinatorTransition {
  if (!inPhase2(state) && !onePhasePending(state)) return same(state)
  const i = state.participants.findIndex((p) => p.ref.branch === branch)
  const p = state.participants[i]
  if (p === undefined || p.acked) return same(state)
  if (state.status === 'aborting' && p.attempts >= LIMITS.abortSendAttempts) {
    // Presumed abort lets the coordinator stop here: the participant learns "aborted" from its
    // deadline (unprepared) or from an outcome query that finds no record (prepared).
    return finishIfAcked({ ...state, participants: state.participants.with(i, { ...p, acked: true }) }, [])
  }
  return { state, actions: [{ type: 'schedule-retry', branch, delayMs: backoffMs(p.attempts, env.random) }] }
}

function onRetryDue(state: CoordinatorState, branch: BranchId): CoordinatorTransition {
  if (!inPhase2(state) && !onePhasePending(state)) return same(state)
  const i = state.participants.findIndex((p) => p.ref.branch === branch)
  const p = state.participants[i]
  if (p === undefined || p.acked) return same(state)
  const action: CoordinatorAction =
    state.status === 'aborting'
      ? { type: 'send-abort', to: p.ref }
      : state.onePhase
        ? { type: 'send-commit-one-phase', to: p.ref }
        : { type: 'send-commit', to: p.ref }
  return {
    state: { ...state, participants: state.participants.with(i, { ...p, attempts: p.attempts + 1 }) },
    actions: [action],
  }
}

/** The one-phase participant answered: its outcome is the transaction's. Nothing was logged here. */
function onOnePhaseResult(state: CoordinatorState, branch: BranchId, outcome: Outcome): CoordinatorTransition {
  if (!onePhasePending(state)) return same(state)
  const i = state.participants.findIndex((p) => p.ref.branch === branch)
  const p = state.participants[i]
  if (p === undefined || p.acked) return same(state)
  if (outcome === 'committed') {
    const participants = state.participants.with(i, { ...p, vote: { kind: 'prepared' }, acked: true })
    return {
      state: { ...state, status: 'committed', participants },
      actions: [{ type: 'outcome', outcome: 'committed' }, { type: 'log-end' }],
    }
  }
  const reason = `${p.ref.service} (${branch}) aborted the one-phase commit`
  const participants = state.participants.with(i, {
    ...p,
    vote: { kind: 'refused', reason: 'aborted in one phase' },
    acked: true,
  })
  return {
    state: { ...state, status: 'aborted', reason, participants },
    actions: [{ type: 'outcome', outcome: 'aborted', reason }, { type: 'log-end' }],
  }
}

/**
 * Decides abort (from active or preparing). Nothing is logged (presumed abort). Every branch
 * that may hold work hears abort: all but those that voted read-only (they hold nothing). A
 * refused vote is no proof: a prepare that failed or timed out here arrives as one while the
 * app may still prepare after it, so a branch that said no (or never answered) is told too.
 */
function abort(state: CoordinatorState, reason: string): CoordinatorTransition {
  const actions: CoordinatorAction[] = [{ type: 'outcome', outcome: 'aborted', reason }]
  const participants = state.participants.map((p) => {
    if (p.vote?.kind === 'read-only') return { ...p, acked: true }
    actions.push({ type: 'send-abort', to: p.ref })
    return { ...p, acked: false, attempts: 1 }
  })
  return finishIfAcked({ ...state, status: 'aborting', reason, participants }, actions)
}

/** Phase 2 over once every participant acknowledged (or needs nothing more). */
function finishIfAcked(state: CoordinatorState, actions: CoordinatorAction[]): CoordinatorTransition {
  if (!state.participants.every((p) => p.acked)) return { state, actions }
  if (state.status === 'committing' && state.decisionLogged)
    return { state: { ...state, status: 'committed' }, actions: [...actions, { type: 'log-end' }] }
  if (state.status === 'aborting')
    return { state: { ...state, status: 'aborted' }, actions: [...actions, { type: 'log-end' }] }
  return { state, actions }
}

/** Capped exponential backoff with full jitter (attempt 1 = the first send failed). */
function backoffMs(attempt: number, random: () => number): number {
  return fullJitterMs(attempt, LIMITS.phase2BackoffBaseMs, LIMITS.phase2BackoffCapMs, random)
}

function uniqueByBranch(refs: readonly ParticipantRef[]): ParticipantRef[] {
  const byBranch = new Map<BranchId, ParticipantRef>()
  for (const r of refs) if (!byBranch.has(r.branch)) byBranch.set(r.branch, r)
  return [...byBranch.values()]
}

function checkInvariants(s: CoordinatorState): void {
  assert(s.participants.length <= LIMITS.maxParticipants, `${s.id}: ${s.participants.length} participants`)
  assert(
    new Set(s.participants.map((p) => p.ref.branch)).size === s.participants.length,
    `${s.id}: a branch is listed twice`,
  )
  assert(
    !s.decisionLogged || s.status === 'committing' || s.status === 'committed',
    `${s.id}: decision logged but ${s.status}`,
  )
  if (s.status === 'committed' || s.status === 'aborted')
    assert(
      s.participants.every((p) => p.acked),
      `${s.id}: ${s.status} with unacknowledged participants`,
    )
  assert(!(s.onePhase && s.decisionLogged), `${s.id}: one-phase commit with a logged decision`)
  if (s.onePhase)
    assert(s.participants.length === 1, `${s.id}: one-phase commit with ${s.participants.length} participants`)
  if ((s.status === 'committing' && !s.onePhase) || (s.status === 'committed' && s.decisionLogged)) {
    assert(
      s.participants.every((p) => p.vote !== undefined && p.vote.kind !== 'refused'),
      `${s.id}: committing with a missing or no vote`,
    )
  }
}
