// The participant's pure state machine (STYLE.md "Pure core, thin drivers"): one branch of a
// presumed-abort 2PC transaction, held by the sidecar of the instance that did the work
// (DESIGN.md "Commit protocol", "Enlistment"). No I/O, no clock, no randomness of its own.
//
// Rules that keep it safe:
// - Before the app is asked to prepare, the branch's first record is durable (log-preparing,
//   then preparing-logged; the driver normally has it already: JOINED, written before the
//   branch's first request reached the app): a sidecar that dies while its app holds open or
//   prepared work knows at restart that the branch exists and, with no PREPARED, that it never
//   voted yes, so it aborts it alone.
// - It votes yes only after PREPARED is durable (log-prepared, then prepared-logged).
// - Once prepared it never decides alone: past the deadline it asks the coordinator.
// - Before voting yes it may abort alone at any time (presumed abort agrees).
// - An app hook for a prepared branch is retried until the app answers; an abort is never sent
//   while the app's prepare call is still running (it could overtake it and leave a prepared
//   transaction behind).
//
// One-phase commit (the transaction's only participant, `onePhase`): the branch is the decider.
// commit-one-phase prepares the app and force-writes PREPARED(onePhase); once that record is
// durable the branch has decided commit (a restart commits, it never asks anyone) and neither a
// deadline nor anything else aborts it. Before that it may abort alone (no record: nobody can
// have been told commit). Once committed it keeps the record and asks the coordinator until the
// coordinator no longer waits for its answer (any answer but "unknown"): a retried
// commit-one-phase must never reach a sidecar that forgot the commit, where it would be
// answered "aborted".
import assert from 'node:assert/strict'
import { fullJitterMs } from '../../backoff.js'
import { LIMITS } from '../../limits.js'
import type {
  BranchId,
  Env,
  Outcome,
  ParticipantAction,
  ParticipantEvent,
  ParticipantState,
  Transition,
  TxId,
  Vote,
} from '../core.js'

type ParticipantTransition = Transition<ParticipantState, ParticipantAction>

const ABORTED_VOTE: Vote = { kind: 'refused', reason: 'branch aborted' }

export function newParticipant(tx: TxId, branch: BranchId, coordinator: string, deadline: number): ParticipantState {
  return { tx, branch, coordinator, deadline, status: 'active', vote: undefined, attempts: 0, onePhase: false }
}

/**
 * Rebuilds a branch found with a PREPARING record and no PREPARED after a restart: the app may
 * have prepared, but the branch never voted yes (and a one-phase branch never decided commit),
 * so nobody can have committed it. Abort alone, calling the app's abort hook until it answers.
 */
export function recoverUnvoted(
  tx: TxId,
  branch: BranchId,
  coordinator: string,
  deadline: number,
  onePhase = false,
): ParticipantTransition {
  return {
    state: {
      tx,
      branch,
      coordinator,
      deadline,
      status: 'aborting',
      vote: { kind: 'refused', reason: 'the sidecar restarted before voting' },
      attempts: 1,
      onePhase,
    },
    actions: [{ type: 'call-app', hook: 'abort' }],
  }
}

/**
 * Rebuilds a branch from its PREPARED record after a restart: in doubt, so ask the coordinator.
 * A one-phase branch is not in doubt: it decided commit when its record became durable, so it
 * commits (again: the app's commit hook is idempotent).
 */
export function recoverParticipant(
  tx: TxId,
  branch: BranchId,
  coordinator: string,
  deadline: number,
  _env: Env,
  onePhase = false,
): ParticipantTransition {
  if (onePhase) {
    return {
      state: {
        tx,
        branch,
        coordinator,
        deadline,
        status: 'committing',
        vote: { kind: 'prepared' },
        attempts: 1,
        onePhase: true,
      },
      actions: [{ type: 'call-app', hook: 'commit' }],
    }
  }
  return {
    state: {
      tx,
      branch,
      coordinator,
      deadline,
      status: 'prepared',
      vote: { kind: 'prepared' },
      attempts: 1,
      onePhase: false,
    },
    actions: [{ type: 'query-outcome' }],
  }
}

export function participantTransition(
  state: ParticipantState,
  event: ParticipantEvent,
  env: Env,
): ParticipantTransition {
  const step = dispatch(state, event, env)
  checkInvariants(step.state)
  return step
}

// `attempts` also tells which retry chain runs: in 'prepared', > 0 means outcome queries have
// started; in 'aborting', 0 means the abort waits for PREPARING's write or the app's prepare
// call to return.

function dispatch(s: ParticipantState, event: ParticipantEvent, env: Env): ParticipantTransition {
  switch (event.type) {
    case 'prepare':
      return onPrepare(s)
    case 'commit-one-phase':
      return onCommitOnePhase(s)
    case 'preparing-logged':
      return onPreparingLogged(s, event.ok)
    case 'app-voted':
      return onAppVoted(s, event.vote)
    case 'prepared-logged':
      return onPreparedLogged(s, env)
    case 'decision':
      // A committed one-phase branch only asks whether the coordinator still waits: any answer
      // means it does not.
      if (confirming(s)) return { state: s, actions: [{ type: 'log-end', outcome: 'committed' }] }
      return event.outcome === 'committed' ? onCommit(s) : onAbort(s)
    case 'app-done':
      return onAppDone(s, env)
    case 'app-failed':
      return callPending(s)
        ? { state: s, actions: [{ type: 'schedule-retry', delayMs: backoffMs(s.attempts, env.random) }] }
        : same(s)
    case 'outcome-unknown':
      return querying(s)
        ? { state: s, actions: [{ type: 'schedule-retry', delayMs: backoffMs(s.attempts, env.random) }] }
        : same(s)
    case 'retry-due':
      return onRetryDue(s)
    case 'deadline':
      return onDeadline(s)
  }
}

function same(s: ParticipantState): ParticipantTransition {
  return { state: s, actions: [] }
}

/** A commit/abort hook call is (or was) running and may need a retry. */
function callPending(s: ParticipantState): boolean {
  return s.status === 'committing' || (s.status === 'aborting' && s.attempts > 0)
}

function querying(s: ParticipantState): boolean {
  return (s.status === 'prepared' && s.attempts > 0) || (confirming(s) && s.attempts > 0)
}

/** A one-phase branch that committed and waits until the coordinator no longer needs its answer. */
function confirming(s: ParticipantState): boolean {
  return s.onePhase && s.status === 'committed'
}

function onCommitOnePhase(s: ParticipantState): ParticipantTransition {
  switch (s.status) {
    case 'active':
      return { state: { ...s, status: 'recording', onePhase: true }, actions: [{ type: 'log-preparing' }] }
    case 'recording':
    case 'preparing':
    case 'logging':
    case 'committing':
      // Under way (or a two-phase branch: then the driver refuses it): answered at reply-done.
      return same(s)
    case 'prepared':
      // A two-phase branch that voted yes: only its coordinator's decision may finish it.
      return same(s)
    case 'committed':
      return { state: s, actions: [{ type: 'reply-done', outcome: 'committed' }] }
    case 'aborting':
    case 'aborted':
      // Aborted alone (deadline before any prepare, or the app said no): the outcome is fixed.
      return { state: s, actions: [{ type: 'reply-done', outcome: 'aborted' }] }
  }
}

function onPrepare(s: ParticipantState): ParticipantTransition {
  switch (s.status) {
    case 'active':
      return { state: { ...s, status: 'recording' }, actions: [{ type: 'log-preparing' }] }
    case 'recording':
    case 'preparing':
    case 'logging':
      // The vote is on its way; the driver answers every waiting prepare with it.
      return same(s)
    case 'prepared':
    case 'committing':
      return { state: s, actions: [{ type: 'reply-vote', vote: { kind: 'prepared' } }] }
    case 'committed':
      return { state: s, actions: [{ type: 'reply-vote', vote: s.vote ?? { kind: 'read-only' } }] }
    case 'aborting':
    case 'aborted':
      return { state: s, actions: [{ type: 'reply-vote', vote: s.vote?.kind === 'refused' ? s.vote : ABORTED_VOTE }] }
  }
}

function onPreparingLogged(s: ParticipantState, ok: boolean): ParticipantTransition {
  const refused: Vote = { kind: 'refused', reason: 'cannot log PREPARING' }
  const reply: ParticipantAction = s.onePhase
    ? { type: 'reply-done', outcome: 'aborted' }
    : { type: 'reply-vote', vote: s.status === 'aborting' ? ABORTED_VOTE : refused }
  if (s.status === 'aborting' && s.attempts === 0) {
    // Aborted while PREPARING was being written: the app was never asked to prepare, but the
    // branch's work is still open in it; undo it.
    return { state: { ...s, attempts: 1 }, actions: [reply, { type: 'call-app', hook: 'abort' }] }
  }
  if (s.status !== 'recording') return same(s)
  if (ok) return { state: { ...s, status: 'preparing' }, actions: [{ type: 'call-app', hook: 'prepare' }] }
  // Not recorded: the app must not prepare (nothing would know of it after a crash). Whether or
  // not the write reached the disk, a PREPARING alone only ever means abort.
  return {
    state: { ...s, status: 'aborting', vote: refused, attempts: 1 },
    actions: [reply, { type: 'call-app', hook: 'abort' }],
  }
}

// Longer than most: one case per state and vote, in the order they are checked, as the table of
// what the app's vote does; split up, the order that makes each case safe would be hidden.
function onAppVoted(s: ParticipantState, vote: Vote): ParticipantTransition {
  if (s.status === 'aborting' && s.attempts === 0) {
    // The coordinator aborted while the app was preparing: now that prepare returned, the
    // abort cannot overtake it.
    return {
      state: { ...s, attempts: 1 },
      actions: [
        { type: 'reply-vote', vote: ABORTED_VOTE },
        { type: 'call-app', hook: 'abort' },
      ],
    }
  }
  if (s.status === 'logging' && vote.kind === 'refused') {
    // PREPARED could not be written: not voted yet, so aborting alone is still safe. (The driver
    // feeds this only when the record surely did not reach the disk; for a one-phase branch a
    // record that might have landed would commit at a restart, so the driver stops instead.)
    if (s.onePhase) {
      return {
        state: { ...s, status: 'aborting', vote, attempts: 1 },
        actions: [
          { type: 'reply-done', outcome: 'aborted' },
          { type: 'call-app', hook: 'abort' },
        ],
      }
    }
    return {
      state: { ...s, status: 'aborting', vote, attempts: 1 },
      actions: [
        { type: 'reply-vote', vote },
        { type: 'call-app', hook: 'abort' },
      ],
    }
  }
  if (s.status !== 'preparing') return same(s)
  switch (vote.kind) {
    case 'prepared':
      return { state: { ...s, status: 'logging', vote }, actions: [{ type: 'log-prepared' }] }
    case 'read-only':
      // Nothing to commit: the branch is done. END is durable before the answer leaves: with
      // only PREPARING left, a restart would abort a branch that answered read-only.
      if (s.onePhase) {
        return {
          state: { ...s, status: 'committed', vote },
          actions: [
            { type: 'log-end', outcome: 'committed' },
            { type: 'reply-done', outcome: 'committed' },
          ],
        }
      }
      return {
        state: { ...s, status: 'committed', vote },
        actions: [
          { type: 'log-end', outcome: 'committed' },
          { type: 'reply-vote', vote },
        ],
      }
    case 'refused':
      if (s.onePhase) {
        // The decider says no: aborted, whatever the app's abort hook still has to undo.
        return {
          state: { ...s, status: 'aborting', vote, attempts: 1 },
          actions: [
            { type: 'reply-done', outcome: 'aborted' },
            { type: 'call-app', hook: 'abort' },
          ],
        }
      }
      // The app said no, or its prepare failed or timed out: then it may have prepared after
      // all, so its abort hook is called until it answers (404 = nothing to undo).
      return {
        state: { ...s, status: 'aborting', vote, attempts: 1 },
        actions: [
          { type: 'reply-vote', vote },
          { type: 'call-app', hook: 'abort' },
        ],
      }
  }
}

function onPreparedLogged(s: ParticipantState, env: Env): ParticipantTransition {
  if (s.status !== 'logging') return same(s)
  if (s.onePhase) {
    // PREPARED(onePhase) is durable: the decision is commit, deadline or not.
    return {
      state: { ...s, status: 'committing', vote: { kind: 'prepared' }, attempts: 1 },
      actions: [{ type: 'call-app', hook: 'commit' }],
    }
  }
  const prepared: ParticipantState = { ...s, status: 'prepared', vote: { kind: 'prepared' }, attempts: 0 }
  const actions: ParticipantAction[] = [{ type: 'reply-vote', vote: { kind: 'prepared' } }]
  // The deadline passed while preparing (it was ignored then): start asking for the outcome now.
  if (env.now >= s.deadline)
    return { state: { ...prepared, attempts: 1 }, actions: [...actions, { type: 'query-outcome' }] }
  return { state: prepared, actions }
}

function onCommit(s: ParticipantState): ParticipantTransition {
  switch (s.status) {
    case 'prepared':
      return { state: { ...s, status: 'committing', attempts: 1 }, actions: [{ type: 'call-app', hook: 'commit' }] }
    case 'committed':
    case 'aborted':
      return done(s)
    case 'active':
    case 'recording':
    case 'preparing':
    case 'logging':
      // Commit for a branch that never voted yes is a protocol violation: ignore it (the driver
      // answers 409; the coordinator retries and by then we may be prepared).
      return same(s)
    case 'committing':
    case 'aborting':
      // Already under way: the driver answers at reply-done.
      return same(s)
  }
}

function onAbort(s: ParticipantState): ParticipantTransition {
  switch (s.status) {
    case 'active':
    case 'prepared':
      return { state: { ...s, status: 'aborting', attempts: 1 }, actions: [{ type: 'call-app', hook: 'abort' }] }
    case 'recording':
    case 'preparing':
      // Wait for PREPARING's write (preparing-logged) or the app's prepare (app-voted) to return
      // before calling abort: an abort must never overtake the prepare call.
      return { state: { ...s, status: 'aborting', attempts: 0 }, actions: [] }
    case 'logging':
      // The app is prepared, PREPARED is being written: the coordinator has decided without our
      // vote, so answer the pending prepare with no and undo.
      return {
        state: { ...s, status: 'aborting', attempts: 1 },
        actions: [
          { type: 'reply-vote', vote: ABORTED_VOTE },
          { type: 'call-app', hook: 'abort' },
        ],
      }
    case 'committed':
    case 'aborted':
      return done(s)
    case 'committing':
    case 'aborting':
      return same(s)
  }
}

/** An already finished branch answers a repeated decision with its own outcome (idempotent). */
function done(s: ParticipantState): ParticipantTransition {
  return { state: s, actions: [{ type: 'reply-done', outcome: s.status === 'committed' ? 'committed' : 'aborted' }] }
}

function onAppDone(s: ParticipantState, env: Env): ParticipantTransition {
  if (!callPending(s)) return same(s)
  const outcome: Outcome = s.status === 'committing' ? 'committed' : 'aborted'
  if (s.onePhase && outcome === 'committed') {
    // Answer now; keep PREPARED(onePhase) (a restart commits again, idempotently) until the
    // coordinator has the answer. Ask after a short wait: the answer is on its way to it.
    return {
      state: { ...s, status: 'committed', attempts: 1 },
      actions: [
        { type: 'reply-done', outcome },
        { type: 'schedule-retry', delayMs: backoffMs(1, env.random) },
      ],
    }
  }
  // log-end before reply-done: for a commit, END must be durable before the coordinator hears
  // done and may forget the transaction (else a restart would find PREPARED, ask, and be told
  // "aborted" by presumed abort).
  return {
    state: { ...s, status: outcome },
    actions: [
      { type: 'log-end', outcome },
      { type: 'reply-done', outcome },
    ],
  }
}

function onRetryDue(s: ParticipantState): ParticipantTransition {
  if (s.status === 'committing')
    return { state: { ...s, attempts: s.attempts + 1 }, actions: [{ type: 'call-app', hook: 'commit' }] }
  if (s.status === 'aborting' && s.attempts > 0)
    return { state: { ...s, attempts: s.attempts + 1 }, actions: [{ type: 'call-app', hook: 'abort' }] }
  if (querying(s)) return { state: { ...s, attempts: s.attempts + 1 }, actions: [{ type: 'query-outcome' }] }
  return same(s)
}

function onDeadline(s: ParticipantState): ParticipantTransition {
  if (s.status === 'active') {
    // Never prepared: abort alone (DESIGN.md "Enlistment"). A later prepare is answered no.
    return { state: { ...s, status: 'aborting', attempts: 1 }, actions: [{ type: 'call-app', hook: 'abort' }] }
  }
  if (s.status === 'prepared' && s.attempts === 0) {
    // In doubt: a prepared branch must never decide alone.
    return { state: { ...s, attempts: 1 }, actions: [{ type: 'query-outcome' }] }
  }
  // preparing/logging: the running step finishes first (prepared-logged checks the deadline).
  return same(s)
}

/** Capped exponential backoff with full jitter (attempt 1 = the first call failed). */
function backoffMs(attempt: number, random: () => number): number {
  return fullJitterMs(attempt, LIMITS.branchRetryBaseMs, LIMITS.branchRetryCapMs, random)
}

function checkInvariants(s: ParticipantState): void {
  if (s.status === 'prepared' || s.status === 'committing')
    assert(s.vote?.kind === 'prepared', `${s.tx}/${s.branch}: ${s.status} without a yes vote`)
  if (s.status === 'committed')
    assert(s.vote !== undefined && s.vote.kind !== 'refused', `${s.tx}/${s.branch}: committed without a yes vote`)
  assert(s.attempts >= 0, `${s.tx}/${s.branch}: negative attempts`)
  assert(
    !(s.onePhase && s.status === 'prepared'),
    `${s.tx}/${s.branch}: a one-phase branch waits for nobody's decision`,
  )
}
