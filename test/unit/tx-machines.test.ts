// The pure 2PC machines, one behaviour at a time (DESIGN.md "Commit protocol"). The simulation
// (test/simulation) checks them together under faults; these pin each rule down.
import { describe, expect, it } from 'vitest'
import { LIMITS } from '../../src/limits.js'
import type {
  CoordinatorAction,
  CoordinatorEvent,
  CoordinatorState,
  Env,
  ParticipantEvent,
  ParticipantRef,
  ParticipantState,
  Vote,
} from '../../src/tx/core.js'
import {
  coordinatorOutcome,
  coordinatorTransition,
  newCoordinator,
  recoverCoordinator,
} from '../../src/tx/coordinator/machine.js'
import {
  newParticipant,
  participantTransition,
  recoverParticipant,
  recoverUnvoted,
} from '../../src/tx/participant/machine.js'

const env = (now = 0, random = 0.5): Env => ({ now, random: () => random })
const ref = (i: number): ParticipantRef => ({ service: `svc${i}`, control: `10.0.0.${i}:15010`, branch: `b${i}` })
const YES: Vote = { kind: 'prepared' }
const RO: Vote = { kind: 'read-only' }
const NO: Vote = { kind: 'refused', reason: 'insufficient funds' }

/** Feeds events in order; returns the final state and every action, step by step. */
function runC(
  state: CoordinatorState,
  events: readonly CoordinatorEvent[],
  e: Env = env(),
): { state: CoordinatorState; steps: (readonly CoordinatorAction[])[] } {
  const steps: (readonly CoordinatorAction[])[] = []
  for (const ev of events) {
    const s = coordinatorTransition(state, ev, e)
    state = s.state
    steps.push(s.actions)
  }
  return { state, steps }
}

function last<T>(xs: readonly T[]): T {
  const x = xs[xs.length - 1]
  if (x === undefined) throw new Error('empty')
  return x
}

function enlisted(n: number): CoordinatorState {
  return runC(newCoordinator('tx1', 10_000), [
    { type: 'enlist', participants: Array.from({ length: n }, (_, i) => ref(i)) },
  ]).state
}

function preparing(n: number): CoordinatorState {
  return coordinatorTransition(enlisted(n), { type: 'commit-requested' }, env()).state
}

/**
 * Two-phase commit where b0 is the only branch still to vote (b1 voted read-only): what a single
 * participant went through before one-phase commit (a lone participant now takes one phase).
 */
function preparing2pc(): CoordinatorState {
  return coordinatorTransition(preparing(2), { type: 'vote', branch: 'b1', vote: RO }, env()).state
}

const types = (actions: readonly { type: string }[]): string[] => actions.map((a) => a.type)

describe('coordinator machine', () => {
  it('commits at once with no participants and logs no decision', () => {
    const s = coordinatorTransition(newCoordinator('tx1', 1000), { type: 'commit-requested' }, env())
    expect(s.state.status).toBe('committed')
    expect(s.actions).toEqual([{ type: 'outcome', outcome: 'committed' }, { type: 'log-end' }])
    expect(s.state.decisionLogged).toBe(false)
  })

  it('prepares every enlisted participant when the app commits', () => {
    const s = coordinatorTransition(enlisted(3), { type: 'commit-requested' }, env())
    expect(s.state.status).toBe('preparing')
    expect(s.actions).toEqual([0, 1, 2].map((i) => ({ type: 'send-prepare', to: ref(i) })))
  })

  it('enlisting the same branch twice is idempotent', () => {
    const s = runC(newCoordinator('tx1', 1000), [
      { type: 'enlist', participants: [ref(0), ref(0)] },
      { type: 'enlist', participants: [ref(0), ref(1)] },
      { type: 'enlist', participants: [ref(1)] },
    ]).state
    expect(s.participants.map((p) => p.ref.branch)).toEqual(['b0', 'b1'])
  })

  it('force-writes the decision before any commit goes out, then commits every prepared participant', () => {
    const r = runC(preparing(2), [
      { type: 'vote', branch: 'b0', vote: YES },
      { type: 'vote', branch: 'b1', vote: YES },
    ])
    expect(r.steps[0]).toEqual([])
    expect(r.steps[1]).toEqual([{ type: 'log-decision', participants: [ref(0), ref(1)] }])
    expect(r.state).toMatchObject({ status: 'committing', decisionLogged: false })
    expect(coordinatorOutcome(r.state)).toBe('unknown')
    const logged = coordinatorTransition(r.state, { type: 'decision-logged' }, env())
    expect(logged.actions).toEqual([
      { type: 'outcome', outcome: 'committed' },
      { type: 'send-commit', to: ref(0) },
      { type: 'send-commit', to: ref(1) },
    ])
    expect(coordinatorOutcome(logged.state)).toBe('committed')
    const done = runC(logged.state, [
      { type: 'ack', branch: 'b0' },
      { type: 'ack', branch: 'b1' },
    ])
    expect(done.steps).toEqual([[], [{ type: 'log-end' }]])
    expect(done.state.status).toBe('committed')
  })

  it('aborts every branch when one participant votes no, without logging anything', () => {
    const r = runC(preparing(3), [
      { type: 'vote', branch: 'b0', vote: YES },
      { type: 'vote', branch: 'b1', vote: NO },
    ])
    expect(r.state.status).toBe('aborting')
    expect(r.state.reason).toContain('insufficient funds')
    const actions = last(r.steps)
    expect(actions).toContainEqual({ type: 'outcome', outcome: 'aborted', reason: r.state.reason })
    // b0 is prepared and b2 has not answered yet; b1 said no, which is no proof it holds
    // nothing (a prepare that timed out arrives as a no): all three hear abort.
    expect(actions.filter((a) => a.type === 'send-abort')).toEqual([
      { type: 'send-abort', to: ref(0) },
      { type: 'send-abort', to: ref(1) },
      { type: 'send-abort', to: ref(2) },
    ])
    expect(types(r.steps.flat())).not.toContain('log-decision')
    // The vote still on its way changes nothing.
    expect(coordinatorTransition(r.state, { type: 'vote', branch: 'b2', vote: YES }, env()).actions).toEqual([])
  })

  it('one prepare failure aborts, and the branch whose prepare timed out hears abort too', () => {
    const s = coordinatorTransition(
      preparing2pc(),
      { type: 'vote', branch: 'b0', vote: { kind: 'refused', reason: 'prepare timed out' } },
      env(),
    )
    // The app behind b0 may prepare after the timeout: it must be told to abort (b1 voted
    // read-only: it holds nothing).
    expect(s.state.status).toBe('aborting')
    expect(s.actions).toEqual([
      { type: 'outcome', outcome: 'aborted', reason: s.state.reason },
      { type: 'send-abort', to: ref(0) },
    ])
    const acked = runC(s.state, [{ type: 'ack', branch: 'b0' }])
    expect(acked.state.status).toBe('aborted')
  })

  it('commits without a decision record when every vote is read-only', () => {
    const r = runC(preparing(2), [
      { type: 'vote', branch: 'b0', vote: RO },
      { type: 'vote', branch: 'b1', vote: RO },
    ])
    expect(r.state.status).toBe('committed')
    expect(last(r.steps)).toEqual([{ type: 'outcome', outcome: 'committed' }, { type: 'log-end' }])
  })

  it('skips phase 2 for read-only participants', () => {
    const r = runC(preparing(2), [
      { type: 'vote', branch: 'b0', vote: RO },
      { type: 'vote', branch: 'b1', vote: YES },
      { type: 'decision-logged' },
    ])
    expect(r.steps[1]).toEqual([{ type: 'log-decision', participants: [ref(1)] }])
    expect(r.steps[2]).toEqual([
      { type: 'outcome', outcome: 'committed' },
      { type: 'send-commit', to: ref(1) },
    ])
    expect(coordinatorTransition(r.state, { type: 'ack', branch: 'b1' }, env()).actions).toEqual([{ type: 'log-end' }])
  })

  it('a phase-2 answer with the other outcome is a heuristic one: finished, reported, not an acknowledgement', () => {
    const r = runC(preparing(2), [
      { type: 'vote', branch: 'b0', vote: YES },
      { type: 'vote', branch: 'b1', vote: YES },
      { type: 'decision-logged' },
      { type: 'ack', branch: 'b0', outcome: 'committed' },
      { type: 'ack', branch: 'b1', outcome: 'aborted' },
    ])
    expect(r.state.status).toBe('committed')
    expect(r.state.participants.map((p) => p.heuristic)).toEqual([undefined, 'aborted'])
    expect(last(r.steps)).toEqual([{ type: 'heuristic', to: ref(1), outcome: 'aborted' }, { type: 'log-end' }])
  })

  it('a COMMIT record the log refused before writing anything aborts the transaction, every branch told', () => {
    const r = runC(preparing(2), [
      { type: 'vote', branch: 'b0', vote: YES },
      { type: 'vote', branch: 'b1', vote: YES },
      { type: 'decision-refused', reason: 'record too large' },
    ])
    expect(r.state.status).toBe('aborting')
    expect(last(r.steps)).toEqual([
      { type: 'outcome', outcome: 'aborted', reason: 'record too large' },
      { type: 'send-abort', to: ref(0) },
      { type: 'send-abort', to: ref(1) },
    ])
    // Once logged, a refusal cannot arrive; if it did it would change nothing.
    const logged = runC(preparing(2), [
      { type: 'vote', branch: 'b0', vote: YES },
      { type: 'vote', branch: 'b1', vote: YES },
      { type: 'decision-logged' },
    ]).state
    expect(coordinatorTransition(logged, { type: 'decision-refused', reason: 'x' }, env()).actions).toEqual([])
  })

  it('duplicate ack is harmless', () => {
    const r = runC(preparing(2), [
      { type: 'vote', branch: 'b0', vote: YES },
      { type: 'vote', branch: 'b1', vote: YES },
      { type: 'decision-logged' },
      { type: 'ack', branch: 'b0' },
      { type: 'ack', branch: 'b0' },
      { type: 'ack', branch: 'nobody' },
    ])
    expect(r.steps.slice(4)).toEqual([[], []])
    expect(r.state.status).toBe('committing')
    const done = runC(r.state, [
      { type: 'ack', branch: 'b1' },
      { type: 'ack', branch: 'b1' },
      { type: 'send-failed', branch: 'b1' },
      { type: 'retry-due', branch: 'b1' },
    ])
    expect(done.steps).toEqual([[{ type: 'log-end' }], [], [], []])
  })

  it('ignores a vote from an unknown branch, a second vote, and votes before prepare', () => {
    const s = preparing(2)
    expect(coordinatorTransition(s, { type: 'vote', branch: 'stranger', vote: YES }, env())).toEqual({
      state: s,
      actions: [],
    })
    const once = coordinatorTransition(s, { type: 'vote', branch: 'b0', vote: YES }, env()).state
    expect(coordinatorTransition(once, { type: 'vote', branch: 'b0', vote: NO }, env())).toEqual({
      state: once,
      actions: [],
    })
    const active = enlisted(1)
    expect(coordinatorTransition(active, { type: 'vote', branch: 'b0', vote: YES }, env())).toEqual({
      state: active,
      actions: [],
    })
  })

  it('a vote after the decision is a no-op', () => {
    const committing = runC(preparing2pc(), [
      { type: 'vote', branch: 'b0', vote: YES },
      { type: 'decision-logged' },
    ]).state
    expect(coordinatorTransition(committing, { type: 'vote', branch: 'b0', vote: NO }, env())).toEqual({
      state: committing,
      actions: [],
    })
    const aborted = coordinatorTransition(preparing(2), { type: 'vote', branch: 'b0', vote: NO }, env()).state
    expect(coordinatorTransition(aborted, { type: 'vote', branch: 'b1', vote: YES }, env())).toEqual({
      state: aborted,
      actions: [],
    })
  })

  it('retries a failed commit send with capped exponential backoff and full jitter, forever', () => {
    let s = runC(preparing2pc(), [{ type: 'vote', branch: 'b0', vote: YES }, { type: 'decision-logged' }]).state
    const delays: number[] = []
    for (let i = 0; i < 12; i++) {
      const failed = coordinatorTransition(s, { type: 'send-failed', branch: 'b0' }, env(0, 0.999999))
      const retry = failed.actions[0]
      if (retry?.type !== 'schedule-retry') throw new Error('no retry scheduled')
      expect(retry.branch).toBe('b0')
      delays.push(retry.delayMs)
      const due = coordinatorTransition(failed.state, { type: 'retry-due', branch: 'b0' }, env())
      expect(due.actions).toEqual([{ type: 'send-commit', to: ref(0) }])
      s = due.state
    }
    const base = LIMITS.phase2BackoffBaseMs
    expect(delays.slice(0, 4)).toEqual([base - 1, 2 * base - 1, 4 * base - 1, 8 * base - 1])
    expect(Math.max(...delays)).toBe(LIMITS.phase2BackoffCapMs - 1)
    // Full jitter: with random() = 0 the wait is 0.
    const zero = coordinatorTransition(s, { type: 'send-failed', branch: 'b0' }, env(0, 0)).actions[0]
    expect(zero).toEqual({ type: 'schedule-retry', branch: 'b0', delayMs: 0 })
  })

  it('retries abort sends a bounded number of times, then forgets the transaction (presumed abort)', () => {
    let s = coordinatorTransition(enlisted(1), { type: 'abort-requested', reason: 'app said so' }, env()).state
    expect(s.status).toBe('aborting')
    let sends = 1
    for (;;) {
      const failed = coordinatorTransition(s, { type: 'send-failed', branch: 'b0' }, env())
      s = failed.state
      if (failed.actions[0]?.type !== 'schedule-retry') {
        expect(failed.actions).toEqual([{ type: 'log-end' }])
        break
      }
      const due = coordinatorTransition(s, { type: 'retry-due', branch: 'b0' }, env())
      expect(due.actions).toEqual([{ type: 'send-abort', to: ref(0) }])
      s = due.state
      sends++
    }
    expect(sends).toBe(LIMITS.abortSendAttempts)
    expect(s.status).toBe('aborted')
    expect(coordinatorOutcome(s)).toBe('aborted')
  })

  it('aborts on the deadline while active or preparing, not once committing', () => {
    const a = coordinatorTransition(enlisted(1), { type: 'deadline' }, env())
    expect(a.state).toMatchObject({ status: 'aborting', reason: 'deadline' })
    expect(a.actions).toEqual([
      { type: 'outcome', outcome: 'aborted', reason: 'deadline' },
      { type: 'send-abort', to: ref(0) },
    ])
    expect(coordinatorTransition(preparing2pc(), { type: 'deadline' }, env()).state.status).toBe('aborting')
    const committing = coordinatorTransition(preparing2pc(), { type: 'vote', branch: 'b0', vote: YES }, env()).state
    expect(coordinatorTransition(committing, { type: 'deadline' }, env())).toEqual({ state: committing, actions: [] })
  })

  it('an abort request while the COMMIT record is being written waits for the commit', () => {
    const committing = coordinatorTransition(preparing2pc(), { type: 'vote', branch: 'b0', vote: YES }, env()).state
    expect(coordinatorTransition(committing, { type: 'abort-requested', reason: 'impatient' }, env())).toEqual({
      state: committing,
      actions: [],
    })
    expect(coordinatorTransition(committing, { type: 'commit-requested' }, env())).toEqual({
      state: committing,
      actions: [],
    })
  })

  it('a branch enlisted after prepare began aborts the transaction, and hears abort too', () => {
    const s = coordinatorTransition(preparing2pc(), { type: 'enlist', participants: [ref(0), ref(7)] }, env())
    expect(s.state).toMatchObject({ status: 'aborting', reason: 'late enlistment' })
    expect(s.actions).toContainEqual({ type: 'send-abort', to: ref(7) })
    expect(s.actions).toContainEqual({ type: 'send-abort', to: ref(0) })
    // Re-enlisting a known branch after prepare is not late: nothing happens.
    const p = preparing(2)
    expect(coordinatorTransition(p, { type: 'enlist', participants: [ref(1)] }, env())).toEqual({
      state: p,
      actions: [],
    })
  })

  it('a branch enlisted after the decision hears abort and leaves the outcome alone', () => {
    const committing = runC(preparing2pc(), [
      { type: 'vote', branch: 'b0', vote: YES },
      { type: 'decision-logged' },
    ]).state
    const s = coordinatorTransition(committing, { type: 'enlist', participants: [ref(5)] }, env())
    expect(s.state).toEqual(committing)
    expect(s.actions).toEqual([{ type: 'send-abort', to: ref(5) }])
  })

  it(`aborts when more than ${LIMITS.maxParticipants} participants enlist`, () => {
    const full = enlisted(LIMITS.maxParticipants)
    expect(full.participants).toHaveLength(LIMITS.maxParticipants)
    const s = coordinatorTransition(full, { type: 'enlist', participants: [ref(1000)] }, env())
    expect(s.state.status).toBe('aborting')
    expect(s.state.participants).toHaveLength(LIMITS.maxParticipants)
    expect(s.actions).toContainEqual({ type: 'send-abort', to: ref(1000) })
  })

  it('recovers a logged COMMIT decision and sends commit to every participant', () => {
    const r = recoverCoordinator('tx9', [ref(0), ref(1), ref(1)], env(5_000))
    expect(r.state).toMatchObject({ id: 'tx9', status: 'committing', decisionLogged: true })
    expect(r.actions).toEqual([
      { type: 'send-commit', to: ref(0) },
      { type: 'send-commit', to: ref(1) },
    ])
    expect(coordinatorOutcome(r.state)).toBe('committed')
    // A participant that already finished answers done: acks end it.
    const done = runC(r.state, [
      { type: 'ack', branch: 'b0' },
      { type: 'ack', branch: 'b1' },
    ])
    expect(done.state.status).toBe('committed')
    expect(last(done.steps)).toEqual([{ type: 'log-end' }])
  })

  it('answers outcome queries by presumed abort', () => {
    expect(coordinatorOutcome(undefined)).toBe('aborted')
    expect(coordinatorOutcome(enlisted(1))).toBe('unknown')
    expect(coordinatorOutcome(preparing2pc())).toBe('unknown')
    expect(coordinatorOutcome(coordinatorTransition(enlisted(1), { type: 'deadline' }, env()).state)).toBe('aborted')
  })

  it('ignores phase-2 events before phase 2', () => {
    const committing = coordinatorTransition(preparing2pc(), { type: 'vote', branch: 'b0', vote: YES }, env()).state
    for (const ev of [
      { type: 'ack', branch: 'b0' },
      { type: 'send-failed', branch: 'b0' },
      { type: 'retry-due', branch: 'b0' },
    ] as const) {
      expect(coordinatorTransition(committing, ev, env())).toEqual({ state: committing, actions: [] })
    }
    const d = coordinatorTransition(committing, { type: 'decision-logged' }, env()).state
    expect(coordinatorTransition(d, { type: 'decision-logged' }, env())).toEqual({ state: d, actions: [] })
  })
})

describe('coordinator machine: one-phase commit', () => {
  const onePhase = (): CoordinatorState => coordinatorTransition(enlisted(1), { type: 'commit-requested' }, env()).state

  it('commits a single participant in one phase without a coordinator log write', () => {
    const started = coordinatorTransition(enlisted(1), { type: 'commit-requested' }, env())
    expect(started.state).toMatchObject({ status: 'committing', onePhase: true, decisionLogged: false })
    expect(started.actions).toEqual([{ type: 'send-commit-one-phase', to: ref(0) }])
    // The participant decides: until it answers, the coordinator does not know the outcome.
    expect(coordinatorOutcome(started.state)).toBe('unknown')
    const done = coordinatorTransition(
      started.state,
      { type: 'one-phase-result', branch: 'b0', outcome: 'committed' },
      env(),
    )
    expect(done.actions).toEqual([{ type: 'outcome', outcome: 'committed' }, { type: 'log-end' }])
    expect(done.state).toMatchObject({ status: 'committed', decisionLogged: false })
    expect(done.state.participants[0]).toMatchObject({ acked: true, vote: YES })
    expect(coordinatorOutcome(done.state)).toBe('committed')
    expect(types([...started.actions, ...done.actions])).not.toContain('log-decision')
  })

  it('reports the participant’s one-phase abort, logging nothing', () => {
    const r = coordinatorTransition(onePhase(), { type: 'one-phase-result', branch: 'b0', outcome: 'aborted' }, env())
    expect(r.state.status).toBe('aborted')
    expect(r.actions).toEqual([{ type: 'outcome', outcome: 'aborted', reason: r.state.reason }, { type: 'log-end' }])
    expect(r.state.reason).toContain('one-phase')
  })

  it('resends commit-one-phase after a failed send, with backoff, and never reports aborted for it', () => {
    let s = onePhase()
    for (let i = 0; i < 10; i++) {
      const failed = coordinatorTransition(s, { type: 'send-failed', branch: 'b0' }, env(0, 0.999999))
      expect(types(failed.actions)).toEqual(['schedule-retry'])
      expect(coordinatorOutcome(failed.state)).toBe('unknown')
      const due = coordinatorTransition(failed.state, { type: 'retry-due', branch: 'b0' }, env())
      expect(due.actions).toEqual([{ type: 'send-commit-one-phase', to: ref(0) }])
      s = due.state
    }
    expect(s.status).toBe('committing')
    expect(
      coordinatorTransition(s, { type: 'one-phase-result', branch: 'b0', outcome: 'committed' }, env()).state.status,
    ).toBe('committed')
  })

  it('neither the deadline nor an abort request takes a one-phase commit from its participant', () => {
    const s = onePhase()
    for (const ev of [
      { type: 'deadline' },
      { type: 'abort-requested', reason: 'impatient' },
      { type: 'commit-requested' },
      { type: 'decision-logged' },
      { type: 'ack', branch: 'b0' },
      { type: 'vote', branch: 'b0', vote: NO },
    ] as const) {
      expect(coordinatorTransition(s, ev, env()), ev.type).toEqual({ state: s, actions: [] })
    }
  })

  it('a branch enlisted during a one-phase commit hears abort; the participant stays the only one', () => {
    const s = onePhase()
    const r = coordinatorTransition(s, { type: 'enlist', participants: [ref(0), ref(5)] }, env())
    expect(r.state).toEqual(s)
    expect(r.actions).toEqual([{ type: 'send-abort', to: ref(5) }])
  })

  it('ignores stale, duplicate and stray one-phase results', () => {
    const active = enlisted(1)
    expect(
      coordinatorTransition(active, { type: 'one-phase-result', branch: 'b0', outcome: 'committed' }, env()),
    ).toEqual({ state: active, actions: [] })
    const s = onePhase()
    expect(
      coordinatorTransition(s, { type: 'one-phase-result', branch: 'stranger', outcome: 'aborted' }, env()),
    ).toEqual({ state: s, actions: [] })
    const done = coordinatorTransition(s, { type: 'one-phase-result', branch: 'b0', outcome: 'committed' }, env()).state
    expect(coordinatorTransition(done, { type: 'one-phase-result', branch: 'b0', outcome: 'aborted' }, env())).toEqual({
      state: done,
      actions: [],
    })
    expect(coordinatorTransition(done, { type: 'send-failed', branch: 'b0' }, env())).toEqual({
      state: done,
      actions: [],
    })
    // Two participants still prepare.
    expect(types(coordinatorTransition(enlisted(2), { type: 'commit-requested' }, env()).actions)).toEqual([
      'send-prepare',
      'send-prepare',
    ])
  })
})

/** Feeds events in order; returns the final state and the actions of each step. */
function runP(state: ParticipantState, events: readonly ParticipantEvent[], e: Env = env()) {
  const steps: (readonly { type: string }[])[] = []
  for (const ev of events) {
    const s = participantTransition(state, ev, e)
    state = s.state
    steps.push(s.actions)
  }
  return { state, steps }
}

const fresh = (): ParticipantState => newParticipant('tx1', 'b0', 'coord:15010', 1_000)
/** PREPARING is durable: the app may be asked to prepare. */
const LOGGED: ParticipantEvent = { type: 'preparing-logged', ok: true }
const preparedP = (): ParticipantState =>
  runP(fresh(), [{ type: 'prepare' }, LOGGED, { type: 'app-voted', vote: YES }, { type: 'prepared-logged' }]).state

describe('participant machine', () => {
  it('asks the app to prepare, force-writes PREPARED, and only then votes yes', () => {
    const r = runP(fresh(), [
      { type: 'prepare' },
      LOGGED,
      { type: 'app-voted', vote: YES },
      { type: 'prepared-logged' },
    ])
    expect(r.steps).toEqual([
      [{ type: 'log-preparing' }],
      [{ type: 'call-app', hook: 'prepare' }],
      [{ type: 'log-prepared' }],
      [{ type: 'reply-vote', vote: YES }],
    ])
    expect(r.state).toMatchObject({ status: 'prepared', vote: YES })
  })

  it('a read-only vote finishes the branch at once (END before the vote: PREPARING alone would abort it)', () => {
    const r = runP(fresh(), [{ type: 'prepare' }, LOGGED, { type: 'app-voted', vote: RO }])
    expect(r.state.status).toBe('committed')
    expect(last(r.steps)).toEqual([
      { type: 'log-end', outcome: 'committed' },
      { type: 'reply-vote', vote: RO },
    ])
  })

  it('a no vote answers no and rolls the app back until the app confirms', () => {
    const r = runP(fresh(), [{ type: 'prepare' }, LOGGED, { type: 'app-voted', vote: NO }])
    expect(last(r.steps)).toEqual([
      { type: 'reply-vote', vote: NO },
      { type: 'call-app', hook: 'abort' },
    ])
    expect(r.state.status).toBe('aborting')
    const failed = participantTransition(r.state, { type: 'app-failed' }, env())
    expect(types(failed.actions)).toEqual(['schedule-retry'])
    expect(participantTransition(failed.state, { type: 'retry-due' }, env()).actions).toEqual([
      { type: 'call-app', hook: 'abort' },
    ])
    const done = participantTransition(r.state, { type: 'app-done' }, env())
    expect(done.state.status).toBe('aborted')
    expect(done.actions).toContainEqual({ type: 'log-end', outcome: 'aborted' })
  })

  it('answers duplicate prepares from what it already knows', () => {
    const preparing = runP(fresh(), [{ type: 'prepare' }, LOGGED]).state
    expect(participantTransition(preparing, { type: 'prepare' }, env()).actions).toEqual([])
    const logging = participantTransition(preparing, { type: 'app-voted', vote: YES }, env()).state
    expect(participantTransition(logging, { type: 'prepare' }, env()).actions).toEqual([])
    expect(participantTransition(preparedP(), { type: 'prepare' }, env()).actions).toEqual([
      { type: 'reply-vote', vote: YES },
    ])
    const aborted = runP(fresh(), [{ type: 'decision', outcome: 'aborted' }, { type: 'app-done' }]).state
    expect(aborted.status).toBe('aborted')
    const again = participantTransition(aborted, { type: 'prepare' }, env()).actions
    expect(again).toHaveLength(1)
    expect(again[0]).toMatchObject({ type: 'reply-vote', vote: { kind: 'refused' } })
  })

  it('commits through the app and writes END before answering done', () => {
    const r = runP(preparedP(), [
      { type: 'decision', outcome: 'committed' },
      { type: 'decision', outcome: 'committed' },
      { type: 'app-done' },
    ])
    expect(r.steps).toEqual([
      [{ type: 'call-app', hook: 'commit' }],
      [],
      [
        { type: 'log-end', outcome: 'committed' },
        { type: 'reply-done', outcome: 'committed' },
      ],
    ])
    expect(r.state.status).toBe('committed')
  })

  it('answers a repeated decision for a finished branch with its own outcome', () => {
    const committed = runP(preparedP(), [{ type: 'decision', outcome: 'committed' }, { type: 'app-done' }]).state
    expect(participantTransition(committed, { type: 'decision', outcome: 'committed' }, env()).actions).toEqual([
      { type: 'reply-done', outcome: 'committed' },
    ])
    const aborted = runP(preparedP(), [{ type: 'decision', outcome: 'aborted' }, { type: 'app-done' }]).state
    expect(participantTransition(aborted, { type: 'decision', outcome: 'aborted' }, env()).actions).toEqual([
      { type: 'reply-done', outcome: 'aborted' },
    ])
  })

  it('ignores commit for a branch that never voted yes', () => {
    for (const s of [fresh(), runP(fresh(), [{ type: 'prepare' }, LOGGED]).state]) {
      expect(participantTransition(s, { type: 'decision', outcome: 'committed' }, env())).toEqual({
        state: s,
        actions: [],
      })
    }
  })

  it('aborts through the app on an abort decision while active or prepared', () => {
    for (const s of [fresh(), preparedP()]) {
      const r = participantTransition(s, { type: 'decision', outcome: 'aborted' }, env())
      expect(r.state.status).toBe('aborting')
      expect(r.actions).toEqual([{ type: 'call-app', hook: 'abort' }])
    }
  })

  it('an abort that arrives while the app prepares waits for the prepare call to return', () => {
    const r = runP(fresh(), [
      { type: 'prepare' },
      LOGGED,
      { type: 'decision', outcome: 'aborted' },
      { type: 'app-voted', vote: YES },
      { type: 'app-done' },
    ])
    expect(r.steps[2]).toEqual([])
    expect(r.steps[3]).toEqual([
      { type: 'reply-vote', vote: { kind: 'refused', reason: 'branch aborted' } },
      { type: 'call-app', hook: 'abort' },
    ])
    expect(r.state.status).toBe('aborted')
  })

  it('an abort that arrives while PREPARED is written answers the prepare with no and undoes', () => {
    const r = runP(fresh(), [
      { type: 'prepare' },
      LOGGED,
      { type: 'app-voted', vote: YES },
      { type: 'decision', outcome: 'aborted' },
      { type: 'prepared-logged' },
    ])
    expect(r.steps[3]).toEqual([
      { type: 'reply-vote', vote: { kind: 'refused', reason: 'branch aborted' } },
      { type: 'call-app', hook: 'abort' },
    ])
    expect(r.steps[4]).toEqual([])
  })

  it('a failed PREPARED write votes no', () => {
    const r = runP(fresh(), [
      { type: 'prepare' },
      LOGGED,
      { type: 'app-voted', vote: YES },
      { type: 'app-voted', vote: { kind: 'refused', reason: 'cannot log PREPARED' } },
    ])
    expect(r.state.status).toBe('aborting')
    expect(last(r.steps)).toEqual([
      { type: 'reply-vote', vote: { kind: 'refused', reason: 'cannot log PREPARED' } },
      { type: 'call-app', hook: 'abort' },
    ])
  })

  it('writes PREPARING before the app is asked to prepare, and asks nothing while it is written', () => {
    const recording = participantTransition(fresh(), { type: 'prepare' }, env())
    expect(recording.actions).toEqual([{ type: 'log-preparing' }])
    expect(recording.state.status).toBe('recording')
    // A duplicate prepare, a commit and the deadline wait for the write.
    expect(participantTransition(recording.state, { type: 'prepare' }, env()).actions).toEqual([])
    expect(participantTransition(recording.state, { type: 'decision', outcome: 'committed' }, env()).actions).toEqual(
      [],
    )
    expect(participantTransition(recording.state, { type: 'deadline' }, env(5_000)).actions).toEqual([])
  })

  it('a PREPARING that cannot be written votes no and undoes, without asking the app to prepare', () => {
    const r = runP(fresh(), [{ type: 'prepare' }, { type: 'preparing-logged', ok: false }])
    expect(r.state.status).toBe('aborting')
    expect(last(r.steps)).toEqual([
      { type: 'reply-vote', vote: { kind: 'refused', reason: 'cannot log PREPARING' } },
      { type: 'call-app', hook: 'abort' },
    ])
    expect(r.steps.flat()).not.toContainEqual({ type: 'call-app', hook: 'prepare' })
  })

  it('an abort that arrives while PREPARING is written undoes once the write returns, never preparing', () => {
    const r = runP(fresh(), [
      { type: 'prepare' },
      { type: 'decision', outcome: 'aborted' },
      LOGGED,
      { type: 'app-done' },
    ])
    expect(r.steps[1]).toEqual([])
    expect(r.steps[2]).toEqual([
      { type: 'reply-vote', vote: { kind: 'refused', reason: 'branch aborted' } },
      { type: 'call-app', hook: 'abort' },
    ])
    expect(r.state.status).toBe('aborted')
  })

  it('a branch recovered with PREPARING and no PREPARED never voted: it aborts alone until the app answers', () => {
    const r = recoverUnvoted('tx1', 'b0', 'coord:15010', 1_000)
    expect(r.state.status).toBe('aborting')
    expect(r.actions).toEqual([{ type: 'call-app', hook: 'abort' }])
    const failed = participantTransition(r.state, { type: 'app-failed' }, env())
    expect(failed.actions[0]?.type).toBe('schedule-retry')
    expect(participantTransition(failed.state, { type: 'retry-due' }, env()).actions).toEqual([
      { type: 'call-app', hook: 'abort' },
    ])
    expect(participantTransition(r.state, { type: 'app-done' }, env()).actions).toContainEqual({
      type: 'log-end',
      outcome: 'aborted',
    })
  })

  it('retries a failing commit hook with capped backoff until the app answers', () => {
    let s = participantTransition(preparedP(), { type: 'decision', outcome: 'committed' }, env()).state
    const delays: number[] = []
    for (let i = 0; i < 10; i++) {
      const failed = participantTransition(s, { type: 'app-failed' }, env(0, 0.999999))
      const a = failed.actions[0]
      if (a?.type !== 'schedule-retry') throw new Error('no retry')
      delays.push(a.delayMs)
      const due = participantTransition(failed.state, { type: 'retry-due' }, env())
      expect(due.actions).toEqual([{ type: 'call-app', hook: 'commit' }])
      s = due.state
    }
    expect(delays[0]).toBe(LIMITS.branchRetryBaseMs - 1)
    expect(delays[1]).toBe(2 * LIMITS.branchRetryBaseMs - 1)
    expect(Math.max(...delays)).toBe(LIMITS.branchRetryCapMs - 1)
    expect(participantTransition(s, { type: 'app-done' }, env()).state.status).toBe('committed')
  })

  it('aborts alone on the deadline while active', () => {
    const r = runP(fresh(), [{ type: 'deadline' }, { type: 'app-done' }])
    expect(r.steps[0]).toEqual([{ type: 'call-app', hook: 'abort' }])
    expect(r.steps[1]).toContainEqual({ type: 'log-end', outcome: 'aborted' })
    expect(r.state.status).toBe('aborted')
  })

  it('never decides alone once prepared: on the deadline it asks the coordinator, and keeps asking', () => {
    const asked = participantTransition(preparedP(), { type: 'deadline' }, env(1_000))
    expect(asked.state.status).toBe('prepared')
    expect(asked.actions).toEqual([{ type: 'query-outcome' }])
    // A second deadline (or one after recovery) does not start a second chain of queries.
    expect(participantTransition(asked.state, { type: 'deadline' }, env(1_000)).actions).toEqual([])
    const unknown = participantTransition(asked.state, { type: 'outcome-unknown' }, env())
    expect(types(unknown.actions)).toEqual(['schedule-retry'])
    expect(participantTransition(unknown.state, { type: 'retry-due' }, env()).actions).toEqual([
      { type: 'query-outcome' },
    ])
    expect(participantTransition(unknown.state, { type: 'decision', outcome: 'aborted' }, env()).actions).toEqual([
      { type: 'call-app', hook: 'abort' },
    ])
  })

  it('asks for the outcome at once when PREPARED lands after the deadline', () => {
    const logging = runP(fresh(), [
      { type: 'prepare' },
      LOGGED,
      { type: 'app-voted', vote: YES },
      { type: 'deadline' },
    ]).state
    expect(logging.status).toBe('logging')
    const r = participantTransition(logging, { type: 'prepared-logged' }, env(5_000))
    expect(r.actions).toEqual([{ type: 'reply-vote', vote: YES }, { type: 'query-outcome' }])
  })

  it('recovers a PREPARED branch in doubt and asks the coordinator', () => {
    const r = recoverParticipant('tx1', 'b0', 'coord:15010', 1_000, env(50_000))
    expect(r.state).toMatchObject({ status: 'prepared', vote: YES })
    expect(r.actions).toEqual([{ type: 'query-outcome' }])
    const committed = runP(r.state, [{ type: 'decision', outcome: 'committed' }, { type: 'app-done' }])
    expect(committed.state.status).toBe('committed')
  })

  it('ignores stray events', () => {
    const s = fresh()
    for (const ev of [
      { type: 'app-done' },
      { type: 'app-failed' },
      { type: 'outcome-unknown' },
      { type: 'retry-due' },
      { type: 'prepared-logged' },
      { type: 'app-voted', vote: YES },
    ] as const) {
      expect(participantTransition(s, ev, env())).toEqual({ state: s, actions: [] })
    }
    const p = preparedP()
    expect(participantTransition(p, { type: 'app-done' }, env())).toEqual({ state: p, actions: [] })
  })
})

describe('participant machine: one-phase commit', () => {
  const onePhaseLogging = (): ParticipantState =>
    runP(fresh(), [{ type: 'commit-one-phase' }, LOGGED, { type: 'app-voted', vote: YES }]).state
  const onePhaseCommitted = (): ParticipantState =>
    runP(onePhaseLogging(), [{ type: 'prepared-logged' }, { type: 'app-done' }]).state

  it('prepares, force-writes PREPARED(onePhase), then commits on its own and answers committed', () => {
    const r = runP(
      fresh(),
      [
        { type: 'commit-one-phase' },
        LOGGED,
        { type: 'app-voted', vote: YES },
        { type: 'prepared-logged' },
        { type: 'app-done' },
      ],
      env(0, 0),
    )
    expect(r.steps).toEqual([
      [{ type: 'log-preparing' }],
      [{ type: 'call-app', hook: 'prepare' }],
      [{ type: 'log-prepared' }],
      [{ type: 'call-app', hook: 'commit' }],
      [
        { type: 'reply-done', outcome: 'committed' },
        { type: 'schedule-retry', delayMs: 0 },
      ],
    ])
    expect(r.state).toMatchObject({ status: 'committed', onePhase: true })
    // No vote goes anywhere and nobody is asked for a decision.
    expect(types(r.steps.flat())).not.toContain('reply-vote')
    expect(types(r.steps.flat())).not.toContain('query-outcome')
  })

  it('keeps a committed one-phase branch until the coordinator no longer waits for its answer', () => {
    const s = onePhaseCommitted()
    // A retried commit-one-phase is answered from the branch.
    expect(participantTransition(s, { type: 'commit-one-phase' }, env()).actions).toEqual([
      { type: 'reply-done', outcome: 'committed' },
    ])
    const asked = participantTransition(s, { type: 'retry-due' }, env())
    expect(asked.actions).toEqual([{ type: 'query-outcome' }])
    // "unknown": the coordinator still waits (its answer is on the way): ask again later.
    const unknown = participantTransition(asked.state, { type: 'outcome-unknown' }, env())
    expect(types(unknown.actions)).toEqual(['schedule-retry'])
    expect(participantTransition(unknown.state, { type: 'retry-due' }, env()).actions).toEqual([
      { type: 'query-outcome' },
    ])
    // Any answer means it no longer waits ("aborted": it forgot the transaction): END, done.
    for (const outcome of ['committed', 'aborted'] as const) {
      const r = participantTransition(unknown.state, { type: 'decision', outcome }, env())
      expect(r.actions).toEqual([{ type: 'log-end', outcome: 'committed' }])
      expect(r.state.status).toBe('committed')
    }
    expect(participantTransition(s, { type: 'deadline' }, env(5_000))).toEqual({ state: s, actions: [] })
  })

  it('a one-phase participant restarted after PREPARED commits on its own', () => {
    const r = recoverParticipant('tx1', 'b0', 'coord:15010', 1_000, env(50_000), true)
    expect(r.state).toMatchObject({ status: 'committing', onePhase: true, vote: YES })
    expect(r.actions).toEqual([{ type: 'call-app', hook: 'commit' }])
    const done = runP(r.state, [{ type: 'app-failed' }, { type: 'retry-due' }, { type: 'app-done' }], env(50_000, 0))
    expect(done.steps[1]).toEqual([{ type: 'call-app', hook: 'commit' }])
    expect(done.steps[2]).toEqual([
      { type: 'reply-done', outcome: 'committed' },
      { type: 'schedule-retry', delayMs: 0 },
    ])
    // A two-phase PREPARED is still in doubt.
    expect(recoverParticipant('tx1', 'b0', 'coord:15010', 1_000, env()).actions).toEqual([{ type: 'query-outcome' }])
  })

  it('the deadline never aborts a one-phase branch once its PREPARED may be on disk', () => {
    const logging = onePhaseLogging()
    expect(participantTransition(logging, { type: 'deadline' }, env(5_000))).toEqual({ state: logging, actions: [] })
    // PREPARED(onePhase) landed after the deadline: still commit, no outcome query.
    const landed = participantTransition(logging, { type: 'prepared-logged' }, env(5_000))
    expect(landed.actions).toEqual([{ type: 'call-app', hook: 'commit' }])
    expect(participantTransition(landed.state, { type: 'deadline' }, env(5_000))).toEqual({
      state: landed.state,
      actions: [],
    })
    // Before any prepare it may still abort alone, and then answers a late commit-one-phase with aborted.
    const alone = runP(fresh(), [{ type: 'deadline' }, { type: 'commit-one-phase' }])
    expect(alone.steps[1]).toEqual([{ type: 'reply-done', outcome: 'aborted' }])
  })

  it('a one-phase no aborts, answers aborted at once and rolls the app back', () => {
    const r = runP(fresh(), [
      { type: 'commit-one-phase' },
      LOGGED,
      { type: 'app-voted', vote: NO },
      { type: 'app-done' },
    ])
    expect(r.steps[2]).toEqual([
      { type: 'reply-done', outcome: 'aborted' },
      { type: 'call-app', hook: 'abort' },
    ])
    expect(r.steps[3]).toContainEqual({ type: 'log-end', outcome: 'aborted' })
    expect(r.state.status).toBe('aborted')
    // A PREPARED(onePhase) write that surely missed the disk aborts the same way.
    const failed = participantTransition(
      onePhaseLogging(),
      { type: 'app-voted', vote: { kind: 'refused', reason: 'cannot log PREPARED' } },
      env(),
    )
    expect(failed.actions).toEqual([
      { type: 'reply-done', outcome: 'aborted' },
      { type: 'call-app', hook: 'abort' },
    ])
  })

  it('a one-phase read-only vote answers committed and finishes', () => {
    const r = runP(fresh(), [{ type: 'commit-one-phase' }, LOGGED, { type: 'app-voted', vote: RO }])
    expect(last(r.steps)).toEqual([
      { type: 'log-end', outcome: 'committed' },
      { type: 'reply-done', outcome: 'committed' },
    ])
  })

  it('a duplicate commit-one-phase while the branch is under way adds nothing', () => {
    const preparingS = participantTransition(fresh(), { type: 'commit-one-phase' }, env()).state
    const committing = participantTransition(onePhaseLogging(), { type: 'prepared-logged' }, env()).state
    for (const s of [preparingS, onePhaseLogging(), committing]) {
      expect(participantTransition(s, { type: 'commit-one-phase' }, env())).toEqual({ state: s, actions: [] })
    }
    // A two-phase branch that voted yes is not finished by a one-phase commit.
    const p = preparedP()
    expect(participantTransition(p, { type: 'commit-one-phase' }, env())).toEqual({ state: p, actions: [] })
  })
})
