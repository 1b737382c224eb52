// The pure machine of step transactions, sagas and TCC (src/tx/saga/machine.ts), one rule at a
// time, then random schedules under fast-check; and the request templates that fill a step's
// compensation or TCC hooks (src/tx/saga/template.ts). test/integration/saga.test.ts runs the
// same rules through real sidecars.
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import type { StepRequestTemplate } from '../../src/config/types.js'
import { LIMITS } from '../../src/limits.js'
import type { BranchId, Env } from '../../src/tx/core.js'
import {
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
import {
  fillTemplate,
  opHeadersProblem,
  parseCompensateHeader,
  requestProblem,
  templateNeeds,
  type CallFacts,
} from '../../src/tx/saga/template.js'

const POLICY: StepPolicy = { attempts: 3, backoffBaseMs: 100, backoffCapMs: 1000 }
const env = (random = 0.5, now = 0): Env => ({ now, random: () => random })

/** Step i of a saga: undone by DELETE /things/i at its origin. */
const sagaStep = (i: number, extra: Partial<StepRecord> = {}): StepRecord => ({
  id: `s${i}`,
  service: `svc${i}`,
  target: `http://10.0.0.${i}:8080`,
  compensate: { method: 'DELETE', path: `/things/${i}` },
  ...extra,
})
/** Step i of a TCC: its target is the participant sidecar's control address. */
const tccStep = (i: number, extra: Partial<StepRecord> = {}): StepRecord => ({
  id: `s${i}`,
  service: `svc${i}`,
  target: `10.0.0.${i}:15010`,
  confirm: { method: 'POST', path: `/confirm/${i}` },
  cancel: { method: 'POST', path: `/cancel/${i}` },
  ...extra,
})
/** A step with no request to finish it. */
const bareStep = (i: number): StepRecord => ({ id: `s${i}`, service: `svc${i}`, target: `http://10.0.0.${i}:8080` })

/** Feeds events in order; returns the final state and every action, event by event. */
function feed(
  state: StepTxState,
  events: readonly StepEvent[],
  e: Env = env(),
): { state: StepTxState; out: (readonly StepAction[])[] } {
  const out: (readonly StepAction[])[] = []
  for (const ev of events) {
    const s = sagaTransition(state, ev, e)
    state = s.state
    out.push(s.actions)
  }
  return { state, out }
}

function withSteps(mode: StepMode, steps: readonly StepRecord[], policy: StepPolicy = POLICY): StepTxState {
  return feed(
    newSagaTx('tx1', mode, 10_000, policy),
    steps.map((step) => ({ type: 'step', step })),
  ).state
}

const run = (step: StepRecord, op: StepOpName, attempt = 1): StepAction => ({ type: 'run', step, op, attempt })
const done = (id: BranchId): StepEvent => ({ type: 'op-done', step: id })
const failed = (id: BranchId, error = 'answered 503'): StepEvent => ({ type: 'op-failed', step: id, error })
const retryDue = (id: BranchId): StepEvent => ({ type: 'retry-due', step: id })
const ABORT: StepEvent = { type: 'abort-requested', reason: 'the app answered 500' }
const COMMIT: StepEvent = { type: 'commit-requested' }
const LOGGED: StepEvent = { type: 'decision-logged' }
const statuses = (s: StepTxState): string[] => s.steps.map((e) => e.status)
const types = (actions: readonly StepAction[]): string[] => actions.map((a) => a.type)

describe('step machine: saga', () => {
  it('records steps while active and runs nothing', () => {
    const r = feed(newSagaTx('tx1', 'saga', 10_000, POLICY), [
      { type: 'step', step: sagaStep(0) },
      { type: 'step', step: sagaStep(1) },
    ])
    expect(r.out).toEqual([[], []])
    expect(statuses(r.state)).toEqual(['recorded', 'recorded'])
    expect(sagaOutcome(r.state)).toBe('unknown')
  })

  it('a step recorded twice is listed once', () => {
    const s = withSteps('saga', [sagaStep(0)])
    const again = sagaTransition(s, { type: 'step', step: sagaStep(0) }, env())
    expect(again.state).toBe(s)
    expect(again.actions).toEqual([])
  })

  it(`refuses a step past LIMITS.maxSteps (${LIMITS.maxSteps})`, () => {
    const s = withSteps(
      'saga',
      Array.from({ length: LIMITS.maxSteps }, (_, i) => sagaStep(i)),
    )
    expect(() => sagaTransition(s, { type: 'step', step: sagaStep(LIMITS.maxSteps) }, env())).toThrow(/more than/)
  })

  it('aborts by compensating in reverse order, one step at a time', () => {
    const s = withSteps('saga', [sagaStep(0), sagaStep(1), sagaStep(2)])
    const r = feed(s, [ABORT, done('s2'), done('s1'), done('s0')])
    expect(r.out[0]).toEqual([
      { type: 'log-decision', outcome: 'aborted' },
      { type: 'outcome', outcome: 'aborted', reason: 'the app answered 500' },
      run(sagaStep(2), 'compensate'),
    ])
    expect(r.out[1]).toEqual([{ type: 'log-step-done', step: 's2' }, run(sagaStep(1), 'compensate')])
    expect(r.out[2]).toEqual([{ type: 'log-step-done', step: 's1' }, run(sagaStep(0), 'compensate')])
    expect(r.out[3]).toEqual([{ type: 'log-step-done', step: 's0' }, { type: 'log-end' }])
    expect(r.state).toMatchObject({ status: 'aborted', reason: 'the app answered 500', decisionLogged: false })
    expect(statuses(r.state)).toEqual(['finished', 'finished', 'finished'])
  })

  it('abort writes a lazy decision and answers at once, before any compensation finished', () => {
    const s = sagaTransition(withSteps('saga', [sagaStep(0), sagaStep(1)]), ABORT, env())
    // Presumed abort: the record is lazy (no decision-logged is awaited) and the outcome is in
    // the same batch of actions as the first compensation.
    expect(types(s.actions)).toEqual(['log-decision', 'outcome', 'run'])
    expect(s.state.status).toBe('aborting')
    expect(s.state.decisionLogged).toBe(false)
    expect(sagaOutcome(s.state)).toBe('aborted')
    // A stray decision-logged changes nothing for an abort.
    expect(sagaTransition(s.state, LOGGED, env()).state).toBe(s.state)
  })

  it('commit force-writes the decision, answers committed only once it is logged, and runs nothing', () => {
    const s = withSteps('saga', [sagaStep(0), sagaStep(1)])
    const asked = sagaTransition(s, COMMIT, env())
    expect(asked.actions).toEqual([{ type: 'log-decision', outcome: 'committed' }])
    expect(asked.state.status).toBe('committing')
    expect(sagaOutcome(asked.state)).toBe('unknown')
    // Until the decision is durable, neither an abort nor the deadline can change it.
    const waiting = feed(asked.state, [ABORT, { type: 'deadline' }, COMMIT])
    expect(waiting.out).toEqual([[], [], []])
    expect(waiting.state).toBe(asked.state)

    const logged = sagaTransition(asked.state, LOGGED, env())
    expect(logged.actions).toEqual([
      { type: 'outcome', outcome: 'committed' },
      { type: 'log-step-done', step: 's1' },
      { type: 'log-step-done', step: 's0' },
      { type: 'log-end' },
    ])
    expect(logged.state).toMatchObject({ status: 'committed', decisionLogged: true })
    expect(sagaOutcome(logged.state)).toBe('committed')
    // A duplicate decision-logged does not answer twice.
    expect(sagaTransition(logged.state, LOGGED, env()).actions).toEqual([])
  })

  it('commits with no steps after the decision is logged', () => {
    const r = feed(newSagaTx('tx1', 'saga', 10_000, POLICY), [COMMIT, LOGGED])
    expect(r.out).toEqual([
      [{ type: 'log-decision', outcome: 'committed' }],
      [{ type: 'outcome', outcome: 'committed' }, { type: 'log-end' }],
    ])
    expect(r.state.status).toBe('committed')
  })

  it('retries a failing compensation with capped exponential backoff drawn from the injected random', () => {
    const policy: StepPolicy = { attempts: 4, backoffBaseMs: 100, backoffCapMs: 250 }
    const delays = (random: number): number[] => {
      const r = feed(
        withSteps('saga', [sagaStep(0)], policy),
        [ABORT, failed('s0'), retryDue('s0'), failed('s0'), retryDue('s0'), failed('s0')],
        env(random),
      )
      return r.out.flat().flatMap((a) => (a.type === 'schedule-retry' ? [a.delayMs] : []))
    }
    // Full jitter: uniform in [0, min(cap, base * 2^(n-1))).
    expect(delays(0)).toEqual([0, 0, 0])
    expect(delays(0.5)).toEqual([50, 100, 125])
    expect(delays(0.999_999)).toEqual([99, 199, 249])
  })

  it('keeps every backoff delay within [0, cap) whatever the random draws', () => {
    fc.assert(
      fc.property(
        fc.array(fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }), { minLength: 1, maxLength: 20 }),
        fc.integer({ min: 1, max: 10_000 }),
        fc.integer({ min: 1, max: 100_000 }),
        (draws, base, cap) => {
          const policy: StepPolicy = { attempts: draws.length + 1, backoffBaseMs: base, backoffCapMs: cap }
          let s = sagaTransition(withSteps('saga', [sagaStep(0)], policy), ABORT, env()).state
          for (const [n, draw] of draws.entries()) {
            const f = sagaTransition(s, failed('s0'), env(draw))
            const a = f.actions[0]
            if (a?.type !== 'schedule-retry')
              throw new Error(`attempt ${n + 1}: expected schedule-retry, got ${JSON.stringify(f.actions)}`)
            expect(a.delayMs).toBeGreaterThanOrEqual(0)
            expect(a.delayMs).toBeLessThan(Math.min(cap, base * 2 ** n))
            expect(Number.isInteger(a.delayMs)).toBe(true)
            s = sagaTransition(f.state, retryDue('s0'), env()).state
          }
        },
      ),
    )
  })

  it('after policy.attempts sends the step is stuck with its error, and it blocks the steps before it', () => {
    const s = withSteps('saga', [sagaStep(0), sagaStep(1)])
    const r = feed(s, [
      ABORT,
      failed('s1', 'e1'),
      retryDue('s1'),
      failed('s1', 'e2'),
      retryDue('s1'),
      failed('s1', 'POST /refund answered 503'),
    ])
    const runs = r.out.flat().filter((a) => a.type === 'run')
    expect(runs).toEqual([
      run(sagaStep(1), 'compensate', 1),
      run(sagaStep(1), 'compensate', 2),
      run(sagaStep(1), 'compensate', 3),
    ])
    expect(r.out[5]).toEqual([
      { type: 'stuck', step: sagaStep(1), op: 'compensate', error: 'POST /refund answered 503' },
    ])
    expect(r.state.steps[1]).toMatchObject({ status: 'stuck', attempts: 3, lastError: 'POST /refund answered 503' })
    // Reverse order: s0 is not undone while s1, which may rely on it, is not.
    expect(r.state.steps[0]).toMatchObject({ status: 'recorded', attempts: 0 })
    expect(r.state.status).toBe('aborting')
    expect(sagaOutcome(r.state)).toBe('aborted')
    // Nothing runs by itself any more: a late retry-due or answer is ignored.
    expect(feed(r.state, [retryDue('s1'), done('s1'), failed('s1')]).out).toEqual([[], [], []])
  })

  it('an operator retry resumes the stuck step with a fresh budget, then the steps before it', () => {
    const s = withSteps('saga', [sagaStep(0), sagaStep(1)])
    const stuck = feed(s, [ABORT, failed('s1'), retryDue('s1'), failed('s1'), retryDue('s1'), failed('s1')]).state
    const r = feed(stuck, [{ type: 'retry-stuck' }, done('s1'), done('s0')])
    expect(r.out[0]).toEqual([run(sagaStep(1), 'compensate', 1)])
    expect(r.out[1]).toEqual([{ type: 'log-step-done', step: 's1' }, run(sagaStep(0), 'compensate', 1)])
    expect(r.out[2]).toEqual([{ type: 'log-step-done', step: 's0' }, { type: 'log-end' }])
    expect(r.state.status).toBe('aborted')
    expect(r.state.steps[1]?.lastError).toBeUndefined()
  })

  it('retry-stuck with nothing stuck changes nothing', () => {
    const s = sagaTransition(withSteps('saga', [sagaStep(0)]), ABORT, env()).state
    const r = sagaTransition(s, { type: 'retry-stuck' }, env())
    expect(r.state).toBe(s)
    expect(r.actions).toEqual([])
  })

  it('a step with nothing declared to undo it finishes without a send', () => {
    const r = feed(withSteps('saga', [sagaStep(0), bareStep(1), sagaStep(2)]), [ABORT, done('s2'), done('s0')])
    expect(r.out[0]).toEqual([
      { type: 'log-decision', outcome: 'aborted' },
      { type: 'outcome', outcome: 'aborted', reason: 'the app answered 500' },
      run(sagaStep(2), 'compensate'),
    ])
    // s1 has no request: finished on the spot, and s0 starts in the same step.
    expect(r.out[1]).toEqual([
      { type: 'log-step-done', step: 's2' },
      { type: 'log-step-done', step: 's1' },
      run(sagaStep(0), 'compensate'),
    ])
    expect(r.state.status).toBe('aborted')
    expect(r.out.flat().some((a) => a.type === 'run' && a.step.id === 's1')).toBe(false)
  })

  it('an unresolved step goes stuck at once on abort, without a send, and blocks the steps before it', () => {
    const why = 'compensation template has no value for {response.json.id}'
    const unresolved = bareStep(1)
    const s = withSteps('saga', [sagaStep(0), { ...unresolved, unresolved: why }])
    const r = sagaTransition(s, ABORT, env())
    expect(r.actions).toEqual([
      { type: 'log-decision', outcome: 'aborted' },
      { type: 'outcome', outcome: 'aborted', reason: 'the app answered 500' },
      { type: 'stuck', step: { ...unresolved, unresolved: why }, op: 'compensate', error: why },
    ])
    expect(r.state.steps.map((e) => [e.status, e.attempts, e.lastError])).toEqual([
      ['recorded', 0, undefined],
      ['stuck', 0, why],
    ])
    // An operator retry cannot make it resolvable: it is stuck again, still without a send.
    const again = sagaTransition(r.state, { type: 'retry-stuck' }, env())
    expect(types(again.actions)).toEqual(['stuck'])
  })

  it('an unresolved step does not hold back a commit (a committed saga sends nothing)', () => {
    const s = withSteps('saga', [{ ...bareStep(0), unresolved: 'no value' }])
    const r = feed(s, [COMMIT, LOGGED])
    expect(r.state.status).toBe('committed')
    expect(types(r.out[1] ?? [])).toEqual(['outcome', 'log-step-done', 'log-end'])
  })

  it('a late step is compensated even though the saga committed', () => {
    const committed = feed(withSteps('saga', [sagaStep(0)]), [COMMIT, LOGGED]).state
    const late = sagaStep(1, { late: true })
    const r = feed(committed, [{ type: 'step', step: late }, done('s1')])
    expect(r.out[0]).toEqual([run(late, 'compensate')])
    expect(r.state.status).toBe('committed')
    expect(r.out[1]).toEqual([{ type: 'log-step-done', step: 's1' }, { type: 'log-end' }])
    // The outcome was given once, and stays committed.
    expect(r.out.flat().some((a) => a.type === 'outcome')).toBe(false)
    expect(sagaOutcome(r.state)).toBe('committed')
  })

  it('a late step arriving while the commit decision is being written is compensated once it is durable', () => {
    const committing = sagaTransition(withSteps('saga', [sagaStep(0)]), COMMIT, env()).state
    const late = sagaStep(1, { late: true })
    const r = feed(committing, [{ type: 'step', step: late }, LOGGED])
    expect(r.out[0]).toEqual([])
    expect(r.out[1]).toEqual([{ type: 'outcome', outcome: 'committed' }, run(late, 'compensate')])
    expect(statuses(r.state)).toEqual(['recorded', 'running'])
  })

  it('a late step is compensated after an abort that had finished', () => {
    const aborted = feed(withSteps('saga', [sagaStep(0)]), [ABORT, done('s0')]).state
    expect(aborted.status).toBe('aborted')
    const late = sagaStep(1, { late: true })
    const r = feed(aborted, [{ type: 'step', step: late }, done('s1')])
    expect(r.out[0]).toEqual([run(late, 'compensate')])
    expect(r.out[1]).toEqual([{ type: 'log-step-done', step: 's1' }, { type: 'log-end' }])
    expect(r.state.status).toBe('aborted')
  })

  it('a late step waits for the compensation under way', () => {
    const s = feed(withSteps('saga', [sagaStep(0), sagaStep(1)]), [ABORT, done('s1')]).state
    expect(statuses(s)).toEqual(['running', 'finished'])
    const late = sagaStep(2, { late: true })
    const r = sagaTransition(s, { type: 'step', step: late }, env())
    expect(r.actions).toEqual([])
    expect(statuses(r.state)).toEqual(['running', 'finished', 'recorded'])
  })

  it('duplicate and late answers change nothing', () => {
    const s = feed(withSteps('saga', [sagaStep(0), sagaStep(1)]), [ABORT, done('s1'), failed('s0')]).state
    expect(statuses(s)).toEqual(['waiting', 'finished'])
    for (const ev of [
      done('s1'),
      failed('s1'),
      done('s0'),
      failed('s0'),
      retryDue('s1'),
      done('nope'),
      failed('nope'),
      retryDue('nope'),
    ]) {
      const r = sagaTransition(s, ev, env())
      expect(r.state, ev.type).toBe(s)
      expect(r.actions).toEqual([])
    }
    // A duplicate answer after the end, too.
    const end = feed(s, [retryDue('s0'), done('s0')])
    expect(end.state.status).toBe('aborted')
    const dup = sagaTransition(end.state, done('s0'), env())
    expect(dup.state).toBe(end.state)
    expect(dup.actions).toEqual([])
  })

  it('a second abort or commit changes nothing', () => {
    const aborting = sagaTransition(withSteps('saga', [sagaStep(0)]), ABORT, env()).state
    for (const ev of [ABORT, COMMIT, { type: 'deadline' } as const]) {
      const r = sagaTransition(aborting, ev, env())
      expect(r.state).toBe(aborting)
      expect(r.actions).toEqual([])
    }
  })
})

describe('step machine: tcc', () => {
  const three = (): StepTxState => withSteps('tcc', [tccStep(0), tccStep(1), tccStep(2)])

  it('commit confirms every step at once, only after the decision is logged', () => {
    const asked = sagaTransition(three(), COMMIT, env())
    expect(asked.actions).toEqual([{ type: 'log-decision', outcome: 'committed' }])
    const logged = sagaTransition(asked.state, LOGGED, env())
    expect(logged.actions).toEqual([
      { type: 'outcome', outcome: 'committed' },
      run(tccStep(0), 'confirm'),
      run(tccStep(1), 'confirm'),
      run(tccStep(2), 'confirm'),
    ])
    expect(sagaOutcome(logged.state)).toBe('committed')
    // Any order of answers; the end comes with the last.
    const r = feed(logged.state, [done('s2'), done('s0'), done('s1')])
    expect(r.out).toEqual([
      [{ type: 'log-step-done', step: 's2' }],
      [{ type: 'log-step-done', step: 's0' }],
      [{ type: 'log-step-done', step: 's1' }, { type: 'log-end' }],
    ])
    expect(r.state.status).toBe('committed')
  })

  it('abort cancels every step at once and answers at once', () => {
    const r = sagaTransition(three(), ABORT, env())
    expect(r.actions).toEqual([
      { type: 'log-decision', outcome: 'aborted' },
      { type: 'outcome', outcome: 'aborted', reason: 'the app answered 500' },
      run(tccStep(0), 'cancel'),
      run(tccStep(1), 'cancel'),
      run(tccStep(2), 'cancel'),
    ])
    const end = feed(r.state, [done('s1'), done('s2'), done('s0')])
    expect(end.state.status).toBe('aborted')
    expect(types(end.out.flat())).toEqual(['log-step-done', 'log-step-done', 'log-step-done', 'log-end'])
  })

  it('a stuck confirm does not hold back the others; an operator retry finishes the commit', () => {
    const policy: StepPolicy = { attempts: 1, backoffBaseMs: 100, backoffCapMs: 1000 }
    const logged = feed(withSteps('tcc', [tccStep(0), tccStep(1)], policy), [COMMIT, LOGGED]).state
    const r = feed(logged, [failed('s0', 'confirm via svc0 failed: 503'), done('s1')])
    expect(r.out[0]).toEqual([
      { type: 'stuck', step: tccStep(0), op: 'confirm', error: 'confirm via svc0 failed: 503' },
    ])
    expect(r.out[1]).toEqual([{ type: 'log-step-done', step: 's1' }])
    expect(r.state.status).toBe('committing')
    expect(sagaOutcome(r.state)).toBe('committed')
    const retried = feed(r.state, [{ type: 'retry-stuck' }, done('s0')])
    expect(retried.out[0]).toEqual([run(tccStep(0), 'confirm')])
    expect(retried.state.status).toBe('committed')
  })

  it('an unresolved step goes stuck at commit too (its confirm is unknown)', () => {
    const why = 'compensation template has no value for {response.json.hold}'
    const s = withSteps('tcc', [tccStep(0), { ...bareStep(1), unresolved: why }])
    const r = feed(s, [COMMIT, LOGGED])
    expect(r.out[1]).toEqual([
      { type: 'outcome', outcome: 'committed' },
      run(tccStep(0), 'confirm'),
      { type: 'stuck', step: { ...bareStep(1), unresolved: why }, op: 'confirm', error: why },
    ])
  })

  it('a late try is cancelled, not confirmed, after a commit', () => {
    const committed = feed(withSteps('tcc', [tccStep(0)]), [COMMIT, LOGGED, done('s0')]).state
    expect(committed.status).toBe('committed')
    const late = tccStep(1, { late: true })
    const r = feed(committed, [{ type: 'step', step: late }, done('s1')])
    expect(r.out[0]).toEqual([run(late, 'cancel')])
    expect(r.state.status).toBe('committed')
  })
})

describe('step machine: deadline', () => {
  it('aborts an active transaction', () => {
    const r = sagaTransition(withSteps('tcc', [tccStep(0)]), { type: 'deadline' }, env())
    expect(r.actions).toEqual([
      { type: 'log-decision', outcome: 'aborted' },
      { type: 'outcome', outcome: 'aborted', reason: 'deadline passed' },
      run(tccStep(0), 'cancel'),
    ])
    expect(r.state.reason).toBe('deadline passed')
  })

  it('changes nothing once commit or abort was asked, or after the end', () => {
    const base = withSteps('saga', [sagaStep(0)])
    const committing = sagaTransition(base, COMMIT, env()).state
    const committed = sagaTransition(committing, LOGGED, env()).state
    const aborting = sagaTransition(base, ABORT, env()).state
    const aborted = sagaTransition(aborting, done('s0'), env()).state
    for (const s of [committing, committed, aborting, aborted]) {
      const r = sagaTransition(s, { type: 'deadline' }, env())
      expect(r.state, s.status).toBe(s)
      expect(r.actions).toEqual([])
    }
  })
})

describe('step machine: recovery', () => {
  const none = new Set<BranchId>()

  it('with a commit decision, a tcc confirms its unfinished steps at once', () => {
    const r = recoverSagaTx(
      'tx1',
      'tcc',
      [tccStep(0), tccStep(1), tccStep(2)],
      new Set(['s1']),
      true,
      POLICY,
      env(0.5, 5_000),
    )
    expect(r.actions).toEqual([run(tccStep(0), 'confirm'), run(tccStep(2), 'confirm')])
    expect(r.state).toMatchObject({ status: 'committing', decisionLogged: true })
    expect(sagaOutcome(r.state)).toBe('committed')
    expect(feed(r.state, [done('s0'), done('s2')]).state.status).toBe('committed')
  })

  it('with a commit decision, a saga has nothing left to do and ends', () => {
    const r = recoverSagaTx('tx1', 'saga', [sagaStep(0), sagaStep(1)], new Set(['s0']), true, POLICY, env())
    expect(r.actions).toEqual([{ type: 'log-step-done', step: 's1' }, { type: 'log-end' }])
    expect(r.state.status).toBe('committed')
  })

  it('with a commit decision, a late saga step found in the log is still compensated', () => {
    const late = sagaStep(1, { late: true })
    const r = recoverSagaTx('tx1', 'saga', [sagaStep(0), late], none, true, POLICY, env())
    expect(r.actions).toEqual([run(late, 'compensate')])
    expect(r.state.status).toBe('committing')
  })

  it('without a decision, a saga undoes every unfinished step in reverse order, skipping finished ones (presumed abort)', () => {
    const r = recoverSagaTx(
      'tx1',
      'saga',
      [sagaStep(0), sagaStep(1), sagaStep(2)],
      new Set(['s2']),
      false,
      POLICY,
      env(),
    )
    expect(r.actions).toEqual([run(sagaStep(1), 'compensate')])
    expect(r.state).toMatchObject({
      status: 'aborting',
      decisionLogged: false,
      reason: 'recovered without a commit decision',
    })
    expect(sagaOutcome(r.state)).toBe('aborted')
    const end = feed(r.state, [done('s1'), done('s0')])
    expect(end.out[0]).toEqual([{ type: 'log-step-done', step: 's1' }, run(sagaStep(0), 'compensate')])
    expect(end.state.status).toBe('aborted')
  })

  it('without a decision, a tcc cancels every unfinished step at once', () => {
    const r = recoverSagaTx('tx1', 'tcc', [tccStep(0), tccStep(1), tccStep(2)], new Set(['s0']), false, POLICY, env())
    expect(r.actions).toEqual([run(tccStep(1), 'cancel'), run(tccStep(2), 'cancel')])
  })

  it('lists a step recorded twice in the log once, and ends at once when every step is finished', () => {
    const twice = recoverSagaTx('tx1', 'tcc', [tccStep(0), tccStep(0)], none, false, POLICY, env())
    expect(twice.state.steps).toHaveLength(1)
    expect(twice.actions).toEqual([run(tccStep(0), 'cancel')])
    const over = recoverSagaTx('tx1', 'saga', [sagaStep(0)], new Set(['s0']), false, POLICY, env())
    expect(over.actions).toEqual([{ type: 'log-end' }])
    expect(over.state.status).toBe('aborted')
  })

  it('an unknown transaction is presumed aborted', () => {
    expect(sagaOutcome(undefined)).toBe('aborted')
  })
})

describe('step machine: intents (recorded before the call is sent)', () => {
  const none = new Set<BranchId>()
  /** Saga intent of step i: its compensation filled from the request alone. */
  const sagaIntent = (i: number, extra: Partial<StepRecord> = {}): StepRecord => ({
    ...sagaStep(i),
    compensate: { method: 'POST', path: `/undo/${i}` },
    intent: true,
    ...extra,
  })
  /** TCC intent of step i: a cancel through the target's ingress. */
  const tccIntent = (i: number): StepRecord => ({
    id: `s${i}`,
    service: `svc${i}`,
    target: `http://10.0.0.${i}:8080`,
    cancel: { method: 'POST', path: '/.well-known/txmesh/cancel' },
    intent: true,
    viaIngress: true,
  })
  const VOID = (id: BranchId): StepEvent => ({ type: 'step-void', step: id })

  it('a resolution replaces its intent in place, and the saga commits without undoing it', () => {
    const s = withSteps('saga', [sagaStep(0), sagaIntent(1), sagaStep(2)])
    const resolved = feed(s, [{ type: 'step', step: sagaStep(1) }]).state
    expect(resolved.steps.map((e) => e.step)).toEqual([sagaStep(0), sagaStep(1), sagaStep(2)])
    const r = feed(resolved, [COMMIT, LOGGED])
    expect(r.state.status).toBe('committed')
    expect(r.out.flat().some((a) => a.type === 'run')).toBe(false)
  })

  it('a resolved intent is undone in its own turn of the reverse order on abort', () => {
    const s = feed(withSteps('saga', [sagaStep(0), sagaIntent(1), sagaStep(2)]), [
      { type: 'step', step: sagaStep(1) },
    ]).state
    const r = feed(s, [ABORT, done('s2'), done('s1')])
    expect(r.out[1]).toEqual([{ type: 'log-step-done', step: 's2' }, run(sagaStep(1), 'compensate')])
    expect(r.out[2]).toEqual([{ type: 'log-step-done', step: 's1' }, run(sagaStep(0), 'compensate')])
  })

  it('a voided intent (its call was refused) finishes at once and is never undone', () => {
    const s = withSteps('saga', [sagaStep(0), sagaIntent(1)])
    const v = sagaTransition(s, VOID('s1'), env())
    expect(v.actions).toEqual([{ type: 'log-step-done', step: 's1' }])
    expect(statuses(v.state)).toEqual(['recorded', 'finished'])
    const r = feed(v.state, [ABORT, done('s0')])
    expect(r.out[0]).toEqual([
      { type: 'log-decision', outcome: 'aborted' },
      { type: 'outcome', outcome: 'aborted', reason: ABORT.type === 'abort-requested' ? ABORT.reason : '' },
      run(sagaStep(0), 'compensate'),
    ])
    expect(r.state.status).toBe('aborted')
    // Committed instead: nothing at all runs.
    const c = feed(v.state, [COMMIT, LOGGED])
    expect(c.state.status).toBe('committed')
    expect(c.out.flat().some((a) => a.type === 'run')).toBe(false)
  })

  it('a void after the undo started changes nothing (the barrier orders them); a void of a non-intent too', () => {
    const running = sagaTransition(withSteps('saga', [sagaIntent(0)]), ABORT, env()).state
    expect(statuses(running)).toEqual(['running'])
    const r = sagaTransition(running, VOID('s0'), env())
    expect(r.state).toBe(running)
    expect(r.actions).toEqual([])
    const plain = withSteps('saga', [sagaStep(0)])
    expect(sagaTransition(plain, VOID('s0'), env()).state).toBe(plain)
    expect(sagaTransition(plain, VOID('nope'), env()).state).toBe(plain)
  })

  it('an intent that never got its answer is compensated even though the saga committed', () => {
    const r = feed(withSteps('saga', [sagaStep(0), sagaIntent(1)]), [COMMIT, LOGGED, done('s1')])
    expect(r.out[1]).toEqual([{ type: 'outcome', outcome: 'committed' }, run(sagaIntent(1), 'compensate')])
    expect(r.out[2]).toEqual([
      { type: 'log-step-done', step: 's1' },
      { type: 'log-step-done', step: 's0' },
      { type: 'log-end' },
    ])
    expect(r.state.status).toBe('committed')
    expect(sagaOutcome(r.state)).toBe('committed')
  })

  it('an intent that never got its answer is compensated on abort, in its turn', () => {
    const r = feed(withSteps('saga', [sagaStep(0), sagaIntent(1)]), [ABORT, done('s1'), done('s0')])
    expect(r.out[0]?.at(-1)).toEqual(run(sagaIntent(1), 'compensate'))
    expect(r.out[1]).toEqual([{ type: 'log-step-done', step: 's1' }, run(sagaStep(0), 'compensate')])
    expect(r.state.status).toBe('aborted')
  })

  it('a tcc intent is cancelled, never confirmed, whatever the outcome; its resolution is confirmed on commit', () => {
    const committed = feed(withSteps('tcc', [tccStep(0), tccIntent(1)]), [COMMIT, LOGGED])
    expect(committed.out[1]).toEqual([
      { type: 'outcome', outcome: 'committed' },
      run(tccStep(0), 'confirm'),
      run(tccIntent(1), 'cancel'),
    ])
    const aborted = sagaTransition(withSteps('tcc', [tccIntent(0)]), ABORT, env())
    expect(aborted.actions.at(-1)).toEqual(run(tccIntent(0), 'cancel'))
    const resolved = feed(withSteps('tcc', [tccIntent(0)]), [{ type: 'step', step: tccStep(0) }, COMMIT, LOGGED])
    expect(resolved.out[2]).toEqual([{ type: 'outcome', outcome: 'committed' }, run(tccStep(0), 'confirm')])
  })

  it('a resolution arriving once the undo of its intent is under way changes nothing', () => {
    const running = sagaTransition(withSteps('tcc', [tccIntent(0)]), ABORT, env()).state
    const r = sagaTransition(running, { type: 'step', step: tccStep(0, { late: true }) }, env())
    expect(r.state).toBe(running)
    expect(r.actions).toEqual([])
  })

  it('a resolution still waiting its turn after the decision replaces the intent and keeps its late flag', () => {
    // Saga abort: s1 is undone first; the intent s0 waits; its answer arrives (told: over).
    const s = feed(withSteps('saga', [sagaIntent(0), sagaStep(1)]), [ABORT]).state
    expect(statuses(s)).toEqual(['recorded', 'running'])
    const late = sagaStep(0, { late: true })
    const r = feed(s, [{ type: 'step', step: late }, done('s1')])
    expect(r.out[0]).toEqual([])
    expect(r.out[1]).toEqual([{ type: 'log-step-done', step: 's1' }, run(late, 'compensate')])
  })

  it('an unresolved intent goes stuck at once on abort, and its resolution, if it comes, replaces it and runs', () => {
    const unresolved: StepRecord = {
      ...bareStep(0),
      intent: true,
      unresolved: 'the call got no answer and its compensation needs the response',
    }
    const s = sagaTransition(withSteps('saga', [unresolved]), ABORT, env())
    expect(s.actions.at(-1)).toEqual({
      type: 'stuck',
      step: unresolved,
      op: 'compensate',
      error: unresolved.unresolved,
    })
    const late = sagaStep(0, { late: true })
    const r = sagaTransition(s.state, { type: 'step', step: late }, env())
    expect(r.actions).toEqual([run(late, 'compensate')])
  })

  it('recovery takes the last record of a step, in the place of its first', () => {
    // s1: intent then resolution (its answer was durable before the crash); s2: intent only.
    const r = recoverSagaTx(
      'tx1',
      'saga',
      [sagaStep(0), sagaIntent(1), sagaIntent(2), sagaStep(1)],
      none,
      true,
      POLICY,
      env(),
    )
    expect(r.state.steps.map((e) => e.step)).toEqual([sagaStep(0), sagaStep(1), sagaIntent(2)])
    // Committed: only the intent without an answer is compensated.
    expect(r.actions).toEqual([run(sagaIntent(2), 'compensate')])
    const aborted = recoverSagaTx(
      'tx1',
      'saga',
      [sagaStep(0), sagaIntent(1), sagaIntent(2), sagaStep(1)],
      none,
      false,
      POLICY,
      env(),
    )
    expect(aborted.actions).toEqual([run(sagaIntent(2), 'compensate')])
    expect(feed(aborted.state, [done('s2')]).out[0]).toEqual([
      { type: 'log-step-done', step: 's2' },
      run(sagaStep(1), 'compensate'),
    ])
    // A voided intent (its step-done record) stays finished.
    const voided = recoverSagaTx('tx1', 'tcc', [tccIntent(0), tccStep(1)], new Set(['s0']), true, POLICY, env())
    expect(voided.actions).toEqual([run(tccStep(1), 'confirm')])
  })
})

// ---------------------------------------------------------------------------------------------
// Random schedules: a driver that answers ops, fires retry timers and writes the decision in any
// order, with duplicate and stale events mixed in. The machine asserts its invariants on every
// event (checkInvariants); the harness checks what the machine cannot see about itself.

type Cmd =
  | { readonly k: 'step'; readonly undo: 'op' | 'none' | 'unresolved' }
  | { readonly k: 'commit' }
  | { readonly k: 'abort' }
  | { readonly k: 'deadline' }
  | { readonly k: 'decision' }
  | { readonly k: 'answer'; readonly pick: number; readonly ok: boolean }
  | { readonly k: 'timer'; readonly pick: number }
  | { readonly k: 'retry-stuck' }
  | { readonly k: 'stale'; readonly type: 'op-done' | 'op-failed' | 'retry-due'; readonly pick: number }
  /** An intent, recorded before its call is sent (the driver refuses it once not active). */
  | { readonly k: 'intent' }
  /** The call of a pending intent answers (its resolution) or is refused (void). */
  | { readonly k: 'resolve'; readonly pick: number; readonly result: 'resolved' | 'void' }

const intentCmdArb: fc.Arbitrary<Cmd> = fc.oneof(
  { weight: 3, arbitrary: fc.constant({ k: 'intent' as const }) },
  {
    weight: 3,
    arbitrary: fc.record({
      k: fc.constant('resolve' as const),
      pick: fc.nat(),
      result: fc.constantFrom('resolved' as const, 'resolved' as const, 'void' as const),
    }),
  },
)

const cmdArb: fc.Arbitrary<Cmd> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.record({
      k: fc.constant('step' as const),
      undo: fc.constantFrom('op' as const, 'op' as const, 'op' as const, 'none' as const, 'unresolved' as const),
    }),
  },
  { weight: 1, arbitrary: fc.constant({ k: 'commit' as const }) },
  { weight: 1, arbitrary: fc.constant({ k: 'abort' as const }) },
  { weight: 1, arbitrary: fc.constant({ k: 'deadline' as const }) },
  { weight: 2, arbitrary: fc.constant({ k: 'decision' as const }) },
  { weight: 6, arbitrary: fc.record({ k: fc.constant('answer' as const), pick: fc.nat(), ok: fc.boolean() }) },
  { weight: 3, arbitrary: fc.record({ k: fc.constant('timer' as const), pick: fc.nat() }) },
  { weight: 1, arbitrary: fc.constant({ k: 'retry-stuck' as const }) },
  {
    weight: 2,
    arbitrary: fc.record({
      k: fc.constant('stale' as const),
      type: fc.constantFrom('op-done' as const, 'op-failed' as const, 'retry-due' as const),
      pick: fc.nat(),
    }),
  },
)

class Sim {
  state: StepTxState
  /** Runs sent and not answered yet. */
  readonly inFlight: BranchId[] = []
  readonly timers: BranchId[] = []
  decisionPending = false
  /** commit or abort: what ended the active phase. */
  asked: 'commit' | 'abort' | undefined
  readonly actions: StepAction[] = []
  /** Intents whose call has not answered yet. */
  readonly pending: number[] = []
  private next = 0
  private draw = 0

  constructor(
    mode: StepMode,
    readonly policy: StepPolicy,
    private readonly draws: readonly number[],
    private readonly allowLate: boolean,
  ) {
    this.state = newSagaTx('tx1', mode, 10_000, policy)
  }

  private env(): Env {
    return { now: 0, random: () => this.draws[this.draw++ % this.draws.length] as number }
  }

  feed(ev: StepEvent): { before: StepTxState; actions: readonly StepAction[] } {
    const before = this.state
    const r = sagaTransition(before, ev, this.env())
    this.state = r.state
    if (before.status === 'active' && r.state.status !== 'active')
      this.asked = r.state.status === 'committing' ? 'commit' : 'abort'
    for (const a of r.actions) {
      this.actions.push(a)
      if (a.type === 'log-decision' && a.outcome === 'committed') this.decisionPending = true
      if (a.type === 'run') {
        expect(a.attempt).toBeLessThanOrEqual(this.policy.attempts)
        expect(a.op).toBe(this.expectedOp(a.step))
        this.inFlight.push(a.step.id)
      }
      if (a.type === 'schedule-retry') {
        expect(a.delayMs).toBeGreaterThanOrEqual(0)
        expect(a.delayMs).toBeLessThan(this.policy.backoffCapMs)
        this.timers.push(a.step)
      }
    }
    this.check()
    return { before, actions: r.actions }
  }

  private expectedOp(step: StepRecord): StepOpName {
    // Late steps and intents without an answer are undone whatever the outcome.
    const committed = this.state.decisionLogged && step.late !== true && step.intent !== true
    if (this.state.mode === 'saga') {
      // A committed saga never sends anything for a step that answered in time.
      expect(committed).toBe(false)
      return 'compensate'
    }
    return committed ? 'confirm' : 'cancel'
  }

  /** What the harness knows must match what the machine says. */
  private check(): void {
    const s = this.state
    const byStatus = (st: string): string[] => s.steps.filter((e) => e.status === st).map((e) => e.step.id)
    expect([...this.inFlight].sort()).toEqual(byStatus('running').sort())
    expect([...this.timers].sort()).toEqual(byStatus('waiting').sort())
    if (s.mode === 'saga') expect(this.inFlight.length + this.timers.length).toBeLessThanOrEqual(1)
  }

  apply(c: Cmd): void {
    switch (c.k) {
      case 'step': {
        if (this.state.status !== 'active' && !this.allowLate) return
        if (this.state.steps.length >= LIMITS.maxSteps) return
        const i = this.next++
        const base = this.state.mode === 'saga' ? sagaStep(i) : tccStep(i)
        const step: StepRecord =
          c.undo === 'op' ? base : c.undo === 'none' ? bareStep(i) : { ...bareStep(i), unresolved: 'no value' }
        // As the driver does: a step answered after commit/abort was asked is late.
        this.feed({ type: 'step', step: this.state.status === 'active' ? step : { ...step, late: true } })
        return
      }
      case 'intent': {
        if (this.state.status !== 'active' || this.state.steps.length >= LIMITS.maxSteps) return
        const i = this.next++
        const base =
          this.state.mode === 'saga'
            ? sagaStep(i)
            : { ...bareStep(i), cancel: { method: 'POST', path: '/.well-known/txmesh/cancel' }, viaIngress: true }
        this.pending.push(i)
        this.feed({ type: 'step', step: { ...base, intent: true } })
        return
      }
      case 'resolve': {
        if (this.pending.length === 0) return
        const [i] = this.pending.splice(c.pick % this.pending.length, 1) as [number]
        const id = `s${i}`
        const before = this.state.steps.find((e) => e.step.id === id)
        if (c.result === 'void') {
          this.feed({ type: 'step-void', step: id })
          if (before?.status === 'recorded')
            expect(this.state.steps.find((e) => e.step.id === id)?.status).toBe('finished')
          return
        }
        const base = this.state.mode === 'saga' ? sagaStep(i) : tccStep(i)
        this.feed({ type: 'step', step: this.state.status === 'active' ? base : { ...base, late: true } })
        const after = this.state.steps.find((e) => e.step.id === id)
        // Replaced while nothing was sent for the intent; left alone once its undo started.
        if (before?.status === 'recorded') expect(after?.step.intent).toBeUndefined()
        else if (before?.status === 'running' || before?.status === 'waiting' || before?.status === 'finished')
          expect(after?.step).toBe(before.step)
        return
      }
      case 'commit':
        this.feed(COMMIT)
        return
      case 'abort':
        this.feed(ABORT)
        return
      case 'deadline':
        this.feed({ type: 'deadline' })
        return
      case 'decision':
        if (!this.decisionPending) return
        this.decisionPending = false
        this.feed(LOGGED)
        return
      case 'answer': {
        if (this.inFlight.length === 0) return
        const [id] = this.inFlight.splice(c.pick % this.inFlight.length, 1) as [BranchId]
        this.feed(c.ok ? done(id) : failed(id))
        return
      }
      case 'timer': {
        if (this.timers.length === 0) return
        const [id] = this.timers.splice(c.pick % this.timers.length, 1) as [BranchId]
        this.feed(retryDue(id))
        return
      }
      case 'retry-stuck':
        this.feed({ type: 'retry-stuck' })
        return
      case 'stale': {
        // An answer or timer for a step with nothing outstanding: a duplicate or a late one.
        const busy = c.type === 'retry-due' ? this.timers : this.inFlight
        const ids = [...this.state.steps.map((e) => e.step.id).filter((id) => !busy.includes(id)), 'unknown']
        const id = ids[c.pick % ids.length] as BranchId
        const ev: StepEvent = c.type === 'op-done' ? done(id) : c.type === 'op-failed' ? failed(id) : retryDue(id)
        const r = this.feed(ev)
        expect(this.state).toBe(r.before)
        expect(r.actions).toEqual([])
        return
      }
    }
  }

  /** From here every op succeeds: end the transaction and let everything finish. */
  drain(): void {
    if (this.state.status === 'active') this.feed(ABORT)
    for (let i = 0; i < 10_000; i++) {
      if (this.decisionPending) this.apply({ k: 'decision' })
      else if (this.inFlight.length > 0) this.apply({ k: 'answer', pick: 0, ok: true })
      else if (this.timers.length > 0) this.apply({ k: 'timer', pick: 0 })
      else if (this.state.steps.some((e) => e.status === 'stuck' && e.step.unresolved === undefined))
        this.feed({ type: 'retry-stuck' })
      else return
    }
    throw new Error('did not settle')
  }
}

const scheduleArb = fc.record({
  mode: fc.constantFrom<StepMode>('saga', 'tcc'),
  attempts: fc.integer({ min: 1, max: 4 }),
  draws: fc.array(fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }), { minLength: 1, maxLength: 8 }),
  // Steps recorded before anything else happens, so most schedules have several to finish.
  first: fc.array(
    fc.constantFrom('op' as const, 'op' as const, 'op' as const, 'none' as const, 'unresolved' as const),
    { maxLength: 8 },
  ),
  cmds: fc.array(cmdArb, { maxLength: 150, size: 'medium' }),
  // Half the schedules have no unresolved step, so that every step can finish.
  unresolved: fc.boolean(),
})

describe('step machine: random schedules', () => {
  it('keeps its invariants, never undoes two saga steps at once, and ends with every step finished once every op succeeds', () => {
    fc.assert(
      fc.property(scheduleArb, ({ mode, attempts, draws, first, cmds, unresolved }) => {
        const sim = new Sim(mode, { attempts, backoffBaseMs: 50, backoffCapMs: 400 }, draws, false)
        for (const c of [...first.map((undo): Cmd => ({ k: 'step', undo })), ...cmds])
          sim.apply(unresolved || c.k !== 'step' || c.undo !== 'unresolved' ? c : { k: 'step', undo: 'op' })
        sim.drain()
        const s = sim.state
        const unresolvedSteps = s.steps.filter((e) => e.step.unresolved !== undefined)
        const committed = sim.asked === 'commit'
        // Unresolved steps stay stuck when there is something to send for them (all but a
        // committed saga); everything else finishes.
        const blocked = unresolvedSteps.length > 0 && !(committed && mode === 'saga')
        if (!blocked) {
          expect(s.steps.every((e) => e.status === 'finished')).toBe(true)
          expect(s.status).toBe(committed ? 'committed' : 'aborted')
          expect(sim.actions.filter((a) => a.type === 'log-end')).toHaveLength(1)
        } else {
          expect(s.status).toBe(committed ? 'committing' : 'aborting')
          expect(s.steps.filter((e) => e.status === 'stuck').every((e) => e.step.unresolved !== undefined)).toBe(true)
        }
        // One outcome, after a durable decision for a commit, at once for an abort.
        const outcomes = sim.actions.filter((a) => a.type === 'outcome')
        expect(outcomes).toEqual([
          { type: 'outcome', outcome: committed ? 'committed' : 'aborted', ...(committed ? {} : { reason: s.reason }) },
        ])
        const at = sim.actions.indexOf(outcomes[0] as StepAction)
        expect(sim.actions[at - 1]).toEqual({ type: 'log-decision', outcome: committed ? 'committed' : 'aborted' })
        if (committed) expect(sim.actions.slice(0, at).some((a) => a.type === 'run')).toBe(false)
        // A saga that aborted undid its steps strictly from the last to the first.
        if (mode === 'saga' && !committed) {
          const finishedOrder = sim.actions.flatMap((a) => (a.type === 'log-step-done' ? [a.step] : []))
          const ids = s.steps.map((e) => e.step.id)
          const expected = blocked
            ? ids.slice(ids.findLastIndex((_, i) => s.steps[i]?.status !== 'finished') + 1).reverse()
            : [...ids].reverse()
          expect(finishedOrder).toEqual(expected)
        }
      }),
      { numRuns: 500 },
    )
  })

  it('keeps its invariants with late steps too', () => {
    fc.assert(
      fc.property(scheduleArb, ({ mode, attempts, draws, first, cmds, unresolved }) => {
        const sim = new Sim(mode, { attempts, backoffBaseMs: 50, backoffCapMs: 400 }, draws, true)
        for (const c of [...first.map((undo): Cmd => ({ k: 'step', undo })), ...cmds])
          sim.apply(unresolved || c.k !== 'step' || c.undo !== 'unresolved' ? c : { k: 'step', undo: 'op' })
        sim.drain()
      }),
      { numRuns: 500, seed: 1 },
    )
  })

  it('keeps its invariants with intents, their resolutions and voids, and finishes every step', () => {
    fc.assert(
      fc.property(
        scheduleArb,
        fc.array(fc.oneof({ weight: 1, arbitrary: cmdArb }, { weight: 1, arbitrary: intentCmdArb }), {
          maxLength: 150,
          size: 'medium',
        }),
        ({ mode, attempts, draws, first }, cmds) => {
          const sim = new Sim(mode, { attempts, backoffBaseMs: 50, backoffCapMs: 400 }, draws, true)
          for (const c of [...first.map((): Cmd => ({ k: 'intent' })), ...cmds])
            sim.apply(c.k === 'step' && c.undo === 'unresolved' ? { k: 'step', undo: 'op' } : c)
          sim.drain()
          expect(sim.state.steps.every((e) => e.status === 'finished')).toBe(true)
          // (a late step after the end ends it again)
          expect(sim.actions.at(-1)).toEqual({ type: 'log-end' })
          // An intent that never got its answer was undone, never confirmed.
          for (const e of sim.state.steps.filter((x) => x.step.intent === true)) {
            const ops = sim.actions.flatMap((a) => (a.type === 'run' && a.step.id === e.step.id ? [a.op] : []))
            expect(ops.every((op) => op === (mode === 'saga' ? 'compensate' : 'cancel'))).toBe(true)
          }
        },
      ),
      { numRuns: 500, seed: 2 },
    )
  })
})

// ---------------------------------------------------------------------------------------------
// Request templates.

const facts = (o: Partial<CallFacts> = {}): CallFacts => ({
  method: 'POST',
  path: '/orders?customer=c%2042&dry=0',
  requestHeaders: ['Content-Type', 'application/json', 'Idempotency-Key', 'k-1'],
  requestBody: Buffer.from(JSON.stringify({ sku: 'a b/c', qty: 2, meta: { tags: ['x', 'y'] } })),
  status: 201,
  responseHeaders: ['Location', '/orders/42', 'X-Hold', 'h-9'],
  responseBody: Buffer.from(JSON.stringify({ id: 42, order: { ref: 'R/1?' }, items: [{ id: 'i-1' }], gone: null })),
  txId: 'tx-1',
  stepId: 'st-1',
  ...o,
})
const tpl = (path: string, o: Partial<StepRequestTemplate> = {}): StepRequestTemplate => ({
  method: 'DELETE',
  path,
  body: undefined,
  headers: {},
  ...o,
})

describe('step templates', () => {
  it('fills a path from the response json, percent-encoding each value', () => {
    expect(fillTemplate(tpl('/orders/{response.json.id}'), facts())).toEqual({ method: 'DELETE', path: '/orders/42' })
    expect(fillTemplate(tpl('/refs/{response.json.order.ref}/items/{response.json.items.0.id}'), facts())).toEqual({
      method: 'DELETE',
      path: '/refs/R%2F1%3F/items/i-1',
    })
    expect(fillTemplate(tpl('/stock/{request.json.sku}/{request.json.qty}'), facts())).toEqual({
      method: 'DELETE',
      path: '/stock/a%20b%2Fc/2',
    })
  })

  it('fills from the query, the method, the path without its query, headers (any case), status and ids', () => {
    const t = tpl('/customers/{request.query.customer}/undo', {
      method: 'POST',
      headers: {
        'X-Idem': '{request.header.idempotency-key}',
        'X-Where': '{response.header.location}',
        'x-hold': '{response.header.X-HOLD}',
      },
      body: '{"undo":"{request.method} {request.path}","status":{response.status},"tx":"{tx.id}","step":"{step.id}"}',
    })
    expect(fillTemplate(t, facts())).toEqual({
      method: 'POST',
      path: '/customers/c%2042/undo',
      headers: { 'x-idem': 'k-1', 'x-where': '/orders/42', 'x-hold': 'h-9' },
      body: '{"undo":"POST /orders","status":201,"tx":"tx-1","step":"st-1"}',
    })
  })

  it('inserts body values as text, and a JSON object or array as JSON', () => {
    const t = tpl('/x', {
      body: '{"sku":"{request.json.sku}","meta":{request.json.meta},"tags":{request.json.meta.tags}}',
    })
    const r = fillTemplate(t, facts())
    expect(r).toMatchObject({ body: '{"sku":"a b/c","meta":{"tags":["x","y"]},"tags":["x","y"]}' })
    expect(JSON.parse((r as { body: string }).body)).toEqual({
      sku: 'a b/c',
      meta: { tags: ['x', 'y'] },
      tags: ['x', 'y'],
    })
  })

  it('leaves the step unresolved, naming each placeholder without a value', () => {
    const t = tpl('/orders/{response.json.missing}', {
      headers: { 'x-a': '{request.header.x-nope}' },
      body: '{request.query.nope}{response.json.gone}',
    })
    const r = fillTemplate(t, facts())
    expect(r).toEqual({ unresolved: expect.stringContaining('{response.json.missing}') })
    for (const name of ['request.header.x-nope', 'request.query.nope', 'response.json.gone'])
      expect((r as { unresolved: string }).unresolved).toContain(`{${name}}`)
  })

  it('is unresolved when the body is absent, empty, not JSON, or the path goes through a scalar', () => {
    const t = tpl('/orders/{response.json.id}')
    for (const responseBody of [undefined, Buffer.alloc(0), Buffer.from('<html>oops</html>'), Buffer.from('42')]) {
      expect(fillTemplate(t, facts({ responseBody })), String(responseBody)).toHaveProperty('unresolved')
    }
    expect(fillTemplate(tpl('/orders/{response.json.id.deeper}'), facts())).toHaveProperty('unresolved')
    expect(fillTemplate(tpl('/x/{request.query.customer}'), facts({ path: '/orders' }))).toHaveProperty('unresolved')
  })

  it('says which bodies a template reads, so the proxy buffers only those, and whether it reads the response at all', () => {
    expect(templateNeeds(undefined)).toEqual({ requestJson: false, responseJson: false, response: false })
    expect(templateNeeds(tpl('/orders/{response.json.id}'))).toEqual({
      requestJson: false,
      responseJson: true,
      response: true,
    })
    expect(templateNeeds(tpl('/x', { headers: { a: '{request.json.sku}' } }))).toEqual({
      requestJson: true,
      responseJson: false,
      response: false,
    })
    expect(templateNeeds(tpl('/x/{request.query.a}', { body: '{response.header.x}' }))).toEqual({
      requestJson: false,
      responseJson: false,
      response: true,
    })
    expect(templateNeeds(tpl('/x/{step.id}/{response.status}'))).toMatchObject({ response: true })
    // Request-only: its intent can be filled before the call is sent.
    expect(templateNeeds(tpl('/undo/{request.query.a}/{tx.id}/{step.id}'))).toMatchObject({ response: false })
  })

  it('finds before the call a header its request alone makes unsendable, and leaves a response-made one unresolved', () => {
    const t = tpl('/undo', { headers: { 'x-note': '{request.json.note} for {response.json.id}' } })
    const withNote = (note: string) => facts({ requestBody: Buffer.from(JSON.stringify({ note })) })
    expect(requestProblem(t, withNote('ok'))).toBeUndefined()
    expect(requestProblem(t, withNote('a\r\nx-evil: 1'))).toMatch(/header x-note would carry U\+000D/)
    expect(requestProblem(t, withNote('nul\u0000'))).toMatch(/U\+0000/)
    expect(requestProblem(t, withNote('\u20ac'))).toMatch(/U\+20AC/)
    // latin1 and HTAB are what a header value may carry.
    expect(requestProblem(t, withNote('caf\u00e9\tok'))).toBeUndefined()
    expect(requestProblem(t, withNote('x'.repeat(9_000)))).toMatch(/at most 8192/)
    // A placeholder without a value is not this check's: the step is unresolved instead.
    expect(requestProblem(tpl('/u', { headers: { a: '{request.json.nope}' } }), facts())).toBeUndefined()
    // Filled with a response that makes it invalid: unresolved (stuck with the reason), never retried.
    const fromResponse = fillTemplate(
      tpl('/u', { headers: { 'x-ref': '{response.json.order.ref}' } }),
      facts({ responseBody: Buffer.from(JSON.stringify({ order: { ref: 'r\n1' } })) }),
    )
    expect(fromResponse).toEqual({
      unresolved: expect.stringMatching(/^compensation template: header x-ref would carry U\+000A/),
    })
  })

  it('finds before the call a path its request makes a dot-segment (every ingress refuses those), and leaves a response-made one unresolved', () => {
    const t = tpl('/refund/{request.json.id}/{response.json.ref}')
    const withId = (id: string) => facts({ requestBody: Buffer.from(JSON.stringify({ id })) })
    expect(requestProblem(t, withId('r-1'))).toBeUndefined()
    expect(requestProblem(t, withId('..'))).toMatch(/dot-segment/)
    expect(requestProblem(t, withId('.'))).toMatch(/dot-segment/)
    expect(requestProblem(t, withId('a..b'))).toBeUndefined()
    const fromResponse = fillTemplate(
      t,
      facts({
        requestBody: Buffer.from(JSON.stringify({ id: 'r-1' })),
        responseBody: Buffer.from(JSON.stringify({ ref: '..' })),
      }),
    )
    expect(fromResponse).toEqual({ unresolved: expect.stringMatching(/dot-segment/) })
  })

  it('refuses the headers of a step op no client would send: refused names, invalid values, a wrong content-length', () => {
    expect(opHeadersProblem({ headers: { 'x-a': 'fine', connection: 'close' } })).toBeUndefined()
    expect(opHeadersProblem({ headers: { 'transfer-encoding': 'chunked' } })).toMatch(/cannot be set/)
    expect(opHeadersProblem({ headers: { 'x-a': 'a\rb' } })).toMatch(/U\+000D/)
    expect(opHeadersProblem({ headers: { 'bad name': 'v' } })).toMatch(/not an HTTP token/)
    expect(opHeadersProblem({ headers: { connection: 'close, x y' } })).toMatch(/list of tokens/)
    expect(opHeadersProblem({ headers: { 'content-length': '3' }, body: '{}' })).toMatch(
      /content-length must be the body's length in bytes \(2\)/,
    )
    expect(opHeadersProblem({ headers: { 'content-length': '2' }, body: '{}' })).toBeUndefined()
  })

  it('parseCompensateHeader accepts "METHOD /path"', () => {
    expect(parseCompensateHeader('DELETE /orders/42')).toEqual({ method: 'DELETE', path: '/orders/42' })
    expect(parseCompensateHeader('  POST /refund/c-7?reason=saga ')).toEqual({
      method: 'POST',
      path: '/refund/c-7?reason=saga',
    })
  })

  it('parseCompensateHeader rejects anything else, quoting it', () => {
    const bad = [
      '',
      'DELETE',
      '/orders/42',
      'delete /orders/42',
      'DELETE orders/42',
      'DELETE http://evil.example/x',
      'DELETE /a b',
      'DELETE  /x',
      'DELETE\t/x',
      `DELETE /${'a'.repeat(2048)}`,
      'TOOLONGMETHODNAMEX /x',
    ]
    for (const v of bad) {
      const r = parseCompensateHeader(v)
      expect(r, JSON.stringify(v)).toHaveProperty('unresolved')
      expect((r as { unresolved: string }).unresolved).toContain('is not "METHOD /path"')
    }
    // CONNECT has the shape but cannot be sent as a request: unresolved at once, not stuck later.
    expect(parseCompensateHeader('CONNECT /x')).toEqual({
      unresolved: 'txmesh-compensate names CONNECT, which opens a tunnel and cannot undo a step',
    })
    expect(parseCompensateHeader(`DELETE /${'a'.repeat(LIMITS.stepPathChars - 2)}`)).toHaveProperty('method', 'DELETE')
  })
})
